"""Replacing a small file whole: readers see the old content or the new, never half of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    prefix: str | None = None,
    suffix: str = ".locpick-tmp",
) -> None:
    """Write ``data`` to a new private temp file beside ``path`` (``mkstemp``: a fresh name, so
    nothing planted is followed), fsync it, give it ``mode`` and rename it over ``path``; the
    temp file is gone whatever happens."""
    target = Path(path)
    fd, name = tempfile.mkstemp(
        prefix=prefix if prefix is not None else f".{target.name}.",
        suffix=suffix,
        dir=target.parent,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
