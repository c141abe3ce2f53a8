"""Operators' metrics: /metrics of a real `locpick serve`, and `download --metrics-file`."""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path

import pytest
from fixtures_cache import ServeProcess
from helpers import image_record, run_cli, write_record
from prometheus_client.parser import text_string_to_metric_families

from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.cache.store import NodeCache
from locpick.report import DownloadReport, SourceUse
from locpick.serve.metrics import ServeMetrics, download_exposition, write_textfile

IMG = "0c0c0c0c-1111-2222-3333-444444444444"


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text document, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape(proc: ServeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(proc.port, "/metrics")
    assert status == 200
    return _samples(body.decode())


def _v(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def _download(tmp_path: Path, dest: str, meta: Path, *extra: str) -> dict[str, object]:
    r = run_cli(
        "download", IMG, str(tmp_path / dest), "--metadata", str(meta),
        "--cache-dir", str(tmp_path / "cache"), "--json", *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def test_serve_metrics_move_with_downloads_serving_and_eviction(tmp_path: Path) -> None:
    """Scraped and parsed: cache, hit/miss, served requests/bytes and evictions all move."""
    data = os.urandom(700_000)
    NodeCache(tmp_path / "cache")
    with Origin(data) as origin, ServeProcess(tmp_path / "cache") as proc:
        meta = write_record(tmp_path / "m.json", image_record(IMG, data, [origin.url]))
        m = _scrape(proc)
        assert _v(m, "locpick_cache_entries") == 0
        assert _v(m, "locpick_cache_misses_total") == 0

        _download(tmp_path, "a", meta)
        m = _scrape(proc)
        assert _v(m, "locpick_cache_entries") == 1
        assert _v(m, "locpick_cache_bytes") == len(data)
        assert _v(m, "locpick_cache_misses_total") == 1
        assert _v(m, "locpick_cache_downloads_ok_total") == 1
        assert _v(m, "locpick_cache_registered", image=IMG) == 0

        assert _download(tmp_path, "b", meta)["method"] == "cache"
        assert _v(_scrape(proc), "locpick_cache_hits_total") == 1

        cache = NodeCache(tmp_path / "cache")
        path = f"/images/{IMG}/{cache.token(IMG)}"
        assert _get(proc.port, path)[0] == 200
        assert _get(proc.port, path, {"Range": "bytes=100-1099"})[0] == 206
        assert _get(proc.port, f"/images/not-cached/{cache.token('not-cached')}")[0] == 404
        assert _get(proc.port, f"/images/{IMG}")[0] == 403  # no capability token
        m = _scrape(proc)
        assert _v(m, "locpick_serve_requests_total", image=IMG, status="200") == 1
        assert _v(m, "locpick_serve_bytes_total", image=IMG, status="200") == len(data)
        assert _v(m, "locpick_serve_requests_total", image=IMG, status="206") == 1
        assert _v(m, "locpick_serve_bytes_total", image=IMG, status="206") == 1000
        assert _v(m, "locpick_serve_requests_total", image="-", status="404") == 1
        assert _v(m, "locpick_serve_requests_total", image="-", status="403") == 1
        assert cache.token(IMG).encode() not in _get(proc.port, "/metrics")[1]
        assert _v(m, "locpick_serve_active_clients") == 0
        assert _v(m, "locpick_serve_refused_total", reason="busy") == 0
        assert not any(labels and ("image", "not-cached") in labels for _n, labels in m)

        cache.set_registered(IMG, "http://node-7:8470/images/" + IMG)
        assert _v(_scrape(proc), "locpick_cache_registered", image=IMG) == 1
        cache.set_registered(IMG, None)

        r = run_cli("cache", "evict", IMG, "--cache-dir", str(tmp_path / "cache"))
        assert r.returncode == 0, r.stderr
        m = _scrape(proc)
        assert _v(m, "locpick_cache_evictions_total") == 1
        assert _v(m, "locpick_cache_entries") == 0
        # Bounded cardinality: an evicted image's series are gone.
        assert not any(("image", IMG) in labels for _n, labels in m)


def test_serve_metrics_can_be_switched_off(tmp_path: Path) -> None:
    """--no-metrics --no-status: both paths answer 404, images are still served."""
    cache = NodeCache(tmp_path / "cache")
    with ServeProcess(cache.dir, extra=("--no-metrics", "--no-status")) as proc:
        assert _get(proc.port, "/metrics")[0] == 404
        assert _get(proc.port, "/status")[0] == 404


def test_fleet_and_busy_hooks_are_exported_per_app(tmp_path: Path) -> None:
    """refused/lease/renewal/filling show up, in each app's own registry only."""
    cache = NodeCache(tmp_path / "cache")
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    from locpick.glance.images import parse_image

    cache.add_file(parse_image(image_record(IMG, b"x" * 1000, []), IMG), src)
    a, b = ServeMetrics(cache), ServeMetrics(cache)
    a.refused("busy")
    a.refused("busy")
    a.lease(IMG, 2_000_000_000.0)
    a.lease("not-cached", 2_000_000_000.0)
    a.renewal(ok=True)
    a.renewal(ok=False)
    a.filling("new-image", 300, 1000)
    m = _samples(a.exposition().decode())
    assert _v(m, "locpick_serve_refused_total", reason="busy") == 2
    assert _v(m, "locpick_cache_lease_expiry_timestamp_seconds", image=IMG) == 2e9
    assert ("locpick_cache_lease_expiry_timestamp_seconds", (("image", "not-cached"),)) not in m
    assert _v(m, "locpick_cache_lease_renewals_total", result="ok") == 1
    assert _v(m, "locpick_cache_lease_renewals_total", result="failed") == 1
    assert _v(m, "locpick_cache_filling_bytes", image="new-image") == 300
    assert _v(m, "locpick_cache_filling") == 1
    other = _samples(b.exposition().decode())
    assert _v(other, "locpick_serve_refused_total", reason="busy") == 0
    a.filled("new-image")
    assert _v(_samples(a.exposition().decode()), "locpick_cache_filling") == 0


def test_fill_records_in_the_cache_dir_show_as_filling(tmp_path: Path) -> None:
    """A live fillstate record (a downloader writing a copy) is a copy being filled."""
    from locpick.cache.fill.writer import FillWriter

    cache = NodeCache(tmp_path / "cache")
    metrics = ServeMetrics(cache)
    with FillWriter.create(cache.images / "filling-1.fill", 4 << 20) as writer:
        writer.mark(0, 1 << 20)
        m = _samples(metrics.exposition().decode())
        assert _v(m, "locpick_cache_filling") == 1
        assert _v(m, "locpick_cache_filling_bytes", image="filling-1") == 1 << 20
        (fill,) = metrics.fills()
        assert (fill.done, fill.total) == (1 << 20, 4 << 20) and "gone" not in (fill.source or "")
    assert _v(_samples(metrics.exposition().decode()), "locpick_cache_filling") == 0


def test_metrics_file_reports_sources_probe_and_verify_failures(tmp_path: Path) -> None:
    """The textfile and --json carry method, result, chosen host, bytes per source, failures."""
    data = os.urandom(400_000)
    liar_faults = Faults(corrupt_at=[1234])
    honest_faults = Faults(first_byte_delay=0.3)  # ranks the liar first, on latency
    with Origin(data, faults=liar_faults) as liar, Origin(data, faults=honest_faults) as honest:
        liar_url, honest_url = liar.url.replace("127.0.0.1", "localhost"), honest.url
        record = image_record(IMG, data, [liar_url, honest_url, "http://127.0.0.2:1/img.raw"])
        meta = write_record(tmp_path / "m.json", record)
        prom = tmp_path / "dl.prom"
        r = run_cli(
            "download", IMG, str(tmp_path / "out"), "--metadata", str(meta),
            "--metrics-file", str(prom), "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    m = _samples(prom.read_text())
    assert _v(m, "locpick_download_success") == 1
    assert _v(m, "locpick_download_exit_code") == 0
    assert _v(m, "locpick_download_bytes") == len(data)
    assert _v(m, "locpick_download_duration_seconds") > 0
    info = {labels: v for (n, labels), v in m.items() if n == "locpick_download_info"}
    assert info == {
        (("image", IMG), ("method", "download"), ("result", "ok"), ("source_host", "127.0.0.1")): 1
    }
    assert _v(m, "locpick_download_verify_failures") == 1
    assert _v(m, "locpick_download_source_bytes", host="localhost") == len(data)
    assert _v(m, "locpick_download_source_bytes", host="127.0.0.1") == len(data)
    assert _v(m, "locpick_download_sources") == 2
    # the refused copy: a failed probe, or (when the engine probes by downloading) a failed
    # first request, reported as such
    refused = [a for a in doc["attempts"] if a["url"].startswith("http://127.0.0.2:1/")]
    probe_failed = _v(m, "locpick_download_probe_failures", host="127.0.0.2") == 1
    assert probe_failed or (refused and refused[0]["outcome"] == "failed"), doc["attempts"]
    # The same facts in --json, beside the contract's keys.
    assert doc["method"] == "download" and doc["verified"] == "sha512"
    assert doc["chosen_host"] == "127.0.0.1" and doc["verify_failures"] == 1
    assert doc["probe_failures"] in ({"127.0.0.2": 1}, {})
    assert honest_url in {s["url"] for s in doc["sources"]}
    assert "failed attempt" in doc["reason"]


def test_metrics_file_of_a_failed_download(tmp_path: Path) -> None:
    """Nothing delivered: success 0, exit code 3, result failed; a bad path is exit 2 up front."""
    data = os.urandom(10_000)
    meta = write_record(
        tmp_path / "m.json", image_record(IMG, data, ["http://127.0.0.2:1/img.raw"])
    )
    prom = tmp_path / "dl.prom"
    r = run_cli("download", IMG, str(tmp_path / "out"), "--metadata", str(meta),
                "--metrics-file", str(prom))  # fmt: skip
    assert r.returncode == 3
    m = _samples(prom.read_text())
    assert _v(m, "locpick_download_success") == 0
    assert _v(m, "locpick_download_exit_code") == 3
    assert any(n == "locpick_download_info" and ("result", "failed") in lab for n, lab in m)
    bad = run_cli("download", IMG, str(tmp_path / "out"), "--metadata", str(meta),
                  "--metrics-file", str(tmp_path / "no" / "dir.prom"))  # fmt: skip
    assert bad.returncode == 2 and "--metrics-file" in bad.stderr
    assert not (tmp_path / "out").exists()


def _report(n_sources: int) -> DownloadReport:
    return DownloadReport(
        image_id=IMG,
        started_at=1e9,
        seconds=1.5,
        result="ok",
        exit_code=0,
        method="download",
        bytes=n_sources,
        chosen_host="h0",
        sources=tuple(SourceUse(f"http://h{i}/x", f"h{i}", i) for i in range(n_sources)),
    )


def test_metrics_file_is_replaced_atomically_under_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten sees only whole documents."""
    path = tmp_path / "dl.prom"
    bodies = {download_exposition(_report(n)) for n in (1, 3000)}
    write_textfile(str(path), _report(1))
    stop = threading.Event()
    seen: list[bytes] = []
    bad: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            body = path.read_bytes()
            (seen if body in bodies else bad).append(body)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            write_textfile(str(path), _report(3000 if i % 2 else 1))
    finally:
        stop.set()
        t.join()
    assert bad == [] and len(seen) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["dl.prom"]
    families = {f.name for f in text_string_to_metric_families(path.read_text())}
    assert "locpick_download_source_bytes" in families


def test_log_format_json_one_object_per_line_without_secrets(tmp_path: Path) -> None:
    """-v --log-format json: every stderr line is JSON; the download event has its fields."""
    data = os.urandom(50_000)
    secret = "s3cr3t-Pa55word"
    with Origin(data) as origin:
        url = origin.url.replace("http://", f"http://alice:{secret}@")
        meta = write_record(tmp_path / "m.json", image_record(IMG, data, [url]))
        r = run_cli("download", IMG, str(tmp_path / "out"), "--metadata", str(meta),
                    "-v", "--log-format", "json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    assert lines and all({"time", "level", "event"} <= set(d) for d in lines)
    done = [d for d in lines if d["event"] == "download"]
    assert len(done) == 1
    assert done[0]["image"] == IMG and done[0]["host"] == "127.0.0.1"
    assert done[0]["bytes"] == len(data) and done[0]["seconds"] > 0
    assert secret not in r.stderr


@pytest.mark.parametrize("value", ["json", "text"])
def test_log_format_choices(tmp_path: Path, value: str) -> None:
    """text and json are accepted and shape the log lines; an unknown format is a usage error
    (exit 2) that names the option, before anything runs."""
    data = os.urandom(20_000)
    with Origin(data) as origin:
        meta = write_record(tmp_path / "m.json", image_record(IMG, data, [origin.url]))
        r = run_cli("download", IMG, str(tmp_path / "out"), "--metadata", str(meta),
                    "-v", "--log-format", value)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append(None)
    if value == "json":
        assert all(isinstance(doc, dict) for doc in parsed), r.stderr
    else:
        assert all(doc is None for doc in parsed), r.stderr
        assert all(line.startswith("locpick: ") for line in lines), r.stderr
    bad = run_cli("rank", IMG, "--metadata", str(meta), "--log-format", "xml")
    assert bad.returncode == 2 and "--log-format" in bad.stderr and "xml" in bad.stderr


def test_busy_clients_are_refused_with_503_and_counted(tmp_path: Path) -> None:
    """Over [serve] max_clients: 503 with Retry-After, and locpick_serve_refused_total counts it."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from locpick.config.model import ServeConfig
    from locpick.glance.images import parse_image
    from locpick.serve.ops import OPS
    from locpick.serve.server import make_app

    cache = NodeCache(tmp_path / "cache")
    data = os.urandom(2_000_000)
    src = tmp_path / "src"
    src.write_bytes(data)
    cache.add_file(parse_image(image_record(IMG, data, []), IMG), src)
    path = f"/images/{IMG}/{cache.token(IMG)}"

    async def scenario() -> tuple[int, str | None, str]:
        # One transfer at a time, paced (~20 s for the whole image): the held one stays busy.
        app = make_app(cache, ServeConfig(max_clients=1, max_rate=100_000, retry_after=7))
        assert isinstance(app, web.Application)
        app[OPS].metrics.renewal(ok=False)  # how code running beside the app reports
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(base + path) as held:
                    assert held.status == 200
                    await held.content.readexactly(1000)  # started, and still going
                    async with http.get(base + path) as r:
                        status, retry = r.status, r.headers.get("Retry-After")
                async with http.get(f"{base}/metrics") as r:
                    text = await r.text()
        finally:
            await runner.cleanup()
        return status, retry, text

    status, retry, text = asyncio.run(scenario())
    assert status == 503 and retry == "7"
    m = _samples(text)
    assert _v(m, "locpick_serve_refused_total", reason="busy") == 1
    assert _v(m, "locpick_serve_requests_total", image="-", status="503") == 1
    assert _v(m, "locpick_cache_lease_renewals_total", result="failed") == 1


def test_a_client_that_leaves_mid_transfer_counts_as_aborted(tmp_path: Path) -> None:
    """Active while held, then status="aborted" for the image once the client hangs up."""
    import socket
    import time

    from locpick.glance.images import parse_image

    cache = NodeCache(tmp_path / "cache")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(48 << 20))
    cache.add_file(parse_image(image_record(IMG, big.read_bytes(), []), IMG), big)
    with ServeProcess(cache.dir) as proc:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", proc.port))
        path = f"/images/{IMG}/{cache.token(IMG)}"
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 60  # a safety net, not a performance limit
        while _v(_scrape(proc), "locpick_serve_active_clients") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST: the server's send fails
        while (
            _v(m := _scrape(proc), "locpick_serve_requests_total", image=IMG, status="aborted") != 1
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _v(m, "locpick_serve_active_clients") == 0
        assert _v(m, "locpick_serve_requests_total", image=IMG, status="200") == 0


def test_metrics_file_without_prometheus_client_names_the_extra(tmp_path: Path) -> None:
    """No prometheus-client installed: exit 2 naming locpick[metrics], before any transfer."""
    import subprocess
    import sys

    from helpers import cli_env

    meta = write_record(tmp_path / "m.json", image_record(IMG, b"z" * 100, ["http://x/y"]))
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from locpick.cli.main import main\n"
        f"sys.exit(main(['download', {IMG!r}, {str(tmp_path / 'out')!r}, '--metadata', "
        f"{str(meta)!r}, '--metrics-file', {str(tmp_path / 'x.prom')!r}]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert r.returncode == 2, r.stderr
    assert "pip install 'locpick[metrics]'" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.prom").exists()
