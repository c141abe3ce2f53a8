"""``rbd://`` locations: Ceph RBD snapshots, as Glance's rbd store records them, read straight
from the OSDs.

Glance's form is ``rbd://<fsid>/<pool>/<image>/<snapshot>`` (each part percent-quoted); the short
``rbd://<pool>/<image>`` (no fsid, no snapshot) is read too. The cluster and client key come from
``[rbd]`` (``locpick.config.stores.RbdConfig``; ``CEPH_ARGS``/``CEPH_CONF`` already folded in at
the edge). Two engines:

- ``librbd`` (the ``rados``/``rbd`` Python bindings: Debian's ``python3-rados python3-rbd``,
  Fedora's ``python3-rados python3-rbd``; not on PyPI): ranged reads, ``Image.read(offset,
  length)``, so a copy in Ceph joins a swarm fetch as a ranged source beside HTTP copies.
- ``cli`` (``rbd export SPEC -`` of ``ceph-common``) where the bindings are missing: one
  sequential stream, resumed by skipping what is held.

Safety: a location naming another cluster's fsid is never read (``check`` compares the
ceph.conf's fsid, ``open`` the fsid of the cluster it connected to); a node without a readable
keyring ranks the copy unusable with the reason; every Ceph error becomes a
:class:`~locpick.errors.LocationError` naming the location at this one boundary. Keys are never
read by locpick (librados reads the keyring) and a ``--key`` given in ``CEPH_ARGS`` is scrubbed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
from types import ModuleType
from typing import Any

import attrs

from locpick.config.stores import RbdConfig
from locpick.errors import (
    LocationError,
    LocationUnreachable,
    TransferError,
    UnsupportedLocation,
    reason_of,
)
from locpick.models import Image, Location, Probe
from locpick.redact import SCRUB
from locpick.transports.base import Capabilities, Context, StreamDefaults, TransportDefaults
from locpick.transports.guards import check_total, probe_size_mismatch

log = logging.getLogger(__name__)

__all__ = ["RbdSpec", "RbdTransport", "parse_rbd_url"]

#: Where the two engines come from, said in reasons.
INSTALL_HINT = (
    "the rados/rbd Python bindings (Debian/Ubuntu: apt-get install python3-rados python3-rbd) "
    "or the rbd command (ceph-common)"
)
_DEFAULT_CONF = "/etc/ceph/ceph.conf"
_DEFAULT_KEYRINGS = (
    "/etc/ceph/$cluster.$name.keyring",
    "/etc/ceph/$cluster.keyring",
    "/etc/ceph/keyring",
    "/etc/ceph/keyring.bin",
)


@attrs.frozen
class RbdSpec:
    """What an ``rbd://`` URL names: the cluster (when said), pool, image and snapshot."""

    fsid: str | None
    pool: str
    image: str
    snapshot: str | None

    @property
    def spec(self) -> str:
        """``pool/image[@snap]``, as the rbd command spells it."""
        return f"{self.pool}/{self.image}" + (f"@{self.snapshot}" if self.snapshot else "")


def parse_rbd_url(url: str) -> RbdSpec:
    """``rbd://fsid/pool/image/snap`` or ``rbd://pool/image``; ValueError otherwise."""
    prefix = "rbd://"
    if not url.lower().startswith(prefix):
        raise ValueError("not an rbd:// URL")
    parts = [urllib.parse.unquote(p) for p in url[len(prefix) :].split("/")]
    if any(not p for p in parts):
        raise ValueError("empty part in rbd:// URL")
    # hostile metadata: a part must never read as an option or another image's spec
    if any(p.startswith("-") or any(c in p for c in "@\x00\n\r\t ") for p in parts):
        raise ValueError("rbd:// URL part starts with '-' or holds '@' or whitespace")
    if len(parts) == 4:
        return RbdSpec(parts[0], parts[1], parts[2], parts[3])
    if len(parts) == 2:
        return RbdSpec(None, parts[0], parts[1], None)
    raise ValueError("expected rbd://<fsid>/<pool>/<image>/<snapshot> or rbd://<pool>/<image>")


def _secs(seconds: float) -> str:
    """Ceph's timeout options take whole seconds (at least 1)."""
    return str(max(1, math.ceil(seconds)))


def _bindings() -> tuple[ModuleType, ModuleType] | None:
    try:
        import rados
        import rbd
    except ImportError:
        return None
    return rados, rbd


# -- ceph.conf, read only for what check() needs (no network I/O) ------------------------------
def _conf_values(path: str, user: str) -> dict[str, str]:
    """``fsid``, ``keyring``, ``key``, ``keyfile`` and ``auth_client_required`` as ceph.conf
    sets them for ``client.USER`` (its section, then ``[client]``, then ``[global]``)."""
    sections: dict[str, dict[str, str]] = {}
    current = "global"
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.split("#", 1)[0].split(";", 1)[0].strip()
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                continue
            key, eq, value = line.partition("=")
            if eq:
                norm = "_".join(key.strip().replace("-", " ").replace("_", " ").split())
                sections.setdefault(current, {})[norm] = value.strip()
    out: dict[str, str] = {}
    for section in (f"client.{user}", "client", "global"):
        for k, v in sections.get(section, {}).items():
            out.setdefault(k, v)
    return out


def _expand(path: str, user: str) -> str:
    name = f"client.{user}"
    for var, value in (("$cluster", "ceph"), ("$name", name), ("$type", "client"), ("$id", user)):
        path = path.replace("${" + var[1:] + "}", value).replace(var, value)
    return os.path.expanduser(path)


class _Settings:
    """The resolved client: conf path, user, keyring, and what ceph.conf says."""

    def __init__(self, cfg: RbdConfig) -> None:
        self.conf = cfg.conf or _DEFAULT_CONF
        self.user = cfg.user or "admin"
        self.keyring = cfg.keyring
        self.cfg = cfg

    def problem(self, spec: RbdSpec) -> str | None:
        """Why this node cannot read ``spec`` at all, decided locally; None when it may."""
        try:
            values = _conf_values(self.conf, self.user)
        except OSError as exc:
            return (
                f"Ceph config {self.conf} not readable ({exc.strerror or exc}): set [rbd] conf "
                "or CEPH_CONF"
            )
        fsid = values.get("fsid", "").lower()
        if spec.fsid and fsid and spec.fsid.lower() != fsid:
            return (
                f"another Ceph cluster: the location names fsid {spec.fsid}, {self.conf} is "
                f"cluster {fsid} (skipped, never read)"
            )
        if values.get("auth_client_required", "").strip().lower() == "none":
            return None
        if values.get("key") or (values.get("keyfile") and os.access(values["keyfile"], os.R_OK)):
            return None
        paths = (
            [self.keyring]
            if self.keyring
            else [p.strip() for p in values["keyring"].split(",")]
            if values.get("keyring")
            else list(_DEFAULT_KEYRINGS)
        )
        shown = [_expand(p, self.user) for p in paths if p]
        if any(os.access(p, os.R_OK) for p in shown):
            return None
        return (
            f"no Ceph key for client.{self.user}: keyring {', '.join(shown)} not readable; set "
            f"[rbd] user/keyring to a client with read access to pool {spec.pool!r}"
        )


class _Cluster:
    """One librados connection (lazy, shared by the transport's streams) and its pools."""

    def __init__(self, settings: _Settings, rados: ModuleType) -> None:
        self._s = settings
        self._rados = rados
        self._lock = threading.Lock()
        self._handle: Any = None
        self._fsid = ""
        self._ioctx: dict[str, Any] = {}

    def connect(self) -> tuple[Any, str]:
        """(connected Rados, cluster fsid); the connection is made once."""
        with self._lock:
            if self._handle is None:
                s = self._s
                conf = {
                    "rados_osd_op_timeout": _secs(s.cfg.read_timeout),
                    "rados_mon_op_timeout": _secs(s.cfg.connect_timeout),
                    "client_mount_timeout": _secs(s.cfg.connect_timeout),
                }
                if s.keyring:
                    conf["keyring"] = s.keyring
                handle = self._rados.Rados(conffile=s.conf, rados_id=s.user, conf=conf)
                try:
                    handle.connect(timeout=max(1, round(s.cfg.connect_timeout)))
                    self._fsid = str(handle.get_fsid()).lower()
                except BaseException:
                    with contextlib.suppress(Exception):
                        handle.shutdown()
                    raise
                self._handle = handle
            return self._handle, self._fsid

    def ioctx(self, pool: str) -> Any:
        handle, _ = self.connect()
        with self._lock:
            ctx = self._ioctx.get(pool)
            if ctx is None:
                ctx = self._ioctx[pool] = handle.open_ioctx(pool)
            return ctx

    def close(self) -> None:
        with self._lock:
            for ctx in self._ioctx.values():
                with contextlib.suppress(Exception):
                    ctx.close()
            self._ioctx.clear()
            if self._handle is not None:
                with contextlib.suppress(Exception):
                    self._handle.shutdown()
                self._handle = None


def convert(exc: BaseException, shown: str, what: str, *, midway: bool = False) -> LocationError:
    """One Ceph error (librados/librbd exception, OSError) as a LocationError naming the
    location and what to do about it."""
    if isinstance(exc, LocationError):
        return exc
    name = type(exc).__name__
    code = getattr(exc, "errno", None)
    code = abs(code) if isinstance(code, int) else None
    detail = SCRUB(str(exc)).strip().splitlines()[0][:200] if str(exc).strip() else name
    if code == errno.ENOENT or name in ("ImageNotFound", "ObjectNotFound"):
        return LocationUnreachable(
            f"{shown}: no such RBD image or snapshot {what} ({detail})", url=shown, permanent=True
        )
    if code in (errno.EPERM, errno.EACCES) or "Permission" in name:
        return LocationUnreachable(
            f"{shown}: Ceph refused access to {what} ({detail}): check the client's caps "
            "(read on the pool) and its key",
            url=shown,
            permanent=True,
        )
    if code == errno.ETIMEDOUT or name in ("TimedOut", "InterruptedOrTimeoutError"):
        if midway:
            return TransferError(
                f"{shown}: Ceph read timed out ([rbd] read_timeout) on {what}", url=shown
            )
        return LocationUnreachable(
            f"{shown}: Ceph did not answer in time ([rbd] connect_timeout) for {what}", url=shown
        )
    text = f"{shown}: Ceph error on {what}: {name}: {detail}"
    if midway:
        return TransferError(f"{text} (transfer broke off)", url=shown)
    return LocationUnreachable(text, url=shown)


class RbdStream(StreamDefaults):
    """An open librbd snapshot read from ``start`` to ``end`` with ranged reads."""

    def __init__(
        self, image: Any, *, start: int, end: int, total: int, final_url: str, what: str
    ) -> None:
        self._image = image
        self._pos = start
        self._end = end
        self._what = what
        self.start = start
        self.total: int | None = total
        self.final_url = final_url

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self._end - self._pos)
        if n <= 0:
            return 0
        try:
            data = self._image.read(self._pos, n)
        except Exception as exc:  # any librbd error, converted at this boundary
            raise convert(exc, self.final_url, self._what, midway=True) from exc
        got = len(data)
        if got == 0:
            raise TransferError(
                f"{self.final_url}: empty read at byte {self._pos} of {self._what}",
                url=self.final_url,
            )
        buf[:got] = data
        self._pos += got
        return got

    def close(self) -> None:
        # closing a read-only image cannot lose data
        with contextlib.suppress(Exception):
            self._image.close()


class RbdExportStream(StreamDefaults):
    """``rbd export SPEC -``: the whole snapshot as one pipe; bytes before ``start`` skipped."""

    def __init__(
        self, proc: subprocess.Popen[bytes], *, start: int, total: int, final_url: str, what: str
    ) -> None:
        self._proc = proc
        self._what = what
        self.start = start
        self.total: int | None = total
        self.final_url = final_url
        self._got = 0
        self._skip(start)

    def _skip(self, n: int) -> None:
        assert self._proc.stdout is not None
        buf = bytearray(min(max(n, 1), 4 << 20))
        while n > 0:
            got = self._proc.stdout.readinto(  # type: ignore[attr-defined]
                memoryview(buf)[: min(n, len(buf))]
            )
            if not got:
                self._fail("ended before the resume offset")
            n -= got

    def _fail(self, what: str) -> None:
        self.close()
        err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
        line = SCRUB(err).strip().splitlines()[-1][:200] if err.strip() else ""
        raise TransferError(
            f"{self.final_url}: rbd export of {self._what} {what}"
            + (f" ({line})" if line else "")
            + f", exit {self._proc.returncode}",
            url=self.final_url,
        )

    def readinto(self, buf: memoryview) -> int:
        assert self._proc.stdout is not None
        try:
            n = (
                self._proc.stdout.readinto(  # type: ignore[attr-defined]
                    buf
                )
                or 0
            )
        except OSError as exc:
            raise convert(exc, self.final_url, self._what, midway=True) from exc
        if n == 0:
            self._proc.wait()
            if self._proc.returncode != 0 or self.start + self._got != self.total:
                self._fail("broke off")
        self._got += n
        return n

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
        with contextlib.suppress(Exception):
            self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class RbdTransport(TransportDefaults):
    """``rbd``: Ceph RBD images (snapshots) through librbd, or ``rbd export`` without it."""

    schemes: tuple[str, ...] = ("rbd",)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        cfg = ctx.config.rbd
        self._settings = _Settings(cfg)
        bindings = _bindings() if cfg.engine in ("auto", "librbd") else None
        self._rbd = bindings[1] if bindings is not None else None
        self._cluster = _Cluster(self._settings, bindings[0]) if bindings is not None else None
        self._cli = shutil.which("rbd") if bindings is None and cfg.engine != "librbd" else None
        #: Ranged reads only through librbd; ``rbd export`` is one sequential stream.
        self.capabilities = Capabilities(bounded_ranges=self._cluster is not None)

    @property
    def engine(self) -> str | None:
        """``librbd``, ``cli`` or None (neither available)."""
        return "librbd" if self._cluster is not None else "cli" if self._cli else None

    def _spec(self, location: Location) -> RbdSpec:
        shown = location.display_url
        try:
            return parse_rbd_url(location.url)
        except ValueError as exc:
            raise UnsupportedLocation(f"{shown}: {exc}", url=shown) from None

    # -- transport ------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        try:
            spec = self._spec(location)
        except UnsupportedLocation as exc:
            return reason_of(exc)
        if self.engine is None:
            why = "the librbd bindings" if self.ctx.config.rbd.engine == "librbd" else INSTALL_HINT
            return f"unsupported scheme 'rbd', needs {why}"
        return self._settings.problem(spec)

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        reason = self.check(location, image)
        if reason:
            return Probe(url=shown, ok=False, error=reason)
        n = self.ctx.config.probe.ttfb_bytes
        if image.size is not None:
            n = min(n, image.size)
        buf = memoryview(bytearray(max(n, 1)))
        t0 = time.monotonic()
        try:
            stream = self._open(location, image, 0, n, probing=True)
        except LocationError as exc:
            return Probe(url=shown, ok=False, error=reason_of(exc))
        connect = time.monotonic() - t0
        got = 0
        try:
            while got < n:
                k = stream.readinto(buf[got:n])
                if k == 0:
                    break
                got += k
        except LocationError as exc:
            return Probe(url=shown, ok=False, error=reason_of(exc))
        finally:
            size = stream.total
            stream.close()
        ttfb = time.monotonic() - t0
        mismatch = probe_size_mismatch(shown, image.size, size, ttfb=ttfb, final_url=shown)
        if mismatch is not None:
            return mismatch
        if got < n:
            return Probe(url=shown, ok=False, ttfb=ttfb, error=f"short read: {got} of {n} bytes")
        note = None if self._cluster is not None else "rbd export (no librbd bindings): sequential"
        return Probe(
            url=shown, ok=True, ttfb=ttfb, connect=connect, size=size, final_url=shown, note=note
        )

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        end: int | None = None,
        if_range: str | None = None,
    ) -> RbdStream | RbdExportStream:
        """The snapshot's bytes from ``offset`` (to ``end``, exclusive, with librbd)."""
        return self._open(location, image, offset, end)

    def _open(
        self, location: Location, image: Image, offset: int, end: int | None, probing: bool = False
    ) -> RbdStream | RbdExportStream:
        shown = location.display_url
        reason = self.check(location, image)
        if reason:
            raise UnsupportedLocation(f"{shown}: {reason}", url=shown)
        spec = self._spec(location)
        if self._cluster is None:
            return self._open_cli(shown, spec, image, offset)
        rbd = self._rbd
        assert rbd is not None
        what = spec.spec
        try:
            _handle, fsid = self._cluster.connect()
        except Exception as exc:  # any librados error, converted at this boundary
            raise convert(exc, shown, f"cluster {self._settings.conf}") from exc
        if spec.fsid and spec.fsid.lower() != fsid:
            raise UnsupportedLocation(
                f"{shown}: another Ceph cluster: the location names fsid {spec.fsid}, this node "
                f"is connected to {fsid} (skipped, never read)",
                url=shown,
            )
        try:
            ioctx = self._cluster.ioctx(spec.pool)
            img = rbd.Image(ioctx, spec.image, snapshot=spec.snapshot, read_only=True)
        except Exception as exc:  # any librbd error, converted at this boundary
            raise convert(exc, shown, what) from exc
        try:
            total = int(img.size())
            check_total(shown, image.size, total)
        except LocationError:
            img.close()
            raise
        except Exception as exc:  # any librbd error, converted at this boundary
            img.close()
            raise convert(exc, shown, what) from exc
        stop = total if end is None else min(end, total)
        log.debug("rbd: %s opened at %d (to %d) via librbd", shown, offset, stop)
        return RbdStream(img, start=offset, end=stop, total=total, final_url=shown, what=what)

    def _cli_args(self) -> list[str]:
        s = self._settings
        args = [
            "-c", s.conf, "--id", s.user,
            "--client-mount-timeout", _secs(s.cfg.connect_timeout),
            "--rados-mon-op-timeout", _secs(s.cfg.connect_timeout),
            "--rados-osd-op-timeout", _secs(s.cfg.read_timeout),
        ]  # fmt: skip
        if s.keyring:
            args += ["--keyring", s.keyring]
        return args

    def _open_cli(self, shown: str, spec: RbdSpec, image: Image, offset: int) -> RbdExportStream:
        assert self._cli is not None
        base = [self._cli, *self._cli_args()]
        limit = self._settings.cfg.connect_timeout + self._settings.cfg.read_timeout
        try:
            info = subprocess.run(  # noqa: S603 - rbd from PATH, parts checked
                [*base, "info", "--format", "json", spec.spec],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=limit,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocationUnreachable(
                f"{shown}: rbd info {spec.spec} failed ({type(exc).__name__})", url=shown
            ) from exc
        if info.returncode != 0:
            err = SCRUB(info.stderr.decode(errors="replace")).strip().splitlines()
            line = err[-1][:200] if err else f"exit {info.returncode}"
            missing = info.returncode == errno.ENOENT or "No such file" in line
            raise LocationUnreachable(
                f"{shown}: rbd info {spec.spec}: "
                + ("no such RBD image or snapshot " if missing else "")
                + line,
                url=shown,
                permanent=missing,
            )
        import json

        try:
            total = int(json.loads(info.stdout)["size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LocationUnreachable(f"{shown}: rbd info gave no size", url=shown) from exc
        check_total(shown, image.size, total)
        try:
            proc = subprocess.Popen(  # noqa: S603 - rbd from PATH, parts checked
                [*base, "export", "--no-progress", spec.spec, "-"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise LocationUnreachable(f"{shown}: cannot run rbd export ({exc})", url=shown) from exc
        return RbdExportStream(proc, start=offset, total=total, final_url=shown, what=spec.spec)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
