"""What one download did, for operators: the chosen source and why, bytes per source over time.

A :class:`Recorder` rides along a download (it wraps the progress callback and the per-attempt
observer, so the transfer code is unchanged) and turns into a frozen :class:`DownloadReport`:
the facts behind ``--metrics-file``, the extra ``--json`` keys, the cache's recent-downloads
journal and the ``/status`` page.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import attrs

from locpick.errors import IntegrityError, LocpickError
from locpick.fetch.policy import Observer
from locpick.models import Attempt, ByteProgress, Location, Ranking, Result, Score
from locpick.redact import SCRUB, redact_url

#: Samples kept per download (downsampled evenly when there are more): enough for a sparkline.
MAX_SAMPLES = 64
#: Progress is sampled at most this often (seconds); the callback itself stays cheap.
SAMPLE_EVERY = 0.05

DownloadOutcome = Literal["ok", "failed"]


def host_of(url: str) -> str:
    """A short, credential-free name for where a URL points: its host, else its scheme."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "-"
    return parts.hostname or (parts.scheme + ":" if parts.scheme else "-")


@attrs.frozen
class SourceUse:
    """Bytes one location sent during a download (failed attempts included)."""

    url: str
    host: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "host": self.host, "bytes": self.bytes}


@attrs.frozen
class DownloadReport:
    """The operator's view of one download; everything in it is safe to show (scrubbed)."""

    image_id: str
    #: Wall-clock start (Unix seconds).
    started_at: float
    seconds: float
    result: DownloadOutcome
    exit_code: int
    method: str | None = None
    bytes: int = 0
    chosen_url: str | None = None
    chosen_host: str | None = None
    #: Why the chosen source was chosen (its rank and reasons), or why nothing was delivered.
    reason: str | None = None
    error: str | None = None
    sources: tuple[SourceUse, ...] = ()
    #: Locations unusable when ranked (probe failed, refused), counted by host.
    probe_failures: tuple[tuple[str, int], ...] = ()
    #: Attempts whose bytes failed size or hash verification.
    verify_failures: int = 0
    #: (seconds since start, bytes delivered so far, host sending them), at most MAX_SAMPLES.
    samples: tuple[tuple[float, int, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "started_at": round(self.started_at, 3),
            "seconds": round(self.seconds, 4),
            "result": self.result,
            "exit_code": self.exit_code,
            "method": self.method,
            "bytes": self.bytes,
            "chosen_url": self.chosen_url,
            "chosen_host": self.chosen_host,
            "reason": self.reason,
            "error": self.error,
            "sources": [s.to_json() for s in self.sources],
            "probe_failures": dict(self.probe_failures),
            "verify_failures": self.verify_failures,
            "samples": [[round(t, 3), b, h] for t, b, h in self.samples],
        }

    def json_extras(self) -> dict[str, Any]:
        """The keys ``download --json`` adds to the contract's document (none renamed)."""
        return {
            "chosen_host": self.chosen_host,
            "reason": self.reason,
            "sources": [s.to_json() for s in self.sources],
            "probe_failures": dict(self.probe_failures),
            "verify_failures": self.verify_failures,
        }

    @classmethod
    def from_json(cls, doc: Any) -> DownloadReport | None:
        """A report read back from the journal; None if the record is malformed."""
        try:
            return cls(
                image_id=str(doc["image_id"]),
                started_at=float(doc["started_at"]),
                seconds=float(doc["seconds"]),
                result="ok" if doc["result"] == "ok" else "failed",
                exit_code=int(doc["exit_code"]),
                method=_opt_str(doc.get("method")),
                bytes=int(doc.get("bytes", 0)),
                chosen_url=_opt_str(doc.get("chosen_url")),
                chosen_host=_opt_str(doc.get("chosen_host")),
                reason=_opt_str(doc.get("reason")),
                error=_opt_str(doc.get("error")),
                sources=tuple(
                    SourceUse(str(s["url"]), str(s["host"]), int(s["bytes"]))
                    for s in doc.get("sources", [])
                ),
                probe_failures=tuple(
                    (str(h), int(n)) for h, n in dict(doc.get("probe_failures", {})).items()
                ),
                verify_failures=int(doc.get("verify_failures", 0)),
                samples=tuple(
                    (float(t), int(b), str(h)) for t, b, h in doc.get("samples", [])[:MAX_SAMPLES]
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class Recorder:
    """Collects one download's facts while it runs; ``finish``/``fail`` make the report.

    ``progress`` and ``observer`` wrap the callbacks handed to the transfer: progress samples
    are attributed to a source when that attempt ends (the observer names its location).
    """

    def __init__(self, image_id: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.image_id = image_id
        self._clock = clock
        self._t0 = clock()
        self.started_at = time.time()
        self._pending: list[tuple[float, int]] = [(0.0, 0)]
        self._samples: list[tuple[float, int, str]] = []
        self._next = 0.0
        self._verify_failures = 0
        self.ranking: Ranking | None = None
        #: Set by ``finish`` or ``fail``.
        self.report: DownloadReport | None = None

    def progress(self, inner: ByteProgress | None = None) -> ByteProgress:
        """A progress callback that samples (time, bytes) and then calls ``inner``."""

        def update(done: int, total: int | None) -> None:
            now = self._clock() - self._t0
            if now >= self._next or (total is not None and done >= total):
                self._next = now + SAMPLE_EVERY
                self._pending.append((now, done))
            if inner is not None:
                inner(done, total)

        return update

    def observer(self, inner: Observer | None = None) -> Observer:
        """An attempt observer that attributes the pending samples to the attempt's host."""

        def observe(loc: Location, ok: bool, got: int, seconds: float, error: str | None) -> None:
            host = host_of(loc.url)
            self._samples.extend((t, b, host) for t, b in self._pending)
            self._pending = []
            # Called from inside the transfer's ``except`` block: the exception being handled
            # says whether the bytes failed verification (the observer gets only its text).
            if not ok and isinstance(sys.exc_info()[1], IntegrityError):
                self._verify_failures += 1
            if inner is not None:
                inner(loc, ok, got, seconds, error)

        return observe

    def ranked(self, ranking: Ranking) -> None:
        self.ranking = ranking

    def finish(self, result: Result) -> DownloadReport:
        """The report of a delivered image."""
        seconds = self._clock() - self._t0
        chosen = next((a for a in reversed(result.attempts) if a.outcome == "ok"), None)
        # Masked: a cache location's capability token must not reach downloads.json or /status.
        chosen_url = redact_url(chosen.url if chosen is not None else result.source_url)
        samples = self._samples + [(t, b, "-") for t, b in self._pending]
        if result.method == "cache" or not samples or samples[-1][1] != result.bytes:
            samples.append((seconds, result.bytes, host_of(chosen_url)))
        self.report = DownloadReport(
            image_id=self.image_id,
            started_at=self.started_at,
            seconds=seconds,
            result="ok",
            exit_code=0,
            method=result.method,
            bytes=result.bytes,
            chosen_url=chosen_url,
            chosen_host=host_of(chosen_url),
            reason=self._reason(result, chosen),
            sources=_sources(result),
            probe_failures=self._probe_failures(),
            verify_failures=max(self._verify_failures, _mismatches(result.attempts)),
            samples=_downsample(samples),
        )
        return self.report

    def fail(self, exc: BaseException) -> DownloadReport:
        """The report of a download that delivered nothing."""
        code = exc.exit_code if isinstance(exc, LocpickError) else 3
        attempts: Sequence[Attempt] = getattr(exc, "attempts", None) or ()
        self.report = DownloadReport(
            image_id=self.image_id,
            started_at=self.started_at,
            seconds=self._clock() - self._t0,
            result="failed",
            exit_code=code if code in (2, 3) else 3,
            error=SCRUB(str(exc)) or type(exc).__name__,
            reason="no location delivered a verified image" if attempts else None,
            sources=_sum_sources(attempts),
            probe_failures=self._probe_failures(),
            verify_failures=max(self._verify_failures, _mismatches(attempts)),
            samples=_downsample(self._samples),
        )
        return self.report

    def _probe_failures(self) -> tuple[tuple[str, int], ...]:
        if self.ranking is None:
            return ()
        counts: dict[str, int] = {}
        for s in self.ranking.scores:
            if not s.usable and s.reasons.error is not None and s.reasons.policy is None:
                host = host_of(s.url)
                counts[host] = counts.get(host, 0) + 1
        return tuple(sorted(counts.items()))

    def _reason(self, result: Result, chosen: Attempt | None) -> str:
        if result.method == "cache":
            return "verified copy in the node cache (no transfer)"
        score = None
        if self.ranking is not None and chosen is not None:
            score = next((s for s in self.ranking.scores if s.url == chosen.url), None)
        parts = [] if score is None else [explain(score, self.ranking)]
        failed = [a for a in result.attempts if a.outcome == "failed"]
        if failed:
            tried = "; ".join(f"{host_of(a.url)}: {a.error}" for a in failed[:3])
            parts.append(f"after {len(failed)} failed attempt(s) ({tried})")
        return ", ".join(parts) or "the only usable location"


def explain(score: Score, ranking: Ranking | None) -> str:
    """One line: the chosen location's rank and the measurements that put it there."""
    usable = len(ranking.usable) if ranking is not None else 0
    r = score.reasons
    bits = [f"rank {score.rank} of {usable} usable"]
    if score.score is not None:
        bits.append(f"expected {score.score:.2f} s")
    if r.latency_ms is not None:
        bits.append(f"latency {r.latency_ms:.1f} ms")
    if r.throughput_bps is not None:
        bits.append(f"{r.throughput_bps / 1e6:.1f} MB/s measured")
    for label, value in (
        ("topology", r.topology),
        ("shared fs", r.shared_fs),
        ("history", r.history),
        ("policy", r.policy),
    ):
        if value:
            bits.append(f"{label}: {value}")
    if usable <= 1 and score.score is None:
        bits.append("nothing else to choose from")
    return "; ".join(bits)


def _sources(result: Result) -> tuple[SourceUse, ...]:
    """Bytes per source: the result's own ``sources`` (what each copy put into the image) when
    it has them, plus what a copy that put nothing in sent before it was dropped (a liar's
    bytes cost traffic too); else its attempts."""
    listed = getattr(result, "sources", None)
    if listed:
        out = []
        for s in listed:
            url = s.get("url") if isinstance(s, dict) else getattr(s, "url", None)
            got = s.get("bytes") if isinstance(s, dict) else getattr(s, "bytes", None)
            if isinstance(url, str) and isinstance(got, int):
                shown = redact_url(url)
                out.append(SourceUse(shown, host_of(shown), got))
        kept = {s.url for s in out}
        wasted = [a for a in result.attempts if a.outcome == "failed" and a.bytes > 0]
        out += [s for s in _sum_sources(wasted) if s.url not in kept]
        return tuple(out)
    if result.method == "cache":
        return (SourceUse("node cache", "cache", result.bytes),)
    return _sum_sources(result.attempts)


def _sum_sources(attempts: Iterable[Attempt]) -> tuple[SourceUse, ...]:
    totals: dict[str, int] = {}
    for a in attempts:
        if a.bytes > 0 or a.outcome == "ok":
            url = redact_url(a.url)
            totals[url] = totals.get(url, 0) + a.bytes
    return tuple(SourceUse(url, host_of(url), n) for url, n in totals.items())


def _downsample(samples: list[tuple[float, int, str]]) -> tuple[tuple[float, int, str], ...]:
    """At most MAX_SAMPLES, evenly spread, always keeping the first and the last."""
    if len(samples) <= MAX_SAMPLES:
        return tuple(samples)
    step = (len(samples) - 1) / (MAX_SAMPLES - 1)
    return tuple(samples[round(i * step)] for i in range(MAX_SAMPLES))


def _mismatches(attempts: Sequence[Attempt]) -> int:
    """Attempts whose bytes failed verification (the engine reports a copy's wrong bytes as
    its failed attempt once the download is decided, not from inside the failing check)."""
    return sum(1 for a in attempts if a.outcome == "failed" and "mismatch" in (a.error or ""))
