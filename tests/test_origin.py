"""Tests for the loopback test origin (tests/origin.py), using only http.client/sockets."""

from __future__ import annotations

import functools
import http.client
import http.server
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from locpick._demo.blackhole import BlackHole, ClosedPort, blackhole, closed_port_url
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin

pytestmark = pytest.mark.testserver

DATA = bytes(range(256)) * 4096  # 1 MiB, position-dependent content


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin(DATA) as o:
        yield o


def get(
    o: Origin,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    path: str | None = None,
    timeout: float = 5.0,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", o.port, timeout=timeout)
    try:
        conn.request(method, path or o.path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def raw(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Send a raw request and read to EOF; return (head, rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def req(path: str = "/img.raw", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- basics


def test_full_get_headers_and_counters(origin: Origin) -> None:
    resp, body = get(origin)
    assert resp.status == 200
    assert body == DATA
    assert resp.getheader("Content-Length") == str(len(DATA))
    assert resp.getheader("Accept-Ranges") == "bytes"
    assert resp.getheader("ETag") == origin.etag
    assert resp.getheader("Last-Modified") == origin.last_modified
    assert origin.bytes_sent == len(DATA)
    (rec,) = origin.requests
    assert (rec.method, rec.path, rec.status, rec.range) == ("GET", "/img.raw", 200, None)
    assert rec.headers["Host"].startswith("127.0.0.1")
    assert origin.url == f"http://127.0.0.1:{origin.port}/img.raw"
    assert origin.base == f"http://127.0.0.1:{origin.port}"
    origin.reset_counters()
    assert (origin.bytes_sent, origin.requests, origin.connections) == (0, [], 0)


def test_head(origin: Origin) -> None:
    resp, body = get(origin, method="HEAD")
    assert resp.status == 200
    assert body == b""
    assert resp.getheader("Content-Length") == str(len(DATA))
    assert origin.bytes_sent == 0


def test_urllib_and_404(origin: Origin) -> None:
    with urllib.request.urlopen(origin.url + "?x=1", timeout=5) as r:
        assert r.read() == DATA
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(origin.base + "/nope", timeout=5)
    assert ei.value.code == 404
    ei.value.close()


@pytest.mark.parametrize(
    ("rng", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=10-99", 10, 100),
        ("bytes=1000-", 1000, len(DATA)),
        ("bytes=-100", len(DATA) - 100, len(DATA)),
        ("bytes=5-99999999", 5, len(DATA)),
    ],
)
def test_ranges(origin: Origin, rng: str, start: int, end: int) -> None:
    resp, body = get(origin, {"Range": rng})
    assert resp.status == 206
    assert body == DATA[start:end]
    assert resp.getheader("Content-Range") == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert resp.getheader("Content-Length") == str(end - start)
    assert origin.bytes_sent == end - start
    assert origin.requests[0].range == rng


def test_unsatisfiable_and_ignored_ranges(origin: Origin) -> None:
    resp, _ = get(origin, {"Range": f"bytes={len(DATA)}-"})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{len(DATA)}"
    for bad in ("bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=x-"):
        resp, body = get(origin, {"Range": bad})
        assert (resp.status, len(body)) == (200, len(DATA)), bad


def test_if_range(origin: Origin) -> None:
    resp, body = get(origin, {"Range": "bytes=10-19", "If-Range": origin.etag})
    assert (resp.status, body) == (206, DATA[10:20])
    resp, body = get(origin, {"Range": "bytes=10-19", "If-Range": origin.last_modified})
    assert resp.status == 206
    resp, body = get(origin, {"Range": "bytes=10-19", "If-Range": '"other"'})
    assert (resp.status, body) == (200, DATA)


def test_set_data_changes_validators(origin: Origin) -> None:
    old = origin.etag
    origin.set_data(b"new image")
    assert origin.etag != old
    resp, body = get(origin, {"Range": "bytes=0-2", "If-Range": old})
    assert (resp.status, body) == (200, b"new image")


def test_keep_alive_reuses_connection(origin: Origin) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=5)
    try:
        for i in range(3):
            conn.request("GET", origin.path, headers={"Range": f"bytes={i}-{i}"})
            r = conn.getresponse()
            assert r.read() == DATA[i : i + 1]
    finally:
        conn.close()
    assert origin.connections == 1
    assert len(origin.requests) == 3


def test_concurrent_clients(origin: Origin) -> None:
    results: list[bytes] = []

    def worker() -> None:
        results.append(get(origin)[1])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [DATA] * 8
    assert origin.bytes_sent == 8 * len(DATA)


def _timed_download(url_port: int, path: str, size: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=10)
    try:
        t0 = time.monotonic()
        conn.request("GET", path)
        r = conn.getresponse()
        n = 0
        while b := r.read(1 << 20):
            n += len(b)
        assert n == size
        return time.monotonic() - t0
    finally:
        conn.close()


def _best_of(n: int, port: int, path: str, size: int) -> float:
    return min(_timed_download(port, path, size) for _ in range(n))


def test_large_body_is_fast(tmp_path: Path) -> None:
    """The origin serves a large body (from memory or a file) at least about as fast as the
    stdlib's http.server serves the same file, measured here (no absolute time limit)."""
    big = os.urandom(1 << 20) * 64  # 64 MiB
    f = tmp_path / "img.raw"
    f.write_bytes(big)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as ref:
        threading.Thread(target=ref.serve_forever, daemon=True).start()
        try:
            reference = _best_of(3, ref.server_address[1], "/img.raw", len(big))
        finally:
            ref.shutdown()
    with Origin(big) as o:
        from_memory = _best_of(3, o.port, o.path, len(big))
        assert o.bytes_sent == 3 * len(big)
    with Origin.from_file(f) as o:
        assert o.size == len(big)
        from_file = _best_of(3, o.port, o.path, len(big))
        resp, body = get(o, {"Range": "bytes=1000-2999"})
        assert (resp.status, body) == (206, big[1000:3000])
    assert from_memory < 2 * reference, (from_memory, reference)
    assert from_file < 2 * reference, (from_file, reference)


def test_from_file_with_faults(tmp_path: Path) -> None:
    f = tmp_path / "img.raw"
    f.write_bytes(DATA)
    with Origin.from_file(f, faults=Faults(corrupt_at=[3]), path="/x.img") as o:
        _, body = get(o)
        assert body[3] == DATA[3] ^ 0xFF
        assert body[:3] + body[4:] == DATA[:3] + DATA[4:]
        assert o.url.endswith("/x.img")


# --------------------------------------------------------------------------- faults


def test_first_byte_delay(origin: Origin) -> None:
    origin.faults.first_byte_delay = 0.3
    t0 = time.monotonic()
    resp, _ = get(origin, method="HEAD")
    assert time.monotonic() - t0 >= 0.28  # a lower bound: load can only add to it
    assert resp.status == 200


def test_bandwidth_cap_and_live_change(origin: Origin) -> None:
    origin.faults.bandwidth = 1_000_000  # 1 MB/s
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=5)
    try:
        conn.request("GET", origin.path)
        r = conn.getresponse()
        # throughput over ~100 ms windows should be close to the cap
        rates = []
        for _ in range(3):
            t0, n = time.monotonic(), 0
            while time.monotonic() - t0 < 0.1:
                n += len(r.read1(1 << 16))
            rates.append(n / (time.monotonic() - t0))
        assert all(x < 1_500_000 for x in rates), rates  # the cap holds (load only slows)
        origin.faults.bandwidth = None  # live: the rest goes at full speed
        t0 = time.monotonic()
        rest = r.read()
        free_rate = len(rest) / (time.monotonic() - t0)
        assert len(rest) > 0
        assert free_rate > 3 * max(rates), (free_rate, rates)
    finally:
        conn.close()
    assert origin.bytes_sent == len(DATA)


def test_cut_after_bytes_per_response(origin: Origin) -> None:
    origin.faults.cut_after_bytes = 1000
    for rng in ("bytes=0-", "bytes=5000-"):
        conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=5)
        try:
            conn.request("GET", origin.path, headers={"Range": rng})
            r = conn.getresponse()
            with pytest.raises(http.client.IncompleteRead) as ei:
                r.read()
            assert len(ei.value.partial) == 1000
        finally:
            conn.close()
    assert origin.bytes_sent == 2000
    _, rest = raw(origin.port, req())
    assert len(rest) == 1000


def test_cut_with_reset(origin: Origin) -> None:
    origin.faults.cut_after_bytes = 0
    origin.faults.reset = True
    with pytest.raises(ConnectionResetError):
        raw(origin.port, req())


def test_cut_at_offset(origin: Origin) -> None:
    origin.faults.cut_at_offset = 5000
    _, rest = raw(origin.port, req())
    assert rest == DATA[:5000]
    _, rest = raw(origin.port, req("/img.raw", "Range: bytes=4000-"))
    assert rest == DATA[4000:5000]
    resp, body = get(origin, {"Range": "bytes=5000-"})  # resume at the cut succeeds
    assert (resp.status, body) == (206, DATA[5000:])


def test_stall_then_timeout_close(origin: Origin) -> None:
    origin.faults.stall_after = 100
    origin.faults.stall_seconds = 2.0
    # the 100 bytes come at once, then nothing for stall_seconds: 1 s of silence tells them apart
    with socket.create_connection(("127.0.0.1", origin.port), timeout=1.0) as s:
        s.sendall(req())
        buf = b""
        with pytest.raises(TimeoutError):
            while True:
                b = s.recv(1 << 16)
                assert b, "closed too early"
                buf += b
        assert buf.partition(b"\r\n\r\n")[2] == DATA[:100]
        s.settimeout(20 * origin.faults.stall_seconds)  # a hang detector, not a speed limit
        assert s.recv(10) == b""  # closed by the origin once stall_seconds are over
    assert origin.bytes_sent == 100


def test_stop_releases_stall_blackhole_drip_and_idle() -> None:
    o = Origin(DATA, faults=Faults(stall_after=10)).start()
    socks = [socket.create_connection(("127.0.0.1", o.port), timeout=5) for _ in range(2)]
    try:
        socks[0].sendall(req())
        idle = http.client.HTTPConnection("127.0.0.1", o.port, timeout=5)
        time.sleep(0.1)
        o.faults.blackhole = True
        socks[1].sendall(req())
        time.sleep(0.1)
        stopper = threading.Thread(target=o.stop, daemon=True)
        stopper.start()
        stopper.join(30)  # stalled, black-holed and idle connections must not hold stop()
        assert not stopper.is_alive()
        idle.close()
    finally:
        for s in socks:
            s.close()


def test_corrupt_at(origin: Origin) -> None:
    origin.faults.corrupt_at = {0, 70_000, len(DATA) - 1}
    _, body = get(origin)
    diff = [i for i in range(len(DATA)) if body[i] != DATA[i]]
    assert diff == [0, 70_000, len(DATA) - 1]
    assert all(body[i] == DATA[i] ^ 0xFF for i in diff)
    _, body = get(origin, {"Range": "bytes=69999-70001"})
    assert body == bytes([DATA[69999], DATA[70000] ^ 0xFF, DATA[70001]])


def test_status_fault(origin: Origin) -> None:
    origin.faults.status = 500
    resp, body = get(origin)
    assert resp.status == 500
    assert body.startswith(b"500")
    resp, _ = get(origin, path="/anything")
    assert resp.status == 500
    assert origin.bytes_sent == 0


def test_fail_first_n_with_retry_after(origin: Origin) -> None:
    origin.faults.fail_first_n = 2
    origin.faults.retry_after = 1
    statuses = []
    for _ in range(3):
        resp, _ = get(origin)
        statuses.append((resp.status, resp.getheader("Retry-After")))
    assert statuses == [(503, "1"), (503, "1"), (200, None)]
    origin.reset_counters()
    origin.faults.fail_status = 429
    assert get(origin)[0].status == 429


def test_blackhole_fault(origin: Origin) -> None:
    origin.faults.blackhole = True
    with pytest.raises(TimeoutError):
        get(origin, timeout=0.3)
    assert origin.requests[0].status is None
    origin.faults.blackhole = False
    assert get(origin)[0].status == 200


def test_ignore_range(origin: Origin) -> None:
    origin.faults.ignore_range = True
    resp, body = get(origin, {"Range": "bytes=10-19"})
    assert (resp.status, body) == (200, DATA)
    assert resp.getheader("Accept-Ranges") is None
    assert resp.getheader("Content-Range") is None


def test_lie_content_range(origin: Origin) -> None:
    origin.faults.lie_content_range = 7
    resp, body = get(origin, {"Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes 107-206/{len(DATA)}"
    assert body == DATA[100:200]


def test_extra_bytes_beyond_content_length(origin: Origin) -> None:
    origin.faults.extra_bytes = 10
    head, rest = raw(origin.port, req("/img.raw", "Range: bytes=0-99"))
    assert b"Content-Length: 100\r\n" in head
    assert rest == DATA[:100] + b"X" * 10
    assert origin.bytes_sent == 110


def test_extra_bytes_in_length(origin: Origin) -> None:
    origin.faults.extra_bytes = 10
    origin.faults.extra_in_length = True
    resp, body = get(origin)
    assert resp.getheader("Content-Length") == str(len(DATA) + 10)
    assert body == DATA + b"X" * 10


def test_redirect(origin: Origin) -> None:
    origin.faults.redirect_to = "http://127.0.0.1:1/elsewhere"
    for path in ("/img.raw", "/other"):
        resp, _ = get(origin, path=path)
        assert resp.status == 302
        assert resp.getheader("Location") == "http://127.0.0.1:1/elsewhere"


def test_redirect_followed_by_urllib(origin: Origin) -> None:
    with Origin(b"target") as target:
        origin.faults.redirect_to = target.url
        with urllib.request.urlopen(origin.url, timeout=5) as r:
            assert r.read() == b"target"


def test_drip(origin: Origin) -> None:
    origin.faults.drip = True
    origin.faults.drip_interval = 0.05
    t0 = time.monotonic()
    _, body = get(origin, {"Range": "bytes=0-4"})
    elapsed = time.monotonic() - t0
    assert body == DATA[:5]
    assert elapsed >= 0.18  # 5 bytes, one per 0.05 s: a lower bound, load only adds


def test_extra_headers_and_faults_reset(origin: Origin) -> None:
    origin.faults.extra_headers = {"X-Test": "1"}
    origin.faults.status = 404
    origin.faults.reset_all()
    assert origin.faults == Faults()
    origin.faults.extra_headers["X-Test"] = "2"
    assert get(origin)[0].getheader("X-Test") == "2"


# --------------------------------------------------------------------------- helpers


def test_blackhole_helper() -> None:
    with blackhole() as bh:
        assert isinstance(bh, BlackHole)
        assert bh.url == f"http://127.0.0.1:{bh.port}/img.raw"
        with socket.create_connection(("127.0.0.1", bh.port), timeout=0.3) as s:
            s.sendall(req())
            with pytest.raises(TimeoutError):
                s.recv(1)
        assert bh.connections == 1


def test_closed_port() -> None:
    with ClosedPort() as cp, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cp.port), timeout=1).close()
    url = closed_port_url()
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=1)
