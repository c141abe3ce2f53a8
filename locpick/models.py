"""Frozen values that flow through locpick: what an image is, where its copies are, and
what happened when we measured, ranked and fetched them."""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import attrs

from locpick.redact import SCRUB, redact_url
from locpick.s3url import ALL_S3_SCHEMES, display_s3_url, register_s3_secrets

Outcome = Literal["ok", "failed", "skipped"]
Method = Literal["download", "copy", "cache"]
LocationKind = Literal["location", "direct_url", "glance-file", "cache"]

#: What the transfer engine reports as bytes arrive: (bytes held, total or None), from any of
#: its threads. Callers never see it: :class:`locpick.jobs.progress.ProgressRelay` turns it into
#: :class:`Progress` values delivered from one thread.
ByteProgress = Callable[[int, int | None], None]


@functools.lru_cache(maxsize=1 << 16)
def _scheme_host(url: str) -> tuple[str, str]:
    """(scheme, host) of a URL, parsed once per URL: ranking asks for them many times, and a
    record may hold tens of thousands of locations."""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme.lower(), parts.hostname or ""
    except ValueError:
        return "", ""


def _scrub(text: str | None) -> str | None:
    """Text for a JSON document: secrets (and secret-shaped parts) replaced by ``***``."""
    return None if text is None else SCRUB(text)


@attrs.frozen
class Location:
    """One copy of an image: a URL plus the metadata Glance keeps beside it."""

    url: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False, eq=False)
    #: Where it came from: a Glance location, ``direct_url``, Glance's own ``/file``, a cache.
    kind: LocationKind = "location"

    @property
    def scheme(self) -> str:
        return _scheme_host(self.url)[0]

    @property
    def host(self) -> str:
        return _scheme_host(self.url)[1]

    def __attrs_post_init__(self) -> None:
        if self.scheme in ALL_S3_SCHEMES:
            register_s3_secrets(self.url)

    @property
    def display_url(self) -> str:
        """The URL with any credentials removed: safe to print, log and store."""
        if self.scheme in ALL_S3_SCHEMES:
            return redact_url(display_s3_url(self.url))
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"Location({self.display_url!r}, kind={self.kind!r})"


@attrs.frozen
class Image:
    """A Glance image record, reduced to what locpick needs and validated."""

    id: str
    size: int | None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    locations: tuple[Location, ...] = ()
    status: str = "active"
    #: Locations in the record that could not even be parsed, with the reason.
    rejected: tuple[tuple[str, str], ...] = ()
    #: Glance's ``visibility`` (public, community, shared, private); None when not given.
    visibility: str | None = None

    @property
    def has_hash(self) -> bool:
        return bool(self.os_hash_value or self.checksum)


@attrs.frozen
class FillHeader:
    """A peer's ``X-Locpick-Fill`` header: how much of a filling copy it holds and how fast."""

    state: Literal["filling", "complete"]
    #: Bytes held from offset 0 (the contiguous prefix).
    held: int
    size: int | None = None
    #: Bytes/s the copy is filling at (None: not said, or complete).
    rate: float | None = None


#: Longest header value read (a peer's header is advice, bounded like any hostile input).
MAX_FILL_HEADER = 512
#: The response header a peer's ``serve`` describes a filling (or complete) copy with.
FILL_HEADER = "X-Locpick-Fill"


def parse_fill_header(value: str | None) -> FillHeader | None:
    """``state=filling; held=N; size=N; rate=N`` as a FillHeader; None when absent or malformed
    (a peer's header is advice: a bad one is ignored, never an error). Unknown keys are skipped."""
    if not value or len(value) > MAX_FILL_HEADER:
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


@attrs.frozen
class Probe:
    """What one measurement of one location found. Times are seconds; ``None`` = not measured."""

    url: str
    ok: bool
    ttfb: float | None = None
    connect: float | None = None
    icmp: float | None = None
    icmp_note: str | None = None
    throughput_bps: float | None = None
    size: int | None = None
    error: str | None = None
    final_url: str | None = None
    #: True when no first byte came before the probe phase ended: ``ttfb`` is a lower bound.
    censored: bool = False
    #: Something the transport wants said in rank's reasons (e.g. where a token is sent).
    note: str | None = None
    #: The HTTP status of a probe that was answered with a non-success status, else None.
    status: int | None = None
    #: A peer's ``X-Locpick-Fill`` answer (a copy still filling, or complete), else None.
    fill: FillHeader | None = None
    #: Seconds of a ``Retry-After`` on a busy (503) answer.
    retry_after: float | None = None


@attrs.frozen
class Reasons:
    """Why a location scored as it did; keys follow the public JSON contract."""

    latency_ms: float | None = None
    throughput_bps: float | None = None
    topology: str | None = None
    shared_fs: str | None = None
    history: str | None = None
    error: str | None = None
    #: Extra, human-oriented explanation (priors used, policy, ...).
    notes: tuple[str, ...] = ()
    #: The other two latency measurements (ICMP echo, TCP connect without DNS), and why ICMP
    #: was not measured when it was not.
    icmp_ms: float | None = None
    connect_ms: float | None = None
    icmp_note: str | None = None
    #: What the operator's [policy] did to this location (pinned, forbidden, last resort).
    policy: str | None = None
    #: How probes and transfers reach it: ``direct`` or ``via proxy URL`` (None: not a network
    #: location).
    route: str | None = None
    #: Not measured (over the probe budget, or still in flight when the phase ended): ranked
    #: after every measured copy; a download reaches it in a later round, once its probe
    #: (continued in the background) has answered.
    not_probed: bool = False
    #: A peer's copy still filling (boot storm): held bytes, fill rate, role in the fleet's tree.
    fill: str | None = None
    #: What probing found: ``live`` (answered), ``silent`` (a black hole: no first byte within
    #: the scaled deadline), ``not-probed`` (unmeasured), ``failed``; None when not probed
    #: because not needed. Only a ``live`` copy has answered a probe.
    probe: str | None = None
    #: The topology levels that matched this node's, outermost first (``region=r1 zone=az1``).
    topology_match: str | None = None
    #: Read only once every other copy has dropped out: a boot storm holds the origin back
    #: for a node with live peers (it would otherwise serve every node its copy).
    fallback_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "throughput_bps": None if self.throughput_bps is None else round(self.throughput_bps),
            "topology": self.topology,
            "shared_fs": self.shared_fs,
            "history": _scrub(self.history),
            "error": _scrub(self.error),
            "icmp_ms": None if self.icmp_ms is None else round(self.icmp_ms, 2),
            "connect_ms": None if self.connect_ms is None else round(self.connect_ms, 2),
            "icmp_note": self.icmp_note,
            "policy": self.policy,
            "route": self.route,
            "fill": self.fill,
            "probe": self.probe,
            "topology_match": self.topology_match,
            "notes": [SCRUB(n) for n in self.notes],
        }


@attrs.frozen
class Score:
    """A ranked location: ``score`` is the expected seconds to deliver the image (lower wins)."""

    location: Location
    rank: int
    score: float | None
    usable: bool
    reasons: Reasons

    @property
    def url(self) -> str:
        return self.location.display_url

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "rank": self.rank,
            "score": None if self.score is None else round(self.score, 4),
            "usable": self.usable,
            "reasons": self.reasons.to_json(),
        }


@attrs.frozen
class Attempt:
    """One try at one location during a download."""

    url: str
    outcome: Outcome
    error: str | None = None
    bytes: int = 0
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": SCRUB(self.url),
            "outcome": self.outcome,
            "error": _scrub(self.error),
            "bytes": self.bytes,
        }


@attrs.frozen
class CacheStep:
    """What happened to the node cache after a delivery (an extension of the download JSON)."""

    #: "stored": kept in the cache; "hit": copied out of it; "skipped": not cacheable (no hash,
    #: over ``max_bytes``); "failed": the dest is verified and delivered, but the cache could
    #: not be updated (``error`` says why).
    status: Literal["stored", "hit", "skipped", "failed"]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error}


@attrs.frozen
class SourceShare:
    """What one location contributed to a download: bytes delivered and the rate it ran at."""

    url: str
    bytes: int
    rate_bps: float | None = None

    def to_json(self) -> dict[str, Any]:
        rate = None if self.rate_bps is None else round(self.rate_bps)
        return {"url": self.url, "bytes": self.bytes, "rate_bps": rate}


@attrs.frozen
class Result:
    """A verified image at ``dest``."""

    image_id: str
    dest: str
    source_url: str
    method: Method
    bytes: int
    seconds: float
    verified: str | None
    attempts: tuple[Attempt, ...] = ()
    #: A swarm download: every location that delivered pieces, most first (``source_url`` is
    #: the first); empty for a download from one location at a time.
    sources: tuple[SourceShare, ...] = ()
    #: The node cache step, when a node cache was used (None: no cache).
    cache: CacheStep | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {
            "image_id": self.image_id,
            "dest": self.dest,
            "source_url": SCRUB(self.source_url),
            "method": self.method,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
            "verified": self.verified,
            "attempts": [a.to_json() for a in self.attempts],
        }
        if self.sources:  # a swarm download; otherwise the CLI's report lists them
            doc["sources"] = [s.to_json() for s in self.sources]
        if self.cache is not None:
            doc["cache"] = self.cache.to_json()
        return doc


@attrs.frozen
class Ranking:
    """Every location of an image, best first."""

    image: Image
    scores: tuple[Score, ...]

    @property
    def usable(self) -> tuple[Score, ...]:
        return tuple(s for s in self.scores if s.usable)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.scores]

    def __iter__(self) -> Iterator[Score]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)


VerifyStatus = Literal["ok", "mismatch", "missing", "unreachable", "unsupported"]


@attrs.frozen
class ReplicaStatus:
    """One location's verdict in ``verify``."""

    url: str
    status: VerifyStatus
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "detail": self.detail}


@attrs.frozen
class VerifyReport:
    """All replicas of an image checked against its size and hash."""

    image_id: str
    locations: tuple[ReplicaStatus, ...]
    #: What ``--prune`` did or would do; None when not asked.
    prune: PruneResult | None = None

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.locations)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "image_id": self.image_id,
            "locations": [r.to_json() for r in self.locations],
        }
        if self.prune is not None:
            doc["prune"] = self.prune.to_json()
        return doc


@attrs.frozen
class PruneResult:
    """``verify --prune``: the missing or mismatched Glance locations to remove, and what was."""

    dry_run: bool
    #: Display URLs of the locations chosen for removal.
    remove: tuple[str, ...] = ()
    #: Display URLs actually removed from Glance (empty on a dry run).
    removed: tuple[str, ...] = ()
    #: Why something was kept or not removed (e.g. it would remove the last verified copy).
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "remove": list(self.remove),
            "removed": list(self.removed),
            "notes": list(self.notes),
        }


@attrs.frozen
class Progress:
    """How far one download is: the value a ``progress`` callback receives.

    The contract (``Client.download``, ``locpick.download``, ``AsyncClient.download``):

    - calls come from one thread, never two at once (with ``AsyncClient``: the event loop's
      thread), and each has returned before the next is made;
    - ``done`` never decreases (bytes fetched again after a restart are not counted twice);
    - ``total`` is the image size, or None while no size is known;
    - a download that delivers ends with a call where ``done`` is the bytes at ``dest``
      (``== total`` when the size is known), made before ``download`` returns;
    - a callback that raises aborts the download: ``download`` raises that exception.
    """

    image_id: str
    #: Bytes verified-bound for ``dest`` so far (held in the part file or the node cache copy).
    done: int
    #: The image size in bytes, or None when the record has none and no source announced it.
    total: int | None
    #: Seconds since the download started.
    seconds: float

    @property
    def fraction(self) -> float | None:
        """``done / total`` in 0..1, or None without a total."""
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)


CacheActionKind = Literal["registered", "unregistered", "left-for-reap", "evicted", "rotated"]


@attrs.frozen
class CacheAction:
    """One change an operator call made to the node cache or to Glance's locations."""

    #: "registered"/"unregistered": a location added to / removed from Glance; "left-for-reap":
    #: one to remove that only the designated reaper may (no [fleet] coordination); "evicted":
    #: a cached copy removed; "rotated": a new node secret (every old capability URL refused).
    kind: CacheActionKind
    #: The image concerned (None for "rotated", which concerns the node).
    image_id: str | None = None
    #: The location URL concerned (secrets masked), if any.
    url: str | None = None
    #: Why, in a few words ("not in the cache", "its hash no longer matches Glance's").
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "image_id": self.image_id,
            "url": self.url,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        """One line for people: ``unregistered IMAGE: URL (why)``."""
        if self.kind == "rotated":
            return "rotated the node secret"
        text = f"{self.kind} {self.image_id}"
        if self.url:
            text += f": {self.url}"
        if self.reason:
            text += f" ({self.reason})" if self.url else f": {self.reason}"
        return text


@attrs.frozen
class EvictResult:
    """What ``Cache.evict`` did: the entries removed, and the locations Glance still lists."""

    #: Image ids evicted from the node cache.
    evicted: tuple[str, ...] = ()
    #: Ids asked for that were not in the cache.
    missing: tuple[str, ...] = ()
    #: Evicted copies whose location could not be removed from Glance (run ``reconcile``).
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"evicted": list(self.evicted), "warnings": list(self.warnings)}


@attrs.frozen
class ReapResult:
    """What ``Fleet.reap`` did (or would do) to one image's locpick copies in Glance."""

    #: The image, or "-" for this node's own dead stream-through copies.
    image_id: str
    prune: PruneResult

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, **self.prune.to_json()}
