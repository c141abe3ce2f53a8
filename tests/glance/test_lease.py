"""Leases of cache locations: parsing, what clients do with them, and what prune may remove."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import image_record, run_cli, write_record

from locpick._demo.origin import Origin
from locpick.config.model import Topology
from locpick.glance.images import parse_image
from locpick.glance.lease import MARKER, lease_state
from locpick.glance.locations import cache_metadata
from locpick.jobs.replicas import plan_prune
from locpick.models import ReplicaStatus, VerifyReport

IMG = "11111111-2222-3333-4444-555555555555"


def _copy(registered: object, lease: object) -> dict[str, object]:
    return {MARKER: "true", "locpick_registered": registered, "locpick_lease": lease}


def test_cache_metadata_carries_marker_topology_and_lease() -> None:
    """A registration says who made it, where, when and for how long."""
    meta = cache_metadata(Topology(zone="z1"), lease=90, now=1000.0)
    assert meta == {
        MARKER: "true",
        "zone": "z1",
        "locpick_registered": "1000.0",
        "locpick_lease": "90",
    }
    assert lease_state(meta, 1089.0).expired is None
    assert lease_state(meta, 1091.0).expired == (
        "lease-expired: lease of 90s from registration ran out 1s ago"
    )


@pytest.mark.parametrize(
    "meta",
    [
        _copy("yesterday", "60"),
        _copy("1000", "-5"),
        _copy("nan", "60"),
        _copy("1000", "inf"),
        _copy(True, "60"),
        {MARKER: "true", "locpick_lease": "60"},
    ],
)
def test_unparseable_lease_is_no_lease(meta: dict[str, object]) -> None:
    """A lease that cannot be parsed never makes a copy unusable; a note says it was ignored."""
    state = lease_state(meta, 10**10)
    assert state.expired is None
    assert state.note is not None and "unparseable" in state.note


def test_only_locpick_copies_have_leases() -> None:
    """Lease keys on a location without the marker (an operator's) are ignored."""
    meta = {"locpick_registered": "1", "locpick_lease": "1"}
    assert lease_state(meta, 10**10).expired is None
    assert lease_state({MARKER: "true"}, 10**10).expired is None  # registered before leases


def _report(statuses: dict[str, str]) -> VerifyReport:
    return VerifyReport(
        image_id="i",
        locations=tuple(ReplicaStatus(u, s) for u, s in statuses.items()),  # type: ignore[arg-type]
    )


def test_prune_removes_dead_and_expired_locpick_copies_only() -> None:
    """Expired or unreachable locpick copies go; an operator's unreachable location stays."""
    now = 10_000.0
    image = parse_image(
        image_record(
            "i",
            b"x",
            [
                "http://origin/x",
                ("http://dead-node/x", _copy("9000", "3600")),  # valid lease, but unreachable
                ("http://expired-node/x", _copy("1000", "60")),  # expired, still answers
                ("http://operator/x", {"zone": "z1"}),  # unreachable, not ours
                ("http://live-node/x", _copy("9000", "3600")),
            ],
        ),
        "i",
    )
    report = _report(
        {
            "http://origin/x": "ok",
            "http://dead-node/x": "unreachable",
            "http://expired-node/x": "ok",
            "http://operator/x": "unreachable",
            "http://live-node/x": "ok",
        }
    )
    for locpick_only in (False, True):
        remove, notes = plan_prune(image, report, now=now, locpick_only=locpick_only)
        assert [loc.url for loc in remove] == ["http://dead-node/x", "http://expired-node/x"]
        assert any("operator" in n for n in notes)
    # An operator's mismatching location goes with verify --prune, never with reap.
    bad = _report({**{r.url: r.status for r in report.locations}, "http://origin/x": "mismatch"})
    assert "http://origin/x" in [loc.url for loc in plan_prune(image, bad, now=now)[0]]
    assert "http://origin/x" not in [
        loc.url for loc in plan_prune(image, bad, now=now, locpick_only=True)[0]
    ]


def test_last_verified_copy_is_never_removed_even_when_expired() -> None:
    """An expired copy that is the only one verifying ok stays; so do the others."""
    image = parse_image(
        image_record(
            "i",
            b"x",
            ["http://origin/x", ("http://expired-node/x", _copy("1000", "60"))],
        ),
        "i",
    )
    report = _report({"http://origin/x": "unreachable", "http://expired-node/x": "ok"})
    remove, notes = plan_prune(image, report, now=10_000.0, locpick_only=True)
    assert remove == []
    assert any("last verified copy" in n for n in notes)


def test_rank_skips_expired_copy_and_notes_unparseable_lease(tmp_path: Path) -> None:
    """rank: an expired copy is unusable with reason lease-expired; a garbled lease is usable."""
    data = os.urandom(10_000)
    with Origin(data) as origin:
        now = time.time()
        locs = [
            (origin.url + "?expired", _copy(f"{now - 100:.1f}", "60")),
            (origin.url + "?garbled", _copy("soon", "60")),
            (origin.url + "?valid", _copy(f"{now:.1f}", "600")),
        ]
        meta = write_record(tmp_path / "m.json", image_record(IMG, data, locs))
        # the fleet vouches for its loopback nodes: their leases count (an unvouched copy's
        # marks, lease included, are ignored: it is an ordinary location)
        cfg = tmp_path / "fleet.toml"
        cfg.write_text('history_file = ""\n[fleet]\npeers = ["127.0.0.0/8"]\n')
        r = run_cli("rank", IMG, "--metadata", str(meta), "--json", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        rows = {s["url"].rsplit("?", 1)[1].rstrip("="): s for s in json.loads(r.stdout)}
        assert not rows["expired"]["usable"]
        assert rows["expired"]["reasons"]["error"].startswith("lease-expired: ")
        assert rows["garbled"]["usable"] and rows["valid"]["usable"]
        assert any("unparseable" in n for n in rows["garbled"]["reasons"]["notes"])
        probed = {rec.path for rec in origin.requests}
        assert not any("expired" in p for p in probed)  # never contacted
