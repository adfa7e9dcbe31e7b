"""Typed configuration: dataclass trees loaded from YAML with ``key=value`` overrides.

Every config section in the project is a plain ``@dataclass`` with a docstring per field. This
module turns nested dictionaries (from YAML files and command-line overrides) into those
dataclasses, checking every key and every type, and turns them back into dictionaries for saving
next to a run and inside checkpoints. An unknown key or a value of the wrong type raises
:class:`ConfigError` with the dotted key in the message.

The recipes of ``configs/`` ship inside the package (``cordaseg/recipes``): wherever a config
file is asked for, a bare recipe name such as ``gta2cityscapes`` stands for the shipped file
(:func:`resolve_config`). :func:`field_docs` reads the docstring of every field, from which
``cordaseg configs docs`` writes docs/config.md.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from cordaseg.errors import CordasegError, one_line

T = TypeVar("T")


class ConfigError(CordasegError, ValueError):
    """A configuration value or key is wrong; the message names the dotted key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue  # the next alternative of the union
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML follows YAML 1.1, which reads "1e-4" (no dot) as a string; accept it.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a bug in a config class


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; missing keys take their defaults."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key '{where}{unknown[0]}' (known keys here: {known})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-safe nested dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from err
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a nested dict (a copy is returned)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


RECIPES_DIR = Path(__file__).with_name("recipes")
"""The shipped recipes: the repository's ``configs/`` folder, installed as package data."""


def recipe_names() -> list[str]:
    """Names of the shipped recipes (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def resolve_config(path_or_name: str | Path) -> Path:
    """A config file: ``path_or_name`` itself when that file exists, else the shipped recipe of
    that name (``gta2cityscapes`` or ``gta2cityscapes.yaml``); a ConfigError naming both otherwise."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", ".yaml"):
        recipe = RECIPES_DIR / f"{path.stem}.yaml"
        if recipe.is_file():
            return recipe
    names = ", ".join(recipe_names()) or "none installed"
    raise ConfigError(f"config file not found: {path_or_name} (neither a file nor a shipped recipe: {names})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file or a shipped recipe's name (:func:`resolve_config`); a
    missing or malformed file is a ConfigError naming it."""
    path = resolve_config(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({one_line(str(err))})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (empty where there is none)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, [*body[1:], None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = ""
                if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                        and isinstance(following.value.value, str)):
                    text = inspect.cleandoc(following.value.value)
                docs[node.target.id] = text
    return docs


def _display_type(tp: Any) -> str:
    """A type as a reader of the YAML file sees it: ``a | b`` for a choice of values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _display_type(a) for a in args)
    if origin is not None:  # tuple[int, int], dict[str, float], ...
        return str(tp).replace("typing.", "")
    return _type_name(tp)


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "(required)"
    return yaml.safe_dump(to_dict(value), default_flow_style=True).strip().removesuffix("...").strip()


def config_reference(cls: type, prefix: str = "", title: str | None = None, level: int = 2) -> str:
    """A Markdown reference of ``cls``: one table per section (key, type, default, what it does),
    nested sections after their parent, keys written as dotted paths under ``prefix``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    heading = title or (f"`{prefix}`" if prefix else cls.__name__)
    lines = [f"{'#' * level} {heading}", ""]
    if cls.__doc__:
        lines += [inspect.cleandoc(cls.__doc__), ""]
    rows, sections = [], []
    for field in dataclasses.fields(cls):
        key = f"{prefix}.{field.name}" if prefix else field.name
        tp = hints[field.name]
        section = next((t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)), None)
        if section is not None:
            sections.append((section, key, docs.get(field.name, "")))
            continue
        text = " ".join(docs.get(field.name, "").split()).replace("|", "\\|")
        kind = _display_type(tp).replace("|", "\\|")
        rows.append(f"| `{key}` | `{kind}` | `{_default_text(field)}` | {text} |")
    if rows:
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
    for section, key, doc in sections:
        part = config_reference(section, key, level=level + 1)
        if doc:  # the parent's word on the section goes under its heading
            head, _, rest = part.partition("\n\n")
            part = f"{head}\n\n{' '.join(doc.split())}\n\n{rest}"
        lines.append(part)
    return "\n".join(lines)
