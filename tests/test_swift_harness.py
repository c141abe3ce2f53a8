"""Checks of the real Swift harness and of tests/swift_harness.py.

These pin down the Swift behaviour locpick's swift transport relies on:
tempauth v1 tokens, GET/Range on plain and Dynamic Large Objects, ETags,
401/403, and the three Glance location forms.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

import pytest
from fixtures_swift import (
    data,
    swift_server,  # noqa: F401 - session fixture
)
from swift_harness import (
    ADMIN_USER,
    OTHER_ACCOUNT_USER,
    PutResult,
    SwiftHandle,
    SwiftHTTPError,
    config_url,
    http_request,
    multi_tenant_url,
    put_object,
    single_tenant_url,
    v1_token,
)

pytestmark = [pytest.mark.testserver, pytest.mark.swift]

MiB = 1 << 20


@pytest.fixture(scope="session")
def swift(swift_server: SwiftHandle) -> SwiftHandle:  # noqa: F811 - the imported fixture
    """The one Swift of the session (tests/fixtures_swift.py), shared with the transport tests."""
    return swift_server


@pytest.fixture(scope="session")
def token(swift: SwiftHandle) -> str:
    return v1_token(swift, *ADMIN_USER)[0]


SMALL = data(100_000, b"small")
LARGE = data(3 * MiB + 12345, b"large")  # 4 segments: 3 x 1 MiB + a short one


@pytest.fixture(scope="session")
def small(swift: SwiftHandle) -> PutResult:
    return put_object(swift, "images", "small.raw", SMALL)


@pytest.fixture(scope="session")
def large(swift: SwiftHandle, tmp_path_factory: pytest.TempPathFactory) -> PutResult:
    path = tmp_path_factory.mktemp("img") / "large.raw"
    path.write_bytes(LARGE)
    return put_object(swift, "images", "large.raw", path, segment_size=MiB)


def test_start_and_handle(swift: SwiftHandle) -> None:
    assert swift.auth_url == f"http://127.0.0.1:{swift.port}/auth/v1.0"
    assert swift.storage_url == f"http://127.0.0.1:{swift.port}/v1/AUTH_test"
    status, _, body = http_request("GET", f"{swift.proxy_url}/healthcheck")
    assert (status, body) == (200, b"OK")
    assert swift.start_seconds > 0
    if swift.venv_cached:
        assert (swift.workdir / "venv").is_symlink()


def test_v1_token(swift: SwiftHandle) -> None:
    tok, storage_url = v1_token(swift, *ADMIN_USER)
    assert tok.startswith("AUTH_")
    assert storage_url == swift.storage_url
    _, url2 = v1_token(swift, *OTHER_ACCOUNT_USER)
    assert url2.endswith("/v1/AUTH_test2")


def test_wrong_key_is_401(swift: SwiftHandle) -> None:
    with pytest.raises(SwiftHTTPError) as ei:
        v1_token(swift, "test:tester", "wrong")
    assert ei.value.status == 401
    with pytest.raises(SwiftHTTPError) as ei:
        v1_token(swift, "nosuch:user", "testing")
    assert ei.value.status == 401


def test_small_object_roundtrip(swift: SwiftHandle, token: str, small: PutResult) -> None:
    assert small.url == swift.object_url("images", "small.raw")
    assert not small.dlo
    assert small.etag == small.md5 == hashlib.md5(SMALL).hexdigest()
    status, h, body = http_request("GET", small.url, {"X-Auth-Token": token})
    assert status == 200
    assert body == SMALL
    # a plain object's ETag is the unquoted md5 of its bytes
    assert h["etag"] == small.md5
    assert int(h["content-length"]) == len(SMALL)


def test_small_object_range(token: str, small: PutResult) -> None:
    status, h, body = http_request(
        "GET", small.url, {"X-Auth-Token": token, "Range": "bytes=100-199"}
    )
    assert status == 206
    assert h["content-range"] == f"bytes 100-199/{len(SMALL)}"
    assert body == SMALL[100:200]


def test_no_token_bogus_token_and_no_acl(swift: SwiftHandle, small: PutResult) -> None:
    assert http_request("GET", small.url)[0] == 401
    assert http_request("GET", small.url, {"X-Auth-Token": "AUTH_tkbogus"})[0] == 401
    # valid token of a user without access to AUTH_test/images
    tok3, _ = v1_token(swift, "test:tester3", "testing3")
    assert http_request("GET", small.url, {"X-Auth-Token": tok3})[0] == 403


def test_segmented_object_roundtrip(swift: SwiftHandle, token: str, large: PutResult) -> None:
    assert large.dlo
    assert large.segments == 4
    assert large.bytes == len(LARGE)
    status, h, body = http_request("GET", large.url, {"X-Auth-Token": token})
    assert status == 200
    assert body == LARGE
    assert hashlib.md5(body).hexdigest() == large.md5
    # the manifest plus segments large.raw-00001..00004 in the same container
    status, h, _ = http_request("HEAD", large.url, {"X-Auth-Token": token})
    assert status == 200
    assert h["x-object-manifest"] == "images/large.raw-"
    assert int(h["content-length"]) == len(LARGE)
    status, _, listing = http_request(
        "GET",
        f"{swift.storage_url}/images?prefix=large.raw-&format=plain",
        {"X-Auth-Token": token},
    )
    assert status == 200
    assert listing.decode().split() == [f"large.raw-{i:05d}" for i in range(1, 5)]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (MiB - 50, MiB + 49),  # across the 1st/2nd segment boundary
        (MiB - 1, MiB),  # exactly the two bytes around the boundary
        (MiB - 10, 3 * MiB + 10),  # spanning 4 segments
        (3 * MiB + 12000, 3 * MiB + 12344),  # inside the short last segment, to EOF
    ],
)
def test_segmented_object_range_across_boundary(
    token: str, large: PutResult, start: int, end: int
) -> None:
    status, h, body = http_request(
        "GET", large.url, {"X-Auth-Token": token, "Range": f"bytes={start}-{end}"}
    )
    assert status == 206
    assert h["content-range"] == f"bytes {start}-{end}/{len(LARGE)}"
    assert body == LARGE[start : end + 1]


def test_segmented_object_open_ended_range(token: str, large: PutResult) -> None:
    # Glance resumes reads with Range: bytes=N-
    start = 2 * MiB - 7
    status, _, body = http_request(
        "GET", large.url, {"X-Auth-Token": token, "Range": f"bytes={start}-"}
    )
    assert status == 206
    assert body == LARGE[start:]


def test_manifest_etag_is_not_content_md5(token: str, large: PutResult) -> None:
    """NOTE: a DLO manifest's ETag is quoted and is md5 of the concatenated
    segment ETags, not the md5 of the bytes, so it must never be compared
    with Glance's checksum / os_hash_value (a plain object's ETag can be)."""
    status, h, _ = http_request("HEAD", large.url, {"X-Auth-Token": token})
    assert status == 200
    etag = h["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert etag.strip('"') != large.md5
    seg_etags = "".join(
        hashlib.md5(LARGE[i : i + MiB]).hexdigest() for i in range(0, len(LARGE), MiB)
    )
    assert etag.strip('"') == hashlib.md5(seg_etags.encode()).hexdigest()
    assert large.etag == etag.strip('"')
    # GET reports the same quoted ETag
    status, h2, _ = http_request("GET", large.url, {"X-Auth-Token": token, "Range": "bytes=0-0"})
    assert status == 206
    assert h2["etag"] == etag


# ------------------------------------------------------------ Glance location forms


def test_single_tenant_url_form(swift: SwiftHandle, large: PutResult) -> None:
    url = single_tenant_url(swift, "images", "large.raw")
    assert url == (
        f"swift+http://test%3Atester:testing@127.0.0.1:{swift.port}/auth/v1.0/images/large.raw"
    )
    assert url == large.glance_single_tenant_uri  # what swift-put --json says


def test_single_tenant_url_is_readable(swift: SwiftHandle, large: PutResult) -> None:
    """Read form 1 the way a client must: parse like glance_store's parse_uri
    (userinfo unquoted, split at the LAST ':'; last two path segments are
    container/object; the rest is the auth address), auth, GET."""
    url = single_tenant_url(swift, "images", "large.raw", "test:tester", "testing")
    scheme, rest = url.split("://", 1)
    creds, _, hostpath = rest.rpartition("@")
    user, _, key = urllib.parse.unquote(creds).rpartition(":")
    assert (user, key) == ("test:tester", "testing")
    auth_part, container, obj = hostpath.rsplit("/", 2)
    assert scheme == "swift+http"
    assert f"http://{auth_part}" == swift.auth_url
    tok, storage_url = v1_token(swift, user, key)
    status, _, body = http_request("GET", f"{storage_url}/{container}/{obj}", {"X-Auth-Token": tok})
    assert status == 200
    assert body == LARGE


def test_key_with_special_characters_is_quoted(swift: SwiftHandle) -> None:
    url = single_tenant_url(swift, "c", "o", "acc:us er", "p@ss:w/rd")
    assert url.startswith("swift+http://acc%3Aus%20er:p%40ss%3Aw/rd@")
    # NOTE: quote() keeps '/' in the key (glance_store does the same), so a
    # reader must take the userinfo up to the LAST '@' before the host.


def test_config_url_form() -> None:
    assert config_url("ref1", "glance", "6f1c") == "swift+config://ref1/glance/6f1c"


def test_multi_tenant_url_form_and_read(swift: SwiftHandle, token: str, large: PutResult) -> None:
    url = multi_tenant_url(swift, "images", "large.raw")
    assert url == f"swift+http://127.0.0.1:{swift.port}/v1/AUTH_test/images/large.raw"
    assert url == large.glance_multi_tenant_uri
    http_url = url.removeprefix("swift+")
    assert http_url == large.url
    assert http_request("GET", http_url, {"X-Auth-Token": token})[:3:2] == (200, LARGE)
    # no credentials in the location: without a token, a private container is 401
    assert http_request("GET", http_url)[0] == 401


def test_public_container_anonymous_read(swift: SwiftHandle) -> None:
    res = put_object(swift, "public", "pub.raw", SMALL[:1000], public=True)
    status, _, body = http_request(
        "GET", multi_tenant_url(swift, "public", "pub.raw").removeprefix("swift+")
    )
    assert (status, body) == (200, SMALL[:1000])
    status, _, body = http_request("GET", res.url, {"Range": "bytes=10-19"})
    assert (status, body) == (206, SMALL[10:20])


def test_url_helpers_reject_slash_in_names(swift: SwiftHandle) -> None:
    with pytest.raises(ValueError, match="object"):
        single_tenant_url(swift, "c", "dir/o")
    with pytest.raises(ValueError, match="container"):
        multi_tenant_url(swift, "c/x", "o")


def test_put_object_from_path_keeps_file(swift: SwiftHandle, tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    res = put_object(swift, "images", "x.bin", os.fspath(p))
    assert p.read_bytes() == b"abc"
    assert res.etag == res.md5 == hashlib.md5(b"abc").hexdigest()
