"""The deployment samples: the systemd unit verifies; the Prometheus files parse and match."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import ROOT, require_tool
from prometheus_client.parser import text_string_to_metric_families

from locpick.cache.store import NodeCache
from locpick.report import DownloadReport
from locpick.serve.metrics import ServeMetrics, download_exposition

UNIT = ROOT / "examples" / "systemd" / "locpick-serve.service"
PROM = ROOT / "examples" / "prometheus"
IMG = "1d1d1d1d-0000-1111-2222-333333333333"


def test_systemd_unit_verifies_cleanly_and_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints nothing (a misspelt key would be reported)."""
    text = UNIT.read_text()
    for setting in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/locpick/cache",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ):
        assert setting in text, setting
    analyze = require_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's binary exists: point it at this interpreter's locpick.
    local = tmp_path / UNIT.name
    exe = str(Path(sys.executable).parent / "locpick")
    local.write_text(text.replace("/usr/local/bin/locpick", exe))
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_systemd_prefetch_timer_and_service_verify_and_parse(
    tmp_path: Path,
) -> None:
    """The prefetch timer and its service verify cleanly; the service's command line parses
    (a dry parse of its ExecStart: a flag renamed would fail here)."""
    service = (UNIT.parent / "locpick-prefetch.service").read_text()
    timer = (UNIT.parent / "locpick-prefetch.timer").read_text()
    assert "DynamicUser=yes" in service and "User=locpick-serve" in service
    assert "ReadWritePaths=/var/lib/locpick/cache" in service
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer
    (line,) = [x for x in service.splitlines() if x.startswith("ExecStart=")]
    argv = line.removeprefix("ExecStart=").split()[1:]
    from locpick.cli.args import build_parser

    args = build_parser().parse_args(argv)
    assert (args.command, args.action, args.tag, args.register) == (
        "cache",
        "prefetch",
        ["prefetch"],
        True,
    )
    analyze = require_tool("systemd-analyze", "systemd")
    exe = str(Path(sys.executable).parent / "locpick")
    for name, text in (
        ("locpick-prefetch.service", service),
        ("locpick-prefetch.timer", timer),
    ):
        (tmp_path / name).write_text(text.replace("/usr/local/bin/locpick", exe))
    r = subprocess.run(
        [analyze, "verify", str(tmp_path / "locpick-prefetch.timer")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_prometheus_samples_name_metrics_locpick_exposes(tmp_path: Path) -> None:
    """The scrape config and rules are valid YAML and refer only to real metric names."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert {j["job_name"] for j in config["scrape_configs"]} >= {"locpick-serve"}
    rules = yaml.safe_load((PROM / "locpick-alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"LocpickCacheNodeDown", "LocpickVerificationFailures"}
    cache = NodeCache(tmp_path / "cache")
    exposed = {
        s.name
        for text in (
            ServeMetrics(cache).exposition().decode(),
            download_exposition(DownloadReport(IMG, 0.0, 1.0, "ok", 0)).decode(),
        )
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    named = re.findall(r"locpick_[a-z_]+", alerts["LocpickVerificationFailures"])
    assert len(named) == 2 and set(named) <= exposed, (named, exposed)
    promtool = shutil.which("promtool")
    if promtool is not None:
        r = subprocess.run(
            [promtool, "check", "rules", str(PROM / "locpick-alerts.yml")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
