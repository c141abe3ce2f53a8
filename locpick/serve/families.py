"""The metric families of ``locpick serve``'s ``/metrics``: built at scrape time from one
consistent copy of the process's counters, the cache directory and its shared journal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from locpick.cache import journal

if TYPE_CHECKING:
    from locpick.cache.files import CacheEntry
    from locpick.cache.store import NodeCache


@attrs.frozen
class ServeCounts:
    """The counters of one ServeMetrics, copied under its lock (series of evicted images gone)."""

    started_at: float
    #: ((image, status), [responses, bytes]), sorted.
    served: list[tuple[tuple[str, str], list[int]]]
    refused: dict[str, int]
    renewals: dict[str, int]
    leases: dict[str, float]
    active: int


@attrs.define
class FillStatus:
    """A copy being filled into the cache (set by the code that fills it)."""

    image_id: str
    done: int
    total: int | None
    source: str | None = None
    updated_at: float = attrs.field(factory=time.time)


def serve_families(
    counts: ServeCounts, cache: NodeCache, entries: list[CacheEntry], fills: list[FillStatus]
) -> Iterator[Any]:
    """Every metric family of ``/metrics``, from ``counts`` and the cache's state."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from locpick import __version__

    info = GaugeMetricFamily("locpick_build_info", "locpick version", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
    up = GaugeMetricFamily("locpick_serve_start_time_seconds", "When this process started")
    up.add_metric([], counts.started_at)
    yield up

    requests = CounterMetricFamily(
        "locpick_serve_requests",
        "Responses by image (- = no cached image) and HTTP status (aborted = client left)",
        labels=["image", "status"],
    )
    sent = CounterMetricFamily(
        "locpick_serve_bytes",
        "Body bytes of completed responses by image and status",
        labels=["image", "status"],
    )
    for (image, status), (n, nbytes) in counts.served:
        requests.add_metric([image, status], n)
        sent.add_metric([image, status], nbytes)
    yield requests
    yield sent
    yield _gauge("locpick_serve_active_clients", "Responses being sent right now", counts.active)
    busy = CounterMetricFamily(
        "locpick_serve_refused", "Clients turned away, by reason", labels=["reason"]
    )
    for reason in sorted({"busy", *counts.refused}):
        busy.add_metric([reason], counts.refused.get(reason, 0))
    yield busy

    yield _gauge("locpick_cache_entries", "Verified images in the cache", len(entries))
    yield _gauge(
        "locpick_cache_bytes",
        "Bytes of verified images in the cache",
        sum(e.size for e in entries),
    )
    if cache.max_bytes is not None:
        yield _gauge("locpick_cache_max_bytes", "[cache] max_bytes", cache.max_bytes)
    stats = journal.read_stats(cache.dir)
    for name, doc in (
        ("hits", "Downloads served from a verified cached copy"),
        ("misses", "Downloads that found no usable cached copy"),
        ("evictions", "Cache entries removed (LRU or by request)"),
        ("verify_failures", "Download attempts whose bytes failed size or hash verification"),
        ("downloads_ok", "Downloads with this cache that delivered a verified image"),
        ("downloads_failed", "Downloads with this cache that delivered nothing"),
    ):
        c = CounterMetricFamily(f"locpick_cache_{name}", doc)
        c.add_metric([], stats[name])
        yield c

    registered = GaugeMetricFamily(
        "locpick_cache_registered",
        "1 when the cached image is registered as a Glance location",
        labels=["image"],
    )
    for e in entries:
        registered.add_metric([e.image_id], 1 if e.registered_url else 0)
    yield registered
    expiry = GaugeMetricFamily(
        "locpick_cache_lease_expiry_timestamp_seconds",
        "When the registration lease of a cached image ends",
        labels=["image"],
    )
    cached = {e.image_id for e in entries}
    for image, at in sorted(counts.leases.items()):
        if image in cached:  # an evicted image's series disappear
            expiry.add_metric([image], at)
    yield expiry
    renew = CounterMetricFamily(
        "locpick_cache_lease_renewals", "Lease renewal attempts by result", labels=["result"]
    )
    for result in ("ok", "failed"):
        renew.add_metric([result], counts.renewals[result])
    yield renew
    filling = GaugeMetricFamily(
        "locpick_cache_filling_bytes", "Bytes so far of copies being filled", labels=["image"]
    )
    for f in fills:
        filling.add_metric([f.image_id], f.done)
    yield filling
    yield _gauge("locpick_cache_filling", "Copies being filled into the cache", len(fills))


def _gauge(name: str, doc: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, value=value)
