"""One download, as named steps: the image record → a node-cache hit → rank → fetch in probe
rounds → keep (and publish) the verified copy → journal the report.

``Download.run`` calls the steps in that order; each is one method (``load_image``,
``open_cache``, ``cache_hit``, ``require_hash``, ``transfer``, ``keep``, ``finished`` /
``failed``), so a change to one part of the flow goes into one method.
:func:`fetch_in_rounds` is the fall-back loop over locations left ``not-probed``; the node
cache's side (a hit copied out, a verified copy kept) is ``locpick.jobs.cachestep``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import attrs

from locpick.cache import journal
from locpick.cache.fill.fill import Fill, aborting, open_fill
from locpick.cache.fill.tee import Tee
from locpick.cache.store import NodeCache
from locpick.choose import storm
from locpick.choose.ranking import Ranker, best_ttfb, classifier
from locpick.config.model import TransferConfig
from locpick.errors import AllLocationsFailed, ConfigError, LocpickError, UnverifiedImage
from locpick.fetch.policy import Progress
from locpick.fetch.transfer import fetch
from locpick.jobs.cachestep import from_cache, keep_in_cache
from locpick.jobs.cachesync import CacheSync
from locpick.jobs.session import Metadata, Session
from locpick.models import Attempt, CacheStep, Image, Result, Score
from locpick.report import DownloadReport, Recorder

log = logging.getLogger("locpick")


class Download:
    """Fetch (or system-copy, or copy out of the node cache) one image to ``dest``, verified."""

    def __init__(
        self,
        session: Session,
        ranker: Ranker,
        sync: CacheSync,
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
    ) -> None:
        self.session, self.ranker, self.sync = session, ranker, sync
        #: Set by the caller to end the download (``Cancelled``, the part kept for resume).
        self.cancel = cancel
        self.config = session.config
        self.image_id, self.dest, self.metadata = image_id, dest, metadata
        self.allow_unverified, self.progress = allow_unverified, progress
        self.cache_dir, self.register = cache_dir, register
        self.rec = recorder if recorder is not None else Recorder(image_id)
        #: Set by ``open_cache``: the node cache (if any) and whether to publish into Glance.
        self.cache: NodeCache | None = None
        self.publish = False

    def run(self) -> Result:
        """Every step; the report is journalled delivered or not."""
        try:
            result = self.deliver()
        except LocpickError as exc:
            self.failed(exc)
            raise
        self.finished(result)
        return result

    def deliver(self) -> Result:
        image = self.load_image()
        self.open_cache()
        hit = self.cache_hit(image)
        if hit is not None:
            return hit
        self.require_hash(image)
        fill = open_fill(self.session, self.cache, image, self.publish)  # registered now
        with aborting(fill):
            result = self.transfer(image, fill)
        if self.cache is not None and result.verified:
            return attrs.evolve(result, cache=self.keep(image, fill))
        if fill is not None:
            fill.abort("download not verified")
        return result

    def load_image(self) -> Image:
        """The image record (``metadata`` or Glance), after the storm start jitter."""
        storm.wait_start(self.config.herd)
        return self.session.image(self.image_id, metadata=self.metadata)

    def open_cache(self) -> None:
        """The node cache to use, and whether a copy kept there is registered in Glance."""
        self.cache = self.session.node_cache(self.cache_dir, required=False)
        self.publish = self.config.cache.register if self.register is None else self.register
        if self.publish and self.cache is None:
            raise ConfigError("--register needs a node cache: give --cache-dir or [cache] dir")
        if self.publish and not self.config.cache.public_url:
            raise ConfigError(
                "--register needs [cache] public_url (how other nodes reach locpick serve here)"
            )

    def cache_hit(self, image: Image) -> Result | None:
        """Copy a verified cached copy out to ``dest``, counting the hit or miss."""
        if self.cache is None:
            return None
        hit = from_cache(
            self.cache,
            image,
            self.dest,
            file_mode=self.config.security.file_mode,
            sync=self.sync,
            publish=self.publish,
        )
        if hit is not None:
            journal.bump(self.cache.dir, hits=1)
        else:
            journal.bump(self.cache.dir, misses=1)
        return hit

    def require_hash(self, image: Image) -> None:
        """Refuse an image without a hash unless ``allow_unverified`` (then warn)."""
        if image.has_hash:
            return
        if not self.allow_unverified:
            raise UnverifiedImage(
                f"image {image.id} has no checksum or os_hash_value; refusing to download "
                "unverified bytes (pass --allow-unverified to accept a size-only check)"
            )
        log.warning("image %s has no hash: downloading UNVERIFIED (size check only)", image.id)

    def transfer(self, image: Image, fill: Fill | None = None) -> Result:
        """Rank the locations (in a boot storm, from this node's place among the filling
        copies), then fetch in rounds until one delivers a verified copy (``fill``: every
        write mirrored into the node cache's filling copy, registered as ``fill.url``)."""
        tried = fill is not None and self.publish
        reload = None
        if tried and self.metadata is None:
            reload = lambda: self.session.image(image.id)  # noqa: E731 - the one refresh
        image, plan = storm.prepare(
            image, self.config, mine=fill.url if fill is not None else None, reload=reload
        )
        ranking = self.ranker.rank_image(
            image, for_download=True, dest=self.dest, probe=plan.parent is None
        )
        ranking = attrs.evolve(ranking, scores=storm.arrange(ranking.scores, plan))
        self.rec.ranked(ranking)
        transfer = storm.transfer_for(self.config.transfer, plan)
        tee = fill.tee if fill is not None else None
        return fetch_in_rounds(
            image,
            ranking.scores,
            lambda scores: self.fetch_once(image, scores, tee, transfer),
            self.ranker,
        )

    def fetch_once(
        self,
        image: Image,
        scores: Sequence[Score],
        tee: Tee | None = None,
        transfer: TransferConfig | None = None,
    ) -> Result:
        """One pass of the fetcher over ``scores`` (in rank order)."""
        return fetch(
            image,
            scores,
            self.dest,
            self.session.transports,
            buffer_bytes=self.config.transfer.buffer_bytes,
            file_mode=self.config.security.file_mode,
            progress=self.rec.progress(self.progress),
            transfer=transfer or self.config.transfer,
            observer=self.rec.observer(self.session.history.record),
            topology_tolerance=self.config.scoring.topology_tolerance,
            classify=classifier(self.config),
            cancel=self.cancel,
            max_bytes=self.config.security.max_image_bytes,
            tee=tee,
        )

    def keep(self, image: Image, fill: Fill | None = None) -> CacheStep:
        """Keep a verified download in the node cache (see :func:`keep_in_cache`)."""
        assert self.cache is not None
        return keep_in_cache(self.cache, image, self.dest, fill, self.sync, self.publish)

    def failed(self, exc: LocpickError) -> None:
        """Journal the report of a download that did not deliver."""
        self.journal(self.rec.fail(exc))

    def finished(self, result: Result) -> None:
        """Journal and log the report of a delivered download."""
        report = self.rec.finish(result)
        self.journal(report)
        log.info(
            "downloaded %s: %d bytes from %s in %.2fs",
            self.image_id,
            report.bytes,
            report.chosen_host,
            report.seconds,
            extra={
                "event": "download",
                "image": self.image_id,
                "host": report.chosen_host,
                "bytes": report.bytes,
                "seconds": round(report.seconds, 4),
            },
        )

    def journal(self, report: DownloadReport) -> None:
        """The report, into the node cache's journal (for ``locpick serve``'s ``/status``)."""
        directory = self.cache_dir if self.cache_dir is not None else self.config.cache.dir
        if directory and os.path.isdir(os.path.join(directory, "images")):
            journal.record(directory, report)


def fetch_in_rounds(
    image: Image,
    scores: Sequence[Score],
    fetch_once: Callable[[Sequence[Score]], Result],
    ranker: Ranker,
) -> Result:
    """Fetch from the probed locations; when every one has failed, probe the next round of
    ``not-probed`` ones (over the probe budget) and fetch from those, and so on; Glance's
    /file stays the last resort. So a download fails only when every location was really
    tried or ruled out, and many silent locations cannot hide a good one."""
    last = [s for s in scores if s.location.kind == "glance-file"]
    scores = [s for s in scores if s.location.kind != "glance-file"]
    earlier: list[Attempt] = []
    best = best_ttfb(scores)
    while True:
        later = [s for s in scores if s.usable and s.reasons.not_probed]
        now = [s for s in scores if not s.reasons.not_probed] + ([] if later else last)
        try:
            result = fetch_once(now)
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
        scores = ranker.probe_round(image, [s.location for s in later], best)
        if sum(s.reasons.not_probed for s in scores) >= len(later):  # no progress: give up
            raise _all_failed(image, earlier)
        best = min((b for b in (best, best_ttfb(scores)) if b is not None), default=None)


def _all_failed(image: Image, attempts: Sequence[Attempt]) -> AllLocationsFailed:
    failed = "; ".join(f"{a.url}: {a.error}" for a in attempts if a.outcome != "ok")
    return AllLocationsFailed(
        f"image {image.id}: no location delivered a verified image ({failed or 'no locations'})",
        tuple(attempts),
    )
