"""Keeping a serving node's Glance registrations listed, and taking them back when it stops.

``locpick serve`` runs one :class:`Renewer`: a daemon thread that checks, once at start and
then every ``lease / 3`` seconds, that every cached copy this node has published (and, with
``[cache] register``, every cached copy) is listed in Glance, and appends it if it is not. It
never rewrites a listed entry (Glance has no compare-and-set, and a read-then-patch
renewal removed other entries): the node's liveness is its own answer when a client probes
it. Every few seconds it also deregisters copies still filling whose downloader died
(kill -9). ``deregister`` removes them when the node stops on SIGTERM/SIGINT. Both removals
need ``[fleet] coordination`` (one writer per image); without it they are left to
``locpick cache reap``. A node that dies without stopping stops answering: clients skip it
and ``cache reap`` removes it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from locpick.errors import InputError
from locpick.glance.locations import (
    PublishError,
    RemovalDeferred,
    cache_location_url,
    cache_metadata,
)
from locpick.redact import SCRUB

if TYPE_CHECKING:
    from locpick.cache.store import NodeCache
    from locpick.client import Client

log = logging.getLogger(__name__)

#: Seconds between looks for fills whose downloader died: their location leaves Glance then,
#: not at the end of its lease (a glob of the cache dir; Glance is called only for dead ones).
DEAD_FILL_EVERY = 5.0


class RenewalObserver(Protocol):
    """Told of leases and renewals (``locpick serve``: its ``/metrics`` and ``/status``)."""

    def lease(self, image_id: str, expires_at: float | None) -> None: ...

    def renewal(self, ok: bool) -> None: ...


class Renewer:
    """Renews this node's cache locations in the background while ``locpick serve`` runs."""

    def __init__(self, client: Client, cache: NodeCache) -> None:
        self.client = client
        self.cache = cache
        self.lease = client.config.cache.lease
        #: Seconds between renewals (a third of the lease: two may fail before it runs out).
        self.interval = self.lease / 3.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many renewal rounds ran (for logs and tests).
        self.rounds = 0
        #: Told each renewal's outcome and lease end (set by ``locpick serve``: its metrics).
        self.observer: RenewalObserver | None = None

    def _observed(self, image_id: str, ok: bool, expires_at: float | None = None) -> None:
        if self.observer is not None:
            self.observer.renewal(ok)
            if ok:
                self.observer.lease(image_id, expires_at)

    def _wanted(self) -> dict[str, str]:
        """Image id -> the location URL this node should have registered for it."""
        cfg = self.client.config.cache
        wanted = {}
        for entry in self.cache.entries():
            if entry.registered_url:
                wanted[entry.image_id] = entry.registered_url
            elif cfg.register and cfg.public_url:
                wanted[entry.image_id] = cache_location_url(
                    cfg.public_url, entry.image_id, self.cache.token(entry.image_id)
                )
        return wanted

    def renew_once(self) -> int:
        """Check every wanted registration is listed (append a missing one); returns how many
        are."""
        wanted = self._wanted()
        if not wanted:
            return 0
        try:
            api = self.client.glance_locations()
        except (InputError, PublishError) as exc:
            log.warning("leases not renewed: %s", SCRUB(str(exc)))
            for image_id in wanted:
                self._observed(image_id, False)
            return 0
        done = 0
        for image_id, url in sorted(wanted.items()):
            meta = self.client.fleet.sign(
                image_id, url, cache_metadata(self.client.config.topology)
            )
            started = time.time()
            try:
                state = api.ensure(image_id, url, meta)
            except (InputError, PublishError) as exc:
                log.warning("registration of %s not checked: %s", image_id, SCRUB(str(exc)))
                self._observed(image_id, False)
                continue
            if state == "capped":  # a leaf: the image lists enough copies of other nodes
                continue
            self._observed(image_id, True, started + self.lease)
            self.cache.set_registered(image_id, url)
            done += 1
        self.rounds += 1
        return done

    def reap_dead_fills(self) -> list[str]:
        """Deregister and remove fills whose downloader died (its record says so at once)."""
        from locpick.cache.fill.fill import reap_dead_fills

        done = reap_dead_fills(self.cache, self.client)
        for line in done:
            log.info("%s", line)
        return done

    def _run(self) -> None:
        due = 0.0
        while True:
            if time.monotonic() >= due:
                try:
                    self.renew_once()
                except Exception:  # a renewal bug must not kill the serving node
                    log.exception("lease renewal failed")
                due = time.monotonic() + self.interval
            try:
                self.reap_dead_fills()
            except Exception:
                log.exception("dead fills not reaped")
            wait = min(DEAD_FILL_EVERY, max(0.0, due - time.monotonic()))
            if self._stop.wait(wait):
                return

    def start(self) -> None:
        """Renew now, then every ``interval`` seconds, in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="locpick-renew", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def deregister(self) -> int:
        """Stop renewing and remove this node's locations from Glance; returns how many."""
        self.stop()
        registered = [e for e in self.cache.entries() if e.registered_url]
        if not registered:
            return 0
        try:
            api = self.client.glance_locations()
        except (InputError, PublishError) as exc:
            log.warning("locations not deregistered (`locpick cache reap` removes them): %s", exc)
            return 0
        removed = 0
        for entry in registered:
            assert entry.registered_url is not None
            try:
                api.remove(entry.image_id, entry.registered_url)
            except RemovalDeferred as exc:  # no coordination: left to `locpick cache reap`
                log.info("%s", SCRUB(str(exc)))
                continue
            except (InputError, PublishError) as exc:
                log.warning(
                    "location of %s not deregistered (`locpick cache reap` removes it): %s",
                    entry.image_id,
                    SCRUB(str(exc)),
                )
                continue
            self.cache.set_registered(entry.image_id, None)
            if self.observer is not None:
                self.observer.lease(entry.image_id, None)
            removed += 1
        log.info("deregistered %d cache location(s) from Glance", removed)
        return removed
