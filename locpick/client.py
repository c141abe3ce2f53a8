"""The long-lived entry point: one Client holds the HTTP pool, probe cache and credentials.

A thin facade; each part has one job:

- :mod:`locpick.config` (``Environment``, ``Config``): the edge, environment and files read once;
- :mod:`locpick.jobs.session`: what the parts share (pool, transports, Keystone, history) and the
  image record;
- :mod:`locpick.jobs.ranking`: judge, probe (cached) and score an image's locations;
- :mod:`locpick.jobs.download`: one download as named steps (cache hit, rank, rounds, keep,
  journal);
- :mod:`locpick.jobs.cachesync`: the node cache ↔ Glance (publish, evict, reconcile, rotate);
- :mod:`locpick.jobs.reaper`: verify, prune and reap locations in Glance.

A consumer's calls (download, rank, verify) are :class:`Client`'s; an operator's (evict,
reconcile, rotate the node secret, prefetch, reap) are :class:`locpick.admin.Cache`'s and
:class:`locpick.admin.Fleet`'s, built on the same :class:`Connected` base.
"""

from __future__ import annotations

import os
import threading
from typing import Self

from locpick.cache.store import NodeCache
from locpick.choose.history import History
from locpick.config.env import Environment, resolve_config
from locpick.config.model import Config
from locpick.glance.locations import GlanceLocations
from locpick.glance.vouch import FleetTrust
from locpick.jobs.cachesync import CacheSync
from locpick.jobs.download import Download
from locpick.jobs.progress import ProgressCallback
from locpick.jobs.ranking import Ranker
from locpick.jobs.reaper import Reaper
from locpick.jobs.session import Metadata, Session
from locpick.models import Image, Ranking, Result, VerifyReport
from locpick.net.policy import NetPolicy
from locpick.report import Recorder
from locpick.transports.base import Context

__all__ = ["Client", "Connected"]


class Connected:
    """What every long-lived locpick object holds: the config, the environment read once, and
    one session (HTTP pool, transports, Keystone token, probe history); closed by ``with`` or
    :meth:`close`. Safe to share between threads."""

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
        """The configuration in use (after ``--insecure`` and the environment)."""
        return self._session.config

    @property
    def net(self) -> NetPolicy:
        """The connection policy: proxies, trust, forbidden networks."""
        return self._session.net

    @property
    def history(self) -> History:
        """Per-host outcomes that bias the ranking (persisted in ``history_file``)."""
        return self._session.history

    @property
    def fleet(self) -> FleetTrust:
        """Whose peer copies this client trusts and how it signs its own (``[fleet]``)."""
        return self._session.fleet

    @property
    def glance_url(self) -> str | None:
        """The Glance endpoint (given, ``OS_IMAGE_URL``, or found in the Keystone catalog)."""
        return self._session.glance_url

    @property
    def _ctx(self) -> Context:
        return self._session.ctx

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; the object is not used afterwards."""
        self._ranker.close()  # probes still going on in the background stop first
        self._session.close()

    # -- the node cache and Glance ------------------------------------------------------------
    def node_cache(
        self, cache_dir: str | os.PathLike[str] | None = None, *, required: bool = True
    ) -> NodeCache | None:
        """The node cache at ``cache_dir``, else ``[cache] dir``; None (or an error) if neither."""
        return self._session.node_cache(cache_dir, required=required)

    def glance_locations(self) -> GlanceLocations:
        """The Glance locations API of this endpoint (token renewed if Keystone)."""
        return self._session.glance_locations()


class Client(Connected):
    """A consumer's calls: download, rank, verify. Keeps its pooled connections, probe results
    and tokens across calls (use one per process, as with ``httpx.Client``); safe to share
    between threads; closed by ``with`` or :meth:`close`."""

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
        progress: ProgressCallback | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        register: bool | None = None,
        recorder: Recorder | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Fetch (or system-copy) the image to ``dest``, verified, atomically.

        ``progress``: called with a :class:`~locpick.models.Progress` as bytes arrive, from one
        thread, never going backwards, the last call (all bytes) made before this returns (the
        contract is :class:`~locpick.models.Progress`'s); if it raises, the download is aborted
        and that exception raised here. ``timeout``: seconds the whole download may take
        (``[transfer] total_timeout`` for this call); past it :class:`AllLocationsFailed`.
        ``cancel``: set it (from any thread) to stop the download: :class:`Cancelled` is
        raised, ``dest`` is untouched and the bytes fetched so far are kept for the next run.

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
            timeout=timeout,
            cancel=cancel,
        ).run()

    # -- replicas -------------------------------------------------------------------------------
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
