"""Verified, atomic transfer from ranked locations.

Resume on the next location by Range when one breaks off, stalls or crawls; switch mid-transfer
to a much faster known location; retry transient errors with backoff; start over when bytes
turn out wrong; keep a resumable ``.part`` for a crashed run; never leave a partial ``dest``.
This module is the entry (dest lock, already delivered, one source or a swarm); the
single-source loop is ``fetchrun``, with ``fetchresume`` (validators, Range ignored),
``fetchswitch`` (slow, deadline, switch) and ``fetchpump`` (bytes) beside it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from locpick.config.model import TransferConfig
from locpick.errors import InputError
from locpick.fetch import swarm
from locpick.fetch.policy import Timing
from locpick.fetch.single import Download, Observer
from locpick.fetch.swarm.partfile import discard_pieced_part
from locpick.models import ByteProgress, Image, Result, Score
from locpick.sink.atomic import AtomicSink
from locpick.sink.hashing import Expected
from locpick.sink.lock import dest_lock
from locpick.sink.pipe import Mirror
from locpick.sink.privfile import open_private
from locpick.transports import Transports

log = logging.getLogger(__name__)

__all__ = ["fetch"]


def fetch(
    image: Image,
    ranked: Sequence[Score],
    dest: str | os.PathLike[str],
    transports: Transports,
    *,
    buffer_bytes: int = 4 << 20,
    file_mode: int = 0o644,
    progress: ByteProgress | None = None,
    observer: Observer | None = None,
    transfer: TransferConfig | None = None,
    topology_tolerance: float = 0.2,
    max_bytes: int | None = None,
    timing: Timing | None = None,
    tee: Mirror | None = None,
) -> Result:
    """Deliver ``image`` to ``dest`` from the first location in ``ranked`` that can (or, with
    ``[transfer] max_sources`` > 1, in pieces from several at once: ``locpick.fetch.swarm``).

    ``max_bytes`` bounds what one location may write when the record has no size; ``timing``
    replaces the clock, sleep and rng of the retry policy (tests)."""
    started = time.monotonic()
    expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
    parent = Path(dest).parent
    if not parent.is_dir():
        raise InputError(f"dest {dest}: directory {parent} does not exist")
    cfg = transfer or TransferConfig()
    with dest_lock(dest, timeout=cfg.lock_timeout) as waited:
        if waited:
            done = _already_delivered(image, expected, dest, started)
            if done is not None:
                return done
        sink_args: dict[str, Any] = {
            "size": image.size,
            "expected": expected,
            "buffer_bytes": buffer_bytes,
            "mode": file_mode,
            "label": f"image {image.id}",
            "resume": {
                "image_id": image.id,
                "size": image.size,
                "algo": expected.algo,
                "hash": expected.value,
            },
            "max_bytes": max_bytes,
            "tee": tee,
        }
        sources = swarm.plan(image, ranked, transports, cfg)
        if sources is not None:
            return swarm.fetch(
                image, sources, dest, sink_args, cfg, tolerance=topology_tolerance,
                progress=progress, observer=observer, started=started,
            )  # fmt: skip
        discard_pieced_part(dest)
        with AtomicSink(dest, **sink_args) as sink:
            run = Download(
                image, ranked, sink, transports, cfg, progress, observer, started,
                timing or Timing(),
            )  # fmt: skip
            return run.run()


def _already_delivered(
    image: Image, expected: Expected, dest: str | os.PathLike[str], started: float
) -> Result | None:
    """After waiting for another process on the same dest: is its result our image?"""
    path = Path(dest)
    fd = open_private(path)  # never a FIFO or a symlink planted at dest meanwhile
    if fd is None:
        return None
    try:
        with open(fd, "rb") as fh:
            if image.size is not None and os.fstat(fh.fileno()).st_size != image.size:
                return None
            hasher = expected.new()
            if hasher is None:
                return None
            while chunk := fh.read(4 << 20):
                hasher.update(chunk)
    except OSError:
        return None
    if hasher.hexdigest() != expected.value:
        return None
    log.info("dest %s: already delivered and verified by another locpick process", dest)
    return Result(
        image_id=image.id,
        dest=str(dest),
        source_url=path.resolve().as_uri(),
        method="download",
        bytes=0,
        seconds=time.monotonic() - started,
        verified=expected.algo,
        attempts=(),
    )
