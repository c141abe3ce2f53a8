"""Where an image's record and locations come from: a Glance-v2-shaped JSON file or dict, or the
Glance v2 API (which also contributes its own ``/v2/images/{id}/file`` as a last resort)."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from locpick.errors import (
    AuthError,
    ImageNotActive,
    ImageNotFound,
    LocationUnreachable,
    MetadataError,
)
from locpick.models import Image, Location
from locpick.redact import SCRUB, redact_url
from locpick.s3url import ALL_S3_SCHEMES
from locpick.sink.hashing import hex_length, is_hex

#: Longest location URL accepted; longer ones are rejected as hostile.
MAX_URL_LENGTH = 8192
#: Longest string accepted as a location metadata value.
MAX_META_VALUE = 4096
#: Largest image size accepted (1 PiB): anything bigger is a malformed record.
MAX_SIZE = 1 << 50
#: Longest image id, status or hash string accepted.
MAX_FIELD = 255
#: Most keys accepted in one location's metadata, and longest key.
MAX_META_KEYS = 64
MAX_META_KEY = 255
#: Location metadata keys locpick reads: when present they must be short strings.
KNOWN_META_KEYS = frozenset({"id", "mountpoint", "region", "zone", "rack", "host", "store"})
#: Largest image record read from a file or the Glance API (a hostile record cannot exhaust memory).
MAX_RECORD_BYTES = 16 << 20


def parse_image(
    record: Any, image_id: str, *, source: str = "metadata", max_locations: int = 100_000
) -> Image:
    """Validate a Glance v2 image record and reduce it to an Image.

    Record-level problems raise MetadataError (exit 2); a single unusable location is kept out
    of ``locations`` and listed in ``rejected`` with its reason instead. Any number of locations
    is accepted: past ``max_locations`` the rest are one ``rejected`` row, not an error.
    """
    if not isinstance(record, Mapping):
        raise MetadataError(f"{source}: expected a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise MetadataError(f"{source}: missing or non-string 'id'")
    if rid != image_id:
        raise MetadataError(
            f"{source}: record is for image {_short(rid)!r}, not {_short(image_id)!r}"
        )

    size = record.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise MetadataError(f"{source}: 'size' must be an integer, got {_short(repr(size))}")
    if size is not None and not 0 <= size <= MAX_SIZE:
        raise MetadataError(f"{source}: 'size' {size} is out of range")

    checksum = _opt_str(record, "checksum", source)
    if checksum and not is_hex(checksum, 32):
        raise MetadataError(f"{source}: 'checksum' is not a 32-digit md5 hex digest")
    algo = _opt_str(record, "os_hash_algo", source)
    value = _opt_str(record, "os_hash_value", source)
    if value and not algo:
        raise MetadataError(f"{source}: 'os_hash_value' given without 'os_hash_algo'")
    if algo and value:
        length = hex_length(algo)
        if not is_hex(value, length):
            raise MetadataError(
                f"{source}: 'os_hash_value' is not a {length}-digit hex {algo} digest"
            )
    status = record.get("status", "active")
    if not isinstance(status, str) or len(status) > MAX_FIELD:
        raise MetadataError(f"{source}: 'status' must be a short string")

    raw_locations = record.get("locations")
    if raw_locations is None:
        raw_locations = []
        direct = record.get("direct_url")
        if isinstance(direct, str) and direct:
            raw_locations = [{"url": direct, "metadata": {}, "_kind": "direct_url"}]
    if not isinstance(raw_locations, list):
        raise MetadataError(f"{source}: 'locations' must be a list")
    locations: list[Location] = []
    rejected: list[tuple[str, str]] = []
    if len(raw_locations) > max_locations:
        rejected.append(
            (
                f"locations[{max_locations}:]",
                f"{len(raw_locations) - max_locations} more locations beyond the limit of "
                f"{max_locations} ([security] max_locations): not considered",
            )
        )
    seen: set[str] = set()
    for i, raw in enumerate(raw_locations[:max_locations]):
        try:
            loc = _parse_location(raw)
        except MetadataError as exc:
            url = raw.get("url") if isinstance(raw, Mapping) else None
            label = _printable(redact_url(url)) if isinstance(url, str) else f"locations[{i}]"
            rejected.append((label[:200], str(exc)))
            continue
        if loc.url in seen:
            continue
        seen.add(loc.url)
        locations.append(loc)
    return Image(
        id=rid,
        size=size,
        checksum=checksum.lower() if checksum else None,
        os_hash_algo=algo.lower() if algo else None,
        os_hash_value=value.lower() if value else None,
        locations=tuple(locations),
        status=status,
        rejected=tuple(rejected),
        visibility=_opt_str(record, "visibility", source),
    )


def _opt_str(record: Mapping[str, Any], key: str, source: str) -> str | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MetadataError(f"{source}: {key!r} must be a string, got {type(value).__name__}")
    if len(value) > MAX_FIELD:
        raise MetadataError(f"{source}: {key!r} is longer than {MAX_FIELD} characters")
    return value


def _printable(text: str) -> str:
    """Hostile text made safe for a one-line message: control and separator characters
    (which ``splitlines`` and terminals honour) are shown as escapes."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _short(text: str, limit: int = 80) -> str:
    """A hostile string shortened for an error message (one line, bounded)."""
    text = _printable(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_location(raw: Any) -> Location:
    if not isinstance(raw, Mapping):
        raise MetadataError("location is not an object")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise MetadataError("location has no 'url' string")
    if len(url) > MAX_URL_LENGTH:
        raise MetadataError(f"URL longer than {MAX_URL_LENGTH} characters")
    # after isprintable, the one whitespace left is the space (a per-character loop here was
    # a tenth of ranking 20,000 locations)
    if not url.isprintable() or " " in url:
        raise MetadataError("URL contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ALL_S3_SCHEMES:  # an S3 secret may hold a '/'
            _ = parts.port
    except ValueError as exc:
        raise MetadataError(f"unparseable URL ({exc})") from exc
    if not parts.scheme:
        raise MetadataError("URL has no scheme")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise MetadataError("location 'metadata' is not an object")
    if len(meta) > MAX_META_KEYS:
        raise MetadataError(f"location metadata has more than {MAX_META_KEYS} keys")
    clean: dict[str, Any] = {}
    for k, v in meta.items():
        if not isinstance(k, str) or len(k) > MAX_META_KEY:
            continue
        if isinstance(v, str):
            if len(v) > MAX_META_VALUE:
                raise MetadataError(
                    f"metadata value {_short(k)!r} is longer than {MAX_META_VALUE} characters"
                )
            clean[k] = v
        elif k in KNOWN_META_KEYS:
            if v is not None:
                raise MetadataError(f"metadata value {k!r} must be a string")
        elif isinstance(v, bool | int | float) or v is None:
            clean[k] = v  # scalars are kept (and ignored); nested structures are dropped
    kind = raw.get("_kind", "location")
    return Location(url=url, metadata=clean, kind=kind)


def load_metadata(
    metadata: str | os.PathLike[str] | Mapping[str, Any],
    image_id: str,
    *,
    max_locations: int = 100_000,
) -> Image:
    """Read a Glance-v2-shaped record from a JSON file path or an already-loaded dict."""
    if isinstance(metadata, Mapping):
        return parse_image(metadata, image_id, max_locations=max_locations)
    name = os.fspath(metadata)
    try:
        with open(name, "rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise MetadataError(f"metadata {name}: cannot read ({exc.strerror or exc})") from exc
    if len(raw) > MAX_RECORD_BYTES:
        raise MetadataError(f"metadata {name}: larger than {MAX_RECORD_BYTES} bytes")
    record = _decode_json(raw, f"metadata {name}")
    return parse_image(record, image_id, source=f"metadata {name}", max_locations=max_locations)


def _decode_json(raw: bytes, source: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded nesting (RecursionError becomes bad input)."""

    def _no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{source}: not valid JSON ({_short(str(exc))})") from exc
    except RecursionError as exc:
        raise MetadataError(f"{source}: JSON nested too deeply") from exc


def glance_file_location(
    endpoint: str, image_id: str, prefer_stores: tuple[str, ...] = ()
) -> Location:
    """Glance's own ``/v2/images/{id}/file``: always a candidate, always last resort."""
    url = f"{endpoint.rstrip('/')}/v2/images/{urllib.parse.quote(image_id, safe='')}/file"
    if prefer_stores:
        url += "?" + urllib.parse.urlencode({"prefer": ",".join(prefer_stores)})
    return Location(url=url, metadata={}, kind="glance-file")


def fetch_glance_image(
    client: httpx.Client,
    endpoint: str,
    image_id: str,
    *,
    token: str | None,
    max_locations: int = 100_000,
    prefer_stores: tuple[str, ...] = (),
) -> Image:
    """``GET {endpoint}/v2/images/{id}`` and parse it; adds the ``/file`` location last."""
    endpoint = endpoint.rstrip("/")
    url = f"{endpoint}/v2/images/{urllib.parse.quote(image_id, safe='')}"
    headers = {"Accept": "application/json"}
    if token:
        SCRUB.add(token)
        headers["X-Auth-Token"] = token
    shown = redact_url(endpoint)
    try:
        with client.stream("GET", url, headers=headers, follow_redirects=False) as resp:
            body = bytearray()
            if resp.status_code == 200:
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RECORD_BYTES:
                        raise MetadataError(
                            f"glance {shown}: image record larger than {MAX_RECORD_BYTES} bytes"
                        )
    except httpx.HTTPError as exc:
        raise LocationUnreachable(
            f"glance {shown}: cannot reach the image API ({type(exc).__name__}: {SCRUB(str(exc))})"
        ) from exc
    if resp.status_code == 401:
        raise AuthError(
            f"glance {shown}: 401 Unauthorized; the token is missing, expired or "
            "invalid (set --token / OS_AUTH_TOKEN or the OS_* Keystone variables)"
        )
    if resp.status_code == 403:
        raise AuthError(f"glance {shown}: 403 Forbidden for image {image_id}")
    if resp.status_code == 404:
        raise ImageNotFound(
            f"glance {shown}: image {image_id} not found (or not visible to this project)"
        )
    if resp.status_code != 200:
        raise LocationUnreachable(f"glance {shown}: GET image answered HTTP {resp.status_code}")
    record = _decode_json(bytes(body), f"glance {shown}")
    return glance_image(
        record, endpoint, image_id, max_locations=max_locations, prefer_stores=prefer_stores
    )


def glance_image(
    record: Any,
    endpoint: str,
    image_id: str,
    *,
    max_locations: int = 100_000,
    prefer_stores: tuple[str, ...] = (),
) -> Image:
    """An image record Glance answered (a GET, or the answer of a PATCH), parsed and
    checked active, with the ``/file`` location added last."""
    endpoint = endpoint.rstrip("/")
    shown = redact_url(endpoint)
    image = parse_image(record, image_id, source=f"glance {shown}", max_locations=max_locations)
    if image.status != "active":
        raise ImageNotActive(
            f"glance {shown}: image {image_id} is {image.status!r}, not "
            "'active'; nothing to download yet"
        )
    file_loc = glance_file_location(endpoint, image_id, prefer_stores)
    return attrs.evolve(image, locations=(*image.locations, file_loc))
