"""A real ``locpick serve`` answering a copy still being filled by a writer in another process."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_cache import ServeProcess
from helpers import cli_env, image_record
from prometheus_client.parser import text_string_to_metric_families

import locpick
from locpick._demo.faults import Faults
from locpick._demo.origin import Origin
from locpick.cache.fill.writer import FillWriter
from locpick.cache.store import NodeCache
from locpick.config.model import Config, ProbeConfig, TransferConfig
from locpick.glance.images import parse_image
from locpick.redact import redact_url
from locpick.serve.fill import _wait, open_filling

IMG = "f111f111-aaaa-bbbb-cccc-000000000001"
PIECE = 1 << 20
SIZE = 4 * PIECE + 4321
DATA = os.urandom(SIZE)


class Filling:
    """A copy of ``IMG`` being filled into ``cache`` the way the downloader fills it."""

    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache
        self.data_path, self.record = cache.fill_paths(IMG)
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, SIZE)
        self.writer = FillWriter.create(self.record, SIZE, PIECE)

    def put(self, start: int, end: int) -> None:
        os.pwrite(self.fd, DATA[start:end], start)
        self.writer.mark(start, end)

    def finish(self) -> None:
        """Complete, rename into place, sidecar last, then drop the record (the contract)."""
        self.put(self.writer.written, SIZE)
        self.writer.complete()
        image = parse_image(image_record(IMG, DATA, []), IMG)
        os.replace(self.data_path, self.cache.images / IMG)
        side = self.cache.images / f"{IMG}.json"
        fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        meta = {"size": SIZE, "algo": image.os_hash_algo, "digest": image.os_hash_value}
        os.write(fd, json.dumps(meta).encode())
        os.close(fd)
        self.writer.close(remove=True)

    def close(self) -> None:
        self.writer.close()
        os.close(self.fd)


@pytest.fixture
def cache(tmp_path: Path) -> NodeCache:
    return NodeCache(tmp_path / "c")


@pytest.fixture
def filling(cache: NodeCache) -> Iterator[Filling]:
    f = Filling(cache)
    yield f
    f.close()


def _serve(cache: NodeCache, tmp_path: Path, **serve: object) -> ServeProcess:
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\n" + "".join(f"{k} = {v}\n" for k, v in serve.items()))
    return ServeProcess(cache.dir, config=cfg)


def _request(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _open(port: int, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", path)
    return conn, conn.getresponse()


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _s, _h, body = _request(port, "/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def _until_active(port: int, n: int) -> None:
    """Until ``serve`` lists ``n`` image requests in progress (the request reached it)."""
    for _ in range(2000):
        if _metrics(port)[("locpick_serve_active_clients", ())] == n:
            return
        time.sleep(0.01)
    raise AssertionError(f"serve never had {n} requests in progress")


def _fill(headers: dict[str, str]) -> dict[str, str]:
    return dict(p.strip().split("=", 1) for p in headers["x-locpick-fill"].split(";"))


def test_head_answers_the_full_size_with_the_fill_state(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """Glance HEADs a location when it is added: a filling copy tells the image's full size."""
    with _serve(cache, tmp_path) as proc:
        path = proc.image_path(IMG)
        status, headers, body = _request(proc.port, path, method="HEAD")
        assert status == 200 and body == b""
        assert headers["content-length"] == str(SIZE)
        assert headers["accept-ranges"] == "bytes"
        assert _fill(headers) == {"state": "filling", "held": "0", "size": str(SIZE), "rate": "0"}
        filling.put(0, PIECE + 10)
        status, headers, _b = _request(proc.port, path, method="HEAD")
        assert status == 200 and headers["content-length"] == str(SIZE)
        fill = _fill(headers)
        assert fill["held"] == str(PIECE + 10) and int(fill["rate"]) > 0


@pytest.mark.parametrize("rate", [0, 200_000_000])
def test_held_bytes_at_once_and_bytes_ahead_wait_then_arrive(
    cache: NodeCache, filling: Filling, tmp_path: Path, rate: int
) -> None:
    """A range already held comes at once; one ahead of the fill waits for the writer, then
    arrives with the right bytes (sendfile, and paced under max_rate); bytes are counted."""
    filling.put(0, PIECE)
    with (
        _serve(cache, tmp_path, max_rate=rate, fill_wait=600) as proc,
        cf.ThreadPoolExecutor(1) as pool,
    ):
        path = proc.image_path(IMG)
        status, headers, body = _request(proc.port, path, {"Range": f"bytes=0-{PIECE - 1}"})
        assert status == 206 and body == DATA[:PIECE]
        assert headers["content-range"] == f"bytes 0-{PIECE - 1}/{SIZE}"
        ahead = pool.submit(_request, proc.port, path, {"Range": f"bytes={2 * PIECE}-"})
        _until_active(proc.port, 1)
        # The reference: a request for held bytes, made after the waiting one, completes...
        assert _request(proc.port, path, {"Range": "bytes=10-19"})[2] == DATA[10:20]
        assert not ahead.done()  # ...while the one ahead of the fill still waits.
        filling.put(3 * PIECE, SIZE)  # out of order: still waiting for [2P, 3P)
        assert (
            _request(proc.port, path, {"Range": f"bytes={3 * PIECE}-{3 * PIECE + 9}"})[2]
            == (DATA[3 * PIECE : 3 * PIECE + 10])
        )
        assert not ahead.done()
        filling.put(PIECE, 3 * PIECE)
        status, headers, body = ahead.result(timeout=120)
        assert status == 206 and body == DATA[2 * PIECE :]
        assert headers["content-range"] == f"bytes {2 * PIECE}-{SIZE - 1}/{SIZE}"
        assert _fill(headers)["state"] == "filling"
        sent = _metrics(proc.port)
        key = ("locpick_serve_bytes_total", (("image", IMG), ("status", "206")))
        assert sent[key] == PIECE + 10 + 10 + SIZE - 2 * PIECE


def test_writer_that_fails_mid_answer_cuts_it_and_then_404(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """fail() while a GET is waiting for more: the answer ends short, new requests get 404."""
    filling.put(0, PIECE)
    with _serve(cache, tmp_path, fill_wait=600, keepalive_timeout=3600) as proc:
        path = proc.image_path(IMG)
        conn, resp = _open(proc.port, path)
        try:
            assert resp.status == 200 and resp.getheader("content-length") == str(SIZE)
            assert resp.read(PIECE) == DATA[:PIECE]
            filling.writer.fail()
            with pytest.raises(http.client.IncompleteRead):
                resp.read()
        finally:
            conn.close()
        status, _h, body = _request(proc.port, path)
        assert status == 404 and body == b"no such image\n"


_WRITER = """
import os, sys
from locpick.cache.fill.writer import FillWriter
from locpick.redact import redact_url
data_path, record, src, size, piece = sys.argv[1:6]
data = open(src, "rb").read()
fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.ftruncate(fd, int(size))
w = FillWriter.create(record, int(size), int(piece))
print("ok", flush=True)
for line in sys.stdin:
    a, b = (int(x) for x in line.split())
    os.pwrite(fd, data[a:b], a)
    w.mark(a, b)
    print("ok", flush=True)
"""


def test_writer_killed_mid_answer_cuts_it_and_then_404(cache: NodeCache, tmp_path: Path) -> None:
    """The downloader dies (SIGKILL): the answer in progress ends short, then 404."""
    src = tmp_path / "src"
    src.write_bytes(DATA)
    data_path, record = cache.fill_paths(IMG)
    args = [str(data_path), str(record), str(src), str(SIZE), str(PIECE)]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline() == "ok\n"
        writer.stdin.write(f"0 {PIECE}\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "ok\n"
        with _serve(cache, tmp_path, fill_wait=600, keepalive_timeout=3600) as proc:
            path = proc.image_path(IMG)
            conn, resp = _open(proc.port, path)
            try:
                assert resp.status == 200 and resp.read(PIECE) == DATA[:PIECE]
                writer.send_signal(signal.SIGKILL)
                writer.wait()
                with pytest.raises(http.client.IncompleteRead):
                    resp.read()
            finally:
                conn.close()
            assert _request(proc.port, path)[0] == 404
            assert _request(proc.port, path, method="HEAD")[0] == 404
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer.stdin.close()
        writer.stdout.close()


def test_no_bytes_within_fill_wait_is_503_with_retry_after_then_cut(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """Past ``[serve] fill_wait``: nothing of the range yet is 503 + Retry-After (counted as
    refused ``fill_wait``); a stall mid-answer ends it short (counted as aborted, with the
    bytes it sent)."""
    filling.put(0, PIECE)
    with _serve(cache, tmp_path, fill_wait=0.2, retry_after=9, keepalive_timeout=3600) as proc:
        path = proc.image_path(IMG)
        status, headers, _b = _request(proc.port, path, {"Range": f"bytes={2 * PIECE}-"})
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert _fill(headers)["held"] == str(PIECE)
        conn, resp = _open(proc.port, path)
        try:
            assert resp.status == 200 and resp.read(PIECE) == DATA[:PIECE]
            with pytest.raises(http.client.IncompleteRead):
                resp.read()
        finally:
            conn.close()
        m = _metrics(proc.port)
        assert m[("locpick_serve_refused_total", (("reason", "fill_wait"),))] == 1
        assert m[("locpick_serve_refused_total", (("reason", "busy"),))] == 0
        assert m[("locpick_serve_requests_total", (("image", IMG), ("status", "aborted")))] == 1
        assert m[("locpick_serve_bytes_total", (("image", IMG), ("status", "aborted")))] == PIECE


def test_filling_copy_needs_the_capability_token(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """Same check as a complete entry: no token, a wrong one or another image's is 403."""
    filling.put(0, SIZE)
    with _serve(cache, tmp_path, open_public="true") as proc:
        good = proc.image_path(IMG)
        assert _request(proc.port, good)[2] == DATA
        for path in (
            f"/images/{IMG}",
            f"/images/{IMG}/lpc1_{'A' * 43}",
            f"/images/{IMG}/{cache.token('other')}",
        ):
            status, headers, body = _request(proc.port, path)
            assert status == 403 and DATA[:100] not in body, path
            assert "x-locpick-fill" not in headers


def test_planted_filling_files_are_not_served(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """A ``.filling`` with a second link (or a symlink in its place) is no copy: 404."""
    filling.put(0, SIZE)
    with _serve(cache, tmp_path) as proc:
        path = proc.image_path(IMG)
        assert _request(proc.port, path)[0] == 200
        link = tmp_path / "outside"
        os.link(filling.data_path, link)
        assert _request(proc.port, path)[0] == 404
        link.unlink()
        os.rename(filling.data_path, tmp_path / "moved")
        os.symlink(tmp_path / "moved", filling.data_path)
        assert _request(proc.port, path)[0] == 404


def test_answer_started_on_the_filling_copy_finishes_from_the_complete_entry(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """The fill completes (renamed into place, record removed) during an answer: it finishes;
    the complete entry is served as before, with ``state=complete``."""
    filling.put(0, PIECE)
    with _serve(cache, tmp_path, fill_wait=600, keepalive_timeout=3600) as proc:
        path = proc.image_path(IMG)
        conn, resp = _open(proc.port, path)
        try:
            assert resp.status == 200 and resp.read(PIECE) == DATA[:PIECE]
            filling.finish()
            assert resp.read() == DATA[PIECE:]
        finally:
            conn.close()
        assert not filling.record.exists()
        status, headers, body = _request(proc.port, path)
        assert status == 200 and body == DATA and "etag" in headers
        assert _fill(headers) == {"state": "complete", "held": str(SIZE), "size": str(SIZE)}


def test_max_clients_counts_filling_answers(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """A waiting filling answer holds one of ``max_clients``: the next client is told busy."""
    with (
        _serve(cache, tmp_path, max_clients=1, fill_wait=600, retry_after=7) as proc,
        cf.ThreadPoolExecutor(1) as pool,
    ):
        path = proc.image_path(IMG)
        waiting = pool.submit(_request, proc.port, path)
        _until_active(proc.port, 1)
        status, headers, _b = _request(proc.port, path, {"Range": "bytes=0-0"})
        assert status == 503 and headers["retry-after"] == "7"
        filling.put(0, SIZE)
        status, _h, body = waiting.result(timeout=120)
        assert status == 200 and body == DATA


def test_record_gone_reads_as_complete_only_when_the_copy_became_the_entry(
    cache: NodeCache, filling: Filling
) -> None:
    """A reader that misses the ``complete`` state and finds the record removed goes on only
    when its open file is now the visible entry; a record removed otherwise ends the answer."""
    filling.put(0, PIECE)
    with open_filling(cache, IMG) as copy:
        assert copy is not None
        filling.finish()
        done = asyncio.run(_wait(cache, copy, PIECE, 5.0))
        assert done.outcome == "ready" and done.available_until == SIZE
    cache.evict(IMG)
    other = Filling(cache)
    try:
        other.put(0, PIECE)
        with open_filling(cache, IMG) as copy:
            assert copy is not None
            other.writer.close(remove=True)  # record gone, data never renamed into place
            gone = asyncio.run(_wait(cache, copy, PIECE, 5.0))
            assert gone.outcome == "gone" and gone.available_until == PIECE
    finally:
        other.close()


def test_client_that_leaves_while_waiting_frees_its_slot(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """A peer that hangs up while its answer waits for the fill does not keep one of
    ``max_clients`` for the rest of ``fill_wait``."""
    filling.put(0, PIECE)
    with _serve(cache, tmp_path, max_clients=1, fill_wait=3600) as proc:
        path = proc.image_path(IMG)
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=120)
        conn.request("GET", path, headers={"Range": f"bytes={2 * PIECE}-"})
        _until_active(proc.port, 1)
        assert _request(proc.port, path, {"Range": "bytes=0-9"})[0] == 503
        conn.close()
        for _ in range(2000):  # until serve notices (it checks between slices of its wait)
            status, _h, body = _request(proc.port, path, {"Range": "bytes=0-9"})
            if status != 503:
                break
            time.sleep(0.05)
        assert status == 206 and body == DATA[:10]


# -- a locpick client reading a filling copy ---------------------------------------------------
CFG = Config(probe=ProbeConfig(deadline=5.0), transfer=TransferConfig(max_sources=1))


def test_peer_downloads_a_copy_still_being_filled(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """A locpick download whose only location is a copy being filled gets every byte from it,
    verified, while the writer keeps writing (it never completes the fill meanwhile)."""
    filling.put(0, PIECE)
    with _serve(cache, tmp_path, fill_wait=600) as proc, cf.ThreadPoolExecutor(1) as pool:
        rec = image_record(IMG, DATA, [proc.image_url(IMG)])
        url = redact_url(proc.image_url(IMG))  # as results name it (no capability token)
        job = pool.submit(locpick.download, IMG, tmp_path / "out", metadata=rec, config=CFG)
        _until_active(proc.port, 1)
        for pos in range(PIECE, SIZE, PIECE // 4):
            filling.put(pos, pos + PIECE // 4)
            time.sleep(0.01)
        result = job.result(timeout=300)
        assert result.verified == "sha512" and result.source_url == url
        assert (tmp_path / "out").read_bytes() == DATA
        assert filling.writer.state == "filling"
        sent = sum(
            v
            for (name, labels), v in _metrics(proc.port).items()
            if name == "locpick_serve_bytes_total" and ("image", IMG) in labels
        )
        assert sent >= SIZE


def test_peer_moves_on_when_the_filling_writer_fails(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """The fill fails while a peer reads it: the answer is cut, the peer resumes from the
    origin where it stopped and delivers a verified image."""
    half = SIZE // 2
    filling.put(0, half)
    with (
        _serve(cache, tmp_path, fill_wait=600) as proc,
        Origin(DATA, faults=Faults(first_byte_delay=0.5)) as origin,
        cf.ThreadPoolExecutor(1) as pool,
    ):
        rec = image_record(IMG, DATA, [proc.image_url(IMG), origin.url])
        url = redact_url(proc.image_url(IMG))
        job = pool.submit(locpick.download, IMG, tmp_path / "out", metadata=rec, config=CFG)
        for _ in range(2000):  # until the transfer (after the probes) is reading the fill
            m = _metrics(proc.port)
            probed = m.get(("locpick_serve_requests_total", (("image", IMG), ("status", "206"))))
            if probed and m[("locpick_serve_active_clients", ())] >= 1:
                break
            time.sleep(0.01)
        filling.writer.fail()
        result = job.result(timeout=300)
        assert result.verified == "sha512" and (tmp_path / "out").read_bytes() == DATA
        by_url = {a.url: a for a in result.attempts}
        assert by_url[url].outcome == "failed" and by_url[url].bytes > 0
        assert by_url[origin.url].outcome == "ok"
        assert by_url[origin.url].bytes < SIZE


def test_prefer_wait_gets_the_fill_state_without_waiting(
    cache: NodeCache, filling: Filling, tmp_path: Path
) -> None:
    """``Prefer: wait=0`` (RFC 7240): a probe of bytes not there yet gets its 503 and the fill
    state now, although ``fill_wait`` is an hour; held bytes still come at once."""
    filling.put(0, 1000)
    with _serve(cache, tmp_path, fill_wait=3600) as proc:
        path = proc.image_path(IMG)
        prefer = {"Prefer": "wait=0"}
        status, headers, _b = _request(proc.port, path, {**prefer, "Range": "bytes=5000-5999"})
        assert status == 503 and _fill(headers)["held"] == "1000"
        status, headers, body = _request(proc.port, path, {**prefer, "Range": "bytes=0-999"})
        assert status == 206 and body == DATA[:1000]
