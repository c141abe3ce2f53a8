"""Keystone 30 under gunicorn: sqlite, fernet tokens, users admin/demo/glance, per WORKDIR.

=================== ======== ===============================================
user / password     project  roles
=================== ======== ===============================================
admin / admin       admin    admin (from ``keystone-manage bootstrap``)
demo / demo-pass    demo     member
glance / glance-pass service admin (Glance's authtoken service user)
=================== ======== ===============================================
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from harness import keystone_api, procs
from harness.glance import WSGI_DIR
from harness.venvs import HarnessError, link_venv

USERS = (
    ("demo", "demo-pass", "demo", "member"),
    ("glance", "glance-pass", "service", "admin"),
)


def auth_url_of(port: int) -> str:
    return f"http://{procs.HOST}:{port}/v3"


def write_config(workdir: Path) -> Path:
    (workdir / "log").mkdir(parents=True, exist_ok=True)
    path = workdir / "keystone.conf"
    path.write_text(
        f"""[DEFAULT]
log_file = {workdir}/log/keystone.log
use_stderr = False

[database]
connection = sqlite:///{workdir}/keystone.sqlite

[token]
provider = fernet
expiration = 3600

[fernet_tokens]
key_repository = {workdir}/fernet-keys

[fernet_receipts]
key_repository = {workdir}/fernet-keys

[credential]
key_repository = {workdir}/credential-keys
"""
    )
    return path


def running(workdir: Path) -> tuple[int, int] | None:
    """(pid, port) of the Keystone this WORKDIR runs, if it answers."""
    pid = procs.read_pid(workdir / "keystone.pid")
    state_file = workdir / ".bootstrap-state"
    state = state_file.read_text().split() if pid and state_file.exists() else []
    if pid is None or not state:
        return None
    port = int(state[0])
    return (pid, port) if procs.http_status(auth_url_of(port)) == 200 else None


def start(
    workdir: Path, port: int, *, env: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[str, int]:
    """Start Keystone in WORKDIR on PORT (idempotent for a running one); (auth URL, pid).

    ``db_sync`` and key set-up always run (cheap, idempotent); ``bootstrap`` and the users
    only when WORKDIR was not bootstrapped for this port yet (bootstrap writes the port
    into the identity endpoints)."""
    workdir.mkdir(parents=True, exist_ok=True)
    live = running(workdir)
    auth_url = auth_url_of(port)
    if live is not None:
        if live[1] != port:
            raise HarnessError(f"{workdir} already runs a Keystone on port {live[1]}")
        return auth_url, live[0]
    venv, _ = link_venv("keystone", workdir)
    conf = write_config(workdir)
    manage = [str(venv / "bin" / "keystone-manage"), "--config-file", str(conf)]
    logs = workdir / "log"
    procs.run_logged([*manage, "db_sync"], logs / "db_sync.log", "keystone-manage db_sync")
    me = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name]
    me += ["--keystone-group", grp.getgrgid(os.getgid()).gr_name]
    for keys, step in (("fernet-keys", "fernet_setup"), ("credential-keys", "credential_setup")):
        if not (workdir / keys).is_dir() or not any((workdir / keys).iterdir()):
            procs.run_logged([*manage, step, *me], logs / f"{step}.log", f"keystone-manage {step}")
    state_file = workdir / ".bootstrap-state"
    bootstrapped = state_file.exists() and state_file.read_text().split() == [str(port)]
    if not bootstrapped:
        state_file.unlink(missing_ok=True)
        procs.run_logged(
            [
                *manage,
                "bootstrap",
                "--bootstrap-username",
                keystone_api.ADMIN[0],
                "--bootstrap-password",
                keystone_api.ADMIN[1],
                "--bootstrap-project-name",
                keystone_api.ADMIN[2],
                "--bootstrap-role-name",
                "admin",
                "--bootstrap-service-name",
                "keystone",
                "--bootstrap-region-id",
                "RegionOne",
                "--bootstrap-admin-url",
                auth_url,
                "--bootstrap-internal-url",
                auth_url,
                "--bootstrap-public-url",
                auth_url,
            ],
            logs / "bootstrap.log",
            "keystone-manage bootstrap",
        )
    if not procs.port_free(port):
        raise HarnessError(f"port {port} on {procs.HOST} is already in use")
    argv = procs.gunicorn_argv(venv, workdir, port, "locpick_keystone_wsgi:application", WSGI_DIR)
    pid = procs.spawn(
        argv,
        env={"OS_KEYSTONE_CONFIG_DIR": str(workdir), **(env or {})},
        log=logs / "gunicorn.out",
        pidfile=workdir / "keystone.pid",
    )
    try:
        procs.wait_until(
            lambda: procs.http_status(auth_url) == 200,
            [pid],
            timeout,
            f"Keystone on {auth_url}",
            [logs / "gunicorn.log", logs / "keystone.log"],
        )
        if not bootstrapped:
            for user in USERS:
                keystone_api.ensure_user(auth_url, *user)
            state_file.write_text(f"{port}\n")
    except BaseException:
        stop(workdir)
        raise
    return auth_url, pid


def stop(workdir: Path) -> None:
    """Stop the Keystone whose pid is in WORKDIR/keystone.pid (its process group only)."""
    procs.stop_pidfile(workdir / "keystone.pid", workdir)
