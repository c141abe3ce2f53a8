"""Keystone mode (auth.py) against a real Keystone 30 in front of a real Glance 33: OS_AUTH_URL/
OS_USERNAME/... and OS_CLOUD + clouds.yaml, catalog endpoints, clear auth errors, no secret shown
(tests/fixtures_glance.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_glance import ADMIN, DEMO, GlanceWorld
from helpers import ROOT, run_cli

import locpick
from locpick._demo.blackhole import ClosedPort
from locpick.glance.auth import auth_from_environment, unversioned_endpoint
from locpick.redact import SCRUB

pytestmark = pytest.mark.glance

World = GlanceWorld


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
