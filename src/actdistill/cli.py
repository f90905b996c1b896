"""The ``actdistill`` command line: one entry point, subcommands per job.

Heavy imports (torch models, PyAV) happen inside the subcommands, so ``--help`` is instant.
Errors a user can fix (bad config key, unreadable file) print one clear line and exit 2
instead of a traceback; ``ACTDISTILL_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from actdistill.cli_deploy import add_bench_parser, add_deploy_parsers, positive_int
from actdistill.cli_fewshot import add_fewshot_parser
from actdistill.cli_list import add_list_parser

DEFAULT_SYNTH_ROOT = "data/synthetic"


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets and write the synthetic dataset",
                       description="Dataset tools: summary of an official layout, the synthetic generator.")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="COMMAND")

    s = dsub.add_parser("synth", help="write the synthetic multimodal dataset (EPIC-KITCHENS-100 layout)",
                        description="Write a synthetic dataset in the EPIC-KITCHENS-100 layout: RGB JPEG frames, "
                        "u/v flow frames (half rate for PXX_YY videos, 1:1 for PXX_1YY), an MP4 with AAC audio per "
                        "video, 16-bit depth PNGs and the official annotation CSVs. Deterministic for a seed.")
    s.add_argument("--out", default=DEFAULT_SYNTH_ROOT, help=f"output folder (default: {DEFAULT_SYNTH_ROOT})")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--size", default="small", choices=["tiny", "small", "medium"], help="dataset size")
    s.set_defaults(func=cmd_data_synth)

    s = dsub.add_parser("summary", help="count samples, classes and modalities; list problems",
                        description="Summarise a dataset in its official layout: samples per split, classes per "
                        "task, modalities found (and for how many samples), and every problem found (missing or "
                        "unreadable files, malformed rows), each naming the file. Never stops at a bad file.")
    s.add_argument("dataset", help="dataset name (see 'actdistill data list')")
    s.add_argument("--root", required=True, help="dataset root folder")
    s.add_argument("--annotations", help="annotation folder, if not inside the root")
    s.add_argument("--splits", help="comma-separated splits (default: all of the dataset's splits)")
    s.add_argument("--modalities", help="comma-separated modalities (default: the dataset's usual ones)")
    s.add_argument("--deep", action="store_true", help="also decode one frame of every source (slow)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter option, e.g. --option frames=tar (repeatable)")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_import(s)
    s.set_defaults(func=cmd_data_summary)

    s = dsub.add_parser("list", help="list the dataset adapters")
    _add_import(s)
    s.set_defaults(func=cmd_data_list)


def _add_import(p: argparse.ArgumentParser) -> None:
    """``--import MODULE``: a user's module (dotted name or .py file) that registers a dataset
    adapter or reader, imported (after the installed plugins) before the command runs."""
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module (dotted name, or a .py file) to import first, e.g. one that registers "
                   "a dataset adapter (repeatable; installed actdistill.plugins load anyway)")


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show a merged configuration",
                       description="Configuration tools.")
    csub = p.add_subparsers(dest="config_cmd", required=True, metavar="COMMAND")
    s = csub.add_parser("show", help="print the merged configuration a job would run with",
                        description="Print the configuration that a job would run with: its typed defaults, then "
                        "the experiment YAML, then KEY=VALUE overrides (dotted keys, e.g. data.root=/x), as YAML. "
                        "The job (karmma, fewshot, or data: the data and run sections only) is the YAML's top-level "
                        "`job:` key, or --job, or else inferred from the sections the YAML and overrides set "
                        "(teacher/student/rows: karmma; backbone/heads/text/train.way: fewshot). The output starts "
                        "with `job:`; saved as a file it builds the same configuration.",
                        epilog="CONFIG is a YAML file of yours, or a shipped config: karmma/synthetic (also "
                        "configs/karmma/synthetic.yaml, which works in any directory). An unknown name lists the "
                        "shipped ones.")
    s.add_argument("experiment", nargs="?", metavar="CONFIG",
                   help="experiment YAML or shipped config name (e.g. karmma/synthetic)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.sampling.num_frames=16")
    s.add_argument("--job", choices=("karmma", "fewshot", "data"),
                   help="the job to build the configuration for (default: the YAML's job: key, else inferred)")
    s.add_argument("--diff", action="store_true",
                   help="print only the values that differ from the job's defaults, as nested YAML (a mapping or "
                   "list that differs is printed whole, since a YAML one replaces the default whole)")
    s.set_defaults(func=cmd_config)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the built-in synthetic dataset",
                       description="The main job on the synthetic default dataset (generated if absent).")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. student.optim.epochs=5")
    p.add_argument("--experiment", help="experiment YAML to start from")
    p.set_defaults(func=cmd_demo)


def _add_karmma(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("karmma", help="robust multimodal distillation: train and evaluate",
                       description="KARMMA: frozen-extractor teacher distilled into an any-subset student.")
    ksub = p.add_subparsers(dest="karmma_cmd", required=True, metavar="COMMAND")
    s = ksub.add_parser("train", help="run the whole pipeline (fit, cache, teacher, rows, evaluation)",
                        description="Unimodal fit (where no pretrained extractor exists), teacher token cache, "
                        "teacher, the configured rows (baseline, baseline_delta, student, mmt, late_fusion), "
                        "evaluation on every modality subset and the drop-rate curve, efficiency. Resume a killed "
                        "run with run.resume=RUN_DIR. Launch under torchrun for DDP.")
    s.add_argument("experiment", nargs="?", help="experiment YAML (e.g. configs/karmma/synthetic.yaml)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. student.alpha=0.7")
    s.set_defaults(func=cmd_karmma_train)

    s = ksub.add_parser("plan", help="estimate a run's cost from the config and annotations (no decoding)",
                        description="Samples per split (from the annotations alone where the adapter can), bytes "
                        "of every on-disk cache, FLOPs per stage and epoch (counted on one sample), and the "
                        "estimated peak memory per process. Nothing is decoded, trained or written.")
    add_plan_arguments(s, "configs/karmma/epic_kitchens_100.yaml")
    s.set_defaults(func=cmd_karmma_plan)

    s = ksub.add_parser("submit", help="write a split's predictions in the benchmark's official format",
                        description="Run a trained row of RUN over a split (the run's data, sampling and test "
                        "views; logits averaged over the views) and write the official file: the EPIC-KITCHENS-100 "
                        "action recognition challenge JSON (datasets epic_kitchens_100 and synthetic; a .zip OUT "
                        "holds test.json, as the server takes it) or the Something-Something v2 predictions file "
                        "(`id;label1;...;label5`). On a labelled split the written file is scored and the official "
                        "metrics printed. See docs/karmma.md, 'Official formats'.")
    s.add_argument("run", help="run directory (actdistill karmma train / demo)")
    s.add_argument("--split", default="test", help="split to predict (default: test)")
    s.add_argument("--out", required=True, help="output file (.json or .zip for EPIC, .csv for SSv2)")
    s.add_argument("--row", default="student", help="row to run (default: student)")
    s.add_argument("--modalities", help="comma-separated modalities the row may use (default: all of the run's)")
    for key, default, what in (("pt", 2, "pretraining"), ("tl", 3, "training labels"), ("td", 4, "training data")):
        s.add_argument(f"--sls-{key}", type=int, default=default, choices=range(6), metavar="0..5",
                       help=f"EPIC Supervision Levels Scale, {what} (default: {default}, as the official script)")
    s.set_defaults(func=cmd_karmma_submit)

    s = ksub.add_parser("study", help="run rows over several seeds; per-row intervals and paired differences",
                        description="Train the configured rows once per seed (run.seed + 0..N-1; data, test clips "
                        "and drop draws fixed), each seed an ordinary run directory OUT/seed-<k> (a finished one "
                        "is reused, an unfinished one resumed: rerun the same command after a kill). Writes "
                        "OUT/study.json, study.md and study_differences.png: per row the mean and Student-t 95%% "
                        "interval over seeds, and per pair of rows the paired difference per test clip with a "
                        "two-way bootstrap 95%% interval over clips and seeds, for all modalities, each single "
                        "modality, p = 0.9 and the drop-curve AUC. See docs/karmma.md, 'Seed studies'.")
    s.add_argument("experiment", nargs="?", help="experiment YAML (e.g. configs/karmma/synthetic.yaml)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. student.alpha=0.7")
    s.add_argument("--seeds", type=positive_int, default=5, help="training seeds (default: 5)")
    s.add_argument("--rows", help="comma-separated rows to train and compare (default: the config's rows); "
                   "the first is A in every difference it takes part in")
    s.add_argument("--teacher", choices=("per-seed", "shared"), default="per-seed",
                   help="train the teacher once per seed (default: the rows' spread includes the teacher's) or "
                        "once for the study (seed 0's, reused: cheaper, isolates the rows' own noise)")
    s.add_argument("--out", help="study directory (default: <run.out_dir>/study-<run.name>, no timestamp); "
                   "rerunning into it resumes, another config there is refused")
    s.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples (default: 2000)")
    s.add_argument("--efficiency", action="store_true",
                   help="also profile every seed's rows (eval.efficiency; off by default: the cost table does "
                        "not change with the seed and its timing takes minutes per seed)")
    s.set_defaults(func=cmd_karmma_study)

    p = sub.add_parser("extract", help="decode clips and cache the frozen teacher's tokens (one shard of them)",
                       description="The KARMMA caching stages on their own: decode the fixed views of the train "
                       "and test splits and run the teacher's frozen extractors over them, writing both caches "
                       "under cache.root. With --shard i/N only the i-th of N interleaved shares is done, so N "
                       "independent jobs (a SLURM array) fill the caches together; `karmma train` then reuses "
                       "them. Extractors that need a unimodal fit must be fitted first (`actdistill unimodal "
                       "fit`, after every shard decoded its clips): until then only the clips are extracted.")
    p.add_argument("experiment", nargs="?", help="experiment YAML (e.g. configs/karmma/epic_kitchens_100.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. cache.root=/scratch/cache")
    p.add_argument("--shard", default=None, metavar="i/N", help="do share i of N (0-based), e.g. "
                   "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; default: all of it (or this rank's "
                   "share under torchrun)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("unimodal", help="fit unimodal extractors (teacher, and student init)",
                       description="Train the teacher's unimodal extractors that have no pretrained weights, and "
                                   "the student encoders listed in student.init_unimodal.")
    usub = p.add_subparsers(dest="unimodal_cmd", required=True, metavar="COMMAND")
    s = usub.add_parser("fit", help="fit the encoders of teacher.fit_unimodal and student.init_unimodal "
                                    "(cached by config)")
    s.add_argument("experiment", nargs="?", help="experiment YAML")
    s.add_argument("overrides", nargs="*", help="dotted overrides")
    s.set_defaults(func=cmd_unimodal_fit)


def build_parser() -> argparse.ArgumentParser:
    from actdistill import __version__

    parser = argparse.ArgumentParser(
        prog="actdistill",
        description="Action recognition by knowledge distillation: robust multimodal distillation (KARMMA) "
        "and few-shot multi-view distillation (CLIP-M2DF). Runs small on a CPU with the built-in synthetic "
        "dataset; reads EPIC-KITCHENS-100, Something-Something v2, Kinetics, UCF101, HMDB51 in their "
        "official layouts.",
    )
    parser.add_argument("--version", action="version", version=f"actdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data(sub)
    _add_config(sub)
    _add_karmma(sub)
    _add_demo(sub)
    add_fewshot_parser(sub)
    add_list_parser(sub)
    add_deploy_parsers(sub)
    add_bench_parser(sub)
    return parser


def _parse_options(items: Sequence[str]) -> dict[str, object]:
    from actdistill.config import parse_override

    out: dict[str, object] = {}
    for item in items:
        path, value = parse_override(item)
        out[".".join(path)] = value
    return out


def cmd_data_synth(args: argparse.Namespace) -> int:
    from actdistill.data.datasets.synthetic import write_synthetic_epic

    meta = write_synthetic_epic(args.out, seed=args.seed, size=args.size, progress=True)
    print(json.dumps({"out": str(args.out), **{k: meta[k] for k in ("seed", "size", "counts") if k in meta}}, indent=2))
    return 0


def cmd_data_summary(args: argparse.Namespace) -> int:
    from actdistill.cli_list import load_user_modules
    from actdistill.data.summary import format_summary, summarize

    load_user_modules(None, args.imports)
    splits = [s for s in args.splits.split(",") if s] if args.splits else None
    mods = [m for m in args.modalities.split(",") if m] if args.modalities else None
    options = _parse_options(args.option)
    if args.dataset == "synthetic":
        options.setdefault("generate", False)
    summary = summarize(args.dataset, args.root, args.annotations, splits, mods, args.deep, options)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from actdistill.cli_list import load_user_modules
    from actdistill.data.datasets import DATASETS, get_dataset

    load_user_modules(None, args.imports)
    for name in DATASETS.names():
        spec = get_dataset(name)
        print(f"{name:<20} splits: {','.join(spec.splits):<45} {spec.description}")
    return 0


def _split_experiment(experiment: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """Let ``KEY=VALUE`` stand in the experiment slot: ``actdistill config show data.root=/x``."""
    if experiment is not None and "=" in experiment and not os.path.exists(experiment):
        return None, [experiment, *overrides]
    return experiment, list(overrides)


def cmd_config(args: argparse.Namespace) -> int:
    from actdistill.shipped import show_config

    experiment, overrides = _split_experiment(args.experiment, args.overrides)
    print(show_config(experiment, overrides, args.job, args.diff), end="")
    return 0


def _karmma_setup(args: argparse.Namespace, name: str):
    from actdistill.config import build_config
    from actdistill.engine.karmma import KarmmaConfig, prepare_run

    experiment, overrides = _split_experiment(args.experiment, args.overrides)
    cfg = build_config(KarmmaConfig, experiment, overrides, defaults=[f"run.name={name}"])
    run_dir = prepare_run(cfg)
    return cfg, run_dir


def cmd_karmma_train(args: argparse.Namespace) -> int:
    from actdistill.engine.distributed import is_main
    from actdistill.engine.karmma import run_karmma

    cfg, run_dir = _karmma_setup(args, "karmma")
    run_karmma(cfg, run_dir)
    if is_main():  # rank 0 wrote the report
        print((run_dir / "report.md").read_text())
    return 0


def cmd_karmma_study(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from actdistill.config import build_config
    from actdistill.engine.distributed import is_main
    from actdistill.engine.karmma import KarmmaConfig
    from actdistill.engine.karmma_study import render_study, run_study

    experiment, overrides = _split_experiment(args.experiment, args.overrides)
    extra = [f"rows=[{args.rows}]"] if args.rows else []
    if not args.efficiency:
        extra.append("eval.efficiency=false")
    cfg = build_config(KarmmaConfig, experiment, [*overrides, *extra], defaults=["run.name=karmma"])
    out = Path(args.out) if args.out else Path(cfg.run.out_dir) / f"study-{cfg.run.name}"
    if args.seeds < 2 and is_main():
        print("warning: one seed gives no interval over seeds; use --seeds 3 or more", file=sys.stderr)
    command = "actdistill " + shlex.join(sys.argv[1:])
    study = run_study(cfg, args.seeds, out, args.teacher, args.resamples, command)
    if is_main():
        print(render_study(study), end="")
        print(f"study written to {out}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from actdistill.config import build_config
    from actdistill.engine.clips import Shard
    from actdistill.engine.karmma import KarmmaConfig, extract

    experiment, overrides = _split_experiment(args.experiment, args.overrides)
    cfg = build_config(KarmmaConfig, experiment, overrides)
    shard = Shard.parse(args.shard) if args.shard else None
    report = extract(cfg, shard)
    for line in report:
        print(line)
    return 0


def add_plan_arguments(s: argparse.ArgumentParser, example: str) -> None:
    """The arguments ``karmma plan`` and ``fewshot plan`` share."""
    s.add_argument("experiment", nargs="?", help=f"experiment YAML (e.g. {example})")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.annotations=/x")
    s.add_argument("--json", action="store_true", help="print the plan as JSON")
    s.add_argument("--check-media", action="store_true",
                   help="index with the adapter's media checks (count only samples whose files exist)")
    s.add_argument("--tflops", type=float, metavar="T",
                   help="add a wall-clock hint at an assumed sustained T TFLOP/s")


def cmd_karmma_plan(args: argparse.Namespace) -> int:
    from actdistill.config import build_config
    from actdistill.engine.karmma import KarmmaConfig
    from actdistill.plan import format_plan, plan_karmma

    experiment, overrides = _split_experiment(args.experiment, args.overrides)
    plan = plan_karmma(build_config(KarmmaConfig, experiment, overrides), args.check_media, args.tflops)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan), end="\n" if args.json else "")
    return 0


EPIC_LAYOUT = ("epic_kitchens_100", "synthetic")  # datasets whose results go in the EPIC challenge JSON


def split_logits(rec: Any, split: str, modalities: Sequence[str] | None) -> tuple[Any, list[str], dict[str, Any]]:
    """The index of ``split`` and the logits of ``rec``'s row on its decodable samples (their uids,
    in order), averaged over the test views.

    Why this path and not ``Recognizer.predict`` per video: a submission must be computed as the
    reported numbers were, from the same index, clip cache, loader and test views as the KARMMA
    evaluation, with the presence mask restricted to ``modalities`` as its subset protocol does."""
    import dataclasses

    import torch

    from actdistill.data.builder import load_index
    from actdistill.engine.clips import eval_loader, load_clips

    want = list(rec.modalities if modalities is None else modalities)
    unknown = [m for m in want if m not in rec.modalities]
    if unknown or not want:
        raise ValueError(f"--modalities must name some of the run's modalities {list(rec.modalities)}, got {want}")
    mask = torch.tensor([m in want for m in rec.modalities])
    cfg = rec.cfg
    data = dataclasses.replace(cfg.data, test_split=split)
    index = load_index(data, split)
    c = cfg.cache
    clips = load_clips(data, split, False, data.sampling.test_views, c.root, index, progress=False,
                       in_memory_mb=c.in_memory_mb, chunk=c.chunk, mode=c.clips, max_disk_gb=c.clips_max_gb)
    uids: list[str] = []
    parts: list[dict[str, torch.Tensor]] = []
    rec.model.eval()
    with torch.no_grad():
        for b in eval_loader(clips, cfg.eval.batch_size, data.num_workers):
            present = b["present"] & mask
            if not bool(present.any(1).all()):
                raise ValueError(f"some samples of {split!r} have none of {want} (first: "
                                 f"{b['uid'][int((~present.any(1)).nonzero()[0])]}); a submission needs every sample")
            outs = [rec.model({m: x.to(rec.device) for m, x in view.items()}, present.to(rec.device))["logits"]
                    for view in b["views"]]
            parts.append({t: torch.stack([o[t] for o in outs]).mean(0).cpu() for t in outs[0]})
            uids.extend(b["uid"])
    if clips.skipped:
        print(f"actdistill: warning: {clips.skipped} samples of {split!r} could not be decoded and are not in the "
              f"file (first: {clips.skipped_uids[:1]}); the server expects every sample", file=sys.stderr)
    return index, uids, {t: torch.cat([p[t] for p in parts]) for t in parts[0]}


def cmd_karmma_submit(args: argparse.Namespace) -> int:
    from actdistill.deploy.recognizer import Recognizer
    from actdistill.evaluation import official

    rec = Recognizer.from_run(args.run, row=args.row)
    dataset = rec.cfg.data.dataset
    if dataset not in (*EPIC_LAYOUT, "ssv2"):
        raise ValueError(f"no official submission format for dataset {dataset!r} (known: {(*EPIC_LAYOUT, 'ssv2')})")
    mods = [m for m in args.modalities.split(",") if m] if args.modalities else None
    index, uids, logits = split_logits(rec, args.split, mods)
    segments = {s.uid: s for s in index.segments}
    done = [segments[u] for u in uids]
    report: dict[str, Any] = {"out": args.out, "dataset": dataset, "split": args.split, "row": args.row,
                              "samples": len(uids)}
    if dataset in EPIC_LAYOUT:
        if not {"verb", "noun"} <= set(logits):
            raise ValueError(f"the {args.row} row predicts {sorted(logits)}, the EPIC challenge needs verb and noun")
        sub = official.epic_submission(uids, logits["verb"], logits["noun"], args.sls_pt, args.sls_tl, args.sls_td)
        path = official.write_epic_submission(args.out, sub)
        if all(s.labels.get("verb", -1) >= 0 and s.labels.get("noun", -1) >= 0 for s in done):
            report["metrics"] = official.score_epic_submission(path, official.EpicGroundTruth.from_segments(done))
    else:
        import torch

        path = official.write_ssv2_predictions(args.out, uids, logits["class"], rec.classes["class"])
        labels = torch.tensor([s.labels.get("class", -1) for s in done])
        if bool((labels >= 0).all()):
            report["metrics"] = official.score_ssv2_predictions(path, uids, labels, rec.classes["class"])
    print(json.dumps(report, indent=2))
    return 0


def cmd_unimodal_fit(args: argparse.Namespace) -> int:
    from actdistill.engine.karmma import KarmmaPipeline

    cfg, run_dir = _karmma_setup(args, "unimodal")
    pipe = KarmmaPipeline(cfg, run_dir)
    pipe.load_data()
    from actdistill.data.modalities.base import selects

    for m in pipe.modalities:  # a kind in fit_unimodal (imu) covers its named modalities (imu:acc)
        if selects(cfg.teacher.fit_unimodal, m):
            print(f"{m}: {pipe.fit_unimodal(m)}")
    for m, path in pipe.unimodal_init().items():  # student.init_unimodal (often the same fits)
        print(f"student {m}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from actdistill.demo import run_demo

    return run_demo(args.experiment, args.overrides)


def path_error(err: OSError) -> str | None:
    """``<path>: <problem>`` for an OS error about a path the user chose (a directory that is a file,
    a read-only or full disk), or None for any other OS error, which stays a traceback.

    Why at this level: every job writes run, cache and output directories through many helpers; one
    translation here gives each of them the same one-line error naming the path."""
    import errno

    user_fixable = {errno.EACCES: "permission denied (not writable by you)", errno.EPERM: "operation not permitted",
                    errno.EEXIST: "exists and is not a directory", errno.ENOTDIR: "a part of this path is a file, "
                    "not a directory", errno.EISDIR: "is a directory, expected a file",
                    errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
                    errno.EDQUOT: "disk quota exceeded"}
    if err.errno not in user_fixable or not err.filename:
        return None
    path = str(err.filename)
    name = os.path.basename(path)
    if name.startswith(".") and name.endswith(".tmp"):  # an atomic write's temporary file: name its folder
        path = os.path.dirname(path) or "."
    problem = user_fixable[err.errno]
    if err.errno == errno.EEXIST and os.path.isdir(path):
        problem = "already exists"
    return f"{path}: {problem}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides after an option (`fewshot eval RUN --episodes 9 a.b=1`) are still overrides
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    from actdistill.allocator import tune_allocator
    from actdistill.config import ConfigError
    from actdistill.data.records import DataError

    tune_allocator()
    from actdistill.plugins import load_plugins

    load_plugins()  # installed plugins (entry points) register before any command runs
    try:
        return func(args)
    except (ConfigError, DataError, FileNotFoundError, KeyError, ValueError) as err:
        if os.environ.get("ACTDISTILL_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"actdistill: error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:  # an output, run or cache directory the user can fix; other OS errors stay tracebacks
        msg = path_error(err)
        if msg is None or os.environ.get("ACTDISTILL_DEBUG"):
            raise
        print(f"actdistill: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("actdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
