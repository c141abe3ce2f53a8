"""Swift credentials turned into a token and a storage URL (Swift v1 auth or Keystone v3
through keystoneauth1), cached per (auth URL, user, project, key) for the token's lifetime, one
lock per credential so a slow auth endpoint holds up no other."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import urllib.parse

import attrs
import cachetools
import httpx

from locpick.errors import LocationUnreachable, UnsupportedLocation
from locpick.models import Location
from locpick.redact import SCRUB, redact_url
from locpick.transports.base import Context
from locpick.transports.guards import status_error
from locpick.transports.swift.urls import SwiftTarget

#: Seconds a token is kept when the auth service does not say how long it lives.
_DEFAULT_TTL = 3600.0
#: Renew this long before a token's announced expiry.
_MARGIN = 30.0

Key = tuple[str, str, str, str]


@attrs.frozen
class Auth:
    """A token, the storage URL it is for, and its lifetime in seconds."""

    token: str = attrs.field(repr=False)
    storage_url: str
    ttl: float


class SwiftAuth:
    """The token cache of one ``SwiftTransport``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        #: One lock per credential, so a slow auth endpoint does not hold up the others.
        self._key_locks: dict[Key, threading.Lock] = {}
        self.tokens: cachetools.TLRUCache[Key, Auth] = cachetools.TLRUCache(
            maxsize=256, ttu=_expiry, timer=time.monotonic
        )
        #: How many times each cache key was authenticated (tests, diagnostics).
        self.count: dict[Key, int] = {}

    def cache_key(self, target: SwiftTarget) -> Key:
        project, _, user = (target.user or "").rpartition(":")
        digest = hashlib.sha256((target.key or "").encode()).hexdigest()
        # A different key for the same user is a different credential: never reuse its token.
        return (target.auth_url or "", user, project, digest)

    def get(
        self, location: Location, target: SwiftTarget, *, refresh: bool, timeout: float | None
    ) -> Auth:
        key = self.cache_key(target)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
            if refresh:
                self.tokens.pop(key, None)
        with key_lock:
            with self._lock:
                hit = self.tokens.get(key)
            if hit is not None:
                return hit
            if target.v1:
                auth = self._v1(location, target, timeout)
            else:
                auth = self._keystone(location, target, timeout)
            SCRUB.add(auth.token)
            with self._lock:
                self.tokens[key] = auth
                self.count[key] = self.count.get(key, 0) + 1
            return auth

    def _v1(self, location: Location, target: SwiftTarget, timeout: float | None) -> Auth:
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
        return Auth(token=token, storage_url=storage.rstrip("/"), ttl=ttl)

    def _keystone(self, location: Location, target: SwiftTarget, timeout: float | None) -> Auth:
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
        return Auth(token=str(token), storage_url=str(storage).rstrip("/"), ttl=ttl)

    def clear(self) -> None:
        with self._lock:
            self.tokens.clear()


def _expiry(_key: object, value: Auth, now: float) -> float:
    return now + max(0.0, value.ttl - _MARGIN)
