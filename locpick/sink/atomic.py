"""A verified, atomic destination: bytes go to a private temp file beside ``dest``, are hashed
while they arrive, and only a file of the right size and hash is renamed onto ``dest``.

The parts: ``sinkfile`` (the temp or part file and its lifecycle), ``sinkpipe`` (buffers,
write and hash threads), ``sinkpart`` (the resumable part file and its sidecar), ``sinkcheck``
(byte limits, disk errors, the verdict), ``privfile`` (files beside DEST) and ``destlock``
(one writer per DEST)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from locpick.errors import Cancelled, SizeMismatch, TransferError
from locpick.sink.check import check_image, over_limit
from locpick.sink.file import SinkFile

__all__ = ["AtomicSink", "CopyEngine", "EngineAbandoned"]


class EngineAbandoned(TransferError):
    """A copy engine stalled and was left behind, possibly still writing to the temp file and
    its hash: the sink discards that temp file and its hash and starts a new one at offset 0."""


#: ``(fd, offset, hasher, advance) -> engine name``: see ``AtomicSink.adopt``.
CopyEngine = Callable[[int, int, Any, Callable[[int], None]], str]


class AtomicSink(SinkFile):
    """Temp file + background hash + verify + fsync + ``os.replace``; ``abort`` leaves nothing.

    Use as a context manager: leaving the block without ``commit()`` removes the temp file,
    whatever the exit path (exception, KeyboardInterrupt).

    ``resume``: identity of the image (id, size, hash) -> write to a resumable
    ``.DEST.locpick-part`` with a JSON sidecar, reusing a matching part left by a crashed run
    (the caller holds :func:`dest_lock`). Without it, a private random temp file is used.
    Writes never go past ``size``; without a size, past the first Content-Length of the
    bytes held (:meth:`learn_total`) nor ``max_bytes``, and a full disk is then blamed on
    the location (an endless body), not on the destination. ``tee``: every write (and resumed
    byte) is mirrored into the node cache's filling copy (``locpick.cache.fill.fill``).
    """

    def __enter__(self) -> AtomicSink:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if isinstance(exc, Cancelled) and self.keep_part():
            return
        self.abort()

    def remember_validators(self, url: str, etag: str | None, last_modified: str | None) -> None:
        """Record the validators of the source of the bytes held (for If-Range on resume)."""
        entry = {"etag": etag, "last_modified": last_modified}
        if not (etag or last_modified) or self.validators.get(url) == entry:
            return
        self.validators[url] = entry
        self._write_sidecar()

    def learn_total(self, total: int | None) -> None:
        """A source announced ``total`` bytes (Content-Length / Content-Range). Without a record
        size, the first total of the bytes held bounds every later write until a reset."""
        if self.size is None and total is not None and (self.learned is None or not self.offset):
            self.learned = total

    def _over_limit(self, n: int) -> str | None:
        """Why ``n`` more bytes would be too many, else None."""
        return over_limit(self.offset + n, self.size, self.learned, self.max_bytes)

    def write(self, buf: bytearray, n: int) -> None:
        """Write ``buf[:n]`` at the current offset, then hand it to the hasher (which frees it)."""
        over = self._over_limit(n)
        if over is not None:
            self.give_back(buf)
            raise SizeMismatch(f"{self.label}: sent more than {over}")
        writer = self._pipe.writer
        assert writer is not None
        if writer.error is not None:
            self.give_back(buf)
            self._raise_disk(writer.error)
        writer.submit(buf, n, self.offset)
        self.offset += n

    def adopt(self, engine: CopyEngine, *, verify: bool = True) -> str:
        """Let a copy engine write into the temp file at fd level, from ``self.offset`` on.

        ``engine(fd, offset, hasher, advance)`` writes the following bytes at their offsets,
        calls ``advance(n)`` after each ``n`` bytes, and before it returns or raises has fed
        every advanced byte, in order, to ``hasher`` (None = not hashing). The bytes before
        ``offset`` are already in the hash, so a copy can continue a partial download and the
        usual ``commit`` verifies the whole file. ``verify=False`` (a trusted filesystem, from
        offset 0 only) makes ``commit`` check the size alone. Returns what the engine returns.
        """
        assert self.fd is not None
        self._drain_writer()
        if self.tee is not None:
            self.tee.abandon("a system copy writes the file itself")
        hasher = self._pipe.hasher.detach()
        if not verify and self.offset == 0:
            hasher = None
            self.size_only = True

        def advance(n: int) -> None:
            over = self._over_limit(n)
            if over is not None:
                raise SizeMismatch(f"{self.label}: copied more than {over}")
            self.offset += n

        abandoned = False
        try:
            return engine(self.fd, self.offset, hasher, advance)
        except EngineAbandoned:
            abandoned = True
            self._renew_temp()
            raise
        finally:
            if not abandoned:
                self._start_pipeline(hasher)

    def reset(self) -> None:
        """Drop everything written so far (after a mismatch) and start again at offset 0."""
        self._pipe.drain()
        if self.tee is not None:  # peers must not go on reading bytes that were wrong
            self.tee.withdraw("the bytes held were dropped (wrong or changed)")
        self._pipe.hasher.stop()
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.offset = 0
        self.reused = 0
        self.learned = None
        self.size_only = False
        self._start_pipeline(self.expected.new())
        if self.validators:
            self.validators = {}
            self._write_sidecar()

    def commit(self) -> str | None:
        """Verify size and hash, fsync, and rename onto dest. Returns the verified algorithm."""
        self._drain_writer()
        digest = self._pipe.hasher.hexdigest()
        check_image(
            self.label,
            self.expected,
            self.size,
            self.offset,
            self.expected.value if self.size_only else digest,
        )
        self._publish()
        return None if self.size_only else self.expected.algo
