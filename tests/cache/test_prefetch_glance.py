"""`locpick cache prefetch` against a real Glance 33 + Keystone and a real `locpick serve`:
three images warmed into a node cache and registered, a kill -9 mid-way, and a rerun that
skips what is cached and resumes the part file."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import glance_harness as gh
import pytest
from fixtures_cache import ServeProcess
from fixtures_glance import GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401
from helpers import cli_env, run_cli

from locpick._demo.origin import Origin
from locpick.cache.prefetch import read_state
from locpick.cache.store import NodeCache

pytestmark = pytest.mark.glance

SIZE = 4 << 20
#: The engine resumes whole pieces (1 MiB here): the one in flight at the kill is fetched again.
PIECE = 1 << 20


@pytest.fixture
def three(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[list[tuple[str, Origin]]]:
    """Three fresh public images, each with an http origin of its own, tagged for a query."""
    with contextlib.ExitStack() as stack:
        made = []
        for n in range(3):
            (tmp_path / f"i{n}").mkdir()
            image_id, _data, origin = stack.enter_context(
                fresh_image(glance_world, tmp_path / f"i{n}", f"locpick-prefetch-{n}", SIZE)
            )
            made.append((image_id, origin))
        tag = f"warm-{tmp_path.name}"[-60:]
        for image_id, _o in made:
            status, _ = gh.glance_request(
                glance_world.endpoint,
                "PUT",
                f"/v2/images/{image_id}/tags/{tag}",
                token=glance_world.admin_token,
            )
            assert status == 204
        yield made


def _node(w: GlanceWorld, tmp_path: Path) -> tuple[Path, Path, ServeProcess]:
    cache_dir = tmp_path / "node" / "cache"
    cache_dir.mkdir(parents=True)
    serve = ServeProcess(cache_dir)
    config = tmp_path / "node" / "config.toml"
    config.write_text(
        '[topology]\nzone = "z-node"\nhost = "node"\n'
        f'[cache]\ndir = "{cache_dir}"\npublic_url = "{serve.url}"\n'
        "[policy]\nforbid_glance_file = true\n"
    )
    return cache_dir, config, serve


def _auth(w: GlanceWorld) -> list[str]:
    return ["--glance-url", w.endpoint, "--token", w.admin_token]


def _wait(predicate: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_prefetch_three_kill_9_midway_then_rerun_resumes(
    glance_world: GlanceWorld,
    three: list[tuple[str, Origin]],
    tmp_path: Path,
) -> None:
    """Run 1 caches image 1 and is SIGKILLed inside image 2; run 2 (by tag) skips image 1
    with no byte from its origin, resumes image 2 from its part file, fetches image 3, and
    registers all three; /status shows the run."""
    w = glance_world
    (id1, o1), (id2, o2), (id3, o3) = three
    cache_dir, config, serve = _node(w, tmp_path)
    try:
        o2.faults.bandwidth = 500_000  # image 2 takes ~8 s: time to kill it mid-way
        for o in (o1, o2, o3):
            o.reset_counters()
        cmd = [sys.executable, "-m", "locpick", "cache", "prefetch", id1, id2, id3]
        first = subprocess.Popen(
            [*cmd, "--jobs", "1", "--register", "--config", str(config), *_auth(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        cache = NodeCache(cache_dir)
        try:
            _wait(lambda: cache.entry(id1) is not None, "image 1 cached")
            _wait(lambda: o2.bytes_sent >= 2 * PIECE + 300_000, "image 2 under way")
        finally:
            first.send_signal(signal.SIGKILL)
            _out, err = first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL, err
        sent_before_kill = o2.bytes_sent
        assert cache.entry(id2) is None and cache.entry(id3) is None
        part = cache_dir / "prefetch" / f".{id2}.locpick-part"
        assert part.exists(), sorted(p.name for p in (cache_dir / "prefetch").iterdir())
        state = read_state(cache_dir)
        assert state is not None and state.state == "interrupted"
        assert {i.image_id: i.status for i in state.images}[id1] == "fetched"

        o2.faults.bandwidth = None
        for o in (o1, o2, o3):
            o.reset_counters()
        tag = gh.get_image(w.endpoint, id1, token=w.admin_token)["tags"][0]
        r = run_cli(
            "cache", "prefetch", "--tag", tag, "--jobs", "2", "--register", "--json",
            "--config", str(config), *_auth(w),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] is True
        status = {i["image_id"]: i["status"] for i in doc["images"]}
        assert status == {id1: "cached", id2: "fetched", id3: "fetched"}
        assert o1.bytes_sent == 0  # skipped: already cached
        # only the rest: what was sent before the kill, less the piece in flight, is not asked
        # for again
        assert 0 < o2.bytes_sent <= SIZE - sent_before_kill + PIECE + 300_000
        assert o3.bytes_sent >= SIZE
        for image_id in (id1, id2, id3):
            entry = cache.entry(image_id)
            assert entry is not None and entry.size == SIZE
            urls = [
                loc["url"]
                for loc in gh.get_image(w.endpoint, image_id, token=w.admin_token)["locations"]
            ]
            assert serve.image_url(image_id) in urls
        assert not part.exists()
        assert not list((cache_dir / "prefetch").iterdir())  # no work file left

        state = read_state(cache_dir)
        assert state is not None and state.state == "done"
        with urllib.request.urlopen(serve.url + "/status", timeout=10) as resp:
            page = resp.read().decode()
        assert "<h2>Prefetch</h2>" in page and "done" in page
        for image_id in (id1, id2, id3):
            assert image_id in page
    finally:
        serve.stop()


def test_prefetch_unknown_image_is_a_failed_row_and_exit_3(
    glance_world: GlanceWorld, three: list[tuple[str, Origin]], tmp_path: Path
) -> None:
    """An id Glance does not know fails its own row; the others are still cached."""
    w = glance_world
    (id1, _o1), _b, _c = three
    cache_dir, config, serve = _node(w, tmp_path)
    try:
        missing = "00000000-0000-4000-8000-000000000000"
        r = run_cli(
            "cache", "prefetch", id1, missing, "--json", "--config", str(config), *_auth(w)
        )  # fmt: skip
        assert r.returncode == 3, r.stderr
        rows = {i["image_id"]: i for i in json.loads(r.stdout)["images"]}
        assert rows[id1]["status"] == "fetched"
        assert rows[missing]["status"] == "failed" and missing in rows[missing]["error"]
        assert NodeCache(cache_dir).entry(id1) is not None
    finally:
        serve.stop()


def test_prefetch_max_rate_caps_the_transfer(glance_world: GlanceWorld, tmp_path: Path) -> None:
    """--max-rate 1 MB/s: 4 MB take at least 3 s (one second's burst credit), however fast
    the origin is; a lower bound, so a loaded machine cannot make it fail."""
    w = glance_world
    size, rate = 4_000_000, 1_000_000
    cache_dir, config, serve = _node(w, tmp_path)
    try:
        with fresh_image(w, tmp_path, "locpick-prefetch-rate", size) as (image_id, _d, origin):
            origin.reset_counters()
            started = time.monotonic()
            r = run_cli(
                "cache", "prefetch", image_id, "--max-rate", str(rate), "--json",
                "--config", str(config), *_auth(w),
            )  # fmt: skip
            elapsed = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["images"][0]["status"] == "fetched"
        assert origin.bytes_sent >= size
        assert NodeCache(cache_dir).entry(image_id) is not None
        assert elapsed >= (size - rate) / rate, elapsed
        print(f"prefetch of {size} bytes at --max-rate {rate}: {elapsed:.2f} s")
    finally:
        serve.stop()


def test_prefetch_by_property_selects_only_the_matching_images(
    glance_world: GlanceWorld, three: list[tuple[str, Origin]], tmp_path: Path
) -> None:
    """--property KEY=VALUE is Glance's list filter: only the image carrying it is fetched."""
    w = glance_world
    (_id1, o1), (id2, o2), (_id3, o3) = three
    value = tmp_path.name[-40:]
    gh.patch_image(
        w.endpoint,
        id2,
        [{"op": "add", "path": "/locpick_prefetch_test", "value": value}],
        token=w.admin_token,
    )
    cache_dir, config, serve = _node(w, tmp_path)
    try:
        for o in (o1, o2, o3):
            o.reset_counters()
        r = run_cli(
            "cache", "prefetch", "--property", f"locpick_prefetch_test={value}", "--json",
            "--config", str(config), *_auth(w),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [(i["image_id"], i["status"]) for i in json.loads(r.stdout)["images"]] == [
            (id2, "fetched")
        ]
        assert o1.bytes_sent == 0 and o3.bytes_sent == 0
        assert NodeCache(cache_dir).entry(id2) is not None
    finally:
        serve.stop()
