"""The experiment configs shipped inside the package, and the job each config belongs to.

``actdistill/configs/<job>/<name>.yaml`` is package data; the repository's top-level ``configs``
is a link to it, so ``configs/karmma/synthetic.yaml`` works in a clone, and the shipped name
``karmma/synthetic`` works anywhere the package is installed. Wherever a job takes an experiment
YAML, :func:`resolve_experiment` decides what it means: an existing file is used as is (your own
config), otherwise a shipped name.

A YAML belongs to one job, whose typed config it overrides: ``karmma`` (``KarmmaConfig``),
``fewshot`` (``FewShotConfig``) or ``data`` (``ExperimentConfig``: data and run only). An optional
top-level ``job:`` key names it; without one, ``config show`` infers it from the sections the YAML
sets (:func:`infer_job`).
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actdistill.config import ConfigError, build_config, config_diff, load_yaml, merge, parse_override, to_dict

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """The shipped configs' names, ``<job>/<name>`` (e.g. ``karmma/synthetic``), sorted."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.glob("*/*.yaml"))


def shipped_path(name: str) -> Path:
    """The packaged file of a shipped config: ``karmma/synthetic``, ``karmma/synthetic.yaml`` and
    ``configs/karmma/synthetic.yaml`` all name the same one. An unknown name is a ConfigError."""
    key = name.replace("\\", "/").removeprefix("./").removeprefix("configs/")
    key = key.removesuffix(".yaml").removesuffix(".yml")
    if key not in shipped_configs():
        raise ConfigError(f"{name}: no such config file, nor a shipped config "
                          f"(shipped: {', '.join(shipped_configs())})")
    return CONFIG_DIR / f"{key}.yaml"


def resolve_experiment(name_or_path: str | Path) -> Path:
    """An experiment argument -> the YAML file to read: an existing path as is, else a shipped config.

    Why both: a user passes their own file, and the documented ``configs/karmma/synthetic.yaml``
    (or ``karmma/synthetic``) must work in any directory, not only in a clone of the repository."""
    path = Path(name_or_path)
    return path if path.exists() else shipped_path(str(name_or_path))


@dataclass(frozen=True)
class Job:
    """A job's typed config class (imported when first used: the engines import torch) and the
    dotted defaults its command line sets below the YAML (``karmma train``: ``run.name=karmma``)."""

    name: str
    module: str
    class_name: str
    defaults: tuple[str, ...] = ()

    @property
    def cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.class_name)


JOBS = {
    "data": Job("data", "actdistill.experiment", "ExperimentConfig"),
    "karmma": Job("karmma", "actdistill.engine.karmma", "KarmmaConfig", ("run.name=karmma",)),
    "fewshot": Job("fewshot", "actdistill.engine.fewshot", "FewShotConfig", ("run.name=fewshot",)),
}


def job_name(cls: type) -> str | None:
    """The job whose config class is ``cls`` (``"karmma"`` for ``KarmmaConfig``), or None."""
    owner = next((j for j in JOBS.values() if (j.module, j.class_name) == (cls.__module__, cls.__qualname__)), None)
    return owner.name if owner is not None else None


def check_job(cls: type, job: Any, where: str) -> None:
    """Refuse a YAML whose ``job:`` names another job than the one ``cls`` configures."""
    if job not in JOBS:
        raise ConfigError(f"{where}: unknown job {job!r} (known: {', '.join(JOBS)})")
    owner = job_name(cls)
    if owner is not None and owner != job:
        raise ConfigError(f"{where}: a {job} config (job: {job}), not one for the {owner} job")


def _known_keys(cls: Any, data: Mapping[str, Any]) -> int:
    """How many of ``data``'s keys, counted at every level, are fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    count = 0
    for key, value in data.items():
        if key in hints:
            count += 1
            if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
                count += _known_keys(hints[key], value)
    return count


def infer_job(data: Mapping[str, Any]) -> Job:
    """The job a config mapping belongs to: its ``job:`` key, else the job whose config has the
    most of its keys (a tie goes to data, then karmma): sections such as ``teacher``/``student``/
    ``rows`` are KARMMA's, ``backbone``/``heads``/``text``/``train.way`` the few-shot job's."""
    job = data.get("job")
    if job is not None:
        if job not in JOBS:
            raise ConfigError(f"job: unknown job {job!r} (known: {', '.join(JOBS)})")
        return JOBS[job]
    return max(JOBS.values(), key=lambda j: _known_keys(j.cls, data))  # max keeps the first of equals


def _override_keys(overrides: list[str]) -> dict[str, Any]:
    """Dotted ``key.sub=value`` texts as one nested mapping, unchecked (to infer a job from them)."""
    tree: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        for part in reversed(path):
            value = {part: value}
        tree = merge(tree, value)
    return tree


def show_config(experiment: str | Path | None, overrides: list[str], job: str | None = None,
                diff: bool = False) -> str:
    """``actdistill config show``: the merged config (YAML text, ``job:`` first) of the job the
    experiment belongs to, as that job's ``train`` command would build it; with ``diff`` only the
    values that differ from that job's defaults (nested; a mapping or list that differs is shown
    whole, as a YAML replaces it whole). Either output, saved as a file, builds the same config.

    The job is ``job``, else the YAML's ``job:`` key, else inferred from the keys the YAML and the
    overrides set (``config show student.alpha=0.7`` is KARMMA's). A YAML whose ``job:`` names
    another job than ``job`` is refused."""
    path = resolve_experiment(experiment) if experiment is not None else None
    data = load_yaml(path) if path is not None else {}
    chosen = infer_job({**merge(_override_keys(overrides), data), **({"job": job} if job else {})})
    defaults = list(chosen.defaults)
    cfg = build_config(chosen.cls, path, overrides, defaults=defaults)  # the path: custom_imports beside it
    shown = config_diff(cfg, build_config(chosen.cls, None, None, defaults=defaults)) if diff else to_dict(cfg)
    return yaml.safe_dump({"job": chosen.name, **shown}, sort_keys=False)
