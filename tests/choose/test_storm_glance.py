"""Boot-storm choice against a real Glance: the location order it keeps is the registration
order every node builds the same tree from, read with one refresh after a node's own add."""

from __future__ import annotations

import os
from pathlib import Path

import glance_harness as gh
import pytest
from fixtures_glance import GlanceWorld, glance_world_fixture  # noqa: F401

import locpick
from locpick._demo.origin import Origin
from locpick.choose.storm import prepare
from locpick.config.model import CacheConfig, Config, HerdConfig
from locpick.glance.lease import FILL, FILL_STARTED, MARKER
from locpick.glance.vouch import FleetTrust

pytestmark = pytest.mark.glance


def test_registration_order_from_glance_builds_the_tree(
    glance_world: GlanceWorld, tmp_path: Path
) -> None:
    """Four nodes register filling copies one after another (starting times deliberately out
    of order: Glance's order decides, not the nodes' clocks). A node that read the record
    before the others registered sees them after its one refresh: the first registrant takes
    the origin, the third reads the first (fan-out 2: the first already has the second), the
    fourth the second; none reads a later one or itself."""
    w = glance_world
    data = os.urandom(200_000)
    src = tmp_path / "img.raw"
    src.write_bytes(data)
    with Origin(data) as origin, Origin(data) as peers:
        image_id = gh.seed_image(
            w.endpoint, src, token=w.admin_token, copy_to_stores=(), visibility="public",
            http_locations=[(origin.url, {"zone": "z-origin"})],
        )  # fmt: skip
        config = Config(history_file="", herd=HerdConfig(fanout=2), cache=CacheConfig())
        fleet = FleetTrust(key=b"a fleet key of the test nodes")
        with locpick.Client(config=config, glance_url=w.endpoint, token=w.admin_token) as c:
            before = c.image(image_id)
            urls = [f"{peers.url}?node={i}" for i in range(4)]
            for i, url in enumerate(urls):
                meta = {MARKER: "true", FILL: "filling", FILL_STARTED: f"{2000.0 - i}"}
                meta = fleet.sign(image_id, url, meta)
                gh.add_http_location(w.endpoint, image_id, url, meta, token=w.admin_token)
            plans = {}
            for i, url in enumerate(urls):
                image, plans[i] = prepare(
                    before, config, mine=url, fleet=fleet, reload=lambda: c.image(image_id)
                )
                assert {loc.url for loc in image.locations} >= {origin.url, *urls[:i]}
                assert not {loc.url for loc in image.locations} & set(urls[i:])
            _stale, none = prepare(before, config, mine=urls[3], fleet=fleet)
    assert plans[0].parent is None and plans[0].origin
    assert [plans[i].parent for i in (1, 2, 3)] == [urls[0], urls[0], urls[1]]
    assert not any(plans[i].origin for i in (1, 2, 3))
    assert not none.active, "without the refresh the node cannot see the storm"
