"""One GET to an http(s) location, redirects followed by hand: through the pooled httpx client
(probes, proxied transfers) or ``http.client`` (the bulk data path). Every hop is checked
against the connection policy; the token goes only to the Glance host that issued it."""

from __future__ import annotations

import base64
import http.client
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import httpx

from locpick.errors import LocationUnreachable, UnsupportedLocation
from locpick.models import Location
from locpick.net.addr import host_port
from locpick.net.policy import AddressRefused
from locpick.redact import SCRUB, redact_url
from locpick.transports.base import Context
from locpick.transports.http.stream import HeaderDeadline

R = TypeVar("R")
#: The bulk data path's reply: the connection and its response.
Raw = tuple[http.client.HTTPConnection, http.client.HTTPResponse]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
SCHEMES: tuple[str, ...] = ("http", "https")


class Requester:
    """The requests of one ``HttpTransport``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def headers_for(self, location: Location, url: str) -> dict[str, str]:
        """The caller's token, for a Glance ``/file`` location on Glance's own host only."""
        token = self.ctx.token
        if not token or location.kind != "glance-file" or not self.ctx.glance_url:
            return {}
        target = urllib.parse.urlsplit(url)
        glance = urllib.parse.urlsplit(self.ctx.glance_url)
        if (target.hostname, target.port) == (glance.hostname, glance.port):
            return {"X-Auth-Token": token}
        return {}

    def _follow(
        self,
        location: Location,
        headers: dict[str, str],
        send: Callable[[str, dict[str, str]], tuple[int, str | None, R]],
        close: Callable[[R], None],
    ) -> tuple[R, str]:
        """Follow redirects by hand: only http(s), bounded, never to forbidden hosts.

        ``send(url, headers)`` performs one request and returns (status, Location, reply).
        """
        url = location.url
        shown = redact_url(url)
        for _ in range(self.ctx.config.security.max_redirects + 1):
            try:
                host, _port = host_port(url)
            except ValueError as exc:
                raise UnsupportedLocation(f"{redact_url(url)}: refused, {exc}", url=shown) from exc
            reason = self.ctx.net.check_host(host, resolve=True)
            if reason:
                raise UnsupportedLocation(f"{redact_url(url)}: refused, {reason}", url=shown)
            try:
                status, target, reply = send(url, {**headers, **self.headers_for(location, url)})
            except AddressRefused as exc:
                raise AddressRefused(f"{redact_url(url)}: refused, {exc}", url=shown) from exc
            if status not in _REDIRECTS:
                return reply, redact_url(url)
            close(reply)
            url = self._redirect_target(url, target or "", shown)
        raise UnsupportedLocation(
            f"{shown}: more than {self.ctx.config.security.max_redirects} redirects", url=shown
        )

    def _redirect_target(self, url: str, target: str, shown: str) -> str:
        """The absolute URL a redirect points to, or UnsupportedLocation when it is not a
        well-formed http(s) URL with a host (the server's Location header is hostile input)."""
        try:
            nxt = urllib.parse.urljoin(url, target)
            parts = urllib.parse.urlsplit(nxt)
            host, _port = parts.hostname, parts.port
        except ValueError:
            host, nxt, parts = None, "", urllib.parse.urlsplit("")
        scheme = parts.scheme.lower()
        if nxt and scheme not in SCHEMES:
            raise UnsupportedLocation(
                f"{shown}: refused redirect to a {scheme or 'schemeless'} URL", url=shown
            )
        if not host or not nxt.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in nxt):
            raise UnsupportedLocation(f"{shown}: refused redirect to a malformed URL", url=shown)
        return nxt

    def get(
        self, location: Location, headers: dict[str, str], *, timeout: float | None = None
    ) -> tuple[httpx.Response, str]:
        """One GET through the pooled httpx client (probes, and the data path via a proxy)."""

        limit = timeout or self.ctx.config.transfer.first_byte_timeout

        def send(url: str, req_headers: dict[str, str]) -> tuple[int, str | None, httpx.Response]:
            shown = redact_url(url)
            deadline = HeaderDeadline(limit)
            try:
                request = self.ctx.http.build_request(
                    "GET",
                    url,
                    headers=req_headers,
                    timeout=httpx.Timeout(timeout) if timeout else httpx.USE_CLIENT_DEFAULT,
                    extensions={"trace": deadline.trace},
                )
                with deadline:
                    response = self.ctx.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise LocationUnreachable(
                    f"{shown}: timed out ({type(exc).__name__})", url=shown
                ) from exc
            except httpx.HTTPError as exc:
                raise send_failed(shown, exc, deadline, limit) from exc
            return response.status_code, response.headers.get("location"), response

        return self._follow(location, headers, send, lambda r: r.close())

    def get_raw(self, location: Location, headers: dict[str, str]) -> tuple[Raw, str]:
        """One GET with ``http.client`` for the bulk data path (see RawHttpStream)."""
        t = self.ctx.config.transfer

        def send(url: str, req_headers: dict[str, str]) -> tuple[int, str | None, Raw]:
            parts = urllib.parse.urlsplit(url)
            shown = redact_url(url)
            if self.ctx.net.route(url) is not None:
                raise Proxied(url)
            host, port = host_port(url)
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    host, port, timeout=t.connect_timeout, context=self.ctx.net.ssl_context
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=t.connect_timeout)
            # every socket of the data path goes through the address guard
            conn._create_connection = self.ctx.net.connect  # type: ignore[attr-defined]
            all_headers = {"User-Agent": "locpick", "Accept-Encoding": "identity", **req_headers}
            if parts.username is not None:
                cred = (
                    f"{urllib.parse.unquote(parts.username)}:"
                    f"{urllib.parse.unquote(parts.password or '')}"
                )
                all_headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            deadline = HeaderDeadline(t.first_byte_timeout)
            try:
                with deadline:
                    conn.connect()
                    # keep our own reference: getresponse() drops conn.sock when the server will
                    # close the connection (HTTP/1.0, "Connection: close"); the body still reads it
                    sock = conn.sock
                    assert sock is not None
                    deadline.watch(sock)
                    sock.settimeout(t.first_byte_timeout)
                    conn.request("GET", path, headers=all_headers)
                    response = conn.getresponse()
                if deadline.fired:  # headers cut short by the deadline look complete to http.client
                    raise http.client.HTTPException("header deadline")
                sock.settimeout(t.idle_timeout)
            except TimeoutError as exc:
                conn.close()
                raise LocationUnreachable(f"{shown}: timed out", url=shown) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise send_failed(shown, exc, deadline, t.first_byte_timeout) from exc
            return response.status, response.getheader("location"), (conn, response)

        def close(reply: Raw) -> None:
            reply[1].close()
            reply[0].close()

        return self._follow(location, headers, send, close)

    def proxied(self, url: str) -> bool:
        return self.ctx.net.route(url) is not None


class Proxied(Exception):
    """The raw data path reached a URL the policy sends through a proxy: use httpx instead."""


def send_failed(
    shown: str, exc: Exception, deadline: HeaderDeadline, limit: float
) -> LocationUnreachable:
    """A request that got no usable response: cut off by the header deadline, or why not."""
    if deadline.fired:
        return LocationUnreachable(
            f"{shown}: no complete response headers within {limit:g}s", url=shown
        )
    return LocationUnreachable(
        f"{shown}: {type(exc).__name__}: {SCRUB(str(exc)) or 'failed'}", url=shown
    )


class HeaderView(Mapping[str, str]):
    """Case-insensitive read-only headers of an http.client response."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self._headers = {k.lower(): v for k, v in response.getheaders()}

    def __getitem__(self, key: str) -> str:
        return self._headers[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)
