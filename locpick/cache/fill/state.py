"""Fill state of a cache entry still being written, shared by the downloader and ``serve``.

A node that serves its copy while downloading it (stream-through) has two processes:
the downloader writes the bytes, ``locpick serve`` answers peers. What they share lives in a
small file beside the filling entry, ``DIR/images/<id>.fill``, so it survives either process
being killed::

    header   magic, size, piece size, written prefix, hashed prefix, state,
             writer pid, its start time (clock ticks since boot), boot id, created, updated, seq
    bitmap   one bit per piece: the piece's bytes are all written
    crc32    of header + bitmap

The writer updates the whole record with one ``pwrite`` after the bytes it describes were
written (same host, so the page cache makes them visible to any reader in that order); a
reader ``pread``s it and retries a torn read (crc mismatch). The writer holds an exclusive
``flock`` on the file for its whole life, taken before the file becomes visible (temp file and
rename): the kernel drops it when the writer dies, ``kill -9`` included, so a reader that can
take a shared lock knows the writer is gone rather than slow. The pid, start time and boot id
say who the writer was (a record from an earlier boot is dead whatever the lock says). Local
filesystems only: ``flock`` on NFS may be emulated or always succeed.

Intended use (not wired yet): the downloader creates the record with the filling data file
beside it, calls :meth:`FillWriter.mark` after each ``pwrite`` and :meth:`FillWriter.hashed_to`
as the in-order hash advances, then ``complete()`` before the entry becomes visible and
``close()`` after, or ``fail()`` first on any failure. ``serve`` opens the data file first (the
inode survives the rename into place), answers HEAD with the full size, and streams a range
with :func:`await_range` per piece: ``timeout`` before the first byte is 503 + Retry-After
(:meth:`FillSnapshot.eta`), ``failed``/``dead`` ends the answer so the peer goes elsewhere.

The record itself is ``fillrecord`` (format and reader), its writer ``fillwriter``; this
module is the waiting side (``serve`` and peers) and the public import path of all three.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Literal

import attrs

from locpick.cache.fill.record import (
    FillSnapshot,
    read_fill,
)

__all__ = ["RangeWait", "await_range", "wait_for_range"]

Outcome = Literal["ready", "timeout", "dead", "failed", "gone"]


@attrs.frozen
class RangeWait:
    """How a wait for bytes from ``start`` ended, and the last state seen (None: no record)."""

    outcome: Outcome
    snapshot: FillSnapshot | None
    start: int

    @property
    def available_until(self) -> int:
        """Bytes [start, available_until) can be served now."""
        return self.start if self.snapshot is None else self.snapshot.covered_until(self.start)


def _check(path: str | os.PathLike[str], start: int, end: int) -> RangeWait | None:
    """A final answer for the range now, or None to keep waiting."""
    snap = read_fill(path)
    if snap is None:
        return RangeWait("gone", None, start)
    if snap.state == "failed":
        return RangeWait("failed", snap, start)
    if snap.has(start, min(end, snap.size)):
        return RangeWait("ready", snap, start)
    if not snap.writer_alive:
        return RangeWait("dead", snap, start)
    return None


def wait_for_range(
    path: str | os.PathLike[str],
    start: int,
    end: int,
    *,
    timeout: float,
    poll: float = 0.005,
    max_poll: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RangeWait:
    """Wait (at most ``timeout`` s) until bytes [start, end) are on disk.

    ``ready``: they are; ``failed``: the writer gave up or the hash failed; ``dead``: the writer
    died without them; ``gone``: no record (finished and removed, or never there: look at the
    cache entry); ``timeout``: the writer lives but the bytes did not come in time (serve
    answers 503 with a Retry-After from :meth:`FillSnapshot.eta`)."""
    deadline = clock() + timeout
    while True:
        done = _check(path, start, end)
        if done is not None:
            return done
        left = deadline - clock()
        if left <= 0:
            return RangeWait("timeout", read_fill(path), start)
        sleep(min(poll, left))
        poll = min(max_poll, poll * 2)


async def await_range(
    path: str | os.PathLike[str],
    start: int,
    end: int,
    *,
    timeout: float,
    poll: float = 0.005,
    max_poll: float = 0.05,
) -> RangeWait:
    """:func:`wait_for_range` for an event loop (aiohttp ``serve``): sleeps without blocking."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done = _check(path, start, end)
        if done is not None:
            return done
        left = deadline - loop.time()
        if left <= 0:
            return RangeWait("timeout", read_fill(path), start)
        await asyncio.sleep(min(poll, left))
        poll = min(max_poll, poll * 2)
