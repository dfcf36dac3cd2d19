"""Typed config dataclasses from YAML files, plain mappings and `--set key=value` overrides.

One loader serves the notebook, the CLI and the tests, so a typo in a key or a value of the wrong type fails the
same way everywhere: one ValueError that names the file, the dotted key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from tts_lib.common.fileio import atomic_write_text

T = TypeVar("T")

# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; float fields accept such strings.
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def load_config(cls: type[T], source: str | Path | Mapping[str, Any], where: str | None = None) -> T:
    """Build `cls` (a dataclass) from a YAML file path or a mapping, checking every key and value."""
    if isinstance(source, str | Path):
        path = Path(source)
        where = where or str(path)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data = {} if data is None else data  # an empty file means "all defaults"
    else:
        data = source
        where = where or "config"
    return _build(cls, data, "", where)


def config_to_dict(obj: Any) -> Any:
    """Plain YAML-friendly data: dataclasses become dicts, tuples become lists, paths become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> Path:
    text = yaml.safe_dump(config_to_dict(obj), sort_keys=False, allow_unicode=True)
    return atomic_write_text(path, text)


def apply_overrides(obj: T, overrides: list[str], where: str = "--set") -> T:
    """A new config with `key.path=value` items applied; values are parsed as YAML and checked like a file."""
    data = config_to_dict(obj)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{where}: expected key=value (e.g. optim.lr=1e-4), found {item!r}")
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                _unknown_key(where, ".".join(parts[: depth + 1]), node)
            if node[part] is None:  # an optional section left unset: fill it from its defaults
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            if not (isinstance(node, dict) and node == {}):  # keys of a just-created section are checked on load
                _unknown_key(where, key, node)
        node[parts[-1]] = yaml.safe_load(text)
    return _build(type(obj), data, "", f"{where} {' '.join(overrides)}")


def _unknown_key(where: str, key: str, node: Any) -> typing.NoReturn:
    valid = ", ".join(node) if isinstance(node, dict) else "(none: not a section)"
    raise ValueError(f"{where}: unknown key '{key}'; valid keys here: {valid}")


def _build(cls: type[T], data: Any, prefix: str, where: str) -> T:
    if not isinstance(data, Mapping):
        key = prefix.rstrip(".") or "<top>"
        raise ValueError(f"{where}: key '{key}' expects a mapping of {cls.__name__} keys, found {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        dotted = ", ".join(f"'{prefix}{k}'" for k in unknown)
        raise ValueError(f"{where}: unknown key {dotted}; valid keys here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name, where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing required key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ checks: say where the bad values came from
        raise ValueError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {e}") from e


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    def wrong() -> typing.NoReturn:
        raise ValueError(f"{where}: key '{key}' expects {_type_name(tp)}, found {value!r} ({type(value).__name__})")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", where)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            wrong()
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(option, value, key, where)
            except ValueError:
                pass
        if len(options) == 1:
            return _convert(options[0], value, key, where)
        try:
            return _convert(options[-1], value, key, where)
        except ValueError:
            wrong()
    if origin is Literal:
        # compare types too, so True does not pass for a Literal[1]
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return value
        raise ValueError(f"{where}: key '{key}' must be one of {', '.join(map(repr, args))}, found {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            wrong()
        if origin is list:
            return [_convert(args[0] if args else Any, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]", where) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: key '{key}' expects {len(args)} items, found {len(value)}: {value!r}")
        item_types = args or (Any,) * len(value)
        return tuple(_convert(t, v, f"{key}[{i}]", where) for i, (t, v) in enumerate(zip(item_types, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            wrong()
        kt, vt = args or (Any, Any)
        return {_convert(kt, k, key, where): _convert(vt, v, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        return value if isinstance(value, bool) else wrong()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else wrong()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)
        wrong()
    if tp is str:
        return value if isinstance(value, str) else wrong()
    if tp is Path:
        return Path(value) if isinstance(value, str | Path) else wrong()
    raise TypeError(f"config_io cannot load key '{key}' of type {_type_name(tp)}; use plain types or dataclasses")
