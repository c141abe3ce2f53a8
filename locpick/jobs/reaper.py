"""Replica upkeep in Glance: verify every location of an image, prune the ones that are gone
or wrong (never the last verified copy), and reap expired or dead locpick cache locations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from locpick.cache.fill.fill import reap_dead_fills
from locpick.config.model import Config
from locpick.errors import ImageNotActive, ImageNotFound, InputError
from locpick.glance.lease import is_locpick_copy
from locpick.glance.locations import GlanceLocations, PublishError
from locpick.glance.vouch import FleetTrust
from locpick.jobs.replicas import plan_prune, verify_replicas
from locpick.jobs.session import Metadata, Session
from locpick.models import Image, Location, PruneResult, ReapResult, VerifyReport
from locpick.redact import SCRUB


class _Designated:
    """The session as a registrar whose removals are the designated reaper's."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def config(self) -> Config:
        return self.session.config

    @property
    def fleet(self) -> FleetTrust:
        return self.session.fleet

    def glance_locations(self) -> GlanceLocations:
        return self.session.glance_locations(designated=True)


class Reaper:
    """Verifies and prunes an image's locations; reaps stale locpick copies."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def verify(
        self,
        image_id: str,
        *,
        metadata: Metadata | None = None,
        quick: bool = False,
        prune: bool = False,
        yes: bool = False,
    ) -> VerifyReport:
        """Check every location, and plan or carry out a prune (:meth:`Client.verify`)."""
        if prune and quick:
            raise InputError("--prune needs the full hash check: drop --quick")
        if prune and metadata is not None:
            raise InputError("--prune changes Glance: give --glance-url, not --metadata")
        image = self.session.image(image_id, metadata=metadata)
        report = verify_replicas(image, image.locations, self.session.transports, quick=quick)
        if not prune:
            return report
        return attrs.evolve(report, prune=self.prune(image, report, act=yes))

    def prune(
        self, image: Image, report: VerifyReport, *, act: bool, locpick_only: bool = False
    ) -> PruneResult:
        """Plan (and with ``act`` carry out) removing the locations the report condemns.

        Every entry Glance lists is judged on its own (a tenant may list a node's
        URL twice, once with an expired lease): its URL's verdict plus its own metadata; a
        removal names that one entry by URL and metadata. This process is the designated
        remover (``verify --prune``, ``cache reap``): it may remove without a coordination
        backend; with one it takes the image's write lock."""
        api = self.session.glance_locations(designated=True)
        judged = attrs.evolve(image, locations=tuple(_entries(api.locations(image.id))))
        remove, notes = plan_prune(judged, report, now=time.time(), locpick_only=locpick_only)
        removed: list[str] = []
        if act and remove:
            for loc in remove:
                try:
                    if api.remove(
                        image.id,
                        loc.url,
                        metadata=loc.metadata,
                        locpick_only=is_locpick_copy(loc.metadata),
                    ):
                        removed.append(loc.display_url)
                except PublishError as exc:
                    notes.append(f"not removed: {loc.display_url}: {SCRUB(str(exc))}")
            notes.extend(api.problems)
        return PruneResult(
            dry_run=not act,
            remove=tuple(loc.display_url for loc in remove),
            removed=tuple(removed),
            notes=tuple(notes),
        )

    def reap(
        self,
        image_ids: Sequence[str] = (),
        *,
        dry_run: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> tuple[ReapResult, ...]:
        """Remove expired and unreachable locpick copies from Glance
        (:meth:`locpick.admin.Fleet.reap`)."""
        done: list[ReapResult] = []
        cache = self.session.node_cache(cache_dir, required=False)
        if cache is not None:  # this node's dead stream-through copies go first
            for line in reap_dead_fills(cache, _Designated(self.session), dry_run=dry_run):
                done.append(ReapResult("-", PruneResult(dry_run=dry_run, notes=(line,))))
        if not image_ids:
            image_ids = self.session.glance_locations(designated=True).images_with_locpick_copies()
        for image_id in image_ids:
            try:
                image = self.session.image(image_id)
            except (ImageNotFound, ImageNotActive) as exc:  # deleted or deactivated meanwhile
                note = f"skipped: {SCRUB(str(exc))}"
                done.append(ReapResult(image_id, PruneResult(dry_run=dry_run, notes=(note,))))
                continue
            if not any(is_locpick_copy(loc.metadata) for loc in image.locations):
                continue
            report = verify_replicas(image, image.locations, self.session.transports)
            pruned = self.prune(image, report, act=not dry_run, locpick_only=True)
            done.append(ReapResult(image_id, pruned))
        return tuple(done)


def _entries(raw: Sequence[Mapping[str, Any]]) -> Iterator[Location]:
    """The image's Glance locations as they are listed: duplicates kept, each with its own
    metadata."""
    for loc in raw:
        url, meta = loc.get("url"), loc.get("metadata")
        if isinstance(url, str) and url:
            yield Location(url, dict(meta) if isinstance(meta, Mapping) else {})
