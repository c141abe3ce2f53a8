"""Leases and reaping against a real Glance 33 + Keystone and real `locpick serve` nodes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import glance_harness as gh
import httpx
import pytest
from fixtures_cache import ServeProcess, serve_on_its_port
from fixtures_glance import GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401
from helpers import run_cli
from prometheus_client.parser import text_string_to_metric_families

from locpick._demo.origin import Origin
from locpick.cache.store import NodeCache
from locpick.glance.locations import GlanceLocations, cache_location_url
from locpick.redact import redact_url

pytestmark = pytest.mark.glance

SIZE = 300_000


class LeasedNode:
    """A node whose `locpick serve` knows Glance (so it renews), with a lease of its own."""

    def __init__(
        self,
        w: GlanceWorld,
        base: Path,
        name: str,
        *,
        lease: float,
        renew: bool = True,
        extra: str = "",
    ) -> None:
        self.w = w
        self.cache_dir = base / name / "cache"
        self.cache_dir.mkdir(parents=True)
        self.config = base / name / "config.toml"
        self._settings = (
            f'[topology]\nregion = "R"\nzone = "z-{name}"\nhost = "{name}"\n'
            f'[cache]\ndir = "{self.cache_dir}"\npublic_url = "{{public_url}}"\n'
            f"lease = {lease}\n[policy]\nforbid_glance_file = true\n{extra}"
        )
        self.move()
        self.cache = NodeCache(self.cache_dir)
        self.renew = renew
        self.serve: ServeProcess | None = None

    def move(self) -> None:
        """A free port for this node's serve, and its config to match."""
        self.public_url = f"http://127.0.0.1:{gh.find_free_port()}"
        self.config.write_text(self._settings.replace("{public_url}", self.public_url))

    def start(self) -> None:
        env = {"LOCPICK_CONFIG": str(self.config), **self.w.token_env()}

        def start() -> ServeProcess:
            return ServeProcess(
                self.cache_dir,
                bind=self.public_url.removeprefix("http://"),
                env=env,
                args=() if self.renew else ("--no-renew",),
            )

        self.serve = serve_on_its_port(start, self.move)

    def url(self, image_id: str) -> str:
        """The capability URL this node registers for ``image_id``."""
        return cache_location_url(self.public_url, image_id, self.cache.token(image_id))

    def shown(self, image_id: str) -> str:
        """The same URL as the CLI prints it (the capability token masked)."""
        return redact_url(self.url(image_id))

    def cli(self, *args: str) -> tuple[int, str, str]:
        auth = ["--glance-url", self.w.endpoint, "--token", self.w.admin_token]
        r = run_cli(*args, "--config", str(self.config), *auth)
        return r.returncode, r.stdout, r.stderr

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.stop()


@pytest.fixture
def image(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[str, bytes, Origin]]:
    """A fresh image: fs1 (not usable by the nodes) and an http origin of its own."""
    with fresh_image(glance_world, tmp_path, "locpick-lease-test", SIZE) as made:
        yield made


def _locations(w: GlanceWorld, image_id: str) -> dict[str, dict[str, Any]]:
    rec = gh.get_image(w.endpoint, image_id, token=w.admin_token)
    return {loc["url"]: loc["metadata"] for loc in rec["locations"]}


def _wait_for(what: str, ok: Any, limit: float = 60.0) -> None:
    """Poll ``ok()`` (bounded: a test never hangs); fail naming ``what``."""
    end = time.monotonic() + limit
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _rank_rows(node: LeasedNode, image_id: str) -> dict[str, dict[str, Any]]:
    code, out, err = node.cli("rank", image_id, "--json")
    assert code == 0, err
    return {row["url"]: row for row in json.loads(out)}


def test_serve_keeps_its_registration_listed_never_rewrites_it_and_deregisters_on_sigterm(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """A running node's entry is checked every lease / 3 but never rewritten (issue 24); an
    entry removed behind its back is appended again; SIGTERM (with [fleet] coordination)
    takes it out of Glance."""
    w = glance_world
    image_id, _data, _origin = image
    coord = f'[fleet]\ncoordination = "file://{tmp_path / "coord"}"\n'
    a = LeasedNode(w, tmp_path, "node-a", lease=3, extra=coord)
    b = LeasedNode(w, tmp_path, "node-b", lease=3)
    try:
        a.start()  # Glance checks a location's URL when it is added: serve comes first
        code, _out, err = a.cli("download", image_id, str(tmp_path / "a.img"), "--register")
        assert code == 0, err
        meta = _locations(w, image_id)[a.url(image_id)]
        assert meta["locpick_cache"] == "true" and "locpick_lease" not in meta
        time.sleep(6.5)  # two lease lengths: six checks
        assert _locations(w, image_id)[a.url(image_id)] == meta  # never rewritten
        row = _rank_rows(b, image_id)[a.shown(image_id)]
        assert row["usable"], row
        assert a.cache.entry(image_id).registered_url == a.url(image_id)  # type: ignore[union-attr]
        assert a.serve is not None
        # The renewer reports its checks to the node's own /metrics.
        text = httpx.get(a.serve.url + "/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        assert samples[("locpick_cache_lease_renewals_total", (("result", "ok"),))] >= 2
        # removed behind its back (the operator's reaper): appended again, once
        rec = gh.get_image(w.endpoint, image_id, token=w.admin_token)
        index = [loc["url"] for loc in rec["locations"]].index(a.url(image_id))
        gh.patch_locations(
            w.endpoint, image_id, [{"op": "remove", "path": f"/locations/{index}"}],
            token=w.admin_token,
        )  # fmt: skip
        _wait_for("the entry appended again", lambda: a.url(image_id) in _locations(w, image_id))
        a.serve.stop()  # SIGTERM
        assert a.serve.proc.returncode == 0
        assert a.url(image_id) not in _locations(w, image_id)
        assert a.cache.entry(image_id).registered_url is None  # type: ignore[union-attr]
    finally:
        a.stop()


def test_killed_node_expires_is_skipped_and_reaped_others_untouched(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """SIGKILL: the node no longer answers, clients skip its copy, `cache reap` removes it
    (unreachable); the origin, a live node's copy and the operator's own (dead) location stay."""
    w = glance_world
    image_id, data, origin = image
    a = LeasedNode(w, tmp_path, "node-a", lease=2)
    c = LeasedNode(w, tmp_path, "node-c", lease=600)
    b = LeasedNode(w, tmp_path, "node-b", lease=600)
    operator = Origin(data).start()
    try:
        for node in (a, c):
            node.start()
            code, _out, err = node.cli("download", image_id, str(tmp_path / "x"), "--register")
            assert code == 0, err
        gh.add_http_location(
            w.endpoint, image_id, operator.url, {"zone": "z-operator"}, token=w.admin_token
        )
        operator_url = operator.url
        operator.stop()  # the operator's own location is dead too, but it is not ours to reap
        assert a.serve is not None
        a.serve.proc.kill()  # SIGKILL: no deregistration, no more renewals
        a.serve.proc.wait()
        assert a.url(image_id) in _locations(w, image_id)

        rows = _rank_rows(b, image_id)
        assert not rows[a.shown(image_id)]["usable"]
        assert rows[c.shown(image_id)]["usable"]
        code, out, err = b.cli("download", image_id, str(tmp_path / "b.img"), "--json")
        assert code == 0, err
        got = {s["url"]: s["bytes"] for s in json.loads(out)["sources"]}
        assert not got.get(a.shown(image_id)), got

        code, out, err = b.cli("verify", image_id, "--prune", "--json")  # dry run
        prune = json.loads(out)["prune"]
        assert prune["dry_run"] and prune["remove"] == [a.shown(image_id)], err
        assert any(operator_url in n for n in prune["notes"])  # kept: not ours, maybe transient

        code, out, err = b.cli("cache", "reap", image_id, "--dry-run", "--json")
        assert code == 0, err
        (doc,) = json.loads(out)["images"]
        assert doc["remove"] == [a.shown(image_id)] and doc["removed"] == []
        assert a.url(image_id) in _locations(w, image_id)

        code, out, err = b.cli("cache", "reap", image_id, "--json")
        assert code == 0, err
        (doc,) = json.loads(out)["images"]
        assert doc["image_id"] == image_id and doc["removed"] == [a.shown(image_id)]
        left = _locations(w, image_id)
        assert a.url(image_id) not in left
        assert {origin.url, c.url(image_id), operator_url} <= set(left)
        assert any(u.startswith("file://") for u in left)
    finally:
        operator.stop()
        a.stop()
        c.stop()


def test_reap_never_removes_the_last_verified_copy(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    """Origin gone, a node's copy the only one still verifying, registered by an older
    locpick with a lease that ran out: reap keeps it."""
    w = glance_world
    image_id, _data, origin = image
    d = LeasedNode(w, tmp_path, "node-d", lease=1, renew=False)
    b = LeasedNode(w, tmp_path, "node-b", lease=600)
    try:
        d.start()  # serves, but does not check its registration
        code, _out, err = d.cli("download", image_id, str(tmp_path / "d.img"))
        assert code == 0, err
        legacy = {"locpick_cache": "true", "locpick_registered": "1000.0", "locpick_lease": "1"}
        gh.add_http_location(w.endpoint, image_id, d.url(image_id), legacy, token=w.admin_token)
        origin.stop()
        code, out, err = b.cli("cache", "reap", "--json")  # every image (paged listing)
        assert code == 0, err
        docs = {doc["image_id"]: doc for doc in json.loads(out)["images"]}
        assert docs[image_id]["removed"] == []
        assert any("last verified copy" in n for n in docs[image_id]["notes"])
        assert d.url(image_id) in _locations(w, image_id)
    finally:
        d.stop()


def test_image_listing_follows_glance_paging(glance_world: GlanceWorld) -> None:
    """Walking images two at a time (Glance's ``next`` links) sees every image once."""
    w = glance_world
    with httpx.Client(timeout=30) as http:
        api = GlanceLocations(http, w.endpoint, w.admin_token)
        paged = [img["id"] for img in api.images(page_size=2)]
        whole = [img["id"] for img in api.images(page_size=1000)]
    assert len(whole) > 2
    assert sorted(paged) == sorted(whole) and len(set(paged)) == len(paged)
