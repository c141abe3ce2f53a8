"""Concurrent, deadline-bounded measurement of every location. No scoring happens here.

Latency is measured three ways at once, under one overall deadline (``[probe] deadline``):

- HTTP time-to-first-byte of a small ranged GET (``transport.probe``): the only one that sees a
  slow server behind a fast network, and the one the score uses;
- TCP connect time to host:port, name resolution done first and excluded (as librepo does);
- ICMP echo via ping3; where raw/unprivileged ICMP is not permitted it is skipped quietly and
  the reason is recorded (``Probe.icmp_note``), once per process.

The phase ends at the deadline, or earlier, as soon as the outcome cannot change: once the
fastest locations have answered, one that has not sent a first byte within
``max(straggler_floor, straggler_factor x best)`` cannot win (it stays a fallback with a
lower-bound latency).

Then, unless the image is small (``small_image_bytes``: latency dominates, probing is cut
short), the ``throughput_top`` best candidates by latency -- never those clearly worse on
latency, i.e. beyond the straggler cut-off -- get a throughput probe: a read from offset 0
that stops as soon as the rate is stable (rate-mirrors' idea): at least ``throughput_min_bytes``
and ``throughput_min_seconds``, then stop when the coefficient of variation of the last
``_CV_WINDOW`` slice rates is below ``throughput_cv``; hard caps ``throughput_max_bytes`` and
``throughput_max_seconds``. The measurements run concurrently, each started as soon as its
location's latency probe answers (``probe_and_measure``), and each is bounded by
``throughput_budget`` x the transfer time expected at the prior throughput (probing costs a
small fraction of the download).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ipaddress
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from locpick.choose.history import host_key
from locpick.config.model import Config, ProbeConfig
from locpick.errors import LocationError, LocpickError
from locpick.models import Image, Location, Probe
from locpick.net.addr import host_port
from locpick.net.policy import NetPolicy
from locpick.transports import Transports
from locpick.transports.base import Transport

#: In-flight probes at most, whatever the budget: each holds a thread, a socket and one of the
#: shared HTTP client's connections (``transports.base``), and a quarter of the open-file
#: limit at most (see :func:`_room`).
MAX_IN_FLIGHT = 224
#: Before any copy has answered, the number of copies being probed at once doubles every
#: ``straggler_floor`` seconds (from ``max_candidates``): silent copies listed first cannot
#: hold the live ones back for a whole deadline (RFC 8305's staggered attempts).
_GROWTH = 2.0


def _room() -> int:
    """How many probes may be in flight: ``MAX_IN_FLIGHT``, within a quarter of the soft
    open-file limit (a probe and its TCP-connect measurement hold a descriptor each)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return MAX_IN_FLIGHT
    return max(8, min(MAX_IN_FLIGHT, soft // 4))


@attrs.frozen
class Phase:
    """What the probe phase found: a Probe for each copy that answered, failed or stayed
    silent, and why each of the others is still unmeasured (never asked, or still in flight)."""

    probes: dict[Location, Probe]
    unmeasured: dict[Location, str]


class ProbeRun:
    """Happy-eyeballs probing of locations, in the order given (the prior ranking).

    - At most ``[probe] max_candidates`` copies *answering* are asked for: a copy that fails
      or stays silent does not use up the budget, so the next ones are asked instead (waves),
      and at most ``max_probes_per_host`` per ``scheme://host:port`` (a silent address cannot
      hold back a copy on another port of the same host; it has its own count).
    - Before any copy has answered, the number asked at once grows (doubling every
      ``straggler_floor`` seconds) up to :func:`_room`.
    - Once a copy has answered, every probe gets a deadline scaled to the answers seen:
      ``max(straggler_floor, straggler_factor x slowest live answer)`` from when it was sent;
      a probe past it is *silent* (a black hole until it answers), and the phase ends when
      nothing in flight is still within its deadline (or at ``[probe] deadline``).
    - :meth:`phase` returns what is known then; :meth:`keep_going` lets the probes in flight
      and up to ``max_candidates`` more go on in the background for ``[probe] deadline``
      seconds, and :meth:`refined` hands over what they found (a later round of a download).

    Threads are daemons: a probe still waiting on a black hole never holds up the process.
    ``clock`` is injectable (tests)."""

    def __init__(
        self,
        image: Image,
        order: Sequence[Location],
        transports: Transports,
        config: Config,
        *,
        on_answer: Callable[[Location, Probe, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.image, self.transports, self.pc = image, transports, config.probe
        self._on_answer, self._clock = on_answer, clock
        self._queue: collections.deque[Location] = collections.deque(order)
        self._cond = threading.Condition()
        #: Finished probes (answered or failed), by location.
        self._done: dict[Location, Probe] = {}
        #: In flight: (sent at, own timeout) by location.
        self._flying: dict[Location, tuple[float, float]] = {}
        self._per_key: dict[str, int] = {}
        #: The deadline each probe was sent with (a short one before any answer: a wave).
        self._given: dict[Location, float] = {}
        #: Over ``max_probes_per_host`` on their ``scheme://host:port``: never asked.
        self._capped: list[Location] = []
        self._live: list[float] = []
        #: Probes that failed or ran out their own deadline.
        self._bad = 0
        #: Answers already counted before :meth:`keep_going`.
        self._extra = 0
        self._budget = max(1, self.pc.max_candidates)
        self._room = _room()
        self._start = clock()
        self._end = self._start + self.pc.deadline
        self._background = False
        self._net: dict[tuple[str, int], cf.Future[_NetLatency]] = {}
        self._net_pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="locpick-ping")
        self._closed = False

    # -- the rules ----------------------------------------------------------------------------
    def limit(self) -> float | None:
        """Seconds a probe may take before it counts as silent; None before any answer."""
        if not self._live:
            return None
        return _straggler_limit(self.pc, max(self._live))

    def _silent(self, loc: Location, now: float) -> bool:
        limit = self.limit()
        return limit is not None and now - self._flying[loc][0] > limit

    def _within(self, now: float) -> int:
        """In-flight probes still within their deadline (they hold a place in the budget)."""
        return sum(1 for loc in self._flying if not self._silent(loc, now))

    def _may_launch(self, now: float) -> int:
        if not self._queue or len(self._flying) >= self._room:
            return 0
        if now >= self._end - self.pc.straggler_floor:
            return 0  # too late to give a copy a fair chance
        within = self._within(now)
        if self._live:
            return max(0, self._budget_now(now) - len(self._live) - within)
        steps = int((now - self._start) / max(self.pc.straggler_floor, 1e-3))
        grown = int(self._budget * min(_GROWTH**steps, 1e6))
        return max(0, min(grown, self._room) - within)

    def _budget_now(self, now: float) -> int:
        """Answers to wait for: ``max_candidates``, once more for each copy that failed or went
        silent (a list that lies is probed harder, within the deadline)."""
        bad = self._bad + len(self._flying) - self._within(now)
        return self._budget * (1 + bad) + self._extra

    def _launch(self, now: float) -> None:
        n = self._may_launch(now)
        per_host = max(1, self.pc.max_probes_per_host)
        while n > 0 and self._queue and len(self._flying) < self._room:
            loc = self._queue.popleft()
            key = host_key(loc) if loc.scheme != "file" else ""
            if key and self._per_key.get(key, 0) >= per_host:
                self._capped.append(loc)  # a later round's (or the background's) fallback
                continue
            if key:
                self._per_key[key] = self._per_key.get(key, 0) + 1
            limit = self.limit()
            timeout = self._end - now
            if limit is not None:
                timeout = min(timeout, limit) if not self._background else limit
            elif len(self._done) + len(self._flying) >= self._budget:
                # a later wave before any answer: a short own deadline frees the connection
                timeout = min(timeout, max(2 * self.pc.straggler_floor, self.pc.deadline / 4))
            self._flying[loc] = (now, timeout)
            self._given[loc] = timeout
            threading.Thread(
                target=self._run, args=(loc, timeout), name="locpick-probe", daemon=True
            ).start()
            self._measure_net(loc, now + timeout)
            n -= 1

    def _run(self, loc: Location, timeout: float) -> None:
        t0 = self._clock()
        try:
            transport = self.transports.for_location(loc)
            probe = _safe_probe(transport, loc, self.image, timeout)
        except LocpickError as exc:
            probe = Probe(url=loc.display_url, ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a daemon thread: e.g. the client closed under it
            probe = Probe(url=loc.display_url, ok=False, error=f"{type(exc).__name__}: {exc}")
        waited = self._clock() - t0
        ran_out = not probe.ok and probe.status is None and waited >= 0.95 * timeout
        best = None
        with self._cond:
            self._flying.pop(loc, None)
            if ran_out:
                # its own deadline cut it: silent, not failed (failed only if nothing answers)
                probe = Probe(url=loc.display_url, ok=True, ttfb=waited, censored=True)
            elif probe.ok and probe.ttfb is not None:
                self._live.append(probe.ttfb)
                best = min(self._live)
            self._done[loc] = probe
            if probe.censored or not probe.ok:
                self._bad += 1
            self._cond.notify_all()
        if best is not None and self._on_answer is not None:
            self._on_answer(loc, probe, best)

    def _measure_net(self, loc: Location, deadline: float) -> None:
        hp = _host_port(loc)
        if hp is None or hp in self._net or self._closed:
            return
        policy = self.transports.ctx.net
        self._net[hp] = self._net_pool.submit(
            _net_latency, hp[0], hp[1], deadline, self.pc.icmp, policy, loc.url
        )

    def _over(self, now: float) -> bool:
        if now >= self._end:
            return True
        if not self._live:
            return not self._flying and not self._queue
        if self._within(now):
            return False
        launchable = self._queue and len(self._live) < self._budget_now(now)
        return not launchable or len(self._flying) < self._room

    def _next_event(self, now: float) -> float:
        """When the next probe passes its deadline or the growth step comes, at the latest."""
        limit = self.limit()
        times = [self._end]
        if limit is not None:
            times += [sent + limit for sent, _t in self._flying.values() if sent + limit > now]
        elif self._queue:
            floor = max(self.pc.straggler_floor, 1e-3)
            times.append(self._start + floor * (int((now - self._start) / floor) + 1))
        return max(min(times), now + 0.005)

    # -- the phase ------------------------------------------------------------------------------
    def phase(self) -> Phase:
        """Probe until the outcome cannot change (see the class docstring); what is known."""
        with self._cond:
            while True:
                now = self._clock()
                self._launch(now)
                if self._over(now):
                    break
                self._cond.wait(timeout=self._next_event(now) - now)
            return self._snapshot(self._clock())

    def _snapshot(self, now: float) -> Phase:
        answered = bool(self._live)
        full = 0.95 * self.pc.deadline
        probes: dict[Location, Probe] = {}
        unmeasured: dict[Location, str] = {}
        for loc, p in self._done.items():
            if answered or not p.censored:
                probes[loc] = p
            elif self._given.get(loc, 0.0) < full:
                # a wave's short deadline before anything answered (a loaded box, or a slow
                # copy): not a verdict, it is asked again later
                unmeasured[loc] = _retry(p.ttfb or 0.0)
            else:
                probes[loc] = _no_answer(loc, p.ttfb or 0.0)
        for loc, (sent, _timeout) in self._flying.items():
            waited = now - sent
            if not answered:
                if waited < full:
                    unmeasured[loc] = _retry(waited)
                else:
                    probes[loc] = _no_answer(loc, waited)
            elif self._silent(loc, now):
                # silent: it may still answer (a fallback); its latency is at least ``waited``
                probes[loc] = Probe(url=loc.display_url, ok=True, ttfb=waited, censored=True)
            else:
                unmeasured[loc] = (
                    f"not-probed: still being probed when the phase ended ({waited:.2f}s); "
                    "a fallback"
                )
        why = (
            f"not-probed: {len(self._live)} copies answered first ([probe] max_candidates = "
            f"{self._budget}); a fallback"
            if len(self._live) >= self._budget_now(now)
            else "not-probed: no time left within the probe deadline; a fallback"
        )
        per_host = max(1, self.pc.max_probes_per_host)
        for loc in self._capped:
            unmeasured[loc] = (
                f"not-probed: more than {per_host} locations on {host_key(loc)} "
                "([probe] max_probes_per_host); a fallback"
            )
        for loc in self._queue:
            unmeasured[loc] = why
        self._with_net(probes)
        return Phase(probes, unmeasured)

    def _with_net(self, probes: dict[Location, Probe]) -> None:
        """The TCP-connect and ICMP latency, as far as they got."""
        for loc, probe in list(probes.items()):
            hp = _host_port(loc)
            nfut = self._net.get(hp) if hp is not None else None
            if nfut is not None and nfut.done() and not nfut.cancelled():
                n = nfut.result()
                probes[loc] = attrs.evolve(
                    probe, connect=n.connect, icmp=n.icmp, icmp_note=n.icmp_note
                )

    # -- after the phase ------------------------------------------------------------------------
    def keep_going(self) -> None:
        """Let probing go on in the background (probes in flight, and up to ``max_candidates``
        more copies) for another ``[probe] deadline``, for :meth:`refined`."""
        with self._cond:
            if self._closed:
                return
            self._background = True
            self._extra = len(self._live)  # max_candidates more answers at most
            self._end = self._clock() + self.pc.deadline
        threading.Thread(target=self._drive, name="locpick-probe-bg", daemon=True).start()

    def _drive(self) -> None:
        with self._cond:
            while not self._closed:
                now = self._clock()
                self._launch(now)
                if now >= self._end or (not self._flying and not self._queue):
                    break
                self._cond.wait(timeout=self._next_event(now) - now)

    def refined(self, locations: Sequence[Location], wait: float) -> dict[Location, Probe]:
        """What the probes continued in the background found for ``locations``, waiting up
        to ``wait`` seconds for those still in flight (silent ones too: a later round may wait
        longer than the first): a Probe for each that answered, failed or is still silent;
        nothing for the others."""
        wanted = set(locations)
        until = self._clock() + wait
        with self._cond:
            while True:
                now = self._clock()
                if now >= until or not any(loc in self._flying for loc in wanted):
                    break
                if any(
                    self._done[loc].ok and not self._done[loc].censored
                    for loc in wanted
                    if loc in self._done
                ):
                    break  # one answered: start on it (happy eyeballs)
                self._cond.wait(timeout=min(until, self._next_event(now)) - now)
            snap = self._snapshot(now)
        return {loc: p for loc, p in snap.probes.items() if loc in wanted}

    def asked(self) -> set[Location]:
        """Every location a probe was sent to so far."""
        with self._cond:
            return set(self._given)

    def close(self) -> None:
        """Stop launching; probes in flight end at their own deadline."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._net_pool.shutdown(wait=False, cancel_futures=True)


def _retry(waited: float) -> str:
    return (
        f"not-probed: no first byte within {waited:.2f}s, less than the probe deadline, "
        "before any copy answered; asked again later"
    )


def _no_answer(loc: Location, waited: float) -> Probe:
    """A probe that got no first byte while no copy answered at all: failed."""
    return Probe(
        url=loc.display_url,
        ok=False,
        error=f"no first byte within the probe deadline ({waited:.2f}s)",
    )


def probe_all(
    image: Image,
    locations: Sequence[Location],
    transports: Transports,
    config: Config,
    *,
    on_answer: Callable[[Location, Probe, float], None] | None = None,
) -> dict[Location, Probe]:
    """Probe ``locations`` (happy eyeballs, :class:`ProbeRun`); every one gets a Probe: failed
    ones with the reason, silent ones ``censored``, any left unmeasured as failed with why."""
    if not locations:
        return {}
    run = ProbeRun(image, locations, transports, config, on_answer=on_answer)
    try:
        phase = run.phase()
    finally:
        run.close()
    out = dict(phase.probes)
    for loc, why in phase.unmeasured.items():
        out[loc] = Probe(url=loc.display_url, ok=False, error=why)
    return out


def _straggler_limit(pc: ProbeConfig, best: float) -> float:
    """A first byte later than this cannot win against ``best``: max(floor, factor x best)."""
    return max(pc.straggler_floor, pc.straggler_factor * best)


def _safe_probe(transport: Transport, location: Location, image: Image, timeout: float) -> Probe:
    try:
        return transport.probe(location, image, timeout=timeout)
    except LocpickError as exc:
        return Probe(url=location.display_url, ok=False, error=str(exc))
    except OSError as exc:
        return Probe(url=location.display_url, ok=False, error=f"{type(exc).__name__}: {exc}")


@attrs.frozen
class _NetLatency:
    connect: float | None = None
    icmp: float | None = None
    icmp_note: str | None = None


def _host_port(location: Location) -> tuple[str, int] | None:
    if location.scheme not in ("http", "https"):
        return None
    try:
        return host_port(location.url)
    except ValueError:
        return None


_icmp_lock = threading.Lock()
_icmp_refused: str | None = None


def _net_latency(
    host: str, port: int, deadline: float, icmp: bool, net: NetPolicy, url: str
) -> _NetLatency:
    """TCP connect time (DNS excluded) and ICMP echo time to ``host``, each within ``deadline``;
    neither when the location is reached through a proxy (the path is not direct) or its
    address is forbidden."""
    if net.route(url) is not None:
        return _NetLatency(icmp_note="not measured: the location is reached through a proxy")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return _NetLatency(icmp_note=f"name resolution failed ({exc})")
    addr = infos[0][4]
    ip = str(addr[0])
    if net.check_ip(ipaddress.ip_address(ip.split("%")[0])):
        return _NetLatency(icmp_note="not measured: forbidden network")
    connect = None
    left = deadline - time.monotonic()
    if left > 0:
        t0 = time.monotonic()
        try:
            net.connect((ip, port), timeout=left).close()
            connect = time.monotonic() - t0
        except (OSError, LocationError):
            connect = None
    rtt, note = (None, "disabled by config") if not icmp else _icmp(ip, deadline)
    return _NetLatency(connect=connect, icmp=rtt, icmp_note=note)


def _icmp(address: str, deadline: float) -> tuple[float | None, str | None]:
    """One ICMP echo via ping3; (rtt, None) or (None, why not). Never raises."""
    global _icmp_refused
    with _icmp_lock:
        if _icmp_refused is not None:
            return None, _icmp_refused
    left = deadline - time.monotonic()
    if left <= 0:
        return None, "no time left"
    try:
        import ping3

        rtt = ping3.ping(address, timeout=left, unit="s")
    except PermissionError:
        with _icmp_lock:
            _icmp_refused = "ICMP not permitted here (no raw/unprivileged ICMP socket)"
        return None, _icmp_refused
    except Exception as exc:  # noqa: BLE001 - ping3 raises its own and OS errors; never fatal
        return None, f"ICMP failed ({type(exc).__name__})"
    if rtt is None:
        return None, "no ICMP echo reply (timeout)"
    if rtt is False:
        return None, "ICMP echo failed"
    return float(rtt), None


#: Rates of this many most recent slices are compared to decide stability.
_CV_WINDOW = 5
#: Length of one rate slice, seconds.
_SLICE = 0.025


def probe_and_measure(
    image: Image,
    locations: Sequence[Location],
    transports: Transports,
    config: Config,
    *,
    throughput: bool = True,
    background: bool = False,
) -> tuple[Phase, ProbeRun]:
    """Latency of every location (happy eyeballs, :class:`ProbeRun`, in the order given), then
    throughput of the promising ones, pipelined; and the run, still probing in the background
    when ``background`` (see :meth:`ProbeRun.refined`), else closed.

    A throughput measurement starts as soon as a location's latency probe answers, if it is
    not clearly worse on latency than the best answer so far (within the straggler cut-off),
    at most ``throughput_top`` of them, and never for a small image (nor without
    ``throughput``: a swarm measures by downloading). Each measurement is bounded by
    ``throughput_max_seconds`` and by ``throughput_budget`` x the transfer time expected at the
    prior throughput, so probing a big image costs a small fraction of it.
    """
    pc = config.probe
    size = image.size
    if not throughput or (size is not None and size <= pc.small_image_bytes):
        run = ProbeRun(image, locations, transports, config)
        return _finish(run, run.phase(), background), run
    expected = (size if size is not None else 1 << 30) / config.scoring.prior_throughput_bps
    limit = min(
        pc.throughput_max_seconds, max(pc.throughput_min_seconds, pc.throughput_budget * expected)
    )
    pool = cf.ThreadPoolExecutor(
        max_workers=max(1, pc.throughput_top), thread_name_prefix="locpick-tput"
    )
    started: dict[cf.Future[float | None], Location] = {}
    lock = threading.Lock()
    open_ = [True]

    def on_answer(loc: Location, probe: Probe, best: float) -> None:
        if loc.scheme == "file" or probe.ttfb is None or probe.ttfb > _straggler_limit(pc, best):
            return
        with lock:
            if open_[0] and len(started) < pc.throughput_top:
                started[pool.submit(_measure, transports, loc, image, config, limit)] = loc

    run = ProbeRun(image, locations, transports, config, on_answer=on_answer)
    try:
        phase = run.phase()
        with lock:
            open_[0] = False
            measuring = dict(started)
        out = dict(phase.probes)
        for fut in cf.as_completed(measuring):
            loc = measuring[fut]
            bps = fut.result()
            if bps is not None and out.get(loc) is not None and out[loc].ok:
                out[loc] = attrs.evolve(out[loc], throughput_bps=bps)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return _finish(run, Phase(out, phase.unmeasured), background), run


def _finish(run: ProbeRun, phase: Phase, background: bool) -> Phase:
    if background and phase.unmeasured:
        run.keep_going()
    else:
        run.close()
    return phase


def _measure(
    transports: Transports, location: Location, image: Image, config: Config, limit: float
) -> float | None:
    """Read from offset 0 until the rate is stable or a cap is hit; bytes/s after first byte."""
    pc = config.probe
    try:
        stream = transports.for_location(location).open(location, image, offset=0)
    except (LocpickError, OSError):
        return None
    buf = memoryview(bytearray(64 * 1024))
    try:
        t_first: float | None = None
        got = 0
        slice_start = 0.0
        slice_bytes = 0
        rates: list[float] = []
        t_open = time.monotonic()
        while True:
            try:
                n = stream.readinto(buf)
            except (LocationError, OSError):
                break
            now = time.monotonic()
            if n == 0:
                break
            if t_first is None:
                # The first read includes the response's first byte: start the clock here.
                t_first = slice_start = now
                continue
            got += n
            slice_bytes += n
            if now - slice_start >= _SLICE:
                rates.append(slice_bytes / (now - slice_start))
                slice_start, slice_bytes = now, 0
            elapsed = now - t_first
            if got >= pc.throughput_max_bytes or now - t_open >= limit:
                break
            if (
                got >= pc.throughput_min_bytes
                and elapsed >= pc.throughput_min_seconds
                and len(rates) >= _CV_WINDOW
            ):
                recent = rates[-_CV_WINDOW:]
                mean = statistics.fmean(recent)
                if mean > 0 and statistics.pstdev(recent) / mean <= pc.throughput_cv:
                    break
        if t_first is None or got == 0:
            return None
        elapsed = time.monotonic() - t_first
        return got / elapsed if elapsed > 0 else None
    finally:
        stream.close()
