"""Few-shot seed studies: the chosen methods over several training seeds, compared episode by episode.

``actdistill fewshot study CONFIG --seeds N`` trains and evaluates the configured methods ``N``
times. Seed ``k`` is an ordinary few-shot run directory ``<out>/seed-<k>`` whose training seeds
are offset by ``k``: ``run.seed`` (the initialisation of every method's projection and head)
and ``train.seed`` (which training episodes are drawn, the cached training view of each video,
dropout and PPS sampling, the trainer's per-step reseeding). Everything that defines the test
stays fixed: the data (``data.*``, ``synthetic``, so the same videos, clips and feature caches),
the class-name text (``text.seed``) and ``eval.*`` (``eval.seed``), so every method under every
seed is scored on the same seeded test episodes. That pairing is what the study uses:

* per method and setting, the mean accuracy over seeds with a Student-t 95% interval
  (:func:`~actdistill.evaluation.study.seed_interval`): how much the number moves with training
  noise;
* per pair of methods and setting, the mean difference per test episode (same episode, same
  seed) with a two-way bootstrap 95% interval over seeds and episodes
  (:func:`~actdistill.evaluation.study.paired_bootstrap`): whether one method beats the other.

Resumable: a seed directory that already holds ``summary.json`` and ``episodes.json`` for the
requested methods and settings (and a config that matches) is reused as it is; one without them
(a killed seed) is run again in place, which resumes each method from its step checkpoints and
loads the methods that had finished (the mechanism of ``fewshot train run.resume=RUN_DIR``).
``<out>/study_config.yaml`` records the study; a rerun with another configuration into the same
``--out`` is refused rather than mixed in, one that changes only a neutral key (:data:`NEUTRAL_KEYS`:
where files are, display, speed, the methods) is not (:mod:`actdistill.engine.study_dir`); each
seed directory's own ``config.yaml`` is checked the same way.

Outputs in ``<out>``: ``study.json`` (strict JSON: an interval one seed cannot give is ``null``),
``study.md`` and ``study_differences.png``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from actdistill.config import ConfigError, from_dict, to_dict
from actdistill.engine.fewshot import FewShotConfig, parse_setting
from actdistill.engine.study_dir import RUN_NEUTRAL, Difference, check_study_dir, config_identity, describe, differences

#: Config keys that do not change a seed's results (see :mod:`actdistill.engine.study_dir`): besides
#: the run's own, where the feature caches are and when they are held in memory, the logging
#: cadence, and the methods (a study may grow by a method: the seeds' trained methods are reused).
#: Neither the study directory nor a seed directory is refused for a difference in these.
NEUTRAL_KEYS = (*RUN_NEUTRAL, "cache_root", "cache_in_memory_mb", "train.log_every", "heads.methods")

STUDY_NOTE = ("Intervals over seeds are Student-t 95% intervals of the mean over training seeds "
              "(mean ± t·sd/√n; none with one seed). Differences are paired: A − B per test episode "
              "(the same seeded episodes for every method and seed) and per seed, with a two-way "
              "bootstrap 95% interval that resamples seeds and episodes together ({resamples} "
              "resamples; conservative, see actdistill.evaluation.study).")


# ------------------------------------------------------------------------------------------ configs
def seed_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"seed-{k}"


def seed_config(cfg: FewShotConfig, k: int, out: str | Path) -> FewShotConfig:
    """The config of seed ``k``: ``run.seed`` and ``train.seed`` offset by ``k``, run directory
    ``<out>/seed-<k>`` (``run.resume`` names it, so its ``config.yaml`` continues it as
    ``fewshot train`` would). Data, text and ``eval`` (the test episodes) are left as they are."""
    c = from_dict(FewShotConfig, copy.deepcopy(to_dict(cfg)))
    c.run.seed = cfg.run.seed + k
    c.train.seed = cfg.train.seed + k
    c.run.out_dir, c.run.name, c.run.resume = str(out), f"seed-{k}", str(seed_dir(out, k))
    return c


def _scope(methods: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Trim a config mapping to what decides ``methods``' results: another method's options and
    init checkpoint do not change these methods' results."""
    def scope(tree: dict[str, Any]) -> dict[str, Any]:
        heads = tree.get("heads")
        if isinstance(heads, dict):
            for key in ("options", "init"):
                heads[key] = {m: v for m, v in (heads.get(key) or {}).items() if m in methods}
        return tree
    return scope


def config_differences(run_dir: Path, cfg: FewShotConfig, methods: Sequence[str]) -> list[Difference]:
    """Keys (dotted, with both values) in which ``run_dir/config.yaml`` differs from ``cfg`` in what
    decides the results of ``methods``; empty when the directory has no config yet. The file's
    ``job:`` header (absent in earlier versions: then a few-shot run's) is compared too."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    scope = _scope(methods)
    data = yaml.safe_load(path.read_text()) or {}
    old = {"job": data.pop("job", "fewshot"), **config_identity(FewShotConfig, data, NEUTRAL_KEYS, scope)}
    return differences(old, {"job": "fewshot", **config_identity(FewShotConfig, cfg, NEUTRAL_KEYS, scope)})


def _refuse_seed(d: Path, diffs: Sequence[Difference]) -> ConfigError:
    return ConfigError(f"{d}: written with another configuration ({describe(diffs)}); give the study another "
                       "--out or remove that seed directory")


def check_out(cfg: FewShotConfig, out: str | Path) -> Path:
    """Refuse a study directory that holds another study, or record this one (rank 0 only):
    ``<out>/study_config.yaml`` (:func:`~actdistill.engine.study_dir.check_study_dir`). A directory
    of an earlier version has seed directories but no record: each one's ``config.yaml`` is
    checked before the record is written, so the first record cannot adopt another study's seeds."""
    out = Path(out)
    methods = list(cfg.heads.methods)

    def unrecorded() -> None:
        for d in sorted(out.glob("seed-*")):
            k = d.name.removeprefix("seed-")
            if k.isdigit() and (diffs := config_differences(d, seed_config(cfg, int(k), out), methods)):
                raise _refuse_seed(d, diffs)

    return check_study_dir(out, "fewshot", FewShotConfig, cfg, neutral=NEUTRAL_KEYS, scope=_scope(methods),
                           unrecorded=unrecorded)


def seed_complete(run_dir: Path, methods: Sequence[str], settings: Sequence[str], episodes: int) -> bool:
    """Whether ``run_dir`` holds results (``summary.json`` and ``episodes.json``) of every method in
    every setting over ``episodes`` test episodes."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        per_episode = json.loads((run_dir / "episodes.json").read_text())
    except (OSError, ValueError):
        return False
    return all(s in summary.get(m, {}) and len(per_episode.get(m, {}).get(s, [])) == episodes
               and summary[m][s].get("episodes") == episodes for m in methods for s in settings)


# ------------------------------------------------------------------------------------------ running
def run_seeds(cfg: FewShotConfig, seeds: int, out: str | Path) -> list[dict[str, Any]]:
    """Run (or reuse) ``<out>/seed-<k>`` for ``k < seeds``; one record per seed: ``seed``, ``dir``,
    ``run_seed``, ``train_seed``, ``reused``, ``seconds`` (of this call, 0 when reused).

    Under ``torchrun`` rank 0 decides and prepares each seed directory, every rank trains and
    evaluates, and rank 0 writes the results (as ``fewshot train`` does)."""
    from actdistill.engine.distributed import barrier, from_main, is_main
    from actdistill.engine.fewshot import ensure_data, run_fewshot
    from actdistill.rundir import lock_run_dir, release_run_dir, save_config

    out = Path(out)
    methods, settings = list(cfg.heads.methods), list(cfg.eval.settings)
    from_main(lambda: check_out(cfg, out), cfg.run.dist_timeout_min)  # rank 0 checks or records the study
    records: list[dict[str, Any]] = []
    for k in range(seeds):
        scfg = seed_config(cfg, k, out)
        d = seed_dir(out, k)

        def setup(scfg: FewShotConfig = scfg, d: Path = d) -> bool:  # rank 0: reuse, or prepare the directory
            diffs = config_differences(d, scfg, methods)
            if diffs:
                raise _refuse_seed(d, diffs)
            if seed_complete(d, methods, settings, scfg.eval.episodes):
                return True
            d.mkdir(parents=True, exist_ok=True)
            lock_run_dir(d)  # one writer: a second study on the same --out stops here with the holder's name
            try:
                ensure_data(scfg)
                save_config(d, scfg)
            except BaseException:
                release_run_dir(d)
                raise
            return False

        reused = from_main(setup, cfg.run.dist_timeout_min)
        record = {"seed": k, "dir": d.name, "run_seed": scfg.run.seed, "train_seed": scfg.train.seed,
                  "reused": bool(reused), "seconds": 0.0}
        if reused:
            if is_main():
                print(f"seed {k}: reused {d} (summary.json and episodes.json present)", flush=True)
        else:
            if is_main():
                state = "resuming" if (d / "checkpoints").is_dir() or (d / "models").is_dir() else "training"
                print(f"seed {k}: {state} in {d} (run.seed={scfg.run.seed}, train.seed={scfg.train.seed}, "
                      f"eval.seed={scfg.eval.seed})", flush=True)
            t0 = time.perf_counter()
            try:
                run_fewshot(scfg, d)
            finally:
                if is_main():
                    release_run_dir(d)
            record["seconds"] = round(time.perf_counter() - t0, 2)
        barrier()
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------ statistics
def _read_seed(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((run_dir / "summary.json").read_text()),
            json.loads((run_dir / "episodes.json").read_text()))


def method_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair once, A earlier in ``methods`` than B: the first method against each
    other one first, then the remaining pairs."""
    return [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]


def setting_positions(settings: Sequence[str]) -> tuple[list[float], str]:
    """x positions of the settings in the differences plot: their shot counts when those tell the
    settings apart, else their index."""
    shots = [float(parse_setting(s)[1]) for s in settings]
    if len(set(shots)) == len(shots):
        return shots, "shots per class (" + ", ".join(settings) + ")"
    return [float(i) for i in range(len(settings))], "setting (" + ", ".join(settings) + ")"


def summarize_study(seed_dirs: Sequence[Path], methods: Sequence[str], settings: Sequence[str],
                    resamples: int = 2000, bootstrap_seed: int = 0) -> dict[str, Any]:
    """``per_method`` and ``paired`` statistics of a study from its seed directories' ``summary.json``
    and ``episodes.json``.

    ``per_method[m][s]``: :func:`seed_interval` of the seeds' accuracies (each seed's own
    ``summary.json`` value) plus ``per_seed``. ``paired["A - B"][s]``: :func:`paired_bootstrap` of
    the ``[seeds, episodes]`` per-episode accuracies of A and B plus ``verdict``. Refuses seeds
    whose episode lists differ in length (not the same test episodes).
    """
    from actdistill.evaluation.study import paired_bootstrap, seed_interval, verdict

    runs = [_read_seed(Path(d)) for d in seed_dirs]
    per_method: dict[str, dict[str, Any]] = {}
    for m in methods:
        per_method[m] = {}
        for s in settings:
            accs = [float(summary[m][s]["acc"]) for summary, _ in runs]
            per_method[m][s] = {**seed_interval(accs), "per_seed": accs}
    grids: dict[tuple[str, str], np.ndarray] = {}
    for m in methods:
        for s in settings:
            lists = [per_episode[m][s] for _, per_episode in runs]
            if len({len(x) for x in lists}) != 1:
                raise ValueError(f"{m} {s}: the seeds scored {sorted({len(x) for x in lists})} episodes; a paired "
                                 "study needs the same test episodes in every seed")
            grids[m, s] = np.asarray(lists, dtype=float)  # [seeds, episodes]
    paired: dict[str, dict[str, Any]] = {}
    for a, b in method_pairs(methods):
        paired[f"{a} - {b}"] = {}
        for s in settings:
            diff = paired_bootstrap(grids[a, s], grids[b, s], resamples=resamples, seed=bootstrap_seed)
            paired[f"{a} - {b}"][s] = {**diff, "verdict": verdict(diff)}
    return {"per_method": per_method, "paired": paired}


# ------------------------------------------------------------------------------------------ report
def render_study(study: Mapping[str, Any]) -> str:
    """``study.md``: per setting a table of methods (mean [95% CI] over seeds), then the paired
    differences with their intervals and verdicts, and how the intervals are computed."""
    from actdistill.evaluation.report import markdown_table
    from actdistill.evaluation.study import format_interval

    seeds = study["seeds"]
    runs = study["runs"]
    per_method, paired = study["per_method"], study["paired"]
    lines = ["# Few-shot seed study", "",
             f"{len(seeds)} training seed{'s' if len(seeds) != 1 else ''} (run.seed "
             f"{', '.join(str(r['run_seed']) for r in runs)}; train.seed "
             f"{', '.join(str(r['train_seed']) for r in runs)}), the same data and the same "
             f"{study['episodes']} seeded test episodes per setting (eval.seed {study['eval_seed']}) for every "
             "method and seed. Accuracy (%) on the novel classes.", ""]
    for s in study["settings"]:
        lines += [f"## {s}", ""]
        rows = []
        for m in study["methods"]:
            st = per_method[m][s]
            sd = "" if st["sd"] != st["sd"] else f"{st['sd']:.2f}"
            rows.append([m, format_interval(st, 2), sd, ", ".join(f"{a:.2f}" for a in st["per_seed"])])
        lines += [markdown_table(["method", "mean [95% CI] over seeds", "sd", "per seed"], rows), ""]
    if paired:
        lines += ["## Paired differences (A − B, points)", ""]
        rows = [[pair, s, format_interval(d, 2), f"{d['p_a_better']:.3f}", d["verdict"]]
                for pair, by_setting in paired.items() for s, d in by_setting.items()]
        lines += [markdown_table(["A - B", "setting", "mean [95% CI]", "P(A better)", "verdict"], rows), ""]
    else:
        lines += ["One method: no paired differences.", ""]
    lines += [STUDY_NOTE.format(resamples=study["resamples"]), ""]
    return "\n".join(lines)


def _json_safe(tree: Any) -> Any:
    """NaN (an interval one seed cannot give) as ``null``: ``study.json`` stays strict JSON."""
    if isinstance(tree, Mapping):
        return {k: _json_safe(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_json_safe(v) for v in tree]
    if isinstance(tree, float) and tree != tree:
        return None
    return tree


def write_study(out: Path, study: dict[str, Any]) -> str:
    """Write ``study.json``, ``study.md`` and ``study_differences.png`` (when there is a pair) into
    ``out``; returns the Markdown."""
    from actdistill.evaluation.study import plot_paired_differences
    from actdistill.rundir import atomic_write_text, write_json

    write_json(out / "study.json", _json_safe(study))
    text = render_study(study)
    atomic_write_text(out / "study.md", text)
    if study["paired"]:
        xs, xlabel = setting_positions(study["settings"])
        series = {pair: [(x, by_setting[s]) for x, s in zip(xs, study["settings"])]
                  for pair, by_setting in study["paired"].items()}
        plot_paired_differences(out / "study_differences.png", series, xlabel,
                                title=f"Paired differences over {len(study['seeds'])} seed(s) (95% interval)")
    return text


def run_study(cfg: FewShotConfig, seeds: int, out: str | Path, resamples: int = 2000,
              command: str = "", experiment: str | None = None) -> dict[str, Any] | None:
    """Run or reuse every seed directory of the study, then write its statistics into ``out``.

    ``cfg`` is the study's config (``heads.methods`` already the methods to compare); returns the
    ``study.json`` content on rank 0 (``None`` on the other ranks)."""
    from actdistill.engine.distributed import is_main

    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if resamples < 1:
        raise ValueError(f"--resamples must be at least 1, got {resamples}")
    if cfg.eval.episodes < 1:
        raise ValueError(f"eval.episodes must be at least 1, got {cfg.eval.episodes}")
    if cfg.run.resume is not None:
        raise ValueError("run.resume is not used by a study: rerun the same study command (same --out) and each "
                         "seed directory <out>/seed-<k> is reused or resumed")
    for s in cfg.eval.settings:
        parse_setting(s)  # a bad setting fails now, not after training
    out = Path(out)
    runs = run_seeds(cfg, seeds, out)
    if not is_main():
        return None
    methods, settings = list(cfg.heads.methods), list(cfg.eval.settings)
    stats = summarize_study([out / r["dir"] for r in runs], methods, settings, resamples)
    study = {
        "command": command,
        "experiment": experiment,
        "config": to_dict(cfg),
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        "varied": ["run.seed", "train.seed"],
        "methods": methods,
        "settings": settings,
        "episodes": cfg.eval.episodes,
        "eval_seed": cfg.eval.seed,
        "resamples": resamples,
        **stats,
    }
    write_study(out, study)
    return study


def warn(msg: str) -> None:
    print(f"actdistill: warning: {msg}", file=sys.stderr, flush=True)


__all__ = [
    "NEUTRAL_KEYS",
    "check_out",
    "config_differences",
    "method_pairs",
    "render_study",
    "run_seeds",
    "run_study",
    "seed_complete",
    "seed_config",
    "seed_dir",
    "setting_positions",
    "summarize_study",
    "write_study",
]
