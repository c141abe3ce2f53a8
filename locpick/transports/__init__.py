"""Transports by scheme, registered in one place.

``REGISTRY`` maps a scheme to a factory taking the shared Context. Schemes that Glance knows but
a client cannot read directly are listed in ``UNSUPPORTED`` with what they would need.
"""

from __future__ import annotations

from collections.abc import Callable

from locpick.errors import UnsupportedLocation
from locpick.models import Location
from locpick.transports.base import Context, Transport
from locpick.transports.file.transport import FileTransport
from locpick.transports.fsspec.transport import SCHEMES as FSSPEC_SCHEMES
from locpick.transports.fsspec.transport import FsspecTransport
from locpick.transports.http.transport import HttpTransport
from locpick.transports.rbd import RbdTransport
from locpick.transports.swift.transport import SwiftTransport

__all__ = ["REGISTRY", "UNSUPPORTED", "Transports"]

REGISTRY: dict[str, Callable[[Context], Transport]] = {
    "http": HttpTransport,
    "https": HttpTransport,
    "file": FileTransport,
    # s3 and other object stores; the implementation package is imported lazily
    **dict.fromkeys(FSSPEC_SCHEMES, FsspecTransport),
    "swift": SwiftTransport,
    "swift+http": SwiftTransport,
    "swift+https": SwiftTransport,
    "swift+config": SwiftTransport,
    # Ceph RBD (Glance's rbd store): librbd bindings or the rbd command, found at first use
    "rbd": RbdTransport,
}

UNSUPPORTED: dict[str, str] = {
    "cinder": "a Cinder volume attachment",
    "vsphere": "a vSphere datastore client",
    "sheepdog": "a Sheepdog client",
}


class Transports:
    """The transports of one client, created lazily, one instance per transport class."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._by_factory: dict[Callable[[Context], Transport], Transport] = {}

    def for_location(self, location: Location) -> Transport:
        scheme = location.scheme
        factory = REGISTRY.get(scheme)
        if factory is None:
            needs = UNSUPPORTED.get(scheme)
            reason = (
                f"unsupported scheme {scheme!r}, needs {needs}"
                if needs
                else f"unknown scheme {scheme!r}"
            )
            raise UnsupportedLocation(f"{location.display_url}: {reason}", url=location.display_url)
        transport = self._by_factory.get(factory)
        if transport is None:
            transport = self._by_factory[factory] = factory(self.ctx)
        return transport

    def close(self) -> None:
        for transport in self._by_factory.values():
            transport.close()
        self._by_factory.clear()
