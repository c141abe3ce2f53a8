"""Glance deployments shaped in ways the harness Glance cannot be configured to show
(``show_multiple_locations`` / ``show_image_direct_url`` off, other hash algorithms, a /file
that redirects), served by a tiny loopback Glance-v2-shaped API."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import image_record, run_cli

from locpick._demo.origin import Origin

IMAGE_ID = "5f0c6a52-6a0a-4c39-9d3b-1f2a3c4d5e6f"
TOKEN = "tok-" + "s3cr3t" * 6
DATA = bytes(range(256)) * 2048  # 512 KiB


class FakeGlance:
    """GET /v2/images/{id} -> ``record``; GET .../file -> DATA (or a redirect) only with TOKEN."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self.file_redirect: str | None = None
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.seen.append((self.path, dict(self.headers)))
                if self.headers.get("X-Auth-Token") != TOKEN:
                    return self._send(401, b"401 Unauthorized")
                if self.path == f"/v2/images/{IMAGE_ID}":
                    return self._send(200, json.dumps(outer.record).encode(), "application/json")
                if self.path.startswith(f"/v2/images/{IMAGE_ID}/file"):
                    if outer.file_redirect:
                        self.send_response(302)
                        self.send_header("Location", outer.file_redirect)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    return self._send(200, DATA, "application/octet-stream")
                return self._send(404, b"404 Not Found")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def glance() -> Iterator[FakeGlance]:
    g = FakeGlance()
    yield g
    g.close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin(DATA) as o:
        yield o


def _args() -> list[str]:
    return ["--token", TOKEN]


def test_locations_hidden_falls_back_to_direct_url(
    glance: FakeGlance, origin: Origin, tmp_path: Any
) -> None:
    """No ``locations`` key: ``direct_url`` and /file are the candidates; the origin gets no
    token."""
    rec = image_record(IMAGE_ID, DATA, [])
    del rec["locations"]
    rec["direct_url"] = origin.url
    glance.record = rec
    r = run_cli("rank", IMAGE_ID, "--glance-url", glance.url, *_args(), "--json")
    assert r.returncode == 0, r.stderr
    assert {row["url"] for row in json.loads(r.stdout)} == {
        origin.url,
        f"{glance.url}/v2/images/{IMAGE_ID}/file",
    }
    assert all("X-Auth-Token" not in req.headers for req in origin.requests)


def test_neither_locations_nor_direct_url_downloads_from_glance_file(
    glance: FakeGlance, tmp_path: Any
) -> None:
    """A deployment that shows no location at all: /file with the token, sha256 verified."""
    rec = image_record(IMAGE_ID, DATA, [], algo="sha256")
    del rec["locations"]
    glance.record = rec
    dest = tmp_path / "img"
    r = run_cli("download", IMAGE_ID, str(dest), "--glance-url", glance.url, *_args(), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source_url"] == f"{glance.url}/v2/images/{IMAGE_ID}/file"
    assert doc["verified"] == "sha256"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_glance_file_redirect_to_another_host_drops_the_token(
    glance: FakeGlance, origin: Origin, tmp_path: Any
) -> None:
    """/file answering 302 to a store on another host: followed, but without X-Auth-Token."""
    rec = image_record(IMAGE_ID, DATA, [])
    glance.record = rec
    glance.file_redirect = origin.url.replace("127.0.0.1", "localhost")
    dest = tmp_path / "img"
    r = run_cli("download", IMAGE_ID, str(dest), "--glance-url", glance.url, *_args(), "--json")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == DATA
    assert origin.requests, "the redirect target was never asked"
    for req in origin.requests:
        assert "x-auth-token" not in {k.lower() for k in req.headers}
    assert TOKEN not in r.stdout + r.stderr
