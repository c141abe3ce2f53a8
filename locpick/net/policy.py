"""How locpick connects: one policy for addresses, forbidden networks, proxies and trust.

Every transport (Glance and Keystone calls, http(s) probes and bulk GETs, Swift, S3) asks this
module where a URL goes (``route``), whether an address may be reached (``forbidden_reason``,
checked on the address a socket is really connected to, so DNS rebinding between a check and
the connect cannot slip through), and what TLS trust to use (one ``ssl.SSLContext``). The
environment is read once, at the edge, by :meth:`NetPolicy.from_environment`. The parts are
``netaddr`` (addresses), ``netproxy`` (proxies) and ``nettrust`` (TLS); this module joins them.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from locpick.config.model import Config
from locpick.errors import UnsupportedLocation
from locpick.net.addr import (
    DEFAULT_PORTS,
    IPAddress,
    IPNetwork,
    forbidden_reason,
    ip_literal,
    parse_host,
    sockaddr_ip,
)
from locpick.net.proxy import Proxies, proxies_from
from locpick.net.trust import Trust, trust_from

__all__ = ["AddressRefused", "NetPolicy"]

log = logging.getLogger(__name__)

C = TypeVar("C")
AddrInfo = tuple[Any, ...]


class AddressRefused(UnsupportedLocation):
    """A connection would reach (or reached) a forbidden network; never retried."""


class NetPolicy:
    """Routes, guards and trust of one client; immutable after construction, thread-safe."""

    def __init__(
        self,
        *,
        forbid: Iterable[str] = (),
        proxies: Proxies | None = None,
        trust: Trust | None = None,
    ) -> None:
        self.forbid: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in forbid
        )
        self.proxies = proxies or Proxies()
        self.trust = trust or Trust()
        self.ssl_context = self.trust.ssl_context()

    @classmethod
    def from_environment(
        cls,
        config: Config,
        env: Mapping[str, str] | None = None,
        *,
        cloud_cacert: str | None = None,
        insecure: bool = False,
    ) -> NetPolicy:
        """The policy of ``config`` plus ``env``, the edge's snapshot of the standard environment
        (proxy and CA variables); none given means none set."""
        environ: Mapping[str, str] = {} if env is None else env
        return cls(
            forbid=config.security.forbid_networks,
            proxies=proxies_from(config, environ),
            trust=trust_from(config, environ, cloud_cacert=cloud_cacert, insecure=insecure),
        )

    # -- routes ---------------------------------------------------------------------------------
    def route(self, url: str) -> str | None:
        """The proxy URL ``url`` goes through, or None (direct)."""
        return self.proxies.for_url(url)

    def describe_route(self, url: str) -> str:
        """``via proxy http://host:port`` or ``direct``, for rank's reasons."""
        proxy = self.route(url)
        if proxy is None:
            return "direct"
        parts = urllib.parse.urlsplit(proxy)
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        return f"via proxy {parts.scheme}://{shown}:{port}"

    # -- guards ---------------------------------------------------------------------------------
    def check_ip(self, ip: IPAddress) -> str | None:
        return forbidden_reason(ip, self.forbid)

    def check_host(self, host: str, *, resolve: bool) -> str | None:
        """Why ``host`` may not be reached, from its literal address, or (``resolve``) every
        address it resolves to; None when it may. A zone id is refused."""
        try:
            bare = parse_host(host)
        except ValueError as exc:
            return str(exc)
        ip = ip_literal(bare)
        if ip is not None:
            reason = self.check_ip(ip)
            return f"host {host}: {reason}" if reason else None
        if not resolve or not self.forbid:
            return None
        try:
            infos = socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM)
        except OSError:
            return None  # the connect fails on its own, with its own reason
        for info in infos:
            reason = self.check_ip(sockaddr_ip(info[4]))
            if reason:
                return f"host {host}: {reason}"
        return None

    def check_peer(self, sock: socket.socket, host: str) -> None:
        """Raise AddressRefused when ``sock`` is connected to a forbidden address."""
        reason = self.check_ip(sockaddr_ip(sock.getpeername()))
        if reason:
            raise AddressRefused(f"host {host}: {reason}")

    def connect(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """``socket.create_connection`` that never reaches a forbidden address: the name is
        resolved once, each address is checked, and the connected peer is checked again."""
        host, port = address
        infos = socket.getaddrinfo(parse_host(host), port, type=socket.SOCK_STREAM)

        def dial(info: AddrInfo) -> socket.socket:
            family, kind, proto, _canon, sockaddr = info
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except BaseException:
                sock.close()
                raise
            return sock

        return self.dial_checked(
            host, infos, dial, lambda s: s, lambda s: s.close(), (OSError,),
            lambda: OSError(f"getaddrinfo returned no address for {host}"),
        )  # fmt: skip

    def dial_checked(
        self,
        host: str,
        infos: Iterable[AddrInfo],
        dial: Callable[[AddrInfo], C],
        sock_of: Callable[[C], object],
        close: Callable[[C], None],
        retry_on: tuple[type[Exception], ...],
        no_address: Callable[[], Exception],
    ) -> C:
        """The one guarded connect (``connect`` and the httpx backend's ``connect_tcp``): each
        resolved address is checked before ``dial``, the peer really connected to after it;
        a ``retry_on`` failure moves on to the next address. AddressRefused when only
        forbidden addresses were found, else the last failure (or ``no_address()``)."""
        refused: str | None = None
        failure: Exception | None = None
        for info in infos:
            reason = self.check_ip(sockaddr_ip(info[4]))
            if reason:
                refused = refused or reason
                continue
            try:
                conn = dial(info)
            except retry_on as exc:
                failure = exc
                continue
            try:
                sock = sock_of(conn)
                if isinstance(sock, socket.socket):
                    self.check_peer(sock, host)
            except retry_on as exc:
                close(conn)
                failure = exc
                continue
            except BaseException:
                close(conn)
                raise
            return conn
        if refused:
            raise AddressRefused(f"host {host}: {refused}")
        raise failure or no_address()

    def keystone_session(self, url: str, **kwargs: Any) -> Any:
        """A keystoneauth1 Session for the Keystone at ``url`` with this policy's trust (the
        same CA file or directory and client certificate) and route (the environment is not
        read again by requests)."""
        from keystoneauth1 import session as ks_session

        session = ks_session.Session(
            verify=self.trust.requests_verify(), cert=self.trust.requests_cert(), **kwargs
        )
        self.apply_to_requests(session.session, url)
        return session

    def apply_to_requests(self, session: Any, url: str) -> None:
        """Route a ``requests.Session`` talking to ``url``'s host as this policy says."""
        session.trust_env = False
        proxy = self.route(url)
        session.proxies = {"http": proxy, "https": proxy} if proxy else {}

    def botocore_options(self, endpoint: str | None) -> dict[str, Any]:
        """``verify`` and ``proxies`` for botocore/s3fs talking to ``endpoint`` (AWS itself
        when None)."""
        url = endpoint or "https://s3.amazonaws.com"
        proxy = self.route(url)
        out: dict[str, Any] = {"verify": self.trust.requests_verify()}
        if proxy:
            out["proxies"] = {"http": proxy, "https": proxy}
        return out
