"""Addresses that never answer: a port that accepts and holds connections
(:class:`BlackHole`) and one where nothing listens (:class:`ClosedPort`)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Self

from locpick._demo import HOST


class BlackHoles:
    """Many black holes in one thread: a listening socket on each of ``hosts`` (e.g. a thousand
    distinct 127.0.0.x addresses), each accepting and holding connections, never answering."""

    def __init__(self, hosts: list[str], path: str = "/img.raw", *, port: int = 0) -> None:
        """``port``: 0 = any free one; a given one takes over an address another server held."""
        self.hosts, self.path, self.bind_port = hosts, path, port
        self._socks: list[socket.socket] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Self:
        if self._thread is None:
            self._stop.clear()
            self._socks = [
                socket.create_server((h, self.bind_port), backlog=128) for h in self.hosts
            ]
            self._thread = threading.Thread(target=self._accept_loop, daemon=True)
            self._thread.start()
        return self

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            for s in self._socks:
                sel.register(s, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    with contextlib.suppress(OSError):
                        conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                        with self._lock:
                            self._held.append(conn)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        for s in self._socks:
            s.close()
        self._socks = []
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
        """Connections accepted (and held) so far, over every address."""
        with self._lock:
            return len(self._held)

    @property
    def urls(self) -> list[str]:
        """One URL per address."""
        pairs = zip(self.hosts, self._socks, strict=True)
        return [f"http://{h}:{s.getsockname()[1]}{self.path}" for h, s in pairs]


class BlackHole(BlackHoles):
    """One black hole: listens on ``host`` (127.0.0.1; any 127.0.0.x works on Linux), accepts
    TCP connections and holds them open, never answering."""

    def __init__(self, path: str = "/img.raw", *, host: str = HOST, port: int = 0) -> None:
        super().__init__([host], path, port=port)
        self.host = host

    @property
    def port(self) -> int:
        if not self._socks:
            raise RuntimeError("black hole not started")
        return int(self._socks[0].getsockname()[1])

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

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
