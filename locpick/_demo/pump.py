"""Sending one response body the way the faults say: cut, stall, corrupt, trailing bytes, and a
rate that is re-read for every slice (bandwidth, drip, the shared uplink)."""

from __future__ import annotations

import bisect
import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from locpick._demo.content import BytesSource, Source
from locpick._demo.faults import Faults
from locpick._demo.traffic import Traffic


class OriginView(Protocol):
    """What the server side reads of its origin (``locpick._demo.origin.Origin`` is one)."""

    host: str
    bind_port: int
    path: str
    faults: Faults
    traffic: Traffic
    stopped: threading.Event

    def snapshot(self) -> Faults: ...

    def current(self) -> tuple[Source, str, str]: ...


_CHUNK = 1 << 20  # fast-path send size; bytes_sent is updated after each chunk
_EXTRA_FILL = b"X"


class Abort(Exception):
    """Unwinds a handler whose connection was deliberately dropped."""


class BodyPump:
    """Writes body bytes of one response to ``sock``, counting them in the origin's traffic.

    ``drop(reset)`` closes the connection (FIN or RST) and raises :class:`Abort`; waits end
    early with :class:`Abort` when the origin stops.
    """

    def __init__(
        self, origin: OriginView, sock: socket.socket, drop: Callable[[bool], None]
    ) -> None:
        self.origin = origin
        self.sock = sock
        self.drop = drop
        #: Set when the connection must close after this response (bytes beyond the framing).
        self.close_after = False

    def wait(self, seconds: float | None) -> None:
        """Sleep, but abort promptly when the origin stops."""
        if self.origin.stopped.wait(seconds):
            raise Abort

    def send_body(self, src: Source, start: int, end: int, f: Faults) -> None:
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
            self.drop(f.reset)
        if action == "stall":
            self.wait(f.stall_seconds)
            self.drop(f.reset)
        if f.extra_bytes > 0:
            self._sendall(_EXTRA_FILL * f.extra_bytes)
            if not f.extra_in_length:
                self.close_after = True

    def _sendall(self, data: bytes | bytearray) -> None:
        src = BytesSource(data)
        self._counted(src.size, functools.partial(src.send, self.sock, 0, src.size))

    def _counted(self, n: int, send: Callable[[list[int]], None]) -> None:
        """Run ``send`` counting n bytes up front, so bytes_sent never lags what a client has
        received; bytes not handed to the kernel (send error) are subtracted again."""
        traffic = self.origin.traffic
        traffic.add_sent(n)
        progress = [0]
        try:
            send(progress)
        finally:
            if progress[0] < n:
                traffic.add_sent(progress[0] - n)

    def _pump(self, src: Source, off: int, stop: int, bad: list[int]) -> None:
        """Send file bytes [off, stop), honouring live bandwidth/drip and corruption."""
        o = self.origin
        tokens, last, first = 0.0, time.monotonic(), True
        while off < stop:
            live = o.faults
            if live.drip:
                if not first:
                    self.wait(live.drip_interval)
                n = 1
            elif live.bandwidth and live.bandwidth > 0:
                rate = float(live.bandwidth)
                n = max(1, min(256 * 1024, int(rate / 100)))
                now = time.monotonic()
                tokens = min(tokens + (now - last) * rate, max(float(n), rate * 0.05))
                last = now
                if tokens < n:
                    self.wait((n - tokens) / rate)
                    now = time.monotonic()
                    tokens += (now - last) * rate
                    last = now
                tokens -= n
            else:
                n = _CHUNK
            if live.uplink and live.uplink > 0:
                n = min(n, max(1, int(live.uplink / 100)))
                self.wait(o.traffic.uplink_turn(n, float(live.uplink)))
            first = False
            n = min(n, stop - off)
            i = bisect.bisect_left(bad, off)
            if i < len(bad) and bad[i] < off + n:
                buf = bytearray(src.read(off, n))
                for b in bad[i : bisect.bisect_left(bad, off + n)]:
                    buf[b - off] ^= 0xFF
                self._sendall(buf)
            else:
                self._counted(n, functools.partial(src.send, self.sock, off, n))
            off += n
