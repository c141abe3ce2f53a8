"""Which proxy a URL goes through: ``[network] proxy``/``no_proxy`` over the environment's
``http_proxy``, ``https_proxy``, ``all_proxy`` and ``no_proxy`` (read as curl reads them),
validated once into frozen values."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping

import attrs

from locpick.config.model import Config
from locpick.errors import ConfigError
from locpick.net.addr import IPNetwork, host_port, ip_literal
from locpick.redact import SCRUB, redact_url

_PROXY_SCHEMES = ("http", "https")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_*]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")


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
