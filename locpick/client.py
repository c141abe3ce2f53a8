"""The long-lived entry point: one Client holds the HTTP pool, probe cache and credentials.

A thin facade; each part has one job:

- :mod:`locpick.config` (``Environment``, ``Config``): the edge, environment and files read once;
- :mod:`locpick.jobs.session`: what the parts share (pool, transports, Keystone, history) and the
  image record;
- :mod:`locpick.choose.ranking`: judge, probe (cached) and score an image's locations;
- :mod:`locpick.jobs.download`: one download as named steps (cache hit, rank, rounds, keep,
  journal);
- :mod:`locpick.jobs.cachesync`: the node cache ↔ Glance (publish, evict, reconcile, rotate);
- :mod:`locpick.jobs.reaper`: verify, prune and reap locations in Glance.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from locpick.cache.files import CacheEntry
from locpick.cache.store import NodeCache
from locpick.choose.history import History
from locpick.choose.ranking import Ranker
from locpick.config.env import Environment, resolve_config
from locpick.config.model import Config
from locpick.fetch.policy import Progress
from locpick.glance.locations import GlanceLocations
from locpick.jobs.cachesync import CacheSync
from locpick.jobs.download import Download
from locpick.jobs.reaper import Reaper
from locpick.jobs.session import Metadata, Session
from locpick.models import Image, PruneResult, Ranking, Result, VerifyReport
from locpick.net.policy import NetPolicy
from locpick.report import Recorder
from locpick.transports.base import Context

__all__ = ["Client"]


class Client:
    """Pooled connections, cached probes and tokens; safe to share between threads."""

    def __init__(
        self,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        glance_url: str | None = None,
        token: str | None = None,
        insecure: bool = False,
        env: Environment | None = None,
    ) -> None:
        """``env``: the environment to read (``OS_*``, ``LOCPICK_CONFIG``, proxies, TLS);
        default the process environment, read once here."""
        env = env if env is not None else Environment.from_os()
        self._session = Session(
            resolve_config(config, env),
            env,
            glance_url=glance_url,
            token=token,
            insecure=insecure,
        )
        self._ranker = Ranker(self._session)
        self._sync = CacheSync(self._session)
        self._reaper = Reaper(self._session)

    @property
    def config(self) -> Config:
        return self._session.config

    @property
    def net(self) -> NetPolicy:
        return self._session.net

    @property
    def history(self) -> History:
        return self._session.history

    @property
    def glance_url(self) -> str | None:
        return self._session.glance_url

    @property
    def _ctx(self) -> Context:
        return self._session.ctx

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # -- sources and decisions ----------------------------------------------------------------
    def image(self, image_id: str, *, metadata: Metadata | None = None) -> Image:
        """The validated image record, from ``metadata`` if given, else from Glance."""
        return self._session.image(image_id, metadata=metadata)

    def rank_image(
        self,
        image: Image,
        *,
        for_download: bool = False,
        dest: str | os.PathLike[str] | None = None,
    ) -> Ranking:
        """Score every location of an already-loaded image.

        ``for_download``: with a single usable location there is nothing to choose, so it is
        not probed (the probe would only delay the transfer); nor for a swarm download, whose
        first piece from each copy is the probe. ``dest``: where it will go (a
        shared filesystem reports whether it is the same device).
        """
        return self._ranker.rank_image(image, for_download=for_download, dest=dest)

    def rank(self, image_id: str, *, metadata: Metadata | None = None) -> Ranking:
        """Every location of the image, best first, each with why."""
        return self._ranker.explained(self.image(image_id, metadata=metadata))

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
        cancel: threading.Event | None = None,
    ) -> Result:
        """Fetch (or system-copy) the image to ``dest``, verified, atomically.

        With a node cache (``cache_dir`` or ``[cache] dir``) a verified cached copy is copied
        out without any network transfer (``method="cache"``), and a fresh download is kept
        in the cache; with ``register`` (or ``[cache] register``) the cached copy is published
        as a location of the image in Glance. ``recorder`` collects the operator's report
        (``recorder.report`` afterwards, delivered or not); with a node cache the report is
        also journalled there for ``locpick serve``'s ``/status``.

        ``progress(done, total)`` is called from the calling thread only (never from the
        engine's connection threads), at most every ~0.1 s, with ``done`` never decreasing;
        an exception it raises ends the download (dest untouched, the part kept) and
        propagates. ``cancel``: set the event (from any thread) to end the download within a
        fraction of a second with :class:`~locpick.errors.Cancelled` (exit code 3); the part
        file is kept so that the next call resumes. ``[transfer] total_timeout`` ends it the
        same way with :class:`~locpick.errors.AllLocationsFailed` naming the deadline.
        """
        return Download(
            self._session,
            self._ranker,
            self._sync,
            image_id,
            dest,
            metadata=metadata,
            allow_unverified=allow_unverified,
            progress=progress,
            cache_dir=cache_dir,
            register=register,
            recorder=recorder,
            cancel=cancel,
        ).run()

    # -- the node cache and Glance ------------------------------------------------------------
    def node_cache(
        self, cache_dir: str | os.PathLike[str] | None = None, *, required: bool = True
    ) -> NodeCache | None:
        """The node cache at ``cache_dir``, else ``[cache] dir``; None (or an error) if neither."""
        return self._session.node_cache(cache_dir, required=required)

    def glance_locations(self) -> GlanceLocations:
        """The Glance locations API of this client's endpoint (token renewed if Keystone)."""
        return self._session.glance_locations()

    def evict(
        self, image_ids: Sequence[str], *, cache_dir: str | os.PathLike[str] | None = None
    ) -> tuple[list[CacheEntry], list[str]]:
        """Evict entries (and unregister their locations); returns (evicted, warnings)."""
        return self._sync.evict(image_ids, cache_dir=cache_dir)

    def reconcile(self, *, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """Make Glance agree with the cache, both ways; returns what was done, one line each.

        Registered but not (validly) cached: the location is removed. Cached but not
        registered (with ``[cache] register``): it is added. A cached copy whose hash no
        longer matches Glance's record is evicted.
        """
        return self._sync.reconcile(cache_dir=cache_dir)

    def rotate_secret(self, *, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """New node secret (every old capability URL refused at once), then re-register.

        Every entry that was registered gets its new URL in Glance and loses the old one
        (through :meth:`reconcile`); returns what was done, one line each.
        """
        return self._sync.rotate_secret(cache_dir=cache_dir)

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
        return self._reaper.verify(image_id, metadata=metadata, quick=quick, prune=prune, yes=yes)

    def reap(
        self,
        image_ids: Sequence[str] = (),
        *,
        dry_run: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> list[tuple[str, PruneResult]]:
        """Remove expired and unreachable locpick cache locations from Glance.

        Only locations carrying the locpick marker are ever removed (never the operator's
        own), and nothing of an image unless one verified copy (full hash) remains. Without
        ``image_ids`` every image the token can list is walked (Glance paging followed).
        Returns (image id, what was or would be removed) for each image with locpick copies.
        With a node cache (``cache_dir`` or ``[cache] dir``) its dead fills go first (``-``).
        """
        return self._reaper.reap(image_ids, dry_run=dry_run, cache_dir=cache_dir)
