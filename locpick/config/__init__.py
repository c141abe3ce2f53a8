"""Configuration: one frozen ``Config`` read once at the edge, from TOML, env and arguments.

- :mod:`locpick.config.model`: the frozen values and their defaults (what can be set).
- :mod:`locpick.config.load`: TOML → validated ``Config`` (unknown keys, wrong types refused).
- :mod:`locpick.config.env`: the environment, read once (``Environment``, ``resolve_config``).
"""

from __future__ import annotations

from locpick.config.env import Environment, resolve_config
from locpick.config.load import config_from_mapping, load_config
from locpick.config.model import (
    CacheConfig,
    Config,
    Filesystem,
    GlanceConfig,
    HerdConfig,
    Hint,
    NetworkConfig,
    Policy,
    ProbeConfig,
    RbdConfig,
    S3Config,
    ScoringConfig,
    SecurityConfig,
    ServeConfig,
    SwiftConfig,
    SwiftRefConfig,
    TLSConfig,
    Topology,
    TransferConfig,
)
from locpick.errors import ConfigError

__all__ = [
    "CacheConfig",
    "Config",
    "ConfigError",
    "Environment",
    "Filesystem",
    "GlanceConfig",
    "HerdConfig",
    "Hint",
    "NetworkConfig",
    "Policy",
    "ProbeConfig",
    "RbdConfig",
    "S3Config",
    "ScoringConfig",
    "SecurityConfig",
    "ServeConfig",
    "SwiftConfig",
    "SwiftRefConfig",
    "TLSConfig",
    "Topology",
    "TransferConfig",
    "config_from_mapping",
    "load_config",
    "resolve_config",
]
