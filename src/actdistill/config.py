"""Configuration: typed dataclass defaults + YAML experiment files + dotted command-line overrides.

The same three layers as lightning-hydra-template, without the framework: a config is a tree
of dataclasses; an experiment YAML overrides part of it; ``key.sub=value`` arguments override
that. Every key is validated against the dataclass fields, so a typo fails loudly with the
closest valid key instead of being silently ignored, and every value is coerced to the field's
declared type. The merged result is what gets written into the run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config key or value that does not fit the schema (message names the key)."""


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict/list tree (tuples become lists), for YAML/JSON."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (valid keys: {', '.join(options)})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value else []
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "", base: Any = None) -> C:
    """Build dataclass ``cls`` from ``data`` on top of its defaults, validating every key.

    A nested section given only in part keeps the *enclosing* default for the rest: when
    ``FewShotConfig.data`` defaults to the few-shot dataset, ``data: {root: x}`` changes the root
    and nothing else (not a reset to ``DataConfig()``). ``base`` is that enclosing default.
    Mappings and lists are replaced whole, so options meant for one dataset never leak into another.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}{_suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            inner = getattr(base, key) if base is not None else _field_default(fields[key])
            kwargs[key] = from_dict(tp, value, where, base=inner if isinstance(inner, tp) else None)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, tp, where)
    if base is not None:
        for name, f in fields.items():
            if name not in kwargs and f.init:
                kwargs[name] = copy.deepcopy(getattr(base, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _check_path(cls: Any, path: list[str]) -> tuple[int | None, bool]:
    """Fail early, naming the full dotted key, when an override addresses a non-existent field.

    Returns ``(depth, section)``: how many leading parts of ``path`` name dataclass fields before a
    free-form mapping field (``data.options.size``: 2; ``None`` when every part is a field), and
    whether ``path`` itself names a dataclass section (``data``)."""
    node = cls
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(node):
            return i, False  # a dict-typed field: free-form below this point
        hints = typing.get_type_hints(node)
        if part not in hints:
            where = ".".join(path[: i + 1])
            raise ConfigError(f"unknown config key {where!r}{_suggest(part, list(hints))}")
        node = hints[part]
        origin = typing.get_origin(node)
        if origin in (Union, types.UnionType):
            inner = [a for a in typing.get_args(node) if a is not type(None)]
            node = inner[0] if len(inner) == 1 else node
    return None, dataclasses.is_dataclass(node)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file; a syntax error names the file, line and column."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping at the top level")
    data.pop("defaults", None)  # reserved for future composition; documented as ignored
    return data


def _default_at(cls: Any, path: list[str]) -> Any:
    """The default value at dotted ``path`` of dataclass ``cls`` (the enclosing section's default,
    as :func:`from_dict` keeps it), or ``None`` where the path leaves the defaults."""
    node: Any = cls()
    for part in path:
        if dataclasses.is_dataclass(node):
            node = getattr(node, part, None)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def _in_effect(cls: Any, path: list[str], depth: int | None, node: dict[str, Any]) -> dict[str, Any]:
    """The mapping at ``path`` whose last part is a key of ``node``: ``node``'s own, else (inside
    or at a free-form mapping, which begins at ``path[depth - 1]``) the default's, else a new one."""
    key = path[-1]
    if isinstance(node.get(key), dict):
        return node[key]
    seed = _default_at(cls, path) if depth is None or len(path) >= depth else None
    return copy.deepcopy(to_dict(seed)) if isinstance(seed, dict) else {}


def apply_overrides(cls: Any, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` (the experiment mapping) with dotted ``key.sub=value`` texts applied in order, keys
    checked against ``cls``.

    One rule: an override sets the value at its path and nothing else. A path into a free-form
    mapping (``data.options.size=tiny``, ``student.model.fusion.dim=64``) sets that one key of the
    mapping in effect (the YAML's, else the default's), whose other keys stay; a mapping value
    (``data.options={size: tiny}``, ``data.options={}``) is the new value of its field, replacing
    the mapping whole, as the same mapping in a YAML does: options meant for one encoder or dataset
    never leak into another. A mapping given for a dataclass section (``data={root: x}``) is not a
    value but a group of keys: it sets the keys it names."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        depth, section = _check_path(cls, path)
        cur = out
        for i, part in enumerate(path[:-1]):
            cur[part] = _in_effect(cls, path[: i + 1], depth, cur)
            cur = cur[part]
        leaf = path[-1]
        if section and isinstance(value, dict):
            cur[leaf] = merge(_in_effect(cls, path, depth, cur), value)
        else:
            cur[leaf] = value
    return out


def _overrides_tree(cls: Any, overrides: list[str]) -> dict[str, Any]:
    """Dotted ``key.sub=value`` texts -> one nested mapping (later texts win), keys checked against ``cls``."""
    return apply_overrides(cls, {}, overrides)


def _plugins(cls: Any, data: dict[str, Any], experiment: Path | None) -> None:
    """Before a config is built: the installed plugins (entry points, once per process) and the
    modules of its ``custom_imports`` (where ``cls`` has that key), so that the encoders and
    datasets they register exist when the config names them. File entries are resolved against the
    experiment YAML's folder, then the working directory, and recorded as absolute paths."""
    from actdistill.plugins import import_custom, load_plugins

    load_plugins()
    if "custom_imports" not in data or "custom_imports" not in typing.get_type_hints(cls):
        return
    base: list[Path] = []
    if experiment is not None and experiment.is_file():
        base.append(experiment.resolve().parent)
    data["custom_imports"] = import_custom(data["custom_imports"], base)


def build_config(
    cls: type[C], experiment: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None,
    defaults: list[str] | None = None,
) -> C:
    """Typed defaults <- ``defaults`` <- experiment (a YAML file, or its already-parsed mapping) <-
    dotted overrides, validated against ``cls``.

    ``defaults`` are dotted values a job sets for itself (``run.name=demo``): they sit *below* the
    experiment file, so a YAML ``run: {name: x}`` is used, and an explicit override still wins.
    Passed as overrides they would silently beat the file.

    A file argument that does not exist is looked up among the shipped configs (``karmma/synthetic``,
    see :mod:`actdistill.shipped`). A top-level ``job:`` key is checked against ``cls`` and dropped."""
    from actdistill.shipped import check_job, resolve_experiment  # (that module imports this one)

    data: dict[str, Any] = _overrides_tree(cls, list(defaults or []))
    path: Path | None = None
    if isinstance(experiment, dict):
        exp, where = dict(experiment), "job"
    elif experiment is not None:
        path = resolve_experiment(experiment)
        exp, where = load_yaml(path), str(path)
    else:
        exp, where = {}, "job"
    if "job" in exp:
        check_job(cls, exp.pop("job"), where)
    data = apply_overrides(cls, merge(data, exp), list(overrides or []))
    _plugins(cls, data, path)
    return from_dict(cls, data)


def config_diff(cfg: Any, base: Any) -> dict[str, Any]:
    """The fields of dataclass tree ``cfg`` whose values differ from ``base``'s, as a nested plain
    mapping. Dataclass sections are compared field by field; a mapping or list that differs is given
    whole, because a YAML mapping or list replaces the default whole (:func:`from_dict`)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value) and type(value) is type(default):
            inner = config_diff(value, default)
            if inner:
                out[f.name] = inner
        elif to_dict(value) != to_dict(default):
            out[f.name] = to_dict(value)
    return out


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
