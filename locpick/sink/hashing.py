"""Which hash proves an image, and computing it off the caller's thread while bytes stream."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import Any

import attrs

from locpick.errors import MetadataError

#: Algorithms Glance may record in ``os_hash_algo`` (hashlib names).
KNOWN_ALGOS = (
    "sha512",
    "sha384",
    "sha256",
    "sha224",
    "sha1",
    "md5",
    "sha3_256",
    "sha3_512",
    "blake2b",
    "blake2s",
)


def hex_length(algo: str) -> int:
    """Length of a hex digest of ``algo``; MetadataError for an algorithm we cannot compute."""
    algo = algo.lower()
    if algo not in KNOWN_ALGOS:
        known = ", ".join(KNOWN_ALGOS)
        raise MetadataError(f"os_hash_algo {algo!r} is not supported (known: {known})")
    return hashlib.new(algo).digest_size * 2


def is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdefABCDEF" for c in value)


@attrs.frozen
class Expected:
    """The hash a download must match, or none (``--allow-unverified``)."""

    algo: str | None
    value: str | None

    @classmethod
    def for_image(
        cls, os_hash_algo: str | None, os_hash_value: str | None, checksum: str | None
    ) -> Expected:
        if os_hash_value and os_hash_algo:
            return cls(os_hash_algo.lower(), os_hash_value.lower())
        if checksum:
            return cls("md5", checksum.lower())
        return cls(None, None)

    def new(self) -> Any:
        return hashlib.new(self.algo) if self.algo else None


class BackgroundHasher:
    """Feeds buffers to a hash object in a worker thread, so hashing overlaps receiving.

    hashlib releases the GIL for buffers above 2 KiB, so the worker runs truly in parallel with
    the thread that reads the socket and writes the file. ``release`` is called with each buffer
    once it has been hashed, so callers can reuse it.
    """

    def __init__(
        self,
        hasher: Any,
        release: Callable[[bytearray], None] | None = None,
        on_hashed: Callable[[int], None] | None = None,
    ) -> None:
        """``on_hashed(total)``: called with the bytes hashed so far after each buffer."""
        self._hasher = hasher
        self._release = release
        self._on_hashed = on_hashed
        self._count = 0
        self._queue: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="locpick-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            buf, n = item
            try:
                if self._hasher is not None and self._error is None:
                    self._hasher.update(memoryview(buf)[:n])
                    self._count += n
                    if self._on_hashed is not None:
                        self._on_hashed(self._count)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the caller in hexdigest()
                self._error = exc
            finally:
                if self._release is not None:
                    self._release(buf)

    def submit(self, buf: bytearray, n: int) -> None:
        self._queue.put((buf, n))

    def hexdigest(self) -> str | None:
        """Wait for queued buffers and return the digest (None when not hashing)."""
        hasher = self.detach()
        return None if hasher is None else str(hasher.hexdigest())

    def detach(self) -> Any:
        """Wait for queued buffers, stop, and hand over the hash object (None when not hashing).

        Used when another component (a system copy) goes on hashing the same stream.
        """
        self.stop()
        if self._error is not None:
            raise self._error
        return self._hasher

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
