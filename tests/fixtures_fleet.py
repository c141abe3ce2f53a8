"""Nodes of a fleet against the real Glance of ``fixtures_glance`` (issue 24): each a real
``locpick serve`` process on its own port, with its own cache, topology and config; the
operator's own moves (``copy-image`` into another store, a mirror added by PATCH)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import glance_harness as gh
from fixtures_cache import ServeProcess, serve_on_its_port
from fixtures_glance import GlanceWorld
from helpers import run_cli

from locpick.admin import Cache
from locpick.cache.store import NodeCache
from locpick.client import Client
from locpick.config.env import Environment
from locpick.config.load import load_config
from locpick.glance.locations import cache_location_url
from locpick.redact import redact_url


class FleetNode:
    """One node: a ``locpick serve`` that knows Glance, and the CLI with the same config."""

    def __init__(
        self,
        w: GlanceWorld,
        base: Path,
        name: str,
        *,
        lease: float = 3.0,
        coordination: str | None = None,
        zone: str = "z1",
        rack: str = "rack-0",
        fleet: str = "",
    ) -> None:
        self.w = w
        self.name = name
        self.cache_dir = base / name / "cache"
        self.cache_dir.mkdir(parents=True)
        self.config = base / name / "config.toml"
        fleet_table = f'coordination = "{coordination}"\n' if coordination else ""
        self._settings = (
            f'history_file = ""\n'
            f'[topology]\nregion = "R"\nzone = "{zone}"\nrack = "{rack}"\nhost = "{name}"\n'
            f'[cache]\ndir = "{self.cache_dir}"\npublic_url = "{{public_url}}"\n'
            f"lease = {lease}\n[policy]\nforbid_glance_file = true\n"
            + (f"[fleet]\n{fleet_table}{fleet}" if fleet_table or fleet else "")
        )
        self.move()
        self.cache = NodeCache(self.cache_dir)
        self.serve: ServeProcess | None = None

    def move(self) -> None:
        """A free port for this node's serve, and its config to match."""
        self.public_url = f"http://127.0.0.1:{gh.find_free_port()}"
        self.config.write_text(self._settings.replace("{public_url}", self.public_url))

    def start(self, *, renew: bool = True) -> FleetNode:
        env = {"LOCPICK_CONFIG": str(self.config), **self.w.token_env()}

        def start() -> ServeProcess:
            return ServeProcess(
                self.cache_dir,
                bind=self.public_url.removeprefix("http://"),
                env=env,
                args=() if renew else ("--no-renew",),
            )

        self.serve = serve_on_its_port(start, self.move)
        return self

    def client(self) -> Client:
        """An in-process client with this node's config (Glance from the world)."""
        return Client(
            config=load_config(self.config),
            glance_url=self.w.endpoint,
            token=self.w.admin_token,
            env=Environment(vars={}),
        )

    def cache_admin(self) -> Cache:
        """The operator's in-process view of this node's cache (evict, reconcile...)."""
        return Cache(
            self.cache_dir,
            config=load_config(self.config),
            glance_url=self.w.endpoint,
            token=self.w.admin_token,
            env=Environment(vars={}),
        )

    def url(self, image_id: str) -> str:
        return cache_location_url(self.public_url, image_id, self.cache.token(image_id))

    def shown(self, image_id: str) -> str:
        return redact_url(self.url(image_id))

    def cli(self, *args: str) -> tuple[int, str, str]:
        auth = ["--glance-url", self.w.endpoint, "--token", self.w.admin_token]
        r = run_cli(*args, "--config", str(self.config), *auth)
        return r.returncode, r.stdout, r.stderr

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.stop()
            self.serve = None


def entries(w: GlanceWorld, image_id: str) -> list[dict[str, Any]]:
    """The image's location list as Glance shows it (duplicates kept)."""
    return list(gh.get_image(w.endpoint, image_id, token=w.admin_token)["locations"])


def count(w: GlanceWorld, image_id: str, url: str) -> int:
    return sum(1 for loc in entries(w, image_id) if loc["url"] == url)


def store_file(url: str) -> Path:
    """The file behind a ``file://`` location of a harness store."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))


def start_copy(w: GlanceWorld, image_id: str, store: str) -> None:
    """The operator's ``copy-image`` import of the image into ``store`` (not waited for)."""
    body = {"method": {"name": "copy-image"}, "stores": [store], "all_stores_must_succeed": True}
    st, payload = gh.glance_request(
        w.endpoint, "POST", f"/v2/images/{image_id}/import", body, token=w.admin_token
    )
    assert st == 202, (st, payload)


def copied(w: GlanceWorld, image_id: str, store: str) -> bool:
    img = gh.get_image(w.endpoint, image_id, token=w.admin_token)
    if store in (img.get("os_glance_failed_import") or ""):
        raise AssertionError(f"copy-image to {store} failed")
    stores = (img.get("stores") or "").split(",")
    if store not in stores or store in (img.get("os_glance_importing_to_stores") or ""):
        return False
    # the import task's last sqlite write must be done too: a PATCH racing it can get a 500
    # from Glance on a loaded machine, whoever sends it (tests/harness/seed.py tasks_done)
    st, tasks = gh.glance_request(
        w.endpoint, "GET", f"/v2/images/{image_id}/tasks", token=w.admin_token
    )
    return st == 200 and all(
        t.get("status") in ("success", "failure") for t in tasks.get("tasks", [])
    )


def store_locations(w: GlanceWorld, image_id: str, store: str) -> list[str]:
    return [
        loc["url"]
        for loc in entries(w, image_id)
        if (loc.get("metadata") or {}).get("store") == store
    ]


def wait_for(what: str, ok: Callable[[], Any], limit: float = 120.0) -> Any:
    """Poll ``ok()`` until truthy (bounded); fail naming ``what``."""
    end = time.monotonic() + limit
    while not (value := ok()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def reap_json(node: FleetNode, *args: str) -> dict[str, Any]:
    code, out, err = node.cli("cache", "reap", *args, "--json")
    assert code == 0, err
    return dict(json.loads(out))


@contextlib.contextmanager
def nodes(*made: FleetNode) -> Iterator[tuple[FleetNode, ...]]:
    try:
        yield made
    finally:
        for node in made:
            node.stop()
