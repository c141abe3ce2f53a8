"""Check that every replica of an image agrees with its record: reachable, size, hash."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence

from locpick.errors import (
    IntegrityError,
    LocationError,
    LocationUnreachable,
    UnsupportedLocation,
    reason_of,
)
from locpick.glance.lease import is_locpick_copy, lease_state
from locpick.models import Image, Location, ReplicaStatus, VerifyReport, VerifyStatus
from locpick.redact import SCRUB
from locpick.sink.hashing import Expected
from locpick.transports import Transports

_CHUNK = 1 << 20


def verify_replicas(
    image: Image,
    locations: Sequence[Location],
    transports: Transports,
    *,
    quick: bool = False,
    workers: int = 4,
) -> VerifyReport:
    """Check each location concurrently (``workers`` at a time, bounding bandwidth use)."""
    expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
    with cf.ThreadPoolExecutor(
        max_workers=max(1, workers), thread_name_prefix="locpick-verify"
    ) as pool:
        statuses = list(
            pool.map(lambda loc: _check_one(image, loc, transports, expected, quick), locations)
        )
    rejected = tuple(
        ReplicaStatus(url=url, status="unsupported", detail=reason)
        for url, reason in image.rejected
    )
    return VerifyReport(image_id=image.id, locations=(*statuses, *rejected))


def _check_one(
    image: Image, loc: Location, transports: Transports, expected: Expected, quick: bool
) -> ReplicaStatus:
    url = loc.display_url
    try:
        transport = transports.for_location(loc)
    except UnsupportedLocation as exc:
        return ReplicaStatus(url, "unsupported", _detail(exc))
    reason = transport.check(loc, image)
    if reason:
        status: VerifyStatus = "unsupported"
        if "not readable" in reason or reason.startswith(("file-missing", "not-readable")):
            status = "missing"
        elif "size mismatch" in reason or reason.startswith("size-mismatch"):
            status = "mismatch"
        elif reason.startswith(("mount-unresponsive", "not-mounted")):
            status = "unreachable"
        return ReplicaStatus(url, status, reason)
    try:
        stream = transport.open(loc, image, offset=0)
    except UnsupportedLocation as exc:
        return ReplicaStatus(url, "unsupported", _detail(exc))
    except LocationUnreachable as exc:
        missing = "HTTP 404" in str(exc) or "HTTP 410" in str(exc)
        return ReplicaStatus(url, "missing" if missing else "unreachable", _detail(exc))
    except IntegrityError as exc:
        return ReplicaStatus(url, "mismatch", _detail(exc))
    except LocationError as exc:
        return ReplicaStatus(url, "mismatch" if "size" in str(exc) else "unreachable", _detail(exc))
    try:
        if stream.total is not None and image.size is not None and stream.total != image.size:
            return ReplicaStatus(url, "mismatch", f"size {stream.total}, image {image.size}")
        if quick:
            return ReplicaStatus(url, "ok", "reachable, size matches (hash not checked: --quick)")
        hasher = expected.new()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        total = 0
        while True:
            n = stream.readinto(view)
            if n == 0:
                break
            total += n
            if image.size is not None and total > image.size:
                return ReplicaStatus(url, "mismatch", f"more than {image.size} bytes")
            if hasher is not None:
                hasher.update(view[:n])
    except LocationError as exc:
        return ReplicaStatus(url, "unreachable", _detail(exc))
    finally:
        stream.close()
    if image.size is not None and total != image.size:
        return ReplicaStatus(url, "mismatch", f"{total} bytes, image {image.size}")
    if hasher is not None and hasher.hexdigest() != expected.value:
        return ReplicaStatus(url, "mismatch", f"{expected.algo} differs from the image record")
    algo = expected.algo or "size only"
    return ReplicaStatus(url, "ok", f"{total} bytes, {algo} matches")


def _detail(exc: Exception) -> str:
    """The error's reason without the location it names (its ``url`` field)."""
    return SCRUB(reason_of(exc))


#: Statuses that prove a location is useless (unreachable may be transient: never pruned).
PRUNABLE: frozenset[str] = frozenset({"missing", "mismatch"})


def plan_prune(
    image: Image,
    report: VerifyReport,
    *,
    now: float | None = None,
    locpick_only: bool = False,
) -> tuple[list[Location], list[str]]:
    """Which Glance locations ``--prune`` (or ``cache reap``) removes, and notes on the rest.

    Pure. Only the image's own Glance locations count (not ``direct_url`` nor Glance's
    ``/file``). ``missing`` and ``mismatch`` ones go; so do locpick cache copies (the
    ``locpick_cache`` marker) that are ``unreachable`` or whose lease ran out at ``now``; an
    operator's unreachable location is kept (it may be transient). ``locpick_only`` limits
    removal to locpick copies. Nothing goes unless a location verified ``ok`` remains, so
    the last verified copy is never removed.
    """
    status = {r.url: r for r in report.locations}
    own = [loc for loc in image.locations if loc.kind == "location"]

    def condemned(loc: Location) -> bool:
        ours = is_locpick_copy(loc.metadata)
        if locpick_only and not ours:
            return False
        r = status.get(loc.display_url)
        if r is not None and r.status in PRUNABLE:
            return True
        if not ours:
            return False
        if now is not None and lease_state(loc.metadata, now).expired:
            return True
        return r is not None and r.status == "unreachable"

    bad = [loc for loc in own if condemned(loc)]
    gone = {id(loc) for loc in bad}
    kept = [loc for loc in own if id(loc) not in gone]
    verified = [loc for loc in kept if (r := status.get(loc.display_url)) and r.status == "ok"]
    notes = [
        f"kept {status[loc.display_url].status}: {loc.display_url} (may be transient)"
        for loc in kept
        if loc.display_url in status and status[loc.display_url].status == "unreachable"
    ]
    if bad and not verified:
        notes.append(
            "no other location verified ok: nothing removed (never removes the last verified copy)"
        )
        return [], notes
    return bad, notes
