"""How locpick connects: one policy for addresses, forbidden networks, proxies and trust.

Every transport (Glance and Keystone calls, http(s) probes and bulk GETs, Swift, S3) asks this
module where a URL goes (``route``), whether an address may be reached (``forbidden_reason``,
checked on the address a socket is really connected to, so DNS rebinding between a check and
the connect cannot slip through), and what TLS trust to use (one ``ssl.SSLContext``). The
environment is read once, at the edge, by :meth:`NetPolicy.from_environment`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from locpick.config import Config
from locpick.errors import ConfigError, UnsupportedLocation
from locpick.redact import SCRUB, redact_url

__all__ = [
    "AddressRefused",
    "NetPolicy",
    "NoProxy",
    "Trust",
    "embedded_ipv4",
    "forbidden_reason",
    "host_port",
    "parse_host",
]

log = logging.getLogger("locpick")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_V4_COMPAT = ipaddress.ip_network("::/96")
_LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK6 = ipaddress.IPv6Address("::1")
_PROXY_SCHEMES = ("http", "https")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_*]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")


class AddressRefused(UnsupportedLocation):
    """A connection would reach (or reached) a forbidden network; never retried."""


# -- addresses ----------------------------------------------------------------------------------


def parse_host(host: str) -> str:
    """A URL's host without IPv6 brackets; ``ValueError`` for a zone id (``fe80::1%eth0``):
    a zone names an interface of *this* node, which a location URL has no business choosing."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in bare:
        raise ValueError(f"IPv6 zone id in host {host!r} is not accepted")
    return bare


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, IPv6 literals unbracketed and the default port filled
    in (``http://[::1]/x`` -> ("::1", 80)); ``ValueError`` when there is no usable host."""
    parts = urllib.parse.urlsplit(url)
    if "%" in parts.netloc.rsplit("@", 1)[-1]:
        raise ValueError("IPv6 zone id in the URL is not accepted")
    host = parse_host(parts.hostname or "")
    if not host:
        raise ValueError("URL has no host")
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    if not port:
        raise ValueError(f"no port for scheme {parts.scheme!r}")
    return host, port


def ip_literal(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(parse_host(host))
    except ValueError:
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would reach: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), 6to4 (``2002:AABB:CCDD::/48``) and
    NAT64 (``64:ff9b::a.b.c.d``); None for an IPv4 address or a plain IPv6 one."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _V4_COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _forms(ip: IPAddress) -> set[IPAddress]:
    """Every address ``ip`` may stand for: itself, the IPv4 address it embeds, both loopback
    addresses for an unspecified one (connecting to it reaches this node), and the
    IPv4-mapped IPv6 form of each IPv4 one."""
    out: set[IPAddress] = {ip}
    while True:
        more: set[IPAddress] = set()
        for addr in out:
            inner = embedded_ipv4(addr)
            if inner is not None:
                more.add(inner)
            if addr.is_unspecified:
                more.update((_LOOPBACK4, _LOOPBACK6))
            if isinstance(addr, ipaddress.IPv4Address):
                more.add(ipaddress.IPv6Address(f"::ffff:{addr}"))
        if more <= out:
            return out
        out |= more


def forbidden_reason(ip: IPAddress, networks: Iterable[IPNetwork]) -> str | None:
    """Why ``ip`` may not be reached (it, or an address it embeds, is in one of ``networks``),
    compared across IP versions; None when it may."""
    nets = list(networks)
    if not nets:
        return None
    for form in _forms(ip):
        for net in nets:
            if form.version == net.version and form in net:
                shown = str(ip) if form == ip else f"{ip} (= {form})"
                return f"address {shown} is in a forbidden network ({net})"
    return None


# -- proxies ------------------------------------------------------------------------------------


@attrs.frozen
class NoProxy:
    """``no_proxy`` as curl and httpx read it: ``*``, host names and domain suffixes (with or
    without a leading ``.`` or ``*.``, optionally ``:port``), IP addresses and CIDR networks."""

    everything: bool = False
    domains: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    source: str = ""

    @classmethod
    def parse(cls, value: str | None, where: str) -> NoProxy:
        if not value or not value.strip():
            return cls()
        domains: list[tuple[str, int | None]] = []
        networks: list[IPNetwork] = []
        everything = False
        for raw in value.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                everything = True
                continue
            net = _network(entry)
            if net is not None:
                networks.append(net)
                continue
            host, port = entry, None
            m = re.fullmatch(r"(.+):(\d{1,5})", entry)
            if m and not entry.startswith("["):
                host, port = m.group(1), int(m.group(2))
            host = host.lower().removeprefix("*.").lstrip(".")
            labels = host.split(".")
            if not host or not all(_HOST_LABEL.match(label) for label in labels):
                raise ConfigError(
                    f"{where}: {entry!r} is not a host name, domain, IP address or CIDR network"
                )
            domains.append((host, port))
        return cls(everything, tuple(domains), tuple(networks), value)

    def bypass(self, host: str, port: int) -> bool:
        """True when a connection to ``host:port`` goes direct."""
        if self.everything:
            return True
        ip = ip_literal(host)
        if ip is not None:
            return any(ip.version == n.version and ip in n for n in self.networks)
        name = host.lower().rstrip(".")
        for domain, dport in self.domains:
            if dport is not None and dport != port:
                continue
            if name == domain or name.endswith("." + domain):
                return True
        return False


def _network(entry: str) -> IPNetwork | None:
    text = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
    if "/" not in text and ip_literal(text) is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        if "/" in text:
            raise ConfigError(f"no_proxy: {entry!r} is not a valid CIDR network") from exc
        return None


def _check_proxy(url: str, where: str) -> str:
    """A proxy URL, validated: http(s) scheme, a host, a port if any; ConfigError otherwise."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text  # curl's reading of "proxy.example:3128"
    try:
        parts = urllib.parse.urlsplit(text)
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {redact_url(url)!r} is not a URL ({exc})") from exc
    if parts.scheme.lower() not in _PROXY_SCHEMES:
        raise ConfigError(
            f"{where}: proxy scheme {parts.scheme!r} is not supported (use http:// or https://)"
        )
    if not parts.hostname:
        raise ConfigError(f"{where}: proxy URL {redact_url(url)!r} has no host")
    SCRUB.add(parts.password)
    return text


@attrs.frozen
class Proxies:
    """Which proxy each scheme uses (None = direct) and what bypasses them."""

    http: str | None = None
    https: str | None = None
    no_proxy: NoProxy = NoProxy()

    def for_url(self, url: str) -> str | None:
        """The proxy ``url`` goes through, or None for a direct connection."""
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            host, port = host_port(url)
        except ValueError:
            return None
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or self.no_proxy.bypass(host, port):
            return None
        return proxy


def _env(env: Mapping[str, str], name: str) -> str | None:
    """A proxy variable, lower case first (curl reads ``http_proxy`` only in lower case, to
    keep CGI's ``HTTP_PROXY`` request header out; httpx and requests read both)."""
    for key in (name.lower(), name.upper()):
        value = env.get(key)
        if value is not None and value.strip():
            return value.strip()
    return None


def proxies_from(config: Config, env: Mapping[str, str]) -> Proxies:
    """``[network] proxy``/``no_proxy`` override the environment's ``http_proxy``,
    ``https_proxy``, ``all_proxy`` and ``no_proxy`` (either case)."""
    net = config.network
    if net.proxy is not None:
        proxy = _check_proxy(net.proxy, "config [network] proxy") if net.proxy else None
        no_proxy = net.no_proxy if net.no_proxy is not None else _env(env, "no_proxy")
        where = "config [network] no_proxy" if net.no_proxy is not None else "no_proxy"
        return Proxies(proxy, proxy, NoProxy.parse(no_proxy, where))
    every = _env(env, "all_proxy")
    found: dict[str, str | None] = {}
    for scheme in ("http", "https"):
        value = _env(env, f"{scheme}_proxy") or every
        name = f"{scheme}_proxy" if _env(env, f"{scheme}_proxy") else "all_proxy"
        found[scheme] = _check_proxy(value, name) if value else None
    if net.no_proxy is not None:
        bypass = NoProxy.parse(net.no_proxy, "config [network] no_proxy")
    else:
        bypass = NoProxy.parse(_env(env, "no_proxy"), "no_proxy")
    return Proxies(found["http"], found["https"], bypass)


# -- trust --------------------------------------------------------------------------------------


@attrs.frozen
class Trust:
    """Where certificates are checked against, and the client certificate, with where each
    setting came from (for messages)."""

    verify: bool = True
    ca_file: str | None = None
    ca_dir: str | None = None
    #: What chose the CAs: ``[tls] ca_file``, ``OS_CACERT``, ``SSL_CERT_FILE``, ... or "system".
    source: str = "system"
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The one SSLContext; ConfigError (exit 2) when a CA or client cert cannot be loaded."""
        if not self.verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file or self.ca_dir:
            where = self.ca_file or self.ca_dir
            if where and not os.access(where, os.R_OK):
                raise ConfigError(f"{self.source} {where}: CA certificates not readable")
            try:
                ctx = ssl.create_default_context(cafile=self.ca_file, capath=self.ca_dir)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.source} {where}: cannot load CA certificates ({exc})"
                ) from exc
        else:
            ctx = ssl.create_default_context()
            paths = ssl.get_default_verify_paths()
            if not _exists(paths.cafile) and not _exists(paths.capath):
                import certifi  # no system store on this node: fall back to certifi's bundle

                ctx.load_verify_locations(cafile=certifi.where())
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"client certificate {self.cert_file}: cannot load ({exc})"
                ) from exc
        return ctx

    def requests_verify(self) -> str | bool:
        """The same trust for libraries that take a path (keystoneauth/requests, botocore)."""
        if not self.verify:
            return False
        if self.ca_file or self.ca_dir:
            return self.ca_file or self.ca_dir or True
        paths = ssl.get_default_verify_paths()
        if _exists(paths.cafile):
            return str(paths.cafile)
        if _exists(paths.capath):
            return str(paths.capath)
        return True

    def requests_cert(self) -> str | tuple[str, str] | None:
        if self.cert_file and self.key_file:
            return (self.cert_file, self.key_file)
        return self.cert_file


def _exists(path: str | None) -> bool:
    return bool(path) and os.path.exists(path or "")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def trust_from(
    config: Config, env: Mapping[str, str], *, cloud_cacert: str | None = None, insecure: bool
) -> Trust:
    """CAs: ``[tls] ca_file`` > ``OS_CACERT`` / clouds.yaml ``cacert`` > ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` > the system store. Client certificate: ``[tls] cert_file``/``key_file``
    > ``OS_CERT``/``OS_KEY``. ``OS_INSECURE`` is ``--insecure``."""
    tls = config.tls
    verify = tls.verify and not insecure and not _truthy(env.get("OS_INSECURE"))
    cert = tls.cert_file or env.get("OS_CERT") or None
    key = tls.key_file or (env.get("OS_KEY") if not tls.cert_file else None) or None
    common: dict[str, Any] = {"verify": verify, "cert_file": cert, "key_file": key}
    if tls.ca_file:
        return Trust(ca_file=tls.ca_file, source="config [tls] ca_file", **common)
    if env.get("OS_CACERT"):
        return Trust(ca_file=env["OS_CACERT"], source="OS_CACERT", **common)
    if cloud_cacert:
        return Trust(ca_file=cloud_cacert, source="clouds.yaml cacert", **common)
    cafile, cadir = env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None
    if cafile or cadir:
        source = "SSL_CERT_FILE" if cafile else "SSL_CERT_DIR"
        return Trust(ca_file=cafile, ca_dir=cadir, source=source, **common)
    return Trust(**common)


# -- the policy ---------------------------------------------------------------------------------


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
        """The policy of ``config`` plus the standard environment, read once here."""
        environ = os.environ if env is None else env
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
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
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
            reason = self.check_ip(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
            if reason:
                return f"host {host}: {reason}"
        return None

    def check_peer(self, sock: socket.socket, host: str) -> None:
        """Raise AddressRefused when ``sock`` is connected to a forbidden address."""
        peer = sock.getpeername()[0]
        reason = self.check_ip(ipaddress.ip_address(str(peer).split("%")[0]))
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
        bare = parse_host(host)
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
        refused: str | None = None
        error: OSError | None = None
        for family, kind, proto, _canon, sockaddr in infos:
            reason = self.check_ip(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
            if reason:
                refused = refused or reason
                continue
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                self.check_peer(sock, host)
            except BaseException as exc:
                sock.close()
                if isinstance(exc, OSError):
                    error = exc
                    continue
                raise
            return sock
        if refused:
            raise AddressRefused(f"host {host}: {refused}")
        raise error or OSError(f"getaddrinfo returned no address for {host}")

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
