"""Validation of Glance-v2-shaped image records (pure parsing)."""

from __future__ import annotations

import json

import pytest
from helpers import image_record, run_cli

from locpick.errors import MetadataError
from locpick.glance.images import load_metadata, parse_image

DATA = b"x" * 1000


def test_parses_a_valid_record() -> None:
    """Hashes are kept lower-case, locations in order, direct_url ignored when locations exist."""
    rec = image_record(
        "img",
        DATA,
        ["http://127.0.0.1:1/a", ("file:///m/a", {"id": "fs"})],
        direct_url="http://127.0.0.1:1/a",
    )
    image = parse_image(rec, "img")
    assert image.size == 1000
    assert image.os_hash_algo == "sha512"
    assert [loc.url for loc in image.locations] == ["http://127.0.0.1:1/a", "file:///m/a"]
    assert image.locations[1].metadata["id"] == "fs"


def test_direct_url_used_when_locations_hidden() -> None:
    """Deployments that hide locations still expose direct_url."""
    rec = image_record("img", DATA, [])
    del rec["locations"]
    rec["direct_url"] = "http://127.0.0.1:1/d"
    image = parse_image(rec, "img")
    assert [(loc.url, loc.kind) for loc in image.locations] == [
        ("http://127.0.0.1:1/d", "direct_url")
    ]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r.update(id="other"), "not 'img'"),
        (lambda r: r.update(size="10"), "'size' must be an integer"),
        (lambda r: r.update(size=True), "'size' must be an integer"),
        (lambda r: r.update(size=-1), "out of range"),
        (lambda r: r.update(os_hash_value="abc"), "128-digit hex sha512"),
        (lambda r: r.update(os_hash_algo="rot13"), "not supported"),
        (lambda r: r.update(checksum="zz" * 16), "md5"),
        (lambda r: r.update(locations="http://x"), "'locations' must be a list"),
        (lambda r: r.update(checksum=12), "'checksum' must be a string"),
    ],
)
def test_malformed_records_are_refused(mutate, needle) -> None:  # type: ignore[no-untyped-def]
    """Each malformed field is a MetadataError that says which field and why."""
    rec = image_record("img", DATA, ["http://127.0.0.1:1/a"])
    mutate(rec)
    with pytest.raises(MetadataError, match=needle):
        parse_image(rec, "img")


def test_bad_location_is_rejected_not_fatal() -> None:
    """One unparseable URL is listed as rejected; the others are kept."""
    rec = image_record(
        "img", DATA, ["http://[::1/broken", "http://127.0.0.1:1/ok", "no-scheme-here"]
    )
    rec["locations"].append({"url": 5})
    image = parse_image(rec, "img")
    assert [loc.url for loc in image.locations] == ["http://127.0.0.1:1/ok"]
    reasons = dict(image.rejected)
    assert "unparseable URL" in reasons["http://[::1/broken"]
    assert "no scheme" in reasons["no-scheme-here"]
    assert len(image.rejected) == 3


def test_unreadable_and_invalid_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A missing file and a non-JSON file are MetadataErrors naming the file."""
    with pytest.raises(MetadataError, match="cannot read"):
        load_metadata(tmp_path / "nope.json", "img")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        load_metadata(bad, "img")


def test_locations_beyond_the_limit_are_one_rejected_row() -> None:
    """The locations considered are bounded (hostile records), but the record still parses."""
    rec = image_record("img", DATA, [f"http://127.0.0.1:1/{i}" for i in range(11)])
    image = parse_image(rec, "img", max_locations=10)
    assert len(image.locations) == 10
    assert image.rejected == (
        (
            "locations[10:]",
            "1 more locations beyond the limit of 10 ([security] max_locations): not considered",
        ),
    )


@pytest.mark.parametrize("content", ["{", "[]", json.dumps({"id": "other", "size": 1})])
def test_cli_malformed_metadata_exits_2(tmp_path, content) -> None:  # type: ignore[no-untyped-def]
    """The CLI turns malformed metadata into exit 2 with one line on stderr; dest untouched."""
    meta = tmp_path / "m.json"
    meta.write_text(content)
    dest = tmp_path / "dest.img"
    dest.write_bytes(b"old")
    proc = run_cli("download", "img", str(dest), "--metadata", str(meta))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "locpick: error:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.img", "m.json"]


def test_cli_no_hash_needs_allow_unverified(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An image without any hash is refused (exit 2) naming --allow-unverified."""
    rec = image_record("img", DATA, ["http://127.0.0.1:9/a"])
    rec.update(checksum=None, os_hash_algo=None, os_hash_value=None)
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(rec))
    proc = run_cli("download", "img", str(tmp_path / "d"), "--metadata", str(meta))
    assert proc.returncode == 2
    assert "--allow-unverified" in proc.stderr
