"""What a peer's copy says about itself in a boot storm, and what it is worth: the
``locpick_fill`` marks in its Glance location metadata, the ``X-Locpick-Fill`` header its
``serve`` answers with, and the expected time to read a filling or busy copy. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from locpick.glance.lease import FILL, FILL_STARTED, is_locpick_copy
from locpick.models import FillHeader, Location, Probe

__all__ = ["HEADER", "Judgement", "busy", "filling_since", "judge", "parse_fill_header"]

#: Longest header value read (a peer's header is advice, bounded like any hostile input).
MAX_HEADER = 512
#: The response header a peer's ``serve`` describes a filling (or complete) copy with.
HEADER = "X-Locpick-Fill"


def parse_fill_header(value: str | None) -> FillHeader | None:
    """``state=filling; held=N; size=N; rate=N`` as a FillHeader; None when absent or malformed
    (a peer's header is advice: a bad one is ignored, never an error). Unknown keys are skipped."""
    if not value or len(value) > MAX_HEADER:
        return None
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        if sep:
            fields[key.strip().lower()] = val.strip()
    held = _count(fields.get("held"))
    if held is None or fields.get("state") not in ("filling", "complete"):
        return None
    state: Literal["filling", "complete"] = (
        "filling" if fields.get("state") == "filling" else "complete"
    )
    size = _count(fields.get("size"))
    if size is not None and held > size:
        return None
    rate = _count(fields.get("rate"))
    return FillHeader(state=state, held=held, size=size, rate=None if rate is None else float(rate))


def _count(text: str | None) -> int | None:
    """A non-negative integer written in decimal digits (a float's integer part accepted)."""
    if text is None:
        return None
    head = text.split(".", 1)[0]
    if not head.isdigit() or len(head) > 20:
        return None
    return int(head)


def filling_since(metadata: Mapping[str, Any]) -> float | None:
    """When a locpick copy registered as filling started (``0.0`` if not said), else None."""
    if not is_locpick_copy(metadata) or metadata.get(FILL) != "filling":
        return None
    raw = metadata.get(FILL_STARTED)
    try:
        started = float(raw) if isinstance(raw, str | int | float) else 0.0
    except ValueError:
        started = 0.0
    return started if math.isfinite(started) and started >= 0 else 0.0


@attrs.frozen
class Judgement:
    """A peer copy's expected delivery time as a filling or busy copy, and why."""

    expected: float
    text: str


def busy(probe: Probe | None, location: Location) -> bool:
    """A peer answered 503 (``max_clients`` or bytes not there yet): a cheap, immediate
    negative that ranks it lower, not a failure that rules it out."""
    return (
        probe is not None
        and not probe.ok
        and probe.status == 503
        and (probe.fill is not None or is_locpick_copy(location.metadata))
    )


def judge(
    location: Location, probe: Probe | None, size: int, latency: float, bps: float
) -> Judgement | None:
    """Expected seconds from a filling or busy peer: bytes it does not hold yet come no faster
    than it fills, ``latency + max(size / bps, (size - held) / fill rate)``; a busy one waits
    its Retry-After first. None for any other location (scored as usual)."""
    fill = probe.fill if probe is not None else None
    since = filling_since(location.metadata)
    is_busy = busy(probe, location)
    if not is_busy and (fill is None or fill.state == "complete") and since is None:
        return None
    parts: list[str] = []
    expected = latency + size / bps
    if fill is not None and fill.state == "filling":
        left = max(0, size - fill.held)
        parts.append(f"filling: holds {_mib(fill.held)} of {_mib(size)}")
        if fill.rate:
            expected = latency + max(size / bps, left / fill.rate)
            speed = min(bps, size / max(expected - latency, 1e-9))
            parts.append(f"fills at {fill.rate / 1e6:.1f} MB/s: expected {speed / 1e6:.1f} MB/s")
        else:
            parts.append("fill rate unknown")
    elif fill is not None:
        parts.append("complete copy")
    elif since is not None:
        parts.append("registered as filling (held bytes and rate unknown: not probed)")
    if is_busy:
        wait = max(1.0, probe.retry_after or 1.0) if probe is not None else 1.0
        expected += wait
        parts.append(f"busy (503): +{wait:.0f}s")
    return Judgement(expected, "; ".join(parts))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
