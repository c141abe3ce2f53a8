"""The bytes an origin serves (in memory or a file, with a sendfile fast path) and the one
``Range`` header form it understands."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


class BytesSource:
    def __init__(self, data: bytes | bytearray) -> None:
        self.mv = memoryview(data).cast("B")
        self.size = len(self.mv)

    def read(self, off: int, n: int) -> bytes:
        return bytes(self.mv[off : off + n])

    def send(self, sock: socket.socket, off: int, n: int, progress: list[int]) -> None:
        view = self.mv[off : off + n]
        while progress[0] < n:
            progress[0] += sock.send(view[progress[0] :])

    def close(self) -> None:
        pass


class FileSource:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def read(self, off: int, n: int) -> bytes:
        return os.pread(self.fd, n, off)

    def send(self, sock: socket.socket, off: int, n: int, progress: list[int]) -> None:
        while progress[0] < n:
            sent = os.sendfile(sock.fileno(), self.fd, off + progress[0], n - progress[0])
            if sent == 0:
                raise ConnectionError("sendfile sent nothing (file truncated?)")
            progress[0] += sent

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --------------------------------------------------------------------------- server

Source = BytesSource | FileSource


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """Return (start, end_exclusive), "unsat", or None (ignore: invalid or multi-range)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n < 0:
                return None
            return "unsat" if n == 0 or size == 0 else (max(0, size - n), size)
        a = int(first)
        b = int(last) if last != "" else None
    except ValueError:
        return None
    if a < 0 or (b is not None and b < a):
        return None
    if a >= size:
        return "unsat"
    return a, size if b is None else min(b + 1, size)
