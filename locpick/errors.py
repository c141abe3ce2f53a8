"""The one exception tree of locpick.

```
LocpickError                      exit_code
 ├── InputError                   2   bad usage or bad input: nothing was fetched
 │    ├── ConfigError                  the config file or a setting is wrong
 │    ├── MetadataError                the image record is malformed or inconsistent
 │    ├── ImageNotFound                the source has no such image (or it is not visible)
 │    ├── ImageNotActive               the image exists but cannot be downloaded yet
 │    ├── AuthError                    credentials were refused
 │    └── UnverifiedImage              no hash and no --allow-unverified
 ├── LocationError                     one location could not deliver; the next is tried
 │    ├── UnsupportedLocation          scheme unknown, extra missing, or refused by policy
 │    ├── LocationUnreachable          connect/timeout/HTTP error
 │    ├── TransferError                the transfer broke off midway (resumable)
 │    └── IntegrityError               bytes delivered do not match the image
 │         ├── SizeMismatch
 │         └── ChecksumMismatch (also ValueError)
 └── DeliveryError                3   no verified image was produced
      ├── AllLocationsFailed           carries every attempt
      ├── DestinationError             the destination cannot be written (disk full, EIO, ...)
      └── Cancelled                    the caller cancelled (``cancel`` event): part kept
```
Every message names the location (or dest) and the reason; secrets never appear in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from locpick.redact import SCRUB

if TYPE_CHECKING:
    from locpick.models import Attempt

__all__ = [
    "AllLocationsFailed",
    "AuthError",
    "Cancelled",
    "ChecksumMismatch",
    "ConfigError",
    "DeliveryError",
    "DestinationError",
    "ImageNotActive",
    "ImageNotFound",
    "InputError",
    "IntegrityError",
    "LocationError",
    "LocationUnreachable",
    "LocpickError",
    "MetadataError",
    "SizeMismatch",
    "TransferError",
    "UnsupportedLocation",
    "UnverifiedImage",
]


class LocpickError(Exception):
    """Root of every error locpick raises on purpose."""

    exit_code: int = 1

    def __init__(self, *args: object) -> None:
        # Secrets never reach a message, a traceback or a repr: scrub at construction.
        super().__init__(*(SCRUB(a) if isinstance(a, str) else a for a in args))


class InputError(LocpickError):
    """Bad usage or bad input: the call was refused before any transfer."""

    exit_code = 2


class ConfigError(InputError):
    """The configuration file or a setting in it is invalid."""


class MetadataError(InputError):
    """The image record is unreadable, malformed or inconsistent."""


class ImageNotFound(InputError):
    """The source does not know the image, or the caller may not see it."""


class ImageNotActive(InputError):
    """The image exists but is not in the ``active`` state."""


class AuthError(InputError):
    """Credentials were missing or refused by Keystone/Glance."""


class UnverifiedImage(InputError):
    """The image has no hash; downloading it needs ``--allow-unverified``."""


class LocationError(LocpickError):
    """One location could not deliver; the caller moves on to the next one."""

    #: A permanent error is not retried on the same location in this download.
    permanent: bool = False
    #: The HTTP status the location answered with, None when it gave no status.
    status: int | None = None
    #: Seconds the server asked to wait before asking again (Retry-After), if it said.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        permanent: bool | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.url = SCRUB(url)
        if permanent is not None:
            self.permanent = permanent
        self.status = status
        self.retry_after = retry_after


def reason_of(exc: BaseException) -> str:
    """The message without its leading location, for records that carry the URL already."""
    text = str(exc)
    url = getattr(exc, "url", "")
    if url and text.startswith(url + ": "):
        return text[len(url) + 2 :]
    return text


class UnsupportedLocation(LocationError):
    """The location's scheme is unknown, needs a missing extra, or policy forbids it."""

    permanent = True


class LocationUnreachable(LocationError):
    """Connecting, authenticating or requesting failed."""


class TransferError(LocationError):
    """The transfer broke off after some bytes; it may resume elsewhere."""


class IntegrityError(LocationError):
    """The bytes from this location are not the image's bytes."""

    permanent = True


class SizeMismatch(IntegrityError):
    """The location's size differs from the image's size."""


class ChecksumMismatch(IntegrityError, ValueError):
    """The computed hash differs from the image's recorded hash."""


class DeliveryError(LocpickError):
    """No verified image was produced at the destination."""

    exit_code = 3


class DestinationError(DeliveryError):
    """The destination cannot be written (disk full, I/O error, missing directory)."""


class AllLocationsFailed(DeliveryError):
    """Every location was tried and none delivered a verified image."""

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)


class Cancelled(DeliveryError):
    """The caller cancelled the download (``cancel`` event set): dest untouched, the part file
    kept for the next run to resume."""
