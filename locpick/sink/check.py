"""The sink's guards: how many bytes a source may send, whether the disk has room, what a
failed write means (the destination's fault, or an endless body's), and the final verdict."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from locpick.errors import ChecksumMismatch, DestinationError, SizeMismatch
from locpick.sink.hashing import Expected


def over_limit(
    end: int, size: int | None, learned: int | None, max_bytes: int | None
) -> str | None:
    """Why a write ending at ``end`` would be too many bytes, else None."""
    if size is not None:
        return f"the image size ({size} bytes)" if end > size else None
    if learned is not None and end > learned:
        return f"the first Content-Length of the bytes held ({learned} bytes)"
    if max_bytes is not None and end > max_bytes:
        return f"[security] max_image_bytes ({max_bytes} bytes; the record has no size)"
    return None


def check_free_space(dest: Path, size: int | None, held: int) -> None:
    """Refuse at once when the disk cannot take the ``size - held`` bytes still to come."""
    if not size:
        return
    try:
        free = shutil.disk_usage(dest.parent).free
    except OSError:
        return
    need = size - held
    if free < need:
        raise DestinationError(
            f"dest {dest}: not enough free space in {dest.parent} "
            f"(need {need} more bytes, {free} free)"
        )


def disk_error(
    exc: OSError, dest: Path, label: str, size: int | None, offset: int
) -> SizeMismatch | DestinationError:
    """The error to raise for a failed write or rename of ``dest`` at ``offset``."""
    need = "" if size is None else f"; {size - offset} more bytes needed"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and size is None:
        # Without a size a full disk may be an endless body: blame the location, so that
        # the sink is reset (space freed) and the next location tried.
        return SizeMismatch(
            f"{label}: sent more than the free space in {dest.parent} "
            f"({offset} bytes written; the record has no size)"
        )
    if exc.errno == errno.ENOSPC:
        return DestinationError(f"dest {dest}: no space left on device{need}")
    return DestinationError(f"dest {dest}: write failed ({exc.strerror}){need}")


def check_image(
    label: str, expected: Expected, size: int | None, got: int, digest: str | None
) -> None:
    """Raise unless ``got`` bytes hashing to ``digest`` are the image the record describes."""
    if size is not None and got != size:
        raise SizeMismatch(f"{label}: got {got} bytes, expected {size}")
    if expected.value is not None and digest != expected.value:
        raise ChecksumMismatch(
            f"{label}: {expected.algo} mismatch, expected "
            f"{expected.value[:16]}... got {(digest or '')[:16]}...; download discarded"
        )
