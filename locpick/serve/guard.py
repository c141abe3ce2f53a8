"""``locpick serve``'s defence below aiohttp: caps on connections and deadlines while idle.

:class:`ConnectionGuard` wraps aiohttp's protocol factory: a connection over the total cap
(``[serve] max_connections``, lowered to fit ``ulimit -n``) or over the per-address cap gets a
one-line ``503`` and is closed; a connection that has not sent a complete request head within
``header_timeout``, or sits idle between requests for ``keepalive_timeout``, is closed. While a
request is in progress, a client that took less than ``min_send_rate`` bytes/s over the last
``send_timeout`` seconds although bytes wait in the socket's send queue (it stopped reading)
is cut: its transfer slot is free again. Progress is what the peer's TCP stack
acknowledged (``TCP_INFO``), which covers ``sendfile(2)`` as well as paced writes.
"""

from __future__ import annotations

import asyncio
import fcntl
import resource
import socket
import struct
import termios
from collections import Counter
from collections.abc import Callable
from typing import Any

from locpick.config.model import ServeConfig

__all__ = ["BACKLOG", "ConnectionGuard"]

#: File descriptors kept free of client connections (cache files, the listener, logging).
_FD_RESERVE = 64
#: Listen backlog, which asyncio also uses as the number of sockets accepted in one go (before
#: the guard can refuse any): kept under the reserve so a connection flood never hits EMFILE.
BACKLOG = _FD_RESERVE // 2
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


#: ``struct tcp_info``: ``tcpi_bytes_acked`` (u64) sits at this offset (Linux >= 4.1).
_BYTES_ACKED = 120


def _acked(sock: Any) -> int | None:
    """Bytes of this TCP connection the peer acknowledged; None when unknown (not TCP,
    not Linux)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < _BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("=Q", info, _BYTES_ACKED)[0])


def _unsent(sock: Any) -> int:
    """Bytes waiting in the socket's send queue (0 when unknown)."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    except (OSError, AttributeError, ValueError):
        return 0
    return int(struct.unpack("=i", buf)[0])


class _Connection(asyncio.Protocol):
    """One client connection: admitted or refused, timed while no request is in progress."""

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]):
        self.guard = guard
        self.make_inner = make_inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.busy = 0
        self.timer: asyncio.TimerHandle | None = None
        self.watch: asyncio.TimerHandle | None = None
        self.acked: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        if not self.guard.admit(self):
            transport.write(_BUSY % self.guard.config.retry_after)
            transport.close()
            return
        self.inner = self.make_inner()
        self.guard.by_handler[self.inner] = self
        self.inner.connection_made(transport)
        self.arm(self.guard.config.header_timeout)

    def arm(self, seconds: float) -> None:
        """Close the connection in ``seconds`` unless a request head arrives first."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        if self.busy == 0 and self.transport is not None:
            self.guard.timed_out += 1
            self.transport.close()

    def request_started(self) -> None:
        self.busy += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy == 1 and self.transport is not None:
            self.acked = _acked(self.transport.get_extra_info("socket"))
            if self.acked is not None:
                self.watch = asyncio.get_running_loop().call_later(
                    self.guard.config.send_timeout, self._check_drain
                )

    def _check_drain(self) -> None:
        """Cut the connection when its client drained too little over ``send_timeout``
        while bytes wait to be sent; otherwise look again after another ``send_timeout``."""
        self.watch = None
        if self.busy == 0 or self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        acked = _acked(sock)
        if acked is None or self.acked is None:
            return
        cfg = self.guard.config
        if acked - self.acked < cfg.min_send_rate * cfg.send_timeout and _unsent(sock) > 0:
            self.guard.stalled += 1
            # shutdown(2), not transport.abort(): a sendfile(2) in progress holds the socket
            # outside the transport; shut, it fails at once and the handler ends as usual
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                self.transport.abort()
            return
        self.acked = acked
        self.watch = asyncio.get_running_loop().call_later(cfg.send_timeout, self._check_drain)

    def request_done(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            if self.watch is not None:
                self.watch.cancel()
                self.watch = None
            self.arm(self.guard.config.keepalive_timeout)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.watch is not None:
            self.watch.cancel()
        if self.inner is not None:
            self.guard.release(self)
            self.guard.by_handler.pop(self.inner, None)
            self.inner.connection_lost(exc)


class ConnectionGuard:
    """Caps on connections (total, per client address) and deadlines while none is busy.

    Wraps aiohttp's protocol factory, so a slow or silent client costs one file descriptor for
    at most ``header_timeout`` (then ``keepalive_timeout`` between requests), and one address
    cannot take more than ``max_connections_per_client`` of them.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = config.max_connections
        if soft != resource.RLIM_INFINITY:
            room = min(room, max(8, soft - _FD_RESERVE))
        self.max_total = room
        self.open = 0
        self.per_peer: Counter[str] = Counter()
        self.by_handler: dict[object, _Connection] = {}
        self.refused = 0
        self.timed_out = 0
        #: Connections cut because their client stopped reading (``send_timeout``).
        self.stalled = 0
        #: Told the reason of each refusal (``connections`` or ``per_client``), e.g. metrics.
        self.on_refuse: Callable[[str], object] | None = None

    def admit(self, conn: _Connection) -> bool:
        reason = None
        if self.open >= self.max_total:
            reason = "connections"
        elif self.per_peer[conn.peer] >= self.config.max_connections_per_client:
            reason = "per_client"
        if reason is not None:
            self.refused += 1
            if self.on_refuse is not None:
                self.on_refuse(reason)
            return False
        self.open += 1
        self.per_peer[conn.peer] += 1
        return True

    def release(self, conn: _Connection) -> None:
        self.open -= 1
        self.per_peer[conn.peer] -= 1
        if self.per_peer[conn.peer] <= 0:
            del self.per_peer[conn.peer]

    def factory(self, make_inner: Callable[[], asyncio.Protocol]) -> Callable[[], _Connection]:
        return lambda: _Connection(self, make_inner)
