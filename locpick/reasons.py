"""Why a location is unusable or held back, as data: a ``Code`` decided where the decision is
made, and the human text rendered from it only at the edges (``rank`` text and JSON, logs)."""

from __future__ import annotations

import enum

import attrs

from locpick.errors import LocationUnreachable, UnsupportedLocation, reason_of
from locpick.redact import SCRUB

__all__ = ["Code", "Reason", "code_of"]


class Code(enum.Enum):
    """What kind of reason it is; code branches on this, never on the text."""

    #: The operator's ``[policy]`` forbids the location.
    POLICY = "policy"
    #: The location's registration lease ran out.
    LEASE_EXPIRED = "lease-expired"
    #: Usable, but beyond the probe budget: a fallback behind probed locations.
    NOT_PROBED = "not-probed"
    #: Probed, accepted the connection (or not) and sent no first byte within the deadline
    #: scaled to the copies that did answer: a black hole until a later probe says otherwise.
    #: Ranked after every live copy (a fallback); it never answered a probe, so a transfer
    #: should give it no more than the header deadline scaled to the live answers.
    SILENT = "silent"
    #: No transport for the scheme, a missing extra, or a transport refusal.
    UNSUPPORTED = "unsupported"
    #: The transport's own check refused it (filesystem not configured or mounted, size, ...).
    REFUSED = "refused"
    #: The location could not be reached (connect, timeout, authentication).
    UNREACHABLE = "unreachable"
    #: The image record listed it but it was rejected as malformed or hostile.
    REJECTED = "rejected"
    #: The probe answered with an HTTP status that is not success.
    HTTP_STATUS = "http-status"
    #: The probe failed for another reason.
    PROBE_FAILED = "probe-failed"
    #: Any other error raised while looking at the location.
    ERROR = "error"


@attrs.frozen
class Reason:
    """A reason's code and its human text; ``str()`` is the text shown to people and in JSON."""

    code: Code
    detail: str

    def __str__(self) -> str:
        return self.detail

    @classmethod
    def of(cls, exc: BaseException) -> Reason:
        """What an exception says of the location it names: the code from its type, the text
        without the location (its typed ``url``), since the row carries the URL already."""
        return cls(code_of(exc), SCRUB(reason_of(exc)))


def code_of(exc: BaseException) -> Code:
    """The code for an exception raised while judging a location, from its type alone."""
    if isinstance(exc, UnsupportedLocation):
        return Code.UNSUPPORTED
    if isinstance(exc, LocationUnreachable):
        return Code.UNREACHABLE
    return Code.ERROR
