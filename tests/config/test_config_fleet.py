"""``[fleet]`` and the new ``[serve]`` keys of issue 24 parse, with their defaults."""

from __future__ import annotations

import pytest

from locpick.config.load import config_from_mapping
from locpick.errors import ConfigError


def test_fleet_defaults_fit_glances_default_quota() -> None:
    """No [fleet]: no coordination (appends only), at most 6 copies (quota 10)."""
    cfg = config_from_mapping({})
    assert cfg.fleet.coordination is None
    assert cfg.fleet.max_copies == 6 and cfg.fleet.max_copies_per_zone == 0
    assert cfg.serve.max_transfers_per_client < cfg.serve.max_clients


def test_fleet_table_parses() -> None:
    cfg = config_from_mapping(
        {"fleet": {"coordination": "etcd3+http://10.0.0.5:2379", "max_copies": 3,
                   "max_copies_per_zone": 1, "lock_timeout": 5}}
    )  # fmt: skip
    assert cfg.fleet.coordination == "etcd3+http://10.0.0.5:2379"
    assert (cfg.fleet.max_copies, cfg.fleet.max_copies_per_zone) == (3, 1)
    assert cfg.fleet.lock_timeout == 5.0


@pytest.mark.parametrize(
    "table",
    [
        {"coordination": "10.0.0.5:2379"},  # no scheme
        {"max_copies": -1},
        {"lock_timeout": 0},
        {"unknown": 1},
    ],
)
def test_bad_fleet_values_are_config_errors(table: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"fleet"):
        config_from_mapping({"fleet": table})
