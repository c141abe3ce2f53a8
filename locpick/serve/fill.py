"""``serve``'s answers for a copy still being filled by a downloader (stream-through).

A node registers its copy as soon as its download starts; until the download ends the bytes
are in ``images/<id>.filling`` and what is on disk is told by the fill record
``images/<id>.fill`` (:mod:`locpick.cache.fill.state`), kept by the downloader, another process.
``HEAD`` answers the full size (Glance HEADs a location when it is added). ``GET`` sends what
is on disk at once (``sendfile(2)``, or paced under ``[serve] max_rate``) and waits, per
stretch, for bytes still arriving (:func:`locpick.cache.fill.state.await_range`, at most
``[serve] fill_wait`` s, or the client's ``Prefer: wait=N`` if shorter, for the first byte):
nothing of the range in time is ``503`` + ``Retry-After`` (from the fill rate); a writer that
fails, dies or stalls past the bound mid-answer gets the answer cut (connection closed short),
so the peer resumes elsewhere. A failed, dead or missing record is
``404`` like any image not held. Every such answer carries ``X-Locpick-Fill``::

    X-Locpick-Fill: state=filling; held=<contiguous bytes on disk>; size=<size>; rate=<bytes/s>

(``state=complete; held=<size>; size=<size>`` on complete entries). The data file is opened
and checked like a cache entry (:meth:`locpick.cache.store.NodeCache.open_filling`), before the
record is read, and then served from that descriptor: its inode is the one renamed into place
when the fill completes, so an answer started on the filling copy finishes from it.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
from aiohttp import hdrs, web

from locpick.cache.fill.record import FillSnapshot, FillStateError, read_fill
from locpick.cache.fill.state import RangeWait, await_range
from locpick.cache.store import NodeCache
from locpick.serve.send import RateLimiter, range_response, send_span

__all__ = ["CUT", "FILL_HEADER", "REFUSED", "SENT", "answer_filling", "complete_header"]

FILL_HEADER = "X-Locpick-Fill"
#: Request keys the metrics middleware reads (locpick.serve.ops): body bytes actually sent,
#: the answer was cut short, the reason a 503 was given.
SENT = "locpick_sent"
CUT = "locpick_cut"
REFUSED = "locpick_refused"
#: Longest Retry-After a fill's ETA may ask for.
_RETRY_MAX = 3600
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?![\d.])", re.IGNORECASE)
#: Seconds between checks that the client of a waiting answer is still there.
_SLICE = 1.0


def fill_header(snap: FillSnapshot) -> str:
    """The ``X-Locpick-Fill`` value of a copy being filled."""
    if snap.state == "complete":
        return complete_header(snap.size)
    return f"state=filling; held={snap.written}; size={snap.size}; rate={int(snap.rate())}"


def complete_header(size: int) -> str:
    """The ``X-Locpick-Fill`` value of a complete entry."""
    return f"state=complete; held={size}; size={size}"


@attrs.frozen
class FillingCopy:
    """An open, checked ``.filling`` data file and the fill record that describes it."""

    image_id: str
    fd: int
    ino: int
    record: str
    snapshot: FillSnapshot


@contextmanager
def open_filling(cache: NodeCache, image_id: str) -> Iterator[FillingCopy | None]:
    """The filling copy of ``image_id`` when a live writer fills it, else None (404)."""
    fd = cache.open_filling(image_id)
    if fd is None:
        yield None
        return
    try:
        data, record = cache.fill_paths(image_id)
        st = os.fstat(fd)
        try:
            snap = read_fill(record)
            same = os.lstat(data).st_ino == st.st_ino
        except (FillStateError, OSError):
            snap, same = None, False
        usable = (
            snap is not None
            and same
            and snap.state != "failed"
            and (snap.writer_alive or snap.state == "complete")
            and snap.size == st.st_size
        )
        yield FillingCopy(image_id, fd, st.st_ino, str(record), snap) if usable and snap else None
    finally:
        os.close(fd)


def _completed(cache: NodeCache, copy: FillingCopy) -> bool:
    """The fill record is gone because our file became the visible, complete entry."""
    entry = cache.entry(copy.image_id)
    if entry is None:
        return False
    try:
        return os.lstat(entry.path).st_ino == copy.ino
    except OSError:
        return False


async def _wait(
    cache: NodeCache,
    copy: FillingCopy,
    pos: int,
    timeout: float,
    client_left: Callable[[], bool] = lambda: False,
) -> RangeWait:
    """:func:`await_range` for the byte at ``pos``, with ``gone`` after completion as ready.

    Waits in slices of at most :data:`_SLICE` s, so a client that hangs up while waiting
    frees its transfer slot then, not at the end of ``fill_wait``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = max(0.0, deadline - loop.time())
        try:
            wait = await await_range(copy.record, pos, pos + 1, timeout=min(_SLICE, left))
        except FillStateError:
            return RangeWait("gone", None, pos)
        if wait.outcome != "timeout" or left <= _SLICE:
            break
        if client_left():
            raise ConnectionResetError("the client left while waiting for the fill")
    if wait.outcome == "gone" and _completed(cache, copy):
        done = attrs.evolve(copy.snapshot, state="complete")
        return RangeWait("ready", done, pos)
    return wait


def _bound(request: web.BaseRequest, fill_wait: float) -> float:
    """``fill_wait``, or less when the client asks for an answer sooner with RFC 7240's
    ``Prefer: wait=N`` (a probe that wants the fill state now, not the bytes)."""
    found = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    return fill_wait if found is None else min(fill_wait, float(found.group(1)))


async def answer_filling(
    request: web.Request,
    cache: NodeCache,
    copy: FillingCopy,
    *,
    fill_wait: float,
    retry_after: int,
    limiter: RateLimiter | None,
) -> web.StreamResponse:
    """HEAD/GET of a copy being filled (see the module docstring)."""
    snap = copy.snapshot
    headers = {hdrs.CACHE_CONTROL: "no-transform", FILL_HEADER: fill_header(snap)}
    # No validator is sent for a filling copy, so an If-Range can never match: whole body.
    resp, start, stop = range_response(
        request, snap.size, headers, use_range=hdrs.IF_RANGE not in request.headers
    )
    if request.method == hdrs.METH_HEAD or start >= stop:
        await resp.prepare(request)
        await resp.write_eof()
        return resp

    def client_left() -> bool:
        return request.transport is None or request.transport.is_closing()

    first = await _wait(cache, copy, start, _bound(request, fill_wait), client_left)
    if first.outcome == "timeout":
        eta = first.snapshot.eta(start + 1) if first.snapshot is not None else None
        later = retry_after if eta is None else min(_RETRY_MAX, math.ceil(eta))
        now = fill_header(first.snapshot) if first.snapshot is not None else headers[FILL_HEADER]
        request[REFUSED] = "fill_wait"
        return web.Response(
            status=503,
            text=f"filling: no bytes from {start} in time\n",
            headers={"Retry-After": str(max(1, later)), FILL_HEADER: now},
        )
    if first.outcome != "ready" or first.snapshot is None:
        raise web.HTTPNotFound(text="no such image\n")
    resp.headers[FILL_HEADER] = fill_header(first.snapshot)
    await resp.prepare(request)
    request[SENT] = 0
    wait = first
    pos = start
    while True:
        until = min(stop, wait.available_until)
        request[SENT] += await send_span(request, resp, copy.fd, pos, until, limiter)
        pos = until
        if pos >= stop:
            break
        wait = await _wait(cache, copy, pos, fill_wait, client_left)
        if wait.outcome != "ready" or wait.snapshot is None:
            return _cut(request, resp)
    await resp.write_eof()
    return resp


def _cut(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """End the answer short: the bytes sent stay, the connection closes without the rest."""
    request[CUT] = True
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
    return resp
