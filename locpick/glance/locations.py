"""Adding and removing locations of an image in Glance (the JSON-patch locations API).

A node's cached copy becomes a location with ``add /locations/-``; eviction removes it with
``remove /locations/{index}`` after a fresh GET (indexes shift, so one removal per patch).
This needs ``show_multiple_locations = True`` and a role that Glance's policy lets change
locations; operators expose it only on an internal endpoint (OSSN-0090). The newer
``POST /v2/images/{id}/locations`` accepts only queued images, so it cannot add a copy of an
active image. Refusals become :class:`PublishError` with a message naming the setting.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import httpx

from locpick.config.model import Topology
from locpick.errors import LocpickError
from locpick.glance.lease import MARKER, lease_metadata
from locpick.redact import SCRUB, redact_url

log = logging.getLogger(__name__)

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
__all__ = ["GlanceLocations", "PublishError", "cache_location_url", "cache_metadata"]

_FORBIDDEN_HELP = (
    "Glance refused to change the image's locations; it needs show_multiple_locations = True "
    "in glance-api.conf and a role that the policy allows to set/delete image locations "
    "(set_image_location / delete_image_location), on an internal-only endpoint (OSSN-0090)"
)


class PublishError(LocpickError):
    """Glance would not add or remove a location; the cache keeps working without it."""

    exit_code = 3
    #: Glance's HTTP status when it answered one (500/409: concurrent changes, worth a retry).
    status: int | None = None


def cache_location_url(public_url: str, image_id: str, token: str) -> str:
    """The capability URL under which ``locpick serve`` at ``public_url`` serves ``image_id``.

    ``token`` (:func:`locpick.cache.capability.image_token`) sits in the path: Glance drops a query
    string when it checks an http location, and whoever can read the location may fetch it.
    """
    quoted = urllib.parse.quote(image_id, safe="")
    return f"{public_url.rstrip('/')}/images/{quoted}/{urllib.parse.quote(token, safe='')}"


def cache_metadata(
    topology: Topology, *, lease: float | None = None, now: float | None = None
) -> dict[str, str]:
    """The location metadata of a cache copy: this node's topology, the locpick marker and,
    with ``lease``, the registration time (``now``, default the clock) and lease."""
    meta = {MARKER: "true"}
    for key in ("region", "zone", "rack", "host"):
        value = getattr(topology, key)
        if value:
            meta[key] = value
    if lease is not None:
        meta.update(lease_metadata(time.time() if now is None else now, lease))
    return meta


class GlanceLocations:
    """Read and change one Glance endpoint's image locations with one token."""

    def __init__(self, http: httpx.Client, endpoint: str, token: str | None) -> None:
        self.http = http
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        if token:
            SCRUB.add(token)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.token:
            h["X-Auth-Token"] = self.token
        if content_type:
            h["Content-Type"] = content_type
        return h

    def _url(self, image_id: str) -> str:
        return f"{self.endpoint}/v2/images/{urllib.parse.quote(image_id, safe='')}"

    def locations(self, image_id: str) -> list[dict[str, Any]]:
        """The image's current ``locations`` list (raw dicts, Glance's order)."""
        record = self._get_json(self._url(image_id), "cannot reach", f"GET image {image_id}")
        locs = record.get("locations") if isinstance(record, Mapping) else None
        if locs is None:
            raise PublishError(
                f"glance {self._shown}: image {image_id} shows no 'locations'; "
                "set show_multiple_locations = True in glance-api.conf"
            )
        return [dict(loc) for loc in locs if isinstance(loc, Mapping)]

    @property
    def _shown(self) -> str:
        return redact_url(self.endpoint)

    def _get_json(self, url: str, unreachable: str, request: str) -> Any:
        """GET ``url``'s JSON; PublishError saying ``unreachable`` or which ``request`` failed."""
        try:
            resp = self.http.get(url, headers=self._headers())
        except httpx.HTTPError as exc:
            raise PublishError(
                f"glance {self._shown}: {unreachable} ({type(exc).__name__})"
            ) from exc
        if resp.status_code != 200:
            raise PublishError(f"glance {self._shown}: {request} answered HTTP {resp.status_code}")
        return resp.json()

    def _patch(self, image_id: str, ops: list[dict[str, Any]], what: str) -> None:
        try:
            resp = self.http.patch(
                self._url(image_id), json=ops, headers=self._headers(PATCH_TYPE), timeout=60.0
            )
        except httpx.HTTPError as exc:
            raise PublishError(
                f"glance {self._shown}: {what} failed ({type(exc).__name__})"
            ) from exc
        if resp.status_code in (200, 204):
            return
        body = SCRUB(resp.text.strip().replace("\n", " "))[:300]
        if resp.status_code == 403:
            raise PublishError(
                f"glance {self._shown}: {what}: HTTP 403 ({body}); {_FORBIDDEN_HELP}"
            )
        if resp.status_code == 400:
            raise PublishError(
                f"glance {self._shown}: {what}: HTTP 400 ({body}); either {_FORBIDDEN_HELP}, "
                "or Glance cannot reach the URL ([cache] public_url must be reachable from "
                "Glance and pass its allowed hosts/ports filter)"
            )
        err = PublishError(f"glance {self._shown}: {what}: HTTP {resp.status_code} ({body})")
        err.status = resp.status_code
        raise err

    def add(
        self,
        image_id: str,
        url: str,
        metadata: Mapping[str, Any],
        *,
        listed: Collection[str] | None = None,
    ) -> bool:
        """Add ``url`` as a location unless it is already one; True when added.

        ``listed``: the location URLs of a record the caller fetched just now, which saves
        the GET that would otherwise check for a duplicate."""
        if listed is None:
            listed = [str(loc.get("url")) for loc in self.locations(image_id)]
        if url in listed:
            return False
        op = {"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": metadata}}
        self._patch(image_id, [op], f"add location {redact_url(url)} to image {image_id}")
        log.info("glance: added location %s to image %s", redact_url(url), image_id)
        return True

    def renew(self, image_id: str, url: str, metadata: Mapping[str, Any]) -> bool:
        """Give the location ``url`` fresh ``metadata`` (a renewed lease); add it if absent.

        Glance 33 has no JSON pointer into a location's metadata (``replace
        /locations/N/metadata`` is a 400) and refuses ``replace /locations`` on a non-empty
        list, so one patch removes the location and adds it back: atomic, never a gap in
        which the copy is unlisted, and allowed even when it is the image's only location.
        True when it was renewed, False when it had to be added."""
        locs = self.locations(image_id)
        index = next((i for i, loc in enumerate(locs) if loc.get("url") == url), None)
        add: dict[str, Any] = {
            "op": "add",
            "path": "/locations/-",
            "value": {"url": url, "metadata": dict(metadata)},
        }
        if index is None:
            self._patch(image_id, [add], f"add location {redact_url(url)} to image {image_id}")
            log.info("glance: re-added location %s to image %s", redact_url(url), image_id)
            return False
        ops = [{"op": "remove", "path": f"/locations/{index}"}, add]
        self._patch(image_id, ops, f"renew location {redact_url(url)} of image {image_id}")
        log.info("glance: renewed the lease of %s on image %s", redact_url(url), image_id)
        return True

    def remove(self, image_id: str, url: str) -> int:
        """Remove every location equal to ``url`` (one patch per index); returns how many."""
        removed = 0
        for _ in range(16):
            locs = self.locations(image_id)
            index = next((i for i, loc in enumerate(locs) if loc.get("url") == url), None)
            if index is None:
                break
            op = {"op": "remove", "path": f"/locations/{index}"}
            self._patch(image_id, [op], f"remove location {redact_url(url)} of image {image_id}")
            removed += 1
            log.info("glance: removed location %s of image %s", redact_url(url), image_id)
        return removed

    def images(
        self, page_size: int = 200, *, query: Sequence[tuple[str, str]] = ()
    ) -> Iterator[Mapping[str, Any]]:
        """Every image record the token can list, one page at a time (follows ``next``);
        ``query``: Glance's list filters, e.g. ``[("tag", "golden"), ("os_distro", "debian")]``
        (repeated tags must all match)."""
        params = urllib.parse.urlencode([("limit", str(page_size)), *query])
        url: str | None = f"{self.endpoint}/v2/images?{params}"
        seen: set[str] = set()
        while url:
            doc = self._get_json(url, "cannot list images", "listing images")
            for img in doc.get("images", []) if isinstance(doc, Mapping) else []:
                if isinstance(img, Mapping) and isinstance(img.get("id"), str):
                    yield img
            nxt = doc.get("next") if isinstance(doc, Mapping) else None
            url = urllib.parse.urljoin(self.endpoint + "/", nxt.lstrip("/")) if nxt else None
            if url in seen:  # a looping ``next`` would never end
                break
            if url:
                seen.add(url)

    def images_with_location_prefix(self, prefix: str) -> dict[str, list[str]]:
        """Image id -> its location URLs starting with ``prefix`` (pages through the list)."""
        found: dict[str, list[str]] = {}
        for img in self.images():
            urls = [
                loc.get("url", "")
                for loc in img.get("locations") or []
                if isinstance(loc, Mapping) and str(loc.get("url", "")).startswith(prefix)
            ]
            if urls:
                found[img["id"]] = urls
        return found

    def images_with_locpick_copies(self) -> list[str]:
        """Ids of the images that list at least one locpick cache location (pages through)."""
        return [
            img["id"]
            for img in self.images()
            if any(
                isinstance(loc, Mapping)
                and isinstance(loc.get("metadata"), Mapping)
                and loc["metadata"].get(MARKER) == "true"
                for loc in img.get("locations") or []
            )
        ]
