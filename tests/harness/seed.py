"""Images with several locations in a harness Glance: upload (fs1), copy-image (fs2, ...),
PATCHed http locations, in that order."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from harness import procs
from harness.venvs import HarnessError

PATCH_CONTENT_TYPE = "application/openstack-images-v2.1-json-patch"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _error_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"(?is)<head>.*?</head>", " ", text)  # webob's HTML error page
    text = re.sub(r"(?s)<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


class Glance:
    """Requests to one Glance endpoint, with a token when given; errors raise."""

    def __init__(self, endpoint: str, token: str | None, timeout: float) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.headers = {"X-Auth-Token": token} if token else {}
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        url = self.endpoint + path
        hdrs = {**self.headers, **(headers or {})}
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with procs.DIRECT.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            text = _error_text(e.read())
            e.close()
            if e.code == 400 and "Invalid location" in text:
                text += (
                    " [Glance refuses an http location whose host/port fails"
                    " [import_filtering_opts] or whose HEAD gives no size > 0]"
                )
            raise HarnessError(f"{method} {url} -> HTTP {e.code}: {text}") from e
        except OSError as e:
            raise HarnessError(f"{method} {url} -> {e}") from e
        return json.loads(raw) if raw else None

    def tasks_done(self, image_id: str) -> bool:
        """Whether the image's tasks (copy-image) have finished writing their status: a PATCH
        racing the task's last sqlite write can fail with HTTP 500 on a loaded machine."""
        tasks = self.request("GET", f"/v2/images/{image_id}/tasks")
        return all(t.get("status") in ("success", "failure") for t in tasks.get("tasks", []))

    def add_location(self, image_id: str, url: str, meta: Mapping[str, Any]) -> None:
        """PATCH one location onto the image, retrying a 500 (sqlite busy) unless it landed."""
        op = {"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": dict(meta)}}
        path = f"/v2/images/{image_id}"
        for attempt in range(4):
            try:
                self.request("PATCH", path, [op], {"Content-Type": PATCH_CONTENT_TYPE})
                return
            except HarnessError as e:
                if "HTTP 500" not in str(e) or attempt == 3:
                    raise
            time.sleep(1.0)
            img = self.request("GET", path)
            if any(loc["url"] == url for loc in img.get("locations") or []):
                return

    def wait(self, image_id: str, done: Callable[[dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        img: dict[str, Any] = {}
        while time.monotonic() < deadline:
            img = self.request("GET", f"/v2/images/{image_id}")
            if img["status"] in ("killed", "deleted"):
                raise HarnessError(f"image {image_id} went {img['status']} during {what}")
            if done(img):
                return
            time.sleep(0.3)
        raise HarnessError(f"timed out waiting for {what}; last image: {json.dumps(img)}")


def _split(value: str | None) -> list[str]:
    return [s for s in (value or "").split(",") if s]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_serves(url: str, size: int, digest: str) -> None:
    """Glance only HEADs an http location; make sure it really serves FILE's bytes."""
    if urllib.parse.urlsplit(url).hostname not in LOOPBACK:
        return
    h, n = hashlib.sha256(), 0
    try:
        with procs.DIRECT.open(url, timeout=30) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                n += len(block)
    except OSError as e:
        raise HarnessError(f"cannot fetch {url} to check it: {e}") from e
    if n != size or h.hexdigest() != digest:
        raise HarnessError(f"{url} does not serve the bytes of the seeded file")


def seed_image(
    endpoint: str,
    file: Path,
    *,
    http_locations: Iterable[tuple[str, Mapping[str, Any]]] = (),
    copy_to_stores: Iterable[str] = ("fs2",),
    token: str | None = None,
    name: str | None = None,
    visibility: str | None = None,
    no_upload: bool = False,
    verify: bool = True,
    timeout: float = 120,
) -> str:
    """Create an active image from FILE with those locations; its id.

    ``no_upload``: the first http location becomes the first location through
    ``POST /v2/images/{id}/locations`` (Glance fetches it to hash it; no metadata)."""
    locations = [(url, dict(meta)) for url, meta in http_locations]
    stores = list(copy_to_stores)
    size = file.stat().st_size
    if size == 0:
        raise HarnessError("Glance refuses zero-size locations: FILE is empty")
    if no_upload and not locations:
        raise HarnessError("no_upload needs an http location")
    if verify:
        digest = _sha256(file)
        for url, _ in locations:
            _check_serves(url, size, digest)
    glance = Glance(endpoint, token, timeout)
    body: dict[str, Any] = {
        "name": name or file.name,
        "disk_format": "raw",
        "container_format": "bare",
    }
    if visibility:
        body["visibility"] = visibility
    image_id = str(glance.request("POST", "/v2/images", body)["id"])
    path = f"/v2/images/{image_id}"
    try:
        if no_upload:
            first, _ = locations.pop(0)
            glance.request("POST", path + "/locations", {"url": first})
            glance.wait(image_id, lambda i: i["status"] == "active", f"import of {first}")
        else:
            with file.open("rb") as f:
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
                glance.request("PUT", path + "/file", f, headers)
        for store in stores:
            body = {
                "method": {"name": "copy-image"},
                "stores": [store],
                "all_stores_must_succeed": True,
            }
            glance.request("POST", path + "/import", body)

            def copied(img: dict[str, Any], store: str = store) -> bool:
                if store in _split(img.get("os_glance_failed_import")):
                    raise HarnessError(f"copy-image to {store} failed; see the Glance log")
                return store in _split(img.get("stores")) and store not in _split(
                    img.get("os_glance_importing_to_stores")
                )

            glance.wait(image_id, copied, f"copy-image to {store}")
        if stores:
            glance.wait(image_id, lambda _: glance.tasks_done(image_id), "the import tasks")
        for url, meta in locations:
            glance.add_location(image_id, url, meta)
        img = glance.request("GET", path)
    except HarnessError as e:
        raise HarnessError(f"seeding image {image_id}: {e}") from e
    want = (0 if no_upload else 1) + len(stores) + len(locations) + (1 if no_upload else 0)
    if img["status"] != "active" or len(img.get("locations") or []) < want:
        raise HarnessError(f"image {image_id} is {img['status']} with {img.get('locations')}")
    return image_id
