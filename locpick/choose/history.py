"""Per-location outcomes persisted across runs: what earlier downloads learned about each host.

One small JSON file (by default ``<user cache dir>/locpick/history.json``, via platformdirs)
keyed by *host*, never by full URL: ``scheme://host:port`` for network locations,
``file:<filesystem id>`` for shared filesystems. Per key it keeps:

- ``ewma_bps``: exponentially weighted moving average of observed throughput (weight
  ``alpha`` for the newest sample), from successful transfers of at least ``min_sample_bytes``;
- ``successes`` / ``failures``: counts that decay with a half-life (old luck fades);
- ``last_error``, ``last_failure``, ``last_success``, ``consecutive_failures``.

Entries untouched for ``expiry`` seconds are dropped. The circuit breaker: a location whose
last outcome was a failure is reported with ``failed_ago``; the scorer demotes it while
``failed_ago`` is below the cool-down (doubled per consecutive failure, capped), after which it
is tried normally again ("half-open"); its next success closes the breaker.

Writes are atomic (temp file + ``os.replace`` in the same directory) and serialised across
processes with a ``filelock`` lock file, re-reading the file under the lock so concurrent
processes never lose each other's updates. Errors are scrubbed of secrets and URLs are stored
without credentials or query strings. A broken or unreadable file is ignored (history is an
optimisation, never a reason to fail a download).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs
import filelock

from locpick.choose.score import HistoryInfo
from locpick.models import Location
from locpick.redact import SCRUB
from locpick.sink.atomicfile import replace_file

log = logging.getLogger(__name__)

_VERSION = 1
_URLISH = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def default_history_path() -> str:
    """``<user cache dir>/locpick/history.json`` (honours XDG_CACHE_HOME on Linux)."""
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("locpick", appauthor=False), "history.json")


def host_key(location: Location) -> str:
    """The history key of a location: its host, never its path, credentials or query."""
    if location.scheme == "file":
        fs = location.metadata.get("id")
        return f"file:{fs}" if isinstance(fs, str) and fs else "file:local"
    try:
        parts = urllib.parse.urlsplit(location.url)
        port = parts.port
    except ValueError:
        return f"{location.scheme}://invalid"
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        port = {"http": 80, "https": 443}.get(location.scheme)
    return f"{location.scheme}://{host}" + (f":{port}" if port else "")


def clean_error(text: str) -> str:
    """An error message safe to store: known secrets scrubbed, URLs reduced to scheme://host."""

    def shorten(m: re.Match[str]) -> str:
        try:
            p = urllib.parse.urlsplit(m.group(0))
            return f"{p.scheme}://{p.hostname or ''}" + (f":{p.port}" if p.port else "") + "/…"
        except ValueError:
            return "<url>"

    return _URLISH.sub(shorten, SCRUB(text))[:300]


@attrs.frozen
class HistorySettings:
    """Tunables of the history store (defaults documented in the module docstring)."""

    #: Weight of the newest throughput sample in the EWMA.
    alpha: float = 0.3
    #: Half-life, seconds, of the success/failure counts.
    half_life: float = 7 * 86400.0
    #: Entries not updated for this long are dropped.
    expiry: float = 30 * 86400.0
    #: Transfers shorter than this many bytes do not update the throughput EWMA.
    min_sample_bytes: int = 1 << 20
    #: Keep at most this many hosts (least recently updated dropped first).
    max_entries: int = 2000


class History:
    """The persisted store. ``path=None`` keeps history in memory only (nothing is written)."""

    def __init__(
        self,
        path: str | None,
        *,
        settings: HistorySettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.settings = settings or HistorySettings()
        self._clock = clock
        self._mem: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, history_file: str | None) -> History:
        """``None`` = the user's cache dir; ``""`` = disabled (in-memory only)."""
        if history_file == "":
            return cls(None)
        return cls(history_file or default_history_path())

    # -- reading ------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return self._mem
        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.debug("history %s unreadable, ignored: %s", self.path, exc)
            return {}
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            return {}
        hosts = doc.get("hosts")
        if not isinstance(hosts, dict):
            return {}
        return {k: v for k, v in hosts.items() if isinstance(k, str) and isinstance(v, dict)}

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every live entry (expired ones left out), keyed by host."""
        now = self._clock()
        with self._lock:
            data = self._load()
        return {k: v for k, v in data.items() if not self._expired(v, now)}

    def _expired(self, entry: dict[str, Any], now: float) -> bool:
        updated = entry.get("updated")
        return not isinstance(updated, int | float) or now - updated > self.settings.expiry

    def lookup(
        self, location: Location, entries: dict[str, dict[str, Any]] | None = None
    ) -> HistoryInfo | None:
        """What is known about the location's host, decayed to now; None if nothing.

        Pass ``entries`` (from :meth:`entries`) to look up many locations with one read."""
        entry = (self.entries() if entries is None else entries).get(host_key(location))
        if entry is None:
            return None
        now = self._clock()
        decay = self._decay(entry, now)
        last_failure = _num(entry.get("last_failure"))
        last_success = _num(entry.get("last_success"))
        failing = last_failure is not None and (last_success is None or last_failure > last_success)
        ewma = _num(entry.get("ewma_bps"))
        return HistoryInfo(
            ewma_bps=ewma if ewma and ewma > 0 else None,
            successes=round((_num(entry.get("successes")) or 0) * decay),
            failures=round((_num(entry.get("failures")) or 0) * decay),
            last_error=entry.get("last_error") if failing else None,
            failed_ago=max(0.0, now - last_failure) if failing and last_failure else None,
            consecutive_failures=int(_num(entry.get("consecutive_failures")) or 0),
        )

    def _decay(self, entry: dict[str, Any], now: float) -> float:
        age = max(0.0, now - (_num(entry.get("updated")) or now))
        return math.pow(0.5, age / self.settings.half_life)

    # -- writing ------------------------------------------------------------------------------
    def record(
        self, location: Location, ok: bool, nbytes: int, seconds: float, error: str | None
    ) -> None:
        """Fold one outcome in; signature matches ``locpick.fetch.transfer.Observer``. Never
        raises."""
        try:
            self._update(host_key(location), ok, nbytes, seconds, error)
        except (OSError, filelock.Timeout) as exc:
            log.debug("history not updated (%s)", exc)

    def _update(self, key: str, ok: bool, nbytes: int, seconds: float, error: str | None) -> None:
        s = self.settings
        with self._lock, self._file_lock():
            data = self._load()
            now = self._clock()
            data = {k: v for k, v in data.items() if not self._expired(v, now)}
            entry = dict(data.get(key) or {})
            decay = self._decay(entry, now) if entry else 1.0
            entry["successes"] = (_num(entry.get("successes")) or 0) * decay + (1 if ok else 0)
            entry["failures"] = (_num(entry.get("failures")) or 0) * decay + (0 if ok else 1)
            if ok:
                entry["last_success"] = now
                entry["consecutive_failures"] = 0
                if nbytes >= s.min_sample_bytes and seconds > 0:
                    sample = nbytes / seconds
                    old = _num(entry.get("ewma_bps"))
                    entry["ewma_bps"] = (
                        sample if not old else s.alpha * sample + (1 - s.alpha) * old
                    )
            else:
                entry["last_failure"] = now
                entry["last_error"] = clean_error(error or "failed")
                entry["consecutive_failures"] = (
                    int(_num(entry.get("consecutive_failures")) or 0) + 1
                )
            entry["updated"] = now
            data[key] = entry
            if len(data) > s.max_entries:
                keep = sorted(data, key=lambda k: _num(data[k].get("updated")) or 0)[
                    -s.max_entries :
                ]
                data = {k: data[k] for k in keep}
            self._store(data)

    @contextlib.contextmanager
    def _file_lock(self) -> Any:
        if self.path is None:
            yield
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with filelock.FileLock(self.path + ".lock", timeout=5):
            yield

    def _store(self, data: dict[str, dict[str, Any]]) -> None:
        if self.path is None:
            self._mem = data
            return
        doc = json.dumps({"version": _VERSION, "hosts": data}, indent=1, sort_keys=True)
        replace_file(self.path, doc.encode(), prefix=".history-", suffix=".tmp")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
