"""The transport contract: every registered transport declares its Capabilities and satisfies
the Protocol, and an HTTP status reaches callers as typed fields of the error."""

from __future__ import annotations

import os
from collections.abc import Iterator

import attrs
import pytest

from locpick._demo.origin import Origin
from locpick.config.model import Config
from locpick.errors import LocationUnreachable
from locpick.models import Image, Location
from locpick.transports import REGISTRY, Transports, guards
from locpick.transports.base import Capabilities, Context, Stream, Transport
from locpick.transports.http.transport import HttpTransport

DATA = os.urandom(64 << 10)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin(DATA) as o:
        yield o


@pytest.fixture
def transports() -> Iterator[Transports]:
    t = Transports(Context(Config()))
    yield t
    t.close()


def test_every_transport_declares_frozen_capabilities(transports: Transports) -> None:
    for scheme in REGISTRY:
        transport = transports.for_location(Location(f"{scheme}://host/x"))
        assert isinstance(transport, Transport), scheme
        assert isinstance(transport.capabilities, Capabilities), scheme
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            transport.capabilities.system_copy = True  # type: ignore[misc]
    http = transports.for_location(Location("http://host/x")).capabilities
    file = transports.for_location(Location("file:///x")).capabilities
    assert (http.bounded_ranges, http.if_range, http.system_copy) == (True, True, False)
    assert (file.bounded_ranges, file.if_range, file.system_copy) == (False, False, True)


def test_bounded_range_is_honoured_where_declared(origin: Origin) -> None:
    transport = HttpTransport(Context(Config()))
    try:
        stream = transport.open(Location(origin.url), Image("i", len(DATA)), offset=100, end=300)
        assert isinstance(stream, Stream)
        buf = bytearray(1024)
        got = b""
        while n := stream.readinto(memoryview(buf)):
            got += bytes(buf[:n])
        stream.close()
        assert (stream.start, got) == (100, DATA[100:300])
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("status", "retry_after", "permanent"), [(503, 7, False), (429, None, False), (404, None, True)]
)
def test_status_is_a_typed_field(
    origin: Origin, status: int, retry_after: int | None, permanent: bool
) -> None:
    origin.faults.fail_first_n = 1
    origin.faults.fail_status = status
    origin.faults.retry_after = retry_after
    transport = HttpTransport(Context(Config()))
    try:
        with pytest.raises(LocationUnreachable) as info:
            transport.open(Location(origin.url), Image("i", len(DATA)), offset=0)
    finally:
        transport.close()
    err = info.value
    assert (err.status, err.permanent) == (status, permanent)
    assert err.retry_after == (None if retry_after is None else float(retry_after))


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 0-99/1000", (0, 99, 1000)),
        (" bytes 5-9/* ", (5, 9, None)),
        ("bytes 0-99", None),
        ("items 0-99/1000", None),
        ("bytes a-b/1000", None),
        (None, None),
        (1000, None),
    ],
)
def test_content_range_is_parsed_once_for_every_transport(
    value: object, parsed: tuple[int, int, int | None] | None
) -> None:
    assert guards.parse_content_range(value) == parsed


def test_only_client_errors_that_will_not_change_are_permanent() -> None:
    statuses = (400, 401, 403, 404, 408, 410, 416, 429, 500, 502, 503)
    permanent = [s for s in statuses if guards.permanent_status(s)]
    assert permanent == [400, 401, 403, 404, 410, 416]
    err = guards.status_error("http://h/x", 503, "2", message="auth answered HTTP 503")
    assert (str(err), err.status, err.retry_after, err.permanent) == (
        "http://h/x: auth answered HTTP 503",
        503,
        2.0,
        False,
    )
