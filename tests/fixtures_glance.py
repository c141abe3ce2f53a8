"""One real Keystone + one real Glance (keystone auth, tmpfs file stores) per test session.

Import the fixture into a test module with ``from fixtures_glance import glance_world_fixture``
(registered under the name ``glance_world``, so test arguments do not shadow the import).
Images seeded once (all by admin, 1.5 MB of random bytes unless said otherwise):

* ``image_id``: public; locations fs1 (upload), fs2 (copy-image), ``origin`` (http, records
  request headers).
* ``dead_image_id``: public; fs1 and an http location whose origin was stopped after seeding.
* ``private_image_id``: visibility private (only admin's project sees it).
* ``inactive_image_id``: deactivated.
* ``nohash_image_id``: a location added to a queued image (how Nova's rbd snapshots and
  other location-only images are made): active, no checksum, no os_hash_value.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import glance_harness as gh
import pytest

from locpick._demo.origin import Origin

IMAGE_SIZE = 1_500_000
ADMIN = ("admin", "admin", "admin")
DEMO = ("demo", "demo-pass", "demo")


@dataclass
class GlanceWorld:
    glance: gh.GlanceHandle
    keystone: gh.KeystoneHandle
    admin_token: str
    origin: Origin
    data: bytes
    image_id: str
    dead_image_id: str
    private_image_id: str
    inactive_image_id: str
    nohash_image_id: str
    tmp: Path
    start_seconds: float
    _origins: list[Origin] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.glance.endpoint

    @property
    def auth_url(self) -> str:
        return self.keystone.auth_url

    def token_env(self) -> dict[str, str]:
        """OS_IMAGE_URL + OS_AUTH_TOKEN (admin): the plain token mode."""
        return {"OS_IMAGE_URL": self.endpoint, "OS_AUTH_TOKEN": self.admin_token}

    def keystone_env(self, user: tuple[str, str, str] = DEMO, **extra: str) -> dict[str, str]:
        """The standard OS_* variables of an openrc file, no image URL: found in the catalog."""
        name, password, project = user
        env = {
            "OS_AUTH_URL": self.auth_url,
            "OS_USERNAME": name,
            "OS_PASSWORD": password,
            "OS_PROJECT_NAME": project,
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_REGION_NAME": "RegionOne",
            "OS_IDENTITY_API_VERSION": "3",
        }
        env.update(extra)
        return env

    def clouds_yaml(self, path: Path, *, demo_password: str = DEMO[1]) -> Path:
        """A clouds.yaml with clouds locpick-admin and locpick-demo (no image endpoint in it)."""
        blocks = []
        for cloud, (name, password, project) in (
            ("locpick-admin", ADMIN),
            ("locpick-demo", (DEMO[0], demo_password, DEMO[2])),
        ):
            blocks.append(
                f"  {cloud}:\n"
                "    auth:\n"
                f"      auth_url: {self.auth_url}\n"
                f"      username: {name}\n"
                f"      password: {password}\n"
                f"      project_name: {project}\n"
                "      user_domain_name: Default\n"
                "      project_domain_name: Default\n"
                "    region_name: RegionOne\n"
                "    interface: public\n"
                "    identity_api_version: 3\n"
            )
        path.write_text("clouds:\n" + "".join(blocks))
        return path


@pytest.fixture(scope="session", name="glance_world")
def glance_world_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceWorld]:
    if not gh.harness_available():
        pytest.fail(f"the Glance harness is missing at {gh.harness_dir()}")
    if not gh.tmpfs_supported():
        pytest.fail("mount -t tmpfs is not permitted: the Glance tests need real store mounts")
    base = tmp_path_factory.mktemp("glance-world")
    data = os.urandom(IMAGE_SIZE)
    image_file = base / "img.raw"
    image_file.write_bytes(data)
    t0 = time.monotonic()
    keystone = gh.start_keystone(base / "keystone")
    glance: gh.GlanceHandle | None = None
    origins: list[Origin] = []
    try:
        glance = gh.start_glance(
            base / "glance",
            auth="keystone",
            keystone_url=keystone.auth_url,
            tmpfs_stores=True,
            tmpfs_size="64m",
        )
        gh.register_image_endpoint(keystone.auth_url, glance.endpoint)
        started = time.monotonic() - t0
        token = keystone.token()
        ep = glance.endpoint

        origin = Origin(data).start()
        origins.append(origin)
        image_id = gh.seed_image(
            ep,
            image_file,
            token=token,
            name="locpick-main",
            visibility="public",
            copy_to_stores=("fs2",),
            http_locations=[(origin.url, {"zone": "z9"})],
        )

        dead = Origin(data).start()
        origins.append(dead)
        dead_image_id = gh.seed_image(
            ep,
            image_file,
            token=token,
            name="locpick-dead",
            visibility="public",
            copy_to_stores=(),
            http_locations=[dead.url],
        )
        dead.stop()

        private_image_id = gh.seed_image(
            ep,
            image_file,
            token=token,
            name="locpick-private",
            visibility="private",
            copy_to_stores=(),
        )
        inactive_image_id = gh.seed_image(
            ep, image_file, token=token, name="locpick-inactive", copy_to_stores=()
        )
        gh.deactivate_image(ep, inactive_image_id, token=token)

        nohash_image_id = gh.create_image(ep, name="locpick-nohash", token=token)
        gh.add_http_location(ep, nohash_image_id, origin.url, token=token)

        origin.reset_counters()
        yield GlanceWorld(
            glance=glance,
            keystone=keystone,
            admin_token=token,
            origin=origin,
            data=data,
            image_id=image_id,
            dead_image_id=dead_image_id,
            private_image_id=private_image_id,
            inactive_image_id=inactive_image_id,
            nohash_image_id=nohash_image_id,
            tmp=base,
            start_seconds=started,
            _origins=origins,
        )
    finally:
        for o in origins:
            o.stop()
        if glance is not None:
            glance.stop()
        keystone.stop()


@contextlib.contextmanager
def fresh_image(
    w: GlanceWorld, base: Path, name: str, size: int
) -> Iterator[tuple[str, bytes, Origin]]:
    """A new public image in ``w``: fs1 (not usable by nodes) and an http origin of its own
    (zone ``z-origin``), stopped on exit. Yields (image id, its bytes, the origin)."""
    data = os.urandom(size)
    src = base / "img.raw"
    src.write_bytes(data)
    origin = Origin(data).start()
    try:
        image_id = gh.seed_image(
            w.endpoint,
            src,
            token=w.admin_token,
            name=name,
            visibility="public",
            copy_to_stores=(),
            http_locations=[(origin.url, {"zone": "z-origin"})],
        )
        yield image_id, data, origin
    finally:
        origin.stop()
