"""Glance's Swift copies, read directly from the object store.

The three location forms Glance's swift driver writes (glance_store ``swift/store.py``):

1. ``swift+http(s)://ACCOUNT%3AUSER:KEY@AUTH_HOST/AUTH_PATH/CONTAINER/OBJECT`` (``swift://`` is
   https): credentials in the URL. Swift v1 auth when AUTH_PATH ends in ``auth/v1.0``
   (``X-Auth-User``/``X-Auth-Key`` -> ``X-Auth-Token`` + ``X-Storage-Url``), else Keystone v3
   through keystoneauth1 (project = ACCOUNT, user = USER, password = KEY; the storage URL is the
   catalog's ``object-store`` endpoint).
2. ``swift+config://REF/CONTAINER/OBJECT``: credentials in Glance's own config; usable only when
   locpick's config maps REF (``[swift.refs.REF]`` auth_url, user, key), then as form 1.
3. ``swift+http(s)://STORAGE_HOST/v1/AUTH_<project>/CONTAINER/OBJECT``: the object URL itself,
   read with the caller's own token, which is sent there only when the host is an
   ``object-store`` endpoint of the token's service catalog or listed in ``[security]
   token_hosts``; rank's reasons say which.

The object GET is the http transport's (ranged probe, Range resume, guarded redirects, the same
errors) with the Swift token added. Tokens are cached per (auth URL, user, project) for their
lifetime; a 401 re-authenticates once. Keys and tokens are registered with ``SCRUB`` and never
appear in a message; a location's display URL has no userinfo.

Large images are Dynamic Large Objects: the manifest's ETag is not the md5 of the content, so
no ETag is ever used as a checksum here; verification hashes the bytes.

The parts: ``swiftloc`` (the three URL forms), ``swiftauth`` (credentials -> cached token),
``swifttoken`` (where the caller's own token may go); this module is the transport.
"""

from __future__ import annotations

import urllib.parse

import attrs
import cachetools

from locpick.errors import LocationError, UnsupportedLocation, reason_of
from locpick.models import Image, Location, Probe
from locpick.redact import SCRUB
from locpick.transports.base import Capabilities, Context, TransportDefaults
from locpick.transports.http.send import Requester
from locpick.transports.http.stream import HttpStream, RawHttpStream
from locpick.transports.http.transport import HttpTransport
from locpick.transports.swift.auth import Auth, Key, SwiftAuth
from locpick.transports.swift.token import TokenHosts
from locpick.transports.swift.urls import SwiftTarget, parse_swift_location

__all__ = ["SwiftTransport"]

_TOKEN_KEY = "locpick.swift.token"  # noqa: S105 - a metadata key, not a secret


class _Secret:
    """A token that prints as ``***`` wherever it might end up."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<token ***>"


class _ObjectRequester(Requester):
    """The http requests, sending a Swift token to the object's own host (never elsewhere)."""

    def headers_for(self, location: Location, url: str) -> dict[str, str]:
        secret = location.metadata.get(_TOKEN_KEY)
        if not isinstance(secret, _Secret):
            return {}
        target = urllib.parse.urlsplit(url)
        origin = urllib.parse.urlsplit(location.url)
        if (target.scheme, target.hostname, target.port) == (
            origin.scheme,
            origin.hostname,
            origin.port,
        ):
            return {"X-Auth-Token": secret.value}
        return {}


class SwiftTransport(TransportDefaults):
    """``swift``, ``swift+http``, ``swift+https`` and ``swift+config``."""

    schemes: tuple[str, ...] = ("swift", "swift+http", "swift+https", "swift+config")
    capabilities = Capabilities(idle_timeout=True, route=True)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._http = HttpTransport(ctx, _ObjectRequester(ctx))
        self._auth = SwiftAuth(ctx)
        self._token_hosts = TokenHosts(ctx)

    @property
    def auth_count(self) -> dict[Key, int]:
        """How many times each credential was authenticated (tests, diagnostics)."""
        return self._auth.count

    @property
    def _tokens(self) -> cachetools.TLRUCache[Key, Auth]:
        return self._auth.tokens

    # -- policy -------------------------------------------------------------------------------
    def check(self, location: Location, image: Image) -> str | None:
        try:
            target = self._resolve(location)
        except UnsupportedLocation as exc:
            return reason_of(exc)
        if target.form == "multi":
            if not self.ctx.token:
                return (
                    "multi-tenant Swift object URL: needs the caller's Keystone token "
                    "(--token / OS_AUTH_TOKEN)"
                )
            host = urllib.parse.urlsplit(target.object_url or "").hostname or ""
        else:
            host = urllib.parse.urlsplit(target.auth_url or "").hostname or ""
        if not host:
            return "URL has no host"
        return self.ctx.net.check_host(host, resolve=False)

    def route(self, location: Location) -> str | None:
        """The route of the auth (or object) host; the storage URL's is the same unless the
        catalog names a host that no_proxy treats differently."""
        try:
            target = self._resolve(location)
        except UnsupportedLocation:
            return None
        return self.ctx.net.describe_route(target.object_url or target.auth_url or "")

    def _resolve(self, location: Location) -> SwiftTarget:
        target = parse_swift_location(location)
        if target.form != "config":
            return target
        ref = self.ctx.config.swift.ref(target.ref or "")
        if ref is None:
            shown = location.display_url
            raise UnsupportedLocation(
                f"{shown}: swift+config reference {target.ref!r} is not mapped in locpick's "
                f"config (add [swift.refs.{target.ref}] with auth_url, user, key)",
                url=shown,
            )
        SCRUB.add(ref.key)
        return attrs.evolve(target, auth_url=ref.auth_url.rstrip("/"), user=ref.user, key=ref.key)

    # -- requests -----------------------------------------------------------------------------
    def _object(
        self,
        location: Location,
        target: SwiftTarget,
        *,
        refresh: bool,
        timeout: float | None = None,
    ) -> tuple[Location, str | None]:
        """The object's http(s) URL as an internal Location carrying its token, and a note."""
        if target.form == "multi":
            url = target.object_url or ""
            note = self._token_hosts.note(location, url)
            token = self.ctx.token or ""
        else:
            auth = self._auth.get(location, target, refresh=refresh, timeout=timeout)
            q = urllib.parse.quote
            url = f"{auth.storage_url}/{q(target.container, safe='')}/{q(target.obj, safe='')}"
            token, note = auth.token, None
        return Location(url=url, metadata={_TOKEN_KEY: _Secret(token)}), note

    def probe(self, location: Location, image: Image, *, timeout: float) -> Probe:
        shown = location.display_url
        try:
            target = self._resolve(location)
        except LocationError as exc:
            return Probe(url=shown, ok=False, error=reason_of(exc))
        probe: Probe | None = None
        note: str | None = None
        for attempt in (0, 1):
            try:
                inner, note = self._object(location, target, refresh=attempt > 0, timeout=timeout)
            except LocationError as exc:
                return Probe(url=shown, ok=False, error=SCRUB(reason_of(exc)))
            probe = self._http.probe(inner, image, timeout=timeout)
            if probe.status == 401 and attempt == 0 and target.form != "multi":
                continue
            break
        assert probe is not None
        error = _explain(probe.status, probe.error, target) if probe.error else None
        return attrs.evolve(probe, url=shown, error=error, note=note)

    def open(
        self,
        location: Location,
        image: Image,
        *,
        offset: int,
        end: int | None = None,
        if_range: str | None = None,
    ) -> HttpStream | RawHttpStream:
        """The object through its storage URL (``end`` and ``if_range`` passed on as given)."""
        target = self._resolve(location)
        for attempt in (0, 1):
            inner, _note = self._object(location, target, refresh=attempt > 0)
            try:
                stream = self._http.open(inner, image, offset=offset, end=end, if_range=if_range)
            except LocationError as exc:
                if exc.status == 401 and attempt == 0 and target.form != "multi":
                    continue
                raise _rewrap(exc, location, target) from exc
            # Name the Swift location (not its storage URL) in results and mid-transfer errors.
            stream.final_url = location.display_url
            return stream
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._auth.clear()


def _explain(status: int | None, error: str, target: SwiftTarget) -> str:
    """Say what a Swift HTTP status means for this location, else the ``error`` as it is."""
    whose = "the caller's token" if target.form == "multi" else "the token"
    if status == 401:
        return f"HTTP 401: Swift rejected {whose}"
    if status == 403:
        return f"HTTP 403: Swift denied {whose} read access to {target.container}/{target.obj}"
    if status == 404:
        return f"HTTP 404: no object {target.container}/{target.obj} in Swift"
    return SCRUB(error)


def _rewrap(exc: LocationError, location: Location, target: SwiftTarget) -> LocationError:
    """The same error, naming the Swift location (never its credentials)."""
    shown = location.display_url
    status = exc.status
    reason = _explain(status, f"HTTP {status}" if status else reason_of(exc), target)
    return type(exc)(
        f"{shown}: {reason}",
        url=shown,
        permanent=exc.permanent,
        status=status,
        retry_after=exc.retry_after,
    )
