"""Adding and removing locations of an image in Glance, never by a stale index.

Glance's JSON patch has no ``test`` op: ``remove /locations/N`` removes whatever sits at N when
the PATCH arrives (and deletes the data of a store-managed location). So:

* a copy is added once, by appending (``add /locations/-``, or the service-role
  ``POST /v2/images/{id}/locations`` where Glance offers it: queued images, Glance >= 29);
  it is never renewed by rewriting it — a node answers for its own liveness when probed;
* a removal takes the image's write lock (:mod:`locpick.glance.coordination`), re-reads the
  list inside it and removes only the one entry whose URL, locpick marker (and, when given,
  metadata) match; several matches remove nothing. Without a lock only the designated
  process (``cache reap``, ``verify --prune``) removes;
* after any write the list is checked — in the PATCH's answer, which is the image record as
  the write left it (a read only when there is none) — every other entry still there, the
  added one listed once. A difference is reported (logged, :attr:`GlanceLocations.problems`),
  never repaired by another index write. Glance can still lose an add it answered 200 to a
  concurrent write: a filling copy confirms its add once later
  (:mod:`locpick.cache.fill.register`).

Without a coordination backend an add trusts the record its caller read just before (``seen``)
instead of reading it again: a registering node then makes three Glance requests — the GET
that chose, the add, the later confirmation (for the first filling copy, an earlier second
look: :func:`locpick.choose.storm.prepare`) — and reads the add's answer for the storm.

This needs ``show_multiple_locations = True`` and a role that Glance's policy lets change
locations; operators expose it only on an internal endpoint (OSSN-0090). Refusals become
:class:`PublishError` with a message naming the setting.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import httpx

from locpick.config.model import Topology
from locpick.errors import ConfigError, LocpickError
from locpick.glance.coordination import Coordination, LockTimeout
from locpick.glance.lease import MARKER, is_locpick_copy, lease_metadata
from locpick.redact import SCRUB, redact_url

log = logging.getLogger(__name__)

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
__all__ = [
    "CopiesCapped",
    "GlanceLocations",
    "PublishError",
    "RemovalDeferred",
    "cache_location_url",
    "cache_metadata",
]

#: Schemes of the locations locpick adds (a node's serve URL). A removal of anything else is
#: refused: Glance would delete a store-managed location's data with it.
_OURS = ("http", "https")

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


class RemovalDeferred(PublishError):
    """No coordination backend and not the designated reaper: the removal is left to
    ``locpick cache reap`` (nothing was written)."""


class CopiesCapped(PublishError):
    """The image lists ``[fleet] max_copies`` locpick copies already: this one is not added
    (the node is a leaf: it reads the registered copies and serves no one through Glance)."""


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
    """Read and change one Glance endpoint's image locations with one token.

    ``coordination``: the per-image write lock (none: appends only). ``designated``: this
    process is the one the operator runs to remove locations (``cache reap``, ``verify
    --prune``), allowed to remove without a lock. ``max_copies`` / ``max_copies_per_zone``
    (0: no cap) with ``zone``: the fleet's cap on the locpick copies an image lists."""

    def __init__(
        self,
        http: httpx.Client,
        endpoint: str,
        token: str | None,
        *,
        coordination: Coordination | None = None,
        designated: bool = False,
        max_copies: int = 0,
        max_copies_per_zone: int = 0,
        zone: str | None = None,
    ) -> None:
        self.http = http
        self.max_copies = max_copies
        self.max_copies_per_zone = max_copies_per_zone
        self.zone = zone
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.coordination = coordination if coordination is not None else Coordination()
        self.designated = designated
        #: What the checks after each write found wrong (one line each; also logged).
        self.problems: list[str] = []
        #: The image record in the last write's answer (as that write left it), if it had one.
        self.answer: Mapping[str, Any] | None = None
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

    def record(self, image_id: str) -> Mapping[str, Any]:
        """The image record as Glance shows it now."""
        record = self._get_json(self._url(image_id), "cannot reach", f"GET image {image_id}")
        if not isinstance(record, Mapping):
            raise PublishError(f"glance {self._shown}: image {image_id}: not a JSON object")
        return record

    def locations(self, image_id: str) -> list[dict[str, Any]]:
        """The image's current ``locations`` list (raw dicts, Glance's order)."""
        return self._locations(image_id, self.record(image_id))

    def _locations(self, image_id: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        locs = record.get("locations")
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

    def _send(
        self, method: str, url: str, body: Any, content_type: str, what: str
    ) -> httpx.Response:
        try:
            resp = self.http.request(
                method, url, json=body, headers=self._headers(content_type), timeout=60.0
            )
        except httpx.HTTPError as exc:
            raise PublishError(
                f"glance {self._shown}: {what} failed ({type(exc).__name__})"
            ) from exc
        if resp.status_code in (200, 201, 202, 204):
            return resp
        body_text = SCRUB(resp.text.strip().replace("\n", " "))[:300]
        if resp.status_code == 403:
            raise PublishError(
                f"glance {self._shown}: {what}: HTTP 403 ({body_text}); {_FORBIDDEN_HELP}"
            )
        if resp.status_code == 400:
            raise PublishError(
                f"glance {self._shown}: {what}: HTTP 400 ({body_text}); either "
                f"{_FORBIDDEN_HELP}, or Glance cannot reach the URL ([cache] public_url must be "
                "reachable from Glance and pass its allowed hosts/ports filter)"
            )
        err = PublishError(f"glance {self._shown}: {what}: HTTP {resp.status_code} ({body_text})")
        err.status = resp.status_code
        raise err

    def _patch(
        self, image_id: str, ops: list[dict[str, Any]], what: str
    ) -> list[dict[str, Any]] | None:
        """One JSON-patch; returns the locations in its answer (the image record as the write
        left it, kept as :attr:`answer`), None when the answer shows none."""
        resp = self._send("PATCH", self._url(image_id), ops, PATCH_TYPE, what)
        try:
            record = resp.json()
        except ValueError:
            return None
        if not isinstance(record, Mapping) or not isinstance(record.get("locations"), list):
            return None
        self.answer = record
        return self._locations(image_id, record)

    def _append(
        self, image_id: str, record: Mapping[str, Any], url: str, metadata: Mapping[str, Any]
    ) -> list[dict[str, Any]] | None:
        """One append: the service-role locations API for a queued image (the only state
        Glance lets it change), else ``add /locations/-``. Returns the locations in the
        answer (None: not shown; read them)."""
        what = f"add location {redact_url(url)} to image {image_id}"
        if record.get("status") == "queued":
            try:
                self._send(
                    "POST",
                    self._url(image_id) + "/locations",
                    {"url": url, "validation_data": {}},
                    "application/json",
                    what,
                )
                return None
            except PublishError as exc:
                if exc.status not in (404, 405, 409):  # not offered here: the PATCH way
                    raise
        op = {"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": metadata}}
        return self._patch(image_id, [op], what)

    @contextlib.contextmanager
    def _locked(self, image_id: str) -> Iterator[None]:
        """The image's write lock for the block; not granted (or no backend): PublishError."""
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.coordination.hold(image_id))
        except (LockTimeout, ConfigError) as exc:
            raise PublishError(f"glance {self._shown}: {exc}") from exc
        with stack:
            yield

    def _report(self, text: str) -> None:
        self.problems.append(text)
        log.warning("%s", text)

    def _check_after(
        self,
        image_id: str,
        before: list[dict[str, Any]],
        *,
        added: str | None = None,
        removed: dict[str, Any] | None = None,
        answer: list[dict[str, Any]] | None = None,
        exact: bool = True,
    ) -> list[dict[str, Any]]:
        """Check the list after a write (``answer``: the write's own answer; None: read it)
        and report what differs from what was meant: another entry gone or changed (a
        concurrent write lost by Glance), the added URL not listed once, the removed entry
        still there. Reported, never repaired. Returns the list checked. Entries are compared
        whole; by URL only when ``exact`` is False (``before`` is the caller's parsed record,
        not Glance's raw one)."""
        after = answer
        if after is None:
            try:
                after = self.locations(image_id)
            except PublishError as exc:
                self._report(f"image {image_id}: not checked after the write: {exc}")
                return []

        def same(loc: Mapping[str, Any]) -> Any:
            return loc if exact else loc.get("url")

        keep = list(before)
        meant = (
            None if removed is None else next((x for x in keep if same(x) == same(removed)), None)
        )
        if meant is not None:
            keep.remove(meant)
        rest = [same(loc) for loc in after]
        lost = []
        for loc in keep:
            if same(loc) in rest:
                rest.remove(same(loc))
            else:
                lost.append(loc)
        if lost:
            shown = ", ".join(redact_url(str(loc.get("url"))) for loc in lost[:4])
            self._report(
                f"image {image_id}: {len(lost)} location(s) listed before this write are gone "
                f"after it ({shown}): a concurrent change; not repaired, check the image"
            )
        if added is not None:
            n = sum(1 for loc in after if loc.get("url") == added)
            if n != 1:
                self._report(
                    f"image {image_id}: {redact_url(added)} is listed {n} times after its add "
                    "(Glance lost or doubled it); not repaired by another write"
                )
        if removed is not None and removed in after:
            self._report(
                f"image {image_id}: {redact_url(str(removed.get('url')))} still listed after "
                "its removal; not removed again"
            )
        return after

    def add(
        self,
        image_id: str,
        url: str,
        metadata: Mapping[str, Any],
        *,
        seen: Mapping[str, Any] | None = None,
    ) -> bool:
        """Append ``url`` as a location unless it is already one; True when added (the record
        as the add left it is then :attr:`answer`, when Glance showed it).

        ``seen``: the image record (``status``, ``locations``) the caller read just now.
        Without a coordination backend it stands for the read before the append (a URL in it
        is not added again); with one, the list is read again inside the image's lock. A
        locpick copy past the fleet's cap, judged on that list, is :class:`CopiesCapped`."""
        with self._locked(image_id):
            record = seen
            if record is None or self.coordination.serialised:
                record = self.record(image_id)
            before = self._locations(image_id, record)
            if any(loc.get("url") == url for loc in before):
                return False
            if is_locpick_copy(metadata):
                self._check_room(image_id, before)
            answer = self._append(image_id, record, url, dict(metadata))
            log.info("glance: added location %s to image %s", redact_url(url), image_id)
            exact = record is not seen  # Glance's own list, not the caller's parsed one
            self._check_after(image_id, before, added=url, answer=answer, exact=exact)
        return True

    def _check_room(self, image_id: str, locs: list[dict[str, Any]]) -> None:
        ours = [m for loc in locs if is_locpick_copy(m := _meta(loc))]
        if self.max_copies and len(ours) >= self.max_copies:
            raise CopiesCapped(
                f"image {image_id} lists {len(ours)} locpick copies ([fleet] max_copies = "
                f"{self.max_copies}): not registered; this node reads them (a leaf)"
            )
        if self.max_copies_per_zone and self.zone is not None:
            same = sum(1 for m in ours if m.get("zone") == self.zone)
            if same >= self.max_copies_per_zone:
                raise CopiesCapped(
                    f"image {image_id} lists {same} locpick copies in zone {self.zone} "
                    f"([fleet] max_copies_per_zone = {self.max_copies_per_zone}): not "
                    "registered; this node reads them (a leaf)"
                )

    def ensure(
        self, image_id: str, url: str, metadata: Mapping[str, Any]
    ) -> Literal["listed", "added", "duplicate", "capped"]:
        """What a renewal does now: read the list; append ``url`` only if it is missing.
        Never rewrites an entry (a lease lives in the node's answers, not in Glance).
        Listed more than once: reported (``cache reap`` judges each entry), nothing written."""
        locs = self.locations(image_id)
        n = sum(1 for loc in locs if loc.get("url") == url)
        if n == 1:
            return "listed"
        if n > 1:
            self._report(
                f"image {image_id}: {redact_url(url)} is listed {n} times; left as it is "
                "(`locpick cache reap` judges every entry)"
            )
            return "duplicate"
        try:
            added = self.add(image_id, url, metadata)
        except CopiesCapped as exc:
            log.info("%s", exc)
            return "capped"
        if added:
            log.info("glance: re-added location %s to image %s", redact_url(url), image_id)
        return "added" if added else "listed"

    def remove(
        self,
        image_id: str,
        url: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        locpick_only: bool = True,
    ) -> int:
        """Remove the one entry whose URL (and ``metadata``, when given) match and which
        carries the locpick marker (``locpick_only`` False: the operator's own, pruned by
        ``verify --prune --yes``); returns 1 when removed, 0 when there was none.

        Inside the image's write lock, after a re-read; without a lock only a designated
        process removes. Several matching entries remove none (a tenant may have re-added a
        node's URL): ``cache reap`` tells them apart by their metadata."""
        what = f"remove location {redact_url(url)} of image {image_id}"
        if not self.coordination.serialised and not self.designated:
            raise RemovalDeferred(
                f"glance {self._shown}: {what}: not done: without [fleet] coordination only "
                "`locpick cache reap` removes locations (a removal by index can hit another "
                "entry when the list changes meanwhile)"
            )
        if urllib.parse.urlsplit(url).scheme.lower() not in _OURS and locpick_only:
            raise PublishError(
                f"glance {self._shown}: {what}: not done: locpick only removes the http(s) "
                "locations of node caches (Glance would delete a store's data)"
            )
        with self._locked(image_id):
            locs = self.locations(image_id)
            found = [
                i
                for i, loc in enumerate(locs)
                if loc.get("url") == url
                and (metadata is None or _meta(loc) == dict(metadata))
                and (not locpick_only or is_locpick_copy(_meta(loc)))
            ]
            if not found:
                return 0
            if len(found) > 1:
                raise PublishError(
                    f"glance {self._shown}: {what}: not done: {len(found)} entries match; "
                    "`locpick cache reap` judges each by its metadata"
                )
            index = found[0]
            op = {"op": "remove", "path": f"/locations/{index}"}
            answer = self._patch(image_id, [op], what)
            log.info("glance: removed location %s of image %s", redact_url(url), image_id)
            self._check_after(image_id, locs, removed=locs[index], answer=answer)
        return 1

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


def _meta(loc: Mapping[str, Any]) -> dict[str, Any]:
    meta = loc.get("metadata")
    return dict(meta) if isinstance(meta, Mapping) else {}
