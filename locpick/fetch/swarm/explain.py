"""Why each location would or would not take part in a swarm fetch (for ``rank``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from locpick.choose.score import CLASSES
from locpick.config.model import TransferConfig
from locpick.fetch.swarm.run import prior_bps
from locpick.fetch.swarm.scheduler import admit
from locpick.models import Image, Location, Score


def explain(
    image: Image,
    scores: Sequence[Score],
    cfg: TransferConfig,
    tolerance: float,
    swarm: bool,
    classify: Callable[[Location], int],
) -> tuple[Score, ...]:
    """``scores`` with a note on each usable one: drawn on at start, or why not (a farther
    copy: the rule that keeps it out, or that the nearer ones are expected too slow alone).
    ``classify``: the topology class of a location (``choose.score.topology_class``)."""
    if not swarm:
        return tuple(scores)
    usable = [s for s in scores if s.usable]
    classes = [classify(s.location) for s in usable]
    chosen = set(admit(classes, [prior_bps(s) for s in usable], cfg.max_sources, tolerance))
    near = min(classes) if classes else 0
    notes: dict[int, str] = {}
    for i, s in enumerate(usable):
        if i in chosen and classes[i] > near:
            near_bps = sum(prior_bps(usable[j]) for j in chosen if classes[j] == near)
            notes[id(s)] = (
                f"swarm: draws pieces from it although farther than {CLASSES[near]}: the "
                f"nearer copies together ({near_bps / 1e6:.0f} MB/s expected) are more than "
                f"{tolerance:.0%} slower without it"
            )
        elif i in chosen:
            notes[id(s)] = "swarm: draws pieces from it from the start"
        elif len(chosen) >= cfg.max_sources:
            notes[id(s)] = (
                f"swarm: not at start ([transfer] max_sources = {cfg.max_sources}); "
                "takes over if one drops out"
            )
        else:
            notes[id(s)] = (
                f"swarm: farther than {CLASSES[near]}; joins only if the nearer copies are "
                f"expected to be more than {tolerance:.0%} slower without it"
            )
    return tuple(
        attrs.evolve(s, reasons=attrs.evolve(s.reasons, notes=(*s.reasons.notes, notes[id(s)])))
        if id(s) in notes
        else s
        for s in scores
    )
