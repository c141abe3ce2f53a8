"""Helpers around the project's own Glance (and Keystone) test harness, ``tests/harness/``.

It runs an unmodified OpenStack Glance 33.0.0 API on 127.0.0.1 (no-auth by default, or
behind a real Keystone 30.0.0) with three stores: ``fs1`` (file, default), ``fs2`` (file)
and ``web`` (http).

Venv cache
    Glance and Keystone are installed from PyPI on first use (~30 s each) into
    ``${LOCPICK_TEST_CACHE:-~/.cache/locpick-test}/{glance,keystone}/venv`` (built once
    under an flock, shared by concurrent sessions); ``WORKDIR/venv`` is a symlink to it.
    Warm starts take ~2-3 s.

WORKDIR
    One WORKDIR per running instance. Re-using a WORKDIR *sequentially* is safe (config
    is rewritten, ``db_sync`` is idempotent, the sqlite DB and its images persist). Two
    *concurrent* instances must NOT share a WORKDIR (one pid file, one DB, one store).
    Use a fresh dir (e.g. ``tmp_path_factory``) per session and a free port (picked here).

tmpfs stores
    ``tmpfs_stores=True`` mounts a tmpfs on ``WORKDIR/stores/fs1`` and ``fs2`` before
    Glance starts (needs root / CAP_SYS_ADMIN; see :func:`tmpfs_supported`) so the
    ``mountpoint`` metadata of the file locations names a real mount;
    :meth:`GlanceHandle.stop` unmounts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import glance as glance_service
from harness import keystone as keystone_service
from harness import keystone_api, procs, seed, venvs
from harness.venvs import HarnessError

HOST = procs.HOST
PATCH_CONTENT_TYPE = seed.PATCH_CONTENT_TYPE
FILE_STORES = ("fs1", "fs2")
GLANCE_VERSION = venvs.GLANCE_VERSION
KEYSTONE_VERSION = venvs.KEYSTONE_VERSION

#: Raised when a service cannot be installed, started or used.
GlanceHarnessError = HarnessError


def harness_dir() -> Path:
    """The harness package inside this repository."""
    return Path(__file__).resolve().parent / "harness"


def harness_available() -> bool:
    return (harness_dir() / "glance.py").is_file()


def cache_dir(kind: str = "glance") -> Path:
    """``${LOCPICK_TEST_CACHE:-~/.cache/locpick-test}/<kind>``."""
    return venvs.cache_dir(kind)


def ensure_cached_venv(kind: str = "glance") -> Path:
    """Build (once, under a lock) and return the cached venv for ``kind``."""
    return venvs.ensure_venv(kind)[0]


# ---------------------------------------------------------------- ports, procs

port_free = procs.port_free
process_group_pids = procs.process_group_pids


def find_free_port() -> int:
    """A free TCP port on 127.0.0.1 below Linux's ephemeral range."""
    return procs.free_port()


def _tail(text: str, n: int = 40) -> str:
    return venvs.tail(text, n)


# ---------------------------------------------------------------- tmpfs

_TMPFS_OK: bool | None = None


def tmpfs_supported() -> bool:
    """True if we may ``mount -t tmpfs`` here (root with CAP_SYS_ADMIN and
    no seccomp/userns block).  Probed once with a real mount + umount."""
    global _TMPFS_OK
    if _TMPFS_OK is None:
        _TMPFS_OK = False
        if os.geteuid() == 0 and shutil.which("mount") and shutil.which("umount"):
            d = tempfile.mkdtemp(prefix="locpick-tmpfs-probe-")
            try:
                r = subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", "size=1m", "locpick-probe", d],
                    capture_output=True,
                    check=False,
                )
                if r.returncode == 0:
                    _TMPFS_OK = os.path.ismount(d)
                    subprocess.run(["umount", d], capture_output=True, check=False)
            finally:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
    return _TMPFS_OK


def mount_tmpfs(path: Path, size: str = "512m", source: str = "locpick-tmpfs") -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", source, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise GlanceHarnessError(f"mount -t tmpfs on {path} failed: {r.stderr.strip()}")


def umount(path: Path) -> None:
    if not os.path.ismount(path):
        return
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
    if r.returncode != 0:  # busy: detach lazily rather than leak the mount
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def mount_fstype(path: Path) -> str | None:
    """Filesystem type of the mount exactly at ``path`` (None if not a mount)."""
    target = os.path.realpath(path)
    fstype = None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].replace("\\040", " ") == target:
            fstype = parts[2]  # last one wins (over-mounts)
    return fstype


# ---------------------------------------------------------------- Glance


@dataclass
class GlanceHandle:
    endpoint: str
    workdir: Path
    port: int
    pid: int
    auth: str = "noauth"
    keystone_url: str | None = None
    stores: dict[str, Path] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)
    stopped: bool = False

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    def alive_pids(self) -> list[int]:
        return process_group_pids(self.pid)

    def log_tail(self, n: int = 40) -> str:
        p = self.log_dir / "glance-api.log"
        return _tail(p.read_text(errors="replace"), n) if p.exists() else ""

    def stop(self) -> None:
        """SIGTERM to our gunicorn's process group (nothing else), then unmount the
        tmpfs stores we mounted. Idempotent."""
        if self.stopped:
            return
        try:
            glance_service.stop(self.workdir)
        finally:
            for m in reversed(self.mounts):
                umount(m)
            self.stopped = True

    def __enter__(self) -> GlanceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _running_port(workdir: Path) -> int | None:
    """Port of the Glance that WORKDIR runs, else None."""
    live = glance_service.running(workdir)
    return live[1] if live else None


def _start_on_free_port(
    start: Callable[[int], tuple[str, int]], port: int | None
) -> tuple[str, int, int]:
    """``start(port)`` on ``port``, or on a free port (retried if taken meanwhile);
    returns (URL, port, pid)."""
    attempts = 1 if port is not None else 4
    for attempt in range(attempts):
        use_port = port if port is not None else find_free_port()
        try:
            url, pid = start(use_port)
        except HarnessError as e:
            if "already in use" in str(e) and attempt + 1 < attempts:
                continue
            raise
        return url, use_port, pid
    raise AssertionError("unreachable")


def start_glance(
    workdir: Path,
    port: int | None = None,
    *,
    auth: str = "noauth",
    keystone_url: str | None = None,
    tmpfs_stores: bool = False,
    tmpfs_size: str = "512m",
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    location_quota: int | None = None,
) -> GlanceHandle:
    """Start Glance in WORKDIR and return a handle.

    ``port=None`` picks a free port (retrying if it is taken meanwhile).
    ``auth="keystone"`` needs ``keystone_url`` (see :func:`start_keystone`; then call
    :func:`register_image_endpoint`). ``tmpfs_stores=True`` mounts tmpfs on the fs1/fs2
    store dirs first (raises if not permitted; check :func:`tmpfs_supported`). ``env``:
    ``GLANCE_ALLOWED_PORTS`` (comma list of ports Glance may contact, default any), or
    variables for the Glance process (``GLANCE_NOAUTH_PROJECT_ID``, ...). ``timeout``
    covers a cold venv build. ``location_quota``: Glance's ``image_location_quota`` (default
    Glance's own, 10 per image), for benchmarks where many nodes register one image."""
    if auth not in ("noauth", "keystone"):
        raise ValueError(f"auth must be 'noauth' or 'keystone', not {auth!r}")
    if auth == "keystone" and not keystone_url:
        raise ValueError("auth='keystone' needs keystone_url")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    venvs.link_venv("glance", workdir)
    stores = {s: workdir / "stores" / s for s in FILE_STORES}

    mounts: list[Path] = []
    if tmpfs_stores:
        if not tmpfs_supported():
            raise GlanceHarnessError("tmpfs_stores=True but mount -t tmpfs is not permitted")
        for name, path in stores.items():
            if not os.path.ismount(path):
                mount_tmpfs(path, tmpfs_size, source=f"locpick-glance-{name}")
                mounts.append(path)
    running = _running_port(workdir)
    if running is not None:
        if port is not None and port != running:
            raise GlanceHarnessError(
                f"{workdir} already runs a Glance on port {running}; use another WORKDIR"
            )
        port = running
    try:
        endpoint, use_port, pid = _start_on_free_port(
            lambda p: glance_service.start(
                workdir,
                p,
                auth=auth,
                keystone_url=keystone_url,
                env=env,
                timeout=timeout,
                location_quota=location_quota,
            ),
            port,
        )
    except BaseException:
        for m in reversed(mounts):
            umount(m)
        raise
    return GlanceHandle(
        endpoint=endpoint,
        workdir=workdir,
        port=use_port,
        pid=pid,
        auth=auth,
        keystone_url=keystone_url,
        stores=stores,
        mounts=mounts,
    )


def seed_image(
    endpoint: str,
    file: Path,
    *,
    http_locations: Iterable[tuple[str, Mapping[str, Any]] | str] = (),
    copy_to_stores: Iterable[str] = ("fs2",),
    token: str | None = None,
    name: str | None = None,
    visibility: str | None = None,
    no_upload: bool = False,
    verify: bool = True,
    timeout: float = 120,
) -> str:
    """Create an active image from FILE and return its id. Locations end up in this
    order: fs1 (upload), each ``copy_to_stores``, each http location (``(url, metadata)``
    or a bare URL; Glance adds ``store: web``). Loopback http URLs must be served while
    this runs (they are fetched to compare sha256 unless ``verify=False``)."""
    return seed.seed_image(
        endpoint,
        Path(file),
        http_locations=[(loc, {}) if isinstance(loc, str) else loc for loc in http_locations],
        copy_to_stores=copy_to_stores,
        token=token,
        name=name,
        visibility=visibility,
        no_upload=no_upload,
        verify=verify,
        timeout=timeout,
    )


# ---------------------------------------------------------------- Glance API


def glance_request(
    endpoint: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One request to Glance; returns ``(status, parsed JSON or bytes)``.
    HTTP errors are returned, not raised (status >= 400)."""
    hdrs = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs["Content-Type"] = content_type
    if token:
        hdrs["X-Auth-Token"] = token
    req = urllib.request.Request(
        endpoint.rstrip("/") + path, data=data, method=method, headers=hdrs
    )
    try:
        with procs.DIRECT.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
        e.close()
    if raw:
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw
    return status, None


def _ok(status: int, payload: Any, expect: Iterable[int], what: str) -> Any:
    if status not in tuple(expect):
        raise GlanceHarnessError(f"{what} -> HTTP {status}: {payload!r}"[:2000])
    return payload


def get_image(endpoint: str, image_id: str, token: str | None = None) -> dict[str, Any]:
    st, img = glance_request(endpoint, "GET", f"/v2/images/{image_id}", token=token)
    return dict(_ok(st, img, (200,), f"GET image {image_id}"))


def patch_image(
    endpoint: str, image_id: str, ops: Sequence[Mapping[str, Any]], token: str | None = None
) -> dict[str, Any]:
    """JSON-patch an image (``application/openstack-images-v2.1-json-patch``)."""
    st, img = glance_request(
        endpoint,
        "PATCH",
        f"/v2/images/{image_id}",
        list(ops),
        token=token,
        content_type=PATCH_CONTENT_TYPE,
    )
    return dict(_ok(st, img, (200,), f"PATCH image {image_id}"))


def patch_locations(
    endpoint: str, image_id: str, ops: Sequence[Mapping[str, Any]], token: str | None = None
) -> dict[str, Any]:
    """JSON-patch locations, e.g. ``[{"op": "add", "path": "/locations/-",
    "value": {"url": URL, "metadata": {}}}]`` or ``{"op": "remove",
    "path": "/locations/1"}``.  Returns the updated image."""
    return patch_image(endpoint, image_id, ops, token=token)


def add_http_location(
    endpoint: str,
    image_id: str,
    url: str,
    metadata: Mapping[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Add one http location. Glance 33 answers 500 to a location PATCH racing another on
    the same image (a serving node renewing its lease): the add is made again unless it
    landed."""
    op = {
        "op": "add",
        "path": "/locations/-",
        "value": {"url": url, "metadata": dict(metadata or {})},
    }
    for attempt in range(4):
        try:
            return patch_locations(endpoint, image_id, [op], token=token)
        except GlanceHarnessError as e:
            if "HTTP 500" not in str(e) or attempt == 3:
                raise
            time.sleep(0.2 * 2**attempt)
            img = get_image(endpoint, image_id, token=token)
            if any(loc.get("url") == url for loc in img.get("locations") or []):
                return img
    raise AssertionError("unreachable")


def create_image(
    endpoint: str,
    *,
    name: str = "locpick-queued",
    token: str | None = None,
    visibility: str | None = None,
    disk_format: str = "raw",
    container_format: str = "bare",
    **extra: Any,
) -> str:
    """``POST /v2/images`` only: a *queued* image with no data/locations."""
    body: dict[str, Any] = {
        "name": name,
        "disk_format": disk_format,
        "container_format": container_format,
        **extra,
    }
    if visibility:
        body["visibility"] = visibility
    st, img = glance_request(endpoint, "POST", "/v2/images", body, token=token)
    return str(_ok(st, img, (201,), "POST /v2/images")["id"])


def deactivate_image(endpoint: str, image_id: str, token: str | None = None) -> None:
    """Active -> 'deactivated' (admin only).  GET .../file then answers 403
    for non-admins only; in no-auth mode (everyone admin) it still gives 200."""
    st, p = glance_request(
        endpoint, "POST", f"/v2/images/{image_id}/actions/deactivate", token=token
    )
    _ok(st, p, (204,), f"deactivate {image_id}")


def reactivate_image(endpoint: str, image_id: str, token: str | None = None) -> None:
    st, p = glance_request(
        endpoint, "POST", f"/v2/images/{image_id}/actions/reactivate", token=token
    )
    _ok(st, p, (204,), f"reactivate {image_id}")


def delete_image(endpoint: str, image_id: str, token: str | None = None) -> None:
    st, p = glance_request(endpoint, "DELETE", f"/v2/images/{image_id}", token=token)
    _ok(st, p, (204, 404), f"delete {image_id}")


# ---------------------------------------------------------------- Keystone


@dataclass
class KeystoneHandle:
    auth_url: str
    workdir: Path
    port: int
    pid: int
    stopped: bool = False

    def alive_pids(self) -> list[int]:
        return process_group_pids(self.pid)

    def token(
        self, user: str | None = None, password: str | None = None, project: str | None = None
    ) -> str:
        return keystone_token(self.auth_url, user, password, project)

    def stop(self) -> None:
        if self.stopped:
            return
        keystone_service.stop(self.workdir)
        self.stopped = True

    def __enter__(self) -> KeystoneHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_keystone(
    workdir: Path,
    port: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> KeystoneHandle:
    """Start Keystone in WORKDIR (users admin/admin, demo/demo-pass, glance/glance-pass;
    region RegionOne); the venv is cached like Glance's."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    venvs.link_venv("keystone", workdir)
    auth_url, use_port, pid = _start_on_free_port(
        lambda p: keystone_service.start(workdir, p, env=env, timeout=timeout), port
    )
    return KeystoneHandle(auth_url=auth_url, workdir=workdir, port=use_port, pid=pid)


def keystone_token(
    auth_url: str, user: str | None = None, password: str | None = None, project: str | None = None
) -> str:
    """A project-scoped token (default admin)."""
    return keystone_api.token(auth_url, user, password, project)


def register_endpoint(
    auth_url: str, name: str, service_type: str, url: str, region: str = "RegionOne"
) -> str:
    """Catalog entry NAME/TYPE -> URL (public + internal); returns the service id."""
    return keystone_api.register_endpoint(auth_url, name, service_type, url, region=region)


def register_image_endpoint(auth_url: str, glance_endpoint: str, region: str = "RegionOne") -> str:
    """Catalog entry image -> ``glance_endpoint`` (public + internal); returns the
    service id."""
    return register_endpoint(auth_url, "glance", "image", glance_endpoint, region)
