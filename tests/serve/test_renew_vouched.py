"""A node's registrations stay vouched for through renewals (issue 24): a real `locpick
serve` with a fleet key renews its copy's lease in a real Glance 33, and each renewed entry
carries a valid signature over its new lease, so its peers keep trusting it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_glance import GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401
from tests.jobs.test_replicas import LeasedNode, _locations, _wait_for

from locpick._demo.origin import Origin
from locpick.glance.lease import REGISTERED
from locpick.glance.vouch import SIG, verify

pytestmark = pytest.mark.glance


@pytest.fixture
def image(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[str, bytes, Origin]]:
    with fresh_image(glance_world, tmp_path, "locpick-vouch-renew", 300_000) as made:
        yield made


def test_renewed_registration_is_signed(
    glance_world: GlanceWorld, image: tuple[str, bytes, Origin], tmp_path: Path
) -> None:
    w = glance_world
    image_id, _data, _origin = image
    key_file = tmp_path / "fleet.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    key = key_file.read_bytes().strip()
    a = LeasedNode(w, tmp_path, "node-a", lease=3)
    a.config.write_text(a.config.read_text() + f'[fleet]\nkey_file = "{key_file}"\n')
    try:
        a.start()
        code, _out, err = a.cli("download", image_id, str(tmp_path / "a.img"), "--register")
        assert code == 0, err
        url = a.url(image_id)
        first: dict[str, Any] = dict(_locations(w, image_id)[url])
        assert verify(key, image_id, url, first), first
        seen: list[dict[str, Any]] = []

        def renewed() -> bool:
            meta = _locations(w, image_id).get(url)
            if meta is not None and meta.get(REGISTERED) != first[REGISTERED]:
                seen.append(dict(meta))
            return len(seen) >= 2

        _wait_for("two renewals", renewed)
        for meta in seen:
            assert meta[SIG] != first[SIG] and verify(key, image_id, url, meta), meta
        assert not verify(b"another fleet's key, 32 bytes...", image_id, url, seen[-1])
        assert float(seen[-1][REGISTERED]) > time.time() - 60
    finally:
        a.stop()
