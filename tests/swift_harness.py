"""Helpers around the project's own Swift test harness, ``tests/harness/swift.py``.

It runs an unmodified OpenStack Swift 2.38.3 all-in-one cluster on 127.0.0.1 with
**tempauth** (auth v1.0): the proxy on PORT, account/container/object servers on
PORT+1..PORT+3. Swift is installed from PyPI on first use (~10 s) into
``${LOCPICK_TEST_CACHE:-~/.cache/locpick-test}/swift/venv`` (``WORKDIR/venv`` is a
symlink to it); the rings (per port) are cached in ``.../swift/rings/PORT`` and ports
with cached rings are preferred. Every instance gets its own WORKDIR.

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
import hashlib
import http.client
import os
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from harness import procs, venvs
from harness import swift as swift_service
from harness.venvs import HarnessError

#: The harness package inside this repository.
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
SWIFT_VERSION = venvs.SWIFT_VERSION
HOST = "127.0.0.1"

# tempauth users configured by start-swift: (X-Auth-User, X-Auth-Key)
ADMIN_USER = ("test:tester", "testing")  # .admin of AUTH_test
READER_NO_ACL = ("test:tester3", "testing3")  # AUTH_test, no groups
OTHER_ACCOUNT_USER = ("test2:tester2", "testing2")  # .admin of AUTH_test2
RESELLER_ADMIN = ("admin:admin", "admin")  # every account
TEST_ACCOUNT = "AUTH_test"

#: The harness could not be started or a helper call failed.
SwiftHarnessError = HarnessError


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
        """Signals only the process groups whose pids are in WORKDIR/*.pid."""
        swift_service.stop(self.workdir)

    def __enter__(self) -> SwiftHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class PutResult:
    """What an upload did: where the object is, the token used, its ETag and sizes."""

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
    """``${LOCPICK_TEST_CACHE:-~/.cache/locpick-test}/swift``."""
    return venvs.cache_dir("swift")


def ensure_cached_venv() -> tuple[Path | None, bool]:
    """(venv, was_already_cached), built once under a lock."""
    return venvs.ensure_venv("swift")


def find_free_port(preferred: tuple[int, ...] = (), tries: int = 200) -> int:
    """A PORT with PORT..PORT+3 free on 127.0.0.1 (PORT+9 is only a UDP syslog sink
    nobody listens on); ``preferred`` ports are tried first."""
    return procs.free_port(4, preferred, tries)


def start_swift(workdir: str | os.PathLike[str], port: int | None = None) -> SwiftHandle:
    """Start Swift in ``workdir`` (created if needed) on ``port`` (or a free one; ports
    whose rings are cached are preferred) and wait until all four servers answer.
    Idempotent per workdir."""
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        p = port if port is not None else find_free_port(swift_service.cached_ring_ports())
        try:
            _, cached = swift_service.start(wd, p)
        except HarnessError as e:
            if "already in use" in str(e) and attempt + 1 < attempts:
                continue  # lost a port race
            raise
        return SwiftHandle(wd, p, time.monotonic() - t0, cached)
    raise AssertionError("unreachable")


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
    """Upload an object (creates the container).

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
        j = swift_service.put(
            handle.auth_url,
            path,
            container,
            name,
            user=user,
            key=key,
            public=public,
            content_type=content_type,
            segment_size=segment_size or 0,
        )
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
