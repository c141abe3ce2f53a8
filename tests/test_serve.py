"""`locpick serve`: the cache read-only over HTTP with Range, nothing else reachable."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_cache import ServeProcess
from helpers import image_record

from locpick.cache import NodeCache
from locpick.sources import parse_image

IMG = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DATA = os.urandom(3_000_000)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, NodeCache]]:
    base = tmp_path_factory.mktemp("serve")
    cache = NodeCache(base / "cache")
    src = base / "src"
    src.write_bytes(DATA)
    cache.add_file(parse_image(image_record(IMG, DATA, []), IMG), src)
    (base / "secret").write_bytes(b"outside the cache")
    (cache.images / "partial").write_bytes(b"no sidecar: incomplete")
    with ServeProcess(base / "cache") as proc:
        yield proc, cache


def _get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_full_get_and_head(served: tuple[ServeProcess, NodeCache]) -> None:
    """GET returns the whole image; the hash it was verified with is in a header."""
    proc, _ = served
    status, headers, body = _get(proc.port, proc.image_path(IMG))
    assert status == 200 and body == DATA
    assert headers["content-length"] == str(len(DATA))
    assert headers["x-image-meta-hash"].startswith("sha512:")
    assert headers.get("accept-ranges") == "bytes"


@pytest.mark.parametrize(
    "path",
    [
        "/images/../secret",
        "/images/%2e%2e/secret",
        "/images/..%2fsecret",
        "/images/%2e%2e%2fsecret",
        f"/images/{IMG}.json/TOKEN",
        "/images/../secret/TOKEN",
        "/images/.lock/TOKEN",
        "/images/partial",
        "/images/unknown-id",
        "/images/",
        "/",
        "/images",
        "/../secret",
        "/images/.lock",
    ],
)
def test_refuses_paths_and_unknown_ids(served: tuple[ServeProcess, NodeCache], path: str) -> None:
    """Traversal, sidecars, incomplete files, unknown ids and listings: 404, or 403 (no token)."""
    proc, _ = served
    status, _h, body = _get(proc.port, path)
    assert status in (403, 404), (path, status)
    assert b"outside the cache" not in body and IMG.encode() not in body


def test_concurrent_range_requests_return_the_right_bytes(
    served: tuple[ServeProcess, NodeCache],
) -> None:
    """64 Range requests over 16 connections at once: every slice is exactly the file's."""
    proc, _ = served
    rng = random.Random(7)
    ranges = [
        (a, min(len(DATA) - 1, a + rng.randrange(1, 400_000)))
        for a in (rng.randrange(0, len(DATA)) for _ in range(63))
    ]
    ranges.append((len(DATA) - 10, len(DATA) - 1))

    def one(r: tuple[int, int]) -> bool:
        status, headers, body = _get(
            proc.port, proc.image_path(IMG), {"Range": f"bytes={r[0]}-{r[1]}"}
        )
        assert status == 206, status
        assert headers["content-range"] == f"bytes {r[0]}-{r[1]}/{len(DATA)}"
        return body == DATA[r[0] : r[1] + 1]

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, ranges))
    assert all(results) and len(results) == 64


def test_suffix_and_unsatisfiable_ranges(served: tuple[ServeProcess, NodeCache]) -> None:
    """bytes=-N gives the tail; a range past the end answers 416."""
    proc, _ = served
    status, _h, body = _get(proc.port, proc.image_path(IMG), {"Range": "bytes=-1000"})
    assert status == 206 and body == DATA[-1000:]
    status, _h, _b = _get(proc.port, proc.image_path(IMG), {"Range": f"bytes={len(DATA) + 5}-"})
    assert status == 416


def test_write_methods_are_refused(served: tuple[ServeProcess, NodeCache]) -> None:
    """Read-only: PUT/DELETE/POST change nothing."""
    proc, cache = served
    for method in ("PUT", "DELETE", "POST"):
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
        conn.request(method, proc.image_path(IMG), body=b"evil")
        status = conn.getresponse().status
        conn.close()
        assert status in (404, 405), (method, status)
    assert (cache.images / IMG).read_bytes() == DATA


def test_evicted_image_is_gone_from_serve(tmp_path: Path) -> None:
    """After eviction the id answers 404 at once (the sidecar goes first)."""
    cache = NodeCache(tmp_path / "c")
    src = tmp_path / "s"
    src.write_bytes(b"abc" * 1000)
    cache.add_file(parse_image(image_record("x1", b"abc" * 1000, []), "x1"), src)
    with ServeProcess(tmp_path / "c") as proc:
        assert _get(proc.port, proc.image_path("x1"))[0] == 200
        cache.evict("x1")
        assert _get(proc.port, proc.image_path("x1"))[0] == 404


def test_symlink_planted_in_the_cache_is_not_followed_out(tmp_path: Path) -> None:
    """An entry whose data file is a symlink to a file outside the cache answers 404."""
    cache = NodeCache(tmp_path / "c")
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret bytes")
    (cache.images / "evil").symlink_to(secret)
    (cache.images / "evil.json").write_text(
        '{"size": 16, "algo": "sha512", "digest": "00", "registered_url": null}'
    )
    assert cache.entry("evil") is None  # not a regular file: not an entry
    with ServeProcess(tmp_path / "c") as proc:
        status, _h, body = _get(proc.port, proc.image_path("evil"))
    assert status == 404 and b"secret" not in body
