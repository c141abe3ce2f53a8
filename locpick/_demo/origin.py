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

Layout: faults.py (what to do wrong), content.py (the bytes, ``Range``), handler.py (the HTTP
server), pump.py (sending a body under faults), traffic.py (counters), blackhole.py; this
module holds :class:`Origin` and re-exports the public names.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
import zlib
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Self

from locpick._demo import HOST
from locpick._demo.content import BytesSource, FileSource, Source
from locpick._demo.faults import Faults, RequestRecord
from locpick._demo.handler import Server
from locpick._demo.traffic import Traffic

__all__ = ["Origin"]


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
        src = BytesSource(data)
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
        src = FileSource(Path(file))
        self._init(src, path, faults)
        self.host, self.bind_port = HOST, 0
        st = os.stat(file)
        self._etag = etag or f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        self._lastmod = formatdate(st.st_mtime, usegmt=True)
        return self

    def _init(self, src: Source, path: str, faults: Faults | None) -> None:
        self._src: Source = src
        self.path = path
        self.faults = faults if faults is not None else Faults()
        self._lock = threading.Lock()
        #: Set while the origin is stopping: waits in handlers end at once.
        self.stopped = threading.Event()
        #: Connections, requests and body bytes seen (see the properties below).
        self.traffic = Traffic(self.stopped)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind and start serving (idempotent)."""
        if self._server is None:
            self.stopped.clear()
            self._server = Server(self)
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
        conns = self.traffic.stopping()
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
        src = BytesSource(data)
        with self._lock:
            self._src = src
            self._etag = etag or f'"{zlib.crc32(src.mv):08x}-{src.size:x}"'
            self._lastmod = formatdate(time.time(), usegmt=True)

    # ---------------------------------------------------------------- counters

    @property
    def bytes_sent(self) -> int:
        """Body bytes written to sockets (image bytes incl. corrupted ones, plus extra_bytes)."""
        return self.traffic.bytes_sent

    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the records of requests received (in arrival order of their answer)."""
        return self.traffic.requests

    @property
    def connections(self) -> int:
        """TCP connections accepted."""
        return self.traffic.connections

    def reset_counters(self) -> None:
        """Zero bytes_sent, requests, connections and the fail_first_n counter."""
        self.traffic.reset()

    # ---------------------------------------------------------------- for the handler

    def snapshot(self) -> Faults:
        """The faults as they are now, for one request (a copy it may keep)."""
        f = copy.copy(self.faults)
        f.corrupt_at = tuple(f.corrupt_at)
        f.extra_headers = dict(f.extra_headers)
        return f

    def current(self) -> tuple[Source, str, str]:
        """The served content with its ETag and Last-Modified, read together."""
        with self._lock:
            return self._src, self._etag, self._lastmod
