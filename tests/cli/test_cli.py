"""The ``locpick`` command's JSON output against real loopback origins: the contract's keys,
plus only the documented extensions."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import image_record, run_cli, write_record

from locpick._demo.origin import Origin

DATA = os.urandom(4 * 1024 * 1024 + 123)


def test_cli_download_json_contract(tmp_path: Path) -> None:
    """--json prints the contract's keys, plus only the documented extensions."""
    with Origin(DATA) as good:
        meta = write_record(tmp_path / "m.json", image_record("img", DATA, [good.url]))
        proc = run_cli("download", "img", str(tmp_path / "out"), "--metadata", str(meta), "--json")
        good_url = good.url
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {
        "image_id",
        "dest",
        "source_url",
        "method",
        "bytes",
        "seconds",
        "verified",
        "attempts",
    } | {"chosen_host", "reason", "sources", "probe_failures", "verify_failures"}
    assert doc["method"] == "download" and doc["verified"] == "sha512"
    assert [(s["url"], s["bytes"]) for s in doc["sources"]] == [(good_url, len(DATA))]
    assert doc["bytes"] == len(DATA)
    assert set(doc["attempts"][0]) == {"url", "outcome", "error", "bytes"}


def test_cli_rank_json_contract(tmp_path: Path) -> None:
    """rank --json: a list best first with the contract's keys; refused ones say why."""
    with Origin(DATA) as good:
        meta = write_record(
            tmp_path / "m.json", image_record("img", DATA, [good.url, "file:///etc/passwd"])
        )
        proc = run_cli("rank", "img", "--metadata", str(meta), "--json")
        good_url = good.url
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["url"] == good_url and rows[0]["usable"] is True
    # The contract's keys (extended by the scoring issue with icmp_ms, connect_ms, policy, notes).
    assert set(rows[0]["reasons"]) >= {
        "latency_ms",
        "throughput_bps",
        "topology",
        "shared_fs",
        "history",
        "error",
    }
    assert rows[1]["usable"] is False
    assert "not-on-configured-filesystem" in rows[1]["reasons"]["error"]
