"""Stdlib-only helpers around the shared Swift test harness.

The harness (``$LOCPICK_SWIFT_HARNESS``, default ``../shared/swift-harness``
beside the repository, else ``/work/shared/...``,
see its README.md) runs an unmodified OpenStack Swift 2.38.3 all-in-one
cluster on 127.0.0.1 with **tempauth** (auth v1.0).  Its directory is
read-only: every instance gets its own WORKDIR, and ``start-swift`` would
normally create ``WORKDIR/venv`` (``pip install swift``, ~10 s).  To make warm
starts fast, :func:`start_swift` keeps that venv in a persistent cache,
``${LOCPICK_HARNESS_CACHE:-~/.cache/locpick-test}/swift/venv``, and points
``WORKDIR/venv`` at it with a symlink; the rings (per port) are cached in
``.../swift/rings/PORT`` and ports with cached rings are preferred.  ``start-swift`` accepts any
``WORKDIR/venv`` that imports swift, so it reuses the cached one (and if
the cache were ever broken it would just remove the symlink and build a
private venv in WORKDIR, i.e. still work, only slowly).

Users (tempauth, same as Swift's SAIO):

============== ========== ============ ======================================
X-Auth-User    X-Auth-Key account      groups
============== ========== ============ ======================================
test:tester    testing    AUTH_test    .admin (owner of AUTH_test)
test:tester3   testing3   AUTH_test    none (needs an ACL to read)
test2:tester2  testing2   AUTH_test2   .admin of AUTH_test2
admin:admin    admin      AUTH_admin   .admin .reseller_admin (every account)
============== ========== ============ ======================================

Location strings Glance (glance_store 5.7.0 swift driver) writes, per the
harness README ("How Glance records Swift locations"):

1. Single tenant, credentials in the URL (the default)::

       swift+http[s]://ACCOUNT%3AUSER:KEY@AUTH_HOST[:PORT]/AUTH_PATH/CONTAINER/OBJECT

   ``swift://`` means ``swift+https://``.  User and key are written with
   ``urllib.parse.quote`` (so ``:`` in ``account:user`` becomes ``%3A``) and
   parsed back by splitting the unquoted userinfo at the **last** ``:``.  The
   host/path is the *auth* address, not the storage URL.  Real Glance only
   speaks Keystone v3 there; against this harness the equivalent is tempauth
   v1: ``swift+http://test%3Atester:testing@127.0.0.1:PORT/auth/v1.0/c/o`` ->
   ``GET /auth/v1.0`` with ``X-Auth-User: test:tester`` (the whole
   ``account:user``), then ``GET X-Storage-Url/c/o`` with the token.
   Built by :func:`single_tenant_url`.

2. Single tenant with ``swift_store_config_file``::

       swift+config://REF/CONTAINER/OBJECT

   ``REF`` names a section of Glance's own ``glance-swift.conf``: no host,
   no credentials.  Unreadable without an out-of-band ``REF -> auth URL,
   user, key`` map.  Built by :func:`config_url`.

3. Multi tenant, the location is the owning project's storage URL::

       swift+http[s]://STORAGE_HOST[:PORT]/v1/AUTH_<project>/<container>/<object>

   No userinfo; strip ``swift+`` to get the object's HTTP URL and send your
   own ``X-Auth-Token`` (container ACLs decide; anonymous only for ``.r:*``).
   Built by :func:`multi_tenant_url`.

For every form the last two path segments are container and object, so an
object name containing ``/`` cannot be expressed (Glance uses image ids).
Large images are Dynamic Large Objects: segments ``OBJ-00001``, ``OBJ-00002``
... plus a zero-byte manifest ``OBJ`` with ``X-Object-Manifest: CONTAINER/OBJ-``;
the manifest's ETag is quoted and is md5(concatenated segment ETags), **not**
the md5 of the content.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from helpers import shared_harness

HARNESS_DIR = Path(os.environ.get("LOCPICK_SWIFT_HARNESS") or shared_harness("swift-harness"))
SWIFT_VERSION = os.environ.get("SWIFT_VERSION", "2.38.3")
HOST = "127.0.0.1"

# tempauth users configured by start-swift: (X-Auth-User, X-Auth-Key)
ADMIN_USER = ("test:tester", "testing")  # .admin of AUTH_test
READER_NO_ACL = ("test:tester3", "testing3")  # AUTH_test, no groups
OTHER_ACCOUNT_USER = ("test2:tester2", "testing2")  # .admin of AUTH_test2
RESELLER_ADMIN = ("admin:admin", "admin")  # every account
TEST_ACCOUNT = "AUTH_test"

# the modules start-swift's venv_ok() imports
_VENV_CHECK = (
    "import swift.proxy.server, swift.obj.server, pyeclib.ec_iface, xattr, cryptography.fernet"
)


class SwiftHarnessError(RuntimeError):
    """The harness could not be started or a helper call failed."""


class SwiftHTTPError(SwiftHarnessError):
    """A Swift request answered with an unexpected HTTP status."""

    def __init__(self, method: str, url: str, status: int, body: bytes = b"") -> None:
        super().__init__(f"{method} {url} -> {status} {body[:200]!r}")
        self.method = method
        self.url = url
        self.status = status
        self.body = body


@dataclasses.dataclass
class SwiftHandle:
    """A running harness instance (proxy on ``port``, backends on port+1..+3)."""

    workdir: Path
    port: int
    start_seconds: float = 0.0
    venv_cached: bool = False

    @property
    def proxy_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def auth_url(self) -> str:
        """The tempauth v1 auth URL, ``http://127.0.0.1:PORT/auth/v1.0``."""
        return f"{self.proxy_url}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        """Storage URL of the test account (what ``test:tester`` gets as X-Storage-Url)."""
        return f"{self.proxy_url}/v1/{TEST_ACCOUNT}"

    def object_url(self, container: str, obj: str, storage_url: str | None = None) -> str:
        base = storage_url or self.storage_url
        q = urllib.parse.quote
        return f"{base}/{q(container, safe='')}/{q(obj, safe='/')}"

    def stop(self) -> None:
        """stop-swift WORKDIR: signals only the process groups in WORKDIR/*.pid."""
        subprocess.run(
            [str(HARNESS_DIR / "stop-swift"), str(self.workdir)],
            check=False,
            capture_output=True,
            timeout=60,
        )

    def __enter__(self) -> SwiftHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class PutResult:
    """What swift-put --json reports for an upload."""

    url: str
    token: str
    storage_url: str
    container: str
    object: str
    etag: str  # plain md5 for a normal object; md5 of segment ETags for a DLO
    bytes: int
    md5: str  # md5 of the content (computed locally)
    dlo: bool
    segments: int
    glance_single_tenant_uri: str
    glance_multi_tenant_uri: str


# --------------------------------------------------------------------- start


def cache_dir() -> Path:
    """``${LOCPICK_HARNESS_CACHE:-~/.cache/locpick-test}/swift``."""
    base = os.environ.get("LOCPICK_HARNESS_CACHE") or "~/.cache/locpick-test"
    return Path(base).expanduser() / "swift"


def _venv_ok(venv: Path) -> bool:
    """The same check as start-swift's venv_ok(), plus the Swift version."""
    marker = venv / ".locpick-swift-version"
    if not (
        marker.exists()
        and marker.read_text().strip() == SWIFT_VERSION
        and os.access(venv / "bin" / "python", os.X_OK)
        and os.access(venv / "bin" / "swift-proxy-server", os.X_OK)
        and os.access(venv / "bin" / "swift-ring-builder", os.X_OK)
    ):
        return False
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _VENV_CHECK], capture_output=True, check=False
    )
    return r.returncode == 0


def ensure_cached_venv() -> tuple[Path | None, bool]:
    """Return (venv, was_already_cached). Builds the cached venv under a lock
    the same way start-swift would (``python3 -m venv`` + ``pip install
    swift==$SWIFT_VERSION $SWIFT_PIP_ARGS``).  Returns (None, False) if it
    cannot be built; start-swift then builds a private venv itself."""
    cdir = cache_dir()
    venv = cdir / "venv"
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        with (cdir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _venv_ok(venv):
                return venv, True
            shutil.rmtree(venv, ignore_errors=True)
            py = os.environ.get("SWIFT_PYTHON", "python3")
            subprocess.run([py, "-m", "venv", str(venv)], check=True, capture_output=True)
            log = cdir / "pip-install.log"
            with log.open("wb") as out:
                subprocess.run(
                    [
                        str(venv / "bin" / "pip"),
                        "install",
                        "--disable-pip-version-check",
                        *os.environ.get("SWIFT_PIP_ARGS", "").split(),
                        f"swift=={SWIFT_VERSION}",
                    ],
                    check=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            (venv / ".locpick-swift-version").write_text(SWIFT_VERSION + "\n")
            if not _venv_ok(venv):
                raise SwiftHarnessError(f"cached venv {venv} does not import swift")
            return venv, False
    except (OSError, subprocess.CalledProcessError, SwiftHarnessError) as e:
        print(f"swift_harness: no cached venv ({e}); start-swift builds its own", file=sys.stderr)
        return None, False


def _tcp_port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as start-swift checks
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_port(preferred: tuple[int, ...] = (), tries: int = 200) -> int:
    """A PORT with PORT..PORT+3 free on 127.0.0.1 (PORT+9 is only a UDP
    syslog sink that nobody needs to listen on).  ``preferred`` ports are
    tried first; random ones are below Linux's ephemeral range (32768+) so
    outgoing connections do not grab them."""
    rnd = random.SystemRandom()
    candidates = [*preferred, *(rnd.randrange(20000, 32000, 10) for _ in range(tries))]
    for port in candidates:
        if all(_tcp_port_free(port + i) for i in range(4)):
            return port
    raise SwiftHarnessError("no free block of 4 ports found")


_RING_FILES = (
    "ring-ports",
    *(f"{r}.{ext}" for r in ("account", "container", "object") for ext in ("builder", "ring.gz")),
)


def _ring_cache(port: int) -> Path:
    return cache_dir() / "rings" / str(port)


def _cached_ring_ports() -> tuple[int, ...]:
    d = cache_dir() / "rings"
    if not d.is_dir():
        return ()
    return tuple(sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()))


def _restore_rings(wd: Path, port: int) -> None:
    """Building the three rings costs ~2 s; they depend only on the ports and
    the part power, so start-swift's rings_ok() accepts a cached copy."""
    src, etc = _ring_cache(port), wd / "etc"
    if (etc / "ring-ports").exists() or not all((src / f).exists() for f in _RING_FILES):
        return
    etc.mkdir(parents=True, exist_ok=True)
    for f in _RING_FILES:
        shutil.copy2(src / f, etc / f)


def _save_rings(wd: Path, port: int) -> None:
    dst, etc = _ring_cache(port), wd / "etc"
    if dst.exists() or not all((etc / f).exists() for f in _RING_FILES):
        return
    with contextlib.suppress(OSError):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".tmp-"))
        for f in _RING_FILES:
            shutil.copy2(etc / f, tmp / f)
        try:
            tmp.rename(dst)
        except OSError:  # someone else saved them first
            shutil.rmtree(tmp, ignore_errors=True)


def start_swift(workdir: str | os.PathLike[str], port: int | None = None) -> SwiftHandle:
    """Start the harness in ``workdir`` (created if needed) on ``port`` (or a
    free one; ports whose rings are cached are preferred) and wait until it
    answers.  Uses the cached venv and rings (see module doc).  Idempotent
    per workdir, like start-swift itself."""
    if not (HARNESS_DIR / "start-swift").exists():
        raise SwiftHarnessError(f"no Swift harness at {HARNESS_DIR}")
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    venv, cached = ensure_cached_venv()
    link = wd / "venv"
    if venv is not None and not link.is_symlink() and not link.exists():
        link.symlink_to(venv, target_is_directory=True)
    attempts = 1 if port is not None else 3
    err = ""
    for _ in range(attempts):
        p = port if port is not None else find_free_port(_cached_ring_ports())
        _restore_rings(wd, p)
        r = subprocess.run(
            [str(HARNESS_DIR / "start-swift"), str(wd), str(p)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        lines = r.stdout.strip().splitlines()
        if r.returncode == 0 and lines and lines[-1] == f"http://{HOST}:{p}":
            _save_rings(wd, p)
            return SwiftHandle(wd, p, time.monotonic() - t0, cached)
        err = r.stderr[-2000:]
        if "already in use" not in err:  # only a lost port race is worth retrying
            break
    raise SwiftHarnessError(f"start-swift {wd} failed:\n{err}")


# --------------------------------------------------------------------- HTTP


def http_request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request: (status, lower-cased headers, body).  Never
    raises for an HTTP status."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError(f"only http:// URLs here, got {url!r}")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def v1_token(handle: SwiftHandle, user: str, key: str) -> tuple[str, str]:
    """tempauth v1: ``GET auth/v1.0`` with X-Auth-User (the whole
    ``account:user``) / X-Auth-Key -> (X-Auth-Token, X-Storage-Url).
    Raises :class:`SwiftHTTPError` (``.status`` 401 for a wrong key)."""
    status, h, body = http_request("GET", handle.auth_url, {"X-Auth-User": user, "X-Auth-Key": key})
    if status // 100 != 2:
        raise SwiftHTTPError("GET", handle.auth_url, status, body)
    token, storage_url = h.get("x-auth-token"), h.get("x-storage-url")
    if not token or not storage_url:
        raise SwiftHarnessError("auth response lacks X-Auth-Token / X-Storage-Url")
    return token, storage_url


# --------------------------------------------------------------------- upload


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def put_object(
    handle: SwiftHandle,
    container: str,
    name: str,
    data_or_path: bytes | str | os.PathLike[str],
    *,
    segment_size: int | None = None,
    user: str = ADMIN_USER[0],
    key: str = ADMIN_USER[1],
    public: bool = False,
    content_type: str = "application/octet-stream",
) -> PutResult:
    """Upload with the harness's ``swift-put`` (creates the container).

    ``data_or_path``: bytes, or a path to a file.  ``segment_size``: store as
    a Glance-style Dynamic Large Object (segments ``NAME-00001``... of that
    many bytes plus a zero-byte manifest ``NAME`` with ``X-Object-Manifest:
    CONTAINER/NAME-``); the harness does DLO only, not SLO.  ``public`` sets
    ``X-Container-Read: .r:*,.rlistings``."""
    with contextlib.ExitStack() as stack:
        if isinstance(data_or_path, bytes):
            tmp = stack.enter_context(
                tempfile.NamedTemporaryFile(dir=handle.workdir, prefix="put-", delete=True)
            )
            tmp.write(data_or_path)
            tmp.flush()
            path = Path(tmp.name)
        else:
            path = Path(data_or_path)
        size = path.stat().st_size
        md5 = _md5_file(path)
        cmd = [
            sys.executable,
            str(HARNESS_DIR / "swift-put"),
            handle.auth_url,
            str(path),
            container,
            name,
            "--user",
            user,
            "--key",
            key,
            "--content-type",
            content_type,
            "--json",
        ]
        if public:
            cmd.append("--public")
        if segment_size:
            cmd += ["--dlo-segment-size", str(segment_size)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if r.returncode != 0:
        raise SwiftHarnessError(f"swift-put failed: {r.stderr[-2000:]}")
    j = json.loads(r.stdout.strip().splitlines()[-1])
    segments = -(-size // segment_size) if segment_size else 0
    if segment_size and size == 0:
        segments = 1
    return PutResult(
        url=j["url"],
        token=j["token"],
        storage_url=j["storage_url"],
        container=j["container"],
        object=j["object"],
        etag=j["etag"],
        bytes=j["bytes"],
        md5=md5,
        dlo=j["dlo"],
        segments=segments,
        glance_single_tenant_uri=j["glance_single_tenant_uri"],
        glance_multi_tenant_uri=j["glance_multi_tenant_uri"],
    )


# --------------------------------------------------------------------- Glance location strings


def _check_name(kind: str, value: str) -> None:
    if not value or "/" in value:
        # glance_store takes the last two path segments as container/object
        raise ValueError(f"{kind} {value!r} cannot appear in a Glance swift location")


def _swift_scheme(http_url: str) -> tuple[str, str]:
    u = urllib.parse.urlsplit(http_url)
    return f"swift+{u.scheme}", (u.netloc + u.path).strip("/")


def single_tenant_url(
    handle: SwiftHandle,
    container: str,
    obj: str,
    user: str = ADMIN_USER[0],
    key: str = ADMIN_USER[1],
) -> str:
    """Form 1, as glance_store's ``StoreLocation.get_uri(credentials_included=True)``:
    ``swift+http://test%3Atester:testing@127.0.0.1:PORT/auth/v1.0/CONTAINER/OBJ``."""
    _check_name("container", container)
    _check_name("object", obj)
    scheme, rest = _swift_scheme(handle.auth_url)
    q = urllib.parse.quote
    return f"{scheme}://{q(user)}:{q(key)}@{rest}/{container}/{obj}"


def config_url(ref: str, container: str, obj: str) -> str:
    """Form 2: ``swift+config://REF/CONTAINER/OBJ`` (REF = a section of
    glance-swift.conf; no host, no credentials)."""
    _check_name("container", container)
    _check_name("object", obj)
    return f"swift+config://{ref}/{container}/{obj}"


def multi_tenant_url(
    handle: SwiftHandle, container: str, obj: str, account: str = TEST_ACCOUNT
) -> str:
    """Form 3: ``swift+http://127.0.0.1:PORT/v1/AUTH_test/CONTAINER/OBJ`` (the
    storage URL; the reader brings its own token)."""
    _check_name("container", container)
    _check_name("object", obj)
    scheme, rest = _swift_scheme(f"{handle.proxy_url}/v1/{account}")
    return f"{scheme}://{rest}/{container}/{obj}"
