"""Leases of node-cache locations: when a registered copy was last vouched for, and for how long.

A copy registered by ``locpick`` carries, beside the ``locpick_cache`` marker, the time it was
(re)registered and its lease in seconds, as strings in the Glance location metadata. A copy
whose lease ran out belongs to a node that stopped renewing (killed, reimaged, gone): clients
skip it and ``cache reap`` removes it. Metadata that cannot be parsed counts as no lease (the
copy stays usable; a note says so), so a malformed value cannot hide a good copy. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

#: Location metadata key marking a copy published by a locpick node cache.
MARKER = "locpick_cache"
#: Unix time (seconds) of the last registration or renewal.
REGISTERED = "locpick_registered"
#: Seconds the registration is valid from ``REGISTERED``.
LEASE = "locpick_lease"
#: ``"filling"`` on a copy registered while its download runs (stream-through).
FILL = "locpick_fill"
#: Unix time (seconds, float as str) when that download started.
FILL_STARTED = "locpick_fill_started"
#: The reason word clients and ``rank`` use for a copy whose lease ran out.
EXPIRED = "lease-expired"


def lease_metadata(now: float, lease: float) -> dict[str, str]:
    """The metadata keys of a registration made at ``now`` for ``lease`` seconds."""
    return {REGISTERED: f"{now:.1f}", LEASE: f"{lease:g}"}


def is_locpick_copy(metadata: Mapping[str, Any]) -> bool:
    """True for a location a locpick node cache published (the operator's own never are)."""
    return metadata.get(MARKER) == "true"


@attrs.frozen
class LeaseState:
    """What a location's lease says at one moment."""

    #: ``lease-expired: ...`` when the lease ran out, else None.
    expired: str | None = None
    #: A human note (e.g. the lease could not be parsed and was ignored).
    note: str | None = None


def lease_state(metadata: Mapping[str, Any], now: float) -> LeaseState:
    """The lease of a locpick copy at ``now``; non-locpick locations and copies without a
    lease are never expired."""
    if not is_locpick_copy(metadata) or (REGISTERED not in metadata and LEASE not in metadata):
        return LeaseState()
    registered, lease = _seconds(metadata.get(REGISTERED)), _seconds(metadata.get(LEASE))
    if registered is None or lease is None:
        shown = f"{REGISTERED}={metadata.get(REGISTERED)!r}, {LEASE}={metadata.get(LEASE)!r}"
        return LeaseState(note=f"lease unparseable ({shown[:120]}): treated as no lease")
    over = now - (registered + lease)
    if over > 0:
        return LeaseState(
            expired=f"{EXPIRED}: lease of {lease:.0f}s from registration ran out {over:.0f}s ago"
        )
    return LeaseState(note=f"lease valid for {-over:.0f}s more")


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number from a metadata value (string or number), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None
