"""Training time and page faults of one KARMMA row with glibc's default allocator thresholds
against the command line's setting (``actdistill.allocator``).

Methodology (fixed): the demo's configuration on the ``small`` synthetic set; the caches and the
student's unimodal initialisations are built once (not timed). Then one row (``--row``, default
``baseline``) is trained for ``--epochs`` epochs in a fresh child process per run, alternating
``ACTDISTILL_MALLOC=system`` (glibc's defaults) and the setting, ``--repeats`` times each; a run
reports the row's training seconds and the minor page faults it took (``getrusage``). Medians and
the ratio of the medians are recorded. Separate processes, because the thresholds are
process-wide and cannot be undone cleanly once heap pages are retained.

    actdistill bench allocator --out benchmarks/results/allocator.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from actdistill.bench.common import machine, markdown_table, write_result


def _config(data_root: Path, cache_root: Path, epochs: int) -> Any:
    from actdistill.demo import demo_config

    return demo_config(None, [f"data.root={data_root}", f"cache.root={cache_root}", f"student.optim.epochs={epochs}",
                              "run.progress=false"])


def _child(data_root: str, cache_root: str, row: str, epochs: int) -> None:
    """One timed run in this (fresh) process; prints a JSON line."""
    from actdistill.allocator import tune_allocator

    tuned = tune_allocator()
    from actdistill.engine.karmma import KarmmaPipeline

    cfg = _config(Path(data_root), Path(cache_root), epochs)
    with tempfile.TemporaryDirectory() as run:
        pipe = KarmmaPipeline(cfg, Path(run))
        pipe.load_data()
        pipe.unimodal_init()  # built by the parent: read, not timed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        pipe.train_row(row, None)
        seconds = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"tuned": tuned, "seconds": seconds, "minor_faults": faults}), flush=True)


def _run(mode: str, data_root: Path, cache_root: Path, row: str, epochs: int) -> dict[str, Any]:
    env = {**os.environ, "ACTDISTILL_MALLOC": "system" if mode == "glibc_defaults" else ""}
    code = ("import sys; from actdistill.bench.allocator import _child; "
            "_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))")
    out = subprocess.run([sys.executable, "-c", code, str(data_root), str(cache_root), row, str(epochs)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"timed run failed ({out.returncode}): {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["tuned"] != (mode == "tuned"):
        raise RuntimeError(f"{mode}: the allocator setting was {'' if res['tuned'] else 'not '}applied")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="baseline", help="the row to train (default: baseline)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode, alternated")
    ap.add_argument("--data-root", default=".cache/actdistill/bench-scale/data/small",
                    help="where the small synthetic set is (generated if absent)")
    ap.add_argument("--cache-root", default=".cache/actdistill/bench-allocator",
                    help="caches of the timed runs (kept for reruns)")
    ap.add_argument("--out", default="benchmarks/results/allocator.json")
    args = ap.parse_args(argv)
    from actdistill.data.datasets.synthetic_loader import ensure_synthetic
    from actdistill.engine.karmma import KarmmaPipeline

    data_root, cache_root = Path(args.data_root), Path(args.cache_root)
    ensure_synthetic(str(data_root), 0, "small", True)
    with tempfile.TemporaryDirectory() as run:  # caches and unimodal fits, once
        pipe = KarmmaPipeline(_config(data_root, cache_root, args.epochs), Path(run))
        pipe.load_data()
        pipe.unimodal_init()
    runs: dict[str, list[dict[str, Any]]] = {"glibc_defaults": [], "tuned": []}
    for i in range(args.repeats):
        for mode in runs:
            runs[mode].append(_run(mode, data_root, cache_root, args.row, args.epochs))
            r = runs[mode][-1]
            print(f"run {i + 1} {mode}: {r['seconds']:.2f} s, {r['minor_faults']:,} minor page faults", flush=True)
    med = {m: {"seconds": statistics.median(r["seconds"] for r in rs),
               "minor_faults": statistics.median(r["minor_faults"] for r in rs)} for m, rs in runs.items()}
    result = {"machine": machine(torch.device("cpu")), "row": args.row, "epochs": args.epochs, "runs": runs,
              "median": med, "time_ratio": med["tuned"]["seconds"] / med["glibc_defaults"]["seconds"]}
    write_result(args.out, result)
    print(markdown_table(["allocator", "seconds (median)", "minor page faults (median)"],
                         [[m, v["seconds"], v["minor_faults"]] for m, v in med.items()]))
    print(f"tuned / defaults time: {result['time_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
