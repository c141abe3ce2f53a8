"""Swift 2.38 all-in-one on loopback: proxy (tempauth) on PORT, account, container and
object servers on PORT+1..PORT+3, one-replica rings, one device, per WORKDIR.

tempauth users (as Swift's SAIO): ``test:tester``/``testing`` (.admin of AUTH_test),
``test:tester3``/``testing3`` (no groups), ``test2:tester2``/``testing2`` (.admin of
AUTH_test2), ``admin:admin``/``admin`` (.reseller_admin).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

from harness import procs
from harness.glance import WSGI_DIR
from harness.venvs import HarnessError, cache_dir, link_venv

SERVERS = ("account", "container", "object", "proxy")
PART_POWER = 8
RING_FILES = (
    "ring-ports",
    *(f"{r}.{ext}" for r in ("account", "container", "object") for ext in ("builder", "ring.gz")),
)


def ports(port: int) -> dict[str, int]:
    return {"proxy": port, "account": port + 1, "container": port + 2, "object": port + 3}


def cached_ring_ports() -> tuple[int, ...]:
    """Ports whose rings are cached (building them costs ~2 s, so these are preferred)."""
    d = cache_dir("swift") / "rings"
    return tuple(sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())) if d.is_dir() else ()


def _xattrs_work(directory: Path) -> bool:
    """The object server keeps metadata in user.* xattrs (ext4, xfs, btrfs, tmpfs >= 6.6)."""
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        os.setxattr(path, "user.swift.probe", b"x" * 300)
        return os.getxattr(path, "user.swift.probe") == b"x" * 300
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def _devices(workdir: Path) -> Path:
    """WORKDIR/srv/node/d1 on a filesystem with user xattrs (a tmpfs mounted on
    WORKDIR/srv if the one below has none; needs root)."""
    srv = workdir / "srv"
    srv.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(srv) and not _xattrs_work(srv):
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "locpick-swift", str(srv)],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            raise HarnessError(f"{srv} has no user xattrs and mounting a tmpfs failed: {r.stderr}")
        (workdir / "mounted").write_text("tmpfs\n")
    device = srv / "node" / "d1"
    device.mkdir(parents=True, exist_ok=True)
    if not _xattrs_work(device):
        raise HarnessError(f"{device} has no user xattrs; Swift's object server needs them")
    return srv / "node"


def _rings(venv: Path, etc: Path, port: int, log: Path) -> None:
    """Rings for these ports: from WORKDIR, else the per-port cache, else built (and cached)."""
    p = ports(port)
    want = f"{p['account']} {p['container']} {p['object']} {PART_POWER}"
    stamp = etc / "ring-ports"
    if stamp.exists() and stamp.read_text().strip() == want:
        return
    cached = cache_dir("swift") / "rings" / str(port)
    complete = all((cached / f).exists() for f in RING_FILES)
    if complete and (cached / "ring-ports").read_text().strip() == want:
        for f in RING_FILES:
            shutil.copy2(cached / f, etc / f)
        return
    builder = str(venv / "bin" / "swift-ring-builder")
    for ring in ("account", "container", "object"):
        path = str(etc / f"{ring}.builder")
        (etc / f"{ring}.builder").unlink(missing_ok=True)
        (etc / f"{ring}.ring.gz").unlink(missing_ok=True)
        procs.run_logged([builder, path, "create", str(PART_POWER), "1", "1"], log, "ring create")
        device = f"r1z1-{procs.HOST}:{p[ring]}/d1"
        procs.run_logged([builder, path, "add", device, "1"], log, "ring add")
        # rebalance exits 1 for "done, with warnings"
        r = subprocess.run(
            [builder, path, "rebalance"], capture_output=True, text=True, check=False
        )
        if r.returncode > 1 or not (etc / f"{ring}.ring.gz").exists():
            raise HarnessError(f"rebalancing the {ring} ring failed: {r.stdout}{r.stderr}")
    stamp.write_text(want + "\n")
    with contextlib.suppress(OSError):
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        for f in RING_FILES:
            shutil.copy2(etc / f, tmp / f)
        try:
            tmp.rename(cached)
        except OSError:  # another session cached them first
            shutil.rmtree(tmp, ignore_errors=True)


def _default_section(name: str, port: int, etc: Path, devices: Path, run: Path, syslog: int) -> str:
    # Swift always adds a syslog handler (/dev/log, else UDP :514): point it at an unused
    # loopback port so nothing leaves 127.0.0.1; the real log is the console (-v) output.
    return f"""[DEFAULT]
bind_ip = {procs.HOST}
bind_port = {port}
workers = 0
swift_dir = {etc}
devices = {devices}
mount_check = false
log_name = {name}
log_level = INFO
log_udp_host = {procs.HOST}
log_udp_port = {syslog}
recon_cache_path = {run}
"""


def _backend_conf(name: str) -> str:
    return f"""
[pipeline:main]
pipeline = healthcheck recon {name}-server

[app:{name}-server]
use = egg:swift#{name}

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:recon]
use = egg:swift#recon
"""


def _proxy_conf(fernet_key: str) -> str:
    pipeline = [
        *("catch_errors", "gatekeeper", "healthcheck", "proxy_logging", "cache"),
        *("listing_formats", "bulk", "tempurl", "tempauth", "copy", "slo", "dlo"),
        *("versioned_writes", "symlink", "proxy_logging", "proxy-server"),
    ]
    stock = [f for f in dict.fromkeys(pipeline) if f not in ("cache", "tempauth", "proxy-server")]
    stock.remove("versioned_writes")
    sections = "".join(f"\n[filter:{f}]\nuse = egg:swift#{f}\n" for f in stock)
    return f"""
[pipeline:main]
pipeline = {" ".join(pipeline)}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
reseller_prefix = AUTH
token_life = 86400
fernet_key_k1 = {fernet_key}
active_fernet_key_id = k1
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin
user_test_tester3 = testing3

# a dict in the proxy process instead of memcached
[filter:cache]
paste.filter_factory = locpick_swift_cache:filter_factory

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
{sections}"""


def write_config(workdir: Path, venv: Path, port: int) -> Path:
    etc, run, logs = workdir / "etc", workdir / "run", workdir / "log"
    for d in (etc, run, logs):
        d.mkdir(parents=True, exist_ok=True)
    devices = _devices(workdir)
    suffix = etc / "hash_suffix"
    if not suffix.exists():
        suffix.write_text(secrets.token_hex(8) + "\n")
    key_file = etc / "fernet.key"
    if not key_file.exists():
        # a Fernet key is 32 random bytes, urlsafe base64
        key_file.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
        key_file.chmod(0o600)
    (etc / "swift.conf").write_text(
        f"""[swift-hash]
swift_hash_path_prefix = locpick
swift_hash_path_suffix = {suffix.read_text().strip()}

[storage-policy:0]
name = Policy-0
default = yes
"""
    )
    _rings(venv, etc, port, logs / "rings.log")
    for name, p in ports(port).items():
        head = _default_section(f"{name}-server", p, etc, devices, run, port + 9)
        body = _proxy_conf(key_file.read_text().strip()) if name == "proxy" else _backend_conf(name)
        (etc / f"{name}-server.conf").write_text(head + body)
    (workdir / "port").write_text(f"{port}\n")
    return etc


def running(workdir: Path) -> int | None:
    """The proxy port of the Swift this WORKDIR runs, if all four servers live and answer."""
    pids = [procs.read_pid(workdir / f"{s}.pid") for s in SERVERS]
    if None in pids or not (workdir / "port").exists():
        return None
    port = int((workdir / "port").read_text())
    return port if procs.http_status(f"http://{procs.HOST}:{port}/healthcheck") == 200 else None


def start(workdir: Path, port: int, timeout: float = 120) -> tuple[str, bool]:
    """Start Swift in WORKDIR on PORT..PORT+3 (idempotent); (proxy URL, venv was cached)."""
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"http://{procs.HOST}:{port}"
    live = running(workdir)
    if live == port:
        return url, True
    stop(workdir)  # a partly running or other-port instance of this WORKDIR
    venv, cached = link_venv("swift", workdir)
    for p in ports(port).values():
        if not procs.port_free(p):
            raise HarnessError(f"port {p} on {procs.HOST} is already in use")
    etc = write_config(workdir, venv, port)
    pids = []
    try:
        for s in SERVERS:
            pids.append(
                procs.spawn(
                    [str(venv / "bin" / f"swift-{s}-server"), str(etc / f"{s}-server.conf"), "-v"],
                    env={"PYTHONPATH": str(WSGI_DIR)},
                    log=workdir / "log" / f"{s}.log",
                    pidfile=workdir / f"{s}.pid",
                )
            )
        for s, p in ports(port).items():
            health = f"http://{procs.HOST}:{p}/healthcheck"
            procs.wait_until(
                lambda health=health: procs.http_status(health) == 200,
                pids,
                timeout,
                f"swift-{s}-server on port {p}",
                [workdir / "log" / f"{name}.log" for name in SERVERS],
            )
    except BaseException:
        stop(workdir)
        raise
    return url, cached


def stop(workdir: Path) -> None:
    """Stop the servers whose pids are in WORKDIR/*.pid (each its own process group)."""
    for s in ("proxy", "object", "container", "account"):
        procs.stop_pidfile(workdir / f"{s}.pid", workdir, grace=10)


# --------------------------------------------------------------------- uploads


def request(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | BinaryIO | None = None,
    timeout: float = 300,
) -> tuple[int, dict[str, str], bytes]:
    """One plain-http request: (status, lower-cased headers, body); never raises on status."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError(f"only http:// URLs here, got {url!r}")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout, blocksize=1 << 20)
    try:
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class _Slice:
    """Reads at most ``n`` bytes of ``f`` and hashes them (one DLO segment)."""

    def __init__(self, f: BinaryIO, n: int) -> None:
        self.f, self.left, self.md5 = f, n, hashlib.md5()

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        block = self.f.read(size) if size > 0 else b""
        self.left -= len(block)
        self.md5.update(block)
        return block


def glance_uri(base: str, container: str, obj: str, user: str = "", key: str = "") -> str:
    """``swift+http://[USER:KEY@]HOST:PORT/PATH/CONTAINER/OBJ`` as glance_store's
    ``StoreLocation.get_uri`` writes it (user and key percent-quoted)."""
    u = urllib.parse.urlsplit(base)
    q = urllib.parse.quote
    cred = f"{q(user)}:{q(key)}@" if user and key else ""
    rest = (u.netloc + u.path).strip("/")
    return f"swift+{u.scheme}://{cred}{rest}/{container.strip('/')}/{obj.strip('/')}"


def put(
    auth_url: str,
    path: Path,
    container: str,
    obj: str,
    *,
    user: str,
    key: str,
    public: bool = False,
    content_type: str = "application/octet-stream",
    segment_size: int = 0,
) -> dict[str, Any]:
    """tempauth login, PUT the container (``public``: readable by anyone), PUT the object
    with its md5 as ETag (Swift checks it). ``segment_size``: as Glance stores large images,
    segments ``OBJ-00001``... then a zero-byte manifest with ``X-Object-Manifest``."""
    st, h, body = request("GET", auth_url, {"X-Auth-User": user, "X-Auth-Key": key})
    storage_url, token = h.get("x-storage-url"), h.get("x-auth-token")
    if st // 100 != 2 or not storage_url or not token:
        raise HarnessError(f"Swift auth {auth_url} as {user} -> {st} {body[:200]!r}")
    q = urllib.parse.quote
    container_url = f"{storage_url}/{q(container, safe='')}"
    object_url = f"{container_url}/{q(obj, safe='/')}"
    ch = {"X-Auth-Token": token, "Content-Length": "0"}
    if public:
        ch["X-Container-Read"] = ".r:*,.rlistings"
    st, _, body = request("PUT", container_url, ch, b"")
    if st not in (201, 202):
        raise HarnessError(f"PUT {container_url} -> {st} {body[:200]!r}")
    size = path.stat().st_size
    base = {"X-Auth-Token": token, "Content-Type": content_type}
    with path.open("rb") as f:
        if segment_size > 0:
            seg_etags = []
            for i in range(1, max(1, -(-size // segment_size)) + 1):
                part = _Slice(f, min(segment_size, size - (i - 1) * segment_size))
                hdrs = {**base, "Content-Length": str(part.left)}
                st, h, body = request("PUT", f"{object_url}-{i:05d}", hdrs, part)
                if st != 201 or h.get("etag", "").strip('"') != part.md5.hexdigest():
                    raise HarnessError(f"segment {i} of {object_url} -> {st} {body[:200]!r}")
                seg_etags.append(part.md5.hexdigest())
            manifest = f"{q(container, safe='')}/{q(obj, safe='/')}-"
            hdrs = {**base, "Content-Length": "0", "X-Object-Manifest": manifest}
            st, _, body = request("PUT", object_url, hdrs, b"")
            if st != 201:
                raise HarnessError(f"manifest PUT {object_url} -> {st} {body[:200]!r}")
            etag = hashlib.md5("".join(seg_etags).encode()).hexdigest()
        else:
            part = _Slice(f, size)
            digest = hashlib.md5(path.read_bytes()).hexdigest() if size < (64 << 20) else None
            hdrs = {**base, "Content-Length": str(size), **({"ETag": digest} if digest else {})}
            st, h, body = request("PUT", object_url, hdrs, part)
            etag = h.get("etag", "").strip('"')
            if st != 201 or etag != part.md5.hexdigest():
                raise HarnessError(f"PUT {object_url} -> {st} {body[:200]!r}")
    return {
        "url": object_url,
        "token": token,
        "storage_url": storage_url,
        "container": container,
        "object": obj,
        "etag": etag,
        "bytes": size,
        "dlo": segment_size > 0,
        "glance_single_tenant_uri": glance_uri(auth_url, container, obj, user, key),
        "glance_multi_tenant_uri": glance_uri(storage_url, container, obj),
    }
