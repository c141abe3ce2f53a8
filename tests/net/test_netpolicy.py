"""The connection policy's pure parts: address normalisation (Hypothesis properties), proxy
selection as curl/httpx read the environment, and the trust-store order."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from locpick.config.connection import NetworkConfig, TLSConfig
from locpick.config.model import Config
from locpick.errors import ConfigError
from locpick.net.addr import forbidden_reason, host_port
from locpick.net.proxy import NoProxy, proxies_from
from locpick.net.trust import trust_from

FORBIDDEN = [
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "192.168.0.0/16", "fe80::/10")
]
V4_FORBIDDEN = [n for n in FORBIDDEN if n.version == 4]
SPECIAL_V6 = [
    ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0/96", "2002::/16", "64:ff9b::/96")
]


def embedded_forms(v4: ipaddress.IPv4Address, suffix: int) -> list[ipaddress.IPv6Address]:
    n = int(v4)
    forms = [
        ipaddress.IPv6Address((0xFFFF << 32) | n),  # ::ffff:a.b.c.d
        ipaddress.IPv6Address((0x0064FF9B << 96) | n),  # 64:ff9b::a.b.c.d
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | (suffix & ((1 << 80) - 1))),  # 6to4
    ]
    if n > 1:
        forms.append(ipaddress.IPv6Address(n))  # ::a.b.c.d
    return forms


def _inside(net: ipaddress.IPv4Network, offset: int) -> ipaddress.IPv4Address:
    return net[offset % net.num_addresses]


@given(st.sampled_from(V4_FORBIDDEN), st.integers(min_value=0), st.integers(min_value=0))
def test_every_embedded_form_of_a_forbidden_ipv4_address_is_refused(
    net: ipaddress.IPv4Network, offset: int, suffix: int
) -> None:
    v4 = _inside(net, offset)
    assert forbidden_reason(v4, FORBIDDEN)
    for form in embedded_forms(v4, suffix):
        assert forbidden_reason(form, FORBIDDEN), form


@given(st.integers(min_value=1, max_value=2**32 - 1), st.integers(min_value=0))
def test_no_allowed_ipv4_address_is_refused_in_any_form(n: int, suffix: int) -> None:
    v4 = ipaddress.IPv4Address(n)
    if any(v4 in net for net in V4_FORBIDDEN):
        return
    assert forbidden_reason(v4, FORBIDDEN) is None
    for form in embedded_forms(v4, suffix):
        assert forbidden_reason(form, FORBIDDEN) is None, form


@given(st.integers(min_value=2, max_value=2**128 - 1))
def test_no_allowed_ipv6_address_is_refused(n: int) -> None:
    ip = ipaddress.IPv6Address(n)
    if any(ip in net for net in SPECIAL_V6) or any(ip in net for net in FORBIDDEN):
        return
    assert forbidden_reason(ip, FORBIDDEN) is None


@pytest.mark.parametrize(
    "addr", ["0.0.0.0", "::", "::ffff:0.0.0.0", "::ffff:7f00:1", "::127.0.0.1", "2002:7f00:1::"]
)
def test_unspecified_and_embedded_loopback_refused(addr: str) -> None:
    nets = [ipaddress.ip_network("127.0.0.1/32")]
    assert forbidden_reason(ipaddress.ip_address(addr), nets)


def test_an_ipv6_rule_catches_the_ipv4_address_it_maps() -> None:
    nets = [ipaddress.ip_network("::ffff:127.0.0.0/104")]
    assert forbidden_reason(ipaddress.ip_address("127.0.0.1"), nets)


def test_host_port_handles_ipv6_literals_and_default_ports() -> None:
    assert host_port("http://[::1]/x") == ("::1", 80)
    assert host_port("https://[2001:db8::1]:8443/x") == ("2001:db8::1", 8443)
    assert host_port("http://example.org/x") == ("example.org", 80)
    with pytest.raises(ValueError, match="zone id"):
        host_port("http://[fe80::1%25eth0]/x")


def test_no_proxy_reads_like_curl() -> None:
    np = NoProxy.parse("*.corp.example, .internal,10.0.0.0/8, ::1, host.example:8080", "t")
    assert np.bypass("a.corp.example", 80) and np.bypass("corp.example", 80)
    assert np.bypass("x.internal", 443) and np.bypass("internal", 443)
    assert np.bypass("10.1.2.3", 80) and not np.bypass("11.1.2.3", 80)
    assert np.bypass("::1", 80)
    assert np.bypass("host.example", 8080) and not np.bypass("host.example", 80)
    assert not np.bypass("notcorp.example", 80)
    assert NoProxy.parse("*", "t").bypass("anything", 1)


def test_proxy_variables_lower_case_first_then_all_proxy() -> None:
    env = {"HTTP_PROXY": "http://upper:1", "http_proxy": "http://lower:1", "ALL_PROXY": "p:3"}
    p = proxies_from(Config(), env)
    assert p.for_url("http://x/y") == "http://lower:1"
    assert p.for_url("https://x/y") == "http://p:3"  # scheme-less proxy means http://
    cfg = Config(network=NetworkConfig(proxy=""))
    assert proxies_from(cfg, env).for_url("http://x/y") is None  # config: no proxy at all


def test_trust_order(tmp_path: Path) -> None:
    env = {"OS_CACERT": "/os.pem", "SSL_CERT_FILE": "/ssl.pem", "SSL_CERT_DIR": "/d"}
    tls = Config(tls=TLSConfig(ca_file="/cfg.pem"))
    assert trust_from(tls, env, insecure=False).ca_file == "/cfg.pem"
    assert trust_from(Config(), env, insecure=False).source == "OS_CACERT"
    assert trust_from(Config(), env, cloud_cacert="/c.pem", insecure=False).ca_file == "/os.pem"
    only_ssl = {"SSL_CERT_FILE": "/ssl.pem"}
    assert trust_from(Config(), only_ssl, cloud_cacert="/c.pem", insecure=False).ca_file == (
        "/c.pem"
    )
    assert trust_from(Config(), only_ssl, insecure=False).source == "SSL_CERT_FILE"
    assert trust_from(Config(), {}, insecure=False).source == "system"
    assert trust_from(Config(), {"OS_INSECURE": "true"}, insecure=False).verify is False


def test_system_store_is_loaded_not_certifi_alone(tmp_path: Path) -> None:
    """With no CA setting, the context holds the system store (a CA added there is
    trusted), like curl and openssl."""
    ctx = trust_from(Config(), {}, insecure=False).ssl_context()
    ca = trustme.CA()
    ctx2 = trust_from(Config(), {}, insecure=False).ssl_context()
    ca.configure_trust(ctx2)
    assert ctx.verify_mode.name == "CERT_REQUIRED"
    assert ctx2.cert_store_stats()["x509_ca"] >= 1


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="proxy scheme"):
        proxies_from(Config(), {"https_proxy": "socks4://x:1"})
    with pytest.raises(ConfigError, match="CIDR"):
        NoProxy.parse("::1/200", "no_proxy")
