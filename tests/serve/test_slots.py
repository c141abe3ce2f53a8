"""`locpick serve` slots (issue 24): one client address never holds every transfer slot, and
a client that stopped reading is cut after ``send_timeout`` (real serve process, real sockets
from distinct loopback addresses)."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_cache import ServeProcess
from helpers import image_record

from locpick.cache.store import NodeCache
from locpick.glance.images import parse_image

IMG = "bbbbbbbb-1111-2222-3333-444444444444"
#: Far more than the kernel buffers of a socket pair hold: a client that never reads stalls.
SIZE = 48 << 20
ATTACKERS = 17
#: How long to wait for what must happen (a liveness bound, not a speed goal).
PATIENCE = 120.0


def _cache(base: Path) -> NodeCache:
    cache = NodeCache(base / "cache")
    src = base / "src"
    with src.open("wb") as fh:
        fh.write(os.urandom(1 << 20) * (SIZE >> 20))
    data = src.read_bytes()
    cache.add_file(parse_image(image_record(IMG, data, []), IMG), src)
    return cache


def _stalled(proc: ServeProcess, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` connections from ``source`` that ask for the whole image and never read it;
    returns them once each has its answer's status line (peeked, not read)."""
    u = urllib.parse.urlsplit(proc.url)
    path = proc.image_path(IMG)
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((source, 0))
        s.connect((u.hostname or "127.0.0.1", u.port or 80))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(s)
    for s in socks:
        s.settimeout(PATIENCE)
        while len(s.recv(12, socket.MSG_PEEK)) < 12:
            time.sleep(0.01)
    return socks


def _status(s: socket.socket) -> int:
    return int(s.recv(12, socket.MSG_PEEK).split()[1])


def _get(proc: ServeProcess, source: str) -> int:
    """Status of one legitimate request (first MiB) from ``source``, body read in full."""
    u = urllib.parse.urlsplit(proc.url)
    conn = http.client.HTTPConnection(
        u.hostname or "127.0.0.1", u.port, timeout=PATIENCE, source_address=(source, 0)
    )
    try:
        conn.request("GET", proc.image_path(IMG), headers={"Range": "bytes=0-1048575"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status != 200 or len(body) == 1 << 20
        return resp.status
    finally:
        conn.close()


@pytest.fixture
def close_all() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def test_one_address_cannot_hold_every_slot(tmp_path: Path, close_all: list[socket.socket]) -> None:
    """17 non-reading sockets from 127.0.0.1 (defaults: 16 slots): they get fewer than all
    slots, and a client from 127.0.0.2 is served at once."""
    _cache(tmp_path)
    with ServeProcess(tmp_path / "cache") as proc:
        close_all.extend(_stalled(proc, ATTACKERS))
        statuses = [_status(s) for s in close_all]
        held = statuses.count(200)
        assert 0 < held < 16, statuses
        assert set(statuses) == {200, 503}, statuses
        assert _get(proc, "127.0.0.2") == 206


def test_a_client_that_stopped_reading_is_cut_and_its_slots_free(
    tmp_path: Path, close_all: list[socket.socket]
) -> None:
    """[serve] send_timeout = 1: the stalled transfers are cut, and a client from the same
    address is served again (while the stalled sockets stay open on the client side)."""
    _cache(tmp_path)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nsend_timeout = 1.0\nmin_send_rate = 65536\n")
    with ServeProcess(tmp_path / "cache", config=cfg) as proc:
        close_all.extend(_stalled(proc, ATTACKERS))
        assert _status(close_all[0]) == 200

        def served_again() -> bool:
            return _get(proc, "127.0.0.1") == 206

        deadline = time.monotonic() + PATIENCE
        while not served_again():
            assert time.monotonic() < deadline, "the stalled clients kept every slot"
            time.sleep(0.5)
        # the cut ones see their connection end once they do read
        cut = 0
        for s in close_all:
            s.settimeout(PATIENCE)
            try:
                while s.recv(1 << 20):
                    pass
                cut += 1
            except OSError:
                cut += 1
        assert cut == ATTACKERS
