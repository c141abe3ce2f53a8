"""Session-scoped real Swift (tests/swift_harness.py) and objects uploaded once for the swift
transport tests. Import the fixtures into a test module with
``from fixtures_swift import swift_server, ...``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from swift_harness import HARNESS_DIR, PutResult, SwiftHandle, put_object, start_swift

MiB = 1 << 20


def data(n: int, seed: bytes) -> bytes:
    """Deterministic bytes, different at every offset."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


SMALL = data(200_000, b"swift-small")
#: 4 segments of a Dynamic Large Object: 3 x 1 MiB + a short one.
LARGE = data(3 * MiB + 4321, b"swift-large")


@pytest.fixture(scope="session")
def swift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftHandle]:
    if not (HARNESS_DIR / "swift.py").is_file():
        pytest.fail(f"the Swift harness is missing at {HARNESS_DIR}")
    handle = start_swift(tmp_path_factory.mktemp("swiftsrv"))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def swift_small(swift_server: SwiftHandle) -> PutResult:
    return put_object(swift_server, "images", "small-img", SMALL)


@pytest.fixture(scope="session")
def swift_large(swift_server: SwiftHandle) -> PutResult:
    res = put_object(swift_server, "images", "large-img", LARGE, segment_size=MiB)
    assert res.dlo and res.etag.strip('"') != res.md5  # the manifest ETag is not the md5
    return res
