"""One download, as named steps: the image record → a node-cache hit → rank → fetch in probe
rounds → keep (and publish) the verified copy → journal the report.

``Download.run`` calls the steps in that order; each is one method (``load_image``,
``open_cache``, ``cache_hit``, ``require_hash``, ``transfer``, ``keep``, ``finished`` /
``failed``), so a change to one part of the flow goes into one method. Between steps (and as
bytes arrive on the caller's thread) ``check`` honours the caller's ``cancel`` event and
``timeout``; the caller's ``progress`` callback is fed through a ``ProgressRelay``.
:func:`fetch_in_rounds` is the fall-back loop over locations left ``not-probed``; the node
cache's side (a hit copied out, a verified copy kept) is ``locpick.jobs.cachestep``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from locpick.cache import journal
from locpick.cache.fill.fill import Fill, aborting, open_fill
from locpick.cache.fill.tee import Tee
from locpick.cache.store import NodeCache
from locpick.choose import storm
from locpick.config.model import TransferConfig
from locpick.errors import AllLocationsFailed, Cancelled, ConfigError, LocpickError, UnverifiedImage
from locpick.fetch.transfer import fetch
from locpick.jobs.cachestep import from_cache, keep_in_cache
from locpick.jobs.cachesync import CacheSync
from locpick.jobs.progress import ProgressCallback, ProgressRelay
from locpick.jobs.ranking import Ranker, best_ttfb, classifier
from locpick.jobs.session import Metadata, Session
from locpick.models import Attempt, CacheStep, Image, Result, Score
from locpick.report import DownloadReport, Recorder

log = logging.getLogger(__name__)


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
        progress: ProgressCallback | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        register: bool | None = None,
        recorder: Recorder | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.session, self.ranker, self.sync = session, ranker, sync
        self.config = session.config
        if timeout is not None:  # this download's deadline: the engine's total_timeout
            if not timeout > 0:
                raise ConfigError(f"timeout {timeout!r}: must be a number of seconds > 0")
            transfer = attrs.evolve(self.config.transfer, total_timeout=float(timeout))
            self.config = attrs.evolve(self.config, transfer=transfer)
        self.image_id, self.dest, self.metadata = image_id, dest, metadata
        self.allow_unverified, self.progress = allow_unverified, progress
        self.cache_dir, self.register = cache_dir, register
        self.timeout, self.cancel = timeout, cancel
        self.rec = recorder if recorder is not None else Recorder(image_id)
        #: Set by ``open_cache``: the node cache (if any) and whether to publish into Glance.
        self.cache: NodeCache | None = None
        self.publish = False
        #: Set by ``run``: the caller's progress relay, the thread and the deadline of the call.
        self.relay: ProgressRelay | None = None
        self.owner: int | None = None
        self.deadline: float | None = None

    def run(self) -> Result:
        """Every step; the report is journalled delivered or not."""
        self.owner = threading.get_ident()
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout
        if self.progress is not None:
            self.relay = ProgressRelay(self.image_id, self.progress)
        try:
            try:
                result = self.deliver()
            except BaseException:
                self.close_relay(None)
                raise
        except LocpickError as exc:
            self.failed(exc)
            raise
        self.close_relay(result)
        self.finished(result)
        return result

    def close_relay(self, result: Result | None) -> None:
        """The last progress call (for a delivered image: its bytes), made before returning."""
        if self.relay is None:
            return
        if result is None:
            self.relay.close()
            return
        self.relay.close(result.bytes, result.bytes)
        if self.relay.error is not None:  # the image is delivered: a late raise is only logged
            log.warning("progress callback raised after the delivery: %r", self.relay.error)

    def raise_callback_error(self) -> None:
        """A progress callback that raised aborts the download with its own exception."""
        if self.relay is not None and self.relay.error is not None:
            raise self.relay.error

    def check(self) -> None:
        """Stop here if the caller cancelled, the timeout passed or the callback raised."""
        self.raise_callback_error()
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(
                f"image {self.image_id}: download to {self.dest} cancelled; dest untouched, "
                "the bytes fetched so far are kept to resume"
            )
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise AllLocationsFailed(
                f"image {self.image_id}: timeout of {self.timeout:g} s exceeded; "
                "dest untouched (raise timeout= or [transfer] total_timeout)"
            )

    def on_bytes(self, done: int, total: int | None) -> None:
        """The engine's byte count: to the relay, then ``check`` (only on the caller's thread:
        a swarm reader or copy thread is not where the download can stop cleanly)."""
        if self.relay is not None:
            self.relay(done, total)
        if threading.get_ident() == self.owner:
            self.check()

    def deliver(self) -> Result:
        self.check()
        image = self.load_image()
        self.check()
        self.open_cache()
        hit = self.cache_hit(image)
        if hit is not None:
            return hit
        self.require_hash(image)
        self.check()
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

    def _reload(self, image_id: str, answered: Mapping[str, Any] | None) -> Image:
        """The storm's one refresh of the record after the add: the add's answer (the record
        as the add left it) when Glance gave one, else a GET."""
        if answered is not None:
            try:
                return self.session.image_answered(image_id, answered)
            except LocpickError as exc:
                log.info(
                    "image %s: the add's answer is not a record (%s): reading it", image_id, exc
                )
        return self.session.image(image_id)

    def _recheck(self, image_id: str, fill: Fill) -> Image:
        """A node first among the filling copies, adds not serialised: the record read again
        once concurrent adds have settled (:func:`storm.settle_delay`). Its copy listed there
        confirms the add (the later confirmation is not needed); missing, the confirmation
        adds it again."""
        delay = storm.settle_delay(fill.add_seconds)
        if self.cancel is not None:
            self.cancel.wait(delay)
        else:
            time.sleep(delay)
        self.check()
        image = self.session.image(image_id)
        if any(loc.url == fill.url for loc in image.locations):
            fill.confirmed()
        else:
            log.info("image %s: this node's filling copy is not listed any more", image_id)
        return image

    def transfer(self, image: Image, fill: Fill | None = None) -> Result:
        """Rank the locations (in a boot storm, from this node's place among the filling
        copies), then fetch in rounds until one delivers a verified copy (``fill``: every
        write mirrored into the node cache's filling copy, registered as ``fill.url``)."""
        tried = fill is not None and self.publish
        reload = recheck = None
        if tried and self.metadata is None:
            assert fill is not None
            reload = functools.partial(self._reload, image.id, fill.listing)
            if fill.url is not None and not self.session.coordination.serialised:
                recheck = functools.partial(self._recheck, image.id, fill)
        image, plan = storm.prepare(
            image,
            self.config,
            mine=fill.url if fill is not None else None,
            fleet=self.session.fleet,
            reload=reload,
            recheck=recheck,
        )
        # a storm node probes its parent and fallback peers before trusting them (a silent one
        # costs the probe deadline, not a first-byte timeout); the origin is left alone
        probe: bool | frozenset[str] = True
        if plan.parent is not None:
            probe = frozenset((plan.parent, *plan.backups))
        ranking = self.ranker.rank_image(image, for_download=True, dest=self.dest, probe=probe)
        ranking = attrs.evolve(ranking, scores=storm.arrange(ranking.scores, plan))
        self.rec.ranked(ranking)
        transfer = storm.transfer_for(self.config.transfer, plan)
        tee = fill.tee if fill is not None else None
        return fetch_in_rounds(
            image,
            ranking.scores,
            lambda scores: self.fetch_once(image, scores, tee, transfer),
            self.ranker,
            check=self.check,
        )

    def fetch_once(
        self,
        image: Image,
        scores: Sequence[Score],
        tee: Tee | None = None,
        transfer: TransferConfig | None = None,
    ) -> Result:
        """One pass of the fetcher over ``scores`` (in rank order)."""
        self.check()
        return fetch(
            image,
            scores,
            self.dest,
            self.session.transports,
            buffer_bytes=self.config.transfer.buffer_bytes,
            file_mode=self.config.security.file_mode,
            progress=self.rec.progress(self.on_bytes),
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
    check: Callable[[], None] = lambda: None,
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
        check()
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
