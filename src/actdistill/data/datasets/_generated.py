"""Shared guard for the dataset generators: write only into an empty folder or over our own output.

A generator writes a marker file first and its metadata file last, so the metadata's presence
means "complete" and a marker without metadata means "a killed generation of ours". Used by
the synthetic EPIC-layout and few-shot generators.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_output(out: Path, identity: Mapping[str, Any], meta_file: str, marker_file: str,
                   clear: Callable[[Path], None], what: str) -> dict[str, Any] | None:
    """Decide what to do with ``out`` before generating the dataset described by ``identity``.

    Returns the existing metadata when ``out`` already holds this dataset, ``None`` when ``out``
    is ready for a fresh generation (``clear`` has removed what a killed generation of the same
    dataset, or a complete one by an older generator version, left), and raises ``ValueError``
    naming the folder otherwise. Never deletes anything a marker or metadata file does not prove
    to be ours.
    """

    def same(meta: Mapping[str, Any]) -> bool:
        return all(meta.get(k) == v for k, v in identity.items())

    def outdated(meta: Mapping[str, Any]) -> bool:
        old, new = meta.get("version"), identity.get("version")
        return (isinstance(old, int) and isinstance(new, int) and old < new
                and all(meta.get(k) == v for k, v in identity.items() if k != "version"))

    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; cannot write a {what} there")
    if not out.exists() or not any(out.iterdir()):
        return None
    meta = read_json_object(out / meta_file)
    if meta is not None:
        if same(meta):
            (out / marker_file).unlink(missing_ok=True)
            return meta
        if outdated(meta):
            # Our own output of an older generator version: regenerate it in place. Only what the
            # generator writes is removed (``clear``), so files the user added are kept.
            print(f"{out}: {what} of generator version {meta.get('version')} is outdated; "
                  f"regenerating it as version {identity.get('version')}")
            clear(out)
            (out / meta_file).unlink()
            return None
        raise ValueError(
            f"{out}: holds a different {what} (seed={meta.get('seed')}, size={meta.get('size')}, "
            f"version={meta.get('version')}); choose another folder or delete this one"
        )
    marker = read_json_object(out / marker_file)
    if marker is None:
        raise ValueError(f"{out}: is not empty and is not a {what}; refusing to write into it")
    if not same(marker):
        raise ValueError(
            f"{out}: holds an incomplete {what} of seed={marker.get('seed')}, size={marker.get('size')}; "
            "delete it or use another folder"
        )
    clear(out)
    return None
