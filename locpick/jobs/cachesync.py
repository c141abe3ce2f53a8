"""The node cache and Glance agree: publish a cached copy as a location of its image,
unpublish evicted ones, evict, reconcile both ways, rotate the node secret.

A refusal from Glance while publishing is a warning (the cache keeps working); ``reconcile``
repairs whatever drifted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from locpick.cache.files import CacheEntry
from locpick.cache.store import NodeCache
from locpick.errors import ConfigError, ImageNotFound, InputError, LocpickError
from locpick.glance.locations import (
    GlanceLocations,
    PublishError,
    RemovalDeferred,
    cache_location_url,
    cache_metadata,
)
from locpick.jobs.session import Session
from locpick.models import CacheAction, EvictResult, Image
from locpick.redact import SCRUB, redact_url

log = logging.getLogger(__name__)


class CacheSync:
    """Keeps this node's cache registrations in Glance in step with the cache."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def publish(self, cache: NodeCache, image: Image, entry: CacheEntry | None = None) -> None:
        """Register the cached copy in Glance; a refusal is a warning, the cache keeps working."""
        public_url = self.session.config.cache.public_url
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
            api = self.session.glance_locations()
            if entry.registered_url:  # made with a rotated secret: replace it
                self._remove(api, image.id, entry.registered_url)
            api.add(image.id, url, self.cache_metadata(image.id, url))
        except (PublishError, InputError) as exc:
            log.warning("not registered, keeping a plain cache: %s", SCRUB(str(exc)))
            return
        cache.set_registered(image.id, url)

    @staticmethod
    def _remove(api: GlanceLocations, image_id: str, url: str) -> bool:
        """Remove this node's ``url`` (its one entry); a refusal (no coordination, several
        entries) is a warning and leaves it to ``cache reap``."""
        try:
            return api.remove(image_id, url) > 0
        except PublishError as exc:
            log.warning("%s", SCRUB(str(exc)))
            return False

    def cache_metadata(self, image_id: str, url: str) -> dict[str, str]:
        """Metadata of this node's registration of ``url``: topology and marker (no lease: a
        registration is never rewritten to renew one), signed with the fleet key
        (``[fleet] key_file``) so that peers trust it."""
        return self.session.fleet.sign(image_id, url, cache_metadata(self.session.config.topology))

    def unpublish(self, evicted: Sequence[CacheEntry]) -> list[str]:
        """Remove evicted copies' locations from Glance; returns warnings (also logged)."""
        problems = []
        for entry in evicted:
            if not entry.registered_url:
                continue
            try:
                self.session.glance_locations().remove(entry.image_id, entry.registered_url)
            except RemovalDeferred as exc:  # no coordination: `cache reap` removes it
                log.info("%s", SCRUB(str(exc)))
            except (PublishError, InputError) as exc:
                text = (
                    f"evicted {entry.image_id} but its location is still in Glance "
                    f"({SCRUB(str(exc))}); run `locpick cache reap`"
                )
                log.warning("%s", text)
                problems.append(text)
        return problems

    def evict(
        self, image_ids: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None
    ) -> EvictResult:
        """Evict entries and unregister their locations (:meth:`locpick.admin.Cache.evict`)."""
        cache = self.session.node_cache(cache_dir)
        assert cache is not None
        evicted = [e for e in (cache.evict(i) for i in image_ids) if e is not None]
        gone = {e.image_id for e in evicted}
        return EvictResult(
            evicted=tuple(sorted(gone)),
            missing=tuple(i for i in image_ids if i not in gone),
            warnings=tuple(self.unpublish(evicted)),
        )

    def reconcile(
        self, *, cache_dir: str | os.PathLike[str] | None = None
    ) -> tuple[CacheAction, ...]:
        """Make Glance agree with the cache, both ways (:meth:`locpick.admin.Cache.reconcile`)."""
        cache = self.session.node_cache(cache_dir)
        assert cache is not None
        public_url = self.session.config.cache.public_url
        if not public_url:
            raise ConfigError("cache reconcile needs [cache] public_url (this node's serve URL)")
        api = self.session.glance_locations()
        prefix = public_url.rstrip("/") + "/images/"
        done: list[CacheAction] = []
        registered = api.images_with_location_prefix(prefix)
        for image_id, urls in sorted(registered.items()):
            entry = cache.entry(image_id)
            current = _current_url(cache, public_url, image_id)
            for url in urls:
                if entry is not None and url == current:
                    if entry.registered_url != url:
                        cache.set_registered(image_id, url)
                    continue
                why = "not in the cache" if entry is None else "not this node's current URL"
                if self._remove(api, image_id, url):
                    done.append(CacheAction("unregistered", image_id, redact_url(url), why))
                else:
                    done.append(CacheAction("left-for-reap", image_id, redact_url(url), why))
        for entry in cache.entries():
            url = _current_url(cache, public_url, entry.image_id)
            try:
                image = self.session.image(entry.image_id)
            except ImageNotFound:
                cache.evict(entry.image_id)
                done.append(CacheAction("evicted", entry.image_id, reason="no longer in Glance"))
                continue
            if cache.lookup(image) is None:
                cache.evict(entry.image_id)
                if url in registered.get(entry.image_id, []):
                    self._remove(api, entry.image_id, url)
                why = "its hash no longer matches Glance's"
                done.append(CacheAction("evicted", entry.image_id, reason=why))
                continue
            if image.visibility is not None:
                cache.update_meta(entry.image_id, visibility=image.visibility)
            if url in registered.get(entry.image_id, []):
                continue
            was_registered = bool(entry.registered_url)
            if was_registered:
                cache.set_registered(entry.image_id, None)
            if self.session.config.cache.register or was_registered:
                api.add(entry.image_id, url, self.cache_metadata(entry.image_id, url))
                cache.set_registered(entry.image_id, url)
                done.append(CacheAction("registered", entry.image_id, redact_url(url)))
        return tuple(done)

    def rotate_secret(
        self, *, cache_dir: str | os.PathLike[str] | None = None
    ) -> tuple[CacheAction, ...]:
        """New node secret, then re-register (:meth:`locpick.admin.Cache.rotate_secret`)."""
        cache = self.session.node_cache(cache_dir)
        assert cache is not None
        if not self.session.config.cache.public_url:
            raise ConfigError("cache rotate-secret needs [cache] public_url (this node's URL)")
        cache.rotate_secret()
        return (CacheAction("rotated"), *self.reconcile(cache_dir=cache_dir))


def _current_url(cache: NodeCache, public_url: str, image_id: str) -> str:
    """The capability URL this node registers for ``image_id`` under its current secret."""
    return cache_location_url(public_url, image_id, cache.token(image_id))


def cache_error(cache: NodeCache, exc: BaseException) -> str:
    """One line for a failed cache step, naming the cache directory."""
    if isinstance(exc, OSError) and not isinstance(exc, LocpickError):
        return SCRUB(f"cache dir {cache.dir}: {exc.strerror or exc}")
    return SCRUB(str(exc))
