"""The node cache's part of a download: a verified cached copy delivered instead of a
transfer, and a verified download kept (and published) afterwards."""

from __future__ import annotations

import logging
import os
import time

from locpick.cache.copy import copy_out
from locpick.cache.fill.fill import Fill
from locpick.cache.store import NodeCache
from locpick.errors import LocpickError
from locpick.jobs.cachesync import CacheSync, cache_error
from locpick.models import Attempt, CacheStep, Image, Result

log = logging.getLogger(__name__)


def from_cache(
    cache: NodeCache,
    image: Image,
    dest: str | os.PathLike[str],
    *,
    file_mode: int,
    sync: CacheSync,
    publish: bool,
) -> Result | None:
    """Copy a cached copy proven to be ``image`` out onto ``dest`` (``publish``: and register
    it in Glance through ``sync``); None when there is none to trust."""
    started = time.monotonic()
    problem = cache.problem()
    if problem is not None:
        log.warning("cache: not used: %s", problem)
        return None
    entry = cache.lookup(image)
    if entry is None or not copy_out(entry, dest, mode=file_mode):
        return None
    cache.touch(image.id)
    step = CacheStep("hit")
    try:
        if image.visibility is not None:
            cache.update_meta(image.id, visibility=image.visibility)
        if publish:
            sync.publish(cache, image, entry)
    except (LocpickError, OSError) as exc:
        error = cache_error(cache, exc)
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


def keep_in_cache(
    cache: NodeCache,
    image: Image,
    dest: str | os.PathLike[str],
    fill: Fill | None,
    sync: CacheSync,
    publish: bool,
) -> CacheStep:
    """Keep a verified download in the node cache (its stream-through copy when whole,
    else a copy of dest). The dest is already delivered, so any failure here (read-only
    or full cache, a planted lock) is a warning, never an error."""
    try:
        evicted = fill.finish() if fill is not None else None
        if evicted is None:
            evicted = cache.add_file(image, dest)
        sync.unpublish(evicted)
        if publish:
            sync.publish(cache, image)
    except (LocpickError, OSError) as exc:
        error = cache_error(cache, exc)
        log.warning("cache: %s (image delivered and verified, not cached)", error)
        return CacheStep("failed", error)
    return CacheStep("stored" if cache.entry(image.id) is not None else "skipped")
