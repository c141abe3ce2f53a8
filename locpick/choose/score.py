"""Pure ranking: probes, topology, shared-filesystem and history signals in, explained scores out.

A score is the expected number of seconds to deliver the image from that location:
``latency + size / throughput``, each term measured where possible and a documented prior
otherwise (``[scoring]`` in the config). Lower wins. No I/O happens here.

Ordering rules, in this order:
1. usable before unusable; operator-preferred schemes/hosts before the rest; every copy that
   answered a probe (``live``) before every ``silent`` one (probed, no first byte within the
   deadline scaled to the answers: a black hole, or a straggler kept as a fallback), and those
   before every copy nobody measured (``not-probed``: probing stopped once
   ``[probe] max_candidates`` copies answered -- a budget that grows with each silent or
   failed copy, so a list that lies is probed harder -- or the deadline came; a download
   probes them in a later round) -- unmeasured is never better than measured;
   Glance's own ``/file`` always last among usable ones (last resort);
2. topology (levels nest: same zone means same region and zone, see :func:`topology_class`):
   among the topology classes present (host < rack < zone < region < unknown), each
   class farther away must be expected to be more than ``topology_tolerance`` faster to win
   (effective time = time x (1/(1-tol))^k, k = how many present classes are closer). So with the
   default 0.2, a same-zone copy beats an unknown one unless that is >20 % faster; a large
   measured throughput difference always beats topology;
   a recent failure (history) multiplies the effective time by ``failure_penalty`` for a
   cool-down that doubles with each consecutive failure (capped at 8x), then it is retried;
3. near-equal locations (within ``herd_margin``) of the same topology class are shuffled with
   a seeded RNG so that many nodes do not all pick one mirror.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from locpick.choose import peer as peerfill
from locpick.config.model import Config, Hint, Topology
from locpick.models import Image, Location, Probe, Reasons, Score
from locpick.reasons import Code, Reason

#: Topology classes, closest first; the index is the class number used in weights.
CLASSES = ("same-host", "same-rack", "same-zone", "same-region", "unknown")
_LEVELS = ("host", "rack", "zone", "region")
#: The same levels, outermost first: how they nest.
_NESTED = tuple(reversed(_LEVELS))
#: Size assumed for expected-time math when the image's size is unknown.
UNKNOWN_SIZE = 1 << 30


@attrs.frozen
class HistoryInfo:
    """What earlier runs learned about a location's host (see ``locpick.choose.history``)."""

    ewma_bps: float | None = None
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    #: Seconds since the last failure when the last outcome was a failure, else None.
    failed_ago: float | None = None
    #: Failures in a row (0 after a success); lengthens the cool-down.
    consecutive_failures: int = 0

    def cooldown(self, base: float) -> float:
        """The circuit breaker's cool-down: doubled per consecutive failure, capped at 8x."""
        return base * float(min(8, 2 ** max(0, self.consecutive_failures - 1)))

    def demoted(self, base: float) -> bool:
        return self.failed_ago is not None and self.failed_ago < self.cooldown(base)

    def describe(self, cooldown: float) -> str:
        parts = [f"{self.successes} ok/{self.failures} failed"]
        if self.ewma_bps:
            parts.append(f"ewma {self.ewma_bps / 1e6:.1f} MB/s")
        if self.demoted(cooldown):
            left = self.cooldown(cooldown) - (self.failed_ago or 0)
            parts.append(
                f"demoted: failed {self.failed_ago:.0f}s ago ({self.last_error}), "
                f"retried in {left:.0f}s"
            )
        elif self.failed_ago is not None:
            parts.append(f"cool-down over: retrying after failure ({self.last_error})")
        return ", ".join(parts)


@attrs.frozen
class Candidate:
    """Everything known about one location before scoring."""

    location: Location
    unusable: Reason | None = None
    probe: Probe | None = None
    shared_fs: str | None = None
    history: HistoryInfo | None = None
    #: Why it was not probed (``not-probed: ...``): kept as a fallback behind probed ones.
    not_probed: Reason | None = None
    #: A remark shown in the reasons (e.g. an unparseable lease, ignored).
    note: str | None = None
    #: How probes and transfers reach it (``direct``, ``via proxy ...``), None if not network.
    route: str | None = None


def location_topology(location: Location, hints: Sequence[Hint]) -> Topology:
    """The copy's place: its metadata first, else the longest matching ``[[hints]]`` prefix."""
    meta = location.metadata
    found = {k: meta.get(k) for k in _LEVELS if isinstance(meta.get(k), str) and meta.get(k)}
    if found:
        return Topology(**found)
    best: Hint | None = None
    for hint in hints:
        if location.url.startswith(hint.url_prefix) and (
            best is None or len(hint.url_prefix) > len(best.url_prefix)
        ):
            best = hint
    if best is None:
        return Topology()
    return Topology(region=best.region, zone=best.zone, rack=best.rack, host=best.host)


def topology_class(node: Topology, where: Topology) -> int:
    """0 same host ... 3 same region, 4 unknown/different (index into CLASSES).

    Levels nest: region > zone > rack > host. A level counts only when every level outside it
    agrees: a zone named ``nova`` (OpenStack's default in every region) in another region is
    not this zone. A level stated on only one side neither confirms nor contradicts; the first
    level both sides state differently ends the match."""
    return _match(node, where)[0]


def topology_match(node: Topology, where: Topology) -> str | None:
    """Which levels matched, outermost first (``region=r1 zone=nova``), for ``rank``; None when
    none did."""
    return _match(node, where)[1]


def _match(node: Topology, where: Topology) -> tuple[int, str | None]:
    cls, matched = len(_LEVELS), []
    for i, level in enumerate(_NESTED):
        mine, theirs = getattr(node, level), getattr(where, level)
        if not mine or not theirs:
            continue
        if mine != theirs:
            break
        cls = len(_LEVELS) - 1 - i
        matched.append(f"{level}={theirs}")
    return cls, " ".join(matched) or None


def policy_reason(location: Location, config: Config) -> Reason | None:
    """Why the operator's ``[policy]`` forbids ``location``, else None (no I/O)."""
    pol = config.policy
    if location.scheme in pol.forbid_schemes:
        return Reason(Code.POLICY, f"scheme {location.scheme!r} forbidden by policy")
    if location.host and location.host in pol.forbid_hosts:
        return Reason(Code.POLICY, f"host {location.host!r} forbidden by policy")
    if location.kind == "glance-file" and pol.forbid_glance_file:
        return Reason(Code.POLICY, "Glance /file forbidden by policy")
    return None


def _with_latency(reasons: Reasons, probe: Probe | None) -> Reasons:
    """Add ICMP and TCP-connect latency (ms) and the ICMP note beside the HTTP TTFB."""
    if probe is None:
        return reasons
    return attrs.evolve(
        reasons,
        icmp_ms=None if probe.icmp is None else probe.icmp * 1000,
        connect_ms=None if probe.connect is None else probe.connect * 1000,
        icmp_note=probe.icmp_note,
    )


def _error_of(cand: Candidate, config: Config) -> Reason | None:
    """Why a candidate cannot be used at all (refusal, policy, failed probe), else None."""
    error = cand.unusable or policy_reason(cand.location, config)
    probe = cand.probe
    if (
        error is None
        and probe is not None
        and not probe.ok
        and not peerfill.busy(probe, cand.location)
    ):
        code = Code.HTTP_STATUS if probe.status is not None else Code.PROBE_FAILED
        error = Reason(code, probe.error or "probe failed")
    return error


def _preferred(location: Location, config: Config) -> bool:
    pol = config.policy
    return location.scheme in pol.prefer_schemes or (
        bool(location.host) and location.host in pol.prefer_hosts
    )


#: Sort tiers below Glance's /file (1.0): live measured copies are 0.0 (preferred by
#: policy) or 0.5; a silent one (probed, no first byte yet: a black hole or a straggler) comes
#: after every live one, and a copy nobody measured after those (a download reaches it in a
#: later round, once its probe has answered).
_SILENT_TIER = 0.6
_UNMEASURED_TIER = 0.75


def _places(candidates: Sequence[Candidate], config: Config) -> list[Topology]:
    """Each candidate's topology; ``[[hints]]`` matched once per distinct URL prefix shape."""
    return [location_topology(c.location, config.hints) for c in candidates]


def _on(matched: str | None) -> str:
    """The matched levels, for the topology text ``rank`` shows."""
    return "" if matched is None else f"; {matched}"


def _probe_state(cand: Candidate, error: Reason | None) -> str | None:
    """``live``/``silent``/``not-probed``/``failed`` (see ``Reasons.probe``), None when the
    candidate was not probed because no probe was needed."""
    probe = cand.probe
    if cand.not_probed is not None and probe is None:
        return "not-probed"
    if probe is None:
        return None
    if probe.censored:
        return Code.SILENT.value
    return "failed" if error is not None else "live"


#: (sort key, expected seconds, candidate, reasons, topology class) of one scored location.
_Row = tuple[tuple[float, ...], float | None, Candidate, Reasons, int]


def rank(
    image: Image,
    candidates: Sequence[Candidate],
    config: Config,
    *,
    rng: random.Random | None = None,
) -> tuple[Score, ...]:
    """Score and order every candidate, best first; pure and deterministic for a seeded rng."""
    sc = config.scoring
    rng = rng or random.Random(sc.seed)  # noqa: S311 - load spreading, not cryptography
    size = image.size if image.size is not None else UNKNOWN_SIZE
    factor = 1.0 / (1.0 - sc.topology_tolerance) if sc.topology_tolerance < 1 else 1e9

    places = _places(candidates, config)
    matches = [_match(config.topology, where) for where in places]
    classes = [cls for cls, _m in matches]
    errors = [_error_of(c, config) for c in candidates]
    present = sorted({cls for cls, err in zip(classes, errors, strict=True) if err is None})

    rows: list[_Row] = []
    for cand, (cls, matched), error in zip(candidates, matches, errors, strict=True):
        loc, probe = cand.location, cand.probe
        state = _probe_state(cand, error)
        notes: list[str] = []
        latency = probe.ttfb if probe is not None and (probe.ok or probe.status) else None
        bps = probe.throughput_bps if probe is not None and probe.ok else None
        hist = cand.history
        if error is not None:
            reasons = Reasons(
                latency_ms=None if latency is None else latency * 1000,
                throughput_bps=bps,
                topology=CLASSES[cls] + ("" if matched is None else f" ({matched})"),
                shared_fs=cand.shared_fs,
                history=hist.describe(sc.cooldown) if hist else None,
                error=str(error),
                policy=str(error) if error.code is Code.POLICY else None,
                probe=state,
                topology_match=matched,
                route=cand.route,
                notes=() if cand.route is None else (f"route: {cand.route}",),
            )
            reasons = _with_latency(reasons, probe)
            rows.append(((3.0, 0.0, 0.0), None, cand, reasons, cls))
            continue
        if cand.note:
            notes.append(cand.note)
        if cand.not_probed:
            notes.append(str(cand.not_probed))
        if probe is not None and probe.note:
            notes.append(probe.note)
        silent = probe is not None and probe.censored
        if silent:
            notes.append(
                f"{Code.SILENT.value}: no first byte within {latency or 0:.2f}s while others "
                "answered (a black hole?); ranked after every live copy"
            )
        if latency is None:
            latency = sc.prior_latency
            notes.append(f"latency prior {sc.prior_latency * 1000:.0f} ms")
        if bps is None and hist is not None and hist.ewma_bps:
            bps = hist.ewma_bps
            notes.append(f"throughput from history {bps / 1e6:.1f} MB/s")
        if bps is None:
            bps = sc.prior_copy_bps if cand.shared_fs else sc.prior_throughput_bps
            notes.append(f"throughput prior {bps / 1e6:.0f} MB/s")
        fill = peerfill.judge(loc, probe, size, latency, bps)
        expected = latency + size / bps if fill is None else fill.expected
        weight = factor ** present.index(cls)
        effective = expected * weight
        if hist is not None and hist.demoted(sc.cooldown):
            effective *= sc.failure_penalty
            notes.append(f"circuit open after a recent failure: x{sc.failure_penalty:g}")
        tier = 1.0 if loc.kind == "glance-file" else (0.0 if _preferred(loc, config) else 0.5)
        not_probed = bool(cand.not_probed)
        if tier < 1.0 and silent:
            tier = _SILENT_TIER
        elif tier < 1.0 and not_probed:
            tier = _UNMEASURED_TIER
        policy = None
        if tier == 0.0:
            policy = "preferred by policy"
            notes.append(policy)
        if loc.kind == "glance-file":
            policy = "Glance /file: last resort"
            notes.append(policy)
        if cand.route is not None:
            notes.append(f"route: {cand.route}")
        reasons = Reasons(
            latency_ms=latency * 1000 if probe is not None and probe.ttfb is not None else None,
            throughput_bps=probe.throughput_bps if probe is not None else None,
            topology=f"{CLASSES[cls]} (x{weight:.2f}{_on(matched)})",
            shared_fs=cand.shared_fs,
            history=hist.describe(sc.cooldown) if hist else None,
            error=None,
            notes=tuple(notes),
            policy=policy,
            not_probed=not_probed,
            fill=None if fill is None else fill.text,
            probe=state,
            topology_match=matched,
            route=cand.route,
        )
        reasons = _with_latency(reasons, probe)
        rows.append(((tier, effective, 0.0), expected, cand, reasons, cls))

    rows.sort(key=lambda r: r[0])
    rows = _spread_near_equal(rows, sc.herd_margin, rng)
    return tuple(
        Score(location=c.location, rank=i + 1, score=expected, usable=key[0] < 3.0, reasons=reasons)
        for i, (key, expected, c, reasons, _cls) in enumerate(rows)
    )


def prior_order(
    image: Image,
    candidates: Sequence[Candidate],
    config: Config,
    *,
    rng: random.Random | None = None,
) -> list[Candidate]:
    """The usable candidates, best first by what is known before any probe: policy tier,
    topology, history (throughput, circuit breaker) and shared filesystems. Exact ties (the
    common case: many copies in one class) are broken at random so that nodes spread their
    probes. The same expected-time math as :func:`rank`, without building any explanation,
    so choosing what to probe among 20,000 locations stays cheap."""
    sc = config.scoring
    rng = rng or random.Random(sc.seed)  # noqa: S311 - load spreading, not cryptography
    size = image.size if image.size is not None else UNKNOWN_SIZE
    factor = 1.0 / (1.0 - sc.topology_tolerance) if sc.topology_tolerance < 1 else 1e9
    usable = [c for c in candidates if _error_of(c, config) is None]
    classes = [
        topology_class(config.topology, location_topology(c.location, config.hints)) for c in usable
    ]
    weight = {cls: factor**i for i, cls in enumerate(sorted(set(classes)))}
    keyed = []
    for cand, cls in zip(usable, classes, strict=True):
        hist = cand.history
        bps = hist.ewma_bps if hist is not None and hist.ewma_bps else None
        if bps is None:
            bps = sc.prior_copy_bps if cand.shared_fs else sc.prior_throughput_bps
        effective = (sc.prior_latency + size / bps) * weight[cls]
        if hist is not None and hist.demoted(sc.cooldown):
            effective *= sc.failure_penalty
        tier = 1.0 if cand.location.kind == "glance-file" else 0.5
        if tier < 1.0 and _preferred(cand.location, config):
            tier = 0.0
        keyed.append(((tier, effective, rng.random()), cand))
    keyed.sort(key=lambda kc: kc[0])
    return [cand for _key, cand in keyed]


def _spread_near_equal(rows: list[_Row], margin: float, rng: random.Random) -> list[_Row]:
    """Shuffle the leading group of near-equal, same-tier, same-class usable rows."""
    if len(rows) < 2 or rows[0][0][0] >= 3.0:
        return rows
    tier, best = rows[0][0][0], rows[0][0][1]
    cls = rows[0][4]
    n = 0
    while (
        n < len(rows)
        and rows[n][0][0] == tier
        and rows[n][4] == cls
        and rows[n][0][1] <= best * (1 + margin)
    ):
        n += 1
    if n < 2:
        return rows
    group = rows[:n]
    rng.shuffle(group)
    return [*group, *rows[n:]]
