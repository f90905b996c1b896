"""``actdistill list KIND``: what is registered, one line each, after plugins load.

Wired into the top-level parser by :func:`add_list_parser`. The installed plugins (entry points
of group ``actdistill.plugins``) are loaded first, then the modules of ``--config``'s
``custom_imports`` and of ``--import``, so a user's own encoder or dataset is listed beside the
built-in ones exactly when a job with that config would see it.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

#: ``actdistill list`` kinds -> (module, registry): importing the module registers the built-in entries
KINDS: dict[str, tuple[str, str]] = {
    "datasets": ("actdistill.data.datasets", "DATASETS"),
    "encoders": ("actdistill.models.encoders", "ENCODERS"),
    "fusion": ("actdistill.models", "FUSION"),
    "rows": ("actdistill.engine.tasks", "ROWS"),
    "fewshot-methods": ("actdistill.models.fewshot", "FEWSHOT_HEADS"),
    "text-encoders": ("actdistill.engine.fewshot", "TEXT_ENCODERS"),
    "readers": ("actdistill.data.modalities", "READERS"),
}


def catalogue(kind: str) -> list[tuple[str, str]]:
    """``(name, one-line description)`` of everything registered as ``kind`` (a key of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    module, registry = KINDS[kind]
    return getattr(importlib.import_module(module), registry).entries()


def format_catalogue(entries: list[tuple[str, str]]) -> str:
    width = max((len(n) for n, _ in entries), default=0)
    return "".join(f"{n:<{width}}  {d}".rstrip() + "\n" for n, d in entries)


def load_user_modules(config: str | None, imports: list[str]) -> list[str]:
    """Import the installed plugins, ``config``'s ``custom_imports`` (relative to its folder) and
    ``imports`` (relative to the working directory); returns what was imported, as recorded."""
    from actdistill.config import load_yaml
    from actdistill.plugins import import_custom, load_plugins

    load_plugins()
    done: list[str] = []
    if config is not None:
        path = Path(config)
        if not path.exists():
            from actdistill.shipped import resolve_experiment

            path = resolve_experiment(config)
        data: dict[str, Any] = load_yaml(path)
        done += import_custom(data.get("custom_imports") or [], [path.resolve().parent])
    if imports:
        done += import_custom(list(imports), [], key="--import")
    return done


def add_list_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``list KIND [--config YAML] [--import MODULE]`` to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "list", help="list what is registered: datasets, encoders, fusion, rows, fewshot-methods, ...",
        description="Print every registered name of KIND with a one-line description, after loading the "
        "installed plugins (entry points of group actdistill.plugins), the custom_imports of --config and the "
        "modules of --import: what a job with that config can name. See docs/extending.md.")
    p.add_argument("kind", choices=list(KINDS), metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    p.add_argument("--config", metavar="YAML", help="experiment YAML whose custom_imports are imported first")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module (dotted name, or a .py file) to import first (repeatable)")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    load_user_modules(args.config, args.imports)
    print(format_catalogue(catalogue(args.kind)), end="")
    return 0
