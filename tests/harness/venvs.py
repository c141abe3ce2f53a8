"""Cached venvs with the pinned OpenStack releases, built once per machine under a lock."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GLANCE_VERSION = "33.0.0"
KEYSTONE_VERSION = "30.0.0"
SWIFT_VERSION = "2.38.3"


class HarnessError(RuntimeError):
    """A service of the harness could not be installed, started or used."""


@dataclass(frozen=True)
class VenvSpec:
    """What one service needs in its venv and how to tell that a cached venv still works."""

    kind: str
    version: str
    requirements: tuple[str, ...]
    executables: tuple[str, ...]
    import_check: str


SPECS = {
    "glance": VenvSpec(
        "glance",
        GLANCE_VERSION,
        (f"glance=={GLANCE_VERSION}", "gunicorn"),
        ("gunicorn", "glance-manage"),
        "import glance, glance_store",
    ),
    "keystone": VenvSpec(
        "keystone",
        KEYSTONE_VERSION,
        (f"keystone=={KEYSTONE_VERSION}", "gunicorn"),
        ("gunicorn", "keystone-manage"),
        "import keystone",
    ),
    "swift": VenvSpec(
        "swift",
        SWIFT_VERSION,
        (f"swift=={SWIFT_VERSION}",),
        ("swift-proxy-server", "swift-ring-builder"),
        # pyeclib bundles liberasurecode in its manylinux wheel; xattr is a wheel too
        "import swift.proxy.server, swift.obj.server, pyeclib.ec_iface, xattr, cryptography.fernet",
    ),
}


def cache_root() -> Path:
    """``$LOCPICK_TEST_CACHE`` (``$LOCPICK_HARNESS_CACHE`` is read too), else
    ``~/.cache/locpick-test``."""
    base = (
        os.environ.get("LOCPICK_TEST_CACHE")
        or os.environ.get("LOCPICK_HARNESS_CACHE")
        or "~/.cache/locpick-test"
    )
    return Path(base).expanduser()


def cache_dir(kind: str) -> Path:
    return cache_root() / kind


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def _marker(spec: VenvSpec, venv: Path) -> Path:
    return venv / f".locpick-{spec.kind}-version"


def venv_ok(kind: str, venv: Path) -> bool:
    spec = SPECS[kind]
    marker = _marker(spec, venv)
    if not (marker.is_file() and marker.read_text().strip() == spec.version):
        return False
    if not all(os.access(venv / "bin" / exe, os.X_OK) for exe in spec.executables):
        return False
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-c", spec.import_check], capture_output=True, check=False
    )
    return r.returncode == 0


def ensure_venv(kind: str) -> tuple[Path, bool]:
    """The cached venv of ``kind`` ("glance", "keystone", "swift") and whether it was
    already there. Built with ``python -m venv`` + ``pip install`` of the pinned release;
    concurrent test sessions wait on a lock instead of building twice."""
    spec = SPECS[kind]
    cdir = cache_dir(kind)
    venv = cdir / "venv"
    cdir.mkdir(parents=True, exist_ok=True)
    with (cdir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv_ok(kind, venv):
            return venv, True
        shutil.rmtree(venv, ignore_errors=True)
        python = os.environ.get("LOCPICK_HARNESS_PYTHON") or sys.executable
        r = subprocess.run(
            [python, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if r.returncode != 0:
            raise HarnessError(f"{python} -m venv {venv} failed:\n{tail(r.stderr)}")
        log = cdir / "pip-install.log"
        with log.open("wb") as out:
            r = subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    *os.environ.get("LOCPICK_HARNESS_PIP_ARGS", "").split(),
                    *spec.requirements,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        if r.returncode != 0:
            raise HarnessError(
                f"pip install {' '.join(spec.requirements)} failed, see {log}:\n"
                + tail(log.read_text(errors="replace"))
            )
        _marker(spec, venv).write_text(spec.version + "\n")
        if not venv_ok(kind, venv):
            raise HarnessError(f"the new venv {venv} does not pass: {spec.import_check}")
        return venv, False


def link_venv(kind: str, workdir: Path) -> tuple[Path, bool]:
    """Ensure the cached venv and point ``WORKDIR/venv`` at it (handy when reading logs)."""
    venv, cached = ensure_venv(kind)
    link = workdir / "venv"
    if link.is_symlink() and Path(os.readlink(link)) != venv:
        link.unlink()
    if not link.is_symlink() and not link.exists():
        link.symlink_to(venv, target_is_directory=True)
    return venv, cached
