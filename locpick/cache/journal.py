"""The node cache's operator records: recent downloads and cumulative counters, in its dir.

Downloads (``locpick download --cache-dir``, or a :class:`~locpick.Client` with a cache) write
here; ``locpick serve`` reads it for ``/status`` and ``/metrics``. Two small JSON files::

    DIR/downloads.json    the last MAX_RECORDS download reports, oldest first
    DIR/stats.json        counters: cache hits, misses, evictions, verify failures, downloads

Each change re-reads the file under a lock (``DIR/.journal.lock``), edits it and replaces it
atomically, so concurrent downloads never lose each other's records and a reader never sees
half a file. Size is bounded (records and their samples are capped; a file larger than
MAX_FILE_BYTES is ignored). The journal is advisory: any error is logged and swallowed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from locpick.sink.atomicfile import replace_file

if TYPE_CHECKING:
    from locpick.report import DownloadReport

log = logging.getLogger(__name__)

MAX_RECORDS = 32
MAX_FILE_BYTES = 1 << 20
DOWNLOADS = "downloads.json"
STATS = "stats.json"
#: The counters ``stats.json`` keeps (others are ignored when read).
COUNTERS = (
    "hits",
    "misses",
    "evictions",
    "verify_failures",
    "downloads_ok",
    "downloads_failed",
)


def _lock(directory: Path) -> filelock.FileLock:
    return filelock.FileLock(str(directory / ".journal.lock"), timeout=10)


def _read(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write(path: Path, doc: Any) -> None:
    """Replace ``path`` with ``doc``, this user only (like the cache entries)."""
    replace_file(path, json.dumps(doc, separators=(",", ":")).encode(), mode=0o600)


def record(directory: str | os.PathLike[str], report: DownloadReport) -> None:
    """Append a download report (dropping the oldest beyond MAX_RECORDS) and count it."""
    base = Path(directory)
    counts = {
        "downloads_ok" if report.result == "ok" else "downloads_failed": 1,
        "verify_failures": report.verify_failures,
    }
    try:
        with _lock(base):
            old = _read(base / DOWNLOADS)
            records = old if isinstance(old, list) else []
            records = [*records[-(MAX_RECORDS - 1) :], report.to_json()]
            _write(base / DOWNLOADS, records)
            _bump_locked(base, counts)
    except (OSError, filelock.Timeout) as exc:
        log.warning("cache dir %s: download not journalled (%s)", base, exc)


def bump(directory: str | os.PathLike[str], **counts: int) -> None:
    """Add to the named counters (e.g. ``hits=1``)."""
    base = Path(directory)
    try:
        with _lock(base):
            _bump_locked(base, counts)
    except (OSError, filelock.Timeout) as exc:
        log.warning("cache dir %s: counters not updated (%s)", base, exc)


def _bump_locked(base: Path, counts: dict[str, int]) -> None:
    stats = read_stats(base)
    for name, n in counts.items():
        if name in stats and n:
            stats[name] += n
    _write(base / STATS, stats)


def read_stats(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Every counter (0 when never counted)."""
    doc = _read(Path(directory) / STATS)
    doc = doc if isinstance(doc, dict) else {}
    return {
        name: doc[name] if isinstance(doc.get(name), int) and doc[name] >= 0 else 0
        for name in COUNTERS
    }


def recent(directory: str | os.PathLike[str]) -> list[DownloadReport]:
    """The journalled downloads, newest first (malformed records skipped)."""
    from locpick.report import DownloadReport

    doc = _read(Path(directory) / DOWNLOADS)
    if not isinstance(doc, list):
        return []
    found = (DownloadReport.from_json(r) for r in doc[-MAX_RECORDS:])
    return [r for r in reversed(list(found)) if r is not None]
