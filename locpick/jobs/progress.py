"""A download's progress, as its caller sees it: :class:`~locpick.models.Progress` values
delivered from one thread, never going backwards, the last one before ``download`` returns.

The transfer engine reports ``(bytes held, total)`` from whichever thread moved the bytes (the
caller's, a swarm reader, a copy engine), sometimes going back to 0 after a restart.
:class:`ProgressRelay` keeps the highest count under a lock and hands it to the caller's
callback from its own thread, coalescing what arrived while the callback ran: a slow callback
slows nobody, and two calls never overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from locpick.models import Progress

log = logging.getLogger(__name__)

#: What a caller passes as ``progress=``.
ProgressCallback = Callable[[Progress], None]


class ProgressRelay:
    """Takes byte counts from any thread; calls ``callback`` from one thread of its own."""

    def __init__(
        self,
        image_id: str,
        callback: ProgressCallback,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.image_id = image_id
        self._callback = callback
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = 0
        self._total: int | None = None
        self._sent: tuple[int, int | None] | None = None
        self._closing = False
        #: The exception the callback raised, if it did (the download is then aborted).
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"locpick-progress-{image_id[:8]}", daemon=True
        )
        self._thread.start()

    def __call__(self, done: int, total: int | None) -> None:
        """The engine's side (any thread): record ``done`` if it is a new high, and wake."""
        with self._lock:
            if done > self._done:
                self._done = done
            if total is not None:
                self._total = total
        self._wake.set()

    def close(self, done: int | None = None, total: int | None = None) -> None:
        """Deliver what is pending (``done``/``total``: the delivered count, for a download that
        ended without the engine reporting it, e.g. a node-cache hit), then stop the thread.

        Returns once the last call has returned; calling it again does nothing."""
        if done is not None:
            self(done, total)
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                state = (self._done, self._total)
                closing = self._closing
            if state != self._sent and self.error is None and state != (0, None):
                self._sent = state
                value = Progress(self.image_id, state[0], state[1], self._clock() - self._t0)
                try:
                    self._callback(value)
                except BaseException as exc:  # noqa: BLE001 - handed to the download, raised there
                    log.debug("progress callback raised %s: aborting the download", exc)
                    self.error = exc
            if closing:
                return
