"""The swift transport with a real Keystone v3 (the harness's Keystone) in front of the
real Swift: form 1 authenticating against Keystone (catalog ``object-store`` endpoint) and form 3
allowed by the token's catalog. The harness Swift runs tempauth, which ignores Keystone tokens,
so the objects live in a world-readable container: the Keystone side (auth, catalog, token
policy) is what these tests pin down; the token is still sent as X-Auth-Token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_swift import SMALL, swift_server
from glance_harness import KeystoneHandle, harness_available, register_endpoint, start_keystone
from helpers import image_record, run_cli, write_record
from swift_harness import PutResult, SwiftHandle, put_object

__all__ = ["swift_server"]  # fixture used by name

pytestmark = pytest.mark.swift


@pytest.fixture(scope="module")
def keystone(
    tmp_path_factory: pytest.TempPathFactory, swift_server: SwiftHandle
) -> Iterator[KeystoneHandle]:
    if not harness_available():
        pytest.fail("the Keystone harness (tests/harness) is missing")
    handle = start_keystone(tmp_path_factory.mktemp("keystone"))
    try:
        register_endpoint(handle.auth_url, "swift", "object-store", swift_server.storage_url)
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def public_obj(swift_server: SwiftHandle) -> PutResult:
    return put_object(swift_server, "public", "ks-img", SMALL, public=True)


def _ks_url(keystone: KeystoneHandle, password: str) -> str:
    # Glance's form 1 with a Keystone v3 auth address: project "demo", user "demo"
    host = keystone.auth_url.removeprefix("http://")
    return f"swift+http://demo%3Ademo:{password}@{host}/public/ks-img"


def test_form1_keystone_v3(
    tmp_path: Path, keystone: KeystoneHandle, swift_server: SwiftHandle, public_obj: PutResult
) -> None:
    good, bad = _ks_url(keystone, "demo-pass"), _ks_url(keystone, "Wrong-Pass-42")
    cfg = tmp_path / "c.toml"
    # Keystone is slow on a loaded machine: a generous probe deadline, one location per rank
    # (a wrong password answering after the good location would be kept as a straggler).
    cfg.write_text('history_file = ""\n[probe]\ndeadline = 20.0\n')
    meta_bad = write_record(tmp_path / "bad.json", image_record("ks-1", SMALL, [bad]))
    rb = run_cli("rank", "ks-1", "--metadata", str(meta_bad), "--json", "--config", str(cfg))
    assert rb.returncode == 0, rb.stderr
    row = json.loads(rb.stdout)[0]
    assert row["usable"] is False
    assert "Keystone" in row["reasons"]["error"]
    assert "refused the location's credentials (HTTP 401)" in row["reasons"]["error"]
    meta = write_record(tmp_path / "img.json", image_record("ks-1", SMALL, [good]))
    r = run_cli("rank", "ks-1", "--metadata", str(meta), "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["usable"] and row["reasons"]["latency_ms"] is not None
    dest = tmp_path / "out.raw"
    d = run_cli(
        "download",
        "ks-1",
        str(dest),
        "--verbose",
        "--metadata",
        str(meta),
        "--json",
        "--config",
        str(cfg),
    )
    assert d.returncode == 0, d.stderr
    assert dest.read_bytes() == SMALL
    for text in (rb.stdout, rb.stderr, r.stdout, r.stderr, d.stdout, d.stderr):
        assert "demo-pass" not in text and "Wrong-Pass-42" not in text


def test_form3_allowed_by_the_tokens_catalog(
    tmp_path: Path, keystone: KeystoneHandle, swift_server: SwiftHandle, public_obj: PutResult
) -> None:
    token = keystone.token("demo", "demo-pass", "demo")
    in_catalog = f"swift+http://127.0.0.1:{swift_server.port}/v1/AUTH_test/public/ks-img"
    # same server under another name: not what the catalog says, so the token is not sent
    elsewhere = f"swift+http://localhost:{swift_server.port}/v1/AUTH_test/public/ks-img"
    meta = write_record(tmp_path / "img.json", image_record("ks-2", SMALL, [in_catalog]))
    other = write_record(tmp_path / "other.json", image_record("ks-2", SMALL, [elsewhere]))
    cfg = tmp_path / "c.toml"
    cfg.write_text('history_file = ""\n[probe]\ndeadline = 20.0\n')
    env = {"OS_AUTH_URL": keystone.auth_url}
    table = run_cli(
        "rank", "ks-2", "--metadata", str(meta), "--config", str(cfg), "--token", token, env=env
    )
    assert table.returncode == 0, table.stderr
    assert "object-store endpoint in the token's catalog" in table.stdout
    dest = tmp_path / "out.raw"
    d = run_cli(
        "download",
        "ks-2",
        str(dest),
        "--metadata",
        str(meta),
        "--config",
        str(cfg),
        "--token",
        token,
        env=env,
    )
    assert d.returncode == 0, d.stderr
    assert dest.read_bytes() == SMALL
    r = run_cli(
        "rank",
        "ks-2",
        "--metadata",
        str(other),
        "--json",
        "--config",
        str(cfg),
        "--token",
        token,
        env=env,
    )
    row = json.loads(r.stdout)[0]
    assert row["usable"] is False
    assert "refused to send the caller's token to localhost" in row["reasons"]["error"]
    for text in (table.stdout, table.stderr, r.stdout, r.stderr, d.stdout, d.stderr):
        assert token not in text
