"""Stdlib-only helpers around the shared Glance (and Keystone) test harness.

The harness (``$LOCPICK_GLANCE_HARNESS``, default ``../shared/glance-harness``
beside the repository, else ``/work/shared/...``,
see its README.md) runs an unmodified OpenStack Glance 33.0.0 API on
127.0.0.1 (no-auth by default, or behind a real Keystone 30.0.0) with three
stores: ``fs1`` (file, default), ``fs2`` (file) and ``web`` (http).  Its
directory is read-only, so every instance gets its own WORKDIR.

Venv cache
    ``start-glance`` would create ``WORKDIR/venv`` (pip install, ~26 s).  To
    make warm starts ~2-3 s, :func:`start_glance` keeps that venv in
    ``${LOCPICK_HARNESS_CACHE:-~/.cache/locpick-test}/glance/venv`` (built
    once under an flock) and points ``WORKDIR/venv`` at it with a symlink;
    the harness accepts any ``WORKDIR/venv`` that imports glance.  Keystone
    likewise uses ``.../keystone/venv``.

WORKDIR
    One WORKDIR per running instance.  Re-using a WORKDIR *sequentially* is
    safe (config is rewritten, ``db_sync`` is idempotent, the sqlite DB and
    its images persist).  Two *concurrent* instances must NOT share a
    WORKDIR: ``start-glance`` on a second port overwrites ``glance.pid`` and
    both gunicorns share the DB and stores, so a ``stop()`` would kill the
    wrong one.  Use a fresh dir (e.g. ``tmp_path_factory``) per session and
    a free port (picked here); concurrent pytest sessions then do not clash.

tmpfs stores
    ``tmpfs_stores=True`` mounts a tmpfs on ``WORKDIR/stores/fs1`` and
    ``fs2`` before Glance starts (needs root / CAP_SYS_ADMIN; see
    :func:`tmpfs_supported`) so the ``mountpoint`` metadata of the file
    locations names a real mount; :meth:`GlanceHandle.stop` unmounts them
    (their data is lost, images in a kept sqlite DB then point at missing
    files, so prefer a fresh WORKDIR with tmpfs).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import shared_harness

HOST = "127.0.0.1"
GLANCE_VERSION = "33.0.0"
KEYSTONE_VERSION = "30.0.0"
PATCH_CONTENT_TYPE = "application/openstack-images-v2.1-json-patch"
FILE_STORES = ("fs1", "fs2")


class GlanceHarnessError(RuntimeError):
    """A harness script failed; the message carries its stderr tail."""


def harness_dir() -> Path:
    env = os.environ.get("LOCPICK_GLANCE_HARNESS")
    return Path(env) if env else shared_harness("glance-harness")


def harness_available() -> bool:
    return (harness_dir() / "start-glance").is_file()


def cache_dir(kind: str = "glance") -> Path:
    """``${LOCPICK_HARNESS_CACHE:-~/.cache/locpick-test}/<kind>``."""
    base = os.environ.get("LOCPICK_HARNESS_CACHE") or "~/.cache/locpick-test"
    return Path(base).expanduser() / kind


# ---------------------------------------------------------------- venv cache

_VENV_SPECS: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    # kind: (version, executables start-<kind> checks, import check, pip args env)
    "glance": (
        GLANCE_VERSION,
        ("gunicorn", "glance-manage"),
        "import glance, glance_store",
        "GLANCE_PIP_ARGS",
    ),
    "keystone": (
        KEYSTONE_VERSION,
        ("gunicorn", "keystone-manage"),
        "import keystone",
        "KEYSTONE_PIP_ARGS",
    ),
}


def _venv_ok(kind: str, venv: Path) -> bool:
    version, exes, check, _ = _VENV_SPECS[kind]
    marker = venv / f".locpick-{kind}-version"
    if not (marker.is_file() and marker.read_text().strip() == version):
        return False
    if not all(os.access(venv / "bin" / exe, os.X_OK) for exe in exes):
        return False
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], capture_output=True, check=False
    )
    return r.returncode == 0


def ensure_cached_venv(kind: str = "glance") -> Path:
    """Build (once, under a lock) and return the cached venv for ``kind``
    ("glance" or "keystone"): ``python -m venv`` + ``pip install
    <kind>==VERSION gunicorn``, exactly what start-<kind> would do."""
    version, _, _, pip_env = _VENV_SPECS[kind]
    cdir = cache_dir(kind)
    venv = cdir / "venv"
    cdir.mkdir(parents=True, exist_ok=True)
    with (cdir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _venv_ok(kind, venv):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        py = os.environ.get(f"{kind.upper()}_PYTHON") or sys.executable
        subprocess.run([py, "-m", "venv", str(venv)], check=True, capture_output=True)
        log = cdir / "pip-install.log"
        with log.open("wb") as out:
            r = subprocess.run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "--disable-pip-version-check",
                    *os.environ.get(pip_env, "").split(),
                    f"{kind}=={version}",
                    "gunicorn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if r.returncode != 0:
            raise GlanceHarnessError(
                f"pip install {kind}=={version} failed, see {log}:\n"
                + _tail(log.read_text(errors="replace"))
            )
        (venv / f".locpick-{kind}-version").write_text(version + "\n")
        if not _venv_ok(kind, venv):
            raise GlanceHarnessError(f"cached venv {venv} does not import {kind}")
        return venv


def _link_venv(kind: str, workdir: Path) -> None:
    """Point WORKDIR/venv at the cached venv unless WORKDIR has its own."""
    link = workdir / "venv"
    cached = ensure_cached_venv(kind)
    if link.is_symlink():
        if Path(os.readlink(link)) == cached:
            return
        link.unlink()
    elif link.exists():
        return  # a private venv: the harness reuses or rebuilds it itself
    link.symlink_to(cached, target_is_directory=True)


# ---------------------------------------------------------------- ports, procs


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_free_port() -> int:
    """A free TCP port on 127.0.0.1 below Linux's ephemeral range (so that
    outgoing connections cannot grab it between the check and the bind)."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port_free(port):
            return port
    raise GlanceHarnessError("no free port found")


def process_group_pids(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (gunicorn is started with
    setsid, so its group is exactly master + workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] = state, fields[2] = pgrp
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def _run_script(
    args: Sequence[str], env: Mapping[str, str] | None, timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        r = subprocess.run(
            list(args),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise GlanceHarnessError(f"{what} timed out after {timeout}s") from e
    if r.returncode != 0:
        raise GlanceHarnessError(
            f"{what} failed (exit {r.returncode}):\n{_tail(r.stderr)}\n{_tail(r.stdout, 5)}"
        )
    return r


def _last_line(stdout: str) -> str:
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise GlanceHarnessError("harness script printed nothing on stdout")
    return lines[-1]


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
        """stop-glance (SIGTERM to our gunicorn's pid, its group only), then
        unmount the tmpfs stores we mounted.  Idempotent."""
        if self.stopped:
            return
        try:
            _stop_service("glance", self.workdir, self.pid)
        finally:
            for m in reversed(self.mounts):
                umount(m)
            self.stopped = True

    def __enter__(self) -> GlanceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _running_port(workdir: Path) -> int | None:
    """Port of the Glance that WORKDIR/glance.pid says is alive, else None."""
    try:
        pid = int((workdir / "glance.pid").read_text().strip())
        os.kill(pid, 0)
        conf = (workdir / "glance-api.conf").read_text()
    except (OSError, ValueError):
        return None
    for line in conf.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "bind_port":
            return int(value)
    return None


def _start_service(
    kind: str, workdir: Path, port: int | None, env: Mapping[str, str], timeout: float
) -> tuple[str, int, int]:
    """Run ``start-KIND WORKDIR PORT``; returns (the last line it printed, port, pid).

    ``port=None`` picks a free port, retrying if it is taken meanwhile. A failed start is
    stopped by its pid file (a timeout may leave a server behind)."""
    attempts = 1 if port is not None else 4
    for attempt in range(attempts):
        use_port = port if port is not None else find_free_port()
        try:
            r = _run_script(
                [str(harness_dir() / f"start-{kind}"), str(workdir), str(use_port)],
                env,
                timeout,
                f"start-{kind}",
            )
            break
        except GlanceHarnessError as e:
            subprocess.run(
                [str(harness_dir() / f"stop-{kind}"), str(workdir)],
                capture_output=True,
                check=False,
                timeout=60,
            )
            if "already in use" in str(e) and attempt + 1 < attempts:
                continue
            raise
    line = _last_line(r.stdout)
    return line, use_port, int((workdir / f"{kind}.pid").read_text().strip())


def _stop_service(kind: str, workdir: Path, pid: int) -> None:
    """Run ``stop-KIND WORKDIR``, then wait up to 10 s for ``pid``'s process group to go."""
    subprocess.run(
        [str(harness_dir() / f"stop-{kind}"), str(workdir)],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while process_group_pids(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


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
) -> GlanceHandle:
    """Run ``start-glance WORKDIR PORT`` and return a handle.

    ``port=None`` picks a free port (retrying if it is taken meanwhile).
    ``auth="keystone"`` needs ``keystone_url`` (see :func:`start_keystone`;
    then call :func:`register_image_endpoint`).  ``tmpfs_stores=True``
    mounts tmpfs on the fs1/fs2 store dirs first (raises if not permitted;
    check :func:`tmpfs_supported`).  ``env`` adds harness knobs such as
    ``GLANCE_ALLOWED_PORTS``.  ``timeout`` covers a cold venv build."""
    if auth not in ("noauth", "keystone"):
        raise ValueError(f"auth must be 'noauth' or 'keystone', not {auth!r}")
    if auth == "keystone" and not keystone_url:
        raise ValueError("auth='keystone' needs keystone_url")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _link_venv("glance", workdir)
    stores = {s: workdir / "stores" / s for s in FILE_STORES}

    mounts: list[Path] = []
    if tmpfs_stores:
        if not tmpfs_supported():
            raise GlanceHarnessError("tmpfs_stores=True but mount -t tmpfs is not permitted")
        for name, path in stores.items():
            if not os.path.ismount(path):
                mount_tmpfs(path, tmpfs_size, source=f"locpick-glance-{name}")
                mounts.append(path)

    script_env = {"GLANCE_AUTH": auth, "GLANCE_PYTHON": sys.executable}
    if keystone_url:
        script_env["KEYSTONE_URL"] = keystone_url
    if env:
        script_env.update(env)
    running = _running_port(workdir)
    if running is not None:
        # start-glance is idempotent for the same port, but a start on another
        # port fails AND deletes glance.pid, orphaning the running gunicorn.
        if port is not None and port != running:
            raise GlanceHarnessError(
                f"{workdir} already runs a Glance on port {running}; use another WORKDIR"
            )
        port = running
    try:
        endpoint, use_port, pid = _start_service("glance", workdir, port, script_env, timeout)
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
    """Run ``seed-image`` and return the new image id.  Locations end up in
    this order: fs1 (upload), each ``copy_to_stores``, each http location
    (``(url, metadata)``; metadata may be ``{}``; Glance adds
    ``store: web``).  Loopback http URLs must be served while this runs
    (seed-image GETs them to compare sha256 unless ``verify=False``)."""
    args = [
        sys.executable,
        str(harness_dir() / "seed-image"),
        endpoint,
        str(file),
        "--timeout",
        str(int(timeout)),
    ]
    for loc in http_locations:
        url, meta = (loc, {}) if isinstance(loc, str) else loc
        args += ["--http-location", url]
        if meta:
            args += ["--http-metadata", json.dumps(dict(meta))]
    for store in copy_to_stores:
        args += ["--copy-to-store", store]
    if name:
        args += ["--name", name]
    if visibility:
        args += ["--visibility", visibility]
    if token:
        args += ["--token", token]
    if no_upload:
        args.append("--no-upload")
    if not verify:
        args.append("--no-verify")
    r = _run_script(args, None, timeout + 30, "seed-image")
    return _last_line(r.stdout)


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
        with urllib.request.urlopen(req, timeout=timeout) as resp:
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
    return patch_locations(
        endpoint,
        image_id,
        [
            {
                "op": "add",
                "path": "/locations/-",
                "value": {"url": url, "metadata": dict(metadata or {})},
            }
        ],
        token=token,
    )


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
        _stop_service("keystone", self.workdir, self.pid)
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
    """Run ``start-keystone WORKDIR PORT`` (users admin/admin, demo/demo-pass,
    glance/glance-pass; region RegionOne); the venv is cached like Glance's."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _link_venv("keystone", workdir)
    script_env = {"KEYSTONE_PYTHON": sys.executable, **(env or {})}
    auth_url, use_port, pid = _start_service("keystone", workdir, port, script_env, timeout)
    return KeystoneHandle(auth_url=auth_url, workdir=workdir, port=use_port, pid=pid)


def keystone_token(
    auth_url: str, user: str | None = None, password: str | None = None, project: str | None = None
) -> str:
    """A project-scoped token via ``keystone-admin token`` (default admin)."""
    args = [sys.executable, str(harness_dir() / "keystone-admin"), "token", auth_url]
    for opt, val in (("--user", user), ("--password", password), ("--project", project)):
        if val:
            args += [opt, val]
    return _last_line(_run_script(args, None, 60, "keystone-admin token").stdout)


def register_image_endpoint(auth_url: str, glance_endpoint: str, region: str = "RegionOne") -> str:
    """Catalog entry image -> ``glance_endpoint`` (public + internal); returns
    the service id."""
    r = _run_script(
        [str(harness_dir() / "register-image-endpoint"), auth_url, glance_endpoint, region],
        None,
        60,
        "register-image-endpoint",
    )
    return _last_line(r.stdout)
