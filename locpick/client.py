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

from locpick.auth import OpenStackAuth, auth_from_environment
from locpick.cache import CacheEntry, NodeCache, copy_out
from locpick.config import Config, resolve_config
from locpick.errors import (
    AllLocationsFailed,
    ConfigError,
    ImageNotFound,
    InputError,
    LocationError,
    LocpickError,
    UnverifiedImage,
)
from locpick.fetch import Progress, fetch
from locpick.history import History
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
from locpick.probe import probe_and_measure
from locpick.publish import (
    GlanceLocations,
    PublishError,
    cache_location_url,
    cache_metadata,
)
from locpick.redact import SCRUB, register_env_secrets
from locpick.replicas import plan_prune, verify_replicas
from locpick.score import Candidate, rank
from locpick.sources import fetch_glance_image, load_metadata
from locpick.transports import Context, Transports
from locpick.transports.base import tls_verify
from locpick.transports.file import FileTransport

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
        if insecure:
            self.config = attrs.evolve(self.config, tls=attrs.evolve(self.config.tls, verify=False))
        tls_verify(self.config)  # a bad [tls] ca_file is a config error now, not per location
        if not self.config.tls.verify:
            log.warning(
                "TLS certificate verification is OFF (--insecure / [tls] verify = false): "
                "any host on the path can impersonate image locations and Glance"
            )
        if glance_url is None:
            glance_url = os.environ.get("OS_IMAGE_URL") or None
        if token is None:
            token = os.environ.get("OS_AUTH_TOKEN") or None
        SCRUB.add(token)
        self.glance_url = glance_url
        self._ctx = Context(self.config, glance_url=glance_url, token=token)
        #: Keystone (OS_AUTH_URL / OS_CLOUD) when the token or the endpoint must come from it.
        self._auth: OpenStackAuth | None = None
        if not (token and glance_url):
            self._auth = auth_from_environment(
                os.environ,
                token=token,
                ca_file=self.config.tls.ca_file,
                verify=self.config.tls.verify,
                timeout=max(30.0, self.config.transfer.connect_timeout),
            )
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
    ) -> Ranking:
        """Score every location of an already-loaded image.

        ``for_download``: with a single usable location there is nothing to choose, so it is
        not probed (the probe would only delay the transfer). ``dest``: where it will go (a
        shared filesystem reports whether it is the same device).
        """
        candidates: list[Candidate] = []
        to_probe: list[Location] = []
        for loc in image.locations:
            try:
                transport = self._transports.for_location(loc)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - any refusal makes just this one unusable
                candidates.append(Candidate(loc, unusable=_reason(exc)))
                continue
            shared = None
            if isinstance(transport, FileTransport):
                reason, shared = _shared_fs(transport, loc, image, dest)
            else:
                reason = transport.check(loc, image)
            candidates.append(Candidate(loc, unusable=reason, shared_fs=shared))
            if reason is None:
                to_probe.append(loc)
        probes = {} if for_download and len(to_probe) <= 1 else self._probe(image, to_probe)
        known = self.history.entries()
        candidates = [
            attrs.evolve(
                c,
                probe=probes.get(c.location),
                history=self.history.lookup(c.location, known) if c.unusable is None else None,
            )
            for c in candidates
        ]
        for url, why in image.rejected:
            candidates.append(Candidate(Location(url=url), unusable=why))
        return Ranking(image=image, scores=rank(image, candidates, self.config))

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
                if probe.ok and not probe.not_probed:
                    self._probe_cache[(loc.url, image.size)] = probe
        return found | fresh

    def rank(self, image_id: str, *, metadata: Metadata | None = None) -> Ranking:
        """Every location of the image, best first, each with why."""
        return self.rank_image(self.image(image_id, metadata=metadata))

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
    ) -> Result:
        """Fetch (or system-copy) the image to ``dest``, verified, atomically.

        With a node cache (``cache_dir`` or ``[cache] dir``) a verified cached copy is copied
        out without any network transfer (``method="cache"``), and a fresh download is kept
        in the cache; with ``register`` (or ``[cache] register``) the cached copy is published
        as a location of the image in Glance.
        """
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
                return hit
        if not image.has_hash:
            if not allow_unverified:
                raise UnverifiedImage(
                    f"image {image_id} has no checksum or os_hash_value; refusing to download "
                    "unverified bytes (pass --allow-unverified to accept a size-only check)"
                )
            log.warning("image %s has no hash: downloading UNVERIFIED (size check only)", image_id)
        ranking = self.rank_image(image, for_download=True, dest=dest)
        result = self._fetch_in_rounds(image, ranking.scores, dest, progress)
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
                result = self._fetch(image, now, dest, progress)
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
    ) -> Result:
        return fetch(
            image,
            scores,
            dest,
            self._transports,
            buffer_bytes=self.config.transfer.buffer_bytes,
            file_mode=self.config.security.file_mode,
            progress=progress,
            transfer=self.config.transfer,
            observer=self.history.record,
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
        probes = probe_and_measure(image, locations, self._transports, config)
        known = self.history.entries()
        candidates = [
            Candidate(loc, probe=probes.get(loc), history=self.history.lookup(loc, known))
            for loc in locations
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
        entry = cache.lookup(image)
        if entry is None:
            return None
        if not copy_out(entry, dest, mode=self.config.security.file_mode):
            return None
        cache.touch(image.id)
        step = CacheStep("hit")
        if publish:
            try:
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
        url = cache_location_url(public_url, image.id)
        if entry is None:
            entry = cache.entry(image.id)
        if entry is None or entry.registered_url == url:
            return
        try:
            self.glance_locations().add(image.id, url, cache_metadata(self.config.topology))
        except (PublishError, InputError) as exc:
            log.warning("not registered, keeping a plain cache: %s", SCRUB(str(exc)))
            return
        cache.set_registered(image.id, url)

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
            for url in urls:
                if entry is not None and url == cache_location_url(public_url, image_id):
                    if entry.registered_url != url:
                        cache.set_registered(image_id, url)
                    continue
                api.remove(image_id, url)
                done.append(f"unregistered {image_id}: {url} (not in the cache)")
        for entry in cache.entries():
            url = cache_location_url(public_url, entry.image_id)
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
            if url in registered.get(entry.image_id, []):
                continue
            if entry.registered_url:
                cache.set_registered(entry.image_id, None)
            if self.config.cache.register:
                api.add(entry.image_id, url, cache_metadata(self.config.topology))
                cache.set_registered(entry.image_id, url)
                done.append(f"registered {entry.image_id}: {url}")
        return done

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
        remove, notes = plan_prune(image, report)
        removed: list[str] = []
        if yes and remove:
            api = self.glance_locations()
            for loc in remove:
                try:
                    if api.remove(image.id, loc.url):
                        removed.append(loc.display_url)
                except PublishError as exc:
                    notes.append(f"not removed: {loc.display_url}: {SCRUB(str(exc))}")
        result = PruneResult(
            dry_run=not yes,
            remove=tuple(loc.display_url for loc in remove),
            removed=tuple(removed),
            notes=tuple(notes),
        )
        return attrs.evolve(report, prune=result)


def _shared_fs(
    transport: FileTransport, loc: Location, image: Image, dest: str | os.PathLike[str] | None
) -> tuple[str | None, str | None]:
    """(unusable reason, ``shared_fs`` reason) of a file:// location."""
    dest_dir = None if dest is None else os.path.dirname(os.path.abspath(dest))
    try:
        rep = transport.report(loc, image, dest_dir)
    except LocationError as exc:
        return _reason(exc), None
    return rep.reason, rep.describe()


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
