"""A node's registration is vouched for and stays so: a real `locpick serve` with a fleet key
registers its copy in a real Glance 33 signed with the key, and its renewals never rewrite the
entry (Glance has no compare-and-set: a rewrite by index could remove another's location), so
the signature its peers check stays the one it registered."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleet import entries
from fixtures_glance import GlanceWorld, fresh_image, glance_world_fixture  # noqa: F401

from locpick._demo.origin import Origin
from locpick.glance.vouch import verify
from tests.jobs.test_replicas import LeasedNode, _locations, _wait_for

pytestmark = pytest.mark.glance


@pytest.fixture
def image(glance_world: GlanceWorld, tmp_path: Path) -> Iterator[tuple[str, bytes, Origin]]:
    with fresh_image(glance_world, tmp_path, "locpick-vouch-renew", 300_000) as made:
        yield made


def test_registration_is_signed_and_never_rewritten_by_renewals(
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
        # the renewer only checks that the entry is listed (every lease / 3 = 1 s): the signed
        # entry stays exactly as registered, listed once, through several renewal rounds
        rounds: list[dict[str, Any]] = []

        def renewed_rounds() -> bool:
            rounds.append(dict(_locations(w, image_id)[url]))
            time.sleep(1.0)
            return len(rounds) >= 4

        _wait_for("four renewal rounds", renewed_rounds)
        assert all(meta == first for meta in rounds), rounds
        assert [loc["url"] for loc in entries(w, image_id)].count(url) == 1
        assert not verify(b"another fleet's key, 32 bytes...", image_id, url, first)
    finally:
        a.stop()
