"""One sequential hash over bytes written out of order: it follows the contiguous written prefix.

Buffers that land at the hash's frontier are hashed from memory (no re-read when pieces arrive in
order); buffers beyond it are only noted as written, and read back from the file (page cache)
once the frontier reaches them, so each out-of-order byte is re-read at most once.
"""

from __future__ import annotations

import bisect
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

_REREAD = 4 << 20

Release = Callable[[bytearray], None]


class OrderedHasher:
    """Feed ``offer(pos, buf, n)`` after each write at ``pos``; ``finish()`` returns the hash."""

    def __init__(
        self, hasher: Any, fd: int, start: int, on_advance: Callable[[int], None] | None = None
    ) -> None:
        """``on_advance(frontier)``: told each time the hashed prefix grows."""
        self._hasher = hasher
        self._on_advance = on_advance
        self._fd = fd
        #: Every byte before this is in the hash.
        self.frontier = start
        #: Written ranges beyond the frontier, sorted, disjoint: [[a, b), ...].
        self._written: list[list[int]] = []
        self._queue: queue.SimpleQueue[tuple[int, bytearray, int, Release | None] | None] = (
            queue.SimpleQueue()
        )
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        #: Bytes read back from the file (out-of-order arrivals).
        self.reread = 0
        self._thread = threading.Thread(target=self._run, name="locpick-ohash", daemon=True)
        self._thread.start()

    def offer(self, pos: int, buf: bytearray, n: int, release: Release | None) -> None:
        """``buf[:n]`` is now in the file at ``pos``; ``release(buf)`` is called when done."""
        self._queue.put((pos, buf, n, release))

    def note(self, pos: int, n: int) -> None:
        """``[pos, pos + n)`` is in the file already (a resumed piece): read it back in turn."""
        self._queue.put((pos, bytearray(), n, None))

    def wait_for(self, end: int, timeout: float | None = None) -> bool:
        """Block until the frontier reaches ``end`` (or the timeout); True when it did."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self.frontier >= end or self._error is not None, timeout
            )

    def finish(self) -> Any:
        """Stop the worker and return the hash object (its state: bytes up to ``frontier``)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._hasher

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pos, buf, n, release = item
            try:
                if self._error is None:
                    before = self.frontier
                    self._take(pos, buf, n)
                    if self._on_advance is not None and self.frontier > before:
                        self._on_advance(self.frontier)
            except BaseException as exc:  # noqa: BLE001 - surfaced in finish()
                self._error = exc
            finally:
                if release is not None:
                    release(buf)
            with self._changed:
                self._changed.notify_all()

    def _take(self, pos: int, buf: bytearray, n: int) -> None:
        end = pos + n
        if end <= self.frontier:
            return
        if buf and pos <= self.frontier:
            if self._hasher is not None:
                self._hasher.update(memoryview(buf)[self.frontier - pos : n])
            self.frontier = end
        else:
            self._add(max(pos, self.frontier), end)
        self._catch_up()

    def _add(self, a: int, b: int) -> None:
        w = self._written
        i = bisect.bisect_left(w, [a, a])
        if i > 0 and w[i - 1][1] >= a:
            i -= 1
            a = w[i][0]
        j = i
        while j < len(w) and w[j][0] <= b:
            b = max(b, w[j][1])
            j += 1
        w[i:j] = [[a, b]]

    def _catch_up(self) -> None:
        """Read back written ranges that now touch the frontier."""
        w = self._written
        while w and w[0][0] <= self.frontier:
            b = w.pop(0)[1]
            if b > self.frontier:
                self._reread(self.frontier, b)
                self.frontier = b

    def _reread(self, a: int, b: int) -> None:
        buf = bytearray(min(_REREAD, b - a))
        view = memoryview(buf)
        while a < b:
            n = os.preadv(self._fd, [view[: min(len(buf), b - a)]], a)
            if n <= 0:
                raise OSError(f"part file shorter than the bytes written (at {a})")
            if self._hasher is not None:
                self._hasher.update(view[:n])
            a += n
            self.reread += n
