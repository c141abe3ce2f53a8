"""Verified, atomic transfer from ranked locations: resume on the next one when a location
breaks off, start over when bytes turn out wrong, and never leave a partial file at ``dest``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from locpick.errors import (
    AllLocationsFailed,
    IntegrityError,
    LocationError,
    TransferError,
    reason_of,
)
from locpick.hashing import Expected
from locpick.models import Attempt, Image, Location, Result, Score
from locpick.redact import SCRUB
from locpick.sink import AtomicSink
from locpick.transports import Stream, Transports

log = logging.getLogger("locpick")

Progress = Callable[[int, int | None], None]
#: Called after each attempt: (location, ok, bytes, seconds, error) — feeds history.
Observer = Callable[[Location, bool, int, float, str | None], None]


def fetch(
    image: Image,
    ranked: Sequence[Score],
    dest: str | os.PathLike[str],
    transports: Transports,
    *,
    buffer_bytes: int = 4 << 20,
    file_mode: int = 0o644,
    progress: Progress | None = None,
    observer: Observer | None = None,
) -> Result:
    """Deliver ``image`` to ``dest`` from the first location in ``ranked`` that can."""
    started = time.monotonic()
    attempts: list[Attempt] = [
        Attempt(url=s.url, outcome="skipped", error=s.reasons.error) for s in ranked if not s.usable
    ]
    expected = Expected.for_image(image.os_hash_algo, image.os_hash_value, image.checksum)
    with AtomicSink(
        dest,
        size=image.size,
        expected=expected,
        buffer_bytes=buffer_bytes,
        mode=file_mode,
        label=f"image {image.id}",
    ) as sink:
        for score in (s for s in ranked if s.usable):
            loc = score.location
            t0 = time.monotonic()
            before = sink.offset
            stream: Stream | None = None
            note: str | None
            try:
                transport = transports.for_location(loc)
                copy_to = getattr(transport, "copy_to", None)
                if copy_to is not None:  # a system copy (shared filesystem)
                    sink.label = f"image {image.id} from {loc.display_url}"
                    note = f"system copy via {copy_to(loc, image, sink, progress)}"
                    source = loc.display_url
                else:
                    stream = transport.open(loc, image, offset=sink.offset)
                    note = _pump(stream, sink, progress)
                    if image.size is not None and sink.offset < image.size:
                        raise TransferError(
                            f"{stream.final_url}: connection ended at byte "
                            f"{sink.offset} of {image.size}",
                            url=stream.final_url,
                        )
                    source = stream.final_url
                    stream.close()
                    stream = None
                sink.label = f"image {image.id} from {source}"
                verified = sink.commit()
            except IntegrityError as exc:
                got = sink.offset - before
                attempts.append(
                    Attempt(
                        url=score.url,
                        outcome="failed",
                        error=SCRUB(reason_of(exc)),
                        bytes=max(got, 0),
                    )
                )
                _observe(observer, loc, False, got, t0, str(exc))
                log.warning("%s", SCRUB(str(exc)))
                sink.reset()
                continue
            except LocationError as exc:
                got = sink.offset - before
                attempts.append(
                    Attempt(
                        url=score.url,
                        outcome="failed",
                        error=SCRUB(reason_of(exc)),
                        bytes=max(got, 0),
                    )
                )
                _observe(observer, loc, False, got, t0, str(exc))
                log.info("location failed, trying the next: %s", SCRUB(str(exc)))
                continue
            finally:
                if stream is not None:
                    stream.close()
            got = sink.offset - before
            attempts.append(Attempt(url=score.url, outcome="ok", bytes=got, note=note))
            _observe(observer, loc, True, got, t0, None)
            return Result(
                image_id=image.id,
                dest=str(dest),
                source_url=source,
                method="copy" if loc.scheme == "file" else "download",
                bytes=sink.offset,
                seconds=time.monotonic() - started,
                verified=verified,
                attempts=tuple(attempts),
            )
    failed = (
        "; ".join(f"{a.url}: {a.error}" for a in attempts if a.outcome != "ok") or "no locations"
    )
    raise AllLocationsFailed(
        SCRUB(f"image {image.id}: no location delivered a verified image ({failed})"), attempts
    )


def _observe(
    observer: Observer | None, loc: Location, ok: bool, got: int, t0: float, error: str | None
) -> None:
    if observer is not None:
        observer(loc, ok, got, time.monotonic() - t0, error)


def _pump(stream: Stream, sink: AtomicSink, progress: Progress | None) -> str | None:
    """Copy the stream into the sink; bytes before ``sink.offset`` (Range ignored) are skipped."""
    skip = sink.offset - stream.start
    note = f"server ignored Range: discarded {skip} bytes already held" if skip > 0 else None
    while True:
        buf = sink.buffer()
        try:
            n = stream.readinto(memoryview(buf))
        except BaseException:
            sink.give_back(buf)
            raise
        if n == 0:
            sink.give_back(buf)
            return note
        if skip:
            if n <= skip:
                skip -= n
                sink.give_back(buf)
                continue
            buf[: n - skip] = buf[skip:n]
            n -= skip
            skip = 0
        sink.write(buf, n)
        if progress is not None:
            progress(sink.offset, sink.size)
