"""Ranking: judge every location of an image (usable? on a shared filesystem? history), probe
the best within the budget (results cached for ``[probe] cache_ttl``) and score them.

``Ranker.rank_image`` is the one ranking the CLI's ``rank`` and a download start from;
``Ranker.probe_round`` ranks the ``not-probed`` leftovers when every probed location failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import attrs
import cachetools

from locpick.choose import storm
from locpick.choose.history import host_key
from locpick.choose.probe import probe_and_measure
from locpick.choose.score import (
    Candidate,
    location_topology,
    policy_reason,
    prior_order,
    rank,
    topology_class,
)
from locpick.config.model import Config
from locpick.errors import InputError, LocationError
from locpick.fetch.swarm import swarm_probes
from locpick.fetch.swarm.explain import explain
from locpick.glance.lease import lease_state
from locpick.jobs.session import Session
from locpick.models import Image, Location, Probe, Ranking, Score
from locpick.reasons import Code, Reason
from locpick.transports.base import Transport


class Ranker:
    """Scores an image's locations for one client; the probe cache is shared by its threads."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._probe_cache: cachetools.TTLCache[tuple[str, int | None], Probe] = cachetools.TTLCache(
            maxsize=4096, ttl=session.config.probe.cache_ttl
        )

    def explained(self, image: Image) -> Ranking:
        """The ranking of ``rank``: every location, best first, each with why (swarm shares)."""
        image, plan = storm.prepare(image, self.session.config, mine=None)
        ranking = self.rank_image(image)
        ranking = attrs.evolve(ranking, scores=storm.arrange(ranking.scores, plan))
        t = self.session.config.transfer
        scores = explain(
            image,
            ranking.scores,
            t,
            self.session.config.scoring.topology_tolerance,
            swarm_probes(image, t),
            classifier(self.session.config),
        )
        return attrs.evolve(ranking, scores=scores)

    def rank_image(
        self,
        image: Image,
        *,
        for_download: bool = False,
        dest: str | os.PathLike[str] | None = None,
        probe: bool = True,
    ) -> Ranking:
        """Score every location of an already-loaded image (:meth:`Client.rank_image`);
        ``probe=False``: nothing is probed (a storm node reading its parent decides from the
        record alone)."""
        now = time.time()
        known = self.session.history.entries()
        candidates: list[Candidate] = []
        for loc in image.locations:
            lease = lease_state(loc.metadata, now)
            if lease.expired:
                candidates.append(
                    Candidate(loc, unusable=Reason(Code.LEASE_EXPIRED, lease.expired))
                )
                continue
            try:
                transport = self.session.transports.for_location(loc)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - any refusal makes just this one unusable
                candidates.append(Candidate(loc, unusable=Reason.of(exc)))
                continue
            shared = None
            reason = policy_reason(loc, self.session.config)  # forbidden copies are never probed
            if reason is None:
                reason, shared = _check(transport, loc, image, dest)
            history = self.session.history.lookup(loc, known) if known and reason is None else None
            candidates.append(
                Candidate(loc, unusable=reason, shared_fs=shared, history=history, note=lease.note)
            )
        candidates = self._bound_probing(image, candidates)
        to_probe = [c.location for c in candidates if c.unusable is None and not c.not_probed]
        # the engine probes by downloading (its first bytes from each copy are the probe) when
        # it can draw on every copy at once; with more copies than [transfer] max_sources the
        # probe chooses which ones it starts with
        t = self.session.config.transfer
        skip = not probe or (
            for_download
            and (
                len(to_probe) <= 1
                or (swarm_probes(image, t) and len(to_probe) <= max(1, t.max_sources))
            )
        )
        probes = {} if skip else self._probe(image, to_probe)
        candidates = [
            attrs.evolve(c, probe=probes[c.location]) if c.location in probes else c
            for c in candidates
        ]
        for url, why in image.rejected:
            candidates.append(Candidate(Location(url=url), unusable=Reason(Code.REJECTED, why)))
        scores = rank(image, candidates, self.session.config)
        return Ranking(image=image, scores=tuple(self._with_route(s) for s in scores))

    def _with_route(self, score: Score) -> Score:
        """Say in the reasons how the location is reached (``direct`` / ``via proxy ...``)."""
        try:
            transport = self.session.transports.for_location(score.location)
        except LocationError:
            return score
        route = transport.route(score.location) if transport.capabilities.route else None
        if route is None:
            return score
        reasons = attrs.evolve(
            score.reasons, route=route, notes=(*score.reasons.notes, f"route: {route}")
        )
        return attrs.evolve(score, reasons=reasons)

    def _bound_probing(self, image: Image, candidates: list[Candidate]) -> list[Candidate]:
        """Mark all but the best ``[probe] max_candidates`` usable locations ``not-probed``, and
        any beyond ``max_probes_per_host`` on one ``scheme://host:port``.

        "Best" is the ranking before any measurement (topology, history, policy, shared
        filesystem), so probing costs the same at 20 and at 20,000 locations, and many silent
        locations on a few hosts cannot crowd out the others. Glance's own ``/file`` is never
        counted or dropped: it stays the last resort."""
        pc = self.session.config.probe
        limit, per_host = max(1, pc.max_candidates), max(1, pc.max_probes_per_host)
        pool = [c for c in candidates if c.unusable is None and c.location.kind != "glance-file"]
        if len(pool) <= 1:
            return candidates
        why: dict[int, Reason] = {}
        seen: dict[str, int] = {}
        kept = 0
        for c in prior_order(image, pool, self.session.config):
            key = host_key(c.location)
            if c.location.scheme != "file" and seen.get(key, 0) >= per_host:
                why[id(c.location)] = Reason(
                    Code.NOT_PROBED,
                    f"not-probed: more than {per_host} locations on {key} "
                    "([probe] max_probes_per_host); a fallback",
                )
            elif kept >= limit:
                why[id(c.location)] = Reason(
                    Code.NOT_PROBED,
                    f"not-probed: beyond the best {limit} of {len(pool)} locations "
                    "([probe] max_candidates); a fallback",
                )
            else:
                seen[key] = seen.get(key, 0) + 1
                kept += 1
        return [
            attrs.evolve(c, not_probed=why[id(c.location)]) if id(c.location) in why else c
            for c in candidates
        ]

    def _probe(self, image: Image, locations: Sequence[Location]) -> dict[Location, Probe]:
        found: dict[Location, Probe] = {}
        missing: list[Location] = []
        with self.session.lock:
            for loc in locations:
                hit = self._probe_cache.get((loc.url, image.size))
                if hit is not None:
                    found[loc] = hit
                else:
                    missing.append(loc)
        fresh = probe_and_measure(image, missing, self.session.transports, self.session.config)
        with self.session.lock:
            for loc, probe in fresh.items():
                if probe.ok:
                    self._probe_cache[(loc.url, image.size)] = probe
        return found | fresh

    def probe_round(
        self, image: Image, locations: Sequence[Location], best: float | None
    ) -> list[Score]:
        """Probe (within the budget) and rank locations left over by an earlier round, under a
        deadline scaled to the live copies' first bytes (the straggler cut-off)."""
        pc = self.session.config.probe
        deadline = pc.deadline
        if best is not None:
            deadline = min(deadline, max(pc.straggler_floor, pc.straggler_factor * best))
        config = attrs.evolve(self.session.config, probe=attrs.evolve(pc, deadline=deadline))
        known = self.session.history.entries()
        candidates = self._bound_probing(
            image,
            [Candidate(loc, history=self.session.history.lookup(loc, known)) for loc in locations],
        )
        to_probe = [c.location for c in candidates if not c.not_probed]
        probes = probe_and_measure(image, to_probe, self.session.transports, config)
        candidates = [
            attrs.evolve(c, probe=probes[c.location]) if c.location in probes else c
            for c in candidates
        ]
        return list(rank(image, candidates, config))


def _check(
    transport: Transport, loc: Location, image: Image, dest: str | os.PathLike[str] | None
) -> tuple[Reason | None, str | None]:
    """(unusable reason, ``shared_fs`` reason) of a location: a location on a shared
    filesystem is judged for the destination's directory."""
    if not transport.capabilities.system_copy:
        return _refused(transport.check(loc, image)), None
    dest_dir = None if dest is None else os.path.dirname(os.path.abspath(dest))
    try:
        rep = transport.shared_fs(loc, image, dest_dir)
    except LocationError as exc:
        return Reason.of(exc), None
    if rep is None:
        return _refused(transport.check(loc, image)), None
    return _refused(rep.reason), rep.describe()


def _refused(text: str | None) -> Reason | None:
    """A transport's own refusal (its ``check``), as a reason."""
    return Reason(Code.REFUSED, text) if text is not None else None


def classifier(config: Config) -> Callable[[Location], int]:
    """The topology class of a location for the transfer engine: the one function
    (``locpick.choose.score.topology_class``) ranking uses, on the location's place."""

    def classify(location: Location) -> int:
        return topology_class(config.topology, location_topology(location, config.hints))

    return classify


def best_ttfb(scores: Sequence[Score]) -> float | None:
    """The fastest first byte (seconds) a probed, usable location showed, if any."""
    seen = [
        s.reasons.latency_ms / 1000
        for s in scores
        if s.usable and not s.reasons.not_probed and s.reasons.latency_ms is not None
    ]
    return min(seen, default=None)
