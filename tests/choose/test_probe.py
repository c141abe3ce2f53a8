"""Issue 18 attack 2: decoy locations must not hide the honest copy.

A tenant who can add locations lists many that accept a connection and never answer, before
the one good location. Probes are bounded per host and in total; every location not probed
stays a candidate (``not-probed``) and is probed in a later round, so a download fails only
when every location was really tried or ruled out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from helpers import image_record

import locpick
from locpick._demo.blackhole import BlackHole
from locpick._demo.origin import Origin
from locpick.config.model import Config, ProbeConfig

DATA = os.urandom(300_000)


def test_forty_silent_decoys_before_the_good_location(tmp_path: Path) -> None:
    """40 listening sockets that never answer, listed first: the good origin still delivers."""
    with contextlib.ExitStack() as stack:
        decoys = [stack.enter_context(BlackHole()) for _ in range(40)]
        good = stack.enter_context(Origin(DATA))
        urls = [d.url for d in decoys] + [good.url]
        record = image_record("img", DATA, urls)
        result = locpick.download("img", tmp_path / "dest", metadata=record)
        assert good.requests, "the good origin was never asked"
        assert result.source_url == good.url
    assert result.verified == "sha512"
    assert hashlib.sha512((tmp_path / "dest").read_bytes()).hexdigest() == record["os_hash_value"]


def test_many_decoy_urls_on_few_hosts_spend_a_bounded_probe_budget(tmp_path: Path) -> None:
    """40 decoy URLs on 2 sockets: at most max_probes_per_host probes each, the good one is
    probed in the first round and delivers."""
    pc = ProbeConfig()
    with BlackHole() as a, BlackHole() as b, Origin(DATA) as good:
        urls = [f"{h.base}/decoy{i}" for i in range(20) for h in (a, b)] + [good.url]
        record = image_record("img", DATA, urls)
        # + 1: the TCP-connect latency measurement opens one connection per host:port.
        per_call = pc.max_probes_per_host + 1
        with locpick.Client(config=Config()) as client:
            ranking = client.rank("img", metadata=record)
            assert a.connections <= per_call and b.connections <= per_call
            result = client.download("img", tmp_path / "dest", metadata=record)
        assert a.connections <= 2 * per_call and b.connections <= 2 * per_call
        assert result.source_url == good.url
        good_url = good.url
    by_url = {s.url: s for s in ranking}
    assert by_url[good_url].rank == 1 and by_url[good_url].usable
    unprobed = [s for s in ranking if any(n.startswith("not-probed") for n in s.reasons.notes)]
    assert len(unprobed) == 40 - 2 * pc.max_probes_per_host
    assert all(s.usable for s in unprobed)
    # live (the good one) first, then the silent (probed, no answer), then the unmeasured
    silent = [s for s in ranking if s.reasons.probe == "silent"]
    assert len(silent) == 2 * pc.max_probes_per_host
    assert max(s.rank for s in silent) < min(s.rank for s in unprobed)


def test_not_probed_locations_are_ruled_out_only_after_their_own_probe(tmp_path: Path) -> None:
    """Only decoys: exit 3, and every decoy was really connected to (probed) before giving up."""
    with contextlib.ExitStack() as stack:
        decoys = [stack.enter_context(BlackHole()) for _ in range(20)]
        record = image_record("img", DATA, [d.url for d in decoys])
        try:
            locpick.download("img", tmp_path / "dest", metadata=record)
        except locpick.AllLocationsFailed as exc:
            error = exc
        else:
            raise AssertionError("decoys delivered an image")
        assert all(d.connections >= 1 for d in decoys)
    assert len(error.attempts) == 20
    assert not (tmp_path / "dest").exists()


def test_probe_budget_must_allow_a_probe(tmp_path: Path) -> None:
    """A budget of 0 probes would never rule anything out: it is a config error (exit 2)."""
    from helpers import run_cli, write_record

    config = tmp_path / "c.toml"
    config.write_text("[probe]\nmax_probes_per_host = 0\n")
    meta = write_record(tmp_path / "m.json", image_record("img", DATA, ["http://127.0.0.1:9/x"]))
    proc = run_cli("rank", "img", "--metadata", str(meta), "--config", str(config))
    assert proc.returncode == 2 and "max_probes_per_host" in proc.stderr
