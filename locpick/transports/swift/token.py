"""Where the caller's own token may go for a multi-tenant Swift object URL: a host listed in
``[security] token_hosts``, or an ``object-store`` endpoint of the token's own service catalog
(asked of Keystone once per token and cached)."""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

import cachetools
import httpx

from locpick.errors import UnsupportedLocation
from locpick.models import Location
from locpick.transports.base import Context


class TokenHosts:
    """The multi-tenant token policy of one ``SwiftTransport``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self._catalogs: cachetools.TTLCache[str, frozenset[tuple[str, int]]] = cachetools.TTLCache(
            maxsize=16, ttl=300.0
        )

    def note(self, location: Location, object_url: str) -> str:
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
        keystone = self.ctx.env.get("OS_AUTH_URL", "").rstrip("/")
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


def _port(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)
