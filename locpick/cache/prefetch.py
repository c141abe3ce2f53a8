"""The prefetch state file of a node cache: what ``locpick cache prefetch`` is doing or did.

One small JSON document, ``DIR/prefetch.json``, replaced whole (temp file, fsync, rename) on
every change, so ``locpick serve``'s ``/status`` never reads half of it. The prefetch job
(:mod:`locpick.jobs.prefetch`) writes it; ``/status`` reads it. It is advisory: a write that
fails is a warning, and a file that is missing, too large or malformed reads as no state.
A run that was killed leaves ``finished_at`` unset and a ``pid`` that is gone: its state
reads as ``interrupted``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from locpick.sink.atomicfile import replace_file

log = logging.getLogger(__name__)

STATE_FILE = "prefetch.json"
MAX_FILE_BYTES = 4 << 20
#: An image's status in a prefetch: waiting, being fetched, already cached (skipped),
#: fetched into the cache by this run, or failed (``error`` says why).
STATUSES = ("pending", "fetching", "cached", "fetched", "failed")


@attrs.frozen
class PrefetchImage:
    """One image of a prefetch run and how far it got."""

    image_id: str
    status: str = "pending"
    bytes: int = 0
    size: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class PrefetchState:
    """A prefetch run: who runs it, when, and each image's progress."""

    pid: int
    started_at: float
    updated_at: float
    images: tuple[PrefetchImage, ...] = ()
    finished_at: float | None = None

    @property
    def state(self) -> str:
        """``running``, ``interrupted`` (its process is gone), ``done`` or ``failed``."""
        if self.finished_at is None:
            return "running" if _alive(self.pid) else "interrupted"
        return "failed" if any(i.status == "failed" for i in self.images) else "done"

    def count(self, status: str) -> int:
        return sum(i.status == status for i in self.images)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "images": [i.to_json() for i in self.images],
        }

    @classmethod
    def from_json(cls, doc: Any) -> PrefetchState | None:
        """The state in ``doc``, or None when it is not a well-formed state document."""
        if not isinstance(doc, dict):
            return None
        try:
            images = tuple(_image(i) for i in doc.get("images", []))
            finished = doc.get("finished_at")
            return cls(
                pid=_int(doc["pid"]),
                started_at=float(doc["started_at"]),
                updated_at=float(doc["updated_at"]),
                images=images,
                finished_at=None if finished is None else float(finished),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(value)
    return value


def _image(raw: Any) -> PrefetchImage:
    if not isinstance(raw, dict) or not isinstance(raw.get("image_id"), str):
        raise ValueError(raw)
    status = raw.get("status")
    if status not in STATUSES:
        raise ValueError(status)
    size = raw.get("size")
    error = raw.get("error")
    return PrefetchImage(
        image_id=raw["image_id"],
        status=status,
        bytes=_int(raw.get("bytes", 0)),
        size=None if size is None else _int(size),
        error=error if isinstance(error, str) else None,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def write_state(directory: str | os.PathLike[str], state: PrefetchState) -> None:
    """Replace ``DIR/prefetch.json`` with ``state`` (0600); a failure is a warning."""
    path = Path(directory) / STATE_FILE
    try:
        replace_file(path, json.dumps(state.to_json(), separators=(",", ":")).encode())
    except OSError as exc:
        log.warning("cache dir %s: prefetch state not written (%s)", directory, exc)


def read_state(directory: str | os.PathLike[str]) -> PrefetchState | None:
    """The last prefetch run's state, or None (none, unreadable or malformed)."""
    path = Path(directory) / STATE_FILE
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        with open(path, encoding="utf-8") as fh:
            return PrefetchState.from_json(json.load(fh))
    except (OSError, ValueError):
        return None


def images_of(ids: Sequence[str]) -> tuple[PrefetchImage, ...]:
    """A fresh ``pending`` row per image id."""
    return tuple(PrefetchImage(i) for i in ids)
