"""/status of a real `locpick serve`, opened in headless Chromium (Playwright, Debian's build)."""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_cache import ServeProcess
from helpers import ROOT, image_record, require_tool, run_cli, write_record
from playwright.sync_api import Browser, sync_playwright

from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.cache.fill.writer import FillWriter
from locpick.cache.store import NodeCache
from locpick.glance.images import parse_image

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IMG = "5ca1ab1e-0000-1111-2222-333333333333"
BIG = "b16b16b1-0000-1111-2222-333333333333"
HOSTILE = "<script>alert(1)</script>"
#: Written there with LOCPICK_SCREENSHOTS=1 (for the README), else into the test's tmp dir.
SCREENSHOT = ROOT / "benchmarks" / "results" / "status.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_tool("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _download(tmp_path: Path, image_id: str, data: bytes, urls: list[str], dest: str) -> int:
    meta = write_record(tmp_path / f"{dest}.json", image_record(image_id, data, urls))
    r = run_cli("download", image_id, str(tmp_path / dest), "--metadata", str(meta),
                "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    return r.returncode


def _hold_a_transfer(port: int, cache: NodeCache, image_id: str) -> socket.socket:
    """A client that asks for a large image and does not read: it stays 'being served'."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    path = f"/images/{image_id}/{cache.token(image_id)}"
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def _status_text(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/status")
    return conn.getresponse().read().decode()


def test_status_page_renders_escapes_and_has_no_console_errors(
    tmp_path: Path, browser: Browser
) -> None:
    """Cached image listed, hostile name shown as text, SVG per download, no script, no errors."""
    data = os.urandom(1_500_000)
    liar = Faults(bandwidth=3e6, corrupt_at=[1_000_000])
    honest = Faults(bandwidth=3e6, first_byte_delay=0.3)  # the liar ranks first
    with Origin(data, faults=liar) as bad, Origin(data, faults=honest) as origin:
        bad_url = bad.url.replace("127.0.0.1", "localhost")
        assert _download(tmp_path, IMG, data, [bad_url, origin.url], "a") == 0
        assert _download(tmp_path, HOSTILE, data, [origin.url], "b") == 0
    assert _download(tmp_path, "gone-image", data, ["http://127.0.0.2:1/x"], "c") == 3
    cache = NodeCache(tmp_path / "cache")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(48 << 20))
    cache.add_file(parse_image(image_record(BIG, big.read_bytes(), []), BIG), big)
    cache.set_registered(IMG, f"http://node-7:8470/images/{IMG}/{cache.token(IMG)}")
    filling = FillWriter.create(cache.images / "f111f111-0000.fill", 8 << 20)
    filling.mark(0, 3 << 20)

    with ServeProcess(cache.dir) as proc:
        held = _hold_a_transfer(proc.port, cache, BIG)
        try:
            deadline = time.monotonic() + 30
            while "No response is being sent" in _status_text(proc.port):
                assert time.monotonic() < deadline, "the held transfer never showed up"
                time.sleep(0.05)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: (problems.append("dialog: " + d.message), d.dismiss()))
            resp = page.goto(proc.url + "/status")
            assert resp is not None and resp.status == 200
            assert "script-src" not in (csp := resp.headers["content-security-policy"])
            assert "default-src 'none'" in csp
            body = page.inner_text("body")
            assert "Cache entries" in page.inner_text("h2 >> nth=0")
            assert IMG in body and BIG in body
            assert HOSTILE in body  # shown as text ...
            assert page.locator("script").count() == 0  # ... never as an element
            # The registered location, its capability token masked (no working URL shown).
            assert f"http://node-7:8470/images/{IMG}/lpc1_***" in body
            assert cache.token(IMG) not in page.content()
            assert "127.0.0.1" in page.locator("h2:has-text('Clients') + div").inner_text()
            assert "failed (exit 3)" in body  # the failed download, with its reason
            fills = page.locator("h2:has-text('filled') + div").inner_text()
            assert "f111f111-0000" in fills and "3.0 MiB / 8.0 MiB" in fills
            assert page.locator("svg").count() == 3  # one per download
            # The download whose first copy lied draws its bytes over time and names the copy
            # that delivered; the one engine attributes the samples when the download is
            # decided, so the liar's wasted bytes are in its row's sources, not a line of their
            # own (they were, when one copy at a time was read)
            switched = page.locator("tr", has_text="localhost")
            assert switched.locator("svg polyline").count() >= 1
            shots = SCREENSHOT.parent if os.environ.get("LOCPICK_SCREENSHOTS") else tmp_path
            page.screenshot(path=str(shots / SCREENSHOT.name), full_page=True)
            # Readable on a phone: nothing wider than the screen outside the scrolling tables.
            page.set_viewport_size({"width": 390, "height": 844})
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, width
            page.screenshot(path=str(shots / "status-phone.png"))
            assert problems == []
            page.close()
        finally:
            held.close()
            filling.close()


def test_status_html_escapes_every_value_without_a_browser(tmp_path: Path) -> None:
    """The raw HTML never contains the hostile name unescaped."""
    data = os.urandom(20_000)
    with Origin(data) as origin:
        assert _download(tmp_path, HOSTILE, data, [origin.url + '?"><b>x</b>'], "a") == 0
    with ServeProcess(tmp_path / "cache") as proc:
        html = _status_text(proc.port)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html and "<b>x</b>" not in html
