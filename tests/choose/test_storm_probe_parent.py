"""A storm parent is probed before it is trusted (issue 24): a vouched-for parent that accepts
and never answers (:class:`~locpick._demo.blackhole.BlackHole`) is ruled out by its probe and
never read, so it costs the probe deadline, not a first-byte timeout. Real CLI, real sockets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from locpick._demo.blackhole import BlackHole
from locpick._demo.origin import Origin
from locpick.glance.lease import FILL, FILL_STARTED, MARKER
from tests.helpers import image_record, run_cli, write_record

DATA = os.urandom(1 << 20)


def test_a_silent_vouched_parent_is_probed_and_never_read(tmp_path: Path) -> None:
    with Origin(DATA) as origin, BlackHole() as hole:
        meta = {MARKER: "true", FILL: "filling", FILL_STARTED: "1000.0"}
        record = image_record("img", DATA, [origin.url, (hole.url, meta)])
        path = write_record(tmp_path / "m.json", record)
        (tmp_path / "c.toml").write_text(
            'history_file = ""\n[fleet]\npeers = ["127.0.0.0/8"]\n'
            "[transfer]\nfirst_byte_timeout = 60\n"
        )
        dest = tmp_path / "img.raw"
        proc = run_cli("download", "img", str(dest), "--metadata", str(path), "--json",
                       "--config", str(tmp_path / "c.toml"))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert dest.read_bytes() == DATA and doc["source_url"] == origin.url
        assert hole.connections >= 1, "the parent was not even probed: nothing was tested"
        tried = [a for a in doc["attempts"] if a["url"] == hole.url]
        assert [a["outcome"] for a in tried] == ["skipped"], tried
        assert "probe deadline" in tried[0]["error"], tried
