"""An operator's calls, apart from a consumer's: the node cache (:class:`Cache`) and the
locpick copies across the fleet (:class:`Fleet`).

Each returns frozen values (:class:`~locpick.models.CacheAction`,
:class:`~locpick.models.EvictResult`, :class:`~locpick.models.ReapResult`), never text; the CLI
formats them (``locpick cache ...``). Both hold a session like :class:`~locpick.client.Client`
(config, environment, pooled connections, Keystone token) and close it by ``with``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from locpick.cache.files import CacheEntry
from locpick.client import Connected
from locpick.config.env import Environment
from locpick.config.model import Config
from locpick.errors import ConfigError
from locpick.glance.locations import cache_location_url
from locpick.jobs.prefetch import Prefetch, PrefetchProgress, PrefetchReport, select_images
from locpick.models import CacheAction, EvictResult, ReapResult

__all__ = ["Cache", "Fleet"]


class Cache(Connected):
    """This node's cache and its registrations in Glance: list, evict, reconcile, rotate.

    ``cache_dir``: the cache directory, else ``[cache] dir``. The other arguments are
    :class:`~locpick.client.Client`'s.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        glance_url: str | None = None,
        token: str | None = None,
        insecure: bool = False,
        env: Environment | None = None,
    ) -> None:
        super().__init__(
            config=config, glance_url=glance_url, token=token, insecure=insecure, env=env
        )
        self.cache_dir = cache_dir

    def entries(self) -> tuple[CacheEntry, ...]:
        """Every verified cached copy, least recently used first."""
        cache = self.node_cache(self.cache_dir)
        assert cache is not None
        return tuple(cache.entries())

    def location_url(self, image_id: str, *, base: str | None = None) -> str:
        """The capability URL at which ``locpick serve`` offers the cached image here:
        ``{base or [cache] public_url}/images/{id}/{token}``. It is a secret (whoever holds
        it may read the image): never log it."""
        cache = self.node_cache(self.cache_dir)
        assert cache is not None
        public_url = base or self.config.cache.public_url
        if not public_url:
            raise ConfigError("no [cache] public_url: give base= (how other nodes reach serve)")
        return cache_location_url(public_url, image_id, cache.token(image_id))

    def evict(self, image_ids: Sequence[str]) -> EvictResult:
        """Remove these images from the cache and their locations from Glance.

        A location Glance refuses to remove is a warning in the result (``reconcile`` later
        repairs it); an id not in the cache is listed in ``missing``.
        """
        return self._sync.evict(image_ids, cache_dir=self.cache_dir)

    def prefetch(
        self,
        image_ids: Sequence[str] = (),
        *,
        tags: Sequence[str] = (),
        properties: Sequence[tuple[str, str]] = (),
        register: bool | None = None,
        jobs: int = 2,
        max_rate: float = 0,
        progress: PrefetchProgress | None = None,
    ) -> PrefetchReport:
        """Fetch images into the cache (and with ``register`` publish them in Glance).

        The images: ``image_ids``, plus every active image Glance lists with all of ``tags``
        and ``properties`` (key, value). One already cached is skipped; a run that was killed
        resumes its part files. ``jobs`` images at a time, ``max_rate`` bytes/s in all (0: no
        cap). ``progress`` sees an image's row each time it changes (one call at a time).
        Failures are rows of the report (``report.ok``), not exceptions; the run's state is
        kept in the cache dir for ``locpick serve``'s ``/status``.
        """
        ids = select_images(self._session, image_ids, tags=tags, properties=properties)
        return Prefetch(
            self._session,
            self._ranker,
            self._sync,
            ids,
            cache_dir=self.cache_dir,
            register=register,
            jobs=jobs,
            max_rate=max_rate,
            progress=progress,
        ).run()

    def reconcile(self) -> tuple[CacheAction, ...]:
        """Make Glance agree with the cache, both ways; returns what was done.

        Registered but not (validly) cached: the location is removed. Cached but not
        registered (with ``[cache] register``): it is added. A cached copy whose hash no
        longer matches Glance's record is evicted.
        """
        return self._sync.reconcile(cache_dir=self.cache_dir)

    def rotate_secret(self) -> tuple[CacheAction, ...]:
        """New node secret (every old capability URL refused at once), then re-register.

        Every entry that was registered gets its new URL in Glance and loses the old one
        (through :meth:`reconcile`); the first action is ``rotated``.
        """
        return self._sync.rotate_secret(cache_dir=self.cache_dir)


class Fleet(Connected):
    """The locpick copies registered in Glance by every node: reap the expired and dead ones.

    Arguments are :class:`~locpick.client.Client`'s.
    """

    def reap(
        self,
        image_ids: Sequence[str] = (),
        *,
        dry_run: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> tuple[ReapResult, ...]:
        """Remove expired and unreachable locpick cache locations from Glance.

        Only locations carrying the locpick marker are ever removed (never the operator's
        own), and nothing of an image unless one verified copy (full hash) remains. Without
        ``image_ids`` every image the token can list is walked (Glance paging followed).
        One result per image with locpick copies; with a node cache (``cache_dir`` or
        ``[cache] dir``) its dead fills come first (image id ``-``).
        """
        return self._reaper.reap(image_ids, dry_run=dry_run, cache_dir=cache_dir)
