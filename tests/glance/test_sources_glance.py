"""locpick against a real Glance 33 behind a real Keystone 30 (tests/fixtures_glance.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fixtures_glance import GlanceWorld
from helpers import run_cli, temp_leftovers

import locpick

pytestmark = pytest.mark.glance

World = GlanceWorld


def _config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def _fs_config(w: World, tmp_path: Path, *ids: str) -> Path:
    """[[filesystems]] naming Glance's file stores, mounted (tmpfs) right where Glance put them."""
    body = "".join(
        f'[[filesystems]]\nid = "locpick-{s}"\nmountpoint = "{w.glance.stores[s]}"\n' for s in ids
    )
    return _config(tmp_path / "config.toml", body)


def _token_args(w: World) -> list[str]:
    return ["--glance-url", w.endpoint, "--token", w.admin_token]


# -- plain token mode: --glance-url + --token -------------------------------------------------


def test_rank_by_image_id_lists_every_glance_location(glance_world: World, tmp_path: Path) -> None:
    """rank fetches the record from Glance: fs1, fs2, the http copy and /file, each explained."""
    w = glance_world
    r = run_cli("rank", w.image_id, *_token_args(w), "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["url"]: row for row in json.loads(r.stdout)}
    fs1 = f"file://{w.glance.stores['fs1']}/{w.image_id}"
    file_url = f"{w.endpoint}/v2/images/{w.image_id}/file"
    assert set(rows) == {fs1, fs1.replace("/fs1/", "/fs2/"), w.origin.url, file_url}
    assert rows[w.origin.url]["usable"] and rows[file_url]["usable"]
    assert not rows[fs1]["usable"]
    assert "not-on-configured-filesystem" in (rows[fs1]["reasons"]["error"] or "")
    assert w.admin_token not in r.stdout + r.stderr


def test_download_by_image_id_verified(glance_world: World, tmp_path: Path) -> None:
    """download through Glance's record: verified sha512, bytes equal to the upload."""
    w = glance_world
    dest = tmp_path / "img"
    r = run_cli("download", w.image_id, str(dest), *_token_args(w), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verified"] == "sha512" and doc["method"] == "download"
    assert doc["bytes"] == len(w.data)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(w.data).digest()
    assert temp_leftovers(tmp_path) == []


def test_file_location_mapped_through_filesystems_is_a_system_copy(
    glance_world: World, tmp_path: Path
) -> None:
    """Glance's fs1 store is a real (tmpfs) mount named in [[filesystems]]: method 'copy'."""
    w = glance_world
    cfg = _fs_config(w, tmp_path, "fs1")
    rank = run_cli("rank", w.image_id, *_token_args(w), "--config", str(cfg), "--json")
    assert rank.returncode == 0, rank.stderr
    best = json.loads(rank.stdout)[0]
    assert best["url"] == f"file://{w.glance.stores['fs1']}/{w.image_id}"
    assert "locpick-fs1" in (best["reasons"]["shared_fs"] or "")
    dest = tmp_path / "img"
    r = run_cli("download", w.image_id, str(dest), *_token_args(w), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["method"] == "copy"
    assert doc["source_url"].startswith(f"file://{w.glance.stores['fs1']}/")
    assert dest.read_bytes() == w.data


def test_glance_file_is_the_fallback_when_every_direct_location_is_dead(
    glance_world: World, tmp_path: Path
) -> None:
    """http origin gone, file:// not mounted here: Glance's /file (with the token) delivers."""
    w = glance_world
    cfg = _config(tmp_path / "c.toml", '[glance]\nprefer_stores = ["fs1"]\n')
    dest = tmp_path / "img"
    r = run_cli(
        "download", w.dead_image_id, str(dest), *_token_args(w), "--config", str(cfg), "--json"
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source_url"] == f"{w.endpoint}/v2/images/{w.dead_image_id}/file?prefer=fs1"
    assert doc["verified"] == "sha512"
    outcomes = {a["url"]: a["outcome"] for a in doc["attempts"]}
    assert outcomes[doc["source_url"]] == "ok"
    assert sum(1 for o in outcomes.values() if o != "ok") == 2  # dead http + unmapped fs1
    assert dest.read_bytes() == w.data


def test_unknown_image_is_a_clear_404(glance_world: World, tmp_path: Path) -> None:
    """An id Glance does not know: exit 2, one line naming the image, dest untouched."""
    w = glance_world
    dest = tmp_path / "img"
    dest.write_bytes(b"old")
    missing = "00000000-0000-4000-8000-000000000000"
    r = run_cli("download", missing, str(dest), *_token_args(w))
    assert r.returncode == 2
    assert f"image {missing} not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert dest.read_bytes() == b"old" and temp_leftovers(tmp_path) == []


def test_deactivated_image_is_refused(glance_world: World, tmp_path: Path) -> None:
    """A deactivated image: exit 2 saying its status, nothing fetched."""
    w = glance_world
    dest = tmp_path / "img"
    r = run_cli("download", w.inactive_image_id, str(dest), *_token_args(w))
    assert r.returncode == 2
    assert "'deactivated', not 'active'" in r.stderr
    assert not dest.exists()


def test_bad_token_is_a_clear_401(glance_world: World) -> None:
    """A token Glance's authtoken rejects: exit 2, says 401, the token itself is not echoed."""
    w = glance_world
    bogus = "gAAAAA-not-a-real-token-123456"
    r = run_cli("rank", w.image_id, "--glance-url", w.endpoint, "--token", bogus)
    assert r.returncode == 2
    assert "401 Unauthorized" in r.stderr
    assert bogus not in r.stderr


def test_image_without_any_hash_needs_allow_unverified(glance_world: World, tmp_path: Path) -> None:
    """A location-only image (no checksum, no os_hash): refused naming the flag; with it, a
    size-checked download and a loud warning."""
    w = glance_world
    dest = tmp_path / "img"
    r = run_cli("download", w.nohash_image_id, str(dest), *_token_args(w))
    assert r.returncode == 2
    assert "--allow-unverified" in r.stderr
    assert not dest.exists()
    r = run_cli(
        "download", w.nohash_image_id, str(dest), *_token_args(w), "--allow-unverified", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verified"] is None
    assert "UNVERIFIED" in r.stderr
    assert dest.read_bytes() == w.data


def test_token_goes_to_glance_only_never_to_location_hosts(
    glance_world: World, tmp_path: Path
) -> None:
    """rank probes every location: the http origin never sees X-Auth-Token, Glance's /file
    (which answers 401 without it) is probed fine, and no output carries the token."""
    w = glance_world
    w.origin.reset_counters()
    r = run_cli("rank", w.image_id, *_token_args(w), "--json", "--verbose")
    assert r.returncode == 0, r.stderr
    rows = {row["url"]: row for row in json.loads(r.stdout)}
    assert rows[f"{w.endpoint}/v2/images/{w.image_id}/file"]["usable"]
    seen = w.origin.requests
    assert seen, "the http location was never probed"
    for req in seen:
        assert "x-auth-token" not in {k.lower() for k in req.headers}
        assert w.admin_token not in json.dumps(req.headers)
    assert w.admin_token not in r.stdout + r.stderr


def test_python_api_with_glance_url(glance_world: World, tmp_path: Path) -> None:
    """locpick.Client(glance_url=, token=) downloads the same verified bytes."""
    w = glance_world
    dest = tmp_path / "img"
    with locpick.Client(glance_url=w.endpoint, token=w.admin_token) as client:
        result = client.download(w.image_id, dest)
    assert result.verified == "sha512"
    assert dest.read_bytes() == w.data
