"""The long-lived entry point: one Client holds the HTTP pool, probe cache and credentials."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import cachetools

from locpick import journal, storm
from locpick.auth import OpenStackAuth, auth_from_environment
from locpick.cache import CacheEntry, NodeCache, copy_out
from locpick.config import Config, TransferConfig, resolve_config
from locpick.errors import (
    AllLocationsFailed,
    ConfigError,
    ImageNotActive,
    ImageNotFound,
    InputError,
    LocationError,
    LocpickError,
    UnverifiedImage,
)
from locpick.fetch import Progress, fetch
from locpick.history import History, host_key
from locpick.lease import is_locpick_copy, lease_state
from locpick.models import (
    Attempt,
    CacheStep,
    Image,
    Location,
    Probe,
    PruneResult,
    Ranking,
    Result,
    Score,
    VerifyReport,
)
from locpick.netpolicy import NetPolicy
from locpick.probe import probe_and_measure
from locpick.publish import (
    GlanceLocations,
    PublishError,
    cache_location_url,
    cache_metadata,
)
from locpick.reasons import Code, Reason, code_of
from locpick.redact import SCRUB, redact_url, register_env_secrets
from locpick.replicas import plan_prune, verify_replicas
from locpick.report import DownloadReport, Recorder
from locpick.score import Candidate, policy_reason, prior_order, rank
from locpick.sources import fetch_glance_image, load_metadata
from locpick.swarm import swarm_probes
from locpick.swarm.explain import explain
from locpick.transports import Context, Transport, Transports

log = logging.getLogger("locpick")

Metadata = str | os.PathLike[str] | Mapping[str, Any]


class Client:
    """Pooled connections, cached probes and tokens; safe to share between threads."""

    def __init__(
        self,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        glance_url: str | None = None,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        register_env_secrets()
        SCRUB.add(token)
        self.config = resolve_config(config)
        if glance_url is None:
            glance_url = os.environ.get("OS_IMAGE_URL") or None
        if token is None:
            token = os.environ.get("OS_AUTH_TOKEN") or None
        SCRUB.add(token)
        self.glance_url = glance_url
        #: Keystone (OS_AUTH_URL / OS_CLOUD) when the token or the endpoint must come from it.
        self._auth: OpenStackAuth | None = None
        if not (token and glance_url):
            self._auth = auth_from_environment(
                os.environ,
                token=token,
                timeout=max(30.0, self.config.transfer.connect_timeout),
            )
        # The edge: proxies, trust and forbidden networks, read once from config + environment.
        # A bad CA file, proxy URL or no_proxy is a config error now, before anything is fetched.
        self.net = NetPolicy.from_environment(
            self.config,
            os.environ,
            cloud_cacert=self._auth.cacert if self._auth is not None else None,
            insecure=insecure or (self._auth is not None and self._auth.insecure),
        )
        if not self.net.trust.verify:
            self.config = attrs.evolve(self.config, tls=attrs.evolve(self.config.tls, verify=False))
            log.warning(
                "TLS certificate verification is OFF (--insecure / OS_INSECURE / [tls] verify = "
                "false): any host on the path can impersonate image locations and Glance"
            )
        if self._auth is not None:
            self._auth.use_policy(self.net)
        self._ctx = Context(self.config, glance_url=glance_url, token=token, net=self.net)
        self._transports = Transports(self._ctx)
        self._probe_cache: cachetools.TTLCache[tuple[str, int | None], Probe] = cachetools.TTLCache(
            maxsize=4096, ttl=self.config.probe.cache_ttl
        )
        self._lock = threading.Lock()
        #: Per-host outcomes persisted across runs (``history_file``; "" disables).
        self.history = History.from_config(self.config.history_file)

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transports.close()
        self._ctx.close()

    # -- sources ------------------------------------------------------------------------------
    def image(self, image_id: str, *, metadata: Metadata | None = None) -> Image:
        """The validated image record, from ``metadata`` if given, else from Glance."""
        limit = self.config.security.max_locations
        if metadata is not None:
            image = load_metadata(metadata, image_id, max_locations=limit)
            if image.status != "active":
                raise InputError(f"image {image_id} is {image.status!r}, not 'active'")
            return image
        glance_url, token = self._glance()
        try:
            return fetch_glance_image(
                self._ctx.http,
                glance_url,
                image_id,
                token=token,
                max_locations=limit,
                prefer_stores=self.config.glance.prefer_stores,
            )
        except ImageNotFound as exc:
            if self._auth is None:
                raise
            raise ImageNotFound(f"{exc}, as {self._auth.who}") from exc

    def _glance(self) -> tuple[str, str | None]:
        """Glance endpoint and token; from Keystone (catalog, renewed token) when configured."""
        if self._auth is not None:
            token = self._auth.token()
            endpoint = self.glance_url or self._auth.image_endpoint()
            with self._lock:
                self.glance_url = self._ctx.glance_url = endpoint
                self._ctx.token = token
        if not self.glance_url:
            raise InputError(
                "no image source: give --metadata FILE or --glance-url URL (or set OS_IMAGE_URL,"
                " or OS_AUTH_URL/OS_CLOUD to find it in the service catalog)"
            )
        return self.glance_url, self._ctx.token

    # -- decisions ----------------------------------------------------------------------------
    def rank_image(
        self,
        image: Image,
        *,
        for_download: bool = False,
        dest: str | os.PathLike[str] | None = None,
        probe: bool = True,
    ) -> Ranking:
        """Score every location of an already-loaded image.

        ``for_download``: with a single usable location there is nothing to choose, so it is
        not probed (the probe would only delay the transfer); nor for a swarm download, whose
        first piece from each copy is the probe. ``dest``: where it will go (a
        shared filesystem reports whether it is the same device). ``probe=False``: nothing
        is probed (a storm node reading its parent decides from the record alone).
        """
        now = time.time()
        known = self.history.entries()
        candidates: list[Candidate] = []
        for loc in image.locations:
            lease = lease_state(loc.metadata, now)
            if lease.expired:
                candidates.append(
                    Candidate(loc, unusable=Reason(Code.LEASE_EXPIRED, lease.expired))
                )
                continue
            try:
                transport = self._transports.for_location(loc)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - any refusal makes just this one unusable
                candidates.append(Candidate(loc, unusable=Reason(code_of(exc), _reason(exc))))
                continue
            shared = None
            reason = policy_reason(loc, self.config)  # forbidden copies are never probed
            if reason is None:
                reason, shared = _check(transport, loc, image, dest)
            history = self.history.lookup(loc, known) if known and reason is None else None
            candidates.append(
                Candidate(loc, unusable=reason, shared_fs=shared, history=history, note=lease.note)
            )
        candidates = self._bound_probing(image, candidates)
        to_probe = [c.location for c in candidates if c.unusable is None and not c.not_probed]
        # a swarm download probes by downloading: its first piece from each copy is the probe
        skip = not probe or (
            for_download and (len(to_probe) <= 1 or swarm_probes(image, self.config.transfer))
        )
        probes = {} if skip else self._probe(image, to_probe)
        candidates = [
            attrs.evolve(c, probe=probes[c.location]) if c.location in probes else c
            for c in candidates
        ]
        for url, why in image.rejected:
            candidates.append(Candidate(Location(url=url), unusable=Reason(Code.REJECTED, why)))
        scores = rank(image, candidates, self.config)
        return Ranking(image=image, scores=tuple(self._with_route(s) for s in scores))

    def _with_route(self, score: Score) -> Score:
        """Say in the reasons how the location is reached (``direct`` / ``via proxy ...``)."""
        try:
            transport = self._transports.for_location(score.location)
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
        pc = self.config.probe
        limit, per_host = max(1, pc.max_candidates), max(1, pc.max_probes_per_host)
        pool = [c for c in candidates if c.unusable is None and c.location.kind != "glance-file"]
        if len(pool) <= 1:
            return candidates
        why: dict[int, Reason] = {}
        seen: dict[str, int] = {}
        kept = 0
        for c in prior_order(image, pool, self.config):
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
        with self._lock:
            for loc in locations:
                hit = self._probe_cache.get((loc.url, image.size))
                if hit is not None:
                    found[loc] = hit
                else:
                    missing.append(loc)
        fresh = probe_and_measure(image, missing, self._transports, self.config)
        with self._lock:
            for loc, probe in fresh.items():
                if probe.ok:
                    self._probe_cache[(loc.url, image.size)] = probe
        return found | fresh

    def rank(self, image_id: str, *, metadata: Metadata | None = None) -> Ranking:
        """Every location of the image, best first, each with why."""
        image, plan = storm.prepare(self.image(image_id, metadata=metadata), self.config, mine=None)
        ranking = self.rank_image(image)
        ranking = attrs.evolve(ranking, scores=storm.arrange(ranking.scores, plan))
        t = self.config.transfer
        scores = explain(
            image, ranking.scores, t, self.config.scoring.topology_tolerance, swarm_probes(image, t)
        )
        return attrs.evolve(ranking, scores=scores)

    def download(
        self,
        image_id: str,
        dest: str | os.PathLike[str],
        *,
        metadata: Metadata | None = None,
        allow_unverified: bool = False,
        progress: Progress | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        register: bool | None = None,
        recorder: Recorder | None = None,
    ) -> Result:
        """Fetch (or system-copy) the image to ``dest``, verified, atomically.

        With a node cache (``cache_dir`` or ``[cache] dir``) a verified cached copy is copied
        out without any network transfer (``method="cache"``), and a fresh download is kept
        in the cache; with ``register`` (or ``[cache] register``) the cached copy is published
        as a location of the image in Glance. ``recorder`` collects the operator's report
        (``recorder.report`` afterwards, delivered or not); with a node cache the report is
        also journalled there for ``locpick serve``'s ``/status``.
        """
        rec = recorder if recorder is not None else Recorder(image_id)
        try:
            result = self._download(
                image_id,
                dest,
                rec,
                metadata=metadata,
                allow_unverified=allow_unverified,
                progress=progress,
                cache_dir=cache_dir,
                register=register,
            )
        except LocpickError as exc:
            self._journal(cache_dir, rec.fail(exc))
            raise
        report = rec.finish(result)
        self._journal(cache_dir, report)
        log.info(
            "downloaded %s: %d bytes from %s in %.2fs",
            image_id,
            report.bytes,
            report.chosen_host,
            report.seconds,
            extra={
                "event": "download",
                "image": image_id,
                "host": report.chosen_host,
                "bytes": report.bytes,
                "seconds": round(report.seconds, 4),
            },
        )
        return result

    def _journal(self, cache_dir: str | os.PathLike[str] | None, report: DownloadReport) -> None:
        directory = cache_dir if cache_dir is not None else self.config.cache.dir
        if directory and os.path.isdir(os.path.join(directory, "images")):
            journal.record(directory, report)

    def _download(
        self,
        image_id: str,
        dest: str | os.PathLike[str],
        rec: Recorder,
        *,
        metadata: Metadata | None,
        allow_unverified: bool,
        progress: Progress | None,
        cache_dir: str | os.PathLike[str] | None,
        register: bool | None,
    ) -> Result:
        storm.wait_start(self.config.herd)
        image = self.image(image_id, metadata=metadata)
        cache = self.node_cache(cache_dir, required=False)
        publish = self.config.cache.register if register is None else register
        if publish and cache is None:
            raise ConfigError("--register needs a node cache: give --cache-dir or [cache] dir")
        if publish and not self.config.cache.public_url:
            raise ConfigError(
                "--register needs [cache] public_url (how other nodes reach locpick serve here)"
            )
        if cache is not None:
            hit = self._from_cache(cache, image, dest, publish)
            if hit is not None:
                journal.bump(cache.dir, hits=1)
                return hit
            journal.bump(cache.dir, misses=1)
        if not image.has_hash:
            if not allow_unverified:
                raise UnverifiedImage(
                    f"image {image_id} has no checksum or os_hash_value; refusing to download "
                    "unverified bytes (pass --allow-unverified to accept a size-only check)"
                )
            log.warning("image %s has no hash: downloading UNVERIFIED (size check only)", image_id)
        # storm-fill's seam: once a filling registration was tried, mine=its URL (None if
        # refused) and reload=lambda: self.image(image_id) (unless metadata is given)
        image, plan = storm.prepare(image, self.config, mine=None)
        ranking = self.rank_image(image, for_download=True, dest=dest, probe=plan.parent is None)
        ranking = attrs.evolve(ranking, scores=storm.arrange(ranking.scores, plan))
        rec.ranked(ranking)
        transfer = storm.transfer_for(self.config.transfer, plan)
        result = self._fetch_in_rounds(image, ranking.scores, dest, progress, rec, transfer)
        if cache is not None and result.verified:
            return attrs.evolve(result, cache=self._keep(cache, image, dest, publish))
        return result

    def _keep(
        self, cache: NodeCache, image: Image, dest: str | os.PathLike[str], publish: bool
    ) -> CacheStep:
        """Keep a verified download in the node cache. The dest is already delivered, so any
        failure here (read-only or full cache, a planted lock) is a warning, never an error."""
        try:
            evicted = cache.add_file(image, dest)
            self._unpublish(evicted)
            if publish:
                self._publish(cache, image)
        except (LocpickError, OSError) as exc:
            error = _cache_error(cache, exc)
            log.warning("cache: %s (image delivered and verified, not cached)", error)
            return CacheStep("failed", error)
        return CacheStep("stored" if cache.entry(image.id) is not None else "skipped")

    def _fetch_in_rounds(
        self,
        image: Image,
        scores: Sequence[Score],
        dest: str | os.PathLike[str],
        progress: Progress | None,
        rec: Recorder,
        transfer: TransferConfig | None = None,
    ) -> Result:
        """Fetch from the probed locations; when every one has failed, probe the next round of
        ``not-probed`` ones (over the probe budget) and fetch from those, and so on; Glance's
        /file stays the last resort. So a download fails only when every location was really
        tried or ruled out, and many silent locations cannot hide a good one."""
        last = [s for s in scores if s.location.kind == "glance-file"]
        scores = [s for s in scores if s.location.kind != "glance-file"]
        earlier: list[Attempt] = []
        best = _best_ttfb(scores)
        while True:
            later = [s for s in scores if s.usable and s.reasons.not_probed]
            now = [s for s in scores if not s.reasons.not_probed] + ([] if later else last)
            try:
                result = self._fetch(image, now, dest, progress, rec, transfer)
            except AllLocationsFailed as exc:
                attempts = [*earlier, *exc.attempts]
                if not later:
                    if not earlier:
                        raise
                    raise _all_failed(image, attempts) from None
                earlier = attempts
            else:
                return attrs.evolve(result, attempts=(*earlier, *result.attempts))
            log.info(
                "image %s: every probed location failed; probing %d more that were over the "
                "probe budget",
                image.id,
                len(later),
            )
            scores = self._probe_round(image, [s.location for s in later], best)
            if sum(s.reasons.not_probed for s in scores) >= len(later):  # no progress: give up
                raise _all_failed(image, earlier)
            best = min((b for b in (best, _best_ttfb(scores)) if b is not None), default=None)

    def _fetch(
        self,
        image: Image,
        scores: Sequence[Score],
        dest: str | os.PathLike[str],
        progress: Progress | None,
        rec: Recorder,
        transfer: TransferConfig | None = None,
    ) -> Result:
        return fetch(
            image,
            scores,
            dest,
            self._transports,
            buffer_bytes=self.config.transfer.buffer_bytes,
            file_mode=self.config.security.file_mode,
            progress=rec.progress(progress),
            transfer=transfer or self.config.transfer,
            observer=rec.observer(self.history.record),
            topology_tolerance=self.config.scoring.topology_tolerance,
            max_bytes=self.config.security.max_image_bytes,
        )

    def _probe_round(
        self, image: Image, locations: Sequence[Location], best: float | None
    ) -> list[Score]:
        """Probe (within the budget) and rank locations left over by an earlier round, under a
        deadline scaled to the live copies' first bytes (the straggler cut-off)."""
        pc = self.config.probe
        deadline = pc.deadline
        if best is not None:
            deadline = min(deadline, max(pc.straggler_floor, pc.straggler_factor * best))
        config = attrs.evolve(self.config, probe=attrs.evolve(pc, deadline=deadline))
        known = self.history.entries()
        candidates = self._bound_probing(
            image, [Candidate(loc, history=self.history.lookup(loc, known)) for loc in locations]
        )
        to_probe = [c.location for c in candidates if not c.not_probed]
        probes = probe_and_measure(image, to_probe, self._transports, config)
        candidates = [
            attrs.evolve(c, probe=probes[c.location]) if c.location in probes else c
            for c in candidates
        ]
        return list(rank(image, candidates, config))

    # -- the node cache -----------------------------------------------------------------------
    def node_cache(
        self, cache_dir: str | os.PathLike[str] | None = None, *, required: bool = True
    ) -> NodeCache | None:
        """The node cache at ``cache_dir``, else ``[cache] dir``; None (or an error) if neither."""
        directory = cache_dir if cache_dir is not None else self.config.cache.dir
        if not directory:
            if required:
                raise ConfigError("no node cache: give --cache-dir DIR or set [cache] dir")
            return None
        return NodeCache(directory, self.config.cache.max_bytes)

    def _from_cache(
        self, cache: NodeCache, image: Image, dest: str | os.PathLike[str], publish: bool
    ) -> Result | None:
        started = time.monotonic()
        problem = cache.problem()
        if problem is not None:
            log.warning("cache: not used: %s", problem)
            return None
        entry = cache.lookup(image)
        if entry is None:
            return None
        if not copy_out(entry, dest, mode=self.config.security.file_mode):
            return None
        cache.touch(image.id)
        step = CacheStep("hit")
        try:
            if image.visibility is not None:
                cache.update_meta(image.id, visibility=image.visibility)
            if publish:
                self._publish(cache, image, entry)
        except (LocpickError, OSError) as exc:
            error = _cache_error(cache, exc)
            log.warning("cache: %s (image delivered from the cache, not registered)", error)
            step = CacheStep("failed", error)
        url = entry.path.as_uri()
        return Result(
            image_id=image.id,
            dest=str(dest),
            source_url=url,
            method="cache",
            bytes=entry.size,
            seconds=time.monotonic() - started,
            verified=entry.algo,
            attempts=(Attempt(url=url, outcome="ok", bytes=entry.size, note="node cache"),),
            cache=step,
        )

    def glance_locations(self) -> GlanceLocations:
        """The Glance locations API of this client's endpoint (token renewed if Keystone)."""
        endpoint, token = self._glance()
        return GlanceLocations(self._ctx.http, endpoint, token)

    def _publish(self, cache: NodeCache, image: Image, entry: CacheEntry | None = None) -> None:
        """Register the cached copy in Glance; a refusal is a warning, the cache keeps working."""
        public_url = self.config.cache.public_url
        assert public_url is not None
        try:
            url = cache_location_url(public_url, image.id, cache.token(image.id))
        except (InputError, OSError) as exc:
            log.warning("not registered, keeping a plain cache: %s", SCRUB(str(exc)))
            return
        if entry is None:
            entry = cache.entry(image.id)
        if entry is None or entry.registered_url == url:
            return
        try:
            api = self.glance_locations()
            if entry.registered_url:  # made with a rotated secret: replace it
                api.remove(image.id, entry.registered_url)
            api.add(image.id, url, self._cache_metadata())
        except (PublishError, InputError) as exc:
            log.warning("not registered, keeping a plain cache: %s", SCRUB(str(exc)))
            return
        cache.set_registered(image.id, url)

    def _cache_metadata(self) -> dict[str, str]:
        """Metadata of this node's registrations: topology, marker, registration time, lease."""
        return cache_metadata(self.config.topology, lease=self.config.cache.lease)

    def _unpublish(self, evicted: Sequence[CacheEntry]) -> list[str]:
        """Remove evicted copies' locations from Glance; returns warnings (also logged)."""
        problems = []
        for entry in evicted:
            if not entry.registered_url:
                continue
            try:
                self.glance_locations().remove(entry.image_id, entry.registered_url)
            except (PublishError, InputError) as exc:
                text = (
                    f"evicted {entry.image_id} but its location is still in Glance "
                    f"({SCRUB(str(exc))}); run `locpick cache reconcile`"
                )
                log.warning("%s", text)
                problems.append(text)
        return problems

    def evict(
        self, image_ids: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None
    ) -> tuple[list[CacheEntry], list[str]]:
        """Evict entries (and unregister their locations); returns (evicted, warnings)."""
        cache = self.node_cache(cache_dir)
        assert cache is not None
        evicted = [e for e in (cache.evict(i) for i in image_ids) if e is not None]
        return evicted, self._unpublish(evicted)

    def reconcile(self, *, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """Make Glance agree with the cache, both ways; returns what was done, one line each.

        Registered but not (validly) cached: the location is removed. Cached but not
        registered (with ``[cache] register``): it is added. A cached copy whose hash no
        longer matches Glance's record is evicted.
        """
        cache = self.node_cache(cache_dir)
        assert cache is not None
        public_url = self.config.cache.public_url
        if not public_url:
            raise ConfigError("cache reconcile needs [cache] public_url (this node's serve URL)")
        api = self.glance_locations()
        prefix = public_url.rstrip("/") + "/images/"
        done: list[str] = []
        registered = api.images_with_location_prefix(prefix)
        for image_id, urls in sorted(registered.items()):
            entry = cache.entry(image_id)
            current = _current_url(cache, public_url, image_id)
            for url in urls:
                if entry is not None and url == current:
                    if entry.registered_url != url:
                        cache.set_registered(image_id, url)
                    continue
                api.remove(image_id, url)
                why = "not in the cache" if entry is None else "not this node's current URL"
                done.append(f"unregistered {image_id}: {redact_url(url)} ({why})")
        for entry in cache.entries():
            url = _current_url(cache, public_url, entry.image_id)
            try:
                image = self.image(entry.image_id)
            except ImageNotFound:
                cache.evict(entry.image_id)
                done.append(f"evicted {entry.image_id}: no longer in Glance")
                continue
            if cache.lookup(image) is None:
                cache.evict(entry.image_id)
                if url in registered.get(entry.image_id, []):
                    api.remove(entry.image_id, url)
                done.append(f"evicted {entry.image_id}: its hash no longer matches Glance's")
                continue
            if image.visibility is not None:
                cache.update_meta(entry.image_id, visibility=image.visibility)
            if url in registered.get(entry.image_id, []):
                continue
            was_registered = bool(entry.registered_url)
            if was_registered:
                cache.set_registered(entry.image_id, None)
            if self.config.cache.register or was_registered:
                api.add(entry.image_id, url, self._cache_metadata())
                cache.set_registered(entry.image_id, url)
                done.append(f"registered {entry.image_id}: {redact_url(url)}")
        return done

    def rotate_secret(self, *, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """New node secret (every old capability URL refused at once), then re-register.

        Every entry that was registered gets its new URL in Glance and loses the old one
        (through :meth:`reconcile`); returns what was done, one line each.
        """
        cache = self.node_cache(cache_dir)
        assert cache is not None
        if not self.config.cache.public_url:
            raise ConfigError("cache rotate-secret needs [cache] public_url (this node's URL)")
        cache.rotate_secret()
        return ["rotated the node secret", *self.reconcile(cache_dir=cache_dir)]

    def verify(
        self,
        image_id: str,
        *,
        metadata: Metadata | None = None,
        quick: bool = False,
        prune: bool = False,
        yes: bool = False,
    ) -> VerifyReport:
        """Check every location: reachable, right size, and (unless quick) right hash.

        ``prune``: plan removing missing/mismatched locations from Glance (never the last
        verified one); ``yes`` carries it out, otherwise it is a dry run.
        """
        if prune and quick:
            raise InputError("--prune needs the full hash check: drop --quick")
        if prune and metadata is not None:
            raise InputError("--prune changes Glance: give --glance-url, not --metadata")
        image = self.image(image_id, metadata=metadata)
        report = verify_replicas(image, image.locations, self._transports, quick=quick)
        if not prune:
            return report
        return attrs.evolve(report, prune=self._prune(image, report, act=yes))

    def _prune(
        self, image: Image, report: VerifyReport, *, act: bool, locpick_only: bool = False
    ) -> PruneResult:
        """Plan (and with ``act`` carry out) removing the locations the report condemns."""
        remove, notes = plan_prune(image, report, now=time.time(), locpick_only=locpick_only)
        removed: list[str] = []
        if act and remove:
            api = self.glance_locations()
            for loc in remove:
                try:
                    if api.remove(image.id, loc.url):
                        removed.append(loc.display_url)
                except PublishError as exc:
                    notes.append(f"not removed: {loc.display_url}: {SCRUB(str(exc))}")
        return PruneResult(
            dry_run=not act,
            remove=tuple(loc.display_url for loc in remove),
            removed=tuple(removed),
            notes=tuple(notes),
        )

    def reap(
        self, image_ids: Sequence[str] = (), *, dry_run: bool = False
    ) -> list[tuple[str, PruneResult]]:
        """Remove expired and unreachable locpick cache locations from Glance.

        Only locations carrying the locpick marker are ever removed (never the operator's
        own), and nothing of an image unless one verified copy (full hash) remains. Without
        ``image_ids`` every image the token can list is walked (Glance paging followed).
        Returns (image id, what was or would be removed) for each image with locpick copies.
        """
        if not image_ids:
            image_ids = self.glance_locations().images_with_locpick_copies()
        done: list[tuple[str, PruneResult]] = []
        for image_id in image_ids:
            try:
                image = self.image(image_id)
            except (ImageNotFound, ImageNotActive) as exc:  # deleted or deactivated meanwhile
                note = f"skipped: {SCRUB(str(exc))}"
                done.append((image_id, PruneResult(dry_run=dry_run, notes=(note,))))
                continue
            if not any(is_locpick_copy(loc.metadata) for loc in image.locations):
                continue
            report = verify_replicas(image, image.locations, self._transports)
            done.append((image_id, self._prune(image, report, act=not dry_run, locpick_only=True)))
        return done


def _current_url(cache: NodeCache, public_url: str, image_id: str) -> str:
    """The capability URL this node registers for ``image_id`` under its current secret."""
    return cache_location_url(public_url, image_id, cache.token(image_id))


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
        return Reason(code_of(exc), _reason(exc)), None
    if rep is None:
        return _refused(transport.check(loc, image)), None
    return _refused(rep.reason), rep.describe()


def _refused(text: str | None) -> Reason | None:
    """A transport's own refusal (its ``check``), as a reason."""
    return Reason(Code.REFUSED, text) if text is not None else None


def _best_ttfb(scores: Sequence[Score]) -> float | None:
    """The fastest first byte (seconds) a probed, usable location showed, if any."""
    seen = [
        s.reasons.latency_ms / 1000
        for s in scores
        if s.usable and not s.reasons.not_probed and s.reasons.latency_ms is not None
    ]
    return min(seen, default=None)


def _all_failed(image: Image, attempts: Sequence[Attempt]) -> AllLocationsFailed:
    failed = "; ".join(f"{a.url}: {a.error}" for a in attempts if a.outcome != "ok")
    return AllLocationsFailed(
        f"image {image.id}: no location delivered a verified image ({failed or 'no locations'})",
        tuple(attempts),
    )


def _cache_error(cache: NodeCache, exc: BaseException) -> str:
    """One line for a failed cache step, naming the cache directory."""
    if isinstance(exc, OSError) and not isinstance(exc, LocpickError):
        return SCRUB(f"cache dir {cache.dir}: {exc.strerror or exc}")
    return SCRUB(str(exc))


def _reason(exc: BaseException) -> str:
    text = SCRUB(str(exc))
    return text.split(": ", 1)[1] if ": " in text else text
