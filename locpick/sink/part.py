"""The resumable part file of a sink: ``.DEST.locpick-part`` plus a JSON sidecar naming the
image it holds (id, size, hash) and the validators of its source, so a crashed run's bytes
are reused only for the same image and only while the source is unchanged."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from locpick.errors import DestinationError
from locpick.sink.privfile import SAFE_OPEN, is_private, read_private, write_json_atomic

PART_SUFFIX = ".locpick-part"
_SIDECAR_VERSION = 1
#: A sidecar is a few hundred bytes; anything larger was not written by locpick.
_SIDECAR_MAX = 1 << 20

#: Validators per source URL: {url: {"etag": .., "last_modified": ..}}.
Validators = dict[str, dict[str, str | None]]


class ResumePart:
    """Where a resumable sink writes, and the record that lets a later run trust it."""

    def __init__(self, dest: Path, identity: Mapping[str, Any]) -> None:
        self.dest = dest
        self.identity = dict(identity)
        self.tmp = dest.parent / f".{dest.name}{PART_SUFFIX}"
        self.sidecar = dest.parent / f".{dest.name}{PART_SUFFIX}.json"

    def open_held(self, size: int | None) -> tuple[int, int, Validators] | None:
        """An fd on a part left for this very image (ours, not over ``size``), the bytes it
        holds and its recorded validators; None when there is none to trust."""
        raw = read_private(self.sidecar, _SIDECAR_MAX)
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("version") != _SIDECAR_VERSION:
            return None
        if any(meta.get(k) != v for k, v in self.identity.items()):
            return None
        try:
            fd = os.open(self.tmp, os.O_RDWR | SAFE_OPEN)
        except OSError:
            return None
        st = os.fstat(fd)
        if not is_private(st) or (size is not None and st.st_size > size):
            os.close(fd)
            return None
        validators: Validators = {}
        recorded = meta.get("validators")
        if isinstance(recorded, dict):
            validators = {str(u): dict(v) for u, v in recorded.items() if isinstance(v, dict)}
        return fd, st.st_size, validators

    def create(self) -> int:
        """A fresh, empty part file (``O_EXCL``: never one planted meanwhile); stale leftovers
        are removed first. The caller writes the sidecar."""
        for stale in (self.tmp, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.tmp, flags, 0o600)
        except OSError as exc:
            raise DestinationError(
                f"dest {self.dest}: cannot create the part file {self.tmp.name} ({exc.strerror})"
            ) from exc

    def save(self, validators: Validators) -> None:
        """Record the identity and ``validators``; an OSError is the caller's to report."""
        meta = {"version": _SIDECAR_VERSION, **self.identity, "validators": validators}
        write_json_atomic(self.sidecar, meta)

    def remove_sidecar(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sidecar.unlink()
