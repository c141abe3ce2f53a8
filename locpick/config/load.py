"""Reading configuration: TOML (or an already-parsed mapping) into a validated ``Config``.

Every key is checked against its field's type in the model when the file is read: unknown keys,
wrong types, values outside a choice (``Literal``), bad units and negative sizes or durations
are a ``ConfigError`` (exit 2) naming the file, the section and the key, so a typo never
silently falls back to a default nor fails later, mid-download. Sizes and durations accept
units (``"10G"``, ``"30s"``: :mod:`locpick.config.units`).
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from locpick.config.model import SECTIONS, Config, Filesystem, Hint
from locpick.config.stores import SwiftConfig, SwiftRefConfig
from locpick.config.units import Unit, parse_duration, parse_size
from locpick.errors import ConfigError
from locpick.redact import SCRUB

__all__ = ["config_from_mapping", "load_config"]

T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str, *, exclude: tuple[str, ...] = ()) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config [{where}]: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in attrs.fields(cls) if f.name not in exclude}  # type: ignore[arg-type]
    hints = _hints(cls)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"config [{where}] {key}: unknown key (known: {known})")
        kwargs[key] = _coerce(value, hints[key], f"[{where}] {key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config [{where}]: {exc}") from exc


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved annotations of a config section, units (``Annotated``) kept."""
    return typing.get_type_hints(cls, include_extras=True)


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the field's type ``hint`` (units parsed), else a ConfigError
    naming ``where`` (``[section] key``)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        unit = next((m for m in meta if isinstance(m, Unit)), None)
        if unit is not None:
            return _with_unit(value, base, unit, where)
        return _coerce(value, base, where)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:  # Optional[X]: TOML has no null, so it is X
            return _coerce(value, options[0], where)
        if value is not None and not isinstance(value, str | int | float):
            raise ConfigError(f"config {where}: unexpected value {value!r}")
        return value
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"config {where}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config {where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        number = isinstance(value, int | float) if hint is float else isinstance(value, int)
        if isinstance(value, bool) or not number:
            raise ConfigError(f"config {where}: expected {_NAMES[hint]}, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config {where}: unexpected value {value!r}")  # pragma: no cover


def _with_unit(value: Any, base: type[Any], unit: Unit, where: str) -> Any:
    """A size, rate or duration: a plain number, or a string with a unit; never negative."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        what = {"size": "a size", "rate": "a rate", "duration": "a duration"}[unit.kind]
        raise ConfigError(f"config {where}: expected {what} (number or string), got {value!r}")
    try:
        if isinstance(value, str):
            if unit.kind == "duration":
                number = parse_duration(value)
            else:
                number = parse_size(value, rate=unit.kind == "rate")
        else:
            number = float(value)
    except ValueError as exc:
        raise ConfigError(f"config {where}: {exc}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"config {where}: {value!r} is negative (must be >= 0)")
    if base is int:
        if unit.kind == "duration" and number != int(number):
            raise ConfigError(f"config {where}: {value!r} is not a whole number of seconds")
        return round(number)
    return number


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
