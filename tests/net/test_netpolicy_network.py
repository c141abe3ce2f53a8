"""Real networks: IPv6 literals, forward proxies, private CAs and mutual TLS, the address guard
(issue 18 attack 1), and bad network settings -- each against real sockets on loopback."""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from fixtures_net import ForwardProxy, Site, glance_routes
from helpers import image_record, run_cli, temp_leftovers, write_record

import locpick
from locpick._demo.origin import Origin

DATA = os.urandom(300_000)
NO_PROXY_ENV = dict.fromkeys(("http_proxy", "https_proxy", "all_proxy", "no_proxy"), "")


def _rank(meta: Path, *extra: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = run_cli("rank", "img", "--metadata", str(meta), "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "net.toml"
    path.write_text(text)
    return path


# -- IPv6 literals ----------------------------------------------------------------------------


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback here")


@needs_ipv6
def test_ipv6_literal_with_port_downloads_and_ranks(tmp_path: Path) -> None:
    with Origin(DATA, host="::1") as origin:
        assert origin.url.startswith("http://[::1]:")
        meta = write_record(tmp_path / "m.json", image_record("img", DATA, [origin.url]))
        ranked = _rank(meta)
        assert ranked[0]["usable"] and ranked[0]["reasons"]["route"] == "direct"
        dest = tmp_path / "out.img"
        r = run_cli("download", "img", str(dest), "--metadata", str(meta), "--json")
        assert r.returncode == 0, r.stderr
        assert dest.read_bytes() == DATA


@needs_ipv6
def test_ipv6_literal_without_port_downloads(tmp_path: Path) -> None:
    """``http://[::1]/img.raw``: before, http.client took ``::1`` as host ``::`` port 1."""
    try:
        origin = Origin(DATA, host="::1", port=80).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            pytest.skip("[::1]:80 is taken on this machine")
        raise
    try:
        assert origin.url == "http://[::1]/img.raw"
        other = Origin(DATA).start()  # a second location, so that download probes both
        meta = write_record(tmp_path / "m.json", image_record("img", DATA, [origin.url, other.url]))
        assert {row["url"] for row in _rank(meta) if row["usable"]} == {origin.url, other.url}
        other.stop()  # only the IPv6 origin is left to deliver
        dest = tmp_path / "out.img"
        r = run_cli("download", "img", str(dest), "--metadata", str(meta), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["source_url"] == origin.url
        assert dest.read_bytes() == DATA
    finally:
        origin.stop()


def test_zone_id_is_refused_with_a_reason(tmp_path: Path) -> None:
    meta = write_record(
        tmp_path / "m.json", image_record("img", DATA, ["http://[fe80::1%25eth0]:8080/img.raw"])
    )
    rows = _rank(meta)
    assert rows[0]["usable"] is False
    assert "zone id" in rows[0]["reasons"]["error"]


# -- forward proxies ----------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


def _through_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, var: str
) -> None:
    for name in NO_PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv(var, proxy.url)
    with Origin(DATA) as a, Origin(DATA) as b:
        record = image_record("img", DATA, [a.url, b.url])
        ranking = locpick.rank("img", metadata=record)
        assert all(s.reasons.route == f"via proxy {proxy.url}" for s in ranking.scores)
        assert all(f"route: via proxy {proxy.url}" in s.reasons.notes for s in ranking.scores)
        probes = len(proxy.requests)
        assert probes >= 2
        dest = tmp_path / "out.img"
        result = locpick.download("img", dest, metadata=record)
        assert dest.read_bytes() == DATA
        served = len(a.requests) + len(b.requests)
        # every request the origins saw (probes and the bulk GET) came through the proxy
        assert len(proxy.requests) == served, (proxy.requests, served)
        assert {t for _m, t in proxy.requests} <= {a.url, b.url}
        assert proxy.relayed >= len(DATA)  # the bulk GET's body was relayed
        assert result.source_url in (a.url, b.url)


@pytest.mark.parametrize("var", ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"])
def test_probes_and_bulk_get_take_the_same_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, var: str
) -> None:
    _through_proxy(tmp_path, monkeypatch, proxy, var)


@pytest.mark.parametrize(
    "no_proxy", ["127.0.0.1", "127.0.0.0/8", "*", "localhost,127.0.0.0/24", " 127.0.0.1 , x"]
)
def test_no_proxy_bypasses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, no_proxy: str
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    with Origin(DATA) as a, Origin(DATA) as b:
        record = image_record("img", DATA, [a.url, b.url])
        ranking = locpick.rank("img", metadata=record)
        assert {s.reasons.route for s in ranking.scores} == {"direct"}
        locpick.download("img", tmp_path / "out.img", metadata=record)
        assert a.requests or b.requests
    assert proxy.requests == [] and proxy.relayed == 0


def test_config_proxy_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")  # would fail: nothing listens
    cfg = _config(tmp_path, f'[network]\nproxy = "{proxy.url}"\n')
    with Origin(DATA) as a, Origin(DATA) as b:
        record = image_record("img", DATA, [a.url, b.url])
        locpick.download("img", tmp_path / "out.img", metadata=record, config=cfg)
        assert len(proxy.requests) == len(a.requests) + len(b.requests) > 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA, *, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(ctx)
    return ctx


def test_https_proxy_tunnels_with_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, ca: trustme.CA
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ctx = _server_context(ca)
    with Site({"/img.raw": DATA}, context=ctx) as a, Site({"/img.raw": DATA}, context=ctx) as b:
        record = image_record("img", DATA, [f"{a.base}/img.raw", f"{b.base}/img.raw"])
        ranking = locpick.rank("img", metadata=record)
        assert all(s.usable for s in ranking.scores), ranking.to_json()
        locpick.download("img", tmp_path / "out.img", metadata=record)
        assert (tmp_path / "out.img").read_bytes() == DATA
        tunnels = [t for m, t in proxy.requests if m == "CONNECT"]
        assert tunnels and len(tunnels) == len(proxy.requests)
        assert set(tunnels) <= {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
        assert len(a.requests) + len(b.requests) >= 3  # two probes and the bulk GET
        assert proxy.relayed >= len(DATA)


# -- one trust store ----------------------------------------------------------------------------


def _tls_world(
    tmp_path: Path, ca: trustme.CA, *, client_ca: trustme.CA | None = None
) -> tuple[Site, Path]:
    record = image_record("img", DATA, ["PLACEHOLDER"])
    site = Site({}, context=_server_context(ca, client_ca=client_ca))
    record["locations"] = [{"url": f"{site.base}/img.raw", "metadata": {}}]
    site.routes.update(glance_routes(record, DATA))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return site, bundle


_NO_TRUST = {"SSL_CERT_FILE": "", "SSL_CERT_DIR": "", "OS_CACERT": "", **NO_PROXY_ENV}


@pytest.mark.parametrize("how", ["SSL_CERT_FILE", "OS_CACERT", "config"])
def test_private_ca_reaches_glance_and_locations(tmp_path: Path, ca: trustme.CA, how: str) -> None:
    site, bundle = _tls_world(tmp_path, ca)
    env = dict(_NO_TRUST)
    args: list[str] = []
    if how == "config":
        args = ["--config", str(_config(tmp_path, f'[tls]\nca_file = "{bundle}"\n'))]
    else:
        env[how] = str(bundle)
    with site:
        source = ["--glance-url", site.base, "--token", "tok-secret-1234"]
        r = run_cli("rank", "img", *source, "--json", *args, env=env)
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert [row["usable"] for row in rows] == [True, True], rows  # location + Glance /file
        dest = tmp_path / "out.img"
        r = run_cli("download", "img", str(dest), *source, "--json", *args, env=env)
        assert r.returncode == 0, r.stderr
        assert dest.read_bytes() == DATA
        assert "/img.raw" in site.requests  # the location itself was used, not only Glance


def test_without_the_private_ca_nothing_is_fetched(tmp_path: Path, ca: trustme.CA) -> None:
    site, _bundle = _tls_world(tmp_path, ca)
    dest = tmp_path / "out.img"
    dest.write_bytes(b"before")
    with site:
        r = run_cli(
            "download", "img", str(dest), "--glance-url", site.base, "--token", "tok-x-1234",
            env=dict(_NO_TRUST),
        )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert dest.read_bytes() == b"before" and temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["env", "config"])
def test_mutual_tls_origin(tmp_path: Path, ca: trustme.CA, how: str) -> None:
    client_ca = trustme.CA()
    site, bundle = _tls_world(tmp_path, ca, client_ca=client_ca)
    cert = tmp_path / "client.pem"
    client_ca.issue_cert("locpick-node").private_key_and_cert_chain_pem.write_to_path(str(cert))
    env = {**_NO_TRUST, "OS_CACERT": str(bundle)}
    args: list[str] = []
    if how == "env":
        env["OS_CERT"] = str(cert)
    else:
        args = ["--config", str(_config(tmp_path, f'[tls]\ncert_file = "{cert}"\n'))]
    source = ["--glance-url", site.base, "--token", "tok-secret-1234"]
    dest = tmp_path / "out.img"
    with site:
        refused = run_cli(
            "download", "img", str(dest), *source, env={**_NO_TRUST, "OS_CACERT": str(bundle)}
        )
        assert refused.returncode == 3 and not dest.exists(), refused.stderr
        r = run_cli("download", "img", str(dest), *source, *args, env=env)
        assert r.returncode == 0, r.stderr
        assert dest.read_bytes() == DATA


def test_keystone_gets_the_same_trust_and_route(
    tmp_path: Path, ca: trustme.CA, proxy: ForwardProxy
) -> None:
    """keystoneauth verifies Keystone against the policy's CA (OS_CACERT here) and goes
    through the policy's proxy; this TLS site is no Keystone, so it answers POST with 501."""
    site, bundle = _tls_world(tmp_path, ca)
    env = {**_NO_TRUST, "OS_AUTH_URL": "", "OS_USERNAME": "demo", "OS_PASSWORD": "pw-secret-1"}
    env.update(OS_PROJECT_NAME="demo", OS_USER_DOMAIN_NAME="Default")
    env["OS_PROJECT_DOMAIN_NAME"] = "Default"
    with site:
        env["OS_AUTH_URL"] = f"{site.base}/v3"
        untrusted = run_cli("rank", "img", "--glance-url", site.base, env=env)
        trusted = run_cli(
            "rank", "img", "--glance-url", site.base, env={**env, "OS_CACERT": str(bundle)}
        )
    assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert trusted.returncode == 2 and "501" in trusted.stderr, trusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" not in trusted.stderr
    with Site({}) as keystone:
        env.update(OS_AUTH_URL=f"{keystone.base}/v3", http_proxy=proxy.url)
        routed = run_cli("rank", "img", "--glance-url", keystone.base, env=env)
    assert routed.returncode == 2, routed.stderr
    assert ("POST", f"{keystone.base}/v3/auth/tokens") in proxy.requests
    assert "pw-secret-1" not in routed.stderr


# -- the address guard (issue 18, attack 1) ------------------------------------------------------

FORBID_LOOPBACK = '[security]\nforbid_networks = ["127.0.0.1/32"]\n'


@pytest.fixture
def dual_stack() -> Iterator[Origin]:
    """An origin on an IPv6 socket bound to ``::`` with v6only off: it accepts 127.0.0.1 as
    ``::ffff:127.0.0.1``."""
    if not _ipv6_available():
        pytest.skip("no IPv6 here")
    with Origin(DATA, host="::") as origin:
        yield origin


@pytest.mark.parametrize(
    "host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0", "[::]", "[::127.0.0.1]"]
)
def test_embedded_forbidden_address_is_refused(
    tmp_path: Path, dual_stack: Origin, host: str
) -> None:
    url = f"http://{host}:{dual_stack.port}/img.raw"
    cfg = _config(tmp_path, FORBID_LOOPBACK)
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    rows = _rank(meta, "--config", str(cfg))
    assert rows[0]["usable"] is False and "forbidden network" in rows[0]["reasons"]["error"]
    dest = tmp_path / "out.img"
    r = run_cli("download", "img", str(dest), "--metadata", str(meta), "--config", str(cfg))
    assert r.returncode == 3 and not dest.exists()
    assert dual_stack.requests == []


def test_the_same_origin_is_reachable_when_allowed(tmp_path: Path, dual_stack: Origin) -> None:
    """The refusals above are the guard's doing: without the rule the same URL downloads."""
    url = f"http://[::ffff:127.0.0.1]:{dual_stack.port}/img.raw"
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    dest = tmp_path / "out.img"
    r = run_cli("download", "img", str(dest), "--metadata", str(meta))
    assert r.returncode == 0, r.stderr
    assert dual_stack.requests


def test_redirect_to_an_embedded_forbidden_address_is_refused(
    tmp_path: Path, dual_stack: Origin
) -> None:
    target = f"http://[::ffff:7f00:1]:{dual_stack.port}/img.raw"
    with Site({}, host="127.0.0.2", redirects={"/img.raw": target}) as hop:
        cfg = _config(tmp_path, FORBID_LOOPBACK)
        meta = write_record(tmp_path / "m.json", image_record("img", DATA, [f"{hop.base}/img.raw"]))
        dest = tmp_path / "out.img"
        r = run_cli("download", "img", str(dest), "--metadata", str(meta), "--config", str(cfg))
        assert r.returncode == 3 and not dest.exists()
        assert "forbidden network" in r.stderr
        assert hop.requests and dual_stack.requests == []


def test_a_name_resolving_into_a_forbidden_network_is_refused_at_connect(
    tmp_path: Path,
) -> None:
    """The guard sits where sockets connect: ``localhost`` is refused by its addresses."""
    with Origin(DATA) as origin:
        cfg = _config(tmp_path, '[security]\nforbid_networks = ["127.0.0.0/8", "::1/128"]\n')
        with locpick.Client(config=cfg) as client:
            with pytest.raises(locpick.LocpickError) as info:
                client.net.connect(("localhost", origin.port), timeout=5)
            assert "forbidden network" in str(info.value)
            with pytest.raises(locpick.LocpickError) as info:
                client._ctx.http.get(f"http://localhost:{origin.port}/img.raw")
            assert "forbidden network" in str(info.value)
        assert origin.requests == []


def test_metadata_service_behind_ipv4_mapped_ipv6_is_refused_by_default(tmp_path: Path) -> None:
    meta = write_record(
        tmp_path / "m.json",
        image_record("img", DATA, ["http://[::ffff:169.254.169.254]/latest/meta-data"]),
    )
    rows = _rank(meta)
    assert rows[0]["usable"] is False
    assert "169.254.0.0/16" in rows[0]["reasons"]["error"]


# -- bad network settings: exit 2, one line, nothing fetched ------------------------------------


@pytest.mark.parametrize(
    ("env", "toml", "needle"),
    [
        ({"http_proxy": "ftp://proxy.example:21"}, "", "proxy scheme 'ftp'"),
        ({"ALL_PROXY": "socks5://127.0.0.1:1080"}, "", "proxy scheme 'socks5'"),
        ({}, '[network]\nproxy = "gopher://x"\n', "proxy scheme 'gopher'"),
        ({"no_proxy": "10.0.0.0/33"}, "", "not a valid CIDR"),
        ({"NO_PROXY": "good.example, bad host!"}, "", "'bad host!'"),
        ({}, '[tls]\nca_file = "/nonexistent/ca.pem"\n', "/nonexistent/ca.pem"),
        ({"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "", "SSL_CERT_FILE /nonexistent/ca.pem"),
        ({"OS_CACERT": "/nonexistent/ca.pem"}, "", "OS_CACERT /nonexistent/ca.pem"),
    ],
)
def test_bad_network_settings_are_exit_2(
    tmp_path: Path, env: dict[str, str], toml: str, needle: str
) -> None:
    with Origin(DATA) as origin:
        meta = write_record(tmp_path / "m.json", image_record("img", DATA, [origin.url]))
        cfg = _config(tmp_path, toml)
        dest = tmp_path / "out.img"
        r = run_cli(
            "download", "img", str(dest), "--metadata", str(meta), "--config", str(cfg), env=env
        )
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert origin.requests == [] and not dest.exists()


def test_unreadable_ca_file_is_exit_2(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, ["http://127.0.0.1:1/x"]))
    r = run_cli("rank", "img", "--metadata", str(meta), env={"SSL_CERT_FILE": str(bundle)})
    assert r.returncode == 2 and "cannot load CA certificates" in r.stderr, r.stderr


# -- contract fixes -----------------------------------------------------------------------------


def test_rank_json_carries_icmp_note_and_route(tmp_path: Path) -> None:
    with Origin(DATA) as origin:
        meta = write_record(tmp_path / "m.json", image_record("img", DATA, [origin.url]))
        cfg = _config(tmp_path, "[probe]\nicmp = false\n")
        rows = _rank(meta, "--config", str(cfg))
    assert rows[0]["reasons"]["icmp_note"] == "disabled by config"
    assert rows[0]["reasons"]["route"] == "direct"


def test_unreachable_glance_download_is_exit_3_and_dest_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    dest.write_bytes(b"before")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        r = run_cli(
            "download", "img", str(dest), "--glance-url", f"http://127.0.0.1:{port}",
            "--token", "tok-abcdef-123",
        )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith(f"locpick: error: glance http://127.0.0.1:{port}")
    assert len(r.stderr.strip().splitlines()) == 1
    assert dest.read_bytes() == b"before" and temp_leftovers(tmp_path) == []
