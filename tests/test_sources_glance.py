"""locpick against a real Glance 33 behind a real Keystone 30 (tests/fixtures_glance.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_glance import ADMIN, DEMO, GlanceWorld, glance_world_fixture  # noqa: F401
from helpers import ROOT, run_cli, temp_leftovers

import locpick
from locpick._demo.origin import ClosedPort
from locpick.auth import auth_from_environment, unversioned_endpoint
from locpick.redact import SCRUB

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


# -- Keystone mode: OS_AUTH_URL/OS_USERNAME/... and OS_CLOUD + clouds.yaml ---------------------


def test_os_env_flow_finds_the_image_endpoint_in_the_catalog(
    glance_world: World, tmp_path: Path
) -> None:
    """An openrc environment (demo, member) and no image URL: token and endpoint from Keystone."""
    w = glance_world
    dest = tmp_path / "img"
    r = run_cli("download", w.image_id, str(dest), "--json", "--verbose", env=w.keystone_env())
    assert r.returncode == 0, r.stderr
    assert f"image endpoint from the service catalog of {w.auth_url}: {w.endpoint}" in r.stderr
    assert json.loads(r.stdout)["verified"] == "sha512"
    assert dest.read_bytes() == w.data
    assert DEMO[1] not in r.stdout + r.stderr


def test_clouds_yaml_flow_finds_the_image_endpoint_in_the_catalog(
    glance_world: World, tmp_path: Path
) -> None:
    """OS_CLOUD + clouds.yaml (OS_CLIENT_CONFIG_FILE), read by openstacksdk's config loader."""
    w = glance_world
    clouds = w.clouds_yaml(tmp_path / "clouds.yaml")
    env = {"OS_CLOUD": "locpick-demo", "OS_CLIENT_CONFIG_FILE": str(clouds)}
    r = run_cli("rank", w.image_id, "--json", env=env)
    assert r.returncode == 0, r.stderr
    urls = [row["url"] for row in json.loads(r.stdout)]
    assert f"{w.endpoint}/v2/images/{w.image_id}/file" in urls
    assert w.origin.url in urls
    dest = tmp_path / "img"
    r = run_cli("download", w.image_id, str(dest), env=env)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == w.data


def test_wrong_password_is_a_clear_auth_error(glance_world: World, tmp_path: Path) -> None:
    """Keystone refuses the password: exit 2, one line naming Keystone and the user, no secret."""
    w = glance_world
    wrong = "definitely-wrong-pw"
    env = w.keystone_env(("demo", wrong, "demo"))
    r = run_cli("download", w.image_id, str(tmp_path / "img"), env=env)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"keystone {w.auth_url}: authentication refused for user 'demo'" in line
    assert wrong not in r.stderr
    # the same through clouds.yaml
    clouds = w.clouds_yaml(tmp_path / "clouds.yaml", demo_password=wrong)
    env = {"OS_CLOUD": "locpick-demo", "OS_CLIENT_CONFIG_FILE": str(clouds)}
    r = run_cli("rank", w.image_id, env=env)
    assert r.returncode == 2
    assert "authentication refused for user 'demo'" in r.stderr
    assert "cloud 'locpick-demo'" in r.stderr
    assert wrong not in r.stderr


def test_member_cannot_see_private_admin_image(glance_world: World, tmp_path: Path) -> None:
    """demo (member) asks for admin's private image: Glance says 404, locpick says who asked."""
    w = glance_world
    r = run_cli("rank", w.private_image_id, env=w.keystone_env())
    assert r.returncode == 2
    assert f"image {w.private_image_id} not found (or not visible" in r.stderr
    assert "as user 'demo' in project 'demo'" in r.stderr
    ok = run_cli("rank", w.private_image_id, "--json", env=w.keystone_env(ADMIN))
    assert ok.returncode == 0, ok.stderr


def test_unknown_cloud_is_a_config_error(glance_world: World, tmp_path: Path) -> None:
    """OS_CLOUD naming a cloud the clouds.yaml lacks: exit 2, names the cloud."""
    w = glance_world
    clouds = w.clouds_yaml(tmp_path / "clouds.yaml")
    env = {"OS_CLOUD": "nope", "OS_CLIENT_CONFIG_FILE": str(clouds)}
    r = run_cli("rank", w.image_id, env=env)
    assert r.returncode == 2
    assert "OS_CLOUD 'nope'" in r.stderr


def test_keystone_token_is_registered_for_redaction(
    glance_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Keystone token a Client obtains is scrubbed from any text locpick emits."""
    w = glance_world
    for k, v in w.keystone_env().items():
        monkeypatch.setenv(k, v)
    with locpick.Client() as client:
        ranking = client.rank(w.image_id)
        token = client._ctx.token
    assert token and SCRUB(f"x {token} y") == "x *** y"
    assert ranking.usable


def test_catalog_urls_lose_their_version_suffix() -> None:
    """Catalog entries with /v2 or /v2.1 map onto the Glance root locpick appends to."""
    assert unversioned_endpoint("http://h:9292/v2/") == "http://h:9292"
    assert unversioned_endpoint("http://h:9292/v2.1") == "http://h:9292"
    assert unversioned_endpoint("https://h/image") == "https://h/image"
    assert auth_from_environment({}) is None


def test_compute_agent_example_caches_the_image(glance_world: World, tmp_path: Path) -> None:
    """examples/compute_agent.py with an openrc environment: downloads once, then reuses."""
    w = glance_world
    env = {**os.environ, **w.keystone_env(), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "examples" / "compute_agent.py"), w.image_id]
    cmd += ["--cache-dir", str(tmp_path / "_base")]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "verified: sha512" in first.stdout
    cached = tmp_path / "_base" / hashlib.sha1(w.image_id.encode()).hexdigest()
    assert cached.read_bytes() == w.data
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0 and "already cached" in again.stdout


def test_bare_token_with_auth_url_still_finds_the_catalog(
    glance_world: World, tmp_path: Path
) -> None:
    """OS_AUTH_TOKEN + OS_AUTH_URL and no image URL: keystoneauth1's token plugin scopes it and
    the image endpoint comes from the catalog."""
    w = glance_world
    env = {
        "OS_AUTH_URL": w.auth_url,
        "OS_AUTH_TOKEN": w.admin_token,
        "OS_PROJECT_NAME": "admin",
        "OS_PROJECT_DOMAIN_NAME": "Default",
    }
    r = run_cli("rank", w.image_id, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert w.origin.url in {row["url"] for row in json.loads(r.stdout)}


def test_unreachable_keystone_is_a_clear_auth_error(tmp_path: Path) -> None:
    """OS_AUTH_URL where nothing listens: exit 2, names Keystone, no traceback."""
    with ClosedPort("/v3") as cp:
        env = {
            "OS_AUTH_URL": cp.url,
            "OS_USERNAME": "u",
            "OS_PASSWORD": "pw-never-shown",
            "OS_PROJECT_NAME": "p",
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
        }
        r = run_cli("rank", "some-image", env=env)
    assert r.returncode == 2, r.stderr
    assert f"keystone {cp.url}: cannot reach Keystone" in r.stderr
    assert "Traceback" not in r.stderr and "pw-never-shown" not in r.stderr
