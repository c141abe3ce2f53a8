"""The node cache: verified copies by image id, LRU, crash-safe, shared between processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, image_record, run_cli, temp_leftovers, write_record

import locpick
from locpick._demo.origin import Origin
from locpick.cache.files import valid_image_id
from locpick.cache.store import NodeCache
from locpick.glance.images import parse_image
from locpick.jobs.replicas import plan_prune
from locpick.models import Image, Location, ReplicaStatus, VerifyReport

IMG = "11111111-2222-3333-4444-555555555555"


def _image(image_id: str, data: bytes) -> Image:
    return parse_image(image_record(image_id, data, []), image_id)


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_second_download_comes_from_the_cache_without_network(tmp_path: Path) -> None:
    """A verified cached copy is used with method 'cache' and no request to any location."""
    data = os.urandom(300_000)
    cache = tmp_path / "cache"
    with Origin(data) as origin:
        meta = write_record(tmp_path / "m.json", image_record(IMG, data, [origin.url]))
        first = run_cli(
            "download",
            IMG,
            str(tmp_path / "a"),
            "--metadata",
            str(meta),
            "--cache-dir",
            str(cache),
            "--json",
        )
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["method"] == "download"
        origin.reset_counters()
        second = run_cli(
            "download",
            IMG,
            str(tmp_path / "b"),
            "--metadata",
            str(meta),
            "--cache-dir",
            str(cache),
            "--json",
        )
        assert second.returncode == 0, second.stderr
        doc = json.loads(second.stdout)
        assert doc["method"] == "cache" and doc["verified"] == "sha512"
        assert origin.requests == [] and origin.bytes_sent == 0
    assert (tmp_path / "b").read_bytes() == data
    assert temp_leftovers(tmp_path) == []
    assert sorted(p.name for p in (cache / "images").iterdir()) == [IMG, IMG + ".json"]


def test_cached_copy_of_another_hash_is_not_used(tmp_path: Path) -> None:
    """When the record's hash changes, the old cached bytes are not trusted: re-download."""
    old, new = os.urandom(50_000), os.urandom(50_000)
    c = NodeCache(tmp_path / "cache")
    c.add_file(_image(IMG, old), _file(tmp_path, "old", old))
    assert c.lookup(_image(IMG, old)) is not None
    assert c.lookup(_image(IMG, new)) is None
    with Origin(new) as origin:
        meta = write_record(tmp_path / "m.json", image_record(IMG, new, [origin.url]))
        r = run_cli(
            "download",
            IMG,
            str(tmp_path / "d"),
            "--metadata",
            str(meta),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
        )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["method"] == "download"
    assert (tmp_path / "d").read_bytes() == new
    assert c.lookup(_image(IMG, new)) is not None


def test_lru_eviction_over_max_bytes(tmp_path: Path) -> None:
    """Over max_bytes the least recently used entries go first; the newcomer stays."""
    size = 10_000
    c = NodeCache(tmp_path / "cache", max_bytes=int(2.5 * size))
    blobs = {f"img-{i}": os.urandom(size) for i in range(3)}
    for i, (iid, data) in enumerate(list(blobs.items())[:2]):
        c.add_file(_image(iid, data), _file(tmp_path, iid, data))
        os.utime(c.images / f"{iid}.json", (1000 + i, 1000 + i))
    c.touch("img-0")  # img-1 is now the least recently used
    evicted = c.add_file(_image("img-2", blobs["img-2"]), _file(tmp_path, "i2", blobs["img-2"]))
    assert [e.image_id for e in evicted] == ["img-1"]
    assert sorted(e.image_id for e in c.entries()) == ["img-0", "img-2"]
    assert c.total_bytes() == 2 * size
    assert not (c.images / "img-1").exists()


def test_image_bigger_than_the_cache_is_not_cached(tmp_path: Path) -> None:
    """An image larger than max_bytes neither enters nor empties the cache."""
    c = NodeCache(tmp_path / "cache", max_bytes=1000)
    small = os.urandom(500)
    c.add_file(_image("small", small), _file(tmp_path, "s", small))
    assert c.add_file(_image("big", b"x" * 2000), _file(tmp_path, "b", b"x" * 2000)) == []
    assert [e.image_id for e in c.entries()] == ["small"]


def test_only_complete_verified_entries_are_visible(tmp_path: Path) -> None:
    """Crash leftovers (data without sidecar, temp files, truncated data) are invisible."""
    data = os.urandom(4096)
    c = NodeCache(tmp_path / "cache")
    (c.images / "orphan").write_bytes(data)  # crash after data rename, before sidecar
    (c.images / ".x.locpick-tmp").write_bytes(data)  # crash mid-copy
    assert c.entry("orphan") is None and c.entries() == []
    c.add_file(_image(IMG, data), _file(tmp_path, "f", data))
    assert not (c.images / "orphan").exists()  # swept by the next change
    with open(c.images / IMG, "r+b") as fh:  # truncated behind the cache's back
        fh.truncate(100)
    assert c.entry(IMG) is None and c.lookup(_image(IMG, data)) is None


def test_ids_that_could_name_paths_are_refused() -> None:
    """Only plain ids name cache files: no dots, slashes, or empty names."""
    assert valid_image_id(IMG) and valid_image_id("abc_DEF-1")
    for bad in ("", "..", "../x", "a/b", "a.json", ".hidden", "a\x00b", "x" * 200):
        assert not valid_image_id(bad), bad


def test_concurrent_processes_share_one_cache(tmp_path: Path) -> None:
    """Four processes caching the same and other images at once leave only whole entries."""
    datas = [os.urandom(200_000) for _ in range(2)]
    script = (
        "import sys; from locpick.cache.store import NodeCache;"
        "from locpick.glance.images import parse_image;"
        "import json; rec=json.load(open(sys.argv[2]));"
        "img=parse_image(rec, rec['id']);"
        "NodeCache(sys.argv[1], max_bytes=10**7).add_file(img, sys.argv[3])"
    )
    procs = []
    for i in range(4):
        data = datas[i % 2]
        iid = f"img-{i % 2}"
        src = _file(tmp_path, f"src{i}", data)
        rec = write_record(tmp_path / f"r{i}.json", image_record(iid, data, []))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, str(tmp_path / "cache"), str(rec), str(src)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    c = NodeCache(tmp_path / "cache")
    assert sorted(e.image_id for e in c.entries()) == ["img-0", "img-1"]
    for i, data in enumerate(datas):
        assert hashlib.sha256((c.images / f"img-{i}").read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )
    assert [p.name for p in c.images.iterdir() if "locpick-tmp" in p.name] == []


def test_cache_list_and_evict_cli(tmp_path: Path) -> None:
    """`cache list --json` shows entries; `cache evict` removes one; unknown ids are named."""
    data = os.urandom(1000)
    c = NodeCache(tmp_path / "cache")
    c.add_file(_image(IMG, data), _file(tmp_path, "f", data))
    r = run_cli("cache", "list", "--cache-dir", str(tmp_path / "cache"), "--json")
    assert r.returncode == 0, r.stderr
    assert [e["image_id"] for e in json.loads(r.stdout)] == [IMG]
    r = run_cli("cache", "evict", IMG, "nope", "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert f"evicted {IMG}" in r.stdout and "nope: not in the cache" in r.stderr
    assert c.entries() == []


def test_register_without_public_url_is_a_usage_error(tmp_path: Path) -> None:
    """--register needs [cache] public_url: exit 2 naming the setting, dest untouched."""
    data = os.urandom(1000)
    meta = write_record(tmp_path / "m.json", image_record(IMG, data, ["http://127.0.0.1:9/x"]))
    r = run_cli(
        "download",
        IMG,
        str(tmp_path / "d"),
        "--metadata",
        str(meta),
        "--cache-dir",
        str(tmp_path / "c"),
        "--register",
    )
    assert r.returncode == 2
    assert "public_url" in r.stderr
    assert not (tmp_path / "d").exists()


# -- prune planning (pure) --------------------------------------------------------------------


def _report(image: Image, statuses: dict[str, str]) -> VerifyReport:
    return VerifyReport(
        image.id,
        tuple(ReplicaStatus(u, s, None) for u, s in statuses.items()),  # type: ignore[arg-type]
    )


def test_prune_removes_missing_and_mismatched_keeps_ok_and_unreachable() -> None:
    """Only missing/mismatch go; unreachable may be transient and is kept with a note."""
    urls = ["http://a/1", "http://b/1", "http://c/1", "http://d/1"]
    image = Image(IMG, 10, locations=tuple(Location(u) for u in urls))
    remove, notes = plan_prune(
        image,
        _report(image, dict(zip(urls, ["ok", "missing", "mismatch", "unreachable"], strict=True))),
    )
    assert [loc.url for loc in remove] == ["http://b/1", "http://c/1"]
    assert any("http://d/1" in n for n in notes)


def test_prune_never_removes_when_no_location_is_verified() -> None:
    """With no verified location left, nothing is removed (the last copy is never pruned)."""
    urls = ["http://a/1", "http://b/1"]
    glance_file = Location("http://g/v2/images/x/file", kind="glance-file")
    image = Image(IMG, 10, locations=(*(Location(u) for u in urls), glance_file))
    statuses = {"http://a/1": "mismatch", "http://b/1": "missing", glance_file.url: "ok"}
    remove, notes = plan_prune(image, _report(image, statuses))
    assert remove == []
    assert any("last verified" in n for n in notes)


@pytest.mark.parametrize(
    ("argv", "why"),
    [(["--quick"], "drop --quick"), (["--metadata", "x.json"], "give --glance-url")],
)
def test_prune_refuses_quick_or_metadata(tmp_path: Path, argv: list[str], why: str) -> None:
    """--prune needs a full hash check and a Glance source: exit 2 saying which, before any
    location is read (the record is real, so the refusal is the prune rule, not a bad file)."""
    write_record(tmp_path / "x.json", image_record(IMG, b"data", []))
    r = run_cli("verify", IMG, "--prune", *argv, "--glance-url", "http://127.0.0.1:9", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--prune" in r.stderr and why in r.stderr, r.stderr


def test_python_api_cache_dir(tmp_path: Path) -> None:
    """locpick.download(cache_dir=...) keeps a copy; the second call is method 'cache'."""
    import locpick

    data = os.urandom(100_000)
    with Origin(data) as origin:
        record = image_record(IMG, data, [origin.url])
        first = locpick.download(IMG, tmp_path / "a", metadata=record, cache_dir=tmp_path / "c")
        second = locpick.download(IMG, tmp_path / "b", metadata=record, cache_dir=tmp_path / "c")
        assert len(origin.requests) > 0
    assert (first.method, second.method) == ("download", "cache")
    assert second.source_url == (tmp_path / "c" / "images" / IMG).as_uri()
    assert (tmp_path / "b").read_bytes() == data


def test_failed_download_leaves_the_cache_empty(tmp_path: Path) -> None:
    """Bytes that fail verification never enter the cache (exit 3, no entry, no temp file)."""
    data = os.urandom(100_000)
    with Origin(os.urandom(len(data))) as liar:
        meta = write_record(tmp_path / "m.json", image_record(IMG, data, [liar.url]))
        r = run_cli(
            "download",
            IMG,
            str(tmp_path / "d"),
            "--metadata",
            str(meta),
            "--cache-dir",
            str(tmp_path / "c"),
        )
    assert r.returncode == 3
    assert sorted(p.name for p in (tmp_path / "c" / "images").iterdir()) == []
    assert not (tmp_path / "d").exists() and temp_leftovers(tmp_path) == []


def _plant_entry(cache_dir: Path, image_id: str, planted: bytes, real: bytes) -> None:
    """What a local attacker writes: other bytes, with a sidecar naming the real hash."""
    images = cache_dir / "images"
    (images / image_id).write_bytes(planted)
    (images / (image_id + ".json")).write_text(
        json.dumps(
            {"size": len(planted), "algo": "sha512", "digest": hashlib.sha512(real).hexdigest()}
        )
    )


@pytest.mark.parametrize("how", ["world-writable-dir", "foreign-owner"])
def test_planted_cache_entry_is_never_delivered_as_verified(tmp_path: Path, how: str) -> None:
    """A cache others can write to, or an entry not owned by us: not used (with the reason);
    the image comes from its location, verified, and dest holds the real bytes."""
    real = os.urandom(100_000)
    planted = os.urandom(100_000)
    cache_dir = tmp_path / "cache"
    NodeCache(cache_dir)
    _plant_entry(cache_dir, IMG, planted, real)
    if how == "world-writable-dir":
        os.chmod(cache_dir / "images", 0o777)
    else:
        for name in (IMG, IMG + ".json"):
            os.chown(cache_dir / "images" / name, 65534, 65534)
    with Origin(real) as origin:
        url = origin.url
        meta = write_record(tmp_path / "m.json", image_record(IMG, real, [url]))
        r = run_cli(
            "download", IMG, str(tmp_path / "d"), "--metadata", str(meta),
            "--cache-dir", str(cache_dir), "--json",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["method"] == "download" and doc["source_url"] == url
    assert (tmp_path / "d").read_bytes() == real
    if how == "world-writable-dir":
        assert "group/world-writable" in r.stderr
    else:
        assert "owned by uid 65534" in r.stderr


def test_keystone_token_never_goes_to_a_cache_location(tmp_path: Path) -> None:
    """A cache location on the very host:port of Glance still gets no X-Auth-Token: the token
    goes to Glance's own image-data URL only."""
    token = "tok-" + "9" * 40
    data = os.urandom(50_000)
    path = "/images/img/lpc1_" + "B" * 43
    with Origin(data, path=path) as cache_host:
        record = image_record(
            "img", data, [(cache_host.url, {"locpick_cache": "true", "host": "node-a"})]
        )
        meta = write_record(tmp_path / "m.json", record)
        client = locpick.Client(glance_url=cache_host.base, token=token)
        with client:
            result = client.download("img", tmp_path / "d", metadata=str(meta))
        seen = [req.headers for req in cache_host.requests]
    assert result.verified and (tmp_path / "d").read_bytes() == data
    assert seen and all("X-Auth-Token" not in h and token not in json.dumps(h) for h in seen)
