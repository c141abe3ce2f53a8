"""Checks every transport applies to what a server answers, written once: Content-Range,
Retry-After, which HTTP statuses are worth retrying, and the resource's size against the
image's."""

from __future__ import annotations

import re

from locpick.errors import LocationUnreachable, TransferError
from locpick.models import Probe

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def parse_content_range(value: object) -> tuple[int, int, int | None] | None:
    """``bytes a-b/total`` -> (a, b, total); None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the delta form); None when absent or a date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def permanent_status(status: int) -> bool:
    """A client error other than a timeout or rate limit: asking again will not help."""
    return 400 <= status < 500 and status not in (408, 429)


def status_error(
    url: str, status: int, retry_after: str | None = None, *, message: str | None = None
) -> LocationUnreachable:
    """The error for an HTTP status that is not the expected answer, with its typed fields."""
    return LocationUnreachable(
        f"{url}: {message or f'HTTP {status}'}",
        url=url,
        permanent=permanent_status(status),
        status=status,
        retry_after=parse_retry_after(retry_after),
    )


def check_total(url: str, image_size: int | None, total: int | None) -> None:
    """TransferError (permanent) when the resource's announced size is not the image's."""
    if image_size is not None and total is not None and total != image_size:
        raise TransferError(
            f"{url}: size {total} differs from the image's {image_size}", url=url, permanent=True
        )


def probe_size_mismatch(
    url: str, image_size: int | None, size: int | None, *, ttfb: float, final_url: str
) -> Probe | None:
    """The failed probe of a location whose size is not the image's; None when it matches."""
    if image_size is None or size is None or size == image_size:
        return None
    return Probe(
        url=url,
        ok=False,
        ttfb=ttfb,
        size=size,
        final_url=final_url,
        error=f"size mismatch: location has {size} bytes, image {image_size}",
    )
