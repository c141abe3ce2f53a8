"""What an fsspec location needs installed, and every exception a filesystem raises turned
into a :class:`~locpick.errors.LocationError` at this one boundary, scrubbed of credentials."""

from __future__ import annotations

from locpick.errors import LocationError, LocationUnreachable, TransferError
from locpick.redact import SCRUB
from locpick.s3url import GLANCE_S3_SCHEMES

S3_SCHEMES = ("s3", "s3a", *GLANCE_S3_SCHEMES)
_TIMEOUTS = frozenset(
    {
        "TimeoutError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ServerTimeoutError",
        "ConnectTimeout",
        "ReadTimeout",
    }
)


def needs(scheme: str) -> str | None:
    """What must be installed to read ``scheme``; None when its implementation imports."""
    import fsspec  # core dependency, but only needed once such a location shows up

    if scheme in GLANCE_S3_SCHEMES:
        scheme = "s3"
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        if scheme in S3_SCHEMES:
            return "s3fs: install locpick[s3]"
        from fsspec.registry import known_implementations

        impl = known_implementations.get(scheme, {})
        package = str(impl.get("class", scheme)).split(".", 1)[0]
        hint = str(impl.get("err") or exc).rstrip(".")
        return f"{package}: {hint}"
    return None


def _first_line(text: str, limit: int = 200) -> str:
    line = SCRUB(text).strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def convert(exc: BaseException, shown: str, *, midway: bool = False) -> LocationError:
    """One location's filesystem exception as a LocationError, secrets scrubbed."""
    if isinstance(exc, LocationError):
        return exc
    name = type(exc).__name__
    detail = _first_line(str(exc))
    if isinstance(exc, FileNotFoundError):
        return LocationUnreachable(f"{shown}: no such object (HTTP 404)", url=shown, permanent=True)
    if isinstance(exc, PermissionError):
        why = f": {detail}" if detail else ""
        return LocationUnreachable(
            f"{shown}: access denied (HTTP 403), check the credentials{why}",
            url=shown,
            permanent=True,
        )
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return LocationUnreachable(
            f"{shown}: no usable AWS credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
            url=shown,
            permanent=True,
        )
    if name in _TIMEOUTS:
        what = "stalled: no data within the idle timeout" if midway else "timed out"
        cls = TransferError if midway else LocationUnreachable
        return cls(f"{shown}: {what} ({name})", url=shown)
    text = f"{shown}: {name}" + (f": {detail}" if detail else "")
    if midway:
        return TransferError(f"{text} (transfer broke off)", url=shown)
    return LocationUnreachable(text, url=shown)
