"""``actdistill demo``: the main job on the built-in synthetic dataset.

Today it exercises the whole data layer end to end: generate the synthetic dataset (EPIC layout)
if absent, index it with the real EPIC-KITCHENS-100 adapter, report its summary, then stream one
epoch of multimodal training batches through the readers, shared sampling/augmentation and the
presence-mask collate, and report throughput. Model training joins here as it lands.
"""

from __future__ import annotations

import time

from tqdm import tqdm

from actdistill.config import build_config
from actdistill.data.builder import build_dataset, build_loader
from actdistill.data.datasets.synthetic_loader import ensure_synthetic
from actdistill.data.summary import format_summary, summarize
from actdistill.experiment import ExperimentConfig
from actdistill.rundir import create_run_dir, save_config, write_json


def run_demo(experiment: str | None = None, overrides: list[str] | None = None) -> int:
    cfg = build_config(ExperimentConfig, experiment, ["run.name=demo", *(overrides or [])])
    data = cfg.data
    if data.dataset == "synthetic":
        ensure_synthetic(data.root, seed=int(data.options.get("seed", 0)), size=str(data.options.get("size", "small")))
        data.options.setdefault("generate", False)
    run_dir = create_run_dir(cfg.run.out_dir, cfg.run.name)
    save_config(run_dir, cfg)
    summary = summarize(data.dataset, data.root, data.annotations, None, data.modalities, options=data.options)
    print(format_summary(summary))

    ds = build_dataset(data, data.train_split, train=True)
    loader = build_loader(ds, data, shuffle=True)
    n = 0
    shapes: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc="reading train clips", unit="batch", disable=not cfg.run.progress):
        n += len(batch["uid"])
        for m in batch["modalities"]:
            if m in batch:
                shapes[m] = list(batch[m].shape)
    elapsed = time.perf_counter() - t0
    result = {
        "run_dir": str(run_dir),
        "train_clips": n,
        "clips_per_s": round(n / elapsed, 1),
        "batch_shapes": shapes,
        "summary": summary,
    }
    write_json(run_dir / "summary.json", result)
    print(f"read {n} training clips in {elapsed:.1f}s ({n / elapsed:.1f} clips/s); shapes {shapes}")
    print(f"run directory: {run_dir}")
    return 0
