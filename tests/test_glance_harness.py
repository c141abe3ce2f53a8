"""Proves tests/glance_harness.py against the real Glance 33 harness."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import glance_harness as gh
import pytest

pytestmark = [
    pytest.mark.testserver,
    pytest.mark.glance,
    pytest.mark.skipif(not gh.harness_available(), reason="glance harness not found"),
]

IMAGE_SIZE = 1_500_000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class LoopbackHTTPServer:
    """Minimal threaded static file server on 127.0.0.1:<free port>."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer((gh.HOST, 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://{gh.HOST}:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@dataclass
class GlanceEnv:
    handle: gh.GlanceHandle
    http: LoopbackHTTPServer
    www: Path
    image_file: Path
    image_id: str
    http_url: str
    tmpfs: bool
    start_seconds: float

    @property
    def endpoint(self) -> str:
        return self.handle.endpoint


@pytest.fixture(scope="session")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceEnv]:
    base = tmp_path_factory.mktemp("glance")
    www = base / "www"
    www.mkdir()
    image_file = www / "img.raw"
    image_file.write_bytes(os.urandom(IMAGE_SIZE))
    (www / "copy.raw").write_bytes(image_file.read_bytes())
    http = LoopbackHTTPServer(www)
    tmpfs = gh.tmpfs_supported()
    t0 = time.monotonic()
    handle = gh.start_glance(base / "work", tmpfs_stores=tmpfs)
    started = time.monotonic() - t0
    try:
        url = http.url("img.raw")
        image_id = gh.seed_image(
            handle.endpoint,
            image_file,
            http_locations=[(url, {"zone": "z1", "rack": "r2"})],
            copy_to_stores=("fs2",),
            name="harness-e2e",
        )
        yield GlanceEnv(handle, http, www, image_file, image_id, url, tmpfs, started)
    finally:
        handle.stop()
        http.close()
    assert handle.alive_pids() == []
    assert all(not os.path.ismount(p) for p in handle.stores.values())


def test_seeded_image_has_three_locations(glance: GlanceEnv) -> None:
    data = glance.image_file.read_bytes()
    img = gh.get_image(glance.endpoint, glance.image_id)
    assert img["status"] == "active"
    assert img["size"] == IMAGE_SIZE
    assert img["checksum"] == hashlib.md5(data).hexdigest()
    assert img["os_hash_algo"] == "sha512"
    assert img["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert img["owner"] == "locpick-project"
    assert img["visibility"] == "shared"

    locs = img["locations"]
    assert len(locs) == 3
    stores = glance.handle.stores
    for loc, name in zip(locs[:2], ("fs1", "fs2"), strict=True):
        assert loc["url"] == f"file://{stores[name]}/{glance.image_id}"
        assert loc["metadata"] == {
            "id": f"locpick-{name}",
            "mountpoint": str(stores[name]),
            "store": name,
        }
        assert Path(stores[name], glance.image_id).read_bytes() == data
    assert locs[2] == {
        "url": glance.http_url,
        "metadata": {"zone": "z1", "rack": "r2", "store": "web"},
    }
    assert img["direct_url"] == locs[0]["url"]
    assert set(img["stores"].split(",")) == {"fs1", "fs2", "web"}


def test_stores_are_tmpfs_mounts_when_permitted(glance: GlanceEnv) -> None:
    if not glance.tmpfs:
        pytest.skip("mount -t tmpfs not permitted here")
    for path in glance.handle.stores.values():
        assert os.path.ismount(path)
        assert gh.mount_fstype(path) == "tmpfs"


def test_patch_locations_and_status_helpers(glance: GlanceEnv) -> None:
    ep = glance.endpoint
    # an http-only-extra image without fs2 copy
    image_id = gh.seed_image(
        ep, glance.image_file, copy_to_stores=(), http_locations=[glance.http_url]
    )
    img = gh.get_image(ep, image_id)
    assert [loc["metadata"]["store"] for loc in img["locations"]] == ["fs1", "web"]

    img = gh.add_http_location(ep, image_id, glance.http.url("copy.raw"), {"region": "r1"})
    assert len(img["locations"]) == 3
    assert img["locations"][2]["metadata"] == {"region": "r1", "store": "web"}
    img = gh.patch_locations(ep, image_id, [{"op": "remove", "path": "/locations/1"}])
    assert [loc["url"] for loc in img["locations"]][1:] == [glance.http.url("copy.raw")]

    gh.deactivate_image(ep, image_id)
    assert gh.get_image(ep, image_id)["status"] == "deactivated"
    # Glance forbids downloading a deactivated image only for non-admins;
    # in no-auth mode every request is admin, so the data is still served.
    status, _ = gh.glance_request(ep, "GET", f"/v2/images/{image_id}/file")
    assert status == 200
    gh.reactivate_image(ep, image_id)
    assert gh.get_image(ep, image_id)["status"] == "active"

    queued = gh.create_image(ep, name="empty")
    img = gh.get_image(ep, queued)
    assert img["status"] == "queued"
    assert img["locations"] == []
    assert img["size"] is None

    gh.delete_image(ep, image_id)
    gh.delete_image(ep, queued)
    assert gh.glance_request(ep, "GET", f"/v2/images/{image_id}")[0] == 404


def test_second_instance_warm_start_and_clean_stop(glance: GlanceEnv, tmp_path: Path) -> None:
    """A second Glance next to the session one (own WORKDIR, own port, shared
    cached venv) starts warm and stop() leaves no process and no mount."""
    t0 = time.monotonic()
    h = gh.start_glance(tmp_path / "work2", tmpfs_stores=glance.tmpfs)
    warm = time.monotonic() - t0
    try:
        assert h.endpoint == f"http://127.0.0.1:{h.port}"
        assert h.port != glance.handle.port
        assert h.alive_pids()
        status, versions = gh.glance_request(h.endpoint, "GET", "/versions")
        assert status == 200
        assert versions["versions"]
        assert gh.glance_request(h.endpoint, "GET", "/v2/images")[1]["images"] == []
    finally:
        h.stop()
    assert h.alive_pids() == []
    assert gh.port_free(h.port)
    assert not any(os.path.ismount(p) for p in h.stores.values())
    assert not (h.workdir / "glance.pid").exists()
    h.stop()  # idempotent
    print(f"session start {glance.start_seconds:.1f}s, second warm start {warm:.1f}s")
    # warm: the second instance runs from the same cached venv, nothing was installed again
    assert (h.workdir / "venv").resolve() == (glance.handle.workdir / "venv").resolve()
