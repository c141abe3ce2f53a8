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
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
import urllib.parse
from typing import Any

from locpick.errors import LocationError, LocationUnreachable, TransferError, UnsupportedLocation
from locpick.models import Image, Location, Probe
from locpick.redact import SCRUB, redact_url
from locpick.s3url import GLANCE_S3_SCHEMES, S3Target, parse_s3_url
from locpick.transports.base import Capabilities, Context, StreamDefaults, TransportDefaults
from locpick.transports.guards import parse_content_range

S3_SCHEMES = ("s3", "s3a", *GLANCE_S3_SCHEMES)
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
_TIMEOUTS = frozenset(
    {
        "TimeoutError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ServerTimeoutError",
        "ConnectTimeout",
        "ReadTimeout",
    }
)


def needs(scheme: str) -> str | None:
    """What must be installed to read ``scheme``; None when its implementation imports."""
    import fsspec  # core dependency, but only needed once such a location shows up

    if scheme in GLANCE_S3_SCHEMES:
        scheme = "s3"
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        if scheme in S3_SCHEMES:
            return "s3fs: install locpick[s3]"
        from fsspec.registry import known_implementations

        impl = known_implementations.get(scheme, {})
        package = str(impl.get("class", scheme)).split(".", 1)[0]
        hint = str(impl.get("err") or exc).rstrip(".")
        return f"{package}: {hint}"
    return None


def _first_line(text: str, limit: int = 200) -> str:
    line = SCRUB(text).strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def convert(exc: BaseException, shown: str, *, midway: bool = False) -> LocationError:
    """One location's filesystem exception as a LocationError, secrets scrubbed."""
    if isinstance(exc, LocationError):
        return exc
    name = type(exc).__name__
    detail = _first_line(str(exc))
    if isinstance(exc, FileNotFoundError):
        return LocationUnreachable(f"{shown}: no such object (HTTP 404)", url=shown, permanent=True)
    if isinstance(exc, PermissionError):
        why = f": {detail}" if detail else ""
        return LocationUnreachable(
            f"{shown}: access denied (HTTP 403), check the credentials{why}",
            url=shown,
            permanent=True,
        )
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return LocationUnreachable(
            f"{shown}: no usable AWS credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
            url=shown,
            permanent=True,
        )
    if name in _TIMEOUTS:
        what = "stalled: no data within the idle timeout" if midway else "timed out"
        cls = TransferError if midway else LocationUnreachable
        return cls(f"{shown}: {what} ({name})", url=shown)
    text = f"{shown}: {name}" + (f": {detail}" if detail else "")
    if midway:
        return TransferError(f"{text} (transfer broke off)", url=shown)
    return LocationUnreachable(text, url=shown)


class FsspecStream(StreamDefaults):
    """An fsspec file read from an offset, one ranged request per ``readinto``."""

    def __init__(self, file: Any, *, start: int, total: int | None, final_url: str) -> None:
        self._file = file
        self.start = start
        self.total = total
        self.final_url = final_url

    def readinto(self, buf: memoryview) -> int:
        try:
            readinto = getattr(self._file, "readinto", None)
            if readinto is not None:
                return int(readinto(buf) or 0)
            data = self._file.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        except Exception as exc:  # any filesystem error, converted at this boundary
            raise convert(exc, self.final_url, midway=True) from exc

    def close(self) -> None:
        # closing a read-only remote file cannot lose data
        with contextlib.suppress(Exception):
            self._file.close()


class S3Stream(StreamDefaults):
    """One streaming GET (``Range: bytes=N-``) through s3fs's own client, read on its loop.

    fsspec's buffered files issue one ranged request per read; a single streamed response
    avoids that per-request cost (it dominates on slow servers such as moto).
    """

    def __init__(self, fs: Any, body: Any, *, start: int, total: int | None, final_url: str):
        self._fs = fs
        self._body = body
        self.start = start
        self.total = total
        self.final_url = final_url

    async def _fill(self, buf: memoryview) -> int:
        filled = 0
        while filled < len(buf):
            chunk = await self._body.read(len(buf) - filled)
            if not chunk:
                break
            buf[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return filled

    def readinto(self, buf: memoryview) -> int:
        from fsspec.asyn import sync

        try:
            return int(sync(self._fs.loop, self._fill, buf))
        except Exception as exc:  # any client error, converted at this boundary
            raise convert(exc, self.final_url, midway=True) from exc

    def close(self) -> None:
        from fsspec.asyn import sync

        async def _close() -> None:
            result = getattr(self._body, "aclose", self._body.close)()
            if inspect.isawaitable(result):
                await result

        # closing a read-only response cannot lose data
        with contextlib.suppress(Exception):
            sync(self._fs.loop, _close)


class FsspecTransport(TransportDefaults):
    """``s3`` and every other fsspec protocol in :data:`SCHEMES` that is installed."""

    schemes: tuple[str, ...] = SCHEMES
    capabilities = Capabilities(route=True)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._filesystems: dict[tuple[str, str], Any] = {}
        # Credentials locpick never prints: keep them out of every message and log line.
        SCRUB.add(*(os.environ.get(name) for name in _AWS_SECRETS))

    # -- where ----------------------------------------------------------------------------------
    def endpoint(self, location: Location) -> str | None:
        """The S3 endpoint for ``location``: the URL's own host (Glance's forms), else its
        metadata, else config, else the AWS env."""
        with contextlib.suppress(ValueError):
            target = parse_s3_url(location.url)
            if target.endpoint is not None:
                return target.endpoint
        s3 = self.ctx.config.s3
        meta = location.metadata.get("endpoint_url") if s3.location_endpoint else None
        if isinstance(meta, str) and meta:
            return meta
        return s3.endpoint_url

    def _s3_reason(self, location: Location) -> str | None:
        try:
            target = parse_s3_url(location.url)
        except ValueError as exc:
            return str(exc)
        own = target.endpoint is not None and target.access_key is None
        if own and not self.ctx.config.s3.location_endpoint:
            return (
                "the URL names its own S3 endpoint without credentials; the operator's "
                "AWS credentials are not sent there unless [s3] location_endpoint = true"
            )
        meta = location.metadata.get("endpoint_url")
        if meta is not None and not isinstance(meta, str):
            return "metadata endpoint_url is not a string"
        endpoint = self.endpoint(location)
        if endpoint is not None:
            ep = urllib.parse.urlsplit(endpoint)
            if ep.scheme not in ("http", "https") or not ep.hostname:
                return f"endpoint {redact_url(endpoint)} is not an http(s) URL"
            # botocore resolves and connects on its own: the name is resolved and checked here
            reason = self.ctx.net.check_host(ep.hostname, resolve=True)
            return f"endpoint {reason}" if reason else None
        return None

    def route(self, location: Location) -> str | None:
        """``direct`` or ``via proxy URL`` for an S3 location's endpoint (AWS when none)."""
        if location.scheme not in S3_SCHEMES:
            return None
        return self.ctx.net.describe_route(self.endpoint(location) or "https://s3.amazonaws.com")

    def _filesystem(self, location: Location) -> tuple[Any, str]:
        """The (shared) filesystem instance for ``location`` and the path inside it."""
        import fsspec

        scheme = location.scheme
        t = self.ctx.config.transfer
        if scheme in S3_SCHEMES:
            cls = fsspec.get_filesystem_class("s3")
            target: S3Target = parse_s3_url(location.url)
            path = target.path
            s3 = self.ctx.config.s3
            endpoint = self.endpoint(location)
            net = self.ctx.net.botocore_options(endpoint)
            client_kwargs: dict[str, Any] = {"verify": net["verify"]}
            if s3.region:
                client_kwargs["region_name"] = s3.region
            config_kwargs: dict[str, Any] = {
                "connect_timeout": t.connect_timeout,
                "read_timeout": t.idle_timeout,
                "retries": {"max_attempts": 1},
            }
            if "proxies" in net:
                config_kwargs["proxies"] = net["proxies"]
            options: dict[str, Any] = {
                "endpoint_url": endpoint,
                "client_kwargs": client_kwargs,
                "config_kwargs": config_kwargs,
            }
            if target.access_key is not None:
                options.update(key=target.access_key, secret=target.secret_key)
            elif s3.profile:
                options["profile"] = s3.profile
        else:
            cls = fsspec.get_filesystem_class(scheme)
            options = dict(cls._get_kwargs_from_urls(location.url))
            path = cls._strip_protocol(location.url)
            password = urllib.parse.urlsplit(location.url).password
            SCRUB.add(password, options.get("password"))
        key = (scheme, repr(sorted(options.items())))
        with self._lock:
            fs = self._filesystems.get(key)
            if fs is None:
                fs = cls(skip_instance_cache=True, **options)
                if scheme in S3_SCHEMES:
                    fs.retries = max(1, t.retries + 1)
                self._filesystems[key] = fs
        return fs, path

    # -- transport ------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        scheme = location.scheme
        missing = needs(scheme)
        if missing is not None:
            return f"unsupported scheme {scheme!r}, needs {missing}"
        if scheme in S3_SCHEMES:
            reason = self._s3_reason(location)
            if reason is None:
                reason = self._connect(location)
            return reason
        return None

    def _connect(self, location: Location) -> str | None:
        """Set up the S3 client now (credentials, profile; local work with env credentials), so
        that the probe phase times the store rather than our own start-up."""
        shown = location.display_url
        try:
            fs, _path = self._filesystem(location)
            connect = getattr(fs, "connect", None)
            if connect is not None:
                connect()
        except Exception as exc:  # noqa: BLE001 - any filesystem error becomes the reason
            return str(convert(exc, shown)).removeprefix(f"{shown}: ")
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
            fs, path = self._filesystem(location)
            # info() first: it also sets up the client (credentials, connection), so the
            # timed ranged read below measures the store, not our own start-up.
            size = _size(fs.info(path))
            t0 = time.monotonic()
            got = len(fs.cat_file(path, start=0, end=n)) if n > 0 else 0
            ttfb = time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - any filesystem error, converted at this boundary
            err = convert(exc, shown)
            return Probe(url=shown, ok=False, error=str(err).removeprefix(f"{shown}: "))
        if image.size is not None and size is not None and size != image.size:
            return Probe(
                url=shown,
                ok=False,
                ttfb=ttfb,
                size=size,
                final_url=shown,
                error=f"size mismatch: location has {size} bytes, image {image.size}",
            )
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
            fs, path = self._filesystem(location)
            try:
                file = fs.open(path, "rb", block_size=block, cache_type="none")
            except TypeError:  # an implementation without fsspec's buffered-file options
                file = fs.open(path, "rb")
        except Exception as exc:  # any filesystem error, converted at this boundary
            raise convert(exc, shown) from exc
        try:
            total = _size({"size": getattr(file, "size", None)})
            if image.size is not None and total is not None and total != image.size:
                raise TransferError(
                    f"{shown}: size {total} differs from the image's {image.size}",
                    url=shown,
                    permanent=True,
                )
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
            fs, path = self._filesystem(location)
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
        if image.size is not None and total is not None and total != image.size:
            stream.close()
            raise TransferError(
                f"{shown}: size {total} differs from the image's {image.size}",
                url=shown,
                permanent=True,
            )
        stream.total = total
        return stream

    def close(self) -> None:
        with self._lock:
            self._filesystems.clear()


def _size(info: Any) -> int | None:
    value = info.get("size") if isinstance(info, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
