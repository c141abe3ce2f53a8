"""Boot-storm choice (issue 19): which source a node reads when peers' copies are still filling.

Every node of a storm registers its filling copy in Glance as its download starts, then reads
the image record once more. Glance keeps locations in the order they were added, so every node
sees the same registrants before it and can compute, with no central scheduler, the same tree:
the first registrant pulls from the origin; each later one reads from an earlier one (closest
topology first, at most ``[herd] fanout`` children each, shallowest first), which streams bytes
as they arrive, so the origin serves about one copy. Registrants after a node are never read by
it (they may be reading from it). ``[herd] origin_share`` lets a fraction of the later nodes
draw on the origin as well. Pure: the clock and rng are arguments.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from locpick.config import HerdConfig, Topology, TransferConfig
from locpick.lease import FILL, FILL_STARTED, is_locpick_copy
from locpick.models import FillHeader, Image, Location, Probe, Score

__all__ = [
    "HEADER",
    "Plan",
    "arrange",
    "filling_since",
    "parents",
    "parse_fill_header",
    "plan",
    "start_delay",
    "takes_origin",
    "transfer_for",
]

#: The response header a peer's ``serve`` describes a filling (or complete) copy with.
HEADER = "X-Locpick-Fill"
#: Registrants beyond this many are placed in a plain heap order (``(i - 1) // fanout``):
#: the tree's cost stays O(n x this).
MAX_TREE = 256
_MAX_HEADER = 512
_LEVELS = ("host", "rack", "zone", "region")


def parse_fill_header(value: str | None) -> FillHeader | None:
    """``state=filling; held=N; size=N; rate=N`` as a FillHeader; None when absent or malformed
    (a peer's header is advice: a bad one is ignored, never an error). Unknown keys are skipped."""
    if not value or len(value) > _MAX_HEADER:
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


def _place(metadata: Mapping[str, Any]) -> Topology:
    found = {k: v for k in _LEVELS if isinstance(v := metadata.get(k), str) and v}
    return Topology(**found)


def _distance(a: Topology, b: Topology) -> int:
    """0 same host ... 3 same region, 4 unknown (as ``score.topology_class``)."""
    for i, level in enumerate(_LEVELS):
        mine, theirs = getattr(a, level), getattr(b, level)
        if mine and theirs and mine == theirs:
            return i
    return len(_LEVELS)


def parents(places: Sequence[Topology], fanout: int) -> list[int | None]:
    """The tree of registrants in registration order: the parent index of each, None for the
    first (it takes the origin). Registrant ``i`` picks among ``0..i-1`` one with fewer than
    ``fanout`` children: topologically closest to it, then shallowest, then earliest; if every
    one is full, the closest with the fewest children. Depends only on ``places[:i+1]``, so
    every node computes the same parents for the registrants it sees."""
    fanout = max(1, fanout)
    out: list[int | None] = []
    depth: list[int] = []
    kids: list[int] = []
    for i, me in enumerate(places):
        if i == 0:
            out.append(None)
        elif i >= MAX_TREE:
            out.append((i - 1) // fanout)
        else:
            best = min(
                range(i),
                key=lambda j: (
                    kids[j] >= fanout,
                    _distance(me, places[j]),
                    depth[j] if kids[j] < fanout else kids[j],
                    j,
                ),
            )
            out.append(best)
        parent = out[-1]
        depth.append(0 if parent is None else depth[parent] + 1)
        kids.append(0)
        if parent is not None:
            kids[parent] += 1
    return out


def takes_origin(position: int, share: float) -> bool:
    """Whether registrant ``position`` (> 0) also reads from the origin: exactly a ``share``
    fraction of the positions, spread evenly (the first registrant always does)."""
    if position <= 0:
        return True
    share = min(1.0, max(0.0, share))
    return math.floor(position * share) > math.floor((position - 1) * share)


@attrs.frozen
class Plan:
    """This node's place in a storm (``active`` False: no storm, rank as usual)."""

    active: bool = False
    #: Index among the filling registrants (None: this node did not register one).
    position: int | None = None
    #: The earlier registrant read first, and the other earlier ones (fallbacks, best first).
    parent: str | None = None
    backups: tuple[str, ...] = ()
    #: Whether locations that are not peers (the origin, Glance ``/file``) are read at once;
    #: otherwise they are only a fallback after every peer.
    origin: bool = True
    #: URLs never read: this node's own copy and registrants after it.
    excluded: tuple[str, ...] = ()
    #: One line for rank and the logs.
    why: str = ""


def plan(
    image: Image,
    config: HerdConfig,
    node: Topology,
    *,
    mine: str | None = None,
    rng: random.Random | None = None,
) -> Plan:
    """This node's plan from the image record: ``mine`` is the URL of its own filling
    registration (None: it did not register; it then joins the tree as if it were last, a
    random one of the best parents). No storm (no filling copy, ``[herd] enabled`` false):
    an inactive plan."""
    fills = [loc for loc in image.locations if filling_since(loc.metadata) is not None]
    if not config.enabled or not fills:
        return Plan()
    urls = [loc.url for loc in fills]
    position = urls.index(mine) if mine is not None and mine in urls else None
    if position is None:
        earlier, later = fills, []
        places = [_place(loc.metadata) for loc in fills] + [node]
    else:
        earlier, later = fills[:position], fills[position + 1 :]
        places = [_place(loc.metadata) for loc in fills[: position + 1]]
    excluded = tuple(loc.url for loc in later) + ((mine,) if mine is not None else ())
    if not earlier:
        why = f"storm: first of {len(fills)} filling copies: reads from the origin"
        return Plan(True, position, excluded=excluded, why=why)
    tree = parents(places, config.fanout)
    me = len(places) - 1
    parent = tree[me]
    assert parent is not None
    if position is None and rng is not None:
        parent = _spread(tree, places, me, config.fanout, rng)
    order = sorted(
        range(len(earlier)),
        key=lambda j: (j != parent, _distance(node, places[j]), tree.count(j), j),
    )
    origin = position is not None and takes_origin(position, config.origin_share)
    who = f"filling copy #{position + 1}" if position is not None else "not registered"
    why = (
        f"storm: {who} of {len(fills)}: reads from filling copy #{parent + 1} "
        f"(fan-out {config.fanout}); "
        + ("also from the origin ([herd] origin_share)" if origin else "origin only as a fallback")
    )
    return Plan(
        True,
        position,
        parent=earlier[parent].url,
        backups=tuple(earlier[j].url for j in order[1:]),
        origin=origin,
        excluded=excluded,
        why=why,
    )


def _spread(
    tree: list[int | None], places: Sequence[Topology], me: int, fanout: int, rng: random.Random
) -> int:
    """A node that did not register: any of the closest earlier copies with room, at random
    (many such nodes would otherwise all pick the same one)."""
    kids = [tree[:me].count(j) for j in range(me)]
    room = [j for j in range(me) if kids[j] < fanout] or list(range(me))
    near = min(_distance(places[me], places[j]) for j in room)
    return rng.choice([j for j in room if _distance(places[me], places[j]) == near])


def arrange(scores: Sequence[Score], plan: Plan) -> tuple[Score, ...]:
    """The ranking a storm download reads in: complete peer copies as ranked, then the parent,
    the other earlier filling copies, then the rest (the origin); this node's own copy and later
    registrants dropped. Usable order only; an inactive plan changes nothing."""
    if not plan.active:
        return tuple(scores)
    peers = [plan.parent, *plan.backups] if plan.parent else []
    rank = {url: i for i, url in enumerate(peers)}
    excluded = set(plan.excluded)

    def key(score: Score) -> tuple[int, int]:
        url = score.location.url
        if not score.usable:
            return (4, 0)
        if url in rank:
            return (1, rank[url])
        if is_locpick_copy(score.location.metadata):
            return (0, 0)
        return (2 if plan.origin or not peers else 3, 0)

    kept = [s for s in scores if s.location.url not in excluded]
    ordered = sorted(kept, key=key)  # stable: the ranking decides within each group
    return tuple(
        attrs.evolve(s, rank=i + 1, reasons=_with_role(s, plan)) for i, s in enumerate(ordered)
    )


def _with_role(score: Score, plan: Plan) -> Any:
    url = score.location.url
    role = None
    if url == plan.parent:
        role = "storm parent: " + plan.why
    elif url in plan.backups:
        role = "storm: an earlier filling copy, a fallback after the parent"
    elif filling_since(score.location.metadata) is None and not is_locpick_copy(
        score.location.metadata
    ):
        role = (
            "storm: origin, read at once"
            if plan.origin or not plan.parent
            else "storm: origin held back for nodes with no live peer ([herd] origin_share)"
        )
    if role is None:
        return score.reasons
    return attrs.evolve(score.reasons, notes=(*score.reasons.notes, role))


def transfer_for(cfg: TransferConfig, plan: Plan) -> TransferConfig:
    """A node reading from a filling parent without the origin reads sequentially (one source):
    the parent streams as it fills, so pieces far ahead would only wait; its fallbacks (other
    earlier copies, then the origin) take over by Range if it dies or stalls."""
    if plan.active and plan.parent is not None and not plan.origin:
        # a parent pauses while its own source does: wait as long as for a dead one, not for
        # a slow one, before resuming elsewhere
        return attrs.evolve(
            cfg, max_sources=1, stall_timeout=max(cfg.stall_timeout, cfg.idle_timeout)
        )
    return cfg


def start_delay(config: HerdConfig, rng: random.Random) -> float:
    """Seconds to wait before reading the image record: uniform in ``[0, start_jitter)``, so
    simultaneous starts do not all register (and pick sources) in the same instant."""
    return rng.uniform(0.0, config.start_jitter) if config.start_jitter > 0 else 0.0


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


def filling_peers(locations: Sequence[Location]) -> int:
    """How many locations are filling copies (a storm is under way when any is)."""
    return sum(filling_since(loc.metadata) is not None for loc in locations)
