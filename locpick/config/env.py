"""The edge: the process environment, read once into an ``Environment`` value.

The CLI and :class:`~locpick.client.Client` take one snapshot (``Environment.from_os()``) and hand
its values down (``Config``, ``Context``, credentials); nothing below them reads ``os.environ``.
The contract's variables (``OS_IMAGE_URL``, ``OS_AUTH_TOKEN``, ``LOCPICK_CONFIG``, the Keystone
``OS_*`` and proxy/TLS variables) keep their meaning. The one exception is the test-only crash
hook ``LOCPICK_TEST_CRASH_AT`` (``locpick.cache.store``), read where it fires.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from locpick.config.load import load_config
from locpick.config.model import Config

__all__ = ["Environment", "resolve_config"]


def _copy(values: Mapping[str, str]) -> Mapping[str, str]:
    return dict(values)


@attrs.frozen
class Environment:
    """A copy of the environment variables locpick may use (never printed: it holds secrets)."""

    vars: Mapping[str, str] = attrs.field(factory=dict, converter=_copy, repr=False)

    @classmethod
    def from_os(cls) -> Environment:
        """The process environment, now."""
        return cls(os.environ)

    def get(self, name: str) -> str | None:
        """The variable's value; None when unset or empty."""
        return self.vars.get(name) or None

    @property
    def glance_url(self) -> str | None:
        """``OS_IMAGE_URL``: the Glance endpoint when none is given."""
        return self.get("OS_IMAGE_URL")

    @property
    def token(self) -> str | None:
        """``OS_AUTH_TOKEN``: the caller's token when none is given."""
        return self.get("OS_AUTH_TOKEN")


def resolve_config(
    config: Config | str | os.PathLike[str] | None, env: Environment | None = None
) -> Config:
    """The contract's lookup: explicit config, else $LOCPICK_CONFIG, else the user file."""
    if isinstance(config, Config):
        return config
    if config is not None:
        return load_config(config)
    path = (env if env is not None else Environment.from_os()).get("LOCPICK_CONFIG")
    if path:
        return load_config(path)
    user = Path.home() / ".config" / "locpick" / "config.toml"
    if user.is_file():
        return load_config(user)
    return Config()
