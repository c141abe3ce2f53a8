"""Glance's S3 location forms (glance_store ``_drivers/s3.py``) against moto with auth on:
``s3://AK:SK@HOST/BUCKET/OBJ`` (plain http), ``s3+http://`` and ``s3+https://``; the
credentials come from the URL and never appear in any output."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_s3 import BUCKET, MotoS3
from helpers import image_record, run_cli, write_record

from locpick.models import Location
from locpick.s3url import parse_s3_url

DATA = os.urandom(700_000)
#: No AWS environment at all: what is used must come from the URL.
BARE = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_ENDPOINT_URL": "",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()


def _glance_url(s3: MotoS3, scheme: str, key: str, *, secret: str | None = None) -> str:
    host = urllib.parse.urlsplit(s3.endpoint).netloc
    creds = f"{urllib.parse.quote(s3.key_id)}:{urllib.parse.quote(secret or s3.secret)}"
    return f"{scheme}://{creds}@{host}/{BUCKET}/{key}"


@pytest.mark.parametrize("scheme", ["s3", "s3+http"])
def test_glance_s3_url_downloads_with_its_own_credentials(
    moto_s3: MotoS3, tmp_path: Path, scheme: str
) -> None:
    moto_s3.put("glance-form.raw", DATA)
    url = _glance_url(moto_s3, scheme, "glance-form.raw")
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    history = tmp_path / "history.json"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'history_file = "{history}"\n')
    rank = run_cli("rank", "img", "--metadata", str(meta), "--json", "--config", str(cfg), env=BARE)
    assert rank.returncode == 0, rank.stderr
    rows = json.loads(rank.stdout)
    assert rows[0]["usable"] is True, rows
    assert rows[0]["reasons"]["route"] == "direct"
    dest = tmp_path / "out.img"
    args = ("download", "img", str(dest), "--metadata", str(meta), "--json", "--verbose")
    r = run_cli(*args, "--config", str(cfg), env=BARE)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == DATA
    assert json.loads(r.stdout)["source_url"] == f"{scheme}://***@{url.rsplit('@', 1)[1]}"
    seen = rank.stdout + rank.stderr + r.stdout + r.stderr + history.read_text()
    for secret in (moto_s3.secret, urllib.parse.quote(moto_s3.secret), moto_s3.key_id):
        assert secret not in seen


def test_glance_s3_url_with_a_wrong_secret_is_refused_and_not_shown(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    moto_s3.put("glance-wrong.raw", DATA)
    wrong = "wrong/secret+value0123456789abcdefABCDEF"  # a '/' as real secret keys may hold
    url = _glance_url(moto_s3, "s3", "glance-wrong.raw", secret=wrong)
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, [url]))
    r = run_cli("download", "img", str(tmp_path / "o"), "--metadata", str(meta), env=BARE)
    assert r.returncode == 3
    assert "403" in r.stderr or "denied" in r.stderr or "Signature" in r.stderr, r.stderr
    assert wrong not in r.stderr and urllib.parse.quote(wrong) not in r.stderr
    assert "wrong/" not in r.stderr


def test_url_forms_parse_as_glance_store_means_them() -> None:
    t = parse_s3_url("s3://AKIA1:se%2Fcr%2Bet@s3.example:8080/bkt/dir/obj")
    assert (t.endpoint, t.bucket, t.key) == ("http://s3.example:8080", "bkt", "dir/obj")
    assert (t.access_key, t.secret_key) == ("AKIA1", "se/cr+et")
    t = parse_s3_url("s3+https://AKIA1:with/slash@s3.example/bkt/obj")
    assert (t.endpoint, t.secret_key) == ("https://s3.example", "with/slash")
    t = parse_s3_url("s3://bkt/dir/obj")  # no userinfo: AWS's meaning
    assert (t.endpoint, t.bucket, t.key, t.access_key) == (None, "bkt", "dir/obj", None)
    loc = Location("s3://AKIA1:with/slash@s3.example/bkt/obj")
    assert loc.display_url == "s3://***@s3.example/bkt/obj"


def test_own_endpoint_without_credentials_is_refused_by_default(tmp_path: Path) -> None:
    """``s3+http://HOST/...`` without userinfo would send the operator's keys to HOST."""
    meta = write_record(
        tmp_path / "m.json",
        image_record("img", DATA, ["s3+http://attacker.example/bkt/obj"]),
    )
    r = run_cli("rank", "img", "--metadata", str(meta), "--json", env=BARE)
    rows = json.loads(r.stdout)
    assert rows[0]["usable"] is False
    assert "location_endpoint" in rows[0]["reasons"]["error"]
