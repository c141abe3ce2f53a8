"""IP addresses and hosts as a connection policy sees them: a URL's host and port, IP
literals, the IPv4 address an IPv6 one carries, and why an address is in a forbidden network
(compared across every form it may stand for). Pure: no I/O."""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_V4_COMPAT = ipaddress.ip_network("::/96")
_LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK6 = ipaddress.IPv6Address("::1")


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
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
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


def sockaddr_ip(sockaddr: tuple[object, ...]) -> IPAddress:
    """The address of a ``getaddrinfo``/``getpeername`` socket address, zone id dropped."""
    return ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
