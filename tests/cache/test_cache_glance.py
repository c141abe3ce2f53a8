"""The cache as a location, against a real Glance 33 + Keystone and real `locpick serve`s."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import glance_harness as gh
import pytest
from fixtures_cache import ServeProcess
from fixtures_glance import DEMO, GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401
from helpers import run_cli

from locpick._demo.origin import Origin
from locpick.cache.store import NodeCache
from locpick.redact import redact_url

pytestmark = pytest.mark.glance

SIZE = 400_000


class Node:
    """One node: a topology, a cache dir served by its own `locpick serve`, a config file."""

    def __init__(self, w: GlanceWorld, base: Path, name: str, *, extra: str = "") -> None:
        self.w = w
        self.name = name
        self.cache_dir = base / name / "cache"
        self.cache_dir.mkdir(parents=True)
        self.serve = ServeProcess(self.cache_dir)
        self.config = base / name / "config.toml"
        self.config.write_text(
            f'[topology]\nregion = "R"\nzone = "z-{name}"\nrack = "rack-{name}"\n'
            f'host = "{name}"\n'
            f'[cache]\ndir = "{self.cache_dir}"\npublic_url = "{self.serve.url}"\n{extra}'
            "[policy]\nforbid_glance_file = true\n"
            # one host: tooz's file backend is the per-image lock that lets a node remove its
            # own location (issue 24); without one, removals are `cache reap`'s
            f'[fleet]\ncoordination = "file://{base / "coord"}"\n'
        )
        self.cache = NodeCache(self.cache_dir)

    def url(self, image_id: str) -> str:
        return self.serve.image_url(image_id)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        auth = [] if env else ["--glance-url", self.w.endpoint, "--token", self.w.admin_token]
        r = run_cli(*args, "--config", str(self.config), *auth, env=env)
        return r.returncode, r.stdout, r.stderr


@pytest.fixture
def nodes(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    a = Node(glance_world, tmp_path, "node-a")
    b = Node(glance_world, tmp_path, "node-b")
    yield a, b
    a.serve.stop()
    b.serve.stop()


@pytest.fixture
def image(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[str, bytes, Origin]]:
    """A fresh image: fs1 (not usable here) and an http origin of its own, stoppable."""
    with fresh_image(glance_world, tmp_path, "locpick-cache-test", SIZE) as made:
        yield made


def _locations(w: GlanceWorld, image_id: str) -> list[str]:
    """The image's location URLs in Glance's order, duplicates kept."""
    rec = gh.get_image(w.endpoint, image_id, token=w.admin_token)
    return [loc["url"] for loc in rec["locations"]]


def _metadata(w: GlanceWorld, image_id: str, url: str) -> dict[str, str]:
    """The metadata of the one location ``url`` of the image (fails if it is not exactly one)."""
    rec = gh.get_image(w.endpoint, image_id, token=w.admin_token)
    (meta,) = [loc["metadata"] for loc in rec["locations"] if loc["url"] == url]
    return dict(meta)


def test_a_registers_b_downloads_from_a_a_evicts(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """A caches + registers (topology in Glance); origin dies; B gets A's copy; A evicts."""
    w = glance_world
    a, b = nodes
    image_id, data, origin = image
    code, out, err = a.cli("download", image_id, str(tmp_path / "a.img"), "--register", "--json")
    assert code == 0, err
    assert json.loads(out)["source_url"] == origin.url
    meta = _metadata(w, image_id, a.url(image_id))
    assert meta["locpick_cache"] == "true"
    assert (meta["host"], meta["rack"], meta["zone"], meta["region"]) == (
        "node-a",
        "rack-node-a",
        "z-node-a",
        "R",
    )
    assert a.cache.entry(image_id) is not None
    assert a.cache.entry(image_id).registered_url == a.url(image_id)  # type: ignore[union-attr]

    origin.stop()
    code, out, err = b.cli("download", image_id, str(tmp_path / "b.img"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source_url"] == redact_url(a.url(image_id)) and doc["method"] == "download"
    assert (tmp_path / "b.img").read_bytes() == data

    code, out, err = a.cli("cache", "evict", image_id)
    assert code == 0, err
    assert a.url(image_id) not in _locations(w, image_id)
    assert a.cache.entry(image_id) is None


def test_cache_hit_registers_once_and_uses_no_network(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """A second download on A is a cache hit: nothing fetched, one location, not two."""
    a, _ = nodes
    image_id, _data, origin = image
    assert a.cli("download", image_id, str(tmp_path / "1"), "--register")[0] == 0
    origin.reset_counters()
    code, out, err = a.cli("download", image_id, str(tmp_path / "2"), "--register", "--json")
    assert code == 0, err
    assert json.loads(out)["method"] == "cache"
    assert origin.bytes_sent == 0
    assert "not registered" not in err  # no second attempt (Glance 33 refuses a duplicate)
    urls = [u for u in _locations(glance_world, image_id) if u == a.url(image_id)]
    assert urls == [a.url(image_id)]


def test_verify_flags_corrupted_replica_and_prune_keeps_the_good_copy(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """Bytes changed on A's disk: verify says mismatch (exit 3); prune removes A, keeps origin."""
    w = glance_world
    a, b = nodes
    image_id, _data, origin = image
    assert a.cli("download", image_id, str(tmp_path / "a.img"), "--register")[0] == 0
    with open(a.cache_dir / "images" / image_id, "r+b") as fh:
        fh.seek(SIZE // 2)
        byte = fh.read(1)
        fh.seek(SIZE // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))

    code, out, err = b.cli("verify", image_id, "--json")
    assert code == 3, err
    status = {row["url"]: row["status"] for row in json.loads(out)["locations"]}
    assert status[redact_url(a.url(image_id))] == "mismatch"
    assert status[origin.url] == "ok"

    code, out, err = b.cli("verify", image_id, "--prune", "--json")
    assert code == 3
    prune = json.loads(out)["prune"]
    shown = redact_url(a.url(image_id))
    assert prune["dry_run"] and prune["remove"] == [shown] and prune["removed"] == []
    assert a.url(image_id) in _locations(w, image_id)

    code, out, err = b.cli("verify", image_id, "--prune", "--yes", "--json")
    assert json.loads(out)["prune"]["removed"] == [shown]
    left = _locations(w, image_id)
    assert a.url(image_id) not in left and origin.url in left


@contextlib.contextmanager
def _restore_delay(origin: Origin) -> Iterator[None]:
    try:
        yield
    finally:
        origin.faults.first_byte_delay = 0.0


def test_location_serving_other_bytes_is_rejected_and_demoted(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """Anyone may add a location; one that serves other bytes, even the closest, is rejected,
    and demoted: the next ranking reads the failure from history and opens its circuit."""
    w = glance_world
    _, b = nodes
    image_id, data, origin = image
    # The honest origin answers slowly here, so the liar (same host as B, fast) ranks first on
    # latency as well as topology: the download must try it, reject it, and fall back.
    origin.faults.first_byte_delay = 0.4
    with Origin(os.urandom(SIZE)) as liar, _restore_delay(origin):
        gh.add_http_location(
            w.endpoint,
            image_id,
            liar.url,
            {"host": "node-b", "locpick_cache": "true"},
            token=w.admin_token,
        )
        code, out, err = b.cli("download", image_id, str(tmp_path / "b.img"), "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["source_url"] == origin.url
        tried = {att["url"]: att for att in doc["attempts"]}
        assert tried[liar.url]["outcome"] == "failed"
        assert "mismatch" in tried[liar.url]["error"]
        assert (tmp_path / "b.img").read_bytes() == data
        code, out, err = b.cli("rank", image_id, "--json")
        assert code == 0, err
        ranked = json.loads(out)
        rows = {row["url"]: row for row in ranked}
        assert "demoted" in rows[liar.url]["reasons"]["history"]
        assert "circuit open" in " ".join(rows[liar.url]["reasons"]["notes"])
        code, out, err = b.cli("verify", image_id, "--prune", "--yes", "--json")
        assert code == 3
        assert json.loads(out)["prune"]["removed"] == [liar.url]
        assert liar.url not in _locations(w, image_id)


def test_policy_refusal_keeps_a_plain_cache(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """A member may not change admin's image: a clear warning naming the settings, still cached."""
    w = glance_world
    a, _ = nodes
    image_id, _data, _origin = image
    env = w.keystone_env(DEMO)
    code, _out, err = a.cli("download", image_id, str(tmp_path / "a.img"), "--register", env=env)
    assert code == 0, err
    assert "HTTP 403" in err and "show_multiple_locations" in err and "policy" in err
    assert "keeping a plain cache" in err
    assert a.cache.entry(image_id) is not None
    assert a.url(image_id) not in _locations(w, image_id)


def test_reconcile_fixes_drift_both_ways_and_lru_unregisters(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """Registered-not-cached is removed, cached-not-registered added; LRU eviction unregisters."""
    w = glance_world
    a, _ = nodes
    image_id, _data, _origin = image
    assert a.cli("download", image_id, str(tmp_path / "1"), "--register")[0] == 0
    a.cache.evict(image_id)  # behind locpick's back: Glance still lists it
    assert a.url(image_id) in _locations(w, image_id)
    code, out, err = a.cli("cache", "reconcile")
    assert code == 0, err
    assert f"unregistered {image_id}" in out
    assert a.url(image_id) not in _locations(w, image_id)

    assert a.cli("download", image_id, str(tmp_path / "2"))[0] == 0  # cached, not registered
    cfg = a.config.read_text().replace(
        "[cache]\n", "[cache]\nregister = true\nmax_bytes = 500000\n"
    )
    a.config.write_text(cfg)
    code, out, err = a.cli("cache", "reconcile")
    assert code == 0, err
    assert f"registered {image_id}" in out
    assert a.url(image_id) in _locations(w, image_id)
    code, out, _ = a.cli("cache", "reconcile")
    assert out.strip() == "cache and Glance agree"

    # A second image pushes the first out (max_bytes 500000 holds one): its location goes too.
    other = tmp_path / "other.raw"
    other.write_bytes(os.urandom(SIZE))
    with Origin(other.read_bytes()) as o2:
        second = gh.seed_image(
            w.endpoint,
            other,
            token=w.admin_token,
            name="locpick-cache-2",
            visibility="public",
            copy_to_stores=(),
            http_locations=[o2.url],
        )
        code, out, err = a.cli("download", second, str(tmp_path / "3"), "--json")
        assert code == 0, err
    assert a.cache.entry(image_id) is None and a.cache.entry(second) is not None
    assert a.url(image_id) not in _locations(w, image_id)
    assert a.url(second) in _locations(w, second)
    assert not (a.cache_dir / "images" / image_id).exists()  # its bytes left A's disk


def test_public_url_glance_cannot_reach_keeps_a_plain_cache(
    glance_world: GlanceWorld,
    nodes: tuple[Node, Node],
    image: tuple[str, bytes, Origin],
    tmp_path: Path,
) -> None:
    """Glance refuses a location it cannot reach: one clear line, exit 0, still cached."""
    w = glance_world
    a, _ = nodes
    image_id, _data, _origin = image
    dead = f"http://127.0.0.1:{gh.find_free_port()}"
    a.config.write_text(a.config.read_text().replace(a.serve.url, dead))
    code, _out, err = a.cli("download", image_id, str(tmp_path / "a.img"), "--register")
    assert code == 0, err
    assert "keeping a plain cache" in err and "public_url" in err
    assert a.cache.entry(image_id) is not None
    assert not [u for u in _locations(w, image_id) if u.startswith(dead)]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_private_image_only_through_its_capability_url(
    glance_world: GlanceWorld, nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    """A private image cached and registered by A: the id alone gets nothing from A; B, reading
    the location from Glance, downloads it from A; wrong and rotated tokens are refused."""
    w = glance_world
    a, b = nodes
    data = os.urandom(SIZE)
    src = tmp_path / "private.raw"
    src.write_bytes(data)
    with Origin(data) as origin:
        image_id = gh.seed_image(
            w.endpoint,
            src,
            token=w.admin_token,
            name="locpick-private",
            visibility="private",
            copy_to_stores=(),
            http_locations=[(origin.url, {"zone": "z-origin"})],
        )
        code, _out, err = a.cli("download", image_id, str(tmp_path / "a.img"), "--register")
        assert code == 0, err
    # The origin is gone: A's cache is the only http copy B can use.
    mine = [u for u in _locations(w, image_id) if u.startswith(a.serve.url)]
    assert mine == [a.url(image_id)] and "/lpc1_" in mine[0]
    base = f"{a.serve.url}/images/{image_id}"
    assert _status(base) == 403  # anonymous, id known
    assert _status(f"{base}/lpc1_{'A' * 43}") == 403  # guessed
    assert _status(f"{base}/{b.cache.token(image_id)}") == 403  # another node's token
    assert _status(mine[0]) == 200

    code, out, err = b.cli("download", image_id, str(tmp_path / "b.img"), "--json")
    assert code == 0, err
    assert json.loads(out)["source_url"] == redact_url(mine[0])
    assert (tmp_path / "b.img").read_bytes() == data
    token = mine[0].rsplit("/", 1)[1]
    assert token not in out + err  # the capability is masked in everything printed

    code, out, err = a.cli("cache", "rotate-secret")
    assert code == 0, err
    assert "rotated" in out and token not in out + err
    now = [u for u in _locations(w, image_id) if u.startswith(a.serve.url)]
    assert now == [a.url(image_id)] and now != mine
    assert _status(mine[0]) == 403  # the old URL stopped working at once
    b.cache.evict(image_id)  # B kept a copy of its own: make it fetch from A again
    code, out, err = b.cli("download", image_id, str(tmp_path / "b2.img"), "--json")
    assert code == 0, err
    assert json.loads(out)["source_url"] == redact_url(now[0])
    assert (tmp_path / "b2.img").read_bytes() == data
