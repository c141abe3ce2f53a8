"""The piece map of a swarm fetch: which pieces of the image are done, and its resume record.

The record is a small JSON file beside the part file (``.DEST.locpick-part.pieces``), rewritten
atomically after each piece, so a run killed mid-swarm leaves the pieces it finished for the next.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from locpick.sink.privfile import read_private, write_json_atomic

MiB = 1 << 20
#: Auto piece size: the image split in this many pieces, clamped to [MIN_AUTO, MAX_AUTO].
#: Small pieces let a slow copy finish some while a fast one does the rest; a run of pieces
#: is read with one request, so small pieces do not mean many requests.
AUTO_PIECES = 64
MIN_AUTO = 1 * MiB
MAX_AUTO = 32 * MiB
_VERSION = 1
#: The record is rewritten at most this often while pieces complete.
SAVE_EVERY = 0.2


def auto_piece_size(size: int, configured: int) -> int:
    """``configured`` when set (>0), else the image split in ~64 pieces of 1-32 MiB."""
    if configured > 0:
        return configured
    return max(MIN_AUTO, min(MAX_AUTO, -(-size // AUTO_PIECES)))


@attrs.frozen
class Geometry:
    """How an image of ``size`` bytes is cut into pieces of ``piece`` bytes (the last shorter)."""

    size: int
    piece: int

    @property
    def count(self) -> int:
        return -(-self.size // self.piece)

    def start(self, i: int) -> int:
        return i * self.piece

    def end(self, i: int) -> int:
        return min(self.size, (i + 1) * self.piece)

    def length(self, i: int) -> int:
        return self.end(i) - self.start(i)


class PieceMap:
    """Done/not done per piece, persisted to ``path`` (None: not persisted)."""

    def __init__(self, geometry: Geometry, path: Path | None, identity: dict[str, object]) -> None:
        self.geometry = geometry
        self.path = path
        self.identity = identity
        self.done = [False] * geometry.count
        self._next_save = 0.0

    def load(self) -> int:
        """Take over the pieces a matching record says are done; returns how many."""
        if self.path is None:
            return 0
        raw = read_private(self.path, 4 << 20)  # never a planted symlink, FIFO or other's file
        try:
            meta = json.loads(raw or b"")
        except ValueError:
            return 0
        if not isinstance(meta, dict) or meta.get("version") != _VERSION:
            return 0
        if meta.get("piece") != self.geometry.piece or meta.get("identity") != self.identity:
            return 0
        n = 0
        for i in meta.get("done", []):
            if isinstance(i, int) and 0 <= i < self.geometry.count and not self.done[i]:
                self.done[i] = True
                n += 1
        return n

    def save(self, now: float | None = None) -> None:
        """Write the record (at most every SAVE_EVERY s when ``now`` is given)."""
        if self.path is None:
            return
        if now is not None:
            if now < self._next_save:
                return
            self._next_save = now + SAVE_EVERY
        meta = {
            "version": _VERSION,
            "piece": self.geometry.piece,
            "identity": self.identity,
            "done": [i for i, d in enumerate(self.done) if d],
        }
        with contextlib.suppress(OSError):  # the record is an optimisation: resume re-fetches
            write_json_atomic(self.path, meta)

    def remove(self) -> None:
        if self.path is not None:
            for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def clear(self) -> None:
        self.done = [False] * self.geometry.count
        self.save()

    def prefix_bytes(self) -> int:
        """Bytes of the contiguous run of done pieces from offset 0."""
        n = 0
        for d in self.done:
            if not d:
                break
            n += 1
        return min(self.geometry.size, n * self.geometry.piece)

    def missing(self) -> Iterator[int]:
        return (i for i, d in enumerate(self.done) if not d)

    @property
    def complete(self) -> bool:
        return all(self.done)


def ranges(pieces: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted piece indexes grouped into ``(first, last + 1)`` runs."""
    out: list[tuple[int, int]] = []
    for i in sorted(pieces):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
