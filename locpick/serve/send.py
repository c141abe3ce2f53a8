"""How ``locpick serve`` sends bytes it does not hand to aiohttp's ``FileResponse``.

The node-wide byte budget (``[serve] max_rate``), the parsing of a single ``Range``, and the
paced sending of a range from an open, checked file descriptor.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from locpick.cache.files import CacheEntry

__all__ = ["RateLimiter", "byte_range", "range_response", "send_limited", "send_span"]


class RateLimiter:
    """One node-wide byte budget (``[serve] max_rate``): each chunk waits for its time slot."""

    def __init__(self, rate: int, burst_seconds: float = 0.25) -> None:
        self.rate = rate
        self.burst = burst_seconds
        self.next_free = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        start = max(self.next_free, now - self.burst)
        self.next_free = start + n / self.rate
        if self.next_free > now + self.burst:
            await asyncio.sleep(self.next_free - now - self.burst)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, stop) of a single ``bytes=`` range; None = whole file; ValueError = 416."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or not (m.group(1) or m.group(2)):
        raise ValueError(header)
    if not m.group(1):
        tail = int(m.group(2))
        if tail == 0:
            raise ValueError(header)
        return max(0, size - tail), size
    start = int(m.group(1))
    stop = size if not m.group(2) else min(size, int(m.group(2)) + 1)
    if start >= size or start >= stop:
        raise ValueError(header)
    return start, stop


def range_response(
    request: web.BaseRequest, size: int, headers: dict[str, str], *, use_range: bool = True
) -> tuple[web.StreamResponse, int, int]:
    """The (unprepared) 200/206 answer for the request's single Range over ``size`` bytes,
    and its [start, stop); 416 (with ``headers``) for a range that cannot be satisfied."""
    from aiohttp import web

    try:
        span = byte_range(request.headers.get("Range"), size) if use_range else None
    except ValueError:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={**headers, "Content-Range": f"bytes */{size}"}
        ) from None
    start, stop = span if span is not None else (0, size)
    resp = web.StreamResponse(status=200 if span is None else 206, headers=headers)
    resp.headers["Accept-Ranges"] = "bytes"
    resp.content_length = stop - start
    if span is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return resp, start, stop


async def send_span(
    request: web.BaseRequest,
    resp: web.StreamResponse,
    fd: int,
    start: int,
    stop: int,
    limiter: RateLimiter | None,
) -> int:
    """Send bytes [start, stop) of ``fd`` on a prepared ``resp``; returns the bytes sent.

    Unpaced: ``sendfile(2)`` from the fd (no copy through Python); paced: chunks of about
    1/8 s of ``limiter``'s budget, at most 256 KiB, read in a worker thread."""
    if stop <= start:
        return 0
    loop = asyncio.get_running_loop()
    if limiter is None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        await resp.drain()
        with open(fd, "rb", buffering=0, closefd=False) as fobj:
            return await loop.sendfile(transport, fobj, start, stop - start)
    pos = start
    step = min(256 << 10, max(16 << 10, limiter.rate // 8))
    while pos < stop:
        n = min(step, stop - pos)
        await limiter.take(n)
        chunk = await loop.run_in_executor(None, os.pread, fd, n, pos)
        if not chunk:
            break
        await resp.write(chunk)
        pos += len(chunk)
    return pos - start


async def send_limited(
    request: web.Request,
    fd: int,
    entry: CacheEntry,
    limiter: RateLimiter,
    headers: dict[str, str],
) -> web.StreamResponse:
    """A single-range answer from ``fd``, paced by ``limiter`` (no sendfile)."""
    resp, start, stop = range_response(request, entry.size, headers)
    await resp.prepare(request)
    if request.method != "HEAD":
        await send_span(request, resp, fd, start, stop, limiter)
    await resp.write_eof()
    return resp
