"""Hostile image metadata: every field bounded, fuzzed parser, fuzzed URLs, fuzzed CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import image_record, run_cli, write_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locpick.cli import main as cli
from locpick.config.model import Config
from locpick.errors import LocpickError, MetadataError
from locpick.glance.images import MAX_RECORD_BYTES, load_metadata, parse_image
from locpick.models import Image, Location
from locpick.redact import redact_url
from locpick.transports import Transports
from locpick.transports.base import Context

DATA = b"hostile" * 100

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: URLs that never leave the machine: hosts are loopback closed ports or forbidden networks.
safe_hosts = st.sampled_from(
    ["127.0.0.1:1", "[::1]:1", "169.254.169.254", "127.0.0.1:1@169.254.169.254", "", "[zz"]
)
safe_urls = st.builds(
    lambda scheme, user, host, path: f"{scheme}://{user}{host}/{path}",
    st.sampled_from(["http", "https", "file", "swift", "rbd", "gopher", "HTTP", "s3x"]),
    st.sampled_from(["", "user:s3cr3tpass@", "tok@", ":@"]),
    safe_hosts,
    st.text(max_size=20),
)

fields = st.sampled_from(
    ["id", "size", "checksum", "os_hash_algo", "os_hash_value", "status", "locations", "direct_url"]
)


def _valid() -> dict[str, Any]:
    return image_record("img", DATA, ["http://127.0.0.1:1/a"])


@st.composite
def hostile_records(draw: st.DrawFn) -> Any:
    """A valid record with a few fields replaced by arbitrary JSON or hostile locations."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    rec = _valid()
    for key in draw(st.lists(fields, max_size=3)):
        rec[key] = draw(json_values)
    locs = draw(
        st.lists(
            st.fixed_dictionaries(
                {"url": safe_urls | json_values},
                optional={
                    "metadata": st.dictionaries(st.text(max_size=12), json_values, max_size=5)
                },
            )
            | json_values,
            max_size=4,
        )
    )
    if locs:
        rec["locations"] = locs
    return rec


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_records())
def test_parser_never_crashes(record: Any) -> None:
    """Any JSON value gives an Image or a MetadataError, never another exception."""
    try:
        image = parse_image(record, "img")
    except MetadataError as exc:
        assert len(str(exc).splitlines()) == 1
        assert len(str(exc)) < 1000
        return
    assert isinstance(image, Image)
    for loc in image.locations:
        assert len(loc.url) <= 8192
        for key, value in loc.metadata.items():
            assert isinstance(key, str)
            assert value is None or isinstance(value, str | int | float | bool)
    for label, reason in image.rejected:
        assert len(label) <= 200 and len(f"{label}: {reason}".splitlines()) == 1


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200) | safe_urls)
def test_url_handling_never_crashes(url: str) -> None:
    """Arbitrary URL text: redaction, host parsing and the policy check never raise."""
    shown = redact_url(url)
    assert "s3cr3tpass" not in shown
    loc = Location(url=url)
    assert "s3cr3tpass" not in loc.display_url and "s3cr3tpass" not in repr(loc)
    _ = loc.host
    transports = Transports(Context(Config()))
    image = parse_image(_valid(), "img")
    try:
        transport = transports.for_location(loc)
        reason = transport.check(loc, image)
    except LocpickError:
        return
    assert reason is None or isinstance(reason, str)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(record=hostile_records(), command=st.sampled_from(["rank", "verify", "download"]))
def test_cli_fuzz_exit_codes(
    record: Any, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI on hostile metadata: exit 0/2/3, no traceback, every error line prefixed."""
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(record))
    dest = tmp_path / "out.img"
    argv = [command, "img"] + ([str(dest)] if command == "download" else [])
    argv += ["--metadata", str(meta), "--json"]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2, 3), (code, err)
    assert "Traceback" not in err and "locpick: internal error" not in err
    if command == "verify" and code == 3:
        assert json.loads(out)["locations"]  # the report says which replica is not ok
    elif code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and all(line.startswith("locpick:") for line in lines), err
    assert "s3cr3tpass" not in out + err
    assert not dest.exists() or code == 0
    assert not [p for p in tmp_path.iterdir() if "locpick-tmp" in p.name]


def test_cli_fuzz_subprocess_examples(tmp_path: Path) -> None:
    """A few hostile records through the real ``python -m locpick``: exit 2, one line, no trace."""
    cases: list[Any] = [
        [],
        {"id": "img", "size": -1},
        {"id": "img", "size": 1 << 60},
        {"id": "img", "size": 10, "os_hash_algo": "sha512", "os_hash_value": "zz"},
        {"id": "img", "size": 10, "checksum": "0" * 31},
        {"id": "img", "size": 10, "os_hash_algo": "crc32", "os_hash_value": "00000000"},
        {"id": "img" * 200},
        {"id": "img", "status": "x" * 1000},
    ]
    for i, rec in enumerate(cases):
        meta = write_record(tmp_path / f"m{i}.json", rec)
        r = run_cli("rank", "img", "--metadata", str(meta))
        assert r.returncode == 2, (rec, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("locpick: error:")


def test_deeply_nested_json_is_bad_input(tmp_path: Path) -> None:
    """A record nested 100000 deep is refused as bad JSON, not a RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MetadataError, match="nested too deeply"):
        load_metadata(path, "img")


def test_nan_and_oversized_records_refused(tmp_path: Path) -> None:
    """NaN is not JSON; a record bigger than the cap is not read whole."""
    nan = tmp_path / "nan.json"
    nan.write_text('{"id": "img", "size": NaN}')
    with pytest.raises(MetadataError, match="not valid JSON"):
        load_metadata(nan, "img")
    big = tmp_path / "big.json"
    with big.open("wb") as fh:
        fh.truncate(MAX_RECORD_BYTES + 10)
    with pytest.raises(MetadataError, match="larger than"):
        load_metadata(big, "img")


def test_metadata_from_device_is_bounded() -> None:
    """``--metadata /dev/zero`` ends with a one-line error instead of reading forever."""
    with pytest.raises(MetadataError):
        load_metadata("/dev/zero", "img")


def test_metadata_values_are_short_strings() -> None:
    """Known keys must be strings; long values and too many keys reject the location only."""
    rec = _valid()
    rec["locations"] = [
        {"url": "http://127.0.0.1:1/a", "metadata": {"zone": {"nested": 1}}},
        {"url": "http://127.0.0.1:1/b", "metadata": {"store": "x" * 5000}},
        {"url": "http://127.0.0.1:1/c", "metadata": {f"k{i}": "v" for i in range(100)}},
        {"url": "http://127.0.0.1:1/d", "metadata": {"zone": "az1", "extra": [1, 2], "n": 3}},
    ]
    image = parse_image(rec, "img")
    assert [loc.url for loc in image.locations] == ["http://127.0.0.1:1/d"]
    assert image.locations[0].metadata == {"zone": "az1", "n": 3}
    reasons = [why for _url, why in image.rejected]
    assert len(reasons) == 3
    assert "must be a string" in reasons[0]
    assert "longer than" in reasons[1]
    assert "more than 64 keys" in reasons[2]


def test_max_locations_is_configurable(tmp_path: Path) -> None:
    """``[security] max_locations`` bounds the locations considered; the rest are one row."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[security]\nmax_locations = 3\n")
    rec = image_record("img", DATA, [f"http://127.0.0.1:1/{i}" for i in range(4)])
    meta = write_record(tmp_path / "m.json", rec)
    r = run_cli("rank", "img", "--metadata", str(meta), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "1 more locations beyond the limit of 3" in r.stdout


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('forbid_networks = ["not-a-net"]', "is not a network"),
        ("file_mode = 0o4755", "file_mode"),
        ("max_redirects = 1000", "max_redirects"),
    ],
)
def test_bad_security_config_is_exit_2(tmp_path: Path, toml: str, needle: str) -> None:
    """A bad [security] setting is a config error (exit 2), not a crash later."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[security]\n{toml}\n")
    meta = write_record(tmp_path / "m.json", _valid())
    r = run_cli("rank", "img", "--metadata", str(meta), "--config", str(cfg))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_unreachable_glance_is_a_contract_exit_code() -> None:
    """A Glance endpoint that cannot be reached ends with exit 3 and one line, never 1."""
    r = run_cli("rank", "img", "--glance-url", "http://127.0.0.1:1", "--token", "tok-abcdef-123")
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("locpick: error: glance http://127.0.0.1:1")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "tok-abcdef-123" not in r.stderr


def test_error_messages_stay_short_and_on_one_line() -> None:
    """A megabyte-long or multi-line hostile value is shown shortened and escaped."""
    for rec in (
        {"id": "img", "size": "9" * 1_000_000},
        {"id": "img", "size": ["\n"] * 1000},
        {"id": "img\u2028\x1e" + "x" * 10_000},
    ):
        with pytest.raises(MetadataError) as info:
            parse_image(rec, "img")
        assert len(str(info.value)) < 400
        assert len(str(info.value).splitlines()) == 1


def test_urls_with_line_separators_rejected() -> None:
    """Unicode line separators and NEL cannot sneak a second line into the output via a URL."""
    rec = _valid()
    rec["locations"] = [{"url": f"http://127.0.0.1:1/a{sep}b"} for sep in ("\u2028", "\x85", " ")]
    image = parse_image(rec, "img")
    assert image.locations == ()
    assert all("whitespace or control" in why for _u, why in image.rejected)
    assert all(len(label.splitlines()) == 1 for label, _w in image.rejected)
