"""A real etcd (Debian's ``etcd-server``) on loopback ports in a work directory: the
coordination backend of ``[fleet] coordination`` (tooz through etcd3gw, issue 24)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness import procs
from harness.venvs import HarnessError

INSTALL_HINT = "etcd is missing: apt-get install etcd-server (Debian) or put etcd on PATH"


def etcd_binary() -> str | None:
    return shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)


@dataclass
class EtcdHandle:
    workdir: Path
    pid: int
    client_port: int

    @property
    def url(self) -> str:
        """The tooz URL of this etcd (its v3 gRPC gateway, through etcd3gw)."""
        return f"etcd3+http://{procs.HOST}:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://{procs.HOST}:{self.client_port}"

    def stop(self) -> None:
        procs.stop_group(self.pid, str(self.workdir), grace=10)


def _healthy(http: str) -> bool:
    req = urllib.request.Request(
        http + "/v3/maintenance/status", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with procs.DIRECT.open(req, timeout=2) as resp:
            return bool(json.loads(resp.read()).get("version"))
    except (OSError, ValueError):
        return False


def start_etcd(workdir: Path, timeout: float = 60.0) -> EtcdHandle:
    """Start one etcd member with its data in ``workdir`` on two free loopback ports."""
    binary = etcd_binary()
    if binary is None:
        raise HarnessError(INSTALL_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    port = procs.free_port(block=2)
    client, peer = f"http://{procs.HOST}:{port}", f"http://{procs.HOST}:{port + 1}"
    argv = [
        binary,
        "--name", "locpick-test",
        "--data-dir", str(workdir / "data"),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"locpick-test={peer}",
        "--initial-cluster-state", "new",
    ]  # fmt: skip
    log = workdir / "etcd.log"
    pid = procs.spawn(argv, env={"ETCD_UNSUPPORTED_ARCH": ""}, log=log, pidfile=workdir / "pid")
    handle = EtcdHandle(workdir, pid, port)
    try:
        procs.wait_until(lambda: _healthy(client), [pid], timeout, "etcd answering", [log])
    except BaseException:
        handle.stop()
        raise
    return handle
