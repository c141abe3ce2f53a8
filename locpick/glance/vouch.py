"""Whether the fleet vouches for a peer's copy: anyone who may add a location to an
image can write ``locpick_cache`` / ``locpick_fill`` marks, so the marks alone prove nothing.

A node signs the metadata it registers: ``locpick_sig`` is ``v1:`` and the hex HMAC-SHA256, with
the fleet key the operator distributes (``[fleet] key_file``), over the canonical JSON of the
image id, the location URL and the signed keys (marker, fill state and start, registration time
and lease, topology). Or the operator lists the nodes (``[fleet] peers``: ``scheme://host[:port]``
prefixes or CIDRs matched against IP-literal hosts). A copy with neither is demoted to an
ordinary location (:func:`demote`): never a storm parent, never read without a probe. Pure: the
key is an argument (read once at the edge, :mod:`locpick.jobs.session`), never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from locpick.glance.lease import FILL, FILL_STARTED, LEASE, MARKER, REGISTERED
from locpick.models import Image, Location

__all__ = ["SIG", "FleetTrust", "canonical", "demote", "listed", "signature", "verify"]

#: Location metadata key holding the signature.
SIG = "locpick_sig"
#: The metadata keys a signature covers (present ones only; absent ones are absent in it too).
SIGNED = (MARKER, FILL, FILL_STARTED, REGISTERED, LEASE, "region", "zone", "rack", "host")
_VERSION = "v1"
#: Metadata keys that make a location a locpick peer copy; dropped when nobody vouches for it.
PREFIX = "locpick_"
#: Shortest fleet key accepted (bytes): an HMAC key shorter than this is guessable.
MIN_KEY = 16


def canonical(image_id: str, url: str, metadata: Mapping[str, Any]) -> bytes:
    """The bytes signed: image id, URL and the signed keys, as compact sorted JSON."""
    fields = {k: str(metadata[k]) for k in SIGNED if k in metadata}
    doc = {"v": _VERSION, "image": image_id, "url": url, "meta": fields}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signature(key: bytes, image_id: str, url: str, metadata: Mapping[str, Any]) -> str:
    """``v1:<hex HMAC-SHA256>`` of :func:`canonical` under ``key``."""
    mac = hmac.new(key, canonical(image_id, url, metadata), hashlib.sha256).hexdigest()
    return f"{_VERSION}:{mac}"


def verify(key: bytes, image_id: str, url: str, metadata: Mapping[str, Any]) -> bool:
    """True when ``metadata`` carries a valid signature of this image, URL and its keys."""
    sig = metadata.get(SIG)
    if not isinstance(sig, str) or len(sig) > 200:
        return False
    return hmac.compare_digest(sig, signature(key, image_id, url, metadata))


def listed(url: str, peers: Sequence[str]) -> bool:
    """True when ``url`` is on the operator's allow-list: an entry ``scheme://host[:port][/path]``
    matches the same scheme, host and port (path as a prefix); a CIDR matches an IP-literal
    host (names are not resolved: a name is matched only by a URL entry)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port or _PORTS.get(parts.scheme)
    except ValueError:
        return False
    if not host:
        return False
    for entry in peers:
        if "://" in entry:
            try:
                want = urllib.parse.urlsplit(entry)
                want_port = want.port or _PORTS.get(want.scheme)
            except ValueError:
                continue
            if (want.scheme, want.hostname, want_port) == (parts.scheme, host, port) and (
                parts.path.startswith(want.path or "/")
            ):
                return True
            continue
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


_PORTS = {"http": 80, "https": 443}


@attrs.frozen
class FleetTrust:
    """What this node trusts: the fleet key (hidden from repr) and the operator's node list."""

    key: bytes | None = attrs.field(default=None, repr=False)
    peers: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return self.key is not None or bool(self.peers)

    def vouches(self, image_id: str, location: Location) -> bool:
        """True for a copy signed with the fleet key or on the allow-list."""
        if self.key is not None and verify(self.key, image_id, location.url, location.metadata):
            return True
        return bool(self.peers) and listed(location.url, self.peers)

    def sign(self, image_id: str, url: str, metadata: Mapping[str, str]) -> dict[str, str]:
        """``metadata`` with this node's signature (unchanged, unsigned, without a key)."""
        meta = {k: v for k, v in metadata.items() if k != SIG}
        if self.key is not None:
            meta[SIG] = signature(self.key, image_id, url, meta)
        return meta


#: Topology keys of a location's metadata: an unvouched peer's claim to sit beside the nodes is
#: as unproven as its marks (a fake copies the nodes' topology to become their parent).
PLACE = ("region", "zone", "rack", "host")


def demote(image: Image, fleet: FleetTrust) -> tuple[Image, tuple[str, ...]]:
    """The image with the ``locpick_*`` marks and claimed topology of every location the fleet
    does not vouch for dropped (it ranks as an ordinary location of unknown place, probed like
    any other), and those URLs."""
    kept: list[Location] = []
    demoted: list[str] = []
    for loc in image.locations:
        if any(k.startswith(PREFIX) for k in loc.metadata) and not fleet.vouches(image.id, loc):
            meta = {
                k: v for k, v in loc.metadata.items() if not k.startswith(PREFIX) and k not in PLACE
            }
            kept.append(attrs.evolve(loc, metadata=meta))
            demoted.append(loc.url)
        else:
            kept.append(loc)
    if not demoted:
        return image, ()
    return attrs.evolve(image, locations=tuple(kept)), tuple(demoted)
