"""The byte streams of http(s) locations: an httpx body (through a proxy) and the raw
``http.client`` data path, both bounded by a header deadline, an idle timeout and a speed floor
that holds for every reader (fetch, swarm, verify)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from locpick.errors import TransferError

#: How long one ``RawHttpStream.readinto`` may fill its buffer before returning what came.
READ_SLICE = 0.25


class HeaderDeadline:
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

    def __enter__(self) -> HeaderDeadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class SpeedFloor:
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


class _Body:
    """What both HTTP streams carry: where their bytes start, the resource's size, the URL
    serving it, its validators and the speed floor over the reads."""

    def __init__(
        self,
        *,
        start: int,
        total: int | None,
        final_url: str,
        etag: str | None,
        last_modified: str | None,
        min_bps: float = 0.0,
        window: float = 5.0,
        changed: bool = False,
    ) -> None:
        self.start = start
        self.total = total
        self.final_url = final_url
        self._floor = SpeedFloor(final_url, min_bps, window)
        #: Validators of the resource, for If-Range on a later resume.
        self.etag = etag
        self.last_modified = last_modified
        #: An If-Range was sent and the server answered with the whole (changed) resource.
        self.changed = changed
        self._idle: float | None = None


class HttpStream(_Body):
    """A streaming response body as a ``readinto`` source."""

    def __init__(self, response: httpx.Response, **fields: Any) -> None:
        super().__init__(
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            **fields,
        )
        self._response = response
        self._chunks: Iterator[bytes] = response.iter_raw()
        self._pending = memoryview(b"")

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
                    raise stall_error(self.final_url, self._idle) from exc
                except httpx.HTTPError as exc:
                    raise broken_error(self.final_url, exc) from exc
                continue
            n = min(size - filled, len(self._pending))
            buf[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        return filled

    def close(self) -> None:
        self._response.close()


class RawHttpStream(_Body):
    """The data path: ``http.client`` reading straight into the caller's large buffers.

    httpx hands bodies over in 64 KiB chunks with Python work per chunk; for multi-GiB images
    that costs 1.4-2.2x the verified-download floor here (benchmarks/README.md). ``readinto``
    on the response fills 4 MiB buffers with ``recv_into`` and no copies, GIL released.
    """

    def __init__(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, **fields: Any
    ) -> None:
        super().__init__(
            etag=response.getheader("etag"),
            last_modified=response.getheader("last-modified"),
            **fields,
        )
        self._conn = conn
        self._response = response
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
        deadline = time.monotonic() + READ_SLICE
        if self._stalled:
            raise stall_error(self.final_url, self._idle)
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
            raise stall_error(self.final_url, self._idle) from exc
        except (OSError, http.client.HTTPException) as exc:
            if filled:
                return filled
            raise broken_error(self.final_url, exc) from exc
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


def stall_error(url: str, idle: float | None) -> TransferError:
    secs = "the idle timeout" if idle is None else f"{idle:g} s"
    return TransferError(f"{url}: stalled, no data for {secs}", url=url)


def broken_error(url: str, exc: Exception) -> TransferError:
    return TransferError(f"{url}: connection broke ({type(exc).__name__})", url=url)
