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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import urllib.parse
from typing import Any, Literal

import attrs
import cachetools
import httpx

from locpick.errors import LocationError, LocationUnreachable, UnsupportedLocation, reason_of
from locpick.models import Image, Location, Probe
from locpick.redact import SCRUB, redact_url
from locpick.transports.base import Capabilities, Context, TransportDefaults
from locpick.transports.guards import status_error
from locpick.transports.http import HttpStream, HttpTransport, RawHttpStream

_HTTP_SCHEME = {"swift": "https", "swift+https": "https", "swift+http": "http"}
#: Seconds a token is kept when the auth service does not say how long it lives.
_DEFAULT_TTL = 3600.0
#: Renew this long before a token's announced expiry.
_MARGIN = 30.0
_TOKEN_KEY = "locpick.swift.token"  # noqa: S105 - a metadata key, not a secret

Form = Literal["single", "config", "multi"]


class _Secret:
    """A token that prints as ``***`` wherever it might end up."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<token ***>"


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


@attrs.frozen
class _Auth:
    token: str = attrs.field(repr=False)
    storage_url: str
    ttl: float


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


class _ObjectHttp(HttpTransport):
    """The http transport, sending a Swift token to the object's own host (never elsewhere)."""

    def _headers_for(self, location: Location, url: str) -> dict[str, str]:
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
        self._http = _ObjectHttp(ctx)
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        #: One lock per credential, so a slow auth endpoint does not hold up the others.
        self._key_locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._tokens: cachetools.TLRUCache[tuple[str, str, str, str], _Auth] = cachetools.TLRUCache(
            maxsize=256, ttu=_expiry, timer=time.monotonic
        )
        self._catalogs: cachetools.TTLCache[str, frozenset[tuple[str, int]]] = cachetools.TTLCache(
            maxsize=16, ttl=300.0
        )
        #: How many times each cache key was authenticated (tests, diagnostics).
        self.auth_count: dict[tuple[str, str, str, str], int] = {}

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

    # -- auth ---------------------------------------------------------------------------------
    def _cache_key(self, target: SwiftTarget) -> tuple[str, str, str, str]:
        project, _, user = (target.user or "").rpartition(":")
        digest = hashlib.sha256((target.key or "").encode()).hexdigest()
        # A different key for the same user is a different credential: never reuse its token.
        return (target.auth_url or "", user, project, digest)

    def _auth(
        self, location: Location, target: SwiftTarget, *, refresh: bool, timeout: float | None
    ) -> _Auth:
        key = self._cache_key(target)
        with self._auth_lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
            if refresh:
                self._tokens.pop(key, None)
        with key_lock:
            with self._auth_lock:
                hit = self._tokens.get(key)
            if hit is not None:
                return hit
            if target.v1:
                auth = self._v1(location, target, timeout)
            else:
                auth = self._keystone(location, target, timeout)
            SCRUB.add(auth.token)
            with self._auth_lock:
                self._tokens[key] = auth
                self.auth_count[key] = self.auth_count.get(key, 0) + 1
            return auth

    def _v1(self, location: Location, target: SwiftTarget, timeout: float | None) -> _Auth:
        shown = location.display_url
        auth_url = target.auth_url or ""
        where = redact_url(auth_url)
        reason = self.ctx.net.check_host(
            urllib.parse.urlsplit(auth_url).hostname or "", resolve=True
        )
        if reason:
            raise UnsupportedLocation(f"{shown}: refused, {reason}", url=shown)
        try:
            response = self.ctx.http.get(
                auth_url,
                headers={"X-Auth-User": target.user or "", "X-Auth-Key": target.key or ""},
                timeout=httpx.Timeout(timeout) if timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise LocationUnreachable(
                f"{shown}: Swift auth {where} unreachable ({type(exc).__name__})", url=shown
            ) from exc
        status = response.status_code
        if status in (401, 403):
            raise LocationUnreachable(
                f"{shown}: Swift auth {where} refused the location's credentials (HTTP {status})",
                url=shown,
                permanent=True,
            )
        if not 200 <= status < 300:
            raise status_error(shown, status, message=f"Swift auth {where} answered HTTP {status}")
        token = response.headers.get("x-auth-token") or response.headers.get("x-storage-token")
        storage = response.headers.get("x-storage-url")
        if not token or not storage:
            raise LocationUnreachable(
                f"{shown}: Swift auth {where} gave no token or storage URL", url=shown
            )
        ttl = _DEFAULT_TTL
        with contextlib.suppress(ValueError):
            ttl = float(response.headers.get("x-auth-token-expires", _DEFAULT_TTL))
        return _Auth(token=token, storage_url=storage.rstrip("/"), ttl=ttl)

    def _keystone(self, location: Location, target: SwiftTarget, timeout: float | None) -> _Auth:
        shown = location.display_url
        where = redact_url(target.auth_url or "")
        try:
            from keystoneauth1 import exceptions as ks_exc
            from keystoneauth1.identity import v3
        except ImportError as exc:
            raise UnsupportedLocation(
                f"{shown}: Keystone auth needs the openstack extra (install locpick[openstack])",
                url=shown,
            ) from exc
        project, _, user = (target.user or "").rpartition(":")
        plugin = v3.Password(
            auth_url=target.auth_url or "",
            username=user,
            password=target.key or "",
            project_name=project or None,
            user_domain_id="default",
            project_domain_id="default" if project else None,
        )
        session = self.ctx.net.keystone_session(
            target.auth_url or "",
            auth=plugin,
            timeout=timeout or self.ctx.config.transfer.connect_timeout,
        )
        try:
            token = session.get_token()
            storage = session.get_endpoint(service_type="object-store", interface="public")
        except ks_exc.Unauthorized as exc:
            raise LocationUnreachable(
                f"{shown}: Keystone {where} refused the location's credentials (HTTP 401)",
                url=shown,
                permanent=True,
            ) from exc
        except ks_exc.ClientException as exc:
            raise LocationUnreachable(
                f"{shown}: Keystone {where} failed ({type(exc).__name__})", url=shown
            ) from exc
        if not token or not storage:
            raise LocationUnreachable(
                f"{shown}: Keystone {where} gave no token or no object-store endpoint", url=shown
            )
        ttl = _DEFAULT_TTL
        expires = getattr(getattr(plugin, "auth_ref", None), "expires", None)
        if expires is not None:
            import datetime as dt

            ttl = (expires - dt.datetime.now(dt.UTC)).total_seconds()
        return _Auth(token=str(token), storage_url=str(storage).rstrip("/"), ttl=ttl)

    # -- multi-tenant token policy ------------------------------------------------------------
    def _token_note(self, location: Location, object_url: str) -> str:
        """Why the caller's token may go to this host; UnsupportedLocation when it may not."""
        shown = location.display_url
        parts = urllib.parse.urlsplit(object_url)
        host = parts.hostname or ""
        port = parts.port
        listed = self.ctx.config.security.token_hosts
        named = f"{host}:{port}" if port else host
        if host in listed or named in listed:
            return f"caller's token sent to {named}: listed in [security] token_hosts"
        if (host, _port(parts)) in self._catalog_hosts():
            return f"caller's token sent to {named}: object-store endpoint in the token's catalog"
        raise UnsupportedLocation(
            f"{shown}: refused to send the caller's token to {named}: not an object-store "
            "endpoint in the token's catalog, nor in [security] token_hosts",
            url=shown,
        )

    def _catalog_hosts(self) -> frozenset[tuple[str, int]]:
        """Object-store endpoint hosts of the caller's token (Keystone v3 token validation)."""
        token = self.ctx.token
        keystone = os.environ.get("OS_AUTH_URL", "").rstrip("/")
        if not token or not keystone:
            return frozenset()
        with self._catalog_lock:
            with self._lock:
                hit = self._catalogs.get(token)
            if hit is not None:
                return hit
            found = self._fetch_catalog_hosts(keystone, token)
            with self._lock:
                self._catalogs[token] = found
            return found

    def _fetch_catalog_hosts(self, keystone: str, token: str) -> frozenset[tuple[str, int]]:
        if not keystone.endswith("/v3"):
            keystone += "/v3"
        hosts: set[tuple[str, int]] = set()
        try:
            response = self.ctx.http.get(
                f"{keystone}/auth/tokens",
                headers={"X-Auth-Token": token, "X-Subject-Token": token},
            )
            if response.status_code == 200:
                catalog: Any = response.json().get("token", {}).get("catalog", [])
                for service in catalog or []:
                    if service.get("type") != "object-store":
                        continue
                    for endpoint in service.get("endpoints", []):
                        ep = urllib.parse.urlsplit(str(endpoint.get("url", "")))
                        if ep.hostname:
                            hosts.add((ep.hostname, _port(ep)))
        except (httpx.HTTPError, ValueError, AttributeError):
            hosts = set()
        return frozenset(hosts)

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
            note = self._token_note(location, url)
            token = self.ctx.token or ""
        else:
            auth = self._auth(location, target, refresh=refresh, timeout=timeout)
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
        with self._auth_lock:
            self._tokens.clear()


def _port(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _expiry(_key: object, value: _Auth, now: float) -> float:
    return now + max(0.0, value.ttl - _MARGIN)


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
