"""http(s) locations through httpx: ranged GETs, guarded redirects, token only where it belongs."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import httpx

from locpick.errors import LocationError, LocationUnreachable, TransferError, UnsupportedLocation
from locpick.models import Image, Location, Probe
from locpick.netpolicy import AddressRefused, host_port
from locpick.peerfill import HEADER as FILL_HEADER
from locpick.peerfill import parse_fill_header
from locpick.redact import SCRUB, redact_url
from locpick.transports.base import Capabilities, Context, TransportDefaults
from locpick.transports.guards import parse_content_range, parse_retry_after, status_error

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _HeaderDeadline:
    """Bounds the wait for response headers on a new connection, whatever the server drips.

    httpx's timeouts are per read, so a server sending one header byte per second never trips
    them. The request's ``trace`` extension hands over the socket right after connecting; when
    the deadline passes first, the socket is shut down and the pending read fails at once.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, name: str, info: dict[str, object]) -> None:
        if name not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        get = getattr(stream, "get_extra_info", None)
        sock = get("socket") if get is not None else None
        with self._lock:
            if self._sock is None and isinstance(sock, socket.socket):
                self._sock = sock
                if self.fired:
                    self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def watch(self, sock: socket.socket | None) -> None:
        """Watch a socket that is already connected (the http.client data path)."""
        with self._lock:
            if self._sock is None and sock is not None:
                self._sock = sock
                if self.fired:
                    self._shutdown()

    def __enter__(self) -> _HeaderDeadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class _SpeedFloor:
    """Abandons a location that delivers less than ``min_bps`` over a whole ``window``: bytes
    that keep trickling in never trip an idle timeout, so this is what bounds a dripping server."""

    def __init__(self, url: str, min_bps: float, window: float) -> None:
        self._url = url
        self._min_bps = min_bps
        self._window = window
        self._mark_time = time.monotonic()
        self._mark_bytes = 0
        self._got = 0

    def check(self, n: int) -> None:
        self._got += n
        if self._min_bps <= 0:
            return
        now = time.monotonic()
        elapsed = now - self._mark_time
        if elapsed < self._window:
            return
        rate = (self._got - self._mark_bytes) / elapsed
        if rate < self._min_bps:
            raise TransferError(
                f"{self._url}: too slow ({rate:.0f} B/s over {elapsed:.1f}s, "
                f"minimum {self._min_bps:.0f} B/s)",
                url=self._url,
            )
        self._mark_time, self._mark_bytes = now, self._got


class HttpStream:
    """A streaming response body as a ``readinto`` source."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        start: int,
        total: int | None,
        final_url: str,
        min_bps: float = 0.0,
        window: float = 5.0,
        changed: bool = False,
    ) -> None:
        self._response = response
        self._chunks: Iterator[bytes] = response.iter_raw()
        self._pending = memoryview(b"")
        self.start = start
        self.total = total
        self.final_url = final_url
        self._floor = _SpeedFloor(final_url, min_bps, window)
        #: Validators of the resource, for If-Range on a later resume.
        self.etag: str | None = response.headers.get("etag")
        self.last_modified: str | None = response.headers.get("last-modified")
        #: An If-Range was sent and the server answered with the whole (changed) resource.
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
                    self._floor.check(len(self._pending))
                except StopIteration:
                    return filled
                except httpx.TimeoutException as exc:
                    raise _stall_error(self.final_url, self._idle) from exc
                except httpx.HTTPError as exc:
                    raise _broken_error(self.final_url, exc) from exc
                continue
            n = min(size - filled, len(self._pending))
            buf[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        return filled

    def close(self) -> None:
        self._response.close()


class RawHttpStream:
    """The data path: ``http.client`` reading straight into the caller's large buffers.

    httpx hands bodies over in 64 KiB chunks with Python work per chunk; for multi-GiB images
    that costs 1.4-2.2x the verified-download floor here (benchmarks/README.md). ``readinto``
    on the response fills 4 MiB buffers with ``recv_into`` and no copies, GIL released.
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        *,
        start: int,
        total: int | None,
        final_url: str,
        min_bps: float = 0.0,
        window: float = 5.0,
        changed: bool = False,
    ) -> None:
        self._conn = conn
        self._response = response
        self.start = start
        self.total = total
        self.final_url = final_url
        self._floor = _SpeedFloor(final_url, min_bps, window)
        self.etag: str | None = response.getheader("etag")
        self.last_modified: str | None = response.getheader("last-modified")
        self.changed = changed
        self._idle: float | None = None
        self._stalled = False

    def set_idle_timeout(self, seconds: float) -> None:
        """Deadline for each body read (no byte for this long = stalled)."""
        self._idle = seconds
        sock = self._conn.sock
        if sock is None:  # http.client drops conn.sock on "Connection: close"; the body reads on
            sock = getattr(getattr(self._response.fp, "raw", None), "_sock", None)
        if isinstance(sock, socket.socket):
            sock.settimeout(seconds)

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` but return within ~0.25 s with what arrived, so a caller watching the
        rate (low speed, switching) gets control even from a trickle."""
        filled = 0
        size = len(buf)
        deadline = time.monotonic() + _READ_SLICE
        if self._stalled:
            raise _stall_error(self.final_url, self._idle)
        try:
            while filled < size:
                n = self._read_some(buf[filled:])
                if not n:
                    break
                filled += n
                self._floor.check(n)
                if time.monotonic() >= deadline:
                    break
        except TimeoutError as exc:
            if filled:  # a timed-out socket cannot be read again: report it on the next call
                self._stalled = True
                return filled
            raise _stall_error(self.final_url, self._idle) from exc
        except (OSError, http.client.HTTPException) as exc:
            if filled:
                return filled
            raise _broken_error(self.final_url, exc) from exc
        return filled

    def _read_some(self, buf: memoryview) -> int:
        """One socket read's worth (``readinto1``), so that a server dripping bytes is seen by
        the speed floor: ``HTTPResponse.readinto`` would block until all of ``buf`` is full."""
        response = self._response
        fp = response.fp
        if response.chunked or fp is None:
            return response.readinto(buf[: 1 << 20])
        if response.length is not None:
            buf = buf[: response.length]
            if not buf:
                return 0
        n = fp.readinto1(buf)
        if response.length is not None:
            response.length -= n
            if n == 0:
                raise http.client.IncompleteRead(b"", response.length)
        return n

    def close(self) -> None:
        self._response.close()
        self._conn.close()


R = TypeVar("R")


class HttpTransport(TransportDefaults):
    """``http`` and ``https``."""

    schemes: tuple[str, ...] = ("http", "https")
    capabilities = Capabilities(bounded_ranges=True, if_range=True, idle_timeout=True, route=True)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- policy -------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        try:
            host, _port = host_port(location.url)
        except ValueError as exc:
            return str(exc)
        return self.ctx.net.check_host(host, resolve=False)

    def route(self, location: Location) -> str:
        """``direct`` or ``via proxy URL``: the one path of this location's probes and GETs."""
        return self.ctx.net.describe_route(location.url)

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
    def _follow(
        self,
        location: Location,
        headers: dict[str, str],
        send: Callable[[str, dict[str, str]], tuple[int, str | None, R]],
        close: Callable[[R], None],
    ) -> tuple[R, str]:
        """Follow redirects by hand: only http(s), bounded, never to forbidden hosts.

        ``send(url, headers)`` performs one request and returns (status, Location, reply).
        """
        url = location.url
        shown = redact_url(url)
        for _ in range(self.ctx.config.security.max_redirects + 1):
            try:
                host, _port = host_port(url)
            except ValueError as exc:
                raise UnsupportedLocation(f"{redact_url(url)}: refused, {exc}", url=shown) from exc
            reason = self.ctx.net.check_host(host, resolve=True)
            if reason:
                raise UnsupportedLocation(f"{redact_url(url)}: refused, {reason}", url=shown)
            try:
                status, target, reply = send(url, {**headers, **self._headers_for(location, url)})
            except AddressRefused as exc:
                raise AddressRefused(f"{redact_url(url)}: refused, {exc}", url=shown) from exc
            if status not in _REDIRECTS:
                return reply, redact_url(url)
            close(reply)
            url = self._redirect_target(url, target or "", shown)
        raise UnsupportedLocation(
            f"{shown}: more than {self.ctx.config.security.max_redirects} redirects", url=shown
        )

    def _redirect_target(self, url: str, target: str, shown: str) -> str:
        """The absolute URL a redirect points to, or UnsupportedLocation when it is not a
        well-formed http(s) URL with a host (the server's Location header is hostile input)."""
        try:
            nxt = urllib.parse.urljoin(url, target)
            parts = urllib.parse.urlsplit(nxt)
            host, _port = parts.hostname, parts.port
        except ValueError:
            host, nxt, parts = None, "", urllib.parse.urlsplit("")
        scheme = parts.scheme.lower()
        if nxt and scheme not in self.schemes:
            raise UnsupportedLocation(
                f"{shown}: refused redirect to a {scheme or 'schemeless'} URL", url=shown
            )
        if not host or not nxt.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in nxt):
            raise UnsupportedLocation(f"{shown}: refused redirect to a malformed URL", url=shown)
        return nxt

    def _get(
        self, location: Location, headers: dict[str, str], *, timeout: float | None = None
    ) -> tuple[httpx.Response, str]:
        """One GET through the pooled httpx client (probes, and the data path via a proxy)."""

        limit = timeout or self.ctx.config.transfer.first_byte_timeout

        def send(url: str, req_headers: dict[str, str]) -> tuple[int, str | None, httpx.Response]:
            shown = redact_url(url)
            deadline = _HeaderDeadline(limit)
            try:
                request = self.ctx.http.build_request(
                    "GET",
                    url,
                    headers=req_headers,
                    timeout=httpx.Timeout(timeout) if timeout else httpx.USE_CLIENT_DEFAULT,
                    extensions={"trace": deadline.trace},
                )
                with deadline:
                    response = self.ctx.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise LocationUnreachable(
                    f"{shown}: timed out ({type(exc).__name__})", url=shown
                ) from exc
            except httpx.HTTPError as exc:
                raise _send_failed(shown, exc, deadline, limit) from exc
            return response.status_code, response.headers.get("location"), response

        return self._follow(location, headers, send, lambda r: r.close())

    def _get_raw(
        self, location: Location, headers: dict[str, str]
    ) -> tuple[tuple[http.client.HTTPConnection, http.client.HTTPResponse], str]:
        """One GET with ``http.client`` for the bulk data path (see RawHttpStream)."""
        t = self.ctx.config.transfer

        def send(
            url: str, req_headers: dict[str, str]
        ) -> tuple[int, str | None, tuple[http.client.HTTPConnection, http.client.HTTPResponse]]:
            parts = urllib.parse.urlsplit(url)
            shown = redact_url(url)
            if self.ctx.net.route(url) is not None:
                raise _Proxied(url)
            host, port = host_port(url)
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    host, port, timeout=t.connect_timeout, context=self.ctx.net.ssl_context
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=t.connect_timeout)
            # every socket of the data path goes through the address guard
            conn._create_connection = self.ctx.net.connect  # type: ignore[attr-defined]
            all_headers = {"User-Agent": "locpick", "Accept-Encoding": "identity", **req_headers}
            if parts.username is not None:
                cred = (
                    f"{urllib.parse.unquote(parts.username)}:"
                    f"{urllib.parse.unquote(parts.password or '')}"
                )
                all_headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            deadline = _HeaderDeadline(t.first_byte_timeout)
            try:
                with deadline:
                    conn.connect()
                    # keep our own reference: getresponse() drops conn.sock when the server will
                    # close the connection (HTTP/1.0, "Connection: close"); the body still reads it
                    sock = conn.sock
                    assert sock is not None
                    deadline.watch(sock)
                    sock.settimeout(t.first_byte_timeout)
                    conn.request("GET", path, headers=all_headers)
                    response = conn.getresponse()
                if deadline.fired:  # headers cut short by the deadline look complete to http.client
                    raise http.client.HTTPException("header deadline")
                sock.settimeout(t.idle_timeout)
            except TimeoutError as exc:
                conn.close()
                raise LocationUnreachable(f"{shown}: timed out", url=shown) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _send_failed(shown, exc, deadline, t.first_byte_timeout) from exc
            return response.status, response.getheader("location"), (conn, response)

        def close(reply: tuple[http.client.HTTPConnection, http.client.HTTPResponse]) -> None:
            reply[1].close()
            reply[0].close()

        return self._follow(location, headers, send, close)

    def _proxied(self, url: str) -> bool:
        return self.ctx.net.route(url) is not None

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        n = self.ctx.config.probe.ttfb_bytes
        t0 = time.monotonic()
        try:
            # Prefer: wait=0: a peer's copy still filling answers with its fill state at once
            # (503 + X-Locpick-Fill) rather than holding the probe until the bytes arrive
            headers = {"Range": f"bytes=0-{n - 1}", "Prefer": "wait=0"}
            response, final = self._get(location, headers, timeout=timeout)
        except LocationError as exc:
            return Probe(url=shown, ok=False, error=str(exc).removeprefix(f"{shown}: "))
        try:
            ttfb = time.monotonic() - t0
            fill = parse_fill_header(response.headers.get(FILL_HEADER))
            if response.status_code not in (200, 206):
                return Probe(
                    url=shown,
                    ok=False,
                    ttfb=ttfb,
                    error=f"HTTP {response.status_code}",
                    final_url=final,
                    status=response.status_code,
                    fill=fill,
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
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
            fill=fill,
        )

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        if_range: str | None = None,
        end: int | None = None,
    ) -> HttpStream | RawHttpStream:
        """GET from ``offset`` (to ``end``, exclusive, when given: a piece); ``if_range`` (an
        ETag or Last-Modified the bytes held came from) makes a changed resource answer 200
        with the whole body (``stream.changed``)."""
        headers = {"Range": _range(offset, end)} if offset or end is not None else {}
        if offset and if_range:
            headers["If-Range"] = if_range
        if self._proxied(location.url):
            return self._open_httpx(location, image, headers, offset)
        try:
            (conn, raw), final = self._get_raw(location, headers)
        except _Proxied:  # a redirect led to a host the policy routes through a proxy
            return self._open_httpx(location, image, headers, offset)
        try:
            view = _HeaderView(raw)
            start, total = self._validate(final, raw.status, view, image, offset)
        except BaseException:
            raw.close()
            conn.close()
            raise
        changed = _changed(headers, start, view)
        return RawHttpStream(
            conn, raw, start=start, total=total, final_url=final, changed=changed, **self._floor()
        )

    def _open_httpx(
        self, location: Location, image: Image, headers: dict[str, str], offset: int
    ) -> HttpStream:
        """The data path through a proxy: httpx (CONNECT for https), the probes' own route."""
        response, final = self._get(location, headers)
        try:
            start, total = self._validate(
                final, response.status_code, response.headers, image, offset
            )
        except BaseException:
            response.close()
            raise
        changed = _changed(headers, start, response.headers)
        return HttpStream(
            response, start=start, total=total, final_url=final, changed=changed, **self._floor()
        )

    def _floor(self) -> dict[str, float]:
        """The speed floor of a transfer: the higher of ``[transfer] low_speed_bps`` and
        ``[security] min_speed_bps`` (so a floor holds even when the former is 0), over
        ``[transfer] low_speed_window``."""
        t = self.ctx.config.transfer
        floor = max(t.low_speed_bps, self.ctx.config.security.min_speed_bps)
        return {"min_bps": floor, "window": t.low_speed_window}

    def _validate(
        self, final: str, status: int, headers: Mapping[str, str], image: Image, offset: int
    ) -> tuple[int, int | None]:
        """Check status and Content-Range against the request; returns (start, total)."""
        if status == 206:
            cr = parse_content_range(headers.get("content-range"))
            if cr is None or cr[0] != offset:
                raise TransferError(
                    f"{final}: Content-Range {headers.get('content-range')!r} does not start "
                    f"at the requested offset {offset}",
                    url=final,
                    permanent=True,
                )
            total = cr[2]
        elif status == 200:
            if headers.get("content-encoding"):
                raise TransferError(
                    f"{final}: refuses identity encoding ({headers.get('content-encoding')})",
                    url=final,
                    permanent=True,
                )
            length = headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        elif status == 416 and image.size is not None and offset >= image.size:
            raise TransferError(f"{final}: HTTP 416 at offset {offset}", url=final)
        else:
            raise status_error(final, status, headers.get("retry-after"))
        if image.size is not None and total is not None and total != image.size:
            raise TransferError(
                f"{final}: size {total} differs from the image's {image.size}",
                url=final,
                permanent=True,
            )
        return (offset if status == 206 else 0), total

    def close(self) -> None:
        """The HTTP pool belongs to the Context."""


_READ_SLICE = 0.25


def _range(offset: int, end: int | None) -> str:
    return f"bytes={offset}-" if end is None else f"bytes={offset}-{end - 1}"


class _Proxied(Exception):
    """The raw data path reached a URL the policy sends through a proxy: use httpx instead."""


def _stall_error(url: str, idle: float | None) -> TransferError:
    secs = "the idle timeout" if idle is None else f"{idle:g} s"
    return TransferError(f"{url}: stalled, no data for {secs}", url=url)


def _broken_error(url: str, exc: Exception) -> TransferError:
    return TransferError(f"{url}: connection broke ({type(exc).__name__})", url=url)


def _send_failed(
    shown: str, exc: Exception, deadline: _HeaderDeadline, limit: float
) -> LocationUnreachable:
    """A request that got no usable response: cut off by the header deadline, or why not."""
    if deadline.fired:
        return LocationUnreachable(
            f"{shown}: no complete response headers within {limit:g}s", url=shown
        )
    return LocationUnreachable(
        f"{shown}: {type(exc).__name__}: {SCRUB(str(exc)) or 'failed'}", url=shown
    )


def _changed(sent: Mapping[str, str], start: int, headers: Mapping[str, str]) -> bool:
    """An If-Range was sent, the whole body came back, and its validators differ."""
    if_range = sent.get("If-Range")
    if not if_range or start != 0:
        return False
    return if_range not in (headers.get("etag"), headers.get("last-modified"))


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


class _HeaderView(Mapping[str, str]):
    """Case-insensitive read-only headers of an http.client response."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self._headers = {k.lower(): v for k, v in response.getheaders()}

    def __getitem__(self, key: str) -> str:
        return self._headers[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)
