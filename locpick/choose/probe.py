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

import concurrent.futures as cf
import ipaddress
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from locpick.config.model import Config, ProbeConfig
from locpick.errors import LocationError, LocpickError
from locpick.models import Image, Location, Probe
from locpick.net.addr import host_port
from locpick.net.policy import NetPolicy
from locpick.transports import Transports
from locpick.transports.base import Transport


def probe_all(
    image: Image,
    locations: Sequence[Location],
    transports: Transports,
    config: Config,
    *,
    on_answer: Callable[[Location, Probe, float], None] | None = None,
) -> dict[Location, Probe]:
    """Probe ``locations`` concurrently; every one gets a Probe, failed ones with the reason.

    ``on_answer(location, probe, best_ttfb)`` is called as each probe answers (used to start
    throughput measurements without waiting for the whole latency phase)."""
    pc = config.probe
    results: dict[Location, Probe] = {}
    if not locations:
        return results
    start = time.monotonic()
    deadline = start + pc.deadline
    pool = cf.ThreadPoolExecutor(
        max_workers=min(32, len(locations)), thread_name_prefix="locpick-probe"
    )
    futures: dict[cf.Future[Probe], Location] = {}
    net: dict[tuple[str, int], cf.Future[_NetLatency]] = {}
    net_pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="locpick-ping")
    try:
        for loc in locations:
            transport = transports.for_location(loc)
            futures[pool.submit(_safe_probe, transport, loc, image, pc.deadline)] = loc
            hp = _host_port(loc)
            if hp is not None and hp not in net:
                policy = transports.ctx.net
                net[hp] = net_pool.submit(
                    _net_latency, hp[0], hp[1], deadline, pc.icmp, policy, loc.url
                )
        pending = set(futures)
        best: float | None = None
        while pending:
            now = time.monotonic()
            cutoff = deadline
            if best is not None:
                cutoff = min(deadline, start + _straggler_limit(pc, best))
            if now >= cutoff:
                break
            done, pending = cf.wait(pending, timeout=cutoff - now, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                probe = fut.result()
                results[futures[fut]] = probe
                if probe.ok and probe.ttfb is not None:
                    best = probe.ttfb if best is None else min(best, probe.ttfb)
                    if on_answer is not None:
                        on_answer(futures[fut], probe, best)
        waited = time.monotonic() - start
        for fut in pending:
            loc = futures[fut]
            fut.cancel()
            if best is None:
                results[loc] = Probe(
                    url=loc.display_url,
                    ok=False,
                    error=f"no first byte within the probe deadline ({waited:.2f}s)",
                )
            else:
                # Still a fallback: it may answer later; its latency is at least ``waited``.
                results[loc] = Probe(url=loc.display_url, ok=True, ttfb=waited, censored=True)
        # The other two latency measurements, as far as they got within the deadline.
        if net:
            cf.wait(
                list(net.values()),
                timeout=max(0.0, min(deadline, time.monotonic() + 0.05) - time.monotonic()),
            )
        for loc, probe in list(results.items()):
            hp = _host_port(loc)
            nfut = net.get(hp) if hp is not None else None
            if nfut is not None and nfut.done() and not nfut.cancelled():
                n = nfut.result()
                results[loc] = attrs.evolve(
                    probe, connect=n.connect, icmp=n.icmp, icmp_note=n.icmp_note
                )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        net_pool.shutdown(wait=False, cancel_futures=True)
    return results


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
    image: Image, locations: Sequence[Location], transports: Transports, config: Config
) -> dict[Location, Probe]:
    """Latency of every location, then throughput of the promising ones, pipelined.

    A throughput measurement starts as soon as a location's latency probe answers, if it is
    not clearly worse on latency than the best answer so far (within the straggler cut-off),
    at most ``throughput_top`` of them, and never for a small image. Each measurement is
    bounded by ``throughput_max_seconds`` and by ``throughput_budget`` x the transfer time
    expected at the prior throughput, so probing a big image costs a small fraction of it.
    """
    pc = config.probe
    size = image.size
    if size is not None and size <= pc.small_image_bytes:
        return probe_all(image, locations, transports, config)
    expected = (size if size is not None else 1 << 30) / config.scoring.prior_throughput_bps
    limit = min(
        pc.throughput_max_seconds, max(pc.throughput_min_seconds, pc.throughput_budget * expected)
    )
    pool = cf.ThreadPoolExecutor(
        max_workers=max(1, pc.throughput_top), thread_name_prefix="locpick-tput"
    )
    started: dict[cf.Future[float | None], Location] = {}

    def on_answer(loc: Location, probe: Probe, best: float) -> None:
        if loc.scheme == "file" or len(started) >= pc.throughput_top:
            return
        if probe.ttfb is None or probe.ttfb > _straggler_limit(pc, best):
            return
        started[pool.submit(_measure, transports, loc, image, config, limit)] = loc

    try:
        probes = probe_all(image, locations, transports, config, on_answer=on_answer)
        out = dict(probes)
        for fut in cf.as_completed(started):
            loc = started[fut]
            bps = fut.result()
            if bps is not None and out.get(loc) is not None and out[loc].ok:
                out[loc] = attrs.evolve(out[loc], throughput_bps=bps)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return out


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
