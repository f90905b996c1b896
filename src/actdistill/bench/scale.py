"""Memory and training throughput of the KARMMA engine as the dataset grows.

Methodology (fixed):

1. **Peak memory.** The demo's configuration (``configs/karmma/synthetic.yaml``) with every
   training stage cut to ``--epochs`` epochs and the efficiency table off, streaming from disk
   (``cache.in_memory_mb=0``), run from nothing (fresh caches, fresh run directory) as a child
   process on each ``--sizes`` synthetic set; the child's peak resident set size (``wait4``'s
   ``ru_maxrss``) is recorded. A design that holds a split in memory grows with every decoded
   view; the goal is ``medium`` (6x the training clips) at most 250 MB above ``small``.
2. **Throughput.** On the first size's caches from step 1, one row (``baseline_delta``) is trained
   for ``--throughput-epochs`` epochs streaming from disk and with the caches held in memory (the
   fast path for small data), alternated ``--repeats`` times in this process; training clips per
   second, medians, and the streaming/in-memory ratio of the medians (goal: at least 0.8).

    actdistill bench scale --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from actdistill.bench.common import machine, markdown_table, write_result

SHORT = ["teacher.unimodal_optim.epochs={e}", "teacher.optim.epochs={e}", "student.optim.epochs={e}",
         "eval.efficiency=false", "run.progress=false"]


def _config(size: str, data_root: Path, cache_root: Path, epochs: int, extra: list[str]) -> Any:
    from actdistill.demo import demo_config

    return demo_config(None, [f"data.root={data_root / size}", f"data.options.size={size}",
                              f"cache.root={cache_root}", *[s.format(e=epochs) for s in SHORT], *extra])


def peak_rss_mb(cfg: Any, work: Path) -> tuple[float, float]:
    """Run ``karmma train`` with ``cfg`` in a child process; its peak RSS (MB) and wall seconds."""
    import yaml

    from actdistill.config import to_dict

    exp = work / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(cfg)))
    cmd = [sys.executable, "-m", "actdistill.cli", "karmma", "train", str(exp), f"run.out_dir={work / 'runs'}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"karmma train failed ({proc.returncode}): {err[-2000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # Linux: kilobytes


def row_throughput(cfg: Any, repeats: int, epochs: int) -> dict[str, Any]:
    """Clips/s of one row's training, streaming vs in memory, alternated ``repeats`` times."""
    from actdistill.engine.karmma import KarmmaPipeline

    out: dict[str, list[float]] = {"streaming": [], "in_memory": []}
    cfg.student.optim.epochs = epochs
    for _ in range(repeats):
        for mode, mb in (("streaming", 0.0), ("in_memory", 1e9)):
            cfg.cache.in_memory_mb = mb
            with tempfile.TemporaryDirectory() as run:
                pipe = KarmmaPipeline(cfg, Path(run))
                pipe.load_data()
                pipe.unimodal_init()  # cached by step 1: not timed
                pipe.train_row("baseline_delta", None)
                clips = len(pipe.train_split) * cfg.student.optim.epochs
                out[mode].append(clips / pipe.timings["baseline_delta"])
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"clips_per_s": out, "median": med, "ratio": med["streaming"] / med["in_memory"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium", help="synthetic sizes, comma-separated")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of every training stage")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per mode")
    ap.add_argument("--throughput-epochs", type=int, default=3, help="epochs of each timed row")
    ap.add_argument("--data-root", default=".cache/actdistill/bench-scale/data",
                    help="where the synthetic sets are generated (kept for reruns)")
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    args = ap.parse_args(argv)
    from actdistill.data.datasets.synthetic_loader import ensure_synthetic

    sizes = [s for s in args.sizes.split(",") if s]
    data_root = Path(args.data_root)
    memory: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            ensure_synthetic(str(data_root / size), 0, size, True)
            work = Path(tmp) / size
            work.mkdir()
            cfg = _config(size, data_root, work / "cache", args.epochs, ["cache.in_memory_mb=0"])
            rss, secs = peak_rss_mb(cfg, work)
            memory[size] = {"peak_rss_mb": rss, "seconds": secs}
            print(f"{size}: peak RSS {rss:.0f} MB ({secs:.0f}s from nothing)", flush=True)
        cfg = _config(sizes[0], data_root, Path(tmp) / sizes[0] / "cache", args.epochs, [])
        speed = row_throughput(cfg, args.repeats, args.throughput_epochs)
    result = {"machine": machine(torch.device("cpu")), "epochs": args.epochs,
              "throughput_epochs": args.throughput_epochs, "memory": memory,
              "throughput": speed}
    if len(sizes) > 1:
        result["growth_mb"] = memory[sizes[-1]]["peak_rss_mb"] - memory[sizes[0]]["peak_rss_mb"]
    write_result(args.out, result)
    rows = [[s, m["peak_rss_mb"], m["seconds"]] for s, m in memory.items()]
    print(markdown_table(["synthetic size", "peak RSS (MB)", "seconds from nothing"], rows))
    med = speed["median"]
    print(markdown_table(["mode", "training clips/s (median)"],
                         [["streaming from disk", med["streaming"]], ["in memory", med["in_memory"]],
                          ["ratio", speed["ratio"]]]))
    return 0
