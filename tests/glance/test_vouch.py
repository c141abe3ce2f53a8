"""FleetTrust vouching (issue 24): signatures over a peer copy's metadata, the allow-list, the key
read at the edge, and the storm plan that follows from them. Pure units; the key file is real."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from locpick.choose.score import Candidate, rank
from locpick.choose.storm import arrange, prepare
from locpick.config.model import Config, FleetConfig, HerdConfig
from locpick.errors import ConfigError
from locpick.glance.lease import FILL, FILL_STARTED, LEASE, MARKER, REGISTERED
from locpick.glance.vouch import SIG, SIGNED, FleetTrust, demote, listed, signature, verify
from locpick.jobs.session import load_fleet
from locpick.models import Image, Location

KEY = b"0123456789abcdef-fleet-key"
ORIGIN = "http://origin.example/img"
URL = "http://node1.example:8080/images/img/tok"


def _meta(started: float = 1000.0, **extra: str) -> dict[str, str]:
    return {
        MARKER: "true", FILL: "filling", FILL_STARTED: f"{started}", REGISTERED: "1000.0",
        LEASE: "3600", "zone": "z1", "rack": "r1", **extra,
    }  # fmt: skip


def test_signed_metadata_verifies() -> None:
    meta = FleetTrust(key=KEY).sign("img", URL, _meta())
    assert meta[SIG].startswith("v1:") and len(meta[SIG]) == 3 + 64
    assert verify(KEY, "img", URL, meta)


@pytest.mark.parametrize("field", SIGNED)
def test_any_signed_field_changed_breaks_the_signature(field: str) -> None:
    """Marker, fill state, start, registration time, lease and topology are all covered."""
    meta = FleetTrust(key=KEY).sign("img", URL, _meta(host="h1", region="R"))
    meta[field] = meta[field] + "x"
    assert not verify(KEY, "img", URL, meta)


def test_signature_binds_image_url_and_key() -> None:
    meta = FleetTrust(key=KEY).sign("img", URL, _meta())
    assert not verify(KEY, "other", URL, meta)
    assert not verify(KEY, "img", URL + "x", meta)
    assert not verify(b"another-key-of-16-bytes", "img", URL, meta)
    assert not verify(KEY, "img", URL, {k: v for k, v in meta.items() if k != SIG})
    assert not verify(KEY, "img", URL, {**meta, SIG: "v1:" + "0" * 64})
    assert not verify(KEY, "img", URL, {**meta, SIG: 7})
    # a signature copied from another entry does not fit this one
    assert not verify(KEY, "img", URL, {**_meta(), SIG: signature(KEY, "img", URL, _meta(1.0))})


def test_unsigned_keys_may_change() -> None:
    """Keys the signature does not cover (Glance's own, e.g. a store) do not void it."""
    meta = FleetTrust(key=KEY).sign("img", URL, _meta())
    assert verify(KEY, "img", URL, {**meta, "store": "fs1"})


def test_signing_without_a_key_adds_nothing_and_replaces_a_stale_signature() -> None:
    assert SIG not in FleetTrust().sign("img", URL, {**_meta(), SIG: "v1:old"})
    assert FleetTrust(key=KEY).sign("img", URL, {**_meta(), SIG: "v1:old"})[SIG] != "v1:old"


@pytest.mark.parametrize(
    ("url", "peers", "ok"),
    [
        ("http://node1.example:8080/images/x/t", ["http://node1.example:8080"], True),
        ("http://node1.example:8080/images/x/t", ["http://node1.example"], False),
        ("http://node1.example.evil:8080/images/x", ["http://node1.example:8080"], False),
        ("https://node1.example/images/x", ["http://node1.example"], False),
        ("http://node1.example/images/x", ["http://node1.example/images/"], True),
        ("http://node1.example/other/x", ["http://node1.example/images/"], False),
        ("http://10.1.2.3:8080/images/x", ["10.1.0.0/16"], True),
        ("http://10.2.2.3:8080/images/x", ["10.1.0.0/16"], False),
        ("http://[fd00::5]:8080/images/x", ["fd00::/64"], True),
        ("http://node1.example/images/x", ["10.0.0.0/8"], False),  # names are not resolved
        ("http://user@10.1.2.3/x", ["10.1.0.0/16"], True),
        ("not a url", ["10.0.0.0/8"], False),
        ("http://10.1.2.3/x", [], False),
    ],
)
def test_allow_list(url: str, peers: list[str], ok: bool) -> None:
    assert listed(url, peers) is ok


def test_demote_strips_marks_and_claimed_place_of_unvouched_copies_only() -> None:
    fleet = FleetTrust(key=KEY)
    good = Location(URL, fleet.sign("img", URL, _meta()))
    fake = Location("http://fake.example/x", _meta())
    plain = Location(ORIGIN, {"zone": "z-origin"})
    image, demoted = demote(Image(id="img", size=10, locations=(fake, good, plain)), fleet)
    assert demoted == (fake.url,)
    assert dict(image.locations[0].metadata) == {}
    assert image.locations[1].metadata == good.metadata
    assert image.locations[2].metadata == plain.metadata
    # no fleet configured: nobody is vouched for
    _, none = demote(Image(id="img", size=10, locations=(fake, good, plain)), FleetTrust())
    assert none == (fake.url, good.url)


def _storm(fake_first: bool, fleet: FleetTrust) -> Image:
    """An unsigned fake filling copy registered first, then three signed nodes."""
    nodes = [f"http://node{i}.example/images/img/tok" for i in range(3)]
    signed = [Location(u, FleetTrust(key=KEY).sign("img", u, _meta(1000.0 + i))) for i, u in
              enumerate(nodes)]  # fmt: skip
    fake = Location("http://fake.example/images/img/tok", _meta(900.0))
    locs = (Location(ORIGIN), fake, *signed) if fake_first else (Location(ORIGIN), *signed)
    return Image(id="img", size=1 << 30, locations=locs)


@pytest.mark.parametrize("mine", [0, 1, 2, None])
def test_unsigned_fake_registered_first_is_never_a_parent(mine: int | None) -> None:
    """With the fake first in Glance's order, every node's plan is the one it would have without
    the fake: node 0 takes the origin, the others read node 0; none reads the fake, and a
    registered node does not read it even as a last resort."""
    config = Config(herd=HerdConfig(fanout=4))
    fleet = FleetTrust(key=KEY)
    url = None if mine is None else f"http://node{mine}.example/images/img/tok"
    image, p = prepare(_storm(True, fleet), config, mine=url, fleet=fleet, rng=random.Random(1))
    _, ref = prepare(_storm(False, fleet), config, mine=url, fleet=fleet, rng=random.Random(1))
    fake = "http://fake.example/images/img/tok"
    assert (p.position, p.parent, p.backups, p.origin) == (
        ref.position, ref.parent, ref.backups, ref.origin,
    )  # fmt: skip
    assert p.parent != fake and fake not in p.backups and p.suspect == (fake,)
    if mine == 0:
        assert p.parent is None and p.origin
    elif mine is not None:
        assert p.parent == "http://node0.example/images/img/tok"
    kept = {loc.url for loc in image.locations}
    if mine is not None:
        assert fake not in kept, "a node whose copy peers read must not read the fake"
    else:
        scores = arrange(rank(image, [Candidate(loc) for loc in image.locations], config), p)
        assert scores[-1].location.url == fake
        assert any("does not vouch" in n for n in scores[-1].reasons.notes)


def test_without_a_fleet_the_storm_is_off() -> None:
    """No key, no list: nobody's marks count, every node ranks as usual (reads the origin)."""
    image, p = prepare(_storm(True, FleetTrust(key=KEY)), Config(), mine=None, fleet=FleetTrust())
    assert not p.active
    assert not any(MARKER in loc.metadata for loc in image.locations)


def test_allow_listed_unsigned_peer_is_trusted() -> None:
    locs = (Location(ORIGIN), Location("http://10.0.0.5:9/images/img/t", _meta()))
    image = Image(id="img", size=1 << 30, locations=locs)
    _, p = prepare(image, Config(), mine=None, fleet=FleetTrust(peers=("10.0.0.0/24",)))
    assert p.active and p.parent == "http://10.0.0.5:9/images/img/t"


# -- the key, read at the edge ----------------------------------------------------------------
def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "fleet.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_key_file_read_stripped_and_hidden(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _key_file(tmp_path, KEY + b"\n")
    fleet = load_fleet(FleetConfig(key_file=str(path), peers=("10.0.0.0/8",)))
    assert fleet.key == KEY and fleet.peers == ("10.0.0.0/8",)
    assert KEY.decode() not in repr(fleet)
    from locpick.redact import SCRUB

    assert KEY.decode() not in SCRUB(f"oops {KEY.decode()}")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("locpick").warning("leaked %s", KEY.decode())
    assert KEY.decode() not in caplog.text


@pytest.mark.parametrize(
    ("content", "mode", "words"),
    [
        (KEY, 0o644, "chmod 600"),
        (b"short", 0o600, "shorter than 16"),
    ],
)
def test_bad_key_files_are_config_errors(
    tmp_path: Path, content: bytes, mode: int, words: str
) -> None:
    path = _key_file(tmp_path, content, mode)
    with pytest.raises(ConfigError, match=words):
        load_fleet(FleetConfig(key_file=str(path)))


def test_missing_key_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fleet.*cannot read"):
        load_fleet(FleetConfig(key_file=os.fspath(tmp_path / "nope")))


def test_peers_validated() -> None:
    with pytest.raises(ConfigError, match="neither"):
        FleetConfig(peers=("node1",))
    with pytest.raises(ConfigError, match="http"):
        FleetConfig(peers=("ftp://node1",))
