"""The long-lived entry point: one Client holds the HTTP pool, probe cache and credentials."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import cachetools

from locpick.auth import OpenStackAuth, auth_from_environment
from locpick.config import Config, resolve_config
from locpick.errors import ImageNotFound, InputError, UnverifiedImage
from locpick.fetch import Progress, fetch
from locpick.models import Image, Location, Probe, Ranking, Result, VerifyReport
from locpick.probe import probe_all
from locpick.redact import SCRUB
from locpick.replicas import verify_replicas
from locpick.score import Candidate, rank
from locpick.sources import fetch_glance_image, load_metadata
from locpick.transports import Context, Transports
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
    ) -> None:
        self.config = resolve_config(config)
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
    def rank_image(self, image: Image, *, for_download: bool = False) -> Ranking:
        """Score every location of an already-loaded image.

        ``for_download``: with a single usable location there is nothing to choose, so it is
        not probed (the probe would only delay the transfer).
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
            reason = transport.check(loc, image)
            shared = None
            if reason is None and isinstance(transport, FileTransport):
                _path, fs = transport.resolve(loc)
                shared = f"system copy from {fs.id} at {fs.mountpoint}"
            candidates.append(Candidate(loc, unusable=reason, shared_fs=shared))
            if reason is None:
                to_probe.append(loc)
        probes = {} if for_download and len(to_probe) <= 1 else self._probe(image, to_probe)
        candidates = [
            Candidate(c.location, c.unusable, probes.get(c.location), c.shared_fs, c.history)
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
        fresh = probe_all(image, missing, self._transports, self.config)
        with self._lock:
            for loc, probe in fresh.items():
                if probe.ok:
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
    ) -> Result:
        """Fetch (or system-copy) the image to ``dest``, verified, atomically."""
        image = self.image(image_id, metadata=metadata)
        if not image.has_hash:
            if not allow_unverified:
                raise UnverifiedImage(
                    f"image {image_id} has no checksum or os_hash_value; refusing to download "
                    "unverified bytes (pass --allow-unverified to accept a size-only check)"
                )
            log.warning("image %s has no hash: downloading UNVERIFIED (size check only)", image_id)
        ranking = self.rank_image(image, for_download=True)
        return fetch(
            image,
            ranking.scores,
            dest,
            self._transports,
            buffer_bytes=self.config.transfer.buffer_bytes,
            file_mode=self.config.security.file_mode,
            progress=progress,
            transfer=self.config.transfer,
        )

    def verify(
        self, image_id: str, *, metadata: Metadata | None = None, quick: bool = False
    ) -> VerifyReport:
        """Check every location: reachable, right size, and (unless quick) right hash."""
        image = self.image(image_id, metadata=metadata)
        return verify_replicas(image, image.locations, self._transports, quick=quick)


def _reason(exc: BaseException) -> str:
    text = SCRUB(str(exc))
    return text.split(": ", 1)[1] if ": " in text else text
