"""Glance 33 API under gunicorn: config files, ``db_sync``, start and stop, per WORKDIR.

Stores: ``fs1`` (file, default), ``fs2`` (file), ``web`` (http, read-only), and ``ceph`` (rbd)
when started with a Ceph cluster (``harness.ceph``). The quirks that decide whether http
locations on loopback work at all are in :func:`write_config`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from harness import ceph, procs
from harness.venvs import HarnessError, link_venv

WSGI_DIR = Path(__file__).resolve().parent / "wsgi"
STOCK_NOAUTH = (
    "paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory"
)
OUR_NOAUTH = "paste.filter_factory = locpick_glance_noauth:NoauthAdminContext.factory"


def write_config(
    workdir: Path,
    venv: Path,
    port: int,
    auth: str,
    keystone_url: str | None,
    allowed_ports: str = "",
    location_quota: int | None = None,
    ceph_conf: Path | None = None,
) -> Path:
    """Write glance-api.conf (+ paste ini, store metadata, policy); returns the conf.

    ``location_quota``: Glance's ``image_location_quota`` (None: Glance's default, 10), raised
    by benchmarks whose nodes all register a copy of one image. ``ceph_conf``: add the store
    ``ceph`` (rbd, pool ``images``, user ``glance``) of that cluster."""
    endpoint = f"http://{procs.HOST}:{port}"
    for sub in ("stores/fs1", "stores/fs2", "staging", "tasks", "log", "lock"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    stock = venv / "etc" / "glance" / "glance-api-paste.ini"
    paste = stock.read_text()
    if STOCK_NOAUTH not in paste:
        raise HarnessError(f"{stock} has no unauthenticated-context filter to replace")
    (workdir / "glance-api-paste.ini").write_text(paste.replace(STOCK_NOAUTH, OUR_NOAUTH))
    for store in ("fs1", "fs2"):
        # id + mountpoint: what Nova's image_file_url handler (and locpick) match on
        meta = {"id": f"locpick-{store}", "mountpoint": str(workdir / "stores" / store)}
        (workdir / f"{store}-metadata.json").write_text(json.dumps(meta))
    keystone = auth == "keystone"
    # no-auth: every request is admin anyway, so make rule:context_is_admin agree
    (workdir / "policy.yaml").write_text("{}\n" if keystone else '"context_is_admin": "@"\n')
    policy = "" if keystone else "enforce_new_defaults = False\nenforce_scope = False\n"
    conf = f"""[DEFAULT]
bind_host = {procs.HOST}
bind_port = {port}
public_endpoint = {endpoint}
worker_self_reference_url = {endpoint}
enabled_backends = fs1:file, fs2:file, web:http{", ceph:rbd" if ceph_conf else ""}
# deprecated, but still what exposes and allows PATCHing locations in Glance 33
show_multiple_locations = True
show_image_direct_url = True
{"" if location_quota is None else f"image_location_quota = {location_quota}"}
enabled_import_methods = [glance-direct,web-download,copy-image]
log_file = {workdir}/log/glance-api.log

[database]
connection = sqlite:///{workdir}/glance.sqlite

[paste_deploy]
config_file = {workdir}/glance-api-paste.ini
{"flavor = keystone" if keystone else ""}

[glance_store]
default_backend = fs1

[fs1]
filesystem_store_datadir = {workdir}/stores/fs1
filesystem_store_metadata_file = {workdir}/fs1-metadata.json

[fs2]
filesystem_store_datadir = {workdir}/stores/fs2
filesystem_store_metadata_file = {workdir}/fs2-metadata.json

[web]
store_description = read-only http store

{_ceph_section(ceph_conf)}
[os_glance_staging_store]
filesystem_store_datadir = {workdir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {workdir}/tasks

[oslo_policy]
{policy}policy_file = {workdir}/policy.yaml

[oslo_concurrency]
lock_path = {workdir}/lock

[import_filtering_opts]
# Loopback http locations are refused unless their host is listed here. These options
# have bounds=True: without the [brackets] oslo.config raises a ValueError that Glance
# swallows, and every http location is a bare "Invalid location". [] = any port.
allowed_hosts = [127.0.0.1,localhost]
allowed_ports = [{allowed_ports}]
"""
    if keystone:
        if not keystone_url:
            raise HarnessError("auth='keystone' needs keystone_url")
        conf += f"""
[keystone_authtoken]
www_authenticate_uri = {keystone_url}
auth_url = {keystone_url}
auth_type = password
username = glance
password = glance-pass
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
interface = public
service_token_roles_required = True
"""
    path = workdir / "glance-api.conf"
    path.write_text(conf)
    (workdir / "glance-manage.conf").write_text(conf)
    (workdir / "auth-mode").write_text(auth + "\n")
    return path


def _ceph_section(ceph_conf: Path | None) -> str:
    """glance_store's rbd store on the harness's Ceph: it imports each upload into
    ``images/<id>``, snapshots it as ``snap``, protects the snapshot, and records
    ``rbd://<fsid>/images/<id>/snap``."""
    if ceph_conf is None:
        return ""
    return f"""[ceph]
rbd_store_pool = images
rbd_store_user = glance
rbd_store_ceph_conf = {ceph_conf}
rbd_store_chunk_size = 4
rados_connect_timeout = 30
"""


def running(workdir: Path) -> tuple[int, int, str] | None:
    """(pid, port, auth mode) of the Glance this WORKDIR runs, if it answers."""
    pid = procs.read_pid(workdir / "glance.pid")
    if pid is None:
        return None
    port = None
    for line in (workdir / "glance-api.conf").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "bind_port":
            port = int(value)
    if port is None or procs.http_status(f"http://{procs.HOST}:{port}/versions") != 200:
        return None
    return pid, port, (workdir / "auth-mode").read_text().strip()


def start(
    workdir: Path,
    port: int,
    *,
    auth: str = "noauth",
    keystone_url: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    location_quota: int | None = None,
    ceph_conf: Path | None = None,
) -> tuple[str, int]:
    """Start Glance in WORKDIR on PORT (idempotent for a running one); (endpoint, pid).

    ``ceph_conf``: also a store ``ceph`` (rbd) on that cluster; the venv gets Debian's
    ``rados``/``rbd`` bindings (``harness.ceph.ensure_bindings``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(env or {})
    live = running(workdir)
    if live is not None:
        pid, live_port, mode = live
        if live_port != port or mode != auth:
            raise HarnessError(f"{workdir} already runs a Glance ({mode}, port {live_port})")
        return f"http://{procs.HOST}:{port}", pid
    venv, _ = link_venv("glance", workdir)
    if ceph_conf is not None and not ceph.ensure_bindings(venv / "bin" / "python"):
        raise HarnessError(f"the rados/rbd Python bindings are missing: {ceph.INSTALL_HINT}")
    conf = write_config(
        workdir,
        venv,
        port,
        auth,
        keystone_url,
        env.pop("GLANCE_ALLOWED_PORTS", ""),
        location_quota=location_quota,
        ceph_conf=ceph_conf,
    )
    procs.run_logged(
        [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
        workdir / "log" / "db_sync.log",
        "glance-manage db_sync",
    )
    if not procs.port_free(port):
        raise HarnessError(f"port {port} on {procs.HOST} is already in use")
    argv = procs.gunicorn_argv(venv, workdir, port, "glance.wsgi.api:application", WSGI_DIR)
    pid = procs.spawn(
        argv,
        env={"OS_GLANCE_CONFIG_DIR": str(workdir), **env},
        log=workdir / "log" / "gunicorn.out",
        pidfile=workdir / "glance.pid",
    )
    endpoint = f"http://{procs.HOST}:{port}"
    try:
        procs.wait_until(
            lambda: procs.http_status(f"{endpoint}/versions") == 200,
            [pid],
            timeout,
            f"Glance on {endpoint}",
            [workdir / "log" / "gunicorn.log", workdir / "log" / "glance-api.log"],
        )
    except BaseException:
        stop(workdir)
        raise
    return endpoint, pid


def stop(workdir: Path) -> None:
    """Stop the Glance whose pid is in WORKDIR/glance.pid (its process group only)."""
    procs.stop_pidfile(workdir / "glance.pid", workdir)
