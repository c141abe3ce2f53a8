#!/usr/bin/env python3
"""Prototype of locpick's fast data path: HTTP GET -> file, hashing on the way.

Every variant has the same signature as the recommended one::

    fetch_to_fd(url, fd, offset, expected_len, hasher) -> bytes_written

It fetches ``expected_len`` bytes of ``url`` starting at byte ``offset`` (a
``Range`` request when ``offset > 0``), writes them to ``fd`` at file
position ``offset`` (``os.pwrite``, so ``fd`` need not be seeked) and feeds
them, in order, to ``hasher`` (any ``hashlib`` object).  It raises
``FetchError`` unless exactly ``expected_len`` bytes were received.

Variants (``--variant``):

* ``httpx_inline``   httpx ``iter_raw()``; hash + write inline in one thread.
* ``httpx_thread``   httpx ``iter_raw()`` coalesced into 8 MiB buffers; a
                     worker thread hashes + writes them (queue of buffers).
* ``readinto``       stdlib ``http.client``; ``resp.readinto()`` into a pool of
                     big buffers; ONE worker thread hashes + writes.
* ``readinto2``      same, but a pipeline of two workers: writer -> hasher
                     (write and hash of different buffers overlap).
* ``splice_pread``   ``os.splice`` socket -> pipe -> file (no user-space copy
                     of the body on receive); a hashing thread reads the
                     freshly written range back from the page cache (pread).
* ``splice_mmap``    same, hashing thread hashes mmap windows of the file
                     (no copy at all on the hashing side).

``fetch_to_fd`` at module level is the recommended variant (see the notes at
the bottom of this file and benchmarks/README.md for the measurements).

CLI (used by benchmarks/throughput.py)::

    python benchmarks/proto_fastpath.py [--variant V] [--sha512 HEX] URL DEST

prints one JSON line: variant, bytes, seconds (in-process), sha512, ok.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import json
import mmap
import os
import queue
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

MiB = 1 << 20
BUF_SIZE = 8 * MiB  # one readinto / hash / write unit
N_BUFS = 4  # buffers in flight -> ~32 MiB of RSS at most
PIPE_SIZE = 1 * MiB  # F_SETPIPE_SZ (default /proc/sys/fs/pipe-max-size)
HASH_STEP = 8 * MiB  # granularity of the splice variants' hashing thread
MMAP_WINDOW = 16 * MiB  # splice_mmap maps at most this much at once (RSS)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
USER_AGENT = "locpick-proto/0.1"


class FetchError(Exception):
    """The server did not deliver exactly the bytes that were asked for."""


# --------------------------------------------------------------------------
# helpers shared by the variants
# --------------------------------------------------------------------------


def _pwrite_all(fd: int, data: memoryview | bytes, pos: int) -> None:
    """os.pwrite may write less than asked (signals, quotas, some FUSE fs)."""
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, pos)
        if n <= 0:
            raise OSError("pwrite wrote nothing")
        pos += n
        mv = mv[n:]


def _range_headers(offset: int, expected_len: int) -> dict[str, str]:
    h = {
        "User-Agent": USER_AGENT,
        # never let a server or proxy compress: we hash the stored bytes
        "Accept-Encoding": "identity",
    }
    if offset > 0:
        h["Range"] = f"bytes={offset}-{offset + expected_len - 1}"
    return h


def _check_status(status: int, headers: Any, offset: int, expected_len: int) -> int | None:
    """Validate status / Content-Range / Content-Length; return Content-Length or None."""
    if offset > 0:
        if status != 206:
            # a 200 would be the WHOLE object from byte 0: never write it at `offset`
            raise FetchError(f"range request answered with HTTP {status}")
        cr = headers.get("Content-Range", "")
        want = f"bytes {offset}-{offset + expected_len - 1}/"
        if not cr.startswith(want):
            raise FetchError(f"unexpected Content-Range {cr!r}, wanted {want}*")
    elif status != 200:
        raise FetchError(f"HTTP {status}")
    if headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        raise FetchError("server applied a Content-Encoding")
    cl = headers.get("Content-Length")
    if cl is not None:
        if int(cl) != expected_len:
            raise FetchError(f"Content-Length {cl} != expected {expected_len}")
        return int(cl)
    return None


class _Worker:
    """Thread consuming (buf, n, pos) items; re-raises its error in the producer."""

    def __init__(self, fn: Callable[[memoryview, int], None], downstream: queue.Queue[Any]):
        self.q: queue.Queue[Any] = queue.Queue()
        self.fn = fn
        self.down = downstream
        self.exc: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                self.down.put(None)
                return
            buf, n, pos = item
            if self.exc is None:
                try:
                    self.fn(memoryview(buf)[:n], pos)
                except BaseException as e:
                    self.exc = e
            self.down.put(item)  # always pass the buffer on so nobody starves


# --------------------------------------------------------------------------
# variant 1/2: httpx
# --------------------------------------------------------------------------


def fetch_httpx_inline(url: str, fd: int, offset: int, expected_len: int, hasher: Any) -> int:
    import httpx

    pos, got = offset, 0
    with (
        httpx.Client(timeout=30.0) as c,
        c.stream("GET", url, headers=_range_headers(offset, expected_len)) as r,
    ):
        _check_status(r.status_code, r.headers, offset, expected_len)
        for chunk in r.iter_raw():
            if got + len(chunk) > expected_len:
                raise FetchError("server sent more than expected")
            hasher.update(chunk)
            _pwrite_all(fd, chunk, pos)
            pos += len(chunk)
            got += len(chunk)
    if got != expected_len:
        raise FetchError(f"short body: {got} of {expected_len}")
    return got


def fetch_httpx_thread(url: str, fd: int, offset: int, expected_len: int, hasher: Any) -> int:
    import httpx

    free: queue.Queue[Any] = queue.Queue()
    for _ in range(N_BUFS):
        free.put((bytearray(BUF_SIZE), 0, 0))

    def hash_write(mv: memoryview, pos: int) -> None:
        hasher.update(mv)
        _pwrite_all(fd, mv, pos)

    w = _Worker(hash_write, free)
    got = 0
    pos = offset
    try:
        with (
            httpx.Client(timeout=30.0) as c,
            c.stream("GET", url, headers=_range_headers(offset, expected_len)) as r,
        ):
            _check_status(r.status_code, r.headers, offset, expected_len)
            buf, fill = free.get()[0], 0
            for chunk in r.iter_raw():
                if got + len(chunk) > expected_len:
                    raise FetchError("server sent more than expected")
                got += len(chunk)
                mv = memoryview(chunk)
                while mv:
                    k = min(len(mv), BUF_SIZE - fill)
                    buf[fill : fill + k] = mv[:k]
                    fill += k
                    mv = mv[k:]
                    if fill == BUF_SIZE:
                        w.q.put((buf, fill, pos))
                        pos += fill
                        if w.exc:
                            raise w.exc
                        buf, fill = free.get()[0], 0
            if fill:
                w.q.put((buf, fill, pos))
    finally:
        w.q.put(None)
        w.t.join()
    if w.exc:
        raise w.exc
    if got != expected_len:
        raise FetchError(f"short body: {got} of {expected_len}")
    return got


# --------------------------------------------------------------------------
# variant 3: http.client + readinto into a pool of big buffers
# --------------------------------------------------------------------------


def _open_http(url: str, offset: int, expected_len: int) -> tuple[Any, Any]:
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError("prototype handles plain http only (https: HTTPSConnection)")
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30.0)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    conn.request("GET", path, headers=_range_headers(offset, expected_len))
    resp = conn.getresponse()
    return conn, resp


def _fetch_readinto(
    url: str, fd: int, offset: int, expected_len: int, hasher: Any, *, pipeline: bool
) -> int:
    conn, resp = _open_http(url, offset, expected_len)
    try:
        _check_status(resp.status, resp.headers, offset, expected_len)
        # resp.readinto handles chunked transfer-encoding itself, and never
        # reads past Content-Length (resp.length) when there is one.
        free: queue.Queue[Any] = queue.Queue()
        for _ in range(N_BUFS):
            free.put((bytearray(BUF_SIZE), 0, 0))

        if pipeline:  # reader -> writer thread -> hasher thread -> free
            hw = _Worker(lambda mv, _pos: hasher.update(mv), free)
            ww = _Worker(lambda mv, pos: _pwrite_all(fd, mv, pos), hw.q)
            workers = [ww, hw]
        else:

            def hash_write(mv: memoryview, pos: int) -> None:
                hasher.update(mv)
                _pwrite_all(fd, mv, pos)

            ww = _Worker(hash_write, free)
            workers = [ww]
        got, pos = 0, offset
        try:
            while got < expected_len:
                buf = free.get()[0]
                for wk in workers:
                    if wk.exc:
                        raise wk.exc
                want = min(BUF_SIZE, expected_len - got)
                mv = memoryview(buf)[:want]
                fill = 0
                while fill < want:  # readinto may return short (chunk ends, EOF)
                    n = resp.readinto(mv[fill:])
                    if not n:
                        raise FetchError(f"connection closed after {got + fill} of {expected_len}")
                    fill += n
                ww.q.put((buf, fill, pos))
                got += fill
                pos += fill
            # anything left means the server sends more than expected_len
            if resp.read(1):
                raise FetchError("server sent more than expected")
        finally:
            ww.q.put(None)
            for wk in workers:
                wk.t.join()
        for wk in workers:
            if wk.exc:
                raise wk.exc
        return got
    finally:
        conn.close()


def fetch_readinto(url: str, fd: int, offset: int, expected_len: int, hasher: Any) -> int:
    return _fetch_readinto(url, fd, offset, expected_len, hasher, pipeline=False)


def fetch_readinto2(url: str, fd: int, offset: int, expected_len: int, hasher: Any) -> int:
    """RECOMMENDED: http.client readinto -> writer thread -> hasher thread.

    Three stages overlap on a pool of N_BUFS x BUF_SIZE (4 x 8 MiB) buffers:
    the caller's thread fills a buffer with ``resp.readinto`` (recv_into,
    GIL released), a writer thread ``os.pwrite``s it, a hasher thread runs
    ``hasher.update`` on it (GIL released for >2 KiB), then it returns to the
    free pool, so RSS is bounded (~55 MiB incl. the interpreter) and the
    slowest stage (sha512, ~1 GiB/s/core) sets the pace.

    Correctness pitfalls handled (keep them when lifting this into locpick):

    * partial reads: ``readinto`` may return fewer bytes than asked (chunk
      boundary, EOF); loop until the buffer part is full; 0 means the peer
      closed early -> FetchError (never a silent short file).
    * Content-Length must equal ``expected_len`` (checked before any write);
      after the last byte, ``resp.read(1)`` must be empty (over-long body).
      Never trust a size from the server over the one in the image metadata.
    * chunked transfer-encoding: ``HTTPResponse.readinto`` de-chunks, so the
      same loop works when there is no Content-Length; the length check then
      happens only at the end (short -> FetchError, long -> FetchError).
    * Range / resume (offset > 0): insist on 206 and the exact Content-Range;
      a 200 is the whole object and must not be written at ``offset``; the
      hasher must already contain bytes [0, offset) (re-hash the partial file
      first), since sha512 cannot be resumed from a digest.
    * Accept-Encoding: identity, and refuse any Content-Encoding: we hash
      stored bytes, not a gzip stream.
    * pwrite can be short: loop (_pwrite_all). Order: the hasher sees buffers
      strictly in stream order because the stages are FIFO queues.
    * a worker's exception is re-raised in the caller; buffers keep flowing
      so the producer never deadlocks on an empty free pool.
    * redirects (3xx) are not followed here: resolve the location first.
    * https: same code with HTTPSConnection (splice variants cannot do TLS).
    * the connection is closed at the end (no pooling): one GET per image,
      so keep-alive buys nothing; for parallel ranges use one conn per range.
    """
    return _fetch_readinto(url, fd, offset, expected_len, hasher, pipeline=True)


# --------------------------------------------------------------------------
# variant 4: splice socket -> pipe -> file, hash by reading the page cache
# --------------------------------------------------------------------------


def _raw_request(
    url: str, offset: int, expected_len: int
) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Minimal HTTP/1.1 request on a raw socket. Returns sock, status, headers,
    and the body bytes that arrived in the same recv()s as the headers."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError("splice needs a plain TCP socket (no TLS; kTLS aside)")
    host, port = u.hostname or "", u.port or 80
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    sock = socket.create_connection((host, port), timeout=30.0)
    hdrs = _range_headers(offset, expected_len)
    hostport = host if port == 80 else f"{host}:{port}"
    req = f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n"
    req += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    sock.sendall(req.encode("latin-1"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise FetchError("connection closed in headers")
        data += chunk
        if len(data) > 1 << 20:
            raise FetchError("headers too large")
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise FetchError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().title()] = v.strip()
    # Content-Length is mandatory here: chunked/close-delimited bodies cannot be
    # spliced blindly (chunk framing would land in the file) -> caller falls back.
    if headers.get("Transfer-Encoding", "identity").lower() != "identity":
        raise _NeedFallback("Transfer-Encoding " + headers["Transfer-Encoding"])
    if "Content-Length" not in headers:
        raise _NeedFallback("no Content-Length")
    return sock, status, headers, rest


class _NeedFallback(Exception):
    pass


class _Progress:
    """Bytes durably in the file so far; the hashing thread waits on it."""

    def __init__(self) -> None:
        self.done = 0
        self.eof = False
        self.cv = threading.Condition()

    def advance(self, n: int, eof: bool = False) -> None:
        with self.cv:
            self.done = n
            self.eof = eof
            self.cv.notify()

    def wait_past(self, n: int) -> tuple[int, bool]:
        with self.cv:
            while self.done <= n and not self.eof:
                self.cv.wait()
            return self.done, self.eof


def _fetch_splice(
    url: str, fd: int, offset: int, expected_len: int, hasher: Any, *, use_mmap: bool
) -> int:
    try:
        sock, status, headers, early = _raw_request(url, offset, expected_len)
    except _NeedFallback:
        return fetch_readinto(url, fd, offset, expected_len, hasher)
    prog = _Progress()
    hexc: list[BaseException] = []

    def hash_thread() -> None:
        try:
            h = 0  # bytes hashed so far (relative to offset)
            if use_mmap:
                while h < expected_len:
                    done, eof = prog.wait_past(h)
                    if eof and done <= h:
                        return
                    # map whole pages covering [offset+h, offset+done)
                    start = offset + h
                    base = start - start % mmap.ALLOCATIONGRANULARITY
                    end = min(offset + done, start + MMAP_WINDOW)  # bound RSS
                    length = end - base
                    mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=base)
                    try:
                        mm.madvise(mmap.MADV_SEQUENTIAL)
                        with memoryview(mm) as mv:
                            hasher.update(mv[start - base :])
                    finally:
                        mm.close()
                    h = end - offset
            else:
                buf = bytearray(HASH_STEP)
                mvb = memoryview(buf)
                while h < expected_len:
                    done, eof = prog.wait_past(h)
                    if eof and done <= h:
                        return
                    while h < done:
                        k = min(HASH_STEP, done - h)
                        n = os.preadv(fd, [mvb[:k]], offset + h)
                        if n <= 0:
                            raise OSError("preadv returned nothing")
                        hasher.update(mvb[:n])
                        h += n
        except BaseException as e:
            hexc.append(e)

    t = threading.Thread(target=hash_thread, daemon=True)
    t.start()
    r = w = -1
    got = 0
    try:
        _check_status(status, headers, offset, expected_len)
        sock.settimeout(None)  # splice needs a blocking fd (timeouts: SO_RCVTIMEO)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, (30).to_bytes(8, sys.byteorder) + bytes(8)
        )
        if len(early) > expected_len:
            raise FetchError("server sent more than expected")
        if early:
            _pwrite_all(fd, early, offset)
            got = len(early)
        r, w = os.pipe()
        with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        # mmap needs the file to extend over what we map
        if use_mmap and os.fstat(fd).st_size < offset + expected_len:
            os.ftruncate(fd, offset + expected_len)
        sfd = sock.fileno()
        published = 0
        while got < expected_len:
            n = os.splice(sfd, w, min(PIPE_SIZE, expected_len - got))
            if n == 0:
                raise FetchError(f"connection closed after {got} of {expected_len}")
            while n:  # drain the pipe fully into the file
                m = os.splice(r, fd, n, offset_dst=offset + got)
                if m <= 0:
                    raise OSError("splice to file wrote nothing")
                n -= m
                got += m
            if got - published >= HASH_STEP or got == expected_len:
                prog.advance(got)
                published = got
            if hexc:
                raise hexc[0]
    finally:
        prog.advance(got, eof=True)
        t.join()
        sock.close()
        for x in (r, w):
            if x >= 0:
                os.close(x)
    if hexc:
        raise hexc[0]
    return got


def fetch_splice_pread(url: str, fd: int, offset: int, expected_len: int, hasher: Any) -> int:
    return _fetch_splice(url, fd, offset, expected_len, hasher, use_mmap=False)


def fetch_splice_mmap(url: str, fd: int, offset: int, expected_len: int, hasher: Any) -> int:
    return _fetch_splice(url, fd, offset, expected_len, hasher, use_mmap=True)


VARIANTS: dict[str, Callable[[str, int, int, int, Any], int]] = {
    "httpx_inline": fetch_httpx_inline,
    "httpx_thread": fetch_httpx_thread,
    "readinto": fetch_readinto,
    "readinto2": fetch_readinto2,
    "splice_pread": fetch_splice_pread,
    "splice_mmap": fetch_splice_mmap,
}
RECOMMENDED = "readinto2"
fetch_to_fd = VARIANTS[RECOMMENDED]


def _content_length(url: str) -> int:
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30.0)
    try:
        c.request("HEAD", u.path or "/")
        r = c.getresponse()
        r.read()
        return int(r.headers["Content-Length"])
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("dest")
    ap.add_argument("--variant", default=RECOMMENDED, choices=sorted(VARIANTS))
    ap.add_argument("--size", type=int, help="expected length (default: HEAD)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--sha512", help="expected hex digest (of the fetched range)")
    a = ap.parse_args(argv)
    size = a.size if a.size is not None else _content_length(a.url) - a.offset
    t0 = time.perf_counter()
    # O_RDWR: the splice variants read the written range back to hash it
    flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if a.offset == 0 else 0)
    fd = os.open(a.dest, flags, 0o644)
    try:
        h = hashlib.sha512()
        n = VARIANTS[a.variant](a.url, fd, a.offset, size, h)
        if a.offset == 0:
            os.ftruncate(fd, n)  # (splice_mmap pre-sized the file)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    digest = h.hexdigest()
    ok = a.sha512 is None or digest == a.sha512.lower()
    print(json.dumps({"variant": a.variant, "bytes": n, "seconds": dt, "sha512": digest, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
