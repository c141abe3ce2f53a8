"""The atomic sink of a swarm fetch: the usual part file and sidecar, plus the piece map.

On resume only the pieces the map lists are trusted (a part written out of order has holes);
the hash is rebuilt over their contiguous prefix and the rest is read back in turn.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locpick.fetch.swarm.pieces import PieceMap
from locpick.sink.atomic import AtomicSink

#: ``(fd, prefix_hasher) -> hasher``: fills the temp file and returns the hash of all of it.
Filler = Callable[[int, Any], Any]


class SwarmSink(AtomicSink):
    """An AtomicSink whose bytes come in pieces, in any order (see ``fill``)."""

    def __init__(self, dest: Any, *, pieces: PieceMap, **kwargs: Any) -> None:
        self.pieces = pieces
        self._reused_map = False
        super().__init__(dest, **kwargs)
        if self.sidecar is not None:
            self.pieces.path = self.sidecar.with_name(self.tmp.name + ".pieces")
        if self._reused_map:
            self.offset = self.reused = self.pieces.prefix_bytes()
        else:
            self.pieces.done = [False] * self.pieces.geometry.count
        self.pieces.save()

    def __enter__(self) -> SwarmSink:
        return self

    def _rehash(self, fd: int, held: int) -> None:
        """A reused part: trust the piece map (or, without one, the contiguous bytes held)."""
        assert self.sidecar is not None
        self.pieces.path = self.sidecar.with_name(self.tmp.name + ".pieces")
        if self.pieces.path.exists():
            self.pieces.load()  # a record of another piece size trusts nothing: holes
        else:  # a part written in order (one location at a time): contiguous
            g = self.pieces.geometry
            self.pieces.done = [g.end(i) <= held for i in range(g.count)]
        self._reused_map = True
        super()._rehash(fd, min(held, self.pieces.prefix_bytes()))

    def _tee_reused(self) -> None:
        """The pieces resumed from an earlier run go into the filling copy too."""
        assert self.tee is not None and self.fd is not None
        g = self.pieces.geometry
        for i, done in enumerate(self.pieces.done):
            if done:
                self.tee.copy_from(self.fd, g.start(i), g.end(i))

    def fill(self, filler: Filler) -> None:
        """Let ``filler`` write every byte at fd level and return the hash of the whole file."""
        assert self.fd is not None and self.size is not None
        self._drain_writer()
        hasher = self._hasher.detach()
        try:
            hasher = filler(self.fd, hasher)
        finally:
            self._start_pipeline(hasher)
        self.offset = self.size

    def truncate(self) -> Any:
        """Start over: empty file, no piece done; returns a fresh hash object."""
        assert self.fd is not None
        if self.tee is not None:  # peers must not go on reading bytes that were wrong
            self.tee.withdraw("every piece is fetched again (the bytes held were wrong)")
        os.ftruncate(self.fd, 0)
        self.offset = self.reused = 0
        self.pieces.clear()
        return self.expected.new()

    def commit(self) -> str | None:
        verified = super().commit()
        self.pieces.remove()
        return verified

    def keep(self) -> None:
        """Close the part file and leave it (and its records) for the next run to resume:
        only the pieces the map lists are trusted then."""
        self.pieces.save()
        self._drain_writer_quietly()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._kept = True

    def _drain_writer_quietly(self) -> None:
        with contextlib.suppress(OSError, Exception):
            self._pipe.drain()
        self._pipe.hasher.stop()

    def abort(self) -> None:
        if getattr(self, "_kept", False):
            return
        super().abort()
        with contextlib.suppress(AttributeError):
            self.pieces.remove()


def discard_pieced_part(dest: str | os.PathLike[str]) -> None:
    """Before a one-location download: a part left by a swarm has holes, so it cannot be
    continued in order; remove it (the caller holds the dest lock)."""
    dest = Path(dest)
    pieces = dest.parent / f".{dest.name}.locpick-part.pieces"
    if not pieces.exists():
        return
    for name in (f".{dest.name}.locpick-part", f".{dest.name}.locpick-part.json", pieces.name):
        with contextlib.suppress(FileNotFoundError):
            (dest.parent / name).unlink()
