"""The file behind a sink: a private temp file (or, when resumable, the part file and its
sidecar) beside DEST, the pipeline writing and hashing into it, and its removal or
durable rename onto DEST. What may be written, and when it is good, is ``locpick.sink.atomic``'s."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from locpick.errors import DestinationError, InputError
from locpick.sink.check import check_free_space, disk_error
from locpick.sink.hashing import BackgroundHasher, Expected
from locpick.sink.part import ResumePart, Validators
from locpick.sink.pipe import Mirror, Pipeline
from locpick.sink.privfile import fsync_dir

log = logging.getLogger(__name__)


class SinkFile:
    """The temp or part file of one sink, its write/hash pipeline and its validators record."""

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        size: int | None,
        expected: Expected,
        buffer_bytes: int = 4 << 20,
        mode: int = 0o644,
        label: str = "",
        resume: Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
        tee: Mirror | None = None,
    ) -> None:
        """See :class:`locpick.sink.atomic.AtomicSink` for the arguments."""
        self.dest = Path(dest)
        self.size = size
        self.max_bytes = max_bytes
        #: Total announced by the source of the bytes held, when the record has no size.
        self.learned: int | None = None
        self.expected = expected
        self.mode = mode
        self.label = label
        parent = self.dest.parent
        if not parent.is_dir():
            raise InputError(f"dest {self.dest}: directory {parent} does not exist")
        if self.dest.is_dir():
            raise InputError(f"dest {self.dest}: is a directory")
        self.offset = 0
        #: Bytes taken over from a part file of an earlier run (0 when starting fresh).
        self.reused = 0
        #: Source validators known for the bytes held: {url: {"etag": .., "last_modified": ..}}.
        self.validators: Validators = {}
        self.tee = tee
        self._pipe = Pipeline(buffer_bytes, tee, expected.new())
        #: Set by ``adopt(..., verify=False)``: commit checks the size alone.
        self.size_only = False
        self._part = ResumePart(self.dest, resume) if resume is not None else None
        self.sidecar: Path | None = None
        self.fd: int | None = None
        try:
            if self._part is None:
                check_free_space(self.dest, self.size, 0)
                self.fd, self.tmp = self._open_temp(parent)
            else:
                self.tmp, self.sidecar = self._part.tmp, self._part.sidecar
                self.fd = self._open_part()
                check_free_space(self.dest, self.size, self.offset)
            self._pipe.attach(self.fd)
            if self.tee is not None and self.reused:
                self._tee_reused()
        except BaseException:
            self.abort()
            raise

    @property
    def _hasher(self) -> BackgroundHasher:
        return self._pipe.hasher

    def _tee_reused(self) -> None:
        """The bytes taken over from an earlier run's part file go into the filling copy too."""
        assert self.tee is not None and self.fd is not None
        self.tee.copy_from(self.fd, 0, self.reused)

    def _open_temp(self, parent: Path) -> tuple[int, Path]:
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.dest.name}.", suffix=".locpick-tmp", dir=parent
            )
        except OSError as exc:
            raise DestinationError(
                f"dest {self.dest}: cannot create a temporary file ({exc.strerror})"
            ) from exc
        return fd, Path(tmp)

    def _open_part(self) -> int:
        """Reuse a matching part file (hashing what it holds) or create a fresh one (O_EXCL)."""
        assert self._part is not None
        fd = self._reuse_part()
        if fd is not None:
            return fd
        fd = self._part.create()
        self._write_sidecar()
        return fd

    def _reuse_part(self) -> int | None:
        assert self._part is not None
        held_part = self._part.open_held(self.size)
        if held_part is None:
            return None
        fd, held, validators = held_part
        self.validators = validators
        try:
            self._rehash(fd, held)
        except OSError:
            os.close(fd)
            self._pipe.hasher.stop()
            self._pipe.hasher = self._pipe.new_hasher(self.expected.new())
            return None
        os.lseek(fd, held, os.SEEK_SET)
        self.offset = self.reused = held
        log.info("dest %s: resuming %d bytes left by an earlier run", self.dest, held)
        return fd

    def _rehash(self, fd: int, held: int) -> None:
        """Feed the bytes already in the part file to the hasher."""
        pos = 0
        while pos < held:
            buf = self.buffer()
            n = os.preadv(fd, [memoryview(buf)[: min(len(buf), held - pos)]], pos)
            if n <= 0:
                self.give_back(buf)
                raise OSError(errno.EIO, "part file shorter than its size")
            self._pipe.hasher.submit(buf, n)
            pos += n

    def _write_sidecar(self) -> None:
        if self._part is None:
            return
        try:
            self._part.save(self.validators)
        except OSError as exc:
            self._raise_disk(exc)

    def buffer(self) -> bytearray:
        """A reusable buffer to read into; returned to the pool once hashed."""
        return self._pipe.buffer()

    def give_back(self, buf: bytearray) -> None:
        """Return a buffer that was taken but not written."""
        self._pipe.pool.put(buf)

    def _start_pipeline(self, hasher: Any) -> None:
        """Fresh hash and write threads on the current fd (``hasher``: None = not hashing)."""
        assert self.fd is not None
        self._pipe.start(self.fd, hasher)

    def _drain_writer(self) -> None:
        """Wait for the queued writes; a failed write surfaces here as a DestinationError."""
        error = self._pipe.drain()
        if error is not None:
            self._raise_disk(error)

    def _renew_temp(self) -> None:
        """Swap in a fresh temp file (offset 0, fresh hash); the old one is unlinked, so a
        thread still writing into it through its own fd only fills an orphaned inode."""
        assert self.fd is not None
        old_fd, old_tmp = self.fd, self.tmp
        if self._part is not None:  # part mode: unlink first, then a fresh part (O_EXCL)
            with contextlib.suppress(FileNotFoundError):
                old_tmp.unlink()
            self.validators = {}
            self.offset = self.reused = 0
            fd, tmp = self._open_part(), self.tmp
        else:
            fd, tmp = self._open_temp(self.dest.parent)
        self.fd, self.tmp = fd, Path(tmp)
        os.close(old_fd)
        with contextlib.suppress(FileNotFoundError):
            if old_tmp != self.tmp:
                old_tmp.unlink()
        self.offset = 0
        self.size_only = False
        self._start_pipeline(self.expected.new())

    def _raise_disk(self, exc: OSError) -> NoReturn:
        raise disk_error(exc, self.dest, self.label, self.size, self.offset) from exc

    def keep_part(self) -> bool:
        """Close a resumable part file keeping it and its sidecar (a cancelled download: the
        next run on the same dest continues from it); False when there is none to keep."""
        if self._part is None or self.fd is None:
            return False
        error = self._pipe.drain()
        self._pipe.hasher.stop()
        os.close(self.fd)
        self.fd = None
        if error is not None:  # what was written is unknown: do not leave it to be resumed
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self._part.remove_sidecar()
        return True

    def abort(self) -> None:
        """Remove the temp file (and sidecar); safe to call repeatedly and after commit."""
        self._pipe.drain()
        self._pipe.hasher.stop()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            if self._part is not None:
                self._part.remove_sidecar()

    def _publish(self) -> None:
        """Set the mode, fsync, and rename the temp file onto dest (durably)."""
        assert self.fd is not None
        try:
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            os.replace(self.tmp, self.dest)
            if self._part is not None:
                self._part.remove_sidecar()
            fsync_dir(self.dest.parent)
        except OSError as exc:
            self._raise_disk(exc)
