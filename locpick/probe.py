"""Concurrent, deadline-bounded measurement of every location. No scoring happens here.

Every location is probed at once; the phase ends at the overall deadline, or earlier, as soon as
the outcome cannot change: once the fastest locations have answered, one that has not sent a
first byte within ``max(straggler_floor, straggler_factor x best)`` cannot win and is dropped.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Sequence

from locpick.config import Config
from locpick.errors import LocpickError
from locpick.models import Image, Location, Probe
from locpick.transports import Transport, Transports


def probe_all(
    image: Image, locations: Sequence[Location], transports: Transports, config: Config
) -> dict[Location, Probe]:
    """Probe ``locations`` concurrently; every one gets a Probe, failed ones with the reason."""
    pc = config.probe
    results: dict[Location, Probe] = {}
    if not locations:
        return results
    start = time.monotonic()
    deadline = start + pc.deadline
    pool = cf.ThreadPoolExecutor(
        max_workers=min(32, len(locations)), thread_name_prefix="locpick-probe"
    )
    futures: dict[cf.Future[Probe], Location] = {}
    try:
        for loc in locations:
            transport = transports.for_location(loc)
            futures[pool.submit(_safe_probe, transport, loc, image, pc.deadline)] = loc
        pending = set(futures)
        best: float | None = None
        while pending:
            now = time.monotonic()
            cutoff = deadline
            if best is not None:
                cutoff = min(deadline, start + max(pc.straggler_floor, pc.straggler_factor * best))
            if now >= cutoff:
                break
            done, pending = cf.wait(pending, timeout=cutoff - now, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                probe = fut.result()
                results[futures[fut]] = probe
                if probe.ok and probe.ttfb is not None:
                    best = probe.ttfb if best is None else min(best, probe.ttfb)
        waited = time.monotonic() - start
        for fut in pending:
            loc = futures[fut]
            fut.cancel()
            if best is None:
                results[loc] = Probe(
                    url=loc.display_url,
                    ok=False,
                    error=f"no first byte within the probe deadline ({waited:.2f}s)",
                )
            else:
                # Still a fallback: it may answer later; its latency is at least ``waited``.
                results[loc] = Probe(url=loc.display_url, ok=True, ttfb=waited, censored=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _safe_probe(transport: Transport, location: Location, image: Image, timeout: float) -> Probe:
    try:
        return transport.probe(location, image, timeout=timeout)
    except LocpickError as exc:
        return Probe(url=location.display_url, ok=False, error=str(exc))
    except OSError as exc:
        return Probe(url=location.display_url, ok=False, error=f"{type(exc).__name__}: {exc}")
