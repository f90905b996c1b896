"""Run directories: the artefact of every job (config, checkpoints, metrics, plots, report).

A run directory is created with an exclusive ``mkdir``, so two jobs can never share one and an
earlier run is never overwritten: when the name exists a numeric suffix is added. Resuming an
existing run is explicit (``resume=True``) and only then is an existing folder reused.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from actdistill.config import dump_yaml


def create_run_dir(base: str | Path, name: str, timestamp: bool = True) -> Path:
    """Create ``base/name[-YYYYmmdd-HHMMSS][-k]`` exclusively and return it."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}" if timestamp else name
    for k in range(10_000):
        path = base / (stem if k == 0 else f"{stem}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{base}: could not find a free run directory name for {stem!r}")


def open_run_dir(base: str | Path, name: str, resume: str | Path | None = None, timestamp: bool = True) -> Path:
    """A new run directory, or the existing one named by ``resume`` (which must exist)."""
    if resume is not None:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: run directory to resume does not exist")
        return path
    return create_run_dir(base, name, timestamp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file + rename, so readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_config(run_dir: str | Path, cfg: Any) -> Path:
    path = Path(run_dir) / "config.yaml"
    dump_yaml(cfg, path)
    return path
