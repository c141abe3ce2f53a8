"""A throwaway single-node Ceph on loopback: 1 monitor + 1 memstore OSD, cephx on, pool ``images``.

Debian's packages (``ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados``; see
``.ci/run``). No mgr: rbd I/O works without one (health only warns). The OSD keeps its data in
memory (``memstore``), so nothing touches a disk and a restarted OSD is empty: tests that stop the
OSD pause it (SIGSTOP/SIGCONT) instead. Both daemons run in the foreground in their own process
groups (``procs.spawn``), pids in WORKDIR, so stopping them touches nothing else.

Users and keys, each in ``WORKDIR/<name>.keyring`` (``keyring = WORKDIR/$name.keyring``):
``client.admin`` (everything), ``client.glance`` (rbd on ``images``, as Glance's store needs),
``client.locpick`` (read-only rbd on ``images``: what a compute node gets).

The Python bindings (``rados``, ``rbd``) are Debian's, built for CPython 3.11; another 3.11
interpreter gets only those two modules through :func:`ensure_bindings` (a ``.pth`` naming a small
directory of symlinks, so the rest of dist-packages never shadows a venv's own packages).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness import procs
from harness.venvs import HarnessError, cache_root

PACKAGES = "ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados"
INSTALL_HINT = f"apt-get install -y {PACKAGES}"
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
POOL = "images"
#: Read-only rbd access to the images pool: what a compute node's client key gets.
READER = "locpick"
_TOOLS = ("ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool")


def missing_tools() -> list[str]:
    """Ceph commands not on PATH (empty when the harness can run)."""
    return [t for t in _TOOLS if shutil.which(t) is None]


def binding_files() -> list[Path]:
    """Debian's compiled ``rados``/``rbd`` modules for this interpreter's ABI (may be empty)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return [p for p in (DIST_PACKAGES / f"{m}{suffix}" for m in ("rados", "rbd")) if p.is_file()]


def bindings_dir() -> Path:
    """A directory holding only symlinks to Debian's ``rados``/``rbd`` modules."""
    d = cache_root() / "ceph-bindings"
    d.mkdir(parents=True, exist_ok=True)
    for f in binding_files():
        link = d / f.name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f)
    return d


def ensure_bindings(python: Path | str = sys.executable) -> bool:
    """Make ``rados``/``rbd`` importable by the venv of ``python`` (a ``.pth`` file in its
    site-packages naming :func:`bindings_dir`); whether they import now."""
    check = [str(python), "-c", "import rados, rbd"]
    if subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return True
    if not binding_files():
        return False
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "locpick-ceph-bindings.pth").write_text(f"{bindings_dir()}\n")
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class CephCluster:
    """One running cluster: where its config, keys and daemons are."""

    workdir: Path
    fsid: str
    port: int
    mon_pid: int
    osd_pid: int

    @property
    def conf(self) -> Path:
        return self.workdir / "ceph.conf"

    def keyring(self, user: str) -> Path:
        return self.workdir / f"client.{user}.keyring"

    def key(self, user: str) -> str:
        """The secret of ``client.USER`` (tests look for it in every output)."""
        for line in self.keyring(user).read_text().splitlines():
            k, _, v = line.partition("=")
            if k.strip() == "key":
                return v.strip()
        raise HarnessError(f"no key in {self.keyring(user)}")

    def cli(self, *args: str, tool: str = "ceph", timeout: float = 120) -> str:
        """Run a ceph/rbd command as client.admin; its stdout (raise with stderr on failure)."""
        r = subprocess.run(
            [tool, "-c", str(self.conf), "--id", "admin", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=procs.service_env({"CEPH_ARGS": ""}),
        )
        if r.returncode != 0:
            raise HarnessError(f"{tool} {' '.join(args)} failed: {r.stderr.strip()[-2000:]}")
        return r.stdout

    def import_image(self, file: Path, name: str, *, snapshot: str = "snap") -> str:
        """What Glance's rbd store does on upload, by hand: import FILE as ``images/NAME``,
        create and protect snapshot ``snap``; returns the Glance form of its location."""
        self.cli("import", "--no-progress", str(file), f"{POOL}/{name}", tool="rbd")
        self.cli("snap", "create", f"{POOL}/{name}@{snapshot}", tool="rbd")
        self.cli("snap", "protect", f"{POOL}/{name}@{snapshot}", tool="rbd")
        return self.location(name, snapshot)

    def location(self, name: str, snapshot: str = "snap") -> str:
        return f"rbd://{self.fsid}/{POOL}/{name}/{snapshot}"

    def pause_osd(self) -> None:
        """Stop the OSD where it stands (SIGSTOP): reads hang, data stays (memstore)."""
        os.kill(self.osd_pid, signal.SIGSTOP)

    def resume_osd(self) -> None:
        os.kill(self.osd_pid, signal.SIGCONT)


def _conf(d: Path, fsid: str, port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v1:{procs.HOST}:{port}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/$name.keyring
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd objectstore = memstore
memstore device bytes = 2147483648
osd crush chooseleaf type = 0
public network = 127.0.0.0/8
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
# small daemons: two cores are shared with other tests
osd op num shards = 1
osd op num threads per shard = 2
ms async op threads = 1
[mon.a]
mon data = {d}/mon
[osd.0]
osd data = {d}/osd0
keyring = {d}/osd0/keyring
"""


def _run(argv: list[str], d: Path, what: str) -> None:
    log = d / "log" / f"setup-{what.replace(' ', '-')}.log"
    procs.run_logged(argv, log, what, env={"CEPH_ARGS": ""})


def start(workdir: Path, port: int | None = None, *, timeout: float = 120) -> CephCluster:
    """A fresh cluster in WORKDIR (wiped first) on 127.0.0.1:PORT with pool ``images``."""
    missing = missing_tools()
    if missing:
        raise HarnessError(f"Ceph is not installed ({', '.join(missing)}): {INSTALL_HINT}")
    d = workdir.absolute()
    stop(d)
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("mon", "osd0", "run", "log"):
        (d / sub).mkdir(parents=True)
    port = port or procs.free_port()
    fsid = str(uuid.uuid4())
    conf = d / "ceph.conf"
    conf.write_text(_conf(d, fsid, port))
    c = ["-c", str(conf)]
    auth = "ceph-authtool"
    _run([auth, "--create-keyring", f"{d}/mon.keyring", "--gen-key", "-n", "mon.",
          "--cap", "mon", "allow *"], d, "mon key")  # fmt: skip
    admin = f"{d}/client.admin.keyring"
    _run([auth, "--create-keyring", admin, "--gen-key", "-n", "client.admin",
          "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"],
         d, "admin key")  # fmt: skip
    _run([auth, f"{d}/mon.keyring", "--import-keyring", admin], d, "import admin key")
    _run(["monmaptool", "--create", "--add", "a", f"v1:{procs.HOST}:{port}", "--fsid", fsid,
          f"{d}/monmap"], d, "monmap")  # fmt: skip
    _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", f"{d}/monmap",
          "--keyring", f"{d}/mon.keyring"], d, "ceph-mon --mkfs")  # fmt: skip
    env = {"CEPH_ARGS": ""}
    mon = procs.spawn(["ceph-mon", *c, "-f", "-i", "a"], env=env,
                      log=d / "log" / "mon.out", pidfile=d / "mon.pid")  # fmt: skip
    osd = 0
    try:
        cluster = CephCluster(d, fsid, port, mon, 0)
        osd_uuid = str(uuid.uuid4())
        procs.wait_until(
            lambda: not procs.port_free(port),
            [mon], timeout, f"ceph-mon on {port}", [d / "log" / "mon.a.log"],
        )  # fmt: skip
        cluster.cli("osd", "new", osd_uuid)
        _run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, "--mkkey",
              "--no-mon-config"], d, "ceph-osd --mkfs")  # fmt: skip
        cluster.cli("auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd",
                    "mgr", "allow profile osd", "-i", f"{d}/osd0/keyring")  # fmt: skip
        osd = procs.spawn(["ceph-osd", *c, "-f", "-i", "0"], env=env,
                          log=d / "log" / "osd.out", pidfile=d / "osd.pid")  # fmt: skip
        cluster = CephCluster(d, fsid, port, mon, osd)
        procs.wait_until(
            lambda: '"num_up_osds":1' in cluster.cli("osd", "stat", "-f", "json"),
            [mon, osd], timeout, "ceph-osd.0", [d / "log" / "osd.0.log"],
        )  # fmt: skip
        cluster.cli("osd", "pool", "create", POOL, "8")
        cluster.cli("pool", "init", POOL, tool="rbd")
        for user, osd_caps in (
            ("glance", f"profile rbd pool={POOL}"),
            (READER, f"profile rbd-read-only pool={POOL}"),
        ):
            key = cluster.cli("auth", "get-or-create", f"client.{user}", "mon", "profile rbd",
                              "osd", osd_caps)  # fmt: skip
            cluster.keyring(user).write_text(key)
            cluster.keyring(user).chmod(0o600)
    except BaseException:
        stop(d)
        raise
    return cluster


def stop(workdir: Path) -> None:
    """Stop the daemons of WORKDIR (a paused OSD is woken so that it can die)."""
    for name in ("osd", "mon"):
        pid = procs.read_pid(workdir / f"{name}.pid")
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        procs.stop_pidfile(workdir / f"{name}.pid", workdir, grace=5.0)
