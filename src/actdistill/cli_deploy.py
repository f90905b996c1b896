"""``actdistill export onnx`` and ``actdistill predict``: deploying a trained student.

Wired into the top-level parser by :func:`add_deploy_parsers`; heavy imports happen inside the
commands so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys


def positive_int(text: str) -> int:
    """An argparse type for counts (``--top-k``, ``--episodes``): 0 or less is a usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_deploy_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained student (ONNX)",
                       description="Export a trained model of a run directory for deployment.")
    esub = p.add_subparsers(dest="export_cmd", required=True, metavar="FORMAT")
    s = esub.add_parser("onnx", help="one ONNX graph with a presence-mask input, validated on every subset",
                        description="Export the student of RUN_DIR to ONNX with the modality presence mask as an "
                        "input (one graph serves every modality subset), check ONNX Runtime against PyTorch on "
                        "every subset, and write labels.json, export.json and MODEL_CARD.md beside it.")
    s.add_argument("run_dir", help="run directory written by 'actdistill demo' or 'actdistill karmma train'")
    s.add_argument("--out", help="output folder (default: RUN_DIR/onnx); must be a folder you can write")
    s.add_argument("--row", default="student", help="which trained row to export (default: student)")
    s.add_argument("--opset", type=int, default=17,
                   help="ONNX opset (default: 17); checked before exporting against the opsets the installed "
                        "torch's exporter writes (7 to 20 for torch 2.13)")
    s.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("predict", help="recognise the action in one sample (a video, or the run's own modalities)",
                       description="One sample in, top-k classes per task out (KARMMA run). INPUT is a video file or "
                       "frame folder (rgb; flow is computed from it with TV-L1 at the model's input scale, audio read "
                       "from its audio stream), a sample folder with one entry per modality named after it (rgb.mp4 "
                       "or rgb/, flow/ with u/ and v/, audio.wav, depth/, boxes.json, imu.csv; imu:acc.csv for a named "
                       "modality), or a generic manifest.csv/.jsonl (or its folder) with --uid naming the row, whose "
                       "cells give each modality's path. A run trained without video (e.g. IMU) needs a sample folder "
                       "or a manifest row. Whatever the model uses but the input lacks is reported and the model runs "
                       "on the rest. With a few-shot run, --support names a folder <class>/<videos> (every class "
                       "folder with at least one video) and the video is classified among those classes.")
    p.add_argument("run_dir", help="run directory of a KARMMA or few-shot run")
    p.add_argument("video", metavar="INPUT",
                   help="video file (.mp4, .webm, ...), frame folder, sample folder, or manifest.csv/.jsonl")
    p.add_argument("--uid", help="the manifest row to predict (default: the manifest's only row)")
    p.add_argument("--modalities", help="comma-separated subset to use, e.g. rgb,audio (default: all the model has)")
    p.add_argument("--depth", help="folder of 16-bit depth PNGs for the video, when the model uses depth")
    p.add_argument("--row", default="student", help="KARMMA: which trained row to use (default: student)")
    p.add_argument("--support", help="few-shot: support folder <class>/<video or frame folder>")
    p.add_argument("--method", help="few-shot: which trained method (default: clip_m2df if trained)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to list per task (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_predict)


BENCHMARKS = {
    "deploy": ("actdistill.bench.deploy", "student vs teacher per subset: eager, torch.compile, ONNX Runtime; FLOP/s"),
    "teacher-cache": ("actdistill.bench.teacher_cache", "teacher training on cached tokens vs re-running extractors"),
    "data": ("actdistill.bench.data_loading", "clips/s per modality with 0, 1, 2 workers vs naive decoding"),
    "otam": ("actdistill.bench.otam", "vectorised OTAM vs the double loop"),
    "fewshot": ("actdistill.bench.fewshot_eval", "few-shot evaluation on cached features vs per-episode encoding"),
    "scale": ("actdistill.bench.scale", "KARMMA peak memory on small vs medium data; streaming vs in-memory speed"),
    "allocator": ("actdistill.bench.allocator", "one row's training time and page faults: glibc defaults vs ours"),
}


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (fixed methodology; JSON + Markdown table)",
                       description="Benchmarks with fixed methodology: warm-up, repeats, median/min/max, the "
                       "machine described, a baseline in the same run. Results go to benchmarks/results/*.json; the "
                       "Markdown table printed at the end is what docs/benchmarks.md shows. "
                       "`actdistill bench NAME --help` lists a benchmark's options.")
    p.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME",
                   help="; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()))
    p.add_argument("args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(BENCHMARKS[args.name][0])
    prog, sys.argv[0] = sys.argv[0], f"actdistill bench {args.name}"  # argparse names itself from argv[0]
    try:
        return int(module.main(list(args.args)))
    finally:
        sys.argv[0] = prog


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from actdistill.deploy.export import check_opset, export_onnx

    check_opset(args.opset)  # before loading anything
    report = export_onnx(args.run_dir, args.out, args.row, args.opset)
    print(f"wrote {report['onnx']} ({report['bytes'] / 1e6:.2f} MB, {report['export_seconds']:.1f}s)")
    print("ONNX Runtime vs PyTorch, max |logit difference| per modality subset:")
    for name, check in report["validation"].items():
        print(f"  {name:<28} {check['max_abs_diff']:.2e}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actdistill.deploy import FewShotRecognizer, Recognizer
    from actdistill.deploy.recognizer import run_kind

    run = Path(args.run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run directory does not exist")
    fewshot = run_kind(run) == "fewshot"
    if fewshot or args.support:
        if not fewshot:
            raise ValueError(f"{run}: a KARMMA run; --support is for few-shot runs")
        if not args.support:
            raise ValueError(f"{run} is a few-shot run: give the classes with --support DIR")
        pred = FewShotRecognizer.from_run(run, args.method).predict(args.video, args.support, args.top_k)
    else:
        mods = [m for m in args.modalities.split(",") if m] if args.modalities else None
        pred = Recognizer.from_run(run, args.row).predict(args.video, mods, args.top_k, args.depth, args.uid)
    print(json.dumps(pred.to_dict(), indent=2) if args.json else pred.format())
    return 0
