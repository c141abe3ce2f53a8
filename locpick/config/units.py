"""Sizes and durations in a config file: ``"10G"``, ``"512MiB"``, ``"30s"``, ``"5m"``.

A field annotated :data:`Bytes`, :data:`Rate`, :data:`Seconds` or :data:`WholeSeconds` takes
a plain number (bytes, bytes/s, seconds, as before) or a string with a unit; the loader
(:mod:`locpick.config.load`) reads the unit from the annotation, so the model stays the one
place that says what each key is. Units:

- sizes: ``B``; ``K``/``M``/``G``/``T``/``P`` and ``KiB``..``PiB`` are powers of 1024 (as in
  systemd and nginx), ``kB``/``KB``..``PB`` powers of 1000; a rate may end in ``/s``;
- durations: ``ms``, ``s``, ``m``, ``h``, ``d``, combinable (``"1h30m"``).

Negative values are refused.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

import attrs

__all__ = [
    "Bytes",
    "Rate",
    "Seconds",
    "Unit",
    "WholeRate",
    "WholeSeconds",
    "parse_duration",
    "parse_size",
]


@attrs.frozen
class Unit:
    """What a numeric config key measures (the annotation's metadata)."""

    kind: Literal["size", "rate", "duration"]


#: A number of bytes: an int, or ``"10G"``, ``"512MiB"``, ``"1.5TB"``.
Bytes = Annotated[int, Unit("size")]
#: Bytes per second: a number, or ``"100M"``, ``"1GB/s"``.
Rate = Annotated[float, Unit("rate")]
#: Seconds: a number, or ``"30s"``, ``"5m"``, ``"250ms"``, ``"1h30m"``.
Seconds = Annotated[float, Unit("duration")]
#: Whole seconds: an int, or ``"2s"``, ``"1m"``.
WholeSeconds = Annotated[int, Unit("duration")]
#: Whole bytes per second: an int, or ``"100M"``, ``"1GB/s"``.
WholeRate = Annotated[int, Unit("rate")]

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    **{p: 1024**i for i, p in enumerate("kmgtp", start=1)},
    **{p + "ib": 1024**i for i, p in enumerate("kmgtp", start=1)},
    **{p + "b": 1000**i for i, p in enumerate("kmgtp", start=1)},
}
_SIZE = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"([0-9][0-9_]*(?:\.[0-9]+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)


def parse_size(text: str, *, rate: bool = False) -> float:
    """Bytes (or bytes/s with ``rate``) in ``text``; ValueError saying what is accepted."""
    body = text.strip()
    if rate and body.lower().endswith("/s"):
        body = body[:-2]
    m = _SIZE.fullmatch(body)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SIZE_UNITS:
        what = "a rate" if rate else "a size"
        raise ValueError(
            f"{text!r} is not {what} (a number of bytes{'/s' if rate else ''}, or with a unit: "
            f"{'100M, 1GB/s' if rate else '10G, 512MiB, 1.5TB'})"
        )
    # Units are case-insensitive: "10g" is "10G", "1mb" is "1MB".
    number = float(m.group(1).replace("_", ""))
    return number * _SIZE_UNITS[unit]


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``, ``"2.5"``)."""
    body = text.strip()
    try:
        value = float(body.replace("_", ""))
    except ValueError:
        pass
    else:
        if math.isfinite(value) and value >= 0:
            return value
        raise ValueError(f"{text!r} is not a duration (a number of seconds >= 0)")
    total, pos = 0.0, 0
    for m in _DURATION_PART.finditer(body):
        if body[pos : m.start()].strip():
            break
        total += float(m.group(1).replace("_", "")) * _DURATION_UNITS[m.group(2).lower()]
        pos = m.end()
    else:
        if pos and not body[pos:].strip():
            return total
    raise ValueError(f"{text!r} is not a duration (seconds, or with units: 30s, 5m, 1h30m, 250ms)")
