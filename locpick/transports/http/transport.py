"""http(s) locations: probes, ranged GETs and the checks of what a server answered (status,
Content-Range, size, If-Range). The requests are ``httpsend``'s, the byte streams
``httpstream``'s."""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx

from locpick.errors import LocationError, TransferError, reason_of
from locpick.models import FILL_HEADER, Image, Location, Probe, parse_fill_header
from locpick.net.addr import host_port
from locpick.transports.base import Capabilities, Context, TransportDefaults
from locpick.transports.guards import (
    check_total,
    parse_content_range,
    parse_retry_after,
    probe_size_mismatch,
    status_error,
)
from locpick.transports.http.send import SCHEMES, HeaderView, Proxied, Requester
from locpick.transports.http.stream import HttpStream, RawHttpStream

__all__ = ["HttpTransport"]


class HttpTransport(TransportDefaults):
    """``http`` and ``https``."""

    schemes: tuple[str, ...] = SCHEMES
    capabilities = Capabilities(bounded_ranges=True, if_range=True, idle_timeout=True, route=True)

    def __init__(self, ctx: Context, requester: Requester | None = None) -> None:
        self.ctx = ctx
        self._req = requester or Requester(ctx)

    # -- policy -------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        try:
            host, _port = host_port(location.url)
        except ValueError as exc:
            return str(exc)
        return self.ctx.net.check_host(host, resolve=False)

    def route(self, location: Location) -> str:
        """``direct`` or ``via proxy URL``: the one path of this location's probes and GETs."""
        return self.ctx.net.describe_route(location.url)

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        n = self.ctx.config.probe.ttfb_bytes
        t0 = time.monotonic()
        try:
            # Prefer: wait=0: a peer's copy still filling answers with its fill state at once
            # (503 + X-Locpick-Fill) rather than holding the probe until the bytes arrive
            headers = {"Range": f"bytes=0-{n - 1}", "Prefer": "wait=0"}
            response, final = self._req.get(location, headers, timeout=timeout)
        except LocationError as exc:
            return Probe(url=shown, ok=False, error=reason_of(exc))
        try:
            ttfb = time.monotonic() - t0
            fill = parse_fill_header(response.headers.get(FILL_HEADER))
            if response.status_code not in (200, 206):
                return Probe(
                    url=shown,
                    ok=False,
                    ttfb=ttfb,
                    error=f"HTTP {response.status_code}",
                    final_url=final,
                    status=response.status_code,
                    fill=fill,
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                )
            size = _resource_size(response)
            got = 0
            for chunk in response.iter_raw():
                got += len(chunk)
                if got >= n or time.monotonic() - t0 > timeout:
                    break
            elapsed = time.monotonic() - t0
        except httpx.HTTPError as exc:
            return Probe(url=shown, ok=False, error=f"probe read failed ({type(exc).__name__})")
        finally:
            response.close()
        mismatch = probe_size_mismatch(shown, image.size, size, ttfb=ttfb, final_url=final)
        if mismatch is not None:
            return mismatch
        bps = got / (elapsed - ttfb) if got >= n and elapsed > ttfb else None
        return Probe(
            url=shown,
            ok=True,
            ttfb=ttfb,
            size=size,
            final_url=final,
            throughput_bps=bps if bps and got > 256 * 1024 else None,
            fill=fill,
        )

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        if_range: str | None = None,
        end: int | None = None,
    ) -> HttpStream | RawHttpStream:
        """GET from ``offset`` (to ``end``, exclusive, when given: a piece); ``if_range`` (an
        ETag or Last-Modified the bytes held came from) makes a changed resource answer 200
        with the whole body (``stream.changed``)."""
        headers = {"Range": _range(offset, end)} if offset or end is not None else {}
        if offset and if_range:
            headers["If-Range"] = if_range
        if self._req.proxied(location.url):
            return self._open_httpx(location, image, headers, offset)
        try:
            (conn, raw), final = self._req.get_raw(location, headers)
        except Proxied:  # a redirect led to a host the policy routes through a proxy
            return self._open_httpx(location, image, headers, offset)
        try:
            view = HeaderView(raw)
            start, total = self._validate(final, raw.status, view, image, offset)
        except BaseException:
            raw.close()
            conn.close()
            raise
        changed = _changed(headers, start, view)
        return RawHttpStream(
            conn, raw, start=start, total=total, final_url=final, changed=changed, **self._floor()
        )

    def _open_httpx(
        self, location: Location, image: Image, headers: dict[str, str], offset: int
    ) -> HttpStream:
        """The data path through a proxy: httpx (CONNECT for https), the probes' own route."""
        response, final = self._req.get(location, headers)
        try:
            start, total = self._validate(
                final, response.status_code, response.headers, image, offset
            )
        except BaseException:
            response.close()
            raise
        changed = _changed(headers, start, response.headers)
        return HttpStream(
            response, start=start, total=total, final_url=final, changed=changed, **self._floor()
        )

    def _floor(self) -> dict[str, float]:
        """The speed floor of a transfer: the higher of ``[transfer] low_speed_bps`` and
        ``[security] min_speed_bps`` (so a floor holds even when the former is 0), over
        ``[transfer] low_speed_window``."""
        t = self.ctx.config.transfer
        floor = max(t.low_speed_bps, self.ctx.config.security.min_speed_bps)
        return {"min_bps": floor, "window": t.low_speed_window}

    def _validate(
        self, final: str, status: int, headers: Mapping[str, str], image: Image, offset: int
    ) -> tuple[int, int | None]:
        """Check status and Content-Range against the request; returns (start, total)."""
        if status == 206:
            cr = parse_content_range(headers.get("content-range"))
            if cr is None or cr[0] != offset:
                raise TransferError(
                    f"{final}: Content-Range {headers.get('content-range')!r} does not start "
                    f"at the requested offset {offset}",
                    url=final,
                    permanent=True,
                )
            total = cr[2]
        elif status == 200:
            if headers.get("content-encoding"):
                raise TransferError(
                    f"{final}: refuses identity encoding ({headers.get('content-encoding')})",
                    url=final,
                    permanent=True,
                )
            length = headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        elif status == 416 and image.size is not None and offset >= image.size:
            raise TransferError(f"{final}: HTTP 416 at offset {offset}", url=final)
        else:
            raise status_error(final, status, headers.get("retry-after"))
        check_total(final, image.size, total)
        return (offset if status == 206 else 0), total

    def close(self) -> None:
        """The HTTP pool belongs to the Context."""


def _range(offset: int, end: int | None) -> str:
    return f"bytes={offset}-" if end is None else f"bytes={offset}-{end - 1}"


def _changed(sent: Mapping[str, str], start: int, headers: Mapping[str, str]) -> bool:
    """An If-Range was sent, the whole body came back, and its validators differ."""
    if_range = sent.get("If-Range")
    if not if_range or start != 0:
        return False
    return if_range not in (headers.get("etag"), headers.get("last-modified"))


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or response.headers.get("content-encoding"):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _resource_size(response: httpx.Response) -> int | None:
    if response.status_code == 206:
        cr = parse_content_range(response.headers.get("content-range"))
        return cr[2] if cr else None
    return _content_length(response)
