"""http(s) locations through httpx: ranged GETs, guarded redirects, token only where it belongs."""

from __future__ import annotations

import ipaddress
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx

from locpick.errors import LocationError, LocationUnreachable, TransferError, UnsupportedLocation
from locpick.models import Image, Location, Probe
from locpick.redact import SCRUB, redact_url
from locpick.transports.base import Context

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` -> (a, b, total); None when absent or malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _status_error(url: str, status: int, retry_after: str | None = None) -> LocationError:
    permanent = 400 <= status < 500 and status not in (408, 429)
    err = LocationUnreachable(f"{url}: HTTP {status}", url=url, permanent=permanent)
    err.retry_after = _parse_retry_after(retry_after)  # type: ignore[attr-defined]
    return err


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class HttpStream:
    """A streaming response body as a ``readinto`` source."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        start: int,
        total: int | None,
        final_url: str,
        changed: bool = False,
    ) -> None:
        self._response = response
        self._chunks: Iterator[bytes] = response.iter_raw()
        self._pending = memoryview(b"")
        self.start = start
        self.total = total
        self.final_url = final_url
        #: Validators of the resource, for If-Range on a later resume.
        self.etag: str | None = response.headers.get("etag")
        self.last_modified: str | None = response.headers.get("last-modified")
        #: An If-Range was sent and the server answered with the full (changed) resource.
        self.changed = changed
        self._idle: float | None = None

    def set_idle_timeout(self, seconds: float) -> None:
        """Deadline for each body read (no byte for this long = stalled); call before reading.

        The headers were read under the first-byte timeout; httpcore takes the body's read
        timeout from the request's timeout extension when the body iteration starts.
        """
        self._idle = seconds
        timeouts = self._response.request.extensions.get("timeout")
        if isinstance(timeouts, dict):
            timeouts["read"] = seconds

    def readinto(self, buf: memoryview) -> int:
        filled = 0
        size = len(buf)
        while filled < size:
            if not self._pending:
                if filled:
                    return filled
                try:
                    self._pending = memoryview(next(self._chunks))
                except StopIteration:
                    return filled
                except httpx.TimeoutException as exc:
                    idle = "the idle timeout" if self._idle is None else f"{self._idle:g} s"
                    raise TransferError(
                        f"{self.final_url}: stalled, no data for {idle}",
                        url=self.final_url,
                    ) from exc
                except httpx.HTTPError as exc:
                    raise TransferError(
                        f"{self.final_url}: connection broke ({type(exc).__name__})",
                        url=self.final_url,
                    ) from exc
                continue
            n = min(size - filled, len(self._pending))
            buf[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        return filled

    def close(self) -> None:
        self._response.close()


class HttpTransport:
    """``http`` and ``https``."""

    schemes: tuple[str, ...] = ("http", "https")
    #: ``open`` takes ``if_range`` (fetch checks this before passing it).
    supports_if_range = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- policy -------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        host = location.host
        if not host:
            return "URL has no host"
        return self._forbidden(host, resolve=False)

    def _forbidden(self, host: str, *, resolve: bool) -> str | None:
        nets = [
            ipaddress.ip_network(n, strict=False) for n in self.ctx.config.security.forbid_networks
        ]
        if not nets:
            return None
        addrs: list[str] = []
        try:
            addrs = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            if resolve:
                try:
                    addrs = [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
                except OSError:
                    addrs = []
        for addr in addrs:
            ip = ipaddress.ip_address(addr.split("%")[0])
            for net in nets:
                if ip.version == net.version and ip in net:
                    return f"host {host} is in a forbidden network ({net})"
        return None

    def _headers_for(self, location: Location, url: str) -> dict[str, str]:
        token = self.ctx.token
        if not token or location.kind != "glance-file" or not self.ctx.glance_url:
            return {}
        target = urllib.parse.urlsplit(url)
        glance = urllib.parse.urlsplit(self.ctx.glance_url)
        if (target.hostname, target.port) == (glance.hostname, glance.port):
            return {"X-Auth-Token": token}
        return {}

    # -- requests -----------------------------------------------------------------------------
    def _get(
        self,
        location: Location,
        headers: dict[str, str],
        *,
        timeout: float | httpx.Timeout | None = None,
    ) -> tuple[httpx.Response, str]:
        """GET with redirects followed by hand: only http(s), bounded, never to forbidden hosts."""
        url = location.url
        shown = redact_url(url)
        for _ in range(self.ctx.config.security.max_redirects + 1):
            reason = self._forbidden(urllib.parse.urlsplit(url).hostname or "", resolve=True)
            if reason:
                raise UnsupportedLocation(f"{redact_url(url)}: refused, {reason}", url=shown)
            req_headers = {**headers, **self._headers_for(location, url)}
            try:
                request = self.ctx.http.build_request(
                    "GET",
                    url,
                    headers=req_headers,
                    timeout=_timeout(timeout),
                )
                response = self.ctx.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise LocationUnreachable(
                    f"{redact_url(url)}: timed out ({type(exc).__name__})", url=shown
                ) from exc
            except httpx.HTTPError as exc:
                raise LocationUnreachable(
                    f"{redact_url(url)}: {type(exc).__name__}: {SCRUB(str(exc)) or 'failed'}",
                    url=shown,
                ) from exc
            if response.status_code not in _REDIRECTS:
                return response, redact_url(url)
            target = response.headers.get("location", "")
            response.close()
            nxt = urllib.parse.urljoin(url, target)
            scheme = urllib.parse.urlsplit(nxt).scheme.lower()
            if scheme not in self.schemes:
                raise UnsupportedLocation(
                    f"{shown}: refused redirect to a {scheme or 'schemeless'} URL", url=shown
                )
            url = nxt
        raise UnsupportedLocation(
            f"{shown}: more than {self.ctx.config.security.max_redirects} redirects", url=shown
        )

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        n = self.ctx.config.probe.ttfb_bytes
        t0 = time.monotonic()
        try:
            response, final = self._get(location, {"Range": f"bytes=0-{n - 1}"}, timeout=timeout)
        except LocationError as exc:
            return Probe(url=shown, ok=False, error=str(exc).removeprefix(f"{shown}: "))
        try:
            ttfb = time.monotonic() - t0
            if response.status_code not in (200, 206):
                return Probe(
                    url=shown,
                    ok=False,
                    ttfb=ttfb,
                    error=f"HTTP {response.status_code}",
                    final_url=final,
                )
            size = _resource_size(response)
            got = 0
            for chunk in response.iter_raw():
                got += len(chunk)
                if got >= n or time.monotonic() - t0 > timeout:
                    break
            elapsed = time.monotonic() - t0
        except httpx.HTTPError as exc:
            return Probe(url=shown, ok=False, error=f"probe read failed ({type(exc).__name__})")
        finally:
            response.close()
        if image.size is not None and size is not None and size != image.size:
            return Probe(
                url=shown,
                ok=False,
                ttfb=ttfb,
                size=size,
                final_url=final,
                error=f"size mismatch: location has {size} bytes, image {image.size}",
            )
        bps = got / (elapsed - ttfb) if got >= n and elapsed > ttfb else None
        return Probe(
            url=shown,
            ok=True,
            ttfb=ttfb,
            size=size,
            final_url=final,
            throughput_bps=bps if bps and got > 256 * 1024 else None,
        )

    def open(
        self, location: Location, image: Image, *, offset: int, if_range: str | None = None
    ) -> HttpStream:
        """GET from ``offset``; ``if_range`` (an ETag or Last-Modified the bytes held came from)
        makes a changed resource answer 200 with the whole body (``stream.changed``)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset and if_range:
            headers["If-Range"] = if_range
        t = self.ctx.config.transfer
        timeout = httpx.Timeout(
            connect=t.connect_timeout,
            read=t.first_byte_timeout,
            write=t.connect_timeout,
            pool=t.connect_timeout,
        )
        response, final = self._get(location, headers, timeout=timeout)
        try:
            status = response.status_code
            if status == 206:
                cr = parse_content_range(response.headers.get("content-range"))
                if cr is None or cr[0] != offset:
                    raise TransferError(
                        f"{final}: Content-Range {response.headers.get('content-range')!r} does "
                        f"not start at the requested offset {offset}",
                        url=final,
                        permanent=True,
                    )
                total = cr[2]
                if image.size is not None and total is not None and total != image.size:
                    raise TransferError(
                        f"{final}: size {total} differs from the image's {image.size}",
                        url=final,
                        permanent=True,
                    )
                return HttpStream(response, start=offset, total=total, final_url=final)
            if status == 200:
                total = _content_length(response)
                if image.size is not None and total is not None and total != image.size:
                    raise TransferError(
                        f"{final}: size {total} differs from the image's {image.size}",
                        url=final,
                        permanent=True,
                    )
                validators = (response.headers.get("etag"), response.headers.get("last-modified"))
                changed = bool(if_range and offset) and if_range not in validators
                return HttpStream(response, start=0, total=total, final_url=final, changed=changed)
            if status == 416 and image.size is not None and offset >= image.size:
                raise TransferError(f"{final}: HTTP 416 at offset {offset}", url=final)
            raise _status_error(final, status, response.headers.get("retry-after"))
        except BaseException:
            response.close()
            raise

    def close(self) -> None:
        """The HTTP pool belongs to the Context."""


def _timeout(value: float | httpx.Timeout | None) -> Any:
    if isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(value) if value else httpx.USE_CLIENT_DEFAULT


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or response.headers.get("content-encoding"):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _resource_size(response: httpx.Response) -> int | None:
    if response.status_code == 206:
        cr = parse_content_range(response.headers.get("content-range"))
        return cr[2] if cr else None
    return _content_length(response)
