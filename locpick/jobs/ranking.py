"""Ranking: judge every location of an image (usable? on a shared filesystem? history), probe
them in the order known before any measurement (happy eyeballs, ``choose.probe.ProbeRun``;
live answers cached for ``[probe] cache_ttl``) and score them (``choose.score.rank``: the one
place the order is decided).

``Ranker.rank_image`` is the one ranking the CLI's ``rank`` and a download start from; for a
download the probes go on in the background, and ``Ranker.probe_round`` ranks the
``not-probed`` leftovers from what they found (and a new probe of the rest) when every
location of the first round failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import cachetools

from locpick.choose import storm
from locpick.choose.probe import Phase, ProbeRun, probe_and_measure
from locpick.choose.score import (
    Candidate,
    HistoryInfo,
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
        #: Per image id, the probes of a download's ranking still going on in the background.
        self._runs: dict[str, ProbeRun] = {}

    def explained(self, image: Image) -> Ranking:
        """The ranking of ``rank``: every location, best first, each with why (swarm shares)."""
        image, plan = storm.prepare(image, self.session.config, mine=None, fleet=self.session.fleet)
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
        probe: bool | frozenset[str] = True,
    ) -> Ranking:
        """Score every location of an already-loaded image (:meth:`Client.rank_image`);
        ``probe=False``: nothing is probed; a set of URLs: exactly those are probed, whatever
        else is true (a storm node probes its parent and fallback peers, not the origin: a
        peer is trusted only once it answered with its first bytes or its fill state)."""
        now = time.time()
        known = self.session.history.entries()
        candidates: list[Candidate] = []
        by_host: dict[tuple[int, str], tuple[Reason | None, str | None]] = {}
        routes: dict[tuple[int, str], str | None] = {}
        hist: dict[tuple[int, str], HistoryInfo | None] = {}
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
                reason, shared = _check(transport, loc, image, dest, by_host)
            history = self._history(loc, transport, known, hist) if reason is None else None
            candidates.append(
                Candidate(
                    loc,
                    unusable=reason,
                    shared_fs=shared,
                    history=history,
                    note=lease.note,
                    route=_route(transport, loc, routes),
                )
            )
        order = self._probe_order(image, candidates)
        # a boot storm's download probes only the peers it may read (``probe``: their URLs),
        # first bytes only: a throughput read of every fallback peer would take from their
        # uplinks what their children need (measured: +30 % served)
        peers_only = isinstance(probe, frozenset)
        if isinstance(probe, frozenset):
            order = [loc for loc in order if loc.url in probe]
        # a swarm download probes by downloading (its first piece from each copy is the
        # probe) when it can ask every copy at once; with more copies than it draws on, some
        # may be silent decoys: they are probed first (happy eyeballs, latency only)
        swarm = for_download and swarm_probes(image, self.session.config.transfer)
        skip = (
            not probe
            or not order
            or (
                not peers_only
                and for_download
                and (
                    len(order) <= 1
                    or (swarm and len(order) <= self.session.config.transfer.max_sources)
                )
            )
        )
        if not skip:
            phase = self._probe(
                image,
                order,
                throughput=not swarm and not peers_only,
                background=for_download and not peers_only,
            )
            candidates = [_measured(c, phase) for c in candidates]
        for url, why in image.rejected:
            candidates.append(Candidate(Location(url=url), unusable=Reason(Code.REJECTED, why)))
        return Ranking(image=image, scores=rank(image, candidates, self.session.config))

    def _history(
        self,
        loc: Location,
        transport: Transport,
        known: dict[str, dict[str, Any]],
        memo: dict[tuple[int, str], HistoryInfo | None],
    ) -> HistoryInfo | None:
        """What history knows of the location's host, looked up once per
        ``scheme://authority`` (history is keyed by host, never by path)."""
        if not known:
            return None
        key = _memo_key(transport, loc)
        if key is None:
            return self.session.history.lookup(loc, known)
        if key not in memo:
            memo[key] = self.session.history.lookup(loc, known)
        return memo[key]

    def _probe_order(self, image: Image, candidates: Sequence[Candidate]) -> list[Location]:
        """The usable locations in the order they are probed: Glance's own ``/file`` first (it
        is the last resort: always measured, never counted against the budget's order), then
        the best by what is known before any measurement (topology, history, policy, shared
        filesystem), so the probe budget goes to the likeliest copies first."""
        usable = [c for c in candidates if c.unusable is None]
        first = [c.location for c in usable if c.location.kind == "glance-file"]
        pool = [c for c in usable if c.location.kind != "glance-file"]
        if len(pool) > 1:
            pool = prior_order(image, pool, self.session.config)
        return first + [c.location for c in pool]

    def _probe(
        self,
        image: Image,
        order: Sequence[Location],
        *,
        config: Config | None = None,
        throughput: bool = True,
        background: bool = False,
    ) -> Phase:
        """Probe ``order`` (cached live answers reused); for a download, the run goes on in the
        background and a later round takes what it found (:meth:`probe_round`)."""
        found: dict[Location, Probe] = {}
        missing: list[Location] = []
        with self.session.lock:
            for loc in order:
                hit = self._probe_cache.get((loc.url, image.size))
                if hit is not None:
                    found[loc] = hit
                else:
                    missing.append(loc)
        if not missing:
            return Phase(found, {})
        phase, run = probe_and_measure(
            image,
            missing,
            self.session.transports,
            config or self.session.config,
            throughput=throughput,
            background=background,
        )
        with self.session.lock:
            for loc, probe in phase.probes.items():
                if probe.ok and not probe.censored:
                    self._probe_cache[(loc.url, image.size)] = probe
            if background:
                old = self._runs.pop(image.id, None)
                if old is not None:
                    old.close()
                self._runs[image.id] = run
        return Phase(found | phase.probes, phase.unmeasured)

    def probe_round(
        self, image: Image, locations: Sequence[Location], best: float | None
    ) -> list[Score]:
        """Rank locations left over by an earlier round: what the probes continued in the
        background found (waiting for those still in flight), and a new happy-eyeballs probe of
        the rest, under a deadline scaled to the live copies' first bytes (the whole deadline
        when some were silent)."""
        pc = self.session.config.probe
        with self.session.lock:
            run = self._runs.get(image.id)
        found = run.refined(locations, pc.deadline) if run is not None else {}
        asked = run.asked() if run is not None else set()
        known = {loc: p for loc, p in found.items() if not p.censored}
        # a copy silent so far is asked again with the whole probe deadline: this round comes
        # only once every live copy failed; the others' deadline is scaled to the live answers
        deadline = pc.deadline
        if best is not None and not any(p.censored for p in found.values()):
            deadline = min(deadline, max(pc.straggler_floor, pc.straggler_factor * best))
        config = attrs.evolve(self.session.config, probe=attrs.evolve(pc, deadline=deadline))
        history = self.session.history.entries()
        candidates = [
            Candidate(loc, history=self.session.history.lookup(loc, history), probe=known.get(loc))
            for loc in locations
        ]
        rest = [c for c in candidates if c.probe is None]
        if any(p.ok for p in known.values()):
            # the background found a live copy: start on it, the rest wait for a later round
            phase = Phase({}, {c.location: _LATER for c in rest})
        else:
            # copies never asked first, then those whose short wave deadline ran out
            order = self._probe_order(image, rest)
            order = [loc for loc in order if loc not in asked] + [
                loc for loc in order if loc in asked
            ]
            phase = self._probe(image, order, config=config) if order else Phase({}, {})
        candidates = [_measured(c, phase) for c in candidates]
        return list(rank(image, candidates, config))

    def refined(
        self, image: Image, locations: Sequence[Location], wait: float = 0.0
    ) -> dict[Location, Probe]:
        """What the probes of a download's ranking, still going on in the background, found
        since for ``locations`` (waiting up to ``wait`` s for those in flight): the hook for a
        transfer engine that wants to add copies that answered late without a new round."""
        with self.session.lock:
            run = self._runs.get(image.id)
        return run.refined(locations, wait) if run is not None else {}

    def close(self) -> None:
        """Stop the probes still going on in the background."""
        with self.session.lock:
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            run.close()


_LATER = "not-probed: a copy probed in the background answered first; a fallback"


def _measured(cand: Candidate, phase: Phase) -> Candidate:
    """The candidate with what the probe phase found: its probe, or why it is unmeasured."""
    probe = phase.probes.get(cand.location)
    if probe is not None:
        return attrs.evolve(cand, probe=probe)
    why = phase.unmeasured.get(cand.location)
    if why is None:
        return cand
    return attrs.evolve(cand, not_probed=Reason(Code.NOT_PROBED, why))


def _route(
    transport: Transport, loc: Location, routes: dict[tuple[int, str], str | None]
) -> str | None:
    """How the location is reached (``direct`` / ``via proxy ...``), for its reasons;
    remembered in ``routes`` per transport and ``scheme://authority`` (20,000 locations on a
    few hosts cost a few route lookups)."""
    if not transport.capabilities.route:
        return None
    key = _memo_key(transport, loc)
    if key is None:
        return transport.route(loc)
    if key not in routes:
        routes[key] = transport.route(loc)
    return routes[key]


def _memo_key(transport: Transport, loc: Location) -> tuple[int, str] | None:
    """Key under which a network location's host check and route are remembered within one
    ranking: both depend on its ``scheme://authority`` alone (the address guard and the proxy
    choice), read here with string operations (a URL parse per location is the cost at 20,000
    locations); None for anything else (judged one by one)."""
    if loc.scheme not in ("http", "https"):
        return None
    head, sep, rest = loc.url.partition("://")
    if not sep:
        return None
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return id(transport), f"{head.lower()}://{authority.lower()}"


def _check(
    transport: Transport,
    loc: Location,
    image: Image,
    dest: str | os.PathLike[str] | None,
    by_host: dict[tuple[int, str], tuple[Reason | None, str | None]] | None = None,
) -> tuple[Reason | None, str | None]:
    """(unusable reason, ``shared_fs`` reason) of a location: a location on a shared
    filesystem is judged for the destination's directory; a network location's check is
    remembered per host in ``by_host``."""
    if not transport.capabilities.system_copy:
        key = _memo_key(transport, loc) if by_host is not None else None
        if key is None or by_host is None:
            return _refused(transport.check(loc, image)), None
        if key not in by_host:
            by_host[key] = (_refused(transport.check(loc, image)), None)
        return by_host[key]
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
