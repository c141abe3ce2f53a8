"""Glance side of a stream-through copy: one location append when the fill starts (unless
the image already lists ``[fleet] max_copies`` locpick copies: the node is then a leaf that
reads the registered ones), one remove if it fails.

Concurrent adds to one image make Glance 33 answer 500 (or 409) for some of them (measured):
the same add is retried with jittered backoff, a bounded number of times; it is still one add
(``GlanceLocations.add`` looks first, so an add that did land is not made twice). Glance also
loses some concurrent adds that it answered 200 (each PATCH rewrites the whole list; measured
with 4 nodes): the add is confirmed once about 2 s later (jittered, 1-3 s) and appended again
if lost (logged); the first filling copy's second look, before it plans, stands for that
confirmation (``Fill.confirmed``). The entry is never rewritten to renew a lease.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from locpick.config.model import Topology
from locpick.errors import InputError
from locpick.glance.lease import FILL, FILL_STARTED
from locpick.glance.locations import CopiesCapped, GlanceLocations, PublishError, cache_metadata
from locpick.redact import SCRUB, redact_url

log = logging.getLogger(__name__)

#: Tries of one add when Glance answers 500/409 (concurrent adds to the image), and the backoff.
ADD_TRIES = 5
_BACKOFF = 0.25
_BACKOFF_MAX = 4.0
_RETRYABLE = (409, 500, 503)
#: Seconds after the add at which it is confirmed (times 0.5-1.5, jitter).
CONFIRM_AFTER = (2.0,)
#: Backoff jitter (not crypto).
_RNG = random.Random()  # noqa: S311

Api = Callable[[], GlanceLocations]


def filling_metadata(topology: Topology, started: float) -> dict[str, str]:
    """The location metadata of a copy still filling: the cache's own plus the fill keys."""
    meta = cache_metadata(topology)
    meta.update({FILL: "filling", FILL_STARTED: f"{started:.3f}"})
    return meta


@attrs.frozen
class Registered:
    """A filling copy listed in Glance, and the image record as its add left it (the add's
    answer; None when it did not add, the URL being listed already, or Glance showed none)."""

    record: Mapping[str, Any] | None = None


def add_filling(
    api: Api,
    image_id: str,
    url: str,
    metadata: Mapping[str, str],
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random = _RNG,
    seen: Mapping[str, Any] | None = None,
) -> Registered | None:
    """Add ``url`` as a location of ``image_id``; None when it is not listed. A refusal is
    logged (the cache keeps working; it registers after the download instead), never raised.

    ``seen``: the image record just fetched (``status``, ``locations``): without a
    coordination backend the add does not read it again. The image listing ``[fleet]
    max_copies`` locpick copies already: not registered (a leaf that reads them), None."""
    for attempt in range(ADD_TRIES):
        try:
            gl = api()
            added = gl.add(image_id, url, metadata, seen=seen)
            return Registered(gl.answer if added else None)
        except CopiesCapped as exc:
            log.info("%s", exc)
            return None
        except PublishError as exc:
            last = exc
            if exc.status not in _RETRYABLE or attempt == ADD_TRIES - 1:
                break
            delay = min(_BACKOFF_MAX, _BACKOFF * 2**attempt) * (0.5 + rng.random())
            log.info("glance busy (HTTP %s): add of %s again in %.2fs", exc.status, image_id, delay)
            sleep(delay)
        except InputError as exc:
            last = exc  # type: ignore[assignment]
            break
    log.warning(
        "filling copy of %s not registered (registers when complete): %s",
        image_id,
        SCRUB(str(last)),
    )
    return None


def remove_once(api: Api, image_id: str, url: str) -> None:
    """Take the location back (one remove); a refusal leaves it to its lease and ``cache reap``."""
    try:
        api().remove(image_id, url)
    except (PublishError, InputError) as exc:
        log.warning(
            "location %s of %s not removed (its lease runs out; `locpick cache reap`): %s",
            redact_url(url),
            image_id,
            SCRUB(str(exc)),
        )


class FillRenewal:
    """Confirms the add (appends it again, logged, when Glance lost it); the entry is never
    rewritten afterwards."""

    def __init__(self, api: Api, image_id: str, url: str, meta: Callable[[], dict[str, str]],
                 lease: float) -> None:  # fmt: skip
        self.api, self.image_id, self.url, self.meta = api, image_id, url, meta
        self.interval = lease / 3.0
        self.renewals = 0
        #: Adds Glance lost and that were made again.
        self.readds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="locpick-fill-renew", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        waited = 0.0
        for at in CONFIRM_AFTER:
            delay = min(self.interval, at) * (0.5 + _RNG.random()) - waited
            if self._stop.wait(max(0.0, delay)):
                return
            waited += max(0.0, delay)
            try:
                if self.api().add(self.image_id, self.url, self.meta()):
                    self.readds += 1
                    log.warning("glance lost the location of %s; added it again", self.image_id)
            except (PublishError, InputError) as exc:
                log.info("location of %s not confirmed: %s", self.image_id, SCRUB(str(exc)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
