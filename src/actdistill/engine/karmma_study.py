"""``actdistill karmma study``: KARMMA rows over several training seeds, compared clip by clip.

One number from one seed says little on a 200-clip test set: rows move by several points with the
seed alone. A study trains the chosen rows once per seed (``run.seed`` = base + k; the data, the
test clips and the evaluation's drop draws stay fixed) and reports

* per row and metric: the mean over seeds with a Student-t 95% interval
  (:func:`~actdistill.evaluation.study.seed_interval`);
* per pair of rows: the paired difference per test clip (same clips, same drop draws) with a
  two-way bootstrap 95% interval over clips and seeds
  (:func:`~actdistill.evaluation.study.paired_bootstrap`).

Metrics: all modalities, each single modality, the drop curve at p = 0.9 and the drop-curve AUC.
Each seed is an ordinary run directory ``<out>/seed-<k>`` (resumable like any run; a finished one
is reused), so killing a study and rerunning the command loses at most the seed in progress.
``<out>/study_config.yaml`` records the study (config and ``--teacher``); a rerun with another
configuration into the same ``--out`` is refused, one that changes only a neutral key
(:data:`NEUTRAL_KEYS`: where files are, display, speed) is not (:mod:`actdistill.engine.study_dir`).

The teacher is trained once per seed (``per-seed``: the rows' spread then includes the teacher's)
or once for the study (``shared``: seed 0's teacher, its extractors' fits and token cache are reused
through ``teacher.seed`` / ``teacher.weights``; cheaper, and it isolates the rows' own noise).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from actdistill.config import ConfigError
from actdistill.engine.karmma import KarmmaConfig, prepare_run, read_per_clip, run_karmma
from actdistill.engine.study_dir import RUN_NEUTRAL, check_study_dir
from actdistill.evaluation.protocols import subset_name
from actdistill.evaluation.study import (
    format_interval,
    paired_bootstrap,
    plot_paired_differences,
    seed_interval,
    verdict,
)
from actdistill.rundir import atomic_write_text, write_json

TEACHER_MODES = ("per-seed", "shared")
#: Config keys a study's reruns may change (see :mod:`actdistill.engine.study_dir`): besides the
#: run's own, where the caches are and when they are held in memory, the logging cadence, and the
#: efficiency timings (measured after every score, on rank 0; the study reports none of them).
#: Not neutral: ``cache.chunk`` (a key of the token cache: numerics may depend on the batch) and
#: ``cache.clips`` (kept conservative), ``train.checkpoint_every`` (it switches the trainer to
#: step-based checkpoints), ``eval.batch_size``.
NEUTRAL_KEYS = (*RUN_NEUTRAL, "cache.root", "cache.in_memory_mb", "train.log_every", "eval.efficiency",
                "eval.latency_batch", "eval.throughput_batch", "eval.warmup", "eval.repeats", "eval.latency_repeats")
HIGH_P = 0.9  # the drop rate the study reports on its own (nearest rate in eval.drop_rates)


def seed_dir(out: Path, k: int) -> Path:
    return out / f"seed-{k}"


def is_done(path: Path) -> bool:
    """A seed's run finished: its summary and per-clip scores are written (the last files a run writes
    before the report)."""
    return (path / "summary.json").is_file() and (path / "per_clip.safetensors").is_file()


def seed_config(cfg: KarmmaConfig, out: Path, k: int, teacher: str) -> KarmmaConfig:
    """Seed ``k``'s config: run.seed offset by k, its run directory ``<out>/seed-<k>`` (resumed if
    present), and with a shared teacher, seed 0's teacher seed and weights."""
    c = copy.deepcopy(cfg)
    base = cfg.run.seed
    c.run.seed = base + k
    c.run.out_dir = str(out)
    c.run.name = f"seed-{k}"
    path = seed_dir(out, k)
    path.mkdir(parents=True, exist_ok=True)
    c.run.resume = str(path)
    if teacher == "shared":
        c.teacher.seed = base if cfg.teacher.seed is None else cfg.teacher.seed
        if k > 0 and not cfg.teacher.weights:
            c.teacher.weights = str(seed_dir(out, 0) / "teacher.safetensors")
    return c


def check_out(cfg: KarmmaConfig, out: str | Path, teacher: str = "per-seed") -> Path:
    """``<out>/study_config.yaml`` records what the study runs (the config and ``--teacher``); rerunning
    with another config into the same directory would mix seeds of two experiments, so it is refused
    (:func:`~actdistill.engine.study_dir.check_study_dir`, which also reads the record of earlier
    versions). Rank 0 only; returns the record's path."""
    return check_study_dir(out, "karmma", KarmmaConfig, cfg, neutral=NEUTRAL_KEYS, study={"teacher": teacher})


def run_study(cfg: KarmmaConfig, seeds: int, out: str | Path, teacher: str = "per-seed",
              resamples: int = 2000, command: str = "") -> dict[str, Any]:
    """Run (or reuse) every seed's run directory, then :func:`summarize` them into ``out``."""
    from actdistill.engine.distributed import from_main, is_main
    from actdistill.engine.karmma import validate

    if teacher not in TEACHER_MODES:
        raise ConfigError(f"--teacher must be one of {', '.join(TEACHER_MODES)}, got {teacher!r}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    validate(cfg)
    out = Path(out)
    from_main(lambda: check_out(cfg, out, teacher), cfg.run.dist_timeout_min)  # rank 0; a refusal stops every rank
    for k in range(seeds):
        path = seed_dir(out, k)
        if is_done(path):
            print(f"seed {k}: reusing {path}", flush=True)
            continue
        print(f"seed {k} of {seeds} (run.seed={cfg.run.seed + k}): {path}", flush=True)
        c = seed_config(cfg, out, k, teacher)
        run_dir = prepare_run(c)
        run_karmma(c, run_dir)
    if not is_main():
        return {}
    study = summarize([seed_dir(out, k) for k in range(seeds)], resamples)
    study.update({"teacher": teacher, "command": command, "base_seed": cfg.run.seed})
    write_study(out, study)
    return study


def _metric_names(modalities: Sequence[str]) -> list[str]:
    return ["all", *modalities, f"p={HIGH_P}", "auc"]


def clip_scores(tensors: dict[str, Any], row: str, modalities: Sequence[str],
                rates: Sequence[float]) -> dict[str, np.ndarray]:
    """One row's per-clip scores for every study metric (NaN: not scored)."""
    sub = f"{row}/subset/"
    out = {"all": tensors[sub + subset_name(modalities)].numpy()}
    for m in modalities:
        out[m] = tensors[sub + m].numpy()
    drop = tensors[f"{row}/drop"].numpy()  # [P, N]
    r = np.asarray(rates, dtype=float)
    out[f"p={HIGH_P}"] = drop[int(np.argmin(np.abs(r - HIGH_P)))]
    span = r[-1] - r[0]
    out["auc"] = np.trapezoid(drop, r, axis=0) / span if len(r) > 1 and span > 0 else drop.mean(0)
    for i, p in enumerate(rates):
        out[f"drop@{p}"] = drop[i]
    return out


def summarize(dirs: Sequence[Path], resamples: int = 2000) -> dict[str, Any]:
    """study.json's content from finished seed run directories (same rows, clips and drop rates)."""
    per_seed: list[dict[str, dict[str, np.ndarray]]] = []
    meta0: dict[str, Any] | None = None
    seeds: list[int] = []
    for d in dirs:
        tensors, meta = read_per_clip(d / "per_clip.safetensors")
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        modalities = list(cfg["data"]["modalities"])
        if meta0 is None:
            meta0 = {**meta, "modalities": modalities, "test_split": cfg["data"]["test_split"],
                     "dataset": cfg["data"]["dataset"]}
        elif meta["uids"] != meta0["uids"] or meta["rows"] != meta0["rows"] or \
                meta["drop_rates"] != meta0["drop_rates"]:
            raise ConfigError(f"{d}: was evaluated on other clips, rows or drop rates than {dirs[0]}")
        seeds.append(int(cfg["run"]["seed"]))
        per_seed.append({row: clip_scores(tensors, row, modalities, meta["drop_rates"]) for row in meta["rows"]})
    assert meta0 is not None
    rows, modalities, rates = meta0["rows"], meta0["modalities"], meta0["drop_rates"]
    metrics = _metric_names(modalities)
    per_row: dict[str, Any] = {}
    for row in rows:
        per_row[row] = {}
        for name in [*metrics, *(f"drop@{p}" for p in rates)]:
            values = [float(np.nanmean(s[row][name])) for s in per_seed]
            per_row[row][name] = {**seed_interval(values), "per_seed": values}
    compared = [r for r in rows if r != "teacher"]
    paired: dict[str, Any] = {}
    for i, a in enumerate(compared):
        for b in compared[i + 1:]:
            entry: dict[str, Any] = {}
            for name in [*metrics, *(f"drop@{p}" for p in rates)]:
                sa = np.stack([s[a][name] for s in per_seed])
                sb = np.stack([s[b][name] for s in per_seed])
                diff = paired_bootstrap(sa, sb, resamples=resamples, seed=0)
                entry[name] = {**diff, "verdict": verdict(diff)}
            paired[f"{a} - {b}"] = entry
    return {"seeds": seeds, "seed_dirs": [str(d) for d in dirs], "rows": rows, "modalities": modalities,
            "metrics": metrics, "drop_rates": rates, "test_split": meta0["test_split"], "dataset": meta0["dataset"],
            "clips": len(meta0["uids"]), "resamples": resamples, "per_row": per_row, "paired": paired}


def render_study(study: dict[str, Any]) -> str:
    """study.md: the per-row table over seeds and the paired differences."""
    from actdistill.evaluation.report import markdown_table

    metrics = study["metrics"]
    n = len(study["seeds"])
    lines = ["# KARMMA seed study", "",
             f"{n} seeds (run.seed {', '.join(map(str, study['seeds']))}), teacher {study.get('teacher', '?')}; "
             f"every number is action top-1 (%) on split `{study['test_split']}` of {study['dataset']} "
             f"({study['clips']} clips), the same clips and drop draws for every row and seed.", ""]
    if study.get("command"):
        lines += [f"Command: `{study['command']}`", ""]
    lines += [f"## Per row: mean [95% interval] over {n} seeds (Student t)", ""]
    lines.append(markdown_table(["row", *metrics],
                                [[row, *[format_interval(study["per_row"][row][m]) for m in metrics]]
                                 for row in study["rows"]]))
    if study["paired"]:
        lines += ["", "## Paired differences A - B: mean [95% interval], two-way bootstrap over clips and seeds",
                  "", f"({study['resamples']} resamples; \"within noise\": the interval includes 0. The bootstrap "
                  "is conservative for crossed seed x clip designs.)", ""]
        table = []
        for pair, entry in study["paired"].items():
            for m in metrics:
                d = entry[m]
                table.append([pair, m, format_interval(d), f"{d['p_a_better']:.2f}", d["verdict"]])
        lines.append(markdown_table(["A - B", "metric", "difference", "P(A > B)", "verdict"], table))
    if n < 2:
        lines += ["", "One seed: no interval over seeds can be given; the differences' intervals count clips only."]
    return "\n".join(lines) + "\n"


def write_study(out: Path, study: dict[str, Any]) -> None:
    write_json(out / "study.json", study)
    atomic_write_text(out / "study.md", render_study(study))
    series = {pair: [(p, entry[f"drop@{p}"]) for p in study["drop_rates"]] for pair, entry in study["paired"].items()}
    if series:
        plot_paired_differences(out / "study_differences.png", series, "modality drop rate p",
                                "action top-1 difference (points)",
                                f"paired differences, {len(study['seeds'])} seeds x {study['clips']} clips")
