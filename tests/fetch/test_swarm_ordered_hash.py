"""Hashing a file written out of order, in order (swarm/ordered_hash.py)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from locpick.fetch.swarm.ordered_hash import OrderedHasher

MiB = 1 << 20


def test_ordered_hash_matches_whatever_the_arrival_order(tmp_path: Path) -> None:
    """Buffers written in a random order hash like the file; out-of-order bytes are read back
    once, in-order ones never."""
    data = os.urandom(8 * MiB)
    path = tmp_path / "f"
    path.write_bytes(b"\0" * len(data))
    fd = os.open(path, os.O_RDWR)
    try:
        chunks = [(o, data[o : o + 300_000]) for o in range(0, len(data), 300_000)]
        random.Random(1).shuffle(chunks)
        h = OrderedHasher(hashlib.sha512(), fd, 0)
        for off, chunk in chunks:
            os.pwrite(fd, chunk, off)
            h.offer(off, bytearray(chunk), len(chunk), None)
        assert h.wait_for(len(data), 30)
        assert h.finish().hexdigest() == hashlib.sha512(data).hexdigest()
        assert 0 < h.reread < len(data)
        h2 = OrderedHasher(hashlib.sha512(), fd, 0)
        for off, chunk in sorted(chunks):
            h2.offer(off, bytearray(chunk), len(chunk), None)
        assert h2.finish().hexdigest() == hashlib.sha512(data).hexdigest()
        assert h2.reread == 0
    finally:
        os.close(fd)
