"""The swift transport against a real Swift (tests/swift_harness.py): Glance's three location
forms, token cache and re-auth, segmented objects with a resume, redaction, ranking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_swift import LARGE, SMALL, MiB, swift_large, swift_server, swift_small
from helpers import image_record, run_cli, temp_leftovers, write_record
from swift_harness import (
    ADMIN_USER,
    READER_NO_ACL,
    PutResult,
    SwiftHandle,
    config_url,
    multi_tenant_url,
    single_tenant_url,
    v1_token,
)

import locpick
import locpick.errors
from locpick._demo.origin import Origin
from locpick.config.model import Config, SecurityConfig
from locpick.config.stores import SwiftConfig, SwiftRefConfig
from locpick.models import Location
from locpick.transports.swift.transport import SwiftTransport

__all__ = ["swift_large", "swift_server", "swift_small"]  # fixtures used by name

pytestmark = pytest.mark.swift

KEY = ADMIN_USER[1]  # "testing": must never appear in any output


def _config(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'history_file = "{tmp_path / "history.json"}"\n{body}')
    return path


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert "test%3Atester:" not in text


def _history_text(tmp_path: Path) -> str:
    hist = tmp_path / "history.json"
    return hist.read_text() if hist.exists() else ""


def test_form1_v1_download_verify_and_redaction(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    url = single_tenant_url(swift_server, "images", "small-img")
    assert f":{KEY}@" in url
    meta = write_record(tmp_path / "img.json", image_record("img-1", SMALL, [url]))
    cfg = _config(tmp_path)
    dest = tmp_path / "out.raw"
    r = run_cli(
        "download",
        "img-1",
        str(dest),
        "--metadata",
        str(meta),
        "--json",
        "--config",
        str(cfg),
        "--verbose",
    )
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == SMALL
    doc = json.loads(r.stdout)
    assert doc["verified"] == "sha512"
    assert doc["source_url"].startswith("swift+http://***@127.0.0.1:")
    assert doc["attempts"][-1]["outcome"] == "ok"
    rank = run_cli("rank", "img-1", "--metadata", str(meta), "--json", "--config", str(cfg))
    assert rank.returncode == 0, rank.stderr
    row = json.loads(rank.stdout)[0]
    assert row["usable"] and row["reasons"]["latency_ms"] is not None
    table = run_cli("rank", "img-1", "--metadata", str(meta), "--config", str(cfg))
    verify = run_cli("verify", "img-1", "--metadata", str(meta), "--json", "--config", str(cfg))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["locations"][0]["status"] == "ok"
    _no_secret(
        r.stdout,
        r.stderr,
        rank.stdout,
        rank.stderr,
        table.stdout,
        table.stderr,
        verify.stdout,
        verify.stderr,
        _history_text(tmp_path),
    )


def test_wrong_key_is_unusable_with_reason(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    url = single_tenant_url(swift_server, "images", "small-img", key="WrongKey123")
    meta = write_record(tmp_path / "img.json", image_record("img-2", SMALL, [url]))
    cfg = _config(tmp_path)
    r = run_cli("rank", "img-2", "--metadata", str(meta), "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["usable"] is False
    assert "refused the location's credentials (HTTP 401)" in row["reasons"]["error"]
    dest = tmp_path / "out.raw"
    d = run_cli(
        "download", "img-2", str(dest), "--metadata", str(meta), "--json", "--config", str(cfg)
    )
    assert d.returncode == 3
    assert not dest.exists() and temp_leftovers(tmp_path) == []
    for text in (r.stdout, r.stderr, d.stdout, d.stderr, _history_text(tmp_path)):
        assert "WrongKey123" not in text


def test_form2_mapped_and_unmapped(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    mapped = config_url("glance", "images", "small-img")
    unmapped = config_url("elsewhere", "images", "small-img")
    meta = write_record(tmp_path / "img.json", image_record("img-3", SMALL, [unmapped, mapped]))
    cfg = _config(
        tmp_path,
        f'[swift.refs.glance]\nauth_url = "{swift_server.auth_url}"\n'
        f'user = "{ADMIN_USER[0]}"\nkey = "{KEY}"\n',
    )
    r = run_cli("rank", "img-3", "--metadata", str(meta), "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    rows = {row["url"]: row for row in json.loads(r.stdout)}
    assert rows[mapped]["usable"] is True
    assert rows[unmapped]["usable"] is False
    assert "'elsewhere' is not mapped" in rows[unmapped]["reasons"]["error"]
    dest = tmp_path / "out.raw"
    d = run_cli(
        "download", "img-3", str(dest), "--metadata", str(meta), "--json", "--config", str(cfg)
    )
    assert d.returncode == 0, d.stderr
    assert dest.read_bytes() == SMALL
    assert json.loads(d.stdout)["source_url"] == mapped
    _no_secret(r.stdout, r.stderr, d.stdout, d.stderr, _history_text(tmp_path))


def test_form3_token_needs_catalog_or_token_hosts(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    token = v1_token(swift_server, *ADMIN_USER)[0]
    url = multi_tenant_url(swift_server, "images", "small-img")
    meta = write_record(tmp_path / "img.json", image_record("img-4", SMALL, [url]))
    # not in token_hosts (and no Keystone catalog): the token is not sent, the location unusable
    plain = _config(tmp_path)
    r = run_cli(
        "rank", "img-4", "--metadata", str(meta), "--json", "--config", str(plain), "--token", token
    )
    row = json.loads(r.stdout)[0]
    assert row["usable"] is False
    assert "refused to send the caller's token to 127.0.0.1" in row["reasons"]["error"]
    # no token at all
    r0 = run_cli(
        "rank",
        "img-4",
        "--metadata",
        str(meta),
        "--json",
        "--config",
        str(plain),
        env={"OS_AUTH_TOKEN": ""},
    )
    assert "needs the caller's Keystone token" in json.loads(r0.stdout)[0]["reasons"]["error"]
    # listed in token_hosts: usable, and rank says why the token goes there
    cfg = _config(tmp_path, '[security]\ntoken_hosts = ["127.0.0.1"]\n')
    table = run_cli(
        "rank", "img-4", "--metadata", str(meta), "--config", str(cfg), "--token", token
    )
    assert table.returncode == 0, table.stderr
    assert "token_hosts" in table.stdout
    dest = tmp_path / "out.raw"
    d = run_cli(
        "download",
        "img-4",
        str(dest),
        "--metadata",
        str(meta),
        "--json",
        "--config",
        str(cfg),
        "--token",
        token,
    )
    assert d.returncode == 0, d.stderr
    assert dest.read_bytes() == SMALL
    for text in (r.stdout, r.stderr, table.stdout, table.stderr, d.stdout, d.stderr):
        assert token not in text


def test_form3_forbidden_container_is_unusable(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    token = v1_token(swift_server, *READER_NO_ACL)[0]  # same account, no read ACL
    url = multi_tenant_url(swift_server, "images", "small-img")
    image = locpick.models.Image(id="img-5", size=len(SMALL), locations=(Location(url),))
    cfg = Config(security=SecurityConfig(token_hosts=("127.0.0.1",)), history_file="")
    with locpick.Client(config=cfg, token=token) as client:
        row = client.rank_image(image).scores[0]
    assert row.usable is False
    assert row.reasons.error is not None and row.reasons.error.startswith("HTTP 403")


def test_missing_object_is_unusable(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    url = single_tenant_url(swift_server, "images", "no-such-img")
    image = locpick.models.Image(id="img-6", size=len(SMALL), locations=(Location(url),))
    with locpick.Client(config=Config(history_file="")) as client:
        row = client.rank_image(image).scores[0]
    assert row.usable is False
    assert row.reasons.error == "HTTP 404: no object images/no-such-img in Swift"


def test_token_cache_and_reauth_on_401(swift_server: SwiftHandle, swift_small: PutResult) -> None:
    from locpick.transports.base import Context

    loc = Location(single_tenant_url(swift_server, "images", "small-img"))
    image = locpick.models.Image(id="img-7", size=len(SMALL), locations=(loc,))
    ctx = Context(Config(history_file=""))
    swift = SwiftTransport(ctx)
    try:
        for _ in range(3):
            stream = swift.open(loc, image, offset=len(SMALL) - 10)
            buf = bytearray(64)
            assert stream.readinto(memoryview(buf)) == 10
            stream.close()
        assert list(swift.auth_count.values()) == [1]  # cached, not fetched per request
        # the token goes stale (revoked, or Swift restarted): one 401, one re-auth, success
        key = next(iter(swift._tokens))
        swift._tokens[key] = type(swift._tokens[key])(
            token="AUTH_tkbogus0123456789", storage_url=swift._tokens[key].storage_url, ttl=600
        )
        stream = swift.open(loc, image, offset=0)
        got = bytearray(len(SMALL) + 1)
        n = 0
        while (k := stream.readinto(memoryview(got)[n:])) > 0:
            n += k
        stream.close()
        assert bytes(got[:n]) == SMALL
        assert list(swift.auth_count.values()) == [2]
    finally:
        swift.close()
        ctx.close()


def test_segmented_resume_from_swift_across_segments(
    tmp_path: Path, swift_server: SwiftHandle, swift_large: PutResult
) -> None:
    cut = MiB + 123_457  # inside segment 2; the resume then crosses into segments 3 and 4
    swift_url = single_tenant_url(swift_server, "images", "large-img")
    with Origin(LARGE) as origin:
        origin.faults.cut_at_offset = cut
        origin.faults.ignore_range = True  # it cannot resume: Swift takes over from the cut
        origin_url = origin.url
        meta = write_record(
            tmp_path / "img.json", image_record("img-8", LARGE, [swift_url, origin.url])
        )
        cfg = _config(tmp_path, '[policy]\nprefer_schemes = ["http"]\n')
        dest = tmp_path / "out.raw"
        r = run_cli(
            "download",
            "img-8",
            str(dest),
            "--verbose",
            "--metadata",
            str(meta),
            "--json",
            "--config",
            str(cfg),
        )
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == LARGE
    doc = json.loads(r.stdout)
    attempts = doc["attempts"]
    shares = {s["url"]: s["bytes"] for s in doc["sources"]}
    (swift_shown,) = [u for u in shares if u.startswith("swift+http://***@")]
    # the origin (no Range) kept what it sent before the cut; the rest came from Swift with
    # Range requests crossing segments 2 to 4, none of it fetched twice
    assert shares.get(origin_url, 0) <= cut
    assert shares[swift_shown] >= len(LARGE) - cut
    assert sum(shares.values()) == len(LARGE)
    assert any(a["url"] == swift_shown and a["outcome"] == "ok" for a in attempts)
    assert doc["verified"] == "sha512"
    _no_secret(r.stdout, r.stderr, _history_text(tmp_path))


def test_segmented_verify_hashes_bytes_not_etag(
    tmp_path: Path, swift_server: SwiftHandle, swift_large: PutResult
) -> None:
    url = single_tenant_url(swift_server, "images", "large-img")
    record: dict[str, Any] = image_record("img-9", LARGE, [url], algo="sha256")
    meta = write_record(tmp_path / "img.json", record)
    r = run_cli(
        "verify", "img-9", "--metadata", str(meta), "--json", "--config", str(_config(tmp_path))
    )
    assert r.returncode == 0, r.stdout + r.stderr
    loc = json.loads(r.stdout)["locations"][0]
    assert loc["status"] == "ok" and "sha256 matches" in loc["detail"]
    record["os_hash_value"] = "0" * 64  # a wrong record: the bytes, not the ETag, decide
    meta.write_text(json.dumps(record))
    bad = run_cli(
        "verify", "img-9", "--metadata", str(meta), "--json", "--config", str(_config(tmp_path))
    )
    assert bad.returncode == 3
    assert json.loads(bad.stdout)["locations"][0]["status"] == "mismatch"


def test_swift_beats_slow_http_in_rank(
    tmp_path: Path, swift_server: SwiftHandle, swift_small: PutResult
) -> None:
    swift_url = single_tenant_url(swift_server, "images", "small-img")
    with Origin(SMALL) as origin:
        origin.faults.first_byte_delay = 0.6
        meta = write_record(
            tmp_path / "img.json", image_record("img-10", SMALL, [origin.url, swift_url])
        )
        r = run_cli(
            "rank", "img-10", "--metadata", str(meta), "--json", "--config", str(_config(tmp_path))
        )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["url"].startswith("swift+http://***@") and rows[0]["usable"]
    assert rows[0]["score"] < rows[1]["score"]
    _no_secret(r.stdout, r.stderr)


def test_config_swift_refs_parse_and_hide_key(tmp_path: Path) -> None:
    cfg = locpick.load_config(
        _config(
            tmp_path, '[swift.refs.a]\nauth_url = "http://k/v3"\nuser = "p:u"\nkey = "s3cr3tkey"\n'
        )
    )
    assert cfg.swift == SwiftConfig(
        refs=(SwiftRefConfig(name="a", auth_url="http://k/v3", user="p:u", key="s3cr3tkey"),)
    )
    assert "s3cr3tkey" not in repr(cfg)
    with pytest.raises(locpick.errors.ConfigError, match=r"swift\.refs\.b"):
        locpick.load_config(_config(tmp_path, '[swift.refs.b]\nauth_url = "x"\n'))


@pytest.mark.parametrize(
    ("url", "form", "auth_or_object"),
    [
        ("swift://a%3Au:k3y!@keystone:5000/v3/c/o", "single", "https://keystone:5000/v3"),
        ("swift+http://a%3Au:k%40y@h/auth/v1.0/c/o", "single", "http://h/auth/v1.0"),
        ("swift+https://h:8080/v1/AUTH_p/c/o", "multi", "https://h:8080/v1/AUTH_p/c/o"),
        ("swift+config://ref1/c/o", "config", None),
    ],
)
def test_parse_forms(url: str, form: str, auth_or_object: str | None) -> None:
    from locpick.transports.swift.urls import parse_swift_location

    target = parse_swift_location(Location(url))
    assert (target.form, target.container, target.obj) == (form, "c", "o")
    assert auth_or_object in (target.auth_url, target.object_url)
    if form == "single":
        assert target.user == "a:u"
        assert target.key is not None and target.key not in repr(target)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("swift+http://h/onlyone", "needs a host, a container and an object"),
        ("swift+http://nocolon@h/auth/v1.0/c/o", "ACCOUNT%3AUSER:KEY"),
        ("swift+config://ref/extra/c/o", "swift+config://REF/CONTAINER/OBJECT"),
    ],
)
def test_malformed_is_unusable_with_reason(url: str, reason: str) -> None:
    from locpick.transports.base import Context

    image = locpick.models.Image(id="x", size=1, locations=(Location(url),))
    got = SwiftTransport(Context(Config())).check(Location(url), image)
    assert got is not None and reason in got
