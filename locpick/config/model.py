"""The configuration values: one frozen ``Config`` of frozen sections, with their defaults.

Every knob that changes a decision lives here with its default and a one-line meaning, so that
nothing is a magic constant buried in code (the docs' configuration reference is generated from
it). Reading a file is :mod:`locpick.config.load`, the environment :mod:`locpick.config.env`.
The connection and store sections live in :mod:`locpick.config.connection` and
:mod:`locpick.config.stores`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from locpick.config.connection import NetworkConfig, TLSConfig
from locpick.config.stores import GlanceConfig, RbdConfig, S3Config, SwiftConfig
from locpick.config.units import Bytes, Rate, Seconds, WholeRate, WholeSeconds
from locpick.errors import ConfigError

__all__ = [
    "CacheConfig",
    "CliConfig",
    "Config",
    "Filesystem",
    "FleetConfig",
    "Hint",
    "Policy",
    "ProbeConfig",
    "ScoringConfig",
    "SecurityConfig",
    "Topology",
    "TransferConfig",
]


@attrs.frozen
class Topology:
    """Where a node (or a copy) lives; any part may be unknown."""

    region: str | None = None
    zone: str | None = None
    rack: str | None = None
    host: str | None = None


@attrs.frozen
class Filesystem:
    """A shared filesystem this node mounts (Nova ``image_file_url`` semantics)."""

    id: str
    mountpoint: str
    #: A file that must exist at the mount root, so a wrong filesystem at the same path is refused.
    marker: str | None = None
    #: Expected filesystem UUID or source device (as in /proc/self/mountinfo), if set.
    fs_uuid: str | None = None
    #: Trust the operator: copies from this filesystem are checked by size alone (no hash
    #: pass; reflink makes such a copy near-instant). Off by default: copies are verified.
    trusted: bool = False
    #: Seconds the reachability check may take before the mount counts as hung/stale.
    timeout: Seconds = 2.0
    #: Test-only: accept a plain directory as if it were a mount. Not settable from a file.
    require_mount: bool = attrs.field(default=True, kw_only=True)


@attrs.frozen
class Hint:
    """Topology for locations whose metadata says nothing, matched by URL prefix."""

    url_prefix: str
    region: str | None = None
    zone: str | None = None
    rack: str | None = None
    host: str | None = None


def _positive_lease(_inst: object, _attr: object, value: float) -> None:
    if not 0 < value <= 365 * 86400:
        raise ConfigError(f"config [cache] lease: {value!r} is not in 0..31536000 seconds (>0)")


@attrs.frozen
class CacheConfig:
    dir: str | None = None
    max_bytes: Bytes | None = None
    register: bool = False
    public_url: str | None = None
    #: Seconds a registered location stays valid without renewal; ``locpick serve`` renews
    #: it every ``lease / 3``. Clients skip a copy whose lease ran out (``lease-expired``).
    lease: Seconds = attrs.field(default=3600.0, validator=_positive_lease)


def _check_range(lo: float, hi: float, section: str = "security") -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
        if not lo <= value <= hi:
            raise ConfigError(f"config [{section}] {attr.name}: {value!r} is not in {lo}..{hi}")

    return check


@attrs.frozen
class ProbeConfig:
    """How long and how hard locations are measured before a choice is made."""

    #: One overall deadline for the probe phase, seconds.
    deadline: Seconds = 2.0
    #: Bytes asked for by the small ranged GET that measures time to first byte.
    ttfb_bytes: Bytes = 65536
    #: ICMP echo via ping3 (quietly skipped where raw/unprivileged ICMP is not allowed).
    icmp: bool = True
    #: Stop waiting for stragglers once the best TTFB is known: a location slower than
    #: max(straggler_floor, straggler_factor x best) cannot win.
    straggler_factor: float = 4.0
    straggler_floor: Seconds = 0.25
    #: Throughput probe: minimum and maximum bytes and seconds, stability threshold (CV).
    throughput_min_bytes: Bytes = 1 << 20
    throughput_max_bytes: Bytes = 32 << 20
    throughput_min_seconds: Seconds = 0.1
    throughput_max_seconds: Seconds = 0.6
    throughput_cv: float = 0.15
    #: A throughput measurement takes at most this fraction of the transfer time expected at
    #: the prior throughput (and at most ``throughput_max_seconds``).
    throughput_budget: float = 0.05
    #: Probe throughput (concurrently) for at most this many candidates, best latency first,
    #: among those not clearly worse on latency (within the straggler cut-off). TTFB is a poor
    #: proxy for bandwidth, so this is generous.
    throughput_top: int = 6
    #: Images up to this size skip the throughput probe: latency dominates.
    small_image_bytes: Bytes = 8 << 20
    #: Seconds a probe result stays valid inside one process.
    cache_ttl: Seconds = 30.0
    #: At most this many locations are probed, the best by topology, history and policy
    #: before any measurement, and at most ``max_probes_per_host`` per ``scheme://host:port``
    #: (Glance's /file is not counted); the rest rank as ``not-probed`` fallbacks, so a record
    #: with 20,000 locations costs what one with 32 does, and many silent locations added by a
    #: tenant cannot crowd out the rest. A download probes the not-probed ones in later rounds
    #: (deadline scaled to the live copies' first bytes) once every probed location failed.
    max_candidates: int = attrs.field(default=32, validator=_check_range(1, 1_000_000, "probe"))
    max_probes_per_host: int = attrs.field(default=4, validator=_check_range(1, 1_000_000, "probe"))


@attrs.frozen
class ScoringConfig:
    """Priors and weights of the expected-time score (seconds; lower is better)."""

    #: Throughput assumed for a location whose throughput was not measured, bytes/s.
    prior_throughput_bps: Rate = 50e6
    #: Throughput assumed for a system copy from a shared filesystem, bytes/s.
    prior_copy_bps: Rate = 1.5e9
    #: Latency assumed when none was measured, seconds.
    prior_latency: Seconds = 0.05
    #: A closer topology class wins unless another location is expected to be more than
    #: this fraction faster (0.2 = 20 % less expected time), per the contract.
    topology_tolerance: float = 0.2
    #: Locations within this fraction of the best, in the same topology class, are "equal"
    #: and one is chosen at random to avoid herding.
    herd_margin: float = 0.05
    #: Multiplier on the expected time of a location that failed recently (circuit breaker).
    failure_penalty: float = 10.0
    #: Seconds a failed location stays demoted before it is tried normally again.
    cooldown: Seconds = 300.0
    #: Seed for the near-equal tie break; None = random per process.
    seed: int | None = None


@attrs.frozen
class HerdConfig:
    """Boot storms: how nodes share the origin when peers' copies are still filling."""

    #: Read filling peers' copies in registration order (a tree), protecting the origin.
    enabled: bool = True
    #: Fraction (0..1) of the nodes that have an earlier filling peer and still read the origin
    #: at once as well; 0 = the origin is left to nodes with no live peer (a fallback for others).
    origin_share: float = attrs.field(default=0.0, validator=_check_range(0, 1, "herd"))
    #: Seconds: a download waits uniformly in [0, start_jitter) before reading the image record,
    #: so simultaneous starts spread their registrations; 0 = no wait.
    start_jitter: Seconds = attrs.field(default=0.0, validator=_check_range(0, 60, "herd"))
    #: Most readers one filling copy is given by the tree before later nodes use another.
    fanout: int = attrs.field(default=4, validator=_check_range(1, 1024, "herd"))


def _check_peers(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    import ipaddress

    for entry in value:
        if "://" in entry:
            if not entry.startswith(("http://", "https://")):
                raise ConfigError(f"config [fleet] peers: {entry!r} is not an http(s) URL")
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"config [fleet] peers: {entry!r} is neither scheme://host[:port] nor a CIDR"
            ) from exc


@attrs.frozen
class Policy:
    """Operator pins and bans, applied before scoring and shown in reasons."""

    prefer_schemes: tuple[str, ...] = ()
    forbid_schemes: tuple[str, ...] = ()
    prefer_hosts: tuple[str, ...] = ()
    forbid_hosts: tuple[str, ...] = ()
    #: Never use Glance's own /v2/images/{id}/file.
    forbid_glance_file: bool = False


def _check_networks(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    import ipaddress

    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"config [security] forbid_networks: {net!r} is not a network"
            ) from exc


@attrs.frozen
class SecurityConfig:
    """Bounds on what hostile metadata and hostile servers can make locpick do."""

    #: Never connect to these networks, directly or through a redirect (cloud metadata services).
    forbid_networks: tuple[str, ...] = attrs.field(
        default=("169.254.0.0/16", "fe80::/10"), validator=_check_networks
    )
    token_hosts: tuple[str, ...] = ()
    #: Redirects followed per request (only to http/https, never to a forbidden network).
    max_redirects: int = attrs.field(default=5, validator=_check_range(0, 20))
    #: Locations of one record that are parsed and considered; any further ones are listed as
    #: one rejected row (the record itself is still used: no cliff). The record's byte size
    #: (16 MiB) bounds memory whatever this says.
    max_locations: int = attrs.field(default=100_000, validator=_check_range(1, 10_000_000))
    #: Permission bits of a delivered file (no setuid/setgid/sticky bits).
    file_mode: int = attrs.field(default=0o644, validator=_check_range(0, 0o777))
    #: A transfer slower than this (bytes/s) over ``[transfer] low_speed_window`` is abandoned
    #: even when ``[transfer] low_speed_bps`` is 0: a server dripping bytes cannot hold locpick.
    min_speed_bps: Rate = attrs.field(default=1024.0, validator=_check_range(0, 1e12))
    #: Bytes one location may write for an image whose record has no ``size`` (the first
    #: Content-Length bounds it too); a longer body is dropped and the next location tried.
    max_image_bytes: Bytes = attrs.field(default=1 << 40, validator=_check_range(1, 1 << 50))


@attrs.frozen
class ServeConfig:
    """``locpick serve``: who may read, and how much a neighbour can take from this node."""

    #: Serve images whose Glance visibility is ``public`` without the capability token.
    open_public: bool = False
    #: Image transfers at once; past it ``503`` with ``Retry-After``.
    max_clients: int = attrs.field(default=16, validator=_check_range(1, 100_000, "serve"))
    #: Bytes/s this node serves in total (0 = unlimited; limited transfers skip sendfile).
    max_rate: WholeRate = attrs.field(default=0, validator=_check_range(0, 1e13, "serve"))
    #: Open connections in total and per client address (lowered to fit ``ulimit -n``).
    max_connections: int = attrs.field(default=512, validator=_check_range(1, 1_000_000, "serve"))
    max_connections_per_client: int = attrs.field(
        default=32, validator=_check_range(1, 100_000, "serve")
    )
    #: Image transfers at once from one client address (kept below ``max_clients``, so one
    #: address never holds every slot); past it ``503`` with ``Retry-After``.
    max_transfers_per_client: int = attrs.field(
        default=8, validator=_check_range(1, 100_000, "serve")
    )
    #: A transfer whose client takes less than ``min_send_rate`` bytes/s over any
    #: ``send_timeout`` seconds while bytes wait to be sent is cut (a client that stopped
    #: reading frees its slot).
    send_timeout: float = attrs.field(default=30.0, validator=_check_range(0.05, 3600, "serve"))
    min_send_rate: int = attrs.field(default=1024, validator=_check_range(0, 1e12, "serve"))
    #: Seconds a new connection has to deliver a complete request head.
    header_timeout: Seconds = attrs.field(default=10.0, validator=_check_range(0.05, 3600, "serve"))
    #: Seconds an idle keep-alive connection is kept.
    keepalive_timeout: Seconds = attrs.field(
        default=15.0, validator=_check_range(0.05, 3600, "serve")
    )
    #: Seconds a busy answer asks the client to wait.
    retry_after: WholeSeconds = attrs.field(default=2, validator=_check_range(0, 3600, "serve"))
    #: Seconds an answer from a copy still being filled waits for bytes not yet written
    #: (stream-through); nothing in time: ``503`` + ``Retry-After``; mid-answer: cut short.
    fill_wait: Seconds = attrs.field(default=30.0, validator=_check_range(0.05, 3600, "serve"))


def _coordination_url(_inst: object, _attr: object, value: str | None) -> None:
    if value is None:
        return
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if not scheme:
        raise ConfigError(
            f"config [fleet] coordination: {value[:40]!r} is not a URL; use e.g. "
            '"etcd3+http://10.0.0.5:2379" or "file:///var/lib/locpick/coord"'
        )


@attrs.frozen
class FleetConfig:
    """The fleet: which peers' copies are trusted (a ``locpick_cache`` / ``locpick_fill``
    location counts only when signed with the fleet key or listed in ``peers``), and how the
    nodes share one image's Glance location list."""

    #: File holding the fleet's shared HMAC key (>= 16 bytes, not readable by others); this
    #: node signs its registrations with it and trusts copies signed with it. Never logged.
    key_file: str | None = None
    #: Node URLs (``scheme://host[:port]``, path prefix optional) or CIDRs of IP-literal hosts
    #: whose copies are trusted without a signature.
    peers: tuple[str, ...] = attrs.field(default=(), validator=_check_peers)

    #: A tooz coordination URL (``etcd3+http://host:2379``, ``file:///dir`` on one host, any
    #: backend tooz knows). Set: one writer at a time per image, and nodes may remove their
    #: own locations. Unset: nodes only append; removals are left to ``locpick cache reap``.
    coordination: str | None = attrs.field(default=None, validator=_coordination_url)
    #: Seconds a Glance write waits for the image's lock before giving up (and saying so).
    lock_timeout: float = attrs.field(default=30.0, validator=_check_range(0.1, 3600, "fleet"))
    #: Locpick copies registered per image at most (Glance's ``image_location_quota`` is 10
    #: by default and the operator's own locations need room); later nodes read the
    #: registered ones and do not register (leaves). 0: no cap.
    max_copies: int = attrs.field(default=6, validator=_check_range(0, 100_000, "fleet"))
    #: Locpick copies registered per image in one zone at most (0: only ``max_copies``).
    max_copies_per_zone: int = attrs.field(default=0, validator=_check_range(0, 100_000, "fleet"))


@attrs.frozen
class TransferConfig:
    """Timeouts, retries and stall detection of a transfer."""

    connect_timeout: Seconds = 5.0
    first_byte_timeout: Seconds = 15.0
    #: No byte for this long and the transfer is abandoned (when no other location is left).
    idle_timeout: Seconds = 5.0
    #: No byte for this long while another location could continue: abandon and resume there.
    stall_timeout: Seconds = 1.5
    #: A transfer slower than this (bytes/s) over ``low_speed_window`` seconds is abandoned.
    low_speed_bps: Rate = 1024.0
    low_speed_window: Seconds = 5.0
    #: Retries per location for transient errors; the budget resets on progress.
    retries: int = 2
    #: First backoff delay, seconds; doubles per failure up to ``backoff_max`` (jitter: x0.5-1).
    backoff: Seconds = 0.2
    backoff_max: Seconds = 5.0
    #: An attempt that delivered at least this many bytes made progress: the retry budget
    #: resets (a few bytes per connection do not keep a failing location alive).
    progress_bytes: Bytes = 256 << 10
    #: A server's Retry-After longer than this (seconds) drops the location for this download.
    retry_after_max: Seconds = 30.0
    #: Seconds one download may take in all (attempts, backoffs, switches); 0 = no limit.
    #: Past it the download ends with exit 3, naming this deadline.
    total_timeout: Seconds = attrs.field(default=0.0, validator=_check_range(0, 1e9, "transfer"))
    #: Switch mid-transfer when another location is this many times faster.
    switch_factor: float = 1.5
    max_switches: int = 2
    #: Seconds of transfer observed before a mid-transfer switch is considered (hysteresis).
    switch_observe: Seconds = 1.0
    #: Seconds a switch is assumed to cost (new connection, slow start) on top of latency.
    switch_cost: Seconds = 0.3
    #: Read buffer of the data path, bytes.
    buffer_bytes: Bytes = 4 << 20
    #: Locations drawn on at once, a piece from each (swarm fetch); 1 = one at a time.
    max_sources: int = 4
    #: Bytes per piece of a swarm fetch; 0 = auto (image / 64, clamped to 1-32 MiB).
    piece_size: Bytes = 0
    #: Connections per location in a swarm fetch (RFC 6249: be polite to mirrors).
    connections_per_source: int = 1
    #: Seconds to wait for another process holding ``.DEST.locpick-lock`` (another download of
    #: the same DEST, or a local user holding the lock on purpose) before giving up with exit 3.
    lock_timeout: Seconds = attrs.field(default=600.0, validator=_check_range(0, 1e7, "transfer"))


@attrs.frozen
class CliConfig:
    """The ``locpick`` command's own behaviour (the library ignores it)."""

    #: ``download``'s progress on stderr: "auto" = a bar on a terminal (plain lines when the
    #: ``cli`` extra, rich, is not installed), nothing otherwise; "bar"; "lines" = plain lines
    #: (for logs: systemd, Nova's console); "none".
    progress: Literal["auto", "bar", "lines", "none"] = "auto"


@attrs.frozen
class Config:
    """Everything locpick can be told; immutable, change it with ``attrs.evolve``."""

    topology: Topology = Topology()
    filesystems: tuple[Filesystem, ...] = ()
    cache: CacheConfig = CacheConfig()
    serve: ServeConfig = ServeConfig()
    hints: tuple[Hint, ...] = ()
    probe: ProbeConfig = ProbeConfig()
    scoring: ScoringConfig = ScoringConfig()
    herd: HerdConfig = HerdConfig()
    fleet: FleetConfig = FleetConfig()
    policy: Policy = Policy()
    security: SecurityConfig = SecurityConfig()
    tls: TLSConfig = TLSConfig()
    network: NetworkConfig = NetworkConfig()
    transfer: TransferConfig = TransferConfig()
    glance: GlanceConfig = GlanceConfig()
    s3: S3Config = S3Config()
    rbd: RbdConfig = RbdConfig()
    swift: SwiftConfig = SwiftConfig()
    cli: CliConfig = CliConfig()
    #: Persisted per-location history; None = the user's cache dir; "" = disabled.
    history_file: str | None = None
    source_path: str | None = None


#: The plain ``[section]`` tables of a config file and the value each one builds.
SECTIONS: dict[str, type[Any]] = {
    "topology": Topology,
    "cache": CacheConfig,
    "serve": ServeConfig,
    "probe": ProbeConfig,
    "scoring": ScoringConfig,
    "herd": HerdConfig,
    "fleet": FleetConfig,
    "policy": Policy,
    "security": SecurityConfig,
    "tls": TLSConfig,
    "network": NetworkConfig,
    "transfer": TransferConfig,
    "glance": GlanceConfig,
    "s3": S3Config,
    "rbd": RbdConfig,
    "cli": CliConfig,
}
