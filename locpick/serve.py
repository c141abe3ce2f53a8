"""``locpick serve``: the node cache over HTTP, read-only, so other nodes can use it.

aiohttp serves each file with ``FileResponse``: Range and If-Range handled by aiohttp, the body
sent with ``sendfile(2)`` by the event loop (no copy through Python). Only ``GET``/``HEAD
/images/{image_id}`` exists; the id must be a plain image id (no dots or slashes) naming a
*visible* cache entry (complete, verified, sidecar present). There is no listing, no other path,
and nothing outside the cache's ``images`` directory can be named.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from locpick.cache import NodeCache, valid_image_id
from locpick.errors import ConfigError, InputError

log = logging.getLogger("locpick")

DEFAULT_BIND = "127.0.0.1:8470"


def parse_bind(bind: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InputError(f"--bind {bind!r}: expected ADDR:PORT, e.g. 0.0.0.0:8470")
    number = int(port)
    if not 0 <= number <= 65535:
        raise InputError(f"--bind {bind!r}: port out of range")
    return host.strip("[]"), number


def _aiohttp() -> object:
    try:
        import aiohttp.web
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("locpick serve needs aiohttp: pip install 'locpick[serve]'") from exc
    return aiohttp.web


def make_app(cache: NodeCache) -> object:
    """The aiohttp application serving ``cache`` (typed loosely: aiohttp is an optional extra)."""
    _aiohttp()
    from aiohttp import hdrs, web

    async def image(request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        if not valid_image_id(image_id):
            raise web.HTTPNotFound(text="no such image\n")
        entry = cache.entry(image_id)
        if entry is None:
            raise web.HTTPNotFound(text="no such image\n")
        # The resolved path must still be inside the cache's images directory.
        real = os.path.realpath(entry.path)
        if os.path.dirname(real) != os.path.realpath(cache.images):
            raise web.HTTPNotFound(text="no such image\n")
        cache.touch(image_id)
        response = web.FileResponse(real, chunk_size=1 << 20)
        response.headers[hdrs.CACHE_CONTROL] = "no-transform"
        response.headers["X-Image-Meta-Hash"] = f"{entry.algo}:{entry.digest}"
        return response

    async def nothing(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound(text="not found\n")

    app = web.Application()
    app.router.add_route("GET", "/images/{image_id}", image)
    app.router.add_route("HEAD", "/images/{image_id}", image)
    app.router.add_route("*", "/{tail:.*}", nothing)
    return app


def serve(
    cache: NodeCache,
    bind: str = DEFAULT_BIND,
    *,
    ready: Callable[[str], None] | None = None,
    stopping: Callable[[], object] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. ``ready`` gets the URL actually bound (port 0 = any);
    ``stopping`` runs (in a worker thread) after the signal, before the listener closes, so
    the node can deregister while its copies are still served."""
    host, port = parse_bind(bind)
    _aiohttp()
    from aiohttp import web

    app = make_app(cache)
    assert isinstance(app, web.Application)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=256)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InputError(f"--bind {bind}: cannot listen ({exc.strerror or exc})") from exc
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown}:{bound[1]}"
        if ready is not None:
            ready(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            if stopping is not None:
                await loop.run_in_executor(None, stopping)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0


def announce(url: str) -> None:
    """What the CLI prints once listening (tests read the URL from this line)."""
    print(f"locpick: serving cache on {url}", file=sys.stderr, flush=True)
