"""Boot storm end to end (issue 19): filling copies that die or lie, against a real Glance 33.

Real parts only: the session's Keystone + Glance (``fixtures_glance``), ``locpick._demo.origin``
origins with a per-response bandwidth cap (so a fill takes seconds, not microseconds), and per
node a real ``locpick serve`` (told Glance, so it renews and deregisters) plus a real
``locpick download --cache-dir --register`` process. Node A starts filling its copy from the
origin; once Glance lists A's copy as filling and A holds part of the image, node B starts and
reads from A while A is still filling. Then A fails in one of the two ways the issue names:

* its download is SIGKILLed mid-way: B finishes from the origin, verified; A's copy answers 404
  and its location leaves Glance, removed by A's serve (still running), which sees the dead
  fill record within seconds;
* its bytes are corrupt (the origin flips a byte every 64 KiB of A's answer, not of later
  ones): A's final hash fails, A removes its location at once, and B, which took corrupt pieces
  from A, repairs them from the origin and delivers the verified image.

The stream-through serving itself (ranges ahead of the fill wait, then arrive) is tested in
``test_serve.py`` / ``test_fillstate.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import glance_harness as gh
import pytest
from fixtures_cache import ServeProcess
from fixtures_glance import GlanceWorld, glance_world_fixture  # noqa: F401
from helpers import cli_env

from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.cache.fill.record import read_fill
from locpick.cache.store import NodeCache

pytestmark = pytest.mark.glance

MiB = 1 << 20
SIZE = 16 * MiB
#: Per-response cap of the origins: A's fill takes about SIZE / RATE seconds.
RATE = 2 * MiB
#: How long to wait for something that must happen (a liveness bound, not a speed goal).
PATIENCE = 180.0


def _wait(what: str, cond: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    """Poll ``cond`` until it is truthy; fail naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up waiting: {what}")


def _wchar(pid: int) -> int:
    """Bytes a process has written (its sockets included): what a ``serve`` sent."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


class Node:
    """One node: own topology and cache, its ``serve`` (with Glance), its download process."""

    def __init__(
        self, w: GlanceWorld, base: Path, name: str, *, rack: str, policy: str = ""
    ) -> None:
        """``base/fleet.key``: the fleet key all nodes of one test share (their copies are
        signed with it and trusted because of it)."""
        self.w = w
        self.name = name
        self.base = base / name
        self.cache_dir = self.base / "cache"
        self.cache_dir.mkdir(parents=True)
        self.config = self.base / "config.toml"
        self.dest = self.base / "dest.img"
        self.download: subprocess.Popen[str] | None = None
        key = fleet_key(base)
        for attempt in range(4):
            port = gh.find_free_port()
            self.public_url = f"http://127.0.0.1:{port}"
            self.config.write_text(
                f'history_file = "{self.base / "history.json"}"\n'
                f'[topology]\nregion = "R"\nzone = "z1"\nrack = "{rack}"\nhost = "{name}"\n'
                f'[cache]\ndir = "{self.cache_dir}"\npublic_url = "{self.public_url}"\n'
                # one host: tooz's file backend is the per-image lock that lets a node remove
                # its own location; without one, removals are `cache reap`'s
                f'[fleet]\nkey_file = "{key}"\ncoordination = "file://{base / "coord"}"\n'
                f"[policy]\nforbid_glance_file = true\n{policy}"
            )
            try:
                self.serve = ServeProcess(
                    self.cache_dir,
                    bind=f"127.0.0.1:{port}",
                    config=self.config,
                    extra=["--glance-url", w.endpoint, "--token", w.admin_token],
                )
                break
            except RuntimeError:
                if attempt == 3:
                    raise
        self.cache = NodeCache(self.cache_dir)

    def url(self, image_id: str) -> str:
        return self.serve.image_url(image_id)

    def start_download(self, image_id: str) -> subprocess.Popen[str]:
        self.download = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locpick",
                "download",
                image_id,
                str(self.dest),
                "--config",
                str(self.config),
                "--glance-url",
                self.w.endpoint,
                "--token",
                self.w.admin_token,
                "--cache-dir",
                str(self.cache_dir),
                "--register",
                "--json",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        return self.download

    def finish(self) -> tuple[int, dict[str, Any], str]:
        """Wait for the download: (exit code, its --json document, stderr)."""
        assert self.download is not None
        out, err = self.download.communicate(timeout=PATIENCE)
        try:
            doc = json.loads(out) if out.strip() else {}
        except ValueError:
            doc = {}
        return self.download.returncode, doc, err

    def held(self, image_id: str) -> int:
        """Bytes of the filling copy on disk (its fill record's written prefix), 0 if none."""
        with contextlib.suppress(Exception):
            snap = read_fill(self.cache_dir / "images" / f"{image_id}.fill")
            if snap is not None:
                return snap.written
        return 0

    def served(self) -> int:
        return _wchar(self.serve.proc.pid)

    def stop(self) -> None:
        if self.download is not None and self.download.poll() is None:
            self.download.kill()
            self.download.communicate()
        self.serve.stop()


def fleet_key(base: Path) -> Path:
    """The fleet key of the nodes under ``base`` (made once, 0600)."""
    path = base / "fleet.key"
    if not path.exists():
        path.write_text(os.urandom(32).hex() + "\n")
        path.chmod(0o600)
    return path


def _cache_locations(w: GlanceWorld, image_id: str) -> dict[str, dict[str, str]]:
    """url -> metadata of the image's locpick cache locations in Glance."""
    rec = gh.get_image(w.endpoint, image_id, token=w.admin_token)
    return {
        loc["url"]: dict(loc.get("metadata") or {})
        for loc in rec["locations"]
        if (loc.get("metadata") or {}).get("locpick_cache") == "true"
    }


def _status(url: str) -> int:
    """HTTP status of a GET of the first byte of ``url`` (connection refused: 0)."""
    req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _seed(w: GlanceWorld, tmp_path: Path, data: bytes, *urls: str) -> str:
    src = tmp_path / "img.raw"
    src.write_bytes(data)
    return gh.seed_image(
        w.endpoint,
        src,
        token=w.admin_token,
        name="locpick-storm-test",
        visibility="public",
        copy_to_stores=(),
        http_locations=[(u, {"zone": "z-origin", "region": "R"}) for u in urls],
    )


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            thing.stop()


def _a_is_filling_and_registered(w: GlanceWorld, a: Node, image_id: str) -> None:
    """Wait until Glance lists A's copy as filling while A holds a quarter of the image."""
    url = a.url(image_id)
    _wait("A's copy registered as filling", lambda: url in _cache_locations(w, image_id))
    meta = _cache_locations(w, image_id)[a.url(image_id)]
    assert meta.get("locpick_fill") == "filling", meta
    assert float(meta["locpick_fill_started"]) > 0
    _wait("A holding a quarter of the image", lambda: a.held(image_id) >= SIZE // 4)
    assert a.download is not None and a.download.poll() is None, "A finished before B started"


def test_filling_node_killed_midway_peers_finish_and_its_location_goes(
    glance_world: GlanceWorld, tmp_path: Path, data: bytes, cleanup: list[Any]
) -> None:
    w = glance_world
    origin = Origin(data, faults=Faults(bandwidth=RATE)).start()
    cleanup.append(origin)
    image_id = _seed(w, tmp_path, data, origin.url)
    a = Node(w, tmp_path, "node-a", rack="rack-1")
    cleanup.append(a)
    b = Node(w, tmp_path, "node-b", rack="rack-1")
    cleanup.append(b)

    a.start_download(image_id)
    _a_is_filling_and_registered(w, a, image_id)
    served_before = a.served()
    b.start_download(image_id)
    _wait("B reading from A's filling copy", lambda: a.served() - served_before >= MiB)
    assert a.download is not None and a.download.poll() is None, "A finished before the kill"
    a.download.send_signal(signal.SIGKILL)
    a.download.wait()

    code, doc, err = b.finish()
    assert code == 0, err
    assert doc["verified"] == "sha512"  # the algorithm it was verified with
    assert b.dest.read_bytes() == data
    assert any(s["bytes"] > 0 and "img.raw" in s["url"] for s in doc["sources"]), doc["sources"]
    # A's copy is dead: its serve no longer offers it, and no bytes of it reached a dest unverified
    assert _status(a.url(image_id)) == 404
    assert a.cache.entry(image_id) is None

    # its location leaves Glance without any reap: A's serve, still running, sees the dead fill
    # record and deregisters it (well before the hour-long default lease)
    _wait(
        "A's serve deregistering its dead fill",
        lambda: a.url(image_id) not in _cache_locations(w, image_id),
    )
    assert not list(a.cache_dir.glob("images/*.fill*")), "the dead fill's files were left"
    left = _cache_locations(w, image_id)
    assert a.url(image_id) not in left
    # B's complete copy is registered, and leaves Glance when B's serve stops cleanly
    assert b.url(image_id) in left
    b.serve.stop()
    assert b.url(image_id) not in _cache_locations(w, image_id)


def test_filling_node_with_corrupt_bytes_is_removed_and_peers_repair(
    glance_world: GlanceWorld, tmp_path: Path, data: bytes, cleanup: list[Any]
) -> None:
    w = glance_world
    origin = Origin(data, faults=Faults(bandwidth=RATE)).start()
    cleanup.append(origin)
    image_id = _seed(w, tmp_path, data, origin.url)
    a = Node(w, tmp_path, "node-a", rack="rack-1")
    cleanup.append(a)
    b = Node(w, tmp_path, "node-b", rack="rack-1")
    cleanup.append(b)

    # the origin flips a byte every 64 KiB of every answer it starts now (A's), and of none it
    # starts after the fault is lifted (B's): faults are taken per request
    origin.faults.corrupt_at = range(4096, SIZE, 64 * 1024)
    a.start_download(image_id)
    _a_is_filling_and_registered(w, a, image_id)
    origin.faults.corrupt_at = ()
    served_before = a.served()
    b.start_download(image_id)
    _wait("B reading from A's filling copy", lambda: a.served() - served_before >= MiB)

    code_a, _, err_a = a.finish()
    assert code_a == 3, err_a
    # removed at once by A itself, no reap needed
    assert a.url(image_id) not in _cache_locations(w, image_id)
    assert a.cache.entry(image_id) is None
    assert _status(a.url(image_id)) == 404
    assert not (a.cache_dir / "images" / f"{image_id}.filling").exists()
    assert not (a.cache_dir / "images" / f"{image_id}.fill").exists()

    code, doc, err = b.finish()
    assert code == 0, err
    assert doc["verified"] == "sha512"  # the algorithm it was verified with
    assert b.dest.read_bytes() == data
    # B took corrupt pieces from A (A sent B over a MiB, all of it corrupt every 64 KiB) and
    # still delivered the image: they were caught and fetched again from the origin
    good_bytes = sum(s["bytes"] for s in doc["sources"] if s["url"] == origin.url)
    assert good_bytes > 0, doc["sources"]
    # ... by the verification: A's wrong pieces were found and A's copy was failed for them
    assert doc.get("verify_failures", 0) >= 1, doc
    assert any(
        att.get("outcome") == "failed"
        and "mismatch" in str(att.get("error"))
        and str(att.get("url")).split("/images/")[0] == a.url(image_id).split("/images/")[0]
        for att in doc.get("attempts", [])
    ), doc
    b.serve.stop()
    assert b.url(image_id) not in _cache_locations(w, image_id)
