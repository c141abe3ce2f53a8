"""`locpick serve`: the cache read-only over HTTP with Range, nothing else reachable."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import random
import resource
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import glance_harness as gh
import pytest
from fixtures_cache import ServeProcess, serve_on_its_port
from helpers import image_record, run_cli
from prometheus_client.parser import text_string_to_metric_families

from locpick.cache.files import valid_image_id
from locpick.cache.store import NodeCache
from locpick.glance.images import parse_image

IMG = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DATA = os.urandom(3_000_000)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, NodeCache]]:
    base = tmp_path_factory.mktemp("serve")
    cache = NodeCache(base / "cache")
    src = base / "src"
    src.write_bytes(DATA)
    cache.add_file(parse_image(image_record(IMG, DATA, []), IMG), src)
    (base / "secret").write_bytes(b"outside the cache")
    (cache.images / "partial").write_bytes(b"no sidecar: incomplete")
    cfg = base / "serve.toml"  # 16 connections from one address at once (issue 24's cap)
    cfg.write_text("[serve]\nmax_clients = 32\nmax_transfers_per_client = 16\n")
    with ServeProcess(base / "cache", config=cfg) as proc:
        yield proc, cache


def _get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_full_get_and_head(served: tuple[ServeProcess, NodeCache]) -> None:
    """GET returns the whole image; the hash it was verified with is in a header."""
    proc, _ = served
    status, headers, body = _get(proc.port, proc.image_path(IMG))
    assert status == 200 and body == DATA
    assert headers["content-length"] == str(len(DATA))
    assert headers["x-image-meta-hash"].startswith("sha512:")
    assert headers.get("accept-ranges") == "bytes"


@pytest.mark.parametrize(
    "path",
    [
        "/images/../secret",
        "/images/%2e%2e/secret",
        "/images/..%2fsecret",
        "/images/%2e%2e%2fsecret",
        f"/images/{IMG}.json/TOKEN",
        "/images/../secret/TOKEN",
        "/images/.lock/TOKEN",
        "/images/partial",
        "/images/unknown-id",
        "/images/",
        "/",
        "/images",
        "/../secret",
        "/images/.lock",
    ],
)
def test_refuses_paths_and_unknown_ids(served: tuple[ServeProcess, NodeCache], path: str) -> None:
    """Traversal, sidecars, incomplete files, unknown ids and listings: 404, or 403 (no token)."""
    proc, _ = served
    status, _h, body = _get(proc.port, path)
    assert status in (403, 404), (path, status)
    assert b"outside the cache" not in body and IMG.encode() not in body


def test_concurrent_range_requests_return_the_right_bytes(
    served: tuple[ServeProcess, NodeCache],
) -> None:
    """64 Range requests over 16 connections at once: every slice is exactly the file's."""
    proc, _ = served
    rng = random.Random(7)
    ranges = [
        (a, min(len(DATA) - 1, a + rng.randrange(1, 400_000)))
        for a in (rng.randrange(0, len(DATA)) for _ in range(63))
    ]
    ranges.append((len(DATA) - 10, len(DATA) - 1))

    def one(r: tuple[int, int]) -> bool:
        status, headers, body = _get(
            proc.port, proc.image_path(IMG), {"Range": f"bytes={r[0]}-{r[1]}"}
        )
        assert status == 206, status
        assert headers["content-range"] == f"bytes {r[0]}-{r[1]}/{len(DATA)}"
        return body == DATA[r[0] : r[1] + 1]

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, ranges))
    assert all(results) and len(results) == 64


def test_suffix_and_unsatisfiable_ranges(served: tuple[ServeProcess, NodeCache]) -> None:
    """bytes=-N gives the tail; a range past the end answers 416."""
    proc, _ = served
    status, _h, body = _get(proc.port, proc.image_path(IMG), {"Range": "bytes=-1000"})
    assert status == 206 and body == DATA[-1000:]
    status, _h, _b = _get(proc.port, proc.image_path(IMG), {"Range": f"bytes={len(DATA) + 5}-"})
    assert status == 416


def test_write_methods_are_refused(served: tuple[ServeProcess, NodeCache]) -> None:
    """Read-only: PUT/DELETE/POST change nothing."""
    proc, cache = served
    for method in ("PUT", "DELETE", "POST"):
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
        conn.request(method, proc.image_path(IMG), body=b"evil")
        status = conn.getresponse().status
        conn.close()
        assert status in (404, 405), (method, status)
    assert (cache.images / IMG).read_bytes() == DATA


def test_evicted_image_is_gone_from_serve(tmp_path: Path) -> None:
    """After eviction the id answers 404 at once (the sidecar goes first)."""
    cache = NodeCache(tmp_path / "c")
    src = tmp_path / "s"
    src.write_bytes(b"abc" * 1000)
    cache.add_file(parse_image(image_record("x1", b"abc" * 1000, []), "x1"), src)
    with ServeProcess(tmp_path / "c") as proc:
        assert _get(proc.port, proc.image_path("x1"))[0] == 200
        cache.evict("x1")
        assert _get(proc.port, proc.image_path("x1"))[0] == 404


def test_symlink_planted_in_the_cache_is_not_followed_out(tmp_path: Path) -> None:
    """An entry whose data file is a symlink to a file outside the cache answers 404."""
    cache = NodeCache(tmp_path / "c")
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret bytes")
    (cache.images / "evil").symlink_to(secret)
    (cache.images / "evil.json").write_text(
        '{"size": 16, "algo": "sha512", "digest": "00", "registered_url": null}'
    )
    assert cache.entry("evil") is None  # not a regular file: not an entry
    with ServeProcess(tmp_path / "c") as proc:
        status, _h, body = _get(proc.port, proc.image_path("evil"))
    assert status == 404 and b"secret" not in body


# -- authorisation: capability URLs --------------------------------------------------------
def _cache_with(tmp_path: Path, image_id: str, data: bytes, **record: object) -> NodeCache:
    cache = NodeCache(tmp_path / "c")
    src = tmp_path / f"src-{image_id}"
    src.write_bytes(data)
    cache.add_file(parse_image(image_record(image_id, data, [], **record), image_id), src)
    return cache


def test_anonymous_and_wrong_tokens_are_refused(served: tuple[ServeProcess, NodeCache]) -> None:
    """Knowing the id is not enough: no token, a wrong one, another image's: 403, no bytes."""
    proc, cache = served
    other = cache.token("some-other-image")
    wrong = "lpc1_" + "A" * 43
    for path in (f"/images/{IMG}", f"/images/{IMG}/{wrong}", f"/images/{IMG}/{other}"):
        status, _h, body = _get(proc.port, path)
        assert status == 403 and DATA[:64] not in body, (path, status)
    # Not cached and no token: the same 403, so an anonymous client cannot probe the cache.
    assert _get(proc.port, "/images/not-cached")[0] == 403
    assert _get(proc.port, f"/images/not-cached/{cache.token('not-cached')}")[0] == 404


def test_rotated_secret_refuses_old_urls_without_restart(tmp_path: Path) -> None:
    """After rotation the old capability URL answers 403 and the new one serves the image."""
    data = os.urandom(10_000)
    cache = _cache_with(tmp_path, "rot1", data)
    with ServeProcess(cache.dir) as proc:
        old = proc.image_path("rot1")
        assert _get(proc.port, old)[0] == 200
        cache.rotate_secret()
        new = proc.image_path("rot1")
        assert new != old
        assert _get(proc.port, old)[0] == 403
        status, _h, body = _get(proc.port, new)
        assert status == 200 and body == data


def test_cache_dir_secret_and_entries_are_private(tmp_path: Path) -> None:
    """Cache directory 0700, entries and the secret 0600, the secret 32 random bytes."""
    cache = _cache_with(tmp_path, "priv1", b"x" * 1000)
    cache.token("priv1")
    assert stat.S_IMODE(os.stat(cache.dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cache.images).st_mode) == 0o700
    for p in (cache.images / "priv1", cache.images / "priv1.json", cache.dir / ".secret"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert len((cache.dir / ".secret").read_bytes()) == 32
    assert NodeCache(cache.dir).token("priv1") == cache.token("priv1")  # stable across opens


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A secret with group/world bits could have leaked: serve refuses to start, exit 2."""
    cache = _cache_with(tmp_path, "s1", b"y" * 100)
    cache.token("s1")
    os.chmod(cache.dir / ".secret", 0o644)
    r = run_cli("serve", "--cache-dir", str(cache.dir), "--bind", "127.0.0.1:0")
    assert r.returncode == 2
    assert "secret" in r.stderr and "0600" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("open_public", [True, False])
def test_open_public_serves_public_images_only(tmp_path: Path, open_public: bool) -> None:
    """``[serve] open_public``: public images without a token; private ones never."""
    cache = _cache_with(tmp_path, "pub1", b"p" * 5000, visibility="public")
    src = tmp_path / "src-priv"
    src.write_bytes(b"q" * 5000)
    priv = parse_image(image_record("priv1", b"q" * 5000, [], visibility="private"), "priv1")
    cache.add_file(priv, src)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f"[serve]\nopen_public = {str(open_public).lower()}\n")
    with ServeProcess(cache.dir, config=cfg) as proc:
        status, _h, body = _get(proc.port, "/images/pub1")
        assert status == (200 if open_public else 403)
        assert (body == b"p" * 5000) is open_public
        assert _get(proc.port, "/images/priv1")[0] == 403
        assert _get(proc.port, proc.image_path("priv1"))[0] == 200


# -- entries outside the rules --------------------------------------------------------------
def _plant(cache: NodeCache, name: str, data: bytes) -> None:
    (cache.images / name).write_bytes(data)
    (cache.images / (name + ".json")).write_text(
        json.dumps({"size": len(data), "algo": "sha512", "digest": "00"})
    )
    for p in (cache.images / name, cache.images / (name + ".json")):
        os.chmod(p, 0o600)


def test_newline_id_is_not_an_id_and_is_never_served(tmp_path: Path) -> None:
    """``img1\\n`` is no image id, and ``/images/img1%0a`` does not serve a planted entry."""
    assert not valid_image_id("img1\n")
    assert not valid_image_id("img1\n\n")
    cache = _cache_with(tmp_path, "img1", b"real" * 100)
    _plant(cache, "img1\n", b"planted")
    with ServeProcess(cache.dir) as proc:
        tok = NodeCache(cache.dir).token("img1\n")
        for path in ("/images/img1%0a", f"/images/img1%0a/{tok}", f"/images/img1%0A/{tok}"):
            status, _h, body = _get(proc.port, path)
            assert status in (403, 404) and b"planted" not in body, (path, status)
        assert _get(proc.port, proc.image_path("img1"))[2] == b"real" * 100


def test_hardlinked_or_foreign_entries_are_not_served(tmp_path: Path) -> None:
    """A data file with a second link, or owned by another user, is not an entry."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"someone else's file")
    os.chmod(outside, 0o600)
    cache = NodeCache(tmp_path / "c")
    os.link(outside, cache.images / "linked")
    (cache.images / "linked.json").write_text(
        json.dumps({"size": outside.stat().st_size, "algo": "sha512", "digest": "00"})
    )
    os.chmod(cache.images / "linked.json", 0o600)
    _plant(cache, "foreign", b"foreign bytes")
    os.chown(cache.images / "foreign", 65534, 65534)
    _plant(cache, "fine", b"fine bytes")
    assert cache.entry("linked") is None and cache.entry("foreign") is None
    assert cache.entry("fine") is not None
    with ServeProcess(cache.dir) as proc:
        for name in ("linked", "foreign"):
            status, _h, body = _get(proc.port, proc.image_path(name))
            assert status == 404 and b"bytes" not in body and b"file" not in body, name
        assert _get(proc.port, proc.image_path("fine"))[2] == b"fine bytes"


def test_group_writable_cache_dir_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Others could have planted entries: serve exits 2 naming why; lookups see nothing."""
    cache = _cache_with(tmp_path, "gw1", b"z" * 100)
    os.chmod(cache.images, 0o770)
    assert cache.entry("gw1") is None
    assert "group/world-writable" in (cache.problem() or "")
    r = run_cli("serve", "--cache-dir", str(cache.dir), "--bind", "127.0.0.1:0")
    assert r.returncode == 2 and "group/world-writable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- Range -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0, 50_000_000])
def test_zero_length_suffix_range_is_416(tmp_path: Path, rate: int) -> None:
    """``bytes=-0`` is unsatisfiable (RFC 9110): 416, not the whole file (sendfile and paced)."""
    data = os.urandom(50_000)
    cache = _cache_with(tmp_path, "r1", data)
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f"[serve]\nmax_rate = {rate}\n")
    with ServeProcess(cache.dir, config=cfg) as proc:
        path = proc.image_path("r1")
        for rng in ("bytes=-0", "bytes=-00", "bytes = -0"):
            status, headers, body = _get(proc.port, path, {"Range": rng})
            assert status == 416 and body != data, (rng, status)
            assert headers["content-range"] == f"bytes */{len(data)}"
        status, headers, body = _get(proc.port, path, {"Range": "bytes=100-199"})
        assert status == 206 and body == data[100:200]
        assert headers["content-range"] == f"bytes 100-199/{len(data)}"
        status, _h, body = _get(proc.port, path, {"Range": "bytes=-10"})
        assert status == 206 and body == data[-10:]
        status, _h, body = _get(proc.port, path)
        assert status == 200 and body == data


# -- load ------------------------------------------------------------------------------------
def test_healthz(served: tuple[ServeProcess, NodeCache]) -> None:
    """``/healthz`` answers ok without a token."""
    proc, _ = served
    status, _h, body = _get(proc.port, "/healthz")
    assert status == 200 and body == b"ok\n"


def test_past_max_clients_is_503_with_retry_after(tmp_path: Path) -> None:
    """Two paced transfers in flight with max_clients 2: a third gets 503 + Retry-After."""
    data = os.urandom(2_000_000)
    cache = _cache_with(tmp_path, "busy1", data)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nmax_clients = 2\nmax_rate = 100000\nretry_after = 7\n")
    with ServeProcess(cache.dir, config=cfg) as proc:
        path = proc.image_path("busy1")
        held = []
        for source in ("127.0.0.2", "127.0.0.3"):  # one address never gets every slot
            conn = http.client.HTTPConnection(
                "127.0.0.1", proc.port, timeout=30, source_address=(source, 0)
            )
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read(1000)  # started; the rest would take ~20 s at 100 kB/s
            held.append(conn)
        status, headers, _b = _get(proc.port, path)
        assert status == 503 and headers["retry-after"] == "7"
        assert _get(proc.port, "/healthz")[0] == 200  # not a transfer: never limited
        for conn in held:
            conn.close()
        for _ in range(600):  # until the server notices the closed transfers
            status, _h, body = _get(proc.port, path, {"Range": "bytes=0-9"})
            if status != 503:
                break
            time.sleep(0.05)
        assert status == 206 and body == data[:10]


@pytest.mark.parametrize(
    "bind",
    ["nonsense", "127.0.0.1", "::1:8470", "[::1]", "[127.0.0.1]:80", "127.0.0.1:99999", "a b:1"],
)
def test_bad_bind_is_one_line_exit_2(tmp_path: Path, bind: str) -> None:
    """A malformed --bind (IPv6 without brackets included): one line naming it, exit 2."""
    r = run_cli("serve", "--cache-dir", str(tmp_path / "c"), "--bind", bind)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bind" in lines[0]


def test_bind_failure_is_one_line_exit_2(tmp_path: Path) -> None:
    """A port already taken: one line, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("serve", "--cache-dir", str(tmp_path / "c"), "--bind", f"127.0.0.1:{port}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0], r.stderr


def test_ipv6_bind(tmp_path: Path) -> None:
    """``--bind [::1]:0`` listens on IPv6 loopback and serves."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    cache = _cache_with(tmp_path, "v6", b"six" * 100)
    with ServeProcess(cache.dir, bind="[::1]:0") as proc:
        assert proc.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", proc.port, timeout=30)
        conn.request("GET", proc.image_path("v6"))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"six" * 100
        conn.close()


def _nofile_200() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))


def test_dripping_sockets_cannot_starve_serve_under_ulimit(tmp_path: Path) -> None:
    """``ulimit -n 200``, 300 sockets dripping request heads from one neighbour: a legitimate
    GET still succeeds, and every dripping socket is closed by the server while it still drips
    (by the header deadline: the keep-alive one is far away here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    data = os.urandom(200_000)
    cache = _cache_with(tmp_path, "drip1", data)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nheader_timeout = 1.5\nkeepalive_timeout = 600\n")
    with ServeProcess(cache.dir, config=cfg, preexec_fn=_nofile_200) as proc:
        drippers: list[socket.socket] = []
        for _ in range(300):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))  # the hostile neighbour; the legitimate client is 127.0.0.1
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", proc.port))
                s.sendall(b"GET /images/drip1 HTTP/1.1\r\nHost: x\r\nX-A: ")
            except OSError:
                s.close()
                continue
            s.setblocking(False)
            drippers.append(s)
        assert len(drippers) >= 250

        # The legitimate client gets its image while all of them are open and dripping.
        status, _h, body = _get(proc.port, proc.image_path("drip1"))
        assert status == 200 and body == data

        open_ = {s.fileno(): s for s in drippers}
        busy_answers = timed_out = 0
        for _ in range(1200):  # drip a byte every 0.1 s until the server has closed them all
            for fd, s in list(open_.items()):
                try:
                    got = s.recv(4096)
                except BlockingIOError:
                    got = None
                except OSError:
                    got = b""
                if got is None:
                    try:
                        s.send(b"a")
                        continue
                    except BlockingIOError:
                        continue
                    except OSError:
                        got = b""
                if got.startswith(b"HTTP/1.1 503"):
                    busy_answers += 1
                elif got == b"":
                    timed_out += 1
                else:
                    continue  # the rest of a 503 answer arrives with the close
                s.close()
                del open_[fd]
            if not open_:
                break
            time.sleep(0.1)
        assert not open_, f"{len(open_)} dripping sockets still open"
        assert timed_out > 0 and busy_answers > 0  # both defences acted: caps and deadlines
        # Every refused connection is counted in /metrics (some 503s were never read).
        _s, _h, text = _get(proc.port, "/metrics")
        refused = {
            s.labels["reason"]: s.value
            for f in text_string_to_metric_families(text.decode())
            for s in f.samples
            if s.name == "locpick_serve_refused_total"
        }
        assert refused.get("per_client", 0) + refused.get("connections", 0) >= busy_answers
        status, _h, body = _get(proc.port, proc.image_path("drip1"))
        assert status == 200 and body == data
    assert "Too many open files" not in "".join(proc.log)  # the caps kept it below ulimit -n


def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    """After a request, a connection idle for ``keepalive_timeout`` is closed by the server."""
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nheader_timeout = 600\nkeepalive_timeout = 1\n")
    with ServeProcess(NodeCache(tmp_path / "c").dir, config=cfg) as proc:
        idle = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=60)
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() == b"ok\n"
        assert idle.sock is not None and idle.sock.recv(1) == b""
        idle.close()


def test_a_node_whose_port_was_taken_serves_on_another(tmp_path: Path) -> None:
    """The fleet fixtures give each node a free port before it serves; another server of the
    run may bind it first (it failed a CI run): the node moves to another port and starts."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        ports = [taker.getsockname()[1]]
        cache = tmp_path / "cache"
        cache.mkdir()

        def start() -> ServeProcess:
            return ServeProcess(cache, bind=f"127.0.0.1:{ports[-1]}")

        serve = serve_on_its_port(start, lambda: ports.append(gh.find_free_port()))
        try:
            assert len(ports) == 2 and serve.port == ports[1]
        finally:
            serve.stop()
