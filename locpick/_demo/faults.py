"""What the test origin can be told to do wrong (:class:`Faults`) and what it saw
(:class:`RequestRecord`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass
class Faults:
    """Faults to inject; mutate attributes at any time (effective from the next request).

    Precedence per request: ``blackhole`` > ``first_byte_delay`` (then continue) >
    ``redirect_to`` > ``status`` > ``fail_first_n`` > normal serving.
    """

    #: Seconds to wait before sending the status line/headers (applies to every response).
    first_byte_delay: float = 0.0
    #: Cap on body bytes/s for each response (token bucket, ~10 ms slices, 50 ms burst). Live.
    bandwidth: float | None = None
    #: Cap on body bytes/s of the whole origin, SHARED by all its connections (as a NIC is):
    #: parallel requests to one origin split this rate. Live.
    uplink: float | None = None
    #: Close the connection after this many body bytes *of each response* (0 = headers only).
    cut_after_bytes: int | None = None
    #: Close the connection when a response reaches this *absolute file offset*: bytes
    #: [cut_at_offset, ...) are never sent. Applies only if start < cut_at_offset < end of the
    #: served range, so a resume with ``Range: bytes=<cut_at_offset>-`` succeeds.
    cut_at_offset: int | None = None
    #: Use a TCP RST (SO_LINGER 0) instead of a FIN for cuts/stall ends.
    reset: bool = False
    #: Send this many body bytes of each response, then send nothing while keeping the socket
    #: open, until the origin stops or ``stall_seconds`` elapse; then close the connection.
    stall_after: int | None = None
    stall_seconds: float | None = None
    #: Absolute file offsets whose byte is XOR-ed with 0xFF when sent.
    corrupt_at: Iterable[int] = ()
    #: Answer every request with this status (small text body), e.g. 500 or 404.
    status: int | None = None
    #: The first N requests (counted since start/reset_counters) get ``fail_status``.
    fail_first_n: int = 0
    fail_status: int = 503
    #: Value of a Retry-After header on ``fail_first_n`` answers (None = no header).
    retry_after: int | str | None = None
    #: Accept connections but never answer (new requests wait until the origin stops).
    blackhole: bool = False
    #: Answer Range requests with 200 and the full body; Accept-Ranges is not sent.
    ignore_range: bool = False
    #: Add this delta to the start/end claimed in Content-Range of 206 answers; the body and
    #: Content-Length stay those of the range actually requested.
    lie_content_range: int | None = None
    #: Append this many b"X" bytes after each body. With ``extra_in_length`` False the
    #: Content-Length stays honest (the extra bytes trail beyond the framing and the connection
    #: is closed afterwards); with True Content-Length includes them (the body is longer than
    #: the image; Content-Range, if any, is unchanged).
    extra_bytes: int = 0
    extra_in_length: bool = False
    #: Answer every request (any path) with 302 and this Location.
    redirect_to: str | None = None
    #: Send the body one byte at a time, ``drip_interval`` seconds apart. Live.
    drip: bool = False
    drip_interval: float = 1.0
    #: Extra response headers added to normal (200/206) answers.
    extra_headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def reset_all(self) -> None:
        """Restore every fault to its default, in place."""
        fresh = Faults()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as seen by the origin."""

    method: str
    path: str
    headers: dict[str, str]
    range: str | None
    status: int | None  # None when the request was never answered (blackhole)
    time: float  # time.monotonic() at arrival
