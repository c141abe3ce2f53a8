"""Boot-storm choice: which source a node reads when peers' copies are still filling.

Every node of a storm registers its filling copy in Glance as its download starts, then reads
the image record as its add left it (the add's answer, or a GET). Glance keeps locations in the
order they were added, so every node sees the same registrants before it and can compute, with
no central scheduler, the same tree: the first registrant pulls from the origin; each later one
reads from an earlier one (closest topology first, at most ``[herd] fanout`` children each,
shallowest first), which streams bytes as they arrive, so the origin serves about one copy.
Without a lock a node that finds itself first looks once more a moment later: Glance may have
lost its add, or answered a concurrent one that it kept instead. Registrants after a node are
never read by it (they may be reading from it). ``[herd] origin_share`` lets a fraction of the
later nodes draw on the origin as well. Only copies the fleet vouches for count
(:mod:`locpick.glance.vouch`): others are ordinary locations, never a parent. Pure: the clock
and rng are arguments.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from locpick.choose.peer import filling_since
from locpick.choose.score import topology_class
from locpick.config.model import Config, HerdConfig, Topology, TransferConfig
from locpick.glance.lease import is_locpick_copy
from locpick.glance.vouch import FleetTrust, demote
from locpick.models import Image, Score

__all__ = [
    "Plan",
    "arrange",
    "parents",
    "plan",
    "prepare",
    "settle_delay",
    "start_delay",
    "takes_origin",
    "transfer_for",
    "wait_start",
]

log = logging.getLogger(__name__)

#: Registrants beyond this many are placed in a plain heap order (``(i - 1) // fanout``):
#: the tree's cost stays O(n x this).
MAX_TREE = 256
_LEVELS = ("host", "rack", "zone", "region")
#: Bounds of :func:`settle_delay` (seconds).
SETTLE_MIN, SETTLE_MAX = 0.1, 2.0


def _place(metadata: Mapping[str, Any]) -> Topology:
    found = {k: v for k in _LEVELS if isinstance(v := metadata.get(k), str) and v}
    return Topology(**found)


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
                    topology_class(me, places[j]),
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
    #: URLs never read: this node's own copy and registrants after it (and, for a node whose
    #: filling copy peers read, locations that claim to be peers without the fleet's word).
    excluded: tuple[str, ...] = ()
    #: Locations that carry locpick marks the fleet does not vouch for (read last, if at all).
    suspect: tuple[str, ...] = ()
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
    kids = Counter(tree)  # children per registrant: O(n), not a count per candidate
    order = sorted(
        range(len(earlier)),
        key=lambda j: (j != parent, topology_class(node, places[j]), kids[j], j),
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


def settle_delay(add_seconds: float) -> float:
    """Seconds a node that finds itself first waits after its add before reading the record
    again: twice the add's round trip (a concurrent add that Glance was handling meanwhile
    takes about as long), at least 0.1 s and at most 2 s."""
    return min(SETTLE_MAX, max(SETTLE_MIN, 2.0 * add_seconds))


def prepare(
    image: Image,
    config: Config,
    *,
    mine: str | None,
    fleet: FleetTrust,
    reload: Callable[[], Image] | None = None,
    recheck: Callable[[], Image] | None = None,
    rng: random.Random | None = None,
) -> tuple[Image, Plan]:
    """A download's storm step. After trying to register its filling copy (``mine``: the URL,
    None if refused) a node reads the image record ONCE more (``reload``: the add's answer
    when Glance gave one, else a GET): Glance keeps
    locations in the order they were added, so that shows every copy registered before this
    one (a refused add, 409/413/500, is itself a sign of a storm). Copies the ``fleet`` does
    not vouch for lose their locpick marks first (ordinary locations: never a parent, always
    probed). The copies it must not read (its own, later ones) are dropped from the image it
    ranks.

    ``recheck`` (adds not serialised by a lock): the record read again a moment later (see
    :func:`settle_delay`), used when this node finds itself first. Each Glance PATCH rewrites
    the whole list, so of two concurrent adds each answer may show its own copy first and one
    of them is then lost; without this second look both nodes would read the origin."""
    if reload is not None:
        image = reload()
    rng = rng if rng is not None else random.Random()  # noqa: S311 - load spreading
    image, p = _prepared(image, config, mine, fleet, rng)
    if recheck is not None and p.active and p.position == 0:
        image, p = _prepared(recheck(), config, mine, fleet, rng)
    if p.active:
        log.info("image %s: %s", image.id, p.why)
    return image, p


def _prepared(
    image: Image, config: Config, mine: str | None, fleet: FleetTrust, rng: random.Random
) -> tuple[Image, Plan]:
    image, demoted = demote(image, fleet)
    if demoted:
        log.info(
            "image %s: %d location(s) carry locpick marks the fleet does not vouch for "
            "(no valid [fleet] signature, not in [fleet] peers): ordinary locations",
            image.id,
            len(demoted),
        )
    p = plan(image, config.herd, config.topology, mine=mine, rng=rng)
    if not p.active:
        return image, p
    # bytes this node reads go into the copy its peers read while it fills: none may come
    # from a location that claims to be a peer without proof (it may lie, fast or slowly)
    barred = demoted if p.position is not None else ()
    p = attrs.evolve(p, excluded=(*p.excluded, *barred), suspect=demoted)
    gone = set(p.excluded)
    kept = tuple(loc for loc in image.locations if loc.url not in gone)
    return attrs.evolve(image, locations=kept), p


def _spread(
    tree: list[int | None], places: Sequence[Topology], me: int, fanout: int, rng: random.Random
) -> int:
    """A node that did not register: any of the closest earlier copies with room, at random
    (many such nodes would otherwise all pick the same one)."""
    kids = Counter(tree[:me])
    room = [j for j in range(me) if kids[j] < fanout] or list(range(me))
    near = min(topology_class(places[me], places[j]) for j in room)
    return rng.choice([j for j in room if topology_class(places[me], places[j]) == near])


def arrange(scores: Sequence[Score], plan: Plan) -> tuple[Score, ...]:
    """The ranking a storm download reads in: complete peer copies as ranked, then the parent,
    the other earlier filling copies, then the rest (the origin); this node's own copy and later
    registrants dropped. Usable order only; an inactive plan changes nothing."""
    if not plan.active:
        return tuple(scores)
    peers = [plan.parent, *plan.backups] if plan.parent else []
    rank = {url: i for i, url in enumerate(peers)}
    excluded = set(plan.excluded)
    suspect = set(plan.suspect)

    def key(score: Score) -> tuple[int, int]:
        url = score.location.url
        if not score.usable:
            return (4, 0)
        if url in rank:
            return (1, rank[url])
        if is_locpick_copy(score.location.metadata):
            return (0, 0)
        if url in suspect:
            return (3, 1)
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
    elif url in plan.suspect:
        role = (
            "storm: carries locpick peer marks the fleet does not vouch for ([fleet] key_file "
            "signature / [fleet] peers): an ordinary location, read last"
        )
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
    held_back = url in plan.suspect or (
        not plan.origin and plan.parent is not None and url not in plan.backups
        and url != plan.parent and not is_locpick_copy(score.location.metadata)
    )  # fmt: skip
    return attrs.evolve(score.reasons, notes=(*score.reasons.notes, role), fallback_only=held_back)


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


def wait_start(
    config: HerdConfig,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Sleep the start jitter (:func:`start_delay`); returns the seconds slept."""
    delay = start_delay(config, rng if rng is not None else random.Random())  # noqa: S311
    if delay > 0:
        sleep(delay)
    return delay
