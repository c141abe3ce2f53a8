"""A small Keystone v3 client (stdlib): tokens, users, catalog entries, as admin."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from harness import procs
from harness.venvs import HarnessError

ADMIN = ("admin", "admin", "admin")  # user, password, project: what bootstrap creates
DOMAIN = "default"


def v3(auth_url: str) -> str:
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


def call(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30
) -> tuple[Any, dict[str, str]]:
    """One JSON request; (parsed body or None, headers). Raises on HTTP >= 300."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["X-Auth-Token"] = token
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with procs.DIRECT.open(req, timeout=timeout) as resp:
            raw = resp.read()
            hdrs = dict(resp.headers.items())
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")[:500]
        e.close()
        raise HarnessError(f"{method} {url} -> HTTP {e.code}: {text}") from e
    except OSError as e:
        raise HarnessError(f"{method} {url} -> {e}") from e
    return (json.loads(raw) if raw else None), hdrs


def token(
    auth_url: str,
    user: str | None = None,
    password: str | None = None,
    project: str | None = None,
) -> str:
    """A project-scoped token (default: admin in project admin)."""
    user, password, project = user or ADMIN[0], password or ADMIN[1], project or ADMIN[2]
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"id": DOMAIN}, "password": password}
                },
            },
            "scope": {"project": {"name": project, "domain": {"id": DOMAIN}}},
        }
    }
    _, hdrs = call("POST", v3(auth_url) + "/auth/tokens", body)
    subject = {k.lower(): v for k, v in hdrs.items()}.get("x-subject-token")
    if not subject:
        raise HarnessError("Keystone answered without X-Subject-Token")
    return subject


def _find(base: str, tok: str, collection: str, **query: str) -> dict[str, Any] | None:
    data, _ = call("GET", f"{base}/{collection}?{urllib.parse.urlencode(query)}", token=tok)
    items = data[collection]
    return dict(items[0]) if items else None


def ensure_user(auth_url: str, name: str, password: str, project: str, role: str) -> str:
    """Project and user (created if missing, password reset if not), ROLE granted on it."""
    base, tok = v3(auth_url), token(auth_url)
    proj = _find(base, tok, "projects", name=project, domain_id=DOMAIN)
    if proj is None:
        data, _ = call(
            "POST", base + "/projects", {"project": {"name": project, "domain_id": DOMAIN}}, tok
        )
        proj = data["project"]
    user = _find(base, tok, "users", name=name, domain_id=DOMAIN)
    fields = {"password": password, "enabled": True, "default_project_id": proj["id"]}
    if user is None:
        data, _ = call(
            "POST", base + "/users", {"user": {"name": name, "domain_id": DOMAIN, **fields}}, tok
        )
        user = data["user"]
    else:
        call("PATCH", f"{base}/users/{user['id']}", {"user": fields}, tok)
    found = _find(base, tok, "roles", name=role)
    if found is None:
        raise HarnessError(f"Keystone has no role {role!r}")
    call("PUT", f"{base}/projects/{proj['id']}/users/{user['id']}/roles/{found['id']}", token=tok)
    return str(user["id"])


def register_endpoint(
    auth_url: str,
    name: str,
    service_type: str,
    url: str,
    interfaces: tuple[str, ...] = ("public", "internal"),
    region: str = "RegionOne",
) -> str:
    """Catalog entry NAME/TYPE -> URL (an existing endpoint is re-pointed); the service id."""
    base, tok = v3(auth_url), token(auth_url)
    data, _ = call("GET", f"{base}/services?type={urllib.parse.quote(service_type)}", token=tok)
    services = [s for s in data["services"] if s.get("name") == name] or data["services"]
    if services:
        service = services[0]
    else:
        body = {"service": {"name": name, "type": service_type, "enabled": True}}
        service = call("POST", base + "/services", body, tok)[0]["service"]
    url = url.rstrip("/")
    for iface in interfaces:
        ep = _find(
            base, tok, "endpoints", service_id=service["id"], interface=iface, region_id=region
        )
        if ep is None:
            body = {
                "endpoint": {
                    "service_id": service["id"],
                    "interface": iface,
                    "url": url,
                    "region_id": region,
                    "enabled": True,
                }
            }
            call("POST", base + "/endpoints", body, tok)
        elif ep["url"] != url:
            call("PATCH", f"{base}/endpoints/{ep['id']}", {"endpoint": {"url": url}}, tok)
    return str(service["id"])
