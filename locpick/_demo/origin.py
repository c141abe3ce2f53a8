"""A fault-injecting HTTP/1.1 origin on 127.0.0.1 for tests, the demo and benchmarks (stdlib only).

Usage::

    with Origin(b"..." * 1000) as o:
        o.faults.bandwidth = 1_000_000
        fetch(o.url)
        assert o.bytes_sent == ...

Faults live in a mutable :class:`Faults` dataclass (``origin.faults``). Each request takes a
snapshot of it when it arrives, except ``bandwidth``, ``drip`` and ``drip_interval`` which are
re-read for every slice of body sent (so a test can slow down a response in flight).

Also provided: :class:`BlackHole` / :func:`blackhole` (accepts TCP connections, never answers)
and :class:`ClosedPort` / :func:`closed_port_url` (a port where nothing listens).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import functools
import os
import selectors
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = [
    "BlackHole",
    "ClosedPort",
    "Faults",
    "Origin",
    "RequestRecord",
    "blackhole",
    "closed_port_url",
]

HOST = "127.0.0.1"
_CHUNK = 1 << 20  # fast-path send size; bytes_sent is updated after each chunk
_EXTRA_FILL = b"X"


@dataclasses.dataclass
class Faults:
    """Faults to inject; mutate attributes at any time (effective from the next request).

    Precedence per request: ``blackhole`` > ``first_byte_delay`` (then continue) >
    ``redirect_to`` > ``status`` > ``fail_first_n`` > normal serving.
    """

    #: Seconds to wait before sending the status line/headers (applies to every response).
    first_byte_delay: float = 0.0
    #: Cap on body bytes/s for each response (token bucket, ~10 ms slices, 50 ms burst). Live.
    bandwidth: float | None = None
    #: Cap on body bytes/s of the whole origin, SHARED by all its connections (as a NIC is):
    #: parallel requests to one origin split this rate. Live.
    uplink: float | None = None
    #: Close the connection after this many body bytes *of each response* (0 = headers only).
    cut_after_bytes: int | None = None
    #: Close the connection when a response reaches this *absolute file offset*: bytes
    #: [cut_at_offset, ...) are never sent. Applies only if start < cut_at_offset < end of the
    #: served range, so a resume with ``Range: bytes=<cut_at_offset>-`` succeeds.
    cut_at_offset: int | None = None
    #: Use a TCP RST (SO_LINGER 0) instead of a FIN for cuts/stall ends.
    reset: bool = False
    #: Send this many body bytes of each response, then send nothing while keeping the socket
    #: open, until the origin stops or ``stall_seconds`` elapse; then close the connection.
    stall_after: int | None = None
    stall_seconds: float | None = None
    #: Absolute file offsets whose byte is XOR-ed with 0xFF when sent.
    corrupt_at: Iterable[int] = ()
    #: Answer every request with this status (small text body), e.g. 500 or 404.
    status: int | None = None
    #: The first N requests (counted since start/reset_counters) get ``fail_status``.
    fail_first_n: int = 0
    fail_status: int = 503
    #: Value of a Retry-After header on ``fail_first_n`` answers (None = no header).
    retry_after: int | str | None = None
    #: Accept connections but never answer (new requests wait until the origin stops).
    blackhole: bool = False
    #: Answer Range requests with 200 and the full body; Accept-Ranges is not sent.
    ignore_range: bool = False
    #: Add this delta to the start/end claimed in Content-Range of 206 answers; the body and
    #: Content-Length stay those of the range actually requested.
    lie_content_range: int | None = None
    #: Append this many b"X" bytes after each body. With ``extra_in_length`` False the
    #: Content-Length stays honest (the extra bytes trail beyond the framing and the connection
    #: is closed afterwards); with True Content-Length includes them (the body is longer than
    #: the image; Content-Range, if any, is unchanged).
    extra_bytes: int = 0
    extra_in_length: bool = False
    #: Answer every request (any path) with 302 and this Location.
    redirect_to: str | None = None
    #: Send the body one byte at a time, ``drip_interval`` seconds apart. Live.
    drip: bool = False
    drip_interval: float = 1.0
    #: Extra response headers added to normal (200/206) answers.
    extra_headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def reset_all(self) -> None:
        """Restore every fault to its default, in place."""
        fresh = Faults()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as seen by the origin."""

    method: str
    path: str
    headers: dict[str, str]
    range: str | None
    status: int | None  # None when the request was never answered (blackhole)
    time: float  # time.monotonic() at arrival


class _Abort(Exception):
    """Unwinds a handler whose connection was deliberately dropped."""


# --------------------------------------------------------------------------- sources


class _BytesSource:
    def __init__(self, data: bytes | bytearray) -> None:
        self.mv = memoryview(data).cast("B")
        self.size = len(self.mv)

    def read(self, off: int, n: int) -> bytes:
        return bytes(self.mv[off : off + n])

    def send(self, sock: socket.socket, off: int, n: int, progress: list[int]) -> None:
        view = self.mv[off : off + n]
        while progress[0] < n:
            progress[0] += sock.send(view[progress[0] :])

    def close(self) -> None:
        pass


class _FileSource:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def read(self, off: int, n: int) -> bytes:
        return os.pread(self.fd, n, off)

    def send(self, sock: socket.socket, off: int, n: int, progress: list[int]) -> None:
        while progress[0] < n:
            sent = os.sendfile(sock.fileno(), self.fd, off + progress[0], n - progress[0])
            if sent == 0:
                raise ConnectionError("sendfile sent nothing (file truncated?)")
            progress[0] += sent

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --------------------------------------------------------------------------- server


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """Return (start, end_exclusive), "unsat", or None (ignore: invalid or multi-range)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n < 0:
                return None
            return "unsat" if n == 0 or size == 0 else (max(0, size - n), size)
        a = int(first)
        b = int(last) if last != "" else None
    except ValueError:
        return None
    if a < 0 or (b is not None and b < a):
        return None
    if a >= size:
        return "unsat"
    return a, size if b is None else min(b + 1, size)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    request_queue_size = 128

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        if ":" in origin.host:
            self.address_family = socket.AF_INET6
        super().__init__((origin.host, origin.bind_port), _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn() (slow reverse DNS)
        if self.address_family == socket.AF_INET6:
            # "::" with v6only off also accepts IPv4 peers, as IPv4-mapped addresses
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.origin.host, self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # disconnects are expected in fault tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.origin = self.server.origin
        self.origin._register(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, _Abort):
            self.close_connection = True

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.origin._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    # ---------------------------------------------------------------- helpers

    def _wait(self, seconds: float | None) -> None:
        """Sleep, but abort promptly when the origin stops."""
        if self.origin._stop.wait(seconds):
            raise _Abort

    def _record(self, status: int | None) -> None:
        self.origin._record(
            RequestRecord(
                method=self.command,
                path=self.path,
                headers=dict(self.headers.items()),
                range=self.headers.get("Range"),
                status=status,
                time=self._t0,
            )
        )

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._record(status)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _simple(self, status: int, headers: dict[str, str] | None = None) -> None:
        reason = self.responses.get(status, ("",))[0]
        body = b"" if status in (204, 304) else f"{status} {reason}\n".encode()
        hdrs = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        self._start(status, hdrs)
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _drop(self, reset: bool) -> None:
        """Close the connection now: FIN (shutdown) or RST (SO_LINGER 0 + close)."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                self.rfile.close()  # drops the last io ref: the fd really closes -> RST
            else:
                sock.shutdown(socket.SHUT_RDWR)
        raise _Abort

    # ---------------------------------------------------------------- main logic

    def _respond(self, body: bool) -> None:
        o = self.origin
        self._t0 = time.monotonic()
        f = o._snapshot()
        n_req = o._count_request()
        if f.blackhole:
            self._record(None)
            self._wait(None)
        if f.first_byte_delay:
            self._wait(f.first_byte_delay)
        if f.redirect_to is not None:
            return self._simple(302, {"Location": f.redirect_to})
        if f.status is not None:
            return self._simple(f.status)
        if n_req < f.fail_first_n:
            retry = {} if f.retry_after is None else {"Retry-After": str(f.retry_after)}
            return self._simple(f.fail_status, retry)
        if urlsplit(self.path).path != o.path:
            return self._simple(404)

        src, etag, lastmod = o._current()
        size = src.size
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not f.ignore_range and (if_range is None or if_range in (etag, lastmod)):
            parsed = _parse_range(rng, size)
            if parsed == "unsat":
                return self._simple(416, {"Content-Range": f"bytes */{size}"})
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
        extra = f.extra_bytes if f.extra_bytes > 0 else 0
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start + (extra if f.extra_in_length else 0)),
            "ETag": etag,
            "Last-Modified": lastmod,
        }
        if not f.ignore_range:
            headers["Accept-Ranges"] = "bytes"
        if status == 206:
            d = f.lie_content_range or 0
            headers["Content-Range"] = f"bytes {start + d}-{end - 1 + d}/{size}"
        headers.update(f.extra_headers)
        self._start(status, headers)
        if body:
            self._send_body(src, start, end, f)
        return None

    def _send_body(self, src: _BytesSource | _FileSource, start: int, end: int, f: Faults) -> None:
        stop, action = end - start, None
        cands: list[tuple[int, str]] = []
        if f.cut_after_bytes is not None:
            cands.append((f.cut_after_bytes, "cut"))
        if f.cut_at_offset is not None and start < f.cut_at_offset < end:
            cands.append((f.cut_at_offset - start, "cut"))
        if f.stall_after is not None:
            cands.append((f.stall_after, "stall"))
        for n, a in cands:
            if max(n, 0) < stop:
                stop, action = max(n, 0), a
        self._pump(src, start, start + stop, sorted(set(f.corrupt_at)))
        if action == "cut":
            self._drop(f.reset)
        if action == "stall":
            if self.origin._stop.wait(f.stall_seconds):
                raise _Abort
            self._drop(f.reset)
        if f.extra_bytes > 0:
            self._sendall(_EXTRA_FILL * f.extra_bytes)
            if not f.extra_in_length:
                self.close_connection = True

    def _sendall(self, data: bytes | bytearray) -> None:
        src = _BytesSource(data)
        self._counted(src.size, functools.partial(src.send, self.connection, 0, src.size))

    def _counted(self, n: int, send: Callable[[list[int]], None]) -> None:
        """Run ``send`` counting n bytes up front, so bytes_sent never lags what a client has
        received; bytes not handed to the kernel (send error) are subtracted again."""
        self.origin._add_sent(n)
        progress = [0]
        try:
            send(progress)
        finally:
            if progress[0] < n:
                self.origin._add_sent(progress[0] - n)

    def _pump(self, src: _BytesSource | _FileSource, off: int, stop: int, bad: list[int]) -> None:
        """Send file bytes [off, stop), honouring live bandwidth/drip and corruption."""
        o = self.origin
        tokens, last, first = 0.0, time.monotonic(), True
        while off < stop:
            live = o.faults
            if live.drip:
                if not first:
                    self._wait(live.drip_interval)
                n = 1
            elif live.bandwidth and live.bandwidth > 0:
                rate = float(live.bandwidth)
                n = max(1, min(256 * 1024, int(rate / 100)))
                now = time.monotonic()
                tokens = min(tokens + (now - last) * rate, max(float(n), rate * 0.05))
                last = now
                if tokens < n:
                    self._wait((n - tokens) / rate)
                    now = time.monotonic()
                    tokens += (now - last) * rate
                    last = now
                tokens -= n
            else:
                n = _CHUNK
            if live.uplink and live.uplink > 0:
                n = min(n, max(1, int(live.uplink / 100)))
                self._wait(o._uplink_turn(n, float(live.uplink)))
            first = False
            n = min(n, stop - off)
            i = bisect.bisect_left(bad, off)
            if i < len(bad) and bad[i] < off + n:
                buf = bytearray(src.read(off, n))
                for b in bad[i : bisect.bisect_left(bad, off + n)]:
                    buf[b - off] ^= 0xFF
                self._sendall(buf)
            else:
                self._counted(n, functools.partial(src.send, self.connection, off, n))
            off += n


class Origin:
    """Threaded HTTP/1.1 origin serving one image at ``path`` on 127.0.0.1 (ephemeral port).

    Supports GET/HEAD, single ``Range`` (``a-b``, ``a-``, ``-n``; multi-range and malformed
    ranges are ignored -> 200), 416 with ``Content-Range: bytes */size``, ETag, Last-Modified
    and If-Range (mismatch -> full 200). Other paths get 404. Keep-alive is supported.
    """

    def __init__(
        self,
        data: bytes,
        *,
        path: str = "/img.raw",
        faults: Faults | None = None,
        etag: str | None = None,
        host: str = HOST,
        port: int = 0,
    ) -> None:
        src = _BytesSource(data)
        self._init(src, path, faults)
        #: Address to bind (an IPv6 one such as "::1" or "::ffff:127.0.0.1" works) and port
        #: (0 = a free one).
        self.host, self.bind_port = host, port
        self._etag = etag or f'"{zlib.crc32(src.mv):08x}-{src.size:x}"'
        self._lastmod = formatdate(time.time() - 3600, usegmt=True)

    @classmethod
    def from_file(
        cls,
        file: str | os.PathLike[str],
        *,
        path: str = "/img.raw",
        faults: Faults | None = None,
        etag: str | None = None,
    ) -> Origin:
        """Serve a file without loading it (sendfile fast path)."""
        self = cls.__new__(cls)
        src = _FileSource(Path(file))
        self._init(src, path, faults)
        self.host, self.bind_port = HOST, 0
        st = os.stat(file)
        self._etag = etag or f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        self._lastmod = formatdate(st.st_mtime, usegmt=True)
        return self

    def _init(self, src: _BytesSource | _FileSource, path: str, faults: Faults | None) -> None:
        self._src: _BytesSource | _FileSource = src
        self.path = path
        self.faults = faults if faults is not None else Faults()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bytes_sent = 0
        self._requests: list[RequestRecord] = []
        self._n_requests = 0
        self._connections = 0
        self._uplink_free = 0.0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind and start serving (idempotent)."""
        if self._server is None:
            self._stop.clear()
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"origin:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop all connections (releasing stalls/blackholes) and join threads."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._stop.set()
            conns = list(self._conns)
        server.shutdown()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._src.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- info

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("origin not started")
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash; IPv6 hosts bracketed, port 80 left
        out)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}" + ("" if self.port == 80 else f":{self.port}")

    @property
    def url(self) -> str:
        """Full URL of the image."""
        return self.base + self.path

    @property
    def size(self) -> int:
        return self._src.size

    @property
    def etag(self) -> str:
        return self._etag

    @property
    def last_modified(self) -> str:
        return self._lastmod

    def set_data(self, data: bytes, *, etag: str | None = None) -> None:
        """Replace the served image (simulates a changed resource); new ETag/Last-Modified."""
        src = _BytesSource(data)
        with self._lock:
            self._src = src
            self._etag = etag or f'"{zlib.crc32(src.mv):08x}-{src.size:x}"'
            self._lastmod = formatdate(time.time(), usegmt=True)

    # ---------------------------------------------------------------- counters

    @property
    def bytes_sent(self) -> int:
        """Body bytes written to sockets (image bytes incl. corrupted ones, plus extra_bytes)."""
        with self._lock:
            return self._bytes_sent

    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the records of requests received (in arrival order of their answer)."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted."""
        with self._lock:
            return self._connections

    def reset_counters(self) -> None:
        """Zero bytes_sent, requests, connections and the fail_first_n counter."""
        with self._lock:
            self._bytes_sent = 0
            self._requests = []
            self._n_requests = 0
            self._connections = 0

    # ---------------------------------------------------------------- internals

    def _snapshot(self) -> Faults:
        f = copy.copy(self.faults)
        f.corrupt_at = tuple(f.corrupt_at)
        f.extra_headers = dict(f.extra_headers)
        return f

    def _current(self) -> tuple[_BytesSource | _FileSource, str, str]:
        with self._lock:
            return self._src, self._etag, self._lastmod

    def _count_request(self) -> int:
        with self._lock:
            n = self._n_requests
            self._n_requests += 1
            return n

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._requests.append(rec)

    def _uplink_turn(self, n: int, rate: float) -> float:
        """Reserve the shared uplink for ``n`` bytes; returns seconds to wait for the turn."""
        with self._lock:
            now = time.monotonic()
            free = max(self._uplink_free, now - 0.02)
            self._uplink_free = free + n / rate
            return max(0.0, free - now)

    def _add_sent(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n

    def _register(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._conns.add(sock)
            stopping = self._stop.is_set()
        if stopping:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)


# --------------------------------------------------------------------------- black hole


class BlackHole:
    """Listens on 127.0.0.1, accepts TCP connections and holds them open, never answering."""

    def __init__(self, path: str = "/img.raw") -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Self:
        if self._sock is None:
            self._stop.clear()
            self._sock = socket.create_server((HOST, 0), backlog=128)
            self._thread = threading.Thread(target=self._accept_loop, daemon=True)
            self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if sel.select(0.05):
                    with contextlib.suppress(OSError):
                        conn, _ = self._sock.accept()
                        with self._lock:
                            self._held.append(conn)

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        sock.close()
        with self._lock:
            held, self._held = self._held, []
        for c in held:
            c.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """Connections accepted (and held) so far."""
        with self._lock:
            return len(self._held)

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("black hole not started")
        return int(self._sock.getsockname()[1])

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.path


def blackhole(path: str = "/img.raw") -> BlackHole:
    """Return a started :class:`BlackHole` (use as a context manager to stop it)."""
    return BlackHole(path).start()


class ClosedPort:
    """Reserves a 127.0.0.1 port that is bound but not listening: connects are refused (RST)."""

    def __init__(self, path: str = "/img.raw") -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self.port: int = self._sock.getsockname()[1]
        self.base = f"http://{HOST}:{self.port}"
        self.url = self.base + path

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port_url(path: str = "/img.raw") -> str:
    """URL on a port that was free a moment ago (nothing listens; tiny reuse race)."""
    with ClosedPort(path) as cp:
        return cp.url
