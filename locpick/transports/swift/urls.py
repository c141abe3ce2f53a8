"""The three forms of a Glance Swift location (credentials in the URL, a ``swift+config``
reference, the object URL itself), parsed into a ``SwiftTarget``: no I/O, no policy."""

from __future__ import annotations

import urllib.parse
from typing import Literal

import attrs

from locpick.errors import UnsupportedLocation
from locpick.models import Location
from locpick.redact import SCRUB

_HTTP_SCHEME = {"swift": "https", "swift+https": "https", "swift+http": "http"}

Form = Literal["single", "config", "multi"]


@attrs.frozen
class SwiftTarget:
    """A parsed Swift location (credentials hidden from repr)."""

    form: Form
    container: str
    obj: str
    #: Forms 1/2: where to authenticate; form 3: None.
    auth_url: str | None = None
    #: Forms 1/2: ``account:user``.
    user: str | None = None
    key: str | None = attrs.field(default=None, repr=False)
    #: Form 3: the object URL itself (http/https).
    object_url: str | None = None
    #: Form 2: the reference name.
    ref: str | None = None

    @property
    def v1(self) -> bool:
        path = urllib.parse.urlsplit(self.auth_url or "").path.rstrip("/")
        return path.endswith(("auth/v1.0", "/v1.0"))


def parse_swift_location(location: Location) -> SwiftTarget:
    """Split a Glance swift location into its form and parts; UnsupportedLocation if malformed."""
    shown = location.display_url
    try:
        parts = urllib.parse.urlsplit(location.url)
    except ValueError as exc:
        raise UnsupportedLocation(f"{shown}: malformed Swift URL", url=shown) from exc
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    creds = ""
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or not netloc:
        raise UnsupportedLocation(
            f"{shown}: a Swift location needs a host, a container and an object", url=shown
        )
    container = urllib.parse.unquote(segments[-2])
    obj = urllib.parse.unquote(segments[-1])
    prefix = "/".join(segments[:-2])
    if scheme == "swift+config":
        if creds:
            raise UnsupportedLocation(f"{shown}: swift+config URLs carry no credentials", url=shown)
        if prefix:
            raise UnsupportedLocation(
                f"{shown}: swift+config URL must be swift+config://REF/CONTAINER/OBJECT", url=shown
            )
        return SwiftTarget("config", container, obj, ref=urllib.parse.unquote(netloc))
    http_scheme = _HTTP_SCHEME.get(scheme)
    if http_scheme is None:
        raise UnsupportedLocation(f"{shown}: not a Swift scheme ({scheme!r})", url=shown)
    if creds:
        user_q, sep, key_q = creds.rpartition(":")
        if not sep or not user_q or not key_q:
            raise UnsupportedLocation(
                f"{shown}: Swift credentials must be ACCOUNT%3AUSER:KEY", url=shown
            )
        key = urllib.parse.unquote(key_q)
        SCRUB.add(key, key_q)
        auth_path = f"/{prefix}" if prefix else ""
        return SwiftTarget(
            "single",
            container,
            obj,
            auth_url=f"{http_scheme}://{netloc}{auth_path}",
            user=urllib.parse.unquote(user_q),
            key=key,
        )
    return SwiftTarget(
        "multi",
        container,
        obj,
        object_url=urllib.parse.urlunsplit((http_scheme, netloc, parts.path, "", "")),
    )
