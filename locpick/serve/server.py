"""``locpick serve``: the node cache over HTTP, read-only, so other nodes can use it.

Routes (built in one place, :func:`add_routes`):

- ``GET|HEAD /images/{id}/{token}``: a cached image, when ``token`` is the capability token of
  ``id`` under this node's secret (:mod:`locpick.cache.capability`), compared in constant time.
- ``GET|HEAD /images/{id}``: only for images cached as ``public`` when ``[serve] open_public``.
- ``GET /healthz``: ``ok`` (no cache access, never limited).
- ``GET /metrics`` and ``GET /status``: the operator pages (:mod:`locpick.serve.ops`; each can
  be switched off). There is no listing of files.

A wrong or missing token answers 403 whether or not the image is cached (no existence oracle).
The entry is opened with ``O_NOFOLLOW`` and checked on the fd (regular, ours, one link); the
bytes are sent from that very file through ``/proc/self/fd`` (aiohttp ``FileResponse``: Range,
If-Range, ``sendfile(2)``), or through a rate-limited loop when ``[serve] max_rate`` is set
(:mod:`locpick.serve.send`). An image not (yet) in the cache but being downloaded into it is
answered from its filling copy when a live downloader fills it (:mod:`locpick.serve.fill`).

Defences against neighbours (:class:`ConnectionGuard` in :mod:`locpick.serve.guard`, below
aiohttp): caps on connections in total and per client address, a deadline for each request
head and for idle keep-alive, and cuts a transfer whose client stopped reading (``send_timeout``);
and (middleware) at most ``max_clients`` transfers at once (``max_transfers_per_client`` from
one address, always fewer),
past which ``503`` + ``Retry-After``. Both kinds of refusal are counted in ``/metrics``
(``locpick_serve_refused_total``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from locpick.cache.capability import SecretFile, UntrustedCache, token_matches
from locpick.cache.files import CacheEntry, valid_image_id
from locpick.cache.store import NodeCache
from locpick.config.model import ServeConfig
from locpick.errors import ConfigError, InputError
from locpick.serve.guard import BACKLOG, ConnectionGuard
from locpick.serve.send import RateLimiter, send_limited

if TYPE_CHECKING:
    from aiohttp import web

    from locpick.serve.metrics import OpsOptions

__all__ = ["DEFAULT_BIND", "announce", "make_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1:8470"
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_ZERO_SUFFIX = re.compile(r"\s*bytes\s*=\s*-\s*0+\s*")


def parse_bind(bind: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); InputError on anything else."""
    host, sep, port = bind.rpartition(":")
    bad = InputError(f"--bind {bind!r}: expected ADDR:PORT or [IPv6]:PORT, e.g. 0.0.0.0:8470")
    if not sep or not port.isdigit() or not host:
        raise bad
    if host.startswith("["):
        if not host.endswith("]"):
            raise bad
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise bad
        except ValueError:
            raise bad from None
    elif ":" in host:
        raise bad  # a bare IPv6 address: the port would be ambiguous
    elif not _HOSTNAME.fullmatch(host):
        raise bad
    number = int(port)
    if not 0 <= number <= 65535:
        raise InputError(f"--bind {bind!r}: port {number} out of range 0..65535")
    return host, number


def _aiohttp() -> Any:
    try:
        import aiohttp.web
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("locpick serve needs aiohttp: pip install 'locpick[serve]'") from exc
    return aiohttp.web


# -- the application --------------------------------------------------------------------------
Handler = Callable[[Any], Awaitable[Any]]


def middlewares(config: ServeConfig, guard: ConnectionGuard | None) -> list[Any]:
    """Request bookkeeping for the guard's deadlines, then the transfer cap (503)."""
    from aiohttp import web

    active = {"transfers": 0}
    per_client: Counter[str] = Counter()
    #: One address gets fewer slots than there are: it can never hold all of them.
    per_client_cap = max(1, min(config.max_transfers_per_client, config.max_clients - 1))

    @web.middleware
    async def track(request: web.Request, handler: Handler) -> Any:
        conn = guard.by_handler.get(request.protocol) if guard is not None else None
        if conn is None:
            return await handler(request)
        conn.request_started()
        try:
            return await handler(request)
        finally:
            conn.request_done()

    @web.middleware
    async def admission(request: web.Request, handler: Handler) -> Any:
        if not request.path.startswith("/images/"):
            return await handler(request)
        peer = request.remote or "?"
        if active["transfers"] >= config.max_clients:
            return web.Response(
                status=503,
                text=f"busy: {config.max_clients} transfers in progress\n",
                headers={"Retry-After": str(config.retry_after)},
            )
        if per_client[peer] >= per_client_cap:
            return web.Response(
                status=503,
                text=f"busy: {per_client_cap} transfers in progress for this address\n",
                headers={"Retry-After": str(config.retry_after)},
            )
        active["transfers"] += 1
        per_client[peer] += 1
        try:
            return await handler(request)
        finally:
            active["transfers"] -= 1
            per_client[peer] -= 1
            if per_client[peer] <= 0:
                del per_client[peer]

    return [track, admission]


def add_routes(
    app: Any, cache: NodeCache, config: ServeConfig, ops: OpsOptions | None = None
) -> None:
    """Every route ``serve`` answers; anything else is 404. ``ops``: which operator pages
    (``/metrics``, ``/status``) it has; default both."""
    from aiohttp import hdrs, web

    from locpick.models import FILL_HEADER
    from locpick.serve.fill import answer_filling, complete_header, open_filling
    from locpick.serve.metrics import OpsOptions
    from locpick.serve.ops import install

    class OpenFileResponse(web.FileResponse):
        """Sent inside the handler (while the fd is open); aiohttp's second prepare is a no-op."""

        async def prepare(self, request: web.BaseRequest) -> Any:
            if self.prepared:
                return await web.StreamResponse.prepare(self, request)
            return await super().prepare(request)

    secret = SecretFile(cache.dir)
    limiter = RateLimiter(config.max_rate) if config.max_rate else None

    def allowed(image_id: str, token: str | None) -> bool:
        """The token is right, or there is none and the image is cached as public (if open)."""
        if token is not None:
            return token_matches(secret.current(), image_id, token)
        if not config.open_public:
            return False
        entry = cache.entry(image_id)
        return entry is not None and entry.visibility == "public"

    async def image(request: web.Request) -> web.StreamResponse:
        image_id = request.match_info["image_id"]
        if not valid_image_id(image_id):
            raise web.HTTPNotFound(text="no such image\n")
        if not allowed(image_id, request.match_info.get("token")):
            raise web.HTTPForbidden(text="a valid capability URL is needed for this image\n")
        opened = cache.open_entry(image_id)
        if opened is not None:
            return await complete(request, *opened)
        with open_filling(cache, image_id) as copy:
            if copy is not None:
                return await answer_filling(
                    request,
                    cache,
                    copy,
                    fill_wait=config.fill_wait,
                    retry_after=config.retry_after,
                    limiter=limiter,
                )
        opened = cache.open_entry(image_id)  # the fill may have completed just now
        if opened is not None:
            return await complete(request, *opened)
        raise web.HTTPNotFound(text="no such image\n")

    async def complete(request: web.Request, fd: int, entry: CacheEntry) -> web.StreamResponse:
        """A visible entry, from its open, checked ``fd`` (closed here)."""
        try:
            if _ZERO_SUFFIX.fullmatch(request.headers.get(hdrs.RANGE, "x")):
                raise web.HTTPRequestRangeNotSatisfiable(
                    headers={hdrs.CONTENT_RANGE: f"bytes */{entry.size}"}
                )
            cache.touch(entry.image_id)
            headers = {
                hdrs.CACHE_CONTROL: "no-transform",
                "X-Image-Meta-Hash": f"{entry.algo}:{entry.digest}",
                FILL_HEADER: complete_header(entry.size),
            }
            if limiter is not None:
                return await send_limited(request, fd, entry, limiter, headers)
            # The checked, open file itself, not the path (which may change meanwhile).
            response = OpenFileResponse(f"/proc/self/fd/{fd}", chunk_size=1 << 20)
            response.headers.update(headers)
            await response.prepare(request)  # sends it all, while the fd is still open
            return response
        finally:
            os.close(fd)

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def nothing(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound(text="not found\n")

    for method in ("GET", "HEAD"):
        app.router.add_route(method, "/images/{image_id}/{token}", image)
        app.router.add_route(method, "/images/{image_id}", image)
    app.router.add_get("/healthz", healthz)
    install(app, cache, ops or OpsOptions())  # before the catch-all; its counting goes first
    app.router.add_route("*", "/{tail:.*}", nothing)


def make_app(
    cache: NodeCache,
    config: ServeConfig | None = None,
    guard: ConnectionGuard | None = None,
    ops: OpsOptions | None = None,
) -> Any:
    """The aiohttp application serving ``cache`` (typed loosely: aiohttp is an optional extra).

    The guard's refusals are counted in the app's metrics (``app[OPS]``).
    """
    web = _aiohttp()
    from locpick.serve.ops import OPS

    config = config or ServeConfig()
    app = web.Application(middlewares=middlewares(config, guard))
    add_routes(app, cache, config, ops)
    if guard is not None:
        guard.on_refuse = app[OPS].metrics.refused
    return app


def serve(
    cache: NodeCache,
    bind: str = DEFAULT_BIND,
    *,
    config: ServeConfig | None = None,
    ready: Callable[[str], None] | None = None,
    stopping: Callable[[], object] | None = None,
    ops: OpsOptions | None = None,
    started: Callable[[Any], object] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. ``ready`` gets the URL actually bound (port 0 = any);
    ``stopping`` runs (in a worker thread) after the signal, before the listener closes, so
    the node can deregister while its copies are still served. ``ops``: which operator pages;
    ``started`` gets the app's :class:`locpick.serve.ops.Ops` before listening (e.g. for the
    lease renewer to report to ``/metrics``)."""
    host, port = parse_bind(bind)
    web = _aiohttp()
    config = config or ServeConfig()
    cache.check()
    try:
        cache.secret()
    except OSError as exc:
        raise UntrustedCache(f"cache dir {cache.dir}: cannot create its secret ({exc})") from exc
    guard = ConnectionGuard(config)
    app = make_app(cache, config, guard, ops)
    if started is not None:
        from locpick.serve.ops import OPS

        started(app[OPS])

    async def main() -> None:
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=config.keepalive_timeout,
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                guard.factory(runner.server), host, port, reuse_address=True, backlog=BACKLOG
            )
        except OSError as exc:
            await runner.cleanup()
            raise InputError(f"--bind {bind}: cannot listen ({exc.strerror or exc})") from exc
        bound = server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown}:{bound[1]}"
        log.info(
            "serve: at most %d transfers, %d connections (%d per client)",
            config.max_clients,
            guard.max_total,
            config.max_connections_per_client,
        )
        if ready is not None:
            ready(url)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            if stopping is not None:
                await loop.run_in_executor(None, stopping)
        finally:
            server.close()
            await runner.cleanup()

    asyncio.run(main())
    return 0


def announce(url: str) -> None:
    """What the CLI prints once listening (tests read the URL from this line)."""
    print(f"locpick: serving cache on {url}", file=sys.stderr, flush=True)
