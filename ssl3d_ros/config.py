"""Typed configuration: dataclasses loaded from YAML or dicts, unknown keys rejected.

Every config in the project (preprocessing, encoder, pretraining, node) is a dataclass. This module
turns nested plain data into those dataclasses with type checks and clear errors naming the key path,
and back into plain data for checkpoints and logs.
"""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key path."""


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), recursively; unknown keys raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{path or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required fields
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_convert(key_tp, k, f"{path}.<key>"): _convert(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) from a dataclass tree, for JSON/YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_yaml(path: str | Path) -> Any:
    """Plain data from a YAML file; a missing or unparsable file raises ConfigError naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def set_dotted(data: dict, assignment: str) -> dict:
    """Apply one ``section.key=value`` command-line override to plain config data, in place.

    The value is parsed as YAML (``0.15``, ``[xyz, intensity]``, ``true``); intermediate mappings are
    created as needed. The typed loader validates the result afterwards, so a misspelt key is still
    rejected as an unknown key."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {assignment!r}: expected SECTION.KEY=VALUE")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML: {exc}") from None
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[:depth + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value
    return data


def parse_variant(spec: str, bases: Sequence[str]) -> tuple[str, str, list[str]]:
    """``NAME=BASE:KEY=VALUE;KEY=VALUE`` (a study's ``--variant``) as (name, base, assignments).

    Every assignment is parsed here, so a malformed one fails before hours of other runs."""
    name, _, rest = spec.partition("=")
    base, _, assignments = rest.partition(":")
    if not name or base not in bases:
        raise ConfigError(f"variant {spec!r}: expected NAME=BASE[:KEY=VALUE;...] with BASE one of {', '.join(bases)}")
    items = [item.strip() for item in assignments.split(";") if item.strip()]
    for item in items:
        try:
            set_dotted({}, item)
        except ConfigError as exc:
            raise ConfigError(f"variant {spec!r}: {exc}") from None
    return name, base, items


def load_with_overrides(path: str | Path | None, overrides: Sequence[str], build: Callable[[dict], T]) -> T:
    """``build(data)`` of the YAML mapping in ``path`` (None: an empty one) with ``SECTION.KEY=VALUE``
    overrides applied first; every ConfigError is prefixed with the file."""
    data = (read_yaml(path) or {}) if path else {}
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, got {type(data).__name__}")
        for assignment in overrides:
            set_dotted(data, assignment)
        return build(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def load_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load dataclass ``cls`` from a YAML file (optionally from one top-level section)."""
    data = read_yaml(path)
    if section is not None:
        if not isinstance(data, dict) or section not in data:
            raise ConfigError(f"{path}: missing top-level section {section!r}")
        data = data[section]
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


__all__ = ["ConfigError", "from_dict", "to_dict", "read_yaml", "load_yaml"]
