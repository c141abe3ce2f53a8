"""The operator side of ``locpick serve``: ``/metrics``, ``/status`` and the counting behind them.

:func:`install` adds both routes to the aiohttp app (before its catch-all) and returns an
:class:`Ops` whose ``middleware`` goes first in the app's middlewares: it counts every
response (status, body bytes) and lists an ``/images/`` request as a client being served for
as long as its handler runs, so the image handler sends the body itself (``await
response.prepare(request)``) before returning. A ``503`` on ``/images/`` (locpick.serve.server's
``max_clients`` admission) counts as a client refused as ``busy`` (``fill_wait``: a copy being
filled had no bytes in time). A copy being filled (locpick.serve.fill) reports the body bytes it
really sent; an answer it cut short counts as ``aborted`` with those bytes. The ``image``
label is the image id only when the image was answered (200/206/304/416), else ``-`` (no
per-path or per-client labels: a capability token never reaches a metric).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from locpick.cache import journal
from locpick.cache.store import NodeCache
from locpick.serve.fill import CUT, REFUSED, SENT
from locpick.serve.metrics import NO_IMAGE, OpsOptions, ServeMetrics
from locpick.serve.status import CSP

__all__ = ["OPS", "Ops", "install"]

#: Statuses that mean "this cached image was answered": the image id is a fair label.
_ANSWERED = frozenset({200, 206, 304, 412, 416})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Ops:
    """The operator state of one app: its ServeMetrics and which endpoints are on."""

    def __init__(self, cache: NodeCache, options: OpsOptions) -> None:
        self.cache = cache
        self.options = options
        self.metrics = ServeMetrics(cache)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the response; list a request for an image while its handler sends it."""
        image = request.match_info.get("image_id") if request.path.startswith("/images/") else None
        if image is None:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self.metrics.response(NO_IMAGE, str(exc.status))
                raise
            self.metrics.response(NO_IMAGE, str(response.status))
            return response
        key = self.metrics.request_started(
            image, lambda: (request.remote or "-", request.headers.get(hdrs.RANGE))
        )
        status, nbytes, label = "aborted", 0, NO_IMAGE
        try:
            response = await handler(request)
            status = str(response.status)
            if response.status in _ANSWERED:
                label = image
                if request.method == hdrs.METH_GET and response.status in (200, 206):
                    nbytes = response.content_length or 0
                if request.get(CUT):
                    status = "aborted"
            return response
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        finally:
            nbytes = request.get(SENT, nbytes)  # what a filling copy's answer really sent
            if status == "aborted":
                if SENT in request or self.cache.entry(image) is not None:
                    label = image
            elif status == "503":
                self.metrics.refused(request.get(REFUSED, "busy"))
            self.metrics.request_done(key, label, status, nbytes)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, self.metrics.exposition)
        return web.Response(
            body=body, headers={hdrs.CONTENT_TYPE: "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _status(self, request: web.Request) -> web.Response:
        page = await asyncio.get_running_loop().run_in_executor(None, self.status_page)
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                hdrs.CACHE_CONTROL: "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    def status_page(self) -> str:
        """The ``/status`` HTML, from the cache directory and this process's state."""
        from locpick import __version__
        from locpick.cache.prefetch import read_state
        from locpick.serve.status import NodeStatus, render

        m = self.metrics
        return render(
            NodeStatus(
                cache_dir=os.fspath(self.cache.dir),
                entries=self.cache.entries(),
                max_bytes=self.cache.max_bytes,
                leases=m.leases(),
                transfers=m.transfers(),
                fills=m.fills(),
                downloads=journal.recent(self.cache.dir),
                started_at=m.started_at,
                version=__version__,
                prefetch=read_state(self.cache.dir),
            )
        )


#: Where the app keeps its Ops: ``app[OPS].metrics.renewal(ok)`` for code running beside it.
OPS: web.AppKey[Ops] = web.AppKey("locpick_ops", Ops)


def install(app: web.Application, cache: NodeCache, options: OpsOptions) -> Ops:
    """Add ``/metrics`` and ``/status`` (as enabled) to ``app``; call before any catch-all."""
    ops = Ops(cache, options)
    app[OPS] = ops
    if options.metrics:
        _ = (
            ops.metrics.registry
        )  # fail now, not at the first scrape, if prometheus-client is absent
        app.router.add_route("GET", "/metrics", ops._metrics)
    if options.status:
        app.router.add_route("GET", "/status", ops._status)
    if options.any:
        app.middlewares.insert(0, ops.middleware)
    return ops
