"""Data-loading throughput: training clips per second through the full multimodal pipeline.

Methodology (fixed): the synthetic dataset (EPIC layout) is generated if absent; the train split
is read with the configured modalities through readers -> shared sampling/augmentation ->
collate. Each setting is warmed up with one pass, then timed over ``--repeats`` passes of
``--clips`` clips; we report the median, min and max clips/s. Settings compared in the same
run: each modality alone and all together, with 0 and 2 DataLoader workers, against a baseline
that decodes *every* RGB frame of each segment (what a naive loader does) instead of only the
sampled ones.

    actdistill bench data --out benchmarks/results/data_loading.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from actdistill.bench.common import machine
from actdistill.config import build_config
from actdistill.data.builder import build_dataset, build_loader
from actdistill.data.datasets.synthetic_loader import ensure_synthetic
from actdistill.experiment import ExperimentConfig


def time_loader(cfg: ExperimentConfig, modalities: list[str], workers: int, clips: int, repeats: int,
                naive: bool = False) -> dict[str, float]:
    data = cfg.data
    data.modalities = modalities
    ds = build_dataset(data, data.train_split, train=True)
    ds.segments = ds.segments[:clips]
    if naive:
        reader = ds.readers["rgb"]

        def one_pass() -> int:
            for seg in ds.segments:
                reader.read(seg.sources["rgb"], np.arange(seg.start_frame, seg.stop_frame + 1), seg)
            return len(ds.segments)
    else:
        loader = build_loader(ds, data, shuffle=False, batch_size=8, num_workers=workers)

        def one_pass() -> int:
            return sum(len(b["uid"]) for b in loader)

    one_pass()  # warm-up (also starts persistent workers, fills per-process caches)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = one_pass()
        rates.append(n / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="data/synthetic")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--config", default="configs/data/synthetic.yaml",
                    help="data config: a YAML file or a shipped config name (default: the shipped data/synthetic)")
    ap.add_argument("--out", default="benchmarks/results/data_loading.json")
    args = ap.parse_args(argv)
    ensure_synthetic(args.root)
    cfg = build_config(ExperimentConfig, args.config, [f"data.root={args.root}", "data.options.generate=false"])
    all_mods = list(cfg.data.modalities)
    rows = []
    base = time_loader(cfg, ["rgb"], 0, args.clips, args.repeats, naive=True)
    rows.append({"setting": "naive: decode every RGB frame", "modalities": "rgb", "workers": 0, **base})
    for workers in [int(w) for w in args.workers.split(",")]:
        for mods in [[m] for m in all_mods] + [all_mods]:
            r = time_loader(cfg, mods, workers, args.clips, args.repeats)
            rows.append({"setting": "pipeline", "modalities": "+".join(mods), "workers": workers, **r})
            print(f"{'+'.join(mods):<24} workers={workers}  {r['median']:8.1f} clips/s", flush=True)
    naive_rate = rows[0]["median"]
    for r in rows:
        r["x_naive"] = r["median"] / naive_rate
    result = {"benchmark": "data_loading", "machine": machine(torch.device("cpu")), "clips": args.clips,
              "repeats": args.repeats, "frames_per_clip": cfg.data.sampling.num_frames, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n| setting | modalities | workers | clips/s (median) | min | max | x naive |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['modalities']} | {r['workers']} | {r['median']:.1f} | {r['min']:.1f} | "
              f"{r['max']:.1f} | {r['x_naive']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
