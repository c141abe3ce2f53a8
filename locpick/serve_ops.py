"""The operator side of ``locpick serve``: ``/metrics``, ``/status`` and the counting behind them.

:func:`install` adds both routes to the aiohttp app (before its catch-all) and returns an
:class:`Ops` whose ``file_response`` the image handler uses to send a cached file: it counts
the response (image, status, bytes) when the body has been sent, and lists it as a client
being served meanwhile. Other responses are counted from aiohttp's ``on_response_prepare``
signal under the image label ``-`` (no per-path or per-client labels).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import hdrs, web

from locpick import journal
from locpick.cache import NodeCache
from locpick.metrics import NO_IMAGE, OpsOptions, ServeMetrics

__all__ = ["OPS", "Ops", "OpsOptions", "install"]


class _ServedFile(web.FileResponse):
    """A cached image's FileResponse that reports itself to ServeMetrics once sent."""

    def __init__(self, path: str, image_id: str, metrics: ServeMetrics) -> None:
        super().__init__(path, chunk_size=1 << 20)
        self.image_id = image_id
        self._metrics = metrics

    async def prepare(self, request: web.BaseRequest) -> Any:
        peer = request.remote or "-"
        key = self._metrics.request_started(self.image_id, peer, request.headers.get(hdrs.RANGE))
        status = "aborted"
        nbytes = 0
        try:
            writer = await super().prepare(request)
            status = str(self.status)
            if request.method == hdrs.METH_GET and self.status in (200, 206):
                nbytes = self.content_length or 0
            return writer
        finally:
            self._metrics.request_done(key)
            self._metrics.response(self.image_id, status, nbytes)


class Ops:
    """The operator state of one app: its ServeMetrics and which endpoints are on."""

    def __init__(self, cache: NodeCache, options: OpsOptions) -> None:
        self.cache = cache
        self.options = options
        self.metrics = ServeMetrics(cache)

    def file_response(self, path: str, image_id: str) -> web.FileResponse:
        """The response sending a cached image (counted unless every endpoint is off)."""
        if not self.options.any:
            return web.FileResponse(path, chunk_size=1 << 20)
        return _ServedFile(path, image_id, self.metrics)

    def busy(self) -> bool:
        """True when ``max_clients`` responses are already being sent."""
        limit = self.options.max_clients
        return limit is not None and self.metrics.active() >= limit

    def refuse(self, reason: str = "busy", retry_after: int = 5) -> web.HTTPServiceUnavailable:
        """The 503 for a client turned away (e.g. over max_clients), counted; raise it."""
        self.metrics.refused(reason)
        return web.HTTPServiceUnavailable(
            text=f"{reason}, retry later\n", headers={hdrs.RETRY_AFTER: str(retry_after)}
        )

    async def _count(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        if not isinstance(response, _ServedFile):
            self.metrics.response(NO_IMAGE, str(response.status))

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
                "Content-Security-Policy": _csp(),
                "X-Content-Type-Options": "nosniff",
                hdrs.CACHE_CONTROL: "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    def status_page(self) -> str:
        """The ``/status`` HTML, from the cache directory and this process's state."""
        from locpick import __version__
        from locpick.status import NodeStatus, render

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
            )
        )


def _csp() -> str:
    from locpick.status import CSP

    return CSP


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
        app.on_response_prepare.append(ops._count)
    return ops
