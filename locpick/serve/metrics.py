"""Prometheus metrics: the live counters of ``locpick serve`` and a download's textfile.

Exposition is prometheus-client's (``generate_latest``); each :class:`ServeMetrics` has its own
``CollectorRegistry``, so several apps (or tests) in one process never share counters.
Label cardinality is bounded: no per-client labels, and an ``image`` label only for images in
the cache (series of evicted images are dropped at the next scrape). prometheus-client is
imported lazily: without it, ``locpick serve`` runs without ``/metrics`` and ``download
--metrics-file`` is refused with the extra to install.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from locpick.errors import ConfigError, InputError
from locpick.serve.families import FillStatus, ServeCounts, serve_families
from locpick.sink.atomicfile import replace_file

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from locpick.cache.store import NodeCache
    from locpick.report import DownloadReport

#: The label value for requests that name no cached image (404s, /metrics, /status).
NO_IMAGE = "-"


def require_prometheus() -> None:
    """Raise a clear error when the optional prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigError("metrics need prometheus-client: pip install 'locpick[metrics]'") from exc


@attrs.frozen
class OpsOptions:
    """Which operator endpoints ``locpick serve`` has (``--no-metrics``, ``--no-status``)."""

    metrics: bool = True
    status: bool = True

    @property
    def any(self) -> bool:
        return self.metrics or self.status


@attrs.frozen
class Transfer:
    """A response being sent right now (for ``/status``: clients being served)."""

    image_id: str
    peer: str
    range: str | None
    started_at: float


class ServeMetrics:
    """What one ``locpick serve`` process counts, plus the cache's shared counters.

    The serving code calls ``request_started``/``request_done``; cache fills, lease renewals
    and refusals are reported through ``refused``, ``lease``, ``renewal``, ``filling`` and
    ``filled`` by whichever component does them. Every method is thread-safe and cheap.
    """

    def __init__(self, cache: NodeCache) -> None:
        self.cache = cache
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._served: dict[tuple[str, str], list[int]] = {}
        self._refused: dict[str, int] = {}
        self._renewals = {"ok": 0, "failed": 0}
        self._leases: dict[str, float] = {}
        self._fills: dict[str, FillStatus] = {}
        self._transfers: dict[int, tuple[str, Callable[[], tuple[str, str | None]], float]] = {}
        self._ids = itertools.count()
        self._registry: CollectorRegistry | None = None

    # -- what the serving and caching code reports ---------------------------------------------
    def request_started(self, image_id: str, describe: Callable[[], tuple[str, str | None]]) -> int:
        """A request for an image starts; ``describe()`` -> (client, Range header), called only
        when ``/status`` lists it. Returns the key for ``request_done``."""
        key = next(self._ids)
        with self._lock:
            self._transfers[key] = (image_id, describe, time.time())
        return key

    def active(self) -> int:
        """Image requests in progress."""
        return len(self._transfers)

    def request_done(self, key: int, label: str, status: str, nbytes: int = 0) -> None:
        """The request of ``key`` ended: count it as ``response`` does."""
        with self._lock:
            self._transfers.pop(key, None)
            row = self._served.get((label, status))
            if row is None:
                row = self._served[(label, status)] = [0, 0]
            row[0] += 1
            row[1] += nbytes

    def response(self, image_id: str, status: str, nbytes: int = 0) -> None:
        """Count one response (``status``: the HTTP code, or ``aborted``) and its body bytes."""
        with self._lock:
            row = self._served.get((image_id, status))
            if row is None:
                row = self._served[(image_id, status)] = [0, 0]
            row[0] += 1
            row[1] += nbytes

    def refused(self, reason: str = "busy") -> None:
        """A client turned away: ``busy`` (over ``[serve] max_clients``, answered 503), or
        ``connections`` / ``per_client`` (a connection refused by the serve's guard)."""
        with self._lock:
            self._refused[reason] = self._refused.get(reason, 0) + 1

    def lease(self, image_id: str, expires_at: float | None) -> None:
        """The registration lease of a cached image ends at ``expires_at`` (None: no lease)."""
        with self._lock:
            if expires_at is None:
                self._leases.pop(image_id, None)
            else:
                self._leases[image_id] = expires_at

    def renewal(self, ok: bool) -> None:
        """One lease renewal attempt finished."""
        with self._lock:
            self._renewals["ok" if ok else "failed"] += 1

    def filling(
        self, image_id: str, done: int, total: int | None, source: str | None = None
    ) -> None:
        """A copy of ``image_id`` is being filled into the cache: ``done`` of ``total`` bytes."""
        with self._lock:
            self._fills[image_id] = FillStatus(image_id, done, total, source)

    def filled(self, image_id: str) -> None:
        """The fill of ``image_id`` ended (complete or abandoned)."""
        with self._lock:
            self._fills.pop(image_id, None)

    # -- what /status shows -----------------------------------------------------------------
    def transfers(self) -> list[Transfer]:
        with self._lock:
            held = sorted(self._transfers.values(), key=lambda t: t[2])
        return [Transfer(image, *describe(), started) for image, describe, started in held]

    def leases(self) -> dict[str, float]:
        with self._lock:
            return dict(self._leases)

    def fills(self) -> list[FillStatus]:
        """Copies being filled: reported by ``filling``, and fill records in the cache dir."""
        with self._lock:
            found = {f.image_id: attrs.evolve(f) for f in self._fills.values()}
        for fill in _fill_records(self.cache):
            found.setdefault(fill.image_id, fill)
        return sorted(found.values(), key=lambda f: f.image_id)

    # -- exposition ---------------------------------------------------------------------------
    @property
    def registry(self) -> CollectorRegistry:
        """This app's own registry (created on first use)."""
        if self._registry is None:
            require_prometheus()
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        return self._registry

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, now."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def collect(self) -> Iterator[Any]:
        """Metric families, built at scrape time from the counters and the cache directory."""
        entries = self.cache.entries()
        cached = {e.image_id for e in entries}
        fills = self.fills()
        held = cached | {f.image_id for f in fills}  # copies being filled are served too
        with self._lock:
            for key in [k for k in self._served if k[0] != NO_IMAGE and k[0] not in held]:
                del self._served[key]
            counts = ServeCounts(
                started_at=self.started_at,
                served=sorted(self._served.items()),
                refused=dict(self._refused),
                renewals=dict(self._renewals),
                leases={i: t for i, t in self._leases.items() if i in cached},
                active=len(self._transfers),
            )
        yield from serve_families(counts, self.cache, entries, fills)


def _fill_records(cache: NodeCache) -> Iterator[FillStatus]:
    """``images/<id>.fill`` records (locpick.cache.fill.state) of copies still being filled."""
    from locpick.cache.files import valid_image_id
    from locpick.cache.fill.record import FillStateError, read_fill

    for path in cache.images.glob("*.fill"):
        image_id = path.name.removesuffix(".fill")
        if not valid_image_id(image_id):
            continue
        try:
            snap = read_fill(path)
        except (FillStateError, OSError):
            continue
        if snap is None or snap.state != "filling":
            continue
        who = f"writer pid {snap.pid}" + ("" if snap.writer_alive else " (gone)")
        yield FillStatus(image_id, snap.written, snap.size, who, snap.updated)


class _Collector:
    """The registry's view of a ServeMetrics (prometheus-client calls ``collect``)."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.collect()


# -- download --metrics-file ------------------------------------------------------------------
def check_textfile_path(path: str) -> None:
    """Refuse a ``--metrics-file`` that can never be written, before any transfer."""
    require_prometheus()
    target = Path(path)
    if target.is_dir():
        raise InputError(f"--metrics-file {path}: is a directory")
    if not target.parent.is_dir():
        raise InputError(f"--metrics-file {path}: directory {target.parent} does not exist")


def download_exposition(report: DownloadReport) -> bytes:
    """The node-exporter textfile of one download, in the Prometheus text format."""
    require_prometheus()
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry(auto_describe=False)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=reg)

    ok = report.result == "ok"
    gauge("locpick_download_success", "1 if the last download delivered a verified image").set(ok)
    gauge("locpick_download_exit_code", "Exit code of the last download").set(report.exit_code)
    gauge("locpick_download_duration_seconds", "Seconds the last download took").set(report.seconds)
    gauge("locpick_download_bytes", "Bytes delivered by the last download").set(report.bytes)
    gauge("locpick_download_timestamp_seconds", "When the last download ended").set(
        report.started_at + report.seconds
    )
    gauge(
        "locpick_download_verify_failures",
        "Attempts of the last download whose bytes failed verification",
    ).set(report.verify_failures)
    gauge(
        "locpick_download_info",
        "The last download: image, method, result and chosen source host",
        ("image", "method", "result", "source_host"),
    ).labels(
        report.image_id, report.method or "none", report.result, report.chosen_host or "none"
    ).set(1)
    per_source = gauge("locpick_download_source_bytes", "Bytes each source host sent", ("host",))
    for s in report.sources:
        per_source.labels(s.host).inc(s.bytes)
    gauge("locpick_download_sources", "Sources that sent bytes").set(
        sum(1 for s in report.sources if s.bytes > 0)
    )
    probes = gauge(
        "locpick_download_probe_failures", "Locations unusable when ranked, by host", ("host",)
    )
    for host, n in report.probe_failures:
        probes.labels(host).set(n)
    return generate_latest(reg)


def write_textfile(path: str, report: DownloadReport) -> None:
    """Write the download's textfile atomically: a private temp file beside it, then rename.

    A reader (node-exporter) sees the old file or the new one, never half of one.
    """
    replace_file(path, download_exposition(report), mode=0o644)
