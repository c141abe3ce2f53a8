"""Reading configuration: TOML (or an already-parsed mapping) into a validated ``Config``.

Unknown keys and wrong types are a ``ConfigError`` naming the file and the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from locpick.config.model import SECTIONS, Config, Filesystem, Hint
from locpick.config.stores import SwiftConfig, SwiftRefConfig
from locpick.errors import ConfigError
from locpick.redact import SCRUB

__all__ = ["config_from_mapping", "load_config"]

T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str, *, exclude: tuple[str, ...] = ()) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config [{where}]: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in attrs.fields(cls) if f.name not in exclude}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"config [{where}]: unknown key {key!r} (known: {known})")
        kwargs[key] = _coerce(value, f.default, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"config [{where}]: {exc}") from exc


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config {where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config {where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if value is not None and not isinstance(value, str | int | float):
        raise ConfigError(f"config {where}: unexpected value {value!r}")
    return value


def config_from_mapping(data: Mapping[str, Any], *, source: str | None = None) -> Config:
    """Build a Config from parsed TOML, rejecting unknown keys and wrong types."""
    kwargs: dict[str, Any] = {"source_path": source}
    for key, value in data.items():
        if key in SECTIONS:
            kwargs[key] = _build(SECTIONS[key], value, key)
        elif key == "filesystems":
            if not isinstance(value, list):
                raise ConfigError("config [[filesystems]]: expected an array of tables")
            fss = tuple(
                _build(Filesystem, v, f"filesystems[{i}]", exclude=("require_mount",))
                for i, v in enumerate(value)
            )
            for fs in fss:
                if not os.path.isabs(fs.mountpoint):
                    raise ConfigError(
                        f"config [[filesystems]] id={fs.id!r}: mountpoint must be absolute"
                    )
            kwargs["filesystems"] = fss
        elif key == "hints":
            if not isinstance(value, list):
                raise ConfigError("config [[hints]]: expected an array of tables")
            kwargs["hints"] = tuple(_build(Hint, v, f"hints[{i}]") for i, v in enumerate(value))
        elif key == "swift":
            kwargs["swift"] = _swift_config(value)
        elif key == "history_file":
            if not isinstance(value, str):
                raise ConfigError("config history_file: expected a path string")
            kwargs["history_file"] = value
        else:
            raise ConfigError(f"config: unknown section or key {key!r}")
    return Config(**kwargs)


def _swift_config(data: Any) -> SwiftConfig:
    if not isinstance(data, Mapping):
        raise ConfigError("config [swift]: expected a table")
    unknown = set(data) - {"refs"}
    if unknown:
        raise ConfigError(f"config [swift]: unknown key {sorted(unknown)[0]!r} (known: refs)")
    refs = data.get("refs", {})
    if not isinstance(refs, Mapping):
        raise ConfigError("config [swift.refs]: expected tables [swift.refs.REF]")
    out = []
    for name, table in refs.items():
        where = f"swift.refs.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"config [{where}]: expected a table")
        for k in ("auth_url", "user", "key"):
            if not isinstance(table.get(k), str) or not table.get(k):
                raise ConfigError(f"config [{where}]: {k} must be a non-empty string")
        extra = set(table) - {"auth_url", "user", "key"}
        if extra:
            raise ConfigError(
                f"config [{where}]: unknown key {sorted(extra)[0]!r} (known: auth_url, key, user)"
            )
        SCRUB.add(table["key"])
        out.append(
            SwiftRefConfig(
                name=str(name), auth_url=table["auth_url"], user=table["user"], key=table["key"]
            )
        )
    return SwiftConfig(refs=tuple(out))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a TOML config file; any problem is a ConfigError naming the file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML ({exc})") from exc
    try:
        return config_from_mapping(data, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
