"""The byte streams of fsspec locations: a buffered fsspec file (one ranged request per read),
and for S3 one streaming GET read on s3fs's own event loop."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from locpick.transports.base import StreamDefaults
from locpick.transports.fsspec.errors import convert


class FsspecStream(StreamDefaults):
    """An fsspec file read from an offset, one ranged request per ``readinto``."""

    def __init__(self, file: Any, *, start: int, total: int | None, final_url: str) -> None:
        self._file = file
        self.start = start
        self.total = total
        self.final_url = final_url

    def readinto(self, buf: memoryview) -> int:
        try:
            readinto = getattr(self._file, "readinto", None)
            if readinto is not None:
                return int(readinto(buf) or 0)
            data = self._file.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        except Exception as exc:  # any filesystem error, converted at this boundary
            raise convert(exc, self.final_url, midway=True) from exc

    def close(self) -> None:
        # closing a read-only remote file cannot lose data
        with contextlib.suppress(Exception):
            self._file.close()


class S3Stream(StreamDefaults):
    """One streaming GET (``Range: bytes=N-``) through s3fs's own client, read on its loop.

    fsspec's buffered files issue one ranged request per read; a single streamed response
    avoids that per-request cost (it dominates on slow servers such as moto).
    """

    def __init__(self, fs: Any, body: Any, *, start: int, total: int | None, final_url: str):
        self._fs = fs
        self._body = body
        self.start = start
        self.total = total
        self.final_url = final_url

    async def _fill(self, buf: memoryview) -> int:
        filled = 0
        while filled < len(buf):
            chunk = await self._body.read(len(buf) - filled)
            if not chunk:
                break
            buf[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        return filled

    def readinto(self, buf: memoryview) -> int:
        from fsspec.asyn import sync

        try:
            return int(sync(self._fs.loop, self._fill, buf))
        except Exception as exc:  # any client error, converted at this boundary
            raise convert(exc, self.final_url, midway=True) from exc

    def close(self) -> None:
        from fsspec.asyn import sync

        async def _close() -> None:
            result = getattr(self._body, "aclose", self._body.close)()
            if inspect.isawaitable(result):
                await result

        # closing a read-only response cannot lose data
        with contextlib.suppress(Exception):
            sync(self._fs.loop, _close)
