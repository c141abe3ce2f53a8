"""Real tmpfs mounts for the shared-filesystem tests (we run as root in CI)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount_tmpfs(where: Path, *, source: str | None = None, size: str = "96m") -> str:
    """Mount a fresh tmpfs at ``where``; skip (with the reason) where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    source = source or f"lpk-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", source, str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here ({proc.stderr.strip() or proc.returncode})")
    return source


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(mountpoint, source name) of a tmpfs mounted for this test only."""
    where = tmp_path / "mnt"
    source = mount_tmpfs(where)
    try:
        yield where, source
    finally:
        unmount(where)
