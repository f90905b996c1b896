"""Plugins: your own encoders, datasets, readers, fusion models, rows, few-shot heads and text
encoders, registered without editing the package.

Two routes, both ending in an ordinary ``@ENCODERS.register(...)`` (or ``register_dataset``, ...)
that runs when a module is imported:

- **custom_imports** (a config key of every job, as in MMAction2): modules imported before the
  config is built, so that the names they register can be used, and checked, in the same config.
  An entry is a dotted module name importable from ``sys.path``, or the path of a ``.py`` file
  (or of a package folder), relative to the experiment YAML's folder, else to the working
  directory: ``custom_imports: [my_sensor.py]`` next to ``my.yaml``. A file is imported under its
  stem (``my_sensor``) unless that name is taken by another module. A run records file entries
  as absolute paths, so ``predict``, ``fewshot eval`` and resumed runs import them again.
- **entry points**: an installed package lists a module (or a ``module:function`` to call) in the
  group ``actdistill.plugins`` of its ``pyproject.toml``; :func:`load_plugins` imports every one
  once per process (the CLI before any command, :func:`actdistill.config.build_config` before any
  config). A plugin that fails to load is a :class:`PluginWarning` naming it, never a crash: an
  unrelated broken package must not stop every job.

See docs/extending.md for a worked example.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ENTRY_POINT_GROUP = "actdistill.plugins"

_plugins_loaded = False
_plugin_errors: dict[str, str] = {}
_from_files: dict[str, str] = {}  # module name -> the file (or package folder) import_file loaded it from


class PluginWarning(UserWarning):
    """An installed plugin (entry point of group ``actdistill.plugins``) that failed to load."""


# ------------------------------------------------------------------------------------ entry points
def load_plugins(force: bool = False) -> dict[str, str]:
    """Import the entry points of group ``actdistill.plugins`` (once per process unless ``force``).

    An entry point naming a module registers by being imported; one naming a function
    (``pkg.mod:register``) is called with no arguments after it is loaded. Returns the plugins that
    failed, ``{name: error}``; each failure is also a :class:`PluginWarning`."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return dict(_plugin_errors)
    _plugins_loaded = True
    _plugin_errors.clear()
    try:
        eps: Iterable[Any] = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as err:  # a broken installation's metadata: no plugins, said once
        warnings.warn(f"actdistill: cannot read the {ENTRY_POINT_GROUP} entry points: {err}", PluginWarning,
                      stacklevel=2)
        return {}
    for ep in eps:
        label = f"{getattr(ep, 'name', '?')} = {getattr(ep, 'value', '?')}"
        try:
            obj = ep.load()
            if callable(obj) and not inspect.isclass(obj) and not isinstance(obj, ModuleType):
                obj()
        except Exception as err:
            msg = _one_line(err)
            _plugin_errors[str(getattr(ep, "name", label))] = msg
            warnings.warn(f"actdistill plugin {label!r} ({ENTRY_POINT_GROUP}) failed to load and is skipped: {msg}",
                          PluginWarning, stacklevel=2)
    return dict(_plugin_errors)


# ----------------------------------------------------------------------------------- custom imports
def _one_line(err: BaseException, file: Path | None = None) -> str:
    """``Type: message`` on one line, with where in the user's code it happened when known."""
    text = " ".join(str(err).split()) or "(no message)"
    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" ({Path(err.filename).name}, line {err.lineno})"
        text = " ".join(str(err.msg).split())
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "importlib" not in f.filename]
        mine = [f for f in frames if file is not None and _same_file(f.filename, file)]
        frame = (mine or frames or [None])[-1]
        if frame is not None and not frame.filename.startswith("<"):
            where = f" ({Path(frame.filename).name}, line {frame.lineno})"
    return f"{type(err).__name__}: {text}{where}"


def _same_file(a: str | os.PathLike[str] | None, b: str | os.PathLike[str] | None) -> bool:
    if not a or not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry or os.path.isabs(entry)


def _module_name(path: Path, init: Path) -> str:
    """The name to import ``path`` under: its stem, unless another module already has it."""
    stem = re.sub(r"\W", "_", path.stem if path.is_file() else path.name) or "plugin"
    if stem[0].isdigit():
        stem = f"_{stem}"
    existing = sys.modules.get(stem)
    if existing is not None:
        if _same_file(getattr(existing, "__file__", None), init):
            return stem
    else:
        try:
            spec = importlib.util.find_spec(stem)
        except (ImportError, ValueError):
            spec = None
        if spec is None or _same_file(spec.origin, init):
            return stem
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"actdistill_plugin_{stem}_{digest}"


def import_file(path: str | os.PathLike[str]) -> ModuleType:
    """Import a ``.py`` file (or a package folder holding ``__init__.py``) as a module; importing
    the same file again returns the module already imported."""
    p = Path(path).resolve()
    init = p / "__init__.py" if p.is_dir() else p
    if not init.is_file():
        raise FileNotFoundError(f"{p}: not a .py file nor a package folder with __init__.py")
    name = _module_name(p, init)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(p)] if p.is_dir()
                                                  else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"{p}: cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _from_files[name] = str(p)
    return module


def _find_file(entry: str, base_dirs: Sequence[Path]) -> Path | None:
    """A relative ``entry`` looked up in ``base_dirs`` (first found), an absolute one as is."""
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in base_dirs:
        if (base / p).exists():
            return (base / p).resolve()
    return None


def _local_module(entry: str, base_dirs: Sequence[Path]) -> Path | None:
    """``<dir>/<entry>.py`` or ``<dir>/<entry>/__init__.py`` of a dotted name without dots."""
    for base in base_dirs:
        for cand in (base / f"{entry}.py", base / entry / "__init__.py"):
            if cand.is_file():
                return cand.resolve() if cand.name != "__init__.py" else cand.parent.resolve()
    return None


def _base_dirs(base_dirs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for d in [*base_dirs, Path.cwd()]:
        p = Path(d).resolve()
        if p not in out:
            out.append(p)
    return out


def import_custom(entries: str | Sequence[str], base_dirs: Sequence[str | os.PathLike[str]] = (),
                  key: str = "custom_imports") -> list[str]:
    """Import every module of a config's ``custom_imports`` (see the module docstring); returns the
    entries as a run should record them: file entries as absolute paths, dotted names as given.

    A module that cannot be found or fails while being imported is a one-line ``ConfigError``
    naming ``key``, the entry and the error (with the file and line in the user's module)."""
    from actdistill.config import ConfigError

    if isinstance(entries, str):
        entries = [e.strip() for e in entries.split(",") if e.strip()]
    if not isinstance(entries, list | tuple):
        raise ConfigError(f"{key}: expected a list of modules or .py files, got {entries!r}")
    dirs = _base_dirs(base_dirs)
    looked = ", ".join(str(d) for d in dirs)
    recorded: list[str] = []
    for raw in entries:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"{key}: {raw!r} is not a module name or a .py file")
        entry = raw.strip()
        file: Path | None = None
        try:
            if _is_path(entry):
                file = _find_file(entry, dirs)
                if file is None:
                    raise ConfigError(f"{key}: {entry}: no such file (looked in {looked})")
                import_file(file)
                record = str(file)
            else:
                record = entry
                try:
                    importlib.import_module(entry)
                    if entry in _from_files:  # imported from a file earlier: record it as a new process finds it
                        record = _from_files[entry]
                except ModuleNotFoundError as err:
                    if not (err.name and (entry == err.name or entry.startswith(err.name + "."))):
                        raise  # the module exists; something it imports does not
                    top = entry.split(".")[0]
                    file = _local_module(top, dirs)
                    if file is None:
                        raise ConfigError(f"{key}: no module named {entry!r} (not installed, not on PYTHONPATH, "
                                          f"and no {top}.py in {looked})") from None
                    if "." in entry:
                        import_file(file)
                        importlib.import_module(entry)
                    else:
                        import_file(file)
                        record = str(file)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"{key}: cannot import {entry!r}: {_one_line(err, file)}") from err
        if record not in recorded:
            recorded.append(record)
    return recorded


__all__ = ["ENTRY_POINT_GROUP", "PluginWarning", "import_custom", "import_file", "load_plugins"]
