"""``actdistill fewshot``: the few-shot subcommands (demo, train, eval, study, plan).

Wired into the top-level parser by :func:`add_fewshot_parser`; heavy imports happen inside the
commands so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from actdistill.cli_deploy import positive_int

DEMO_EXPERIMENT = "fewshot/synthetic"  # the shipped config `fewshot demo` runs


def add_fewshot_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fewshot {demo,train,eval,study,plan}`` to the top-level subparsers ``sub``."""
    p = sub.add_parser("fewshot", help="few-shot action recognition: CLIP-M2DF and baselines",
                       description="Episodic few-shot action recognition: CLIP-M2DF (multi-view distillation) "
                       "and the baselines ProtoNet, OTAM, TRX, CLIP-FSAR on one backbone.")
    fsub = p.add_subparsers(dest="fewshot_cmd", required=True, metavar="COMMAND")

    s = fsub.add_parser("demo", help="train and evaluate every method on the synthetic few-shot dataset",
                        description="Generate the synthetic few-shot dataset (SSv2 layout + TRX splits) if absent, "
                        "train CLIP-M2DF and the baselines on the base classes, evaluate 5-way 1-shot and 5-shot on "
                        "the novel classes from a feature cache, print the table, write the run directory.")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.episodes=2000")
    s.set_defaults(func=cmd_fewshot_demo)

    s = fsub.add_parser("train", help="train and evaluate from an experiment YAML",
                        description="Episodic training of every configured method (resumable: run.resume=RUN_DIR; "
                        "DDP under torchrun), then evaluation and the report.")
    s.add_argument("experiment", nargs="?", help="experiment YAML (e.g. configs/fewshot/ssv2_small.yaml)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.episodes=320")
    s.set_defaults(func=cmd_fewshot_train)

    s = fsub.add_parser("eval", help="evaluate a trained run directory again (results in RUN_DIR/eval-<time>/)",
                        description="Rebuild the methods of RUN_DIR from its config.yaml and weights, evaluate them "
                        "over seeded test episodes from the feature cache and write summary.json, per_class.json, "
                        "report.md, accuracy.png and the config used into a new RUN_DIR/eval-<YYYYmmdd-HHMMSS>/ "
                        "folder; the training run's own summary and report are left as they are unless "
                        "--overwrite is given.")
    s.add_argument("run_dir", help="run directory written by 'fewshot train' or 'fewshot demo'")
    s.add_argument("--episodes", type=positive_int,
                   help="test episodes per setting, at least 1 (default: the run's eval.episodes)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace RUN_DIR's own summary.json and report.md instead of writing RUN_DIR/eval-<time>/")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.settings=[5way1shot]")
    s.set_defaults(func=cmd_fewshot_eval)

    s = fsub.add_parser(
        "study", help="run the methods over several training seeds and compare them episode by episode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A seed study: train and evaluate the chosen methods N times, seed k in the run directory "
        "OUT/seed-<k> with run.seed and train.seed offset by k (initialisation, training episodes, cached "
        "training views, dropout), while the data, the class-name text and eval.* stay fixed, so every method "
        "and every seed is scored on the same seeded test episodes.\n\n"
        "Reports, per method and setting, the mean accuracy over seeds with a Student-t 95% interval, and for "
        "every pair of methods (A listed before B) the paired difference A - B per test episode with a "
        "two-way bootstrap 95% interval over seeds and episodes, and a verdict (A ahead / B ahead / within "
        "noise). Writes OUT/study.json, OUT/study.md (printed at the end) and OUT/study_differences.png; each "
        "seed's run directory has the usual summary.json and episodes.json (per-episode accuracies).\n\n"
        "Resumable: rerun the same command. A seed directory that already holds summary.json and "
        "episodes.json is reused; one without them (a killed run) resumes from its step checkpoints; one "
        "written with another configuration is refused.",
        epilog="example: actdistill fewshot study configs/fewshot/synthetic.yaml --seeds 5 "
        "--methods clip_m2df,protonet")
    s.add_argument("experiment", help="experiment YAML (e.g. configs/fewshot/synthetic.yaml)")
    s.add_argument("--seeds", type=positive_int, required=True,
                   help="number of training seeds N, at least 1 (2 or more for an interval over seeds); "
                   "seed k = 0..N-1 offsets run.seed and train.seed by k")
    s.add_argument("--methods", help="comma-separated methods to compare, a subset of the config's heads.methods "
                   "in the order given (A - B pairs take A earlier); default: all of heads.methods")
    s.add_argument("--out", help="study directory (default: <run.out_dir>/study-<run.name>, from the config and "
                   "overrides; no timestamp, so rerunning the same command resumes the study)")
    s.add_argument("--resamples", type=positive_int, default=2000,
                   help="bootstrap resamples for the paired intervals (default: 2000)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.episodes=800 eval.episodes=500")
    s.set_defaults(func=cmd_fewshot_study)

    from actdistill.cli import add_plan_arguments  # the arguments shared with `karmma plan`

    s = fsub.add_parser("plan", help="estimate a run's cost from the config and split files (no decoding)",
                        description="Classes and videos per split (from the split files alone), bytes of the "
                        "feature caches, FLOPs per method for training and evaluation (counted on one clip and "
                        "one episode), and the estimated peak memory per process. Nothing is decoded or trained.")
    add_plan_arguments(s, "configs/fewshot/ssv2_small.yaml")
    s.set_defaults(func=cmd_fewshot_plan)


def _setup(experiment: str | Path | None, overrides: list[str], name: str) -> tuple[Any, Path]:
    from actdistill.config import build_config
    from actdistill.engine.distributed import from_main
    from actdistill.engine.fewshot import FewShotConfig, ensure_data
    from actdistill.rundir import open_run_dir, save_config

    if isinstance(experiment, str) and "=" in experiment and not os.path.exists(experiment):
        experiment, overrides = None, [experiment, *overrides]
    cfg = build_config(FewShotConfig, experiment, overrides, defaults=[f"run.name={name}"])

    def setup() -> Path:  # once, on rank 0 under torchrun
        # the run directory first: an unusable run.out_dir is reported before minutes of data generation
        run_dir = open_run_dir(cfg.run.out_dir, cfg.run.name, cfg.run.resume)
        ensure_data(cfg)
        save_config(run_dir, cfg)
        print(f"run directory: {run_dir}", flush=True)
        return run_dir

    return cfg, from_main(setup, cfg.run.dist_timeout_min)


def _finish(run_dir: Path, t0: float) -> int:
    from actdistill.engine.distributed import is_main

    if is_main():
        print((run_dir / "report.md").read_text())
        print(f"wall time {time.perf_counter() - t0:.1f}s; run directory {run_dir}")
    return 0


def cmd_fewshot_demo(args: argparse.Namespace) -> int:
    from actdistill.engine.fewshot import run_fewshot
    from actdistill.shipped import shipped_path

    t0 = time.perf_counter()
    cfg, run_dir = _setup(shipped_path(DEMO_EXPERIMENT), list(args.overrides), "fewshot-demo")
    run_fewshot(cfg, run_dir)
    return _finish(run_dir, t0)


def cmd_fewshot_train(args: argparse.Namespace) -> int:
    from actdistill.engine.fewshot import run_fewshot

    t0 = time.perf_counter()
    cfg, run_dir = _setup(args.experiment, list(args.overrides), "fewshot")
    run_fewshot(cfg, run_dir)
    return _finish(run_dir, t0)


def cmd_fewshot_eval(args: argparse.Namespace) -> int:
    from actdistill.engine.distributed import from_main
    from actdistill.engine.fewshot import load_run_config, run_fewshot
    from actdistill.rundir import create_run_dir, open_run_dir, save_config

    t0 = time.perf_counter()
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_run_config(run_dir, list(args.overrides))
    episodes = cfg.eval.episodes if args.episodes is None else args.episodes
    if episodes < 1:  # eval.episodes=0 given as an override
        raise ValueError(f"eval.episodes must be at least 1, got {episodes}")

    def setup() -> Path:  # once, on rank 0 under torchrun
        if args.overwrite:
            return open_run_dir(run_dir.parent, run_dir.name, resume=run_dir)
        out = create_run_dir(run_dir, "eval")
        save_config(out, cfg)  # what was evaluated: the run's config with this command's overrides
        print(f"evaluation directory: {out}", flush=True)
        return out

    out_dir = from_main(setup, cfg.run.dist_timeout_min)
    run_fewshot(cfg, run_dir, train=False, episodes=episodes, out_dir=out_dir)
    return _finish(out_dir, t0)


def _study_methods(text: str | None, configured: list[str]) -> list[str]:
    """``--methods`` (comma-separated, order kept, duplicates dropped) checked against ``heads.methods``."""
    if text is None:
        return list(dict.fromkeys(configured))
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not methods:
        raise ValueError("--methods names no method")
    unknown = [m for m in methods if m not in configured]
    if unknown:
        raise ValueError(f"--methods: {', '.join(unknown)} not in the config's heads.methods {configured} "
                         "(set heads.methods=[...] to add one)")
    return methods


def _study_command(args: argparse.Namespace) -> str:
    import shlex

    parts = ["actdistill", "fewshot", "study", args.experiment, "--seeds", str(args.seeds)]
    if args.methods is not None:
        parts += ["--methods", args.methods]
    if args.out is not None:
        parts += ["--out", args.out]
    parts += ["--resamples", str(args.resamples), *args.overrides]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_fewshot_study(args: argparse.Namespace) -> int:
    from actdistill.config import build_config
    from actdistill.engine.fewshot import FewShotConfig
    from actdistill.engine.fewshot_study import run_study, warn

    t0 = time.perf_counter()
    cfg = build_config(FewShotConfig, args.experiment, list(args.overrides), defaults=["run.name=fewshot"])
    cfg.heads.methods = _study_methods(args.methods, list(cfg.heads.methods))
    out = Path(args.out) if args.out else Path(cfg.run.out_dir) / f"study-{cfg.run.name}"
    first = os.environ.get("RANK", "0") == "0"  # under torchrun: warn once (no process group yet)
    if args.seeds < 2 and first:
        warn("--seeds 1: no interval over seeds can be given (paired intervals then resample test episodes "
             "only); use 2 or more seeds")
    if len(cfg.heads.methods) < 2 and first:
        warn("one method: no paired differences to report")
    study = run_study(cfg, args.seeds, out, args.resamples, command=_study_command(args),
                      experiment=str(args.experiment))
    if study is not None:
        print((out / "study.md").read_text())
        print(f"wall time {time.perf_counter() - t0:.1f}s; study directory {out}")
    return 0


def cmd_fewshot_plan(args: argparse.Namespace) -> int:
    import json

    from actdistill.config import build_config
    from actdistill.engine.fewshot import FewShotConfig
    from actdistill.plan import format_plan, plan_fewshot

    experiment, overrides = args.experiment, list(args.overrides)
    if experiment is not None and "=" in experiment and not os.path.exists(experiment):
        experiment, overrides = None, [experiment, *overrides]
    plan = plan_fewshot(build_config(FewShotConfig, experiment, overrides), args.check_media, args.tflops)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan), end="\n" if args.json else "")
    return 0
