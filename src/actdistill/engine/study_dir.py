"""One guard for a seed study's directory: ``<out>/study_config.yaml`` says which experiment it holds.

Why: a study's seeds are ordinary run directories (``<out>/seed-<k>``) that a rerun of the study
reuses when finished and resumes when killed. Rerun with another configuration into the same
``--out``, it would silently pool the seeds of two experiments into one set of intervals. So the
first run writes a record of the study, and every later run compares itself with it and is
refused, in one line naming the first differing keys with both values, when they differ.

What is compared (the study's *identity*): the job (``karmma``, ``fewshot``), the study's own
options (KARMMA's ``--teacher``), and every config key except the *neutral* ones, those that say
where files are, how a run is shown or how fast it goes, never what it computes:

* ``run.out_dir``, ``run.name``, ``run.resume``: the study sets them for each seed;
* ``run.progress``, ``run.threads``, ``run.dist_timeout_min``, ``data.num_workers``: display and
  speed;
* ``data.root``: where the dataset's files are. Moving them to another disk or machine halfway
  through a study is legitimate, and which data it is stays pinned by the compared keys
  (``data.dataset``, the splits, ``data.annotations``, ``data.options`` such as a synthetic
  dataset's seed and size, the modalities). A root that holds *other* content under the same
  dataset name is not detected here (KARMMA's summary still refuses seeds scored on other clips);
* each job's own (:data:`actdistill.engine.karmma_study.NEUTRAL_KEYS`,
  :data:`actdistill.engine.fewshot_study.NEUTRAL_KEYS`): cache locations and in-memory thresholds,
  the logging cadence, KARMMA's timing-only efficiency settings, the few-shot methods (a study may
  grow by a method: the others' trained seeds are reused).

The base seeds (``run.seed``, few-shot ``train.seed``) are compared: seed ``k`` of the study is
base + k, so another base is another set of seeds.

The record holds the whole config (neutral keys included, for the reader); the identity is derived
from it when compared, after rebuilding it through the config class, so keys added to the class
since take their defaults, and a neutral key added to a list later applies to old records too. A
key since removed cannot be rebuilt: the record is then compared as written, and the removed key
shows up as a difference. The record of earlier KARMMA studies (``{config, teacher}``, no ``job``)
is read as job ``karmma`` with ``--teacher`` from it, and left as it is.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from actdistill.config import ConfigError, from_dict, to_dict
from actdistill.rundir import atomic_write_text

RECORD = "study_config.yaml"
FORMAT = 2  # 1: the KARMMA record {config, teacher} of earlier versions (no format key)

#: Neutral keys of every job (see the module docstring): set per seed by the study, or display and
#: speed only, or where the dataset's files are.
RUN_NEUTRAL = ("run.out_dir", "run.name", "run.resume", "run.progress", "run.threads", "run.dist_timeout_min",
               "data.root", "data.num_workers")

_HEADER = ("# actdistill seed study: the experiment this directory holds. Rerunning the study with another\n"
           "# configuration into it is refused; keys that only say where files are or how a run is shown\n"
           "# are not compared (see actdistill.engine.study_dir).\n")
_UNSET = "<unset>"


class Difference(NamedTuple):
    """One key (dotted) whose value differs: ``old`` (the record's), ``new`` (this run's)."""

    key: str
    old: Any
    new: Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{dotted.key: leaf}`` (lists are leaves; an empty mapping is kept as one)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def is_neutral(key: str, neutral: Sequence[str]) -> bool:
    """``key`` is a neutral key or lies under one (``run.progress``, ``heads.methods``)."""
    return any(key == n or key.startswith(n + ".") for n in neutral)


def config_identity(config_cls: type[Any], config: Any, neutral: Sequence[str],
                    scope: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The keys of ``config`` (a config object or its mapping) that decide a study's results, flattened.

    Both sides of a comparison go through the same steps, so a record read back from YAML and a
    config built in memory compare equal when they mean the same: a YAML round trip (the types a
    record has), a rebuild through ``config_cls`` (defaults for keys added since; left as written
    when a key has since been removed, so that key is reported), ``scope`` (a job's own trimming,
    e.g. the options of methods the study does not run), then the neutral keys dropped."""
    tree = yaml.safe_load(yaml.safe_dump(to_dict(config))) or {}
    with contextlib.suppress(ConfigError):
        tree = to_dict(from_dict(config_cls, tree))
    if scope is not None:
        tree = scope(tree)
    return {k: v for k, v in flatten(tree).items() if not is_neutral(k, neutral)}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Difference]:
    """The keys whose values differ, in ``new``'s order and then the keys only ``old`` has."""
    keys = [*new, *(k for k in old if k not in new)]
    return [Difference(k, old.get(k, _UNSET), new.get(k, _UNSET)) for k in keys
            if old.get(k, _UNSET) != new.get(k, _UNSET)]


def _value(v: Any, width: int = 60) -> str:
    text = v if v == _UNSET else json.dumps(v, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def describe(diffs: Sequence[Difference], limit: int = 3) -> str:
    """``key was OLD, now NEW; ...`` for the first ``limit`` differences, then how many more (one line)."""
    text = "; ".join(f"{d.key} was {_value(d.old)}, now {_value(d.new)}" for d in diffs[:limit])
    more = len(diffs) - limit
    return text + (f"; and {more} more key{'s' if more > 1 else ''}" if more > 0 else "")


def read_record(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(job, study options, config mapping)`` of a study record, either format."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: unreadable study record ({err}); give the study another --out") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("config"), Mapping):
        raise ConfigError(f"{path}: not a study record (no config mapping); give the study another --out")
    if "job" not in data:  # format 1: KARMMA's record of earlier versions
        return "karmma", {"teacher": data.get("teacher")}, dict(data["config"])
    return str(data["job"]), dict(data.get("study") or {}), dict(data["config"])


def _identity(job: str, study: Mapping[str, Any], config_cls: type[Any], config: Any, neutral: Sequence[str],
              scope: Callable[[dict[str, Any]], dict[str, Any]] | None) -> dict[str, Any]:
    # the study's options are shown as the command-line flags that set them (--teacher)
    return {"job": job, **{f"--{k}": v for k, v in study.items()},
            **config_identity(config_cls, config, neutral, scope)}


def check_study_dir(out: str | Path, job: str, config_cls: type[Any], cfg: Any, *, neutral: Sequence[str],
                    study: Mapping[str, Any] | None = None,
                    scope: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                    unrecorded: Callable[[], None] | None = None) -> Path:
    """Refuse ``out`` when its record names another study; write the record when there is none.

    ``job``: the study's job name; ``cfg``: its (base) config, of class ``config_cls``; ``neutral``:
    the keys not compared (:data:`RUN_NEUTRAL` plus the job's); ``study``: the study's own options
    (compared, shown as ``--name``); ``scope``: a job's trimming of the config mapping before the
    comparison (applied to both sides); ``unrecorded``: called when no record exists yet, before
    one is written, so a job whose earlier versions wrote none can check the seed directories
    already there (it raises to refuse; the record is then not written, and the next run checks
    again). Call it on one process (rank 0). Returns the record's path."""
    out = Path(out)
    path = out / RECORD
    study = dict(study or {})
    if path.is_file():
        old_job, old_study, old_config = read_record(path)
        diffs = differences(_identity(old_job, old_study, config_cls, old_config, neutral, scope),
                            _identity(job, study, config_cls, cfg, neutral, scope))
        if diffs:
            raise ConfigError(f"{out}: holds a study of another configuration ({describe(diffs)}; see {path}); "
                              "give this study another --out, or delete that directory to start over")
        return path
    if unrecorded is not None:
        unrecorded()
    out.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "job": job, "study": study, "config": to_dict(cfg)}
    atomic_write_text(path, _HEADER + yaml.safe_dump(record, sort_keys=False))
    return path


__all__ = [
    "RECORD",
    "RUN_NEUTRAL",
    "Difference",
    "check_study_dir",
    "config_identity",
    "describe",
    "differences",
    "flatten",
    "is_neutral",
    "read_record",
]
