"""Object stores and other remote filesystems through fsspec: ``s3://`` (s3fs) first, and any
other protocol whose fsspec implementation is installed (``gs``, ``az``, ``hdfs``, ``sftp``, ...).

Implementations are imported lazily: a missing package makes the location unusable with a reason
naming what to install (``locpick[s3]`` for s3), never an import crash. Every exception a
filesystem raises is converted to a :class:`~locpick.errors.LocationError` here, at one
boundary, and scrubbed of credentials.

S3 credentials come from the standard AWS environment (``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, config files, instance roles). The endpoint is, in
order: the location's metadata ``endpoint_url`` (unless ``[s3] location_endpoint = false``),
``[s3] endpoint_url``, ``$AWS_ENDPOINT_URL``, AWS itself.

The parts: ``fsspecerrors`` (what to install, exceptions -> LocationError), ``fsspecfs``
(filesystem instances, S3 endpoint and refusals), ``fsspecstream`` (byte streams).
"""

from __future__ import annotations

import time
from typing import Any

from locpick.errors import LocationError, TransferError, UnsupportedLocation, reason_of
from locpick.models import Image, Location, Probe
from locpick.redact import SCRUB
from locpick.transports.base import Capabilities, Context, TransportDefaults
from locpick.transports.fsspec.errors import S3_SCHEMES, convert, needs
from locpick.transports.fsspec.fs import Filesystems
from locpick.transports.fsspec.stream import FsspecStream, S3Stream
from locpick.transports.guards import check_total, parse_content_range, probe_size_mismatch

__all__ = ["SCHEMES", "FsspecTransport"]


#: Remote protocols fsspec knows that can hold an image; served when the package is installed.
SCHEMES: tuple[str, ...] = (
    *S3_SCHEMES,
    "gs",
    "gcs",
    "az",
    "abfs",
    "oss",
    "oci",
    "hdfs",
    "webhdfs",
    "sftp",
    "ssh",
    "ftp",
    "smb",
    "webdav",
    "root",
    "tos",
)
_AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class FsspecTransport(TransportDefaults):
    """``s3`` and every other fsspec protocol in :data:`SCHEMES` that is installed."""

    schemes: tuple[str, ...] = SCHEMES
    capabilities = Capabilities(route=True)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._fs = Filesystems(ctx)
        # Credentials locpick never prints: keep them out of every message and log line.
        SCRUB.add(*(ctx.env.get(name) for name in _AWS_SECRETS))

    def endpoint(self, location: Location) -> str | None:
        """The S3 endpoint for ``location`` (see ``Filesystems.endpoint``)."""
        return self._fs.endpoint(location)

    def route(self, location: Location) -> str | None:
        """``direct`` or ``via proxy URL`` for an S3 location's endpoint (AWS when none)."""
        if location.scheme not in S3_SCHEMES:
            return None
        return self.ctx.net.describe_route(self.endpoint(location) or "https://s3.amazonaws.com")

    # -- transport ------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        scheme = location.scheme
        missing = needs(scheme)
        if missing is not None:
            return f"unsupported scheme {scheme!r}, needs {missing}"
        if scheme in S3_SCHEMES:
            reason = self._fs.s3_reason(location)
            if reason is None:
                reason = self._connect(location)
            return reason
        return None

    def _connect(self, location: Location) -> str | None:
        """Set up the S3 client now (credentials, profile; local work with env credentials), so
        that the probe phase times the store rather than our own start-up."""
        shown = location.display_url
        try:
            fs, _path = self._fs.get(location)
            connect = getattr(fs, "connect", None)
            if connect is not None:
                connect()
        except Exception as exc:  # noqa: BLE001 - any filesystem error becomes the reason
            return reason_of(convert(exc, shown))
        return None

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        reason = self.check(location, image)
        if reason:
            return Probe(url=shown, ok=False, error=reason)
        n = self.ctx.config.probe.ttfb_bytes
        if image.size is not None:
            n = min(n, image.size)
        try:
            fs, path = self._fs.get(location)
            # info() first: it also sets up the client (credentials, connection), so the
            # timed ranged read below measures the store, not our own start-up.
            size = _size(fs.info(path))
            t0 = time.monotonic()
            got = len(fs.cat_file(path, start=0, end=n)) if n > 0 else 0
            ttfb = time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - any filesystem error, converted at this boundary
            return Probe(url=shown, ok=False, error=reason_of(convert(exc, shown)))
        mismatch = probe_size_mismatch(shown, image.size, size, ttfb=ttfb, final_url=shown)
        if mismatch is not None:
            return mismatch
        if got < n:
            return Probe(url=shown, ok=False, ttfb=ttfb, error=f"short read: {got} of {n} bytes")
        return Probe(url=shown, ok=True, ttfb=ttfb, size=size, final_url=shown)

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        end: int | None = None,
        if_range: str | None = None,
    ) -> FsspecStream | S3Stream:
        """The object from ``offset`` to its end (no bounded ranges, no validators)."""
        shown = location.display_url
        reason = self.check(location, image)
        if reason:
            raise UnsupportedLocation(f"{shown}: {reason}", url=shown)
        if location.scheme in S3_SCHEMES:
            return self._open_s3(location, image, offset)
        block = self.ctx.config.transfer.buffer_bytes
        try:
            fs, path = self._fs.get(location)
            try:
                file = fs.open(path, "rb", block_size=block, cache_type="none")
            except TypeError:  # an implementation without fsspec's buffered-file options
                file = fs.open(path, "rb")
        except Exception as exc:  # any filesystem error, converted at this boundary
            raise convert(exc, shown) from exc
        try:
            total = _size({"size": getattr(file, "size", None)})
            check_total(shown, image.size, total)
            if offset:
                file.seek(offset)
        except LocationError:
            file.close()
            raise
        except Exception as exc:  # any filesystem error, converted at this boundary
            file.close()
            raise convert(exc, shown) from exc
        return FsspecStream(file, start=offset, total=total, final_url=shown)

    def _open_s3(self, location: Location, image: Image, offset: int) -> S3Stream:
        from fsspec.asyn import sync

        shown = location.display_url
        try:
            fs, path = self._fs.get(location)
            bucket, key, version = fs.split_path(path)
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if version:
                kwargs["VersionId"] = version
            if offset:
                kwargs["Range"] = f"bytes={offset}-"
            response = sync(fs.loop, fs._call_s3, "get_object", **kwargs)
        except Exception as exc:  # any client error, converted at this boundary
            raise convert(exc, shown) from exc
        stream = S3Stream(fs, response["Body"], start=offset, total=None, final_url=shown)
        cr = parse_content_range(response.get("ContentRange"))
        total = cr[2] if cr else None
        if total is None and not offset:
            total = _size({"size": response.get("ContentLength")})
        try:
            check_total(shown, image.size, total)
        except TransferError:
            stream.close()
            raise
        stream.total = total
        return stream

    def close(self) -> None:
        self._fs.clear()


def _size(info: Any) -> int | None:
    value = info.get("size") if isinstance(info, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
