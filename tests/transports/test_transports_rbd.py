"""rbd:// locations against a real single-node Ceph (``harness.ceph``) and a real Glance whose
``ceph`` (rbd) store writes the location on upload.

Skipped with the install hint where the Ceph packages are missing, failed under ``CI=true``.
The test that pauses the OSD runs last (memstore: a paused OSD keeps its data; it is resumed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import ceph, procs, seed
from harness import glance as glance_service
from harness.venvs import HarnessError
from helpers import image_record, run_cli, write_record

import locpick
from locpick.config.model import Config, Policy, ProbeConfig, TransferConfig
from locpick.config.stores import RbdConfig
from locpick.models import Progress
from locpick.transports.rbd import parse_rbd_url

SIZE = 24 * 1024 * 1024 + 4321  # above the swarm's 16 MiB floor, not a whole number of objects
DATA = os.urandom(SIZE)
SHA512 = hashlib.sha512(DATA).hexdigest()


def _need_ceph() -> None:
    missing = ceph.missing_tools()
    if not missing and not _bindings_importable():
        missing = ["python3-rados/python3-rbd bindings"]
    if missing:
        why = f"Ceph is not installed ({', '.join(missing)}): {ceph.INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def _bindings_importable() -> bool:
    """Debian's rados/rbd in this (non-Debian) interpreter: the venv's .pth, else added here."""
    try:
        import rados
        import rbd
    except ImportError:
        if not ceph.binding_files():
            return False
        ceph.ensure_bindings()  # for the CLI subprocesses
        sys.path.append(str(ceph.bindings_dir()))
        try:
            import rados  # noqa: F401
            import rbd  # noqa: F401
        except ImportError:
            return False
    return True


@dataclass
class RbdWorld:
    cluster: ceph.CephCluster
    glance: str
    image_id: str
    location: str
    origin_url: str
    tmp: Path

    def config(self, **rbd: Any) -> Config:
        """Reads as the read-only client ``locpick``; rbd preferred (deterministic choice)."""
        return Config(
            rbd=RbdConfig(**{"conf": str(self.cluster.conf), "user": ceph.READER, **rbd}),
            policy=Policy(prefer_schemes=("rbd",)),
            probe=ProbeConfig(deadline=30.0),
            history_file="",
        )

    def config_file(self, name: str, extra: str = "") -> Path:
        path = self.tmp / name
        path.write_text(
            f'history_file = ""\n[policy]\nprefer_schemes = ["rbd"]\n[probe]\ndeadline = 30.0\n'
            f"{extra}"
        )
        return path

    def secret_keys(self) -> list[str]:
        return [self.cluster.key(u) for u in ("admin", "glance", ceph.READER)]

    def record(self, *urls: str) -> dict[str, Any]:
        return image_record("img", DATA, list(urls))


def _upload_to_ceph_store(endpoint: str, file: Path) -> tuple[str, str]:
    """Create an image and upload FILE into Glance's ``ceph`` store; (id, its rbd location)."""
    g = seed.Glance(endpoint, None, 120)
    image_id = str(
        g.request(
            "POST", "/v2/images", {"name": "rbd", "disk_format": "raw", "container_format": "bare"}
        )["id"]
    )
    with file.open("rb") as f:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(file.stat().st_size),
            "X-Image-Meta-Store": "ceph",
        }
        g.request("PUT", f"/v2/images/{image_id}/file", f, headers)
    img = g.request("GET", f"/v2/images/{image_id}")
    urls = [loc["url"] for loc in img.get("locations") or []]
    rbd = [u for u in urls if u.startswith("rbd://")]
    if img["status"] != "active" or len(rbd) != 1 or img.get("os_hash_value") != SHA512:
        raise HarnessError(f"Glance did not store {image_id} in ceph: {json.dumps(img)}")
    return image_id, rbd[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RbdWorld]:
    _need_ceph()
    from locpick._demo.origin import Origin

    tmp = tmp_path_factory.mktemp("rbd")
    cluster = ceph.start(tmp / "ceph")
    gdir = tmp / "glance"
    try:
        endpoint, _ = glance_service.start(gdir, procs.free_port(), ceph_conf=cluster.conf)
        file = tmp / "image.raw"
        file.write_bytes(DATA)
        image_id, location = _upload_to_ceph_store(endpoint, file)
        with Origin(DATA, path="/image.raw") as origin:
            yield RbdWorld(cluster, endpoint, image_id, location, origin.url, tmp)
    finally:
        glance_service.stop(gdir)
        ceph.stop(cluster.workdir)


def _no_key(world: RbdWorld, *texts: str) -> None:
    for key in world.secret_keys():
        for text in texts:
            assert key not in text


# -- pure -----------------------------------------------------------------------------------------
def test_parse_glance_and_short_forms() -> None:
    fsid = str(uuid.uuid4())
    full = parse_rbd_url(f"rbd://{fsid}/images/abc%2Ddef/snap")
    assert (full.fsid, full.pool, full.image, full.snapshot) == (fsid, "images", "abc-def", "snap")
    assert full.spec == "images/abc-def@snap"
    short = parse_rbd_url("rbd://images/abc")
    assert (short.fsid, short.snapshot, short.spec) == (None, None, "images/abc")
    for bad in ("rbd://a/b/c", "rbd://a//b/c", "rbd://-c/x", "rbd://p/i@other", "rbd://p/i%20x"):
        with pytest.raises(ValueError):
            parse_rbd_url(bad)


def test_ceph_args_fill_only_unset_values() -> None:
    env = {"CEPH_ARGS": "--name client.nova -k /k.keyring --conf=/c.conf", "CEPH_CONF": "/x"}
    got = RbdConfig(keyring="/mine").with_environment(env)
    assert (got.user, got.keyring, got.conf) == ("nova", "/mine", "/c.conf")
    assert RbdConfig().with_environment({"CEPH_CONF": "/x"}).conf == "/x"
    assert RbdConfig(user="u").with_environment({"CEPH_ARGS": "--id glance"}).user == "u"


# -- real Ceph ------------------------------------------------------------------------------------
def test_download_glance_rbd_location_verified(world: RbdWorld) -> None:
    """Glance's own rbd:// location, read straight from the OSDs with the read-only client
    named the Ceph way (CEPH_CONF, CEPH_ARGS), verified against Glance's sha512."""
    assert world.location == world.cluster.location(world.image_id)
    dest = world.tmp / "dl-glance"
    env = {
        "CEPH_CONF": str(world.cluster.conf),
        "CEPH_ARGS": f"--id {ceph.READER}",
        "LOCPICK_CONFIG": str(world.config_file("glance.toml")),
    }
    args = ("--glance-url", world.glance, "--json")
    ranked = run_cli("rank", world.image_id, *args, env=env)
    assert ranked.returncode == 0, ranked.stderr
    rows = {r["url"]: r for r in json.loads(ranked.stdout)}
    assert rows[world.location]["usable"] is True, rows[world.location]
    proc = run_cli("download", world.image_id, str(dest), *args, "-v", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["source_url"] == world.location
    assert result["verified"] == "sha512"
    assert dest.read_bytes() == DATA
    _no_key(world, ranked.stdout, ranked.stderr, proc.stdout, proc.stderr)


def test_export_engine_without_bindings(world: RbdWorld) -> None:
    """``engine = "cli"`` (what a node without the bindings gets): ``rbd export``, verified."""
    dest = world.tmp / "dl-cli"
    result = locpick.download(
        "img", dest, metadata=world.record(world.location), config=world.config(engine="cli")
    )
    assert result.source_url == world.location and result.verified == "sha512"
    assert dest.read_bytes() == DATA


def test_swarm_mixes_rbd_and_http(world: RbdWorld) -> None:
    """An RBD copy is a ranged source: one swarm fetch takes pieces from it and from HTTP."""
    cfg = world.config()
    cfg = Config(
        rbd=cfg.rbd,
        probe=cfg.probe,
        history_file="",
        transfer=TransferConfig(max_sources=2, piece_size=1 << 20, buffer_bytes=256 << 10),
    )
    dest = world.tmp / "dl-swarm"
    result = locpick.download(
        "img", dest, metadata=world.record(world.location, world.origin_url), config=cfg
    )
    assert dest.read_bytes() == DATA and result.verified == "sha512"
    shares = {s.url: s.bytes for s in result.sources}
    assert shares.get(world.location, 0) > 0, result
    assert shares.get(world.origin_url, 0) > 0, result


@pytest.mark.parametrize("conf_has_fsid", [True, False])
def test_other_cluster_skipped_never_read(world: RbdWorld, conf_has_fsid: bool) -> None:
    """A location naming another fsid is skipped with the reason, from ceph.conf's fsid or,
    when the conf has none, from the cluster connected to; the next copy delivers."""
    other = f"rbd://{uuid.uuid4()}/images/{world.image_id}/snap"
    conf = world.cluster.conf
    if not conf_has_fsid:
        conf = world.tmp / "nofsid.conf"
        lines = world.cluster.conf.read_text().splitlines()
        conf.write_text("\n".join(x for x in lines if not x.startswith("fsid")) + "\n")
    dest = world.tmp / f"dl-other-{conf_has_fsid}"
    result = locpick.download(
        "img",
        dest,
        metadata=world.record(other, world.origin_url),
        config=world.config(conf=str(conf)),
    )
    assert result.source_url == world.origin_url and dest.read_bytes() == DATA
    rbd = [a for a in result.attempts if a.url == other]
    assert rbd and all(a.outcome in ("skipped", "failed") and not a.bytes for a in rbd), rbd
    assert any("another Ceph cluster" in (a.error or "") for a in rbd), rbd


def test_no_keyring_ranked_unusable_then_fallback(world: RbdWorld) -> None:
    """A node without a key for its client: the copy ranks unusable with the reason, and the
    download falls back to the next copy."""
    meta = write_record(world.tmp / "nokey.json", world.record(world.location, world.origin_url))
    cfg = world.config_file(
        "nokey.toml", f'[rbd]\nconf = "{world.cluster.conf}"\nuser = "nova-without-key"\n'
    )
    env = {"LOCPICK_CONFIG": str(cfg)}
    ranked = run_cli("rank", "img", "--metadata", str(meta), "--json", env=env)
    assert ranked.returncode == 0, ranked.stderr
    row = {r["url"]: r for r in json.loads(ranked.stdout)}[world.location]
    assert row["usable"] is False
    assert "no Ceph key for client.nova-without-key" in row["reasons"]["error"]
    dest = world.tmp / "dl-nokey"
    proc = run_cli("download", "img", str(dest), "--metadata", str(meta), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source_url"] == world.origin_url
    assert dest.read_bytes() == DATA
    _no_key(world, ranked.stdout, ranked.stderr, proc.stdout, proc.stderr)


def test_verify_checks_rbd_copies(world: RbdWorld) -> None:
    """``verify``: Glance's rbd copy hashes ok; a copy of another size is a mismatch, found
    by the size check before any read; output carries no key."""
    small = world.tmp / "small.raw"
    small.write_bytes(DATA[: 1 << 20])
    wrong = world.cluster.import_image(small, "wrong-size")
    meta = write_record(world.tmp / "verify.json", world.record(world.location, wrong))
    env = {"LOCPICK_CONFIG": str(world.config_file(
        "verify.toml", f'[rbd]\nconf = "{world.cluster.conf}"\nuser = "{ceph.READER}"\n'
    ))}  # fmt: skip
    proc = run_cli("verify", "img", "--metadata", str(meta), "--json", "-v", env=env)
    doc = json.loads(proc.stdout)
    status = {r["url"]: r for r in doc["locations"]}
    assert status[world.location]["status"] == "ok", status
    assert "sha512 matches" in status[world.location]["detail"]
    assert status[wrong]["status"] == "mismatch", status
    assert "size" in status[wrong]["detail"]
    glance = run_cli("verify", world.image_id, "--glance-url", world.glance, "--json", env=env)
    rows = {r["url"]: r for r in json.loads(glance.stdout)["locations"]}
    assert rows[world.location]["status"] == "ok", rows
    _no_key(world, proc.stdout, proc.stderr, glance.stdout, glance.stderr)


def test_osd_stopped_mid_read_falls_back(world: RbdWorld) -> None:
    """The OSD stops (SIGSTOP) after the first bytes from RBD: the read times out
    (``[rbd] read_timeout``), the download resumes on the HTTP copy, the dest verifies."""
    cfg = world.config(read_timeout=2.0)
    cfg = Config(
        rbd=cfg.rbd,
        policy=cfg.policy,
        probe=cfg.probe,
        history_file="",
        transfer=TransferConfig(max_sources=1, buffer_bytes=1 << 20, switch_factor=1e9),
    )
    paused: list[int] = []

    def progress(p: Progress) -> None:
        if p.done > 0 and not paused:
            paused.append(p.done)
            world.cluster.pause_osd()

    dest = world.tmp / "dl-osd"
    try:
        with locpick.Client(config=cfg) as client:
            result = client.download(
                "img",
                dest,
                metadata=world.record(world.location, world.origin_url),
                progress=progress,
            )
    finally:
        world.cluster.resume_osd()
    assert paused, "the OSD was never paused"
    assert dest.read_bytes() == DATA and result.verified == "sha512"
    assert result.source_url == world.origin_url
    rbd = [a for a in result.attempts if a.url == world.location]
    # the engine lists what the RBD copy delivered before it stalled, then its failure
    assert rbd and rbd[-1].outcome == "failed" and any(a.bytes for a in rbd), result.attempts
    ok = [a for a in result.attempts if a.url == world.origin_url and a.outcome == "ok"]
    assert ok and ok[0].bytes < SIZE, result.attempts  # resumed, not started over


def test_engine_librbd_when_bindings_import() -> None:
    """The librbd engine needs no rbd command: the transport picks it when bindings import."""
    _need_ceph()
    from locpick.transports.base import Context
    from locpick.transports.rbd import RbdTransport

    t = RbdTransport(Context(Config(history_file="")))
    assert t.engine == "librbd" and t.capabilities.bounded_ranges
    assert shutil.which("rbd")  # and the cli fallback exists on this node too
