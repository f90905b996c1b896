"""Teacher training on cached extractor tokens against re-running the frozen extractors every step.

Methodology (fixed): the teacher of a trained KARMMA run (default: the newest ``runs/demo-*``),
rebuilt from ``teacher.safetensors``; batches of ``--batch`` clips of the run's input shapes
(seeded uniform [0, 1]) with the training modality dropout (p = 0.5, at least one kept). One
training step = fusion forward + cross-entropy on every head + backward + AdamW step, either on
tokens computed once (the feature cache: what ``actdistill demo`` does) or with the frozen
extractors re-run on the clips inside the step (no gradient through them). ``--warmup`` untimed
steps, ``--repeats`` timed steps, median / min / max milliseconds. Epoch times are per-step
medians times the run's steps per epoch; the cache's one-off cost is the extractors' forward over
every training clip and view, timed the same way.

    actdistill bench teacher-cache --out benchmarks/results/teacher_cache.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from actdistill.bench.common import machine, markdown_table, time_calls, write_result
from actdistill.bench.deploy import newest_demo_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="KARMMA run directory (default: the newest runs/demo-*)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default="benchmarks/results/teacher_cache.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from actdistill.config import to_dict
    from actdistill.deploy import Recognizer
    from actdistill.distill.dropout import modality_dropout
    from actdistill.distill.losses import ce_loss
    from actdistill.engine.trainer import make_optimizer

    run = Path(args.run) if args.run else newest_demo_run()
    rec = Recognizer.from_run(run, "teacher")
    info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").exists() else {}
    train_clips = int(info.get("train_clips", 300))
    views = int(rec.cfg.cache.train_views)
    steps = math.ceil(train_clips / args.batch)
    model, mods, device = rec.model.train(), rec.modalities, torch.device("cpu")
    for enc in model.encoders.values():
        enc.freeze()
    gen = torch.Generator().manual_seed(0)
    b = args.batch
    x = {m: torch.rand(b, *rec.info["input_shapes"][m], generator=gen) for m in mods}
    labels = {t: torch.randint(0, n, (b,), generator=gen) for t, n in rec.heads.items()}
    mask = modality_dropout(torch.ones(b, len(mods), dtype=torch.bool), 0.5, gen)
    opt = make_optimizer(model.fusion, rec.cfg.teacher.optim)
    with torch.no_grad():
        tokens, counts = model.encode(x, torch.ones(b, len(mods), dtype=torch.bool))

    def step(tok: dict[str, torch.Tensor]) -> None:
        out = model.fusion(tok, mask, counts)
        ce_loss(out["logits"], labels)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def rerun() -> None:
        with torch.no_grad():
            tok, _ = model.encode(x, mask)
        step(tok)

    def extract() -> None:
        with torch.no_grad():
            model.encode(x, torch.ones(b, len(mods), dtype=torch.bool))

    rows: dict[str, dict[str, float]] = {}
    for name, fn in (("cached tokens", lambda: step(tokens)), ("re-run extractors", rerun),
                     ("extract (cache build)", extract)):
        rows[name] = time_calls(fn, device, args.warmup, args.repeats)
        print(f"{name:<24} {rows[name]['median_ms']:9.2f} ms/step", flush=True)
    cached = rows["cached tokens"]["median_ms"] * steps / 1e3
    rerun_s = rows["re-run extractors"]["median_ms"] * steps / 1e3
    build = rows["extract (cache build)"]["median_ms"] * steps * views / 1e3
    epochs = int(rec.cfg.teacher.optim.epochs)
    result: dict[str, Any] = {
        "benchmark": "teacher_cache", "machine": machine(device), "run": str(run),
        "settings": {"batch": b, "warmup": args.warmup, "repeats": args.repeats, "steps_per_epoch": steps,
                     "train_clips": train_clips, "cache_views": views, "epochs": epochs,
                     "teacher": to_dict(rec.cfg.teacher.model)},
        "per_step_ms": rows,
        "epoch_seconds": {"cached": cached, "rerun": rerun_s},
        "cache_build_seconds": build,
        "speedup_per_epoch": rerun_s / cached,
        "total_seconds": {"cached": build + epochs * cached, "rerun": epochs * rerun_s},
    }
    write_result(args.out, result)
    print()
    print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    r, s = result["per_step_ms"], result["settings"]
    rows = [[name, round(v["median_ms"], 2), round(v["min_ms"], 2), round(v["max_ms"], 2)] for name, v in r.items()]
    e, t = result["epoch_seconds"], result["total_seconds"]
    return "\n".join([
        markdown_table([f"step (batch {s['batch']})", "median ms", "min", "max"], rows), "",
        f"Per epoch ({s['steps_per_epoch']} steps): cached {e['cached']:.2f} s, re-run {e['rerun']:.2f} s "
        f"({result['speedup_per_epoch']:.1f}x). Cache build (once, {s['cache_views']} views): "
        f"{result['cache_build_seconds']:.2f} s. Teacher training of {s['epochs']} epochs: cached "
        f"{t['cached']:.1f} s including the build, re-run {t['rerun']:.1f} s "
        f"({t['rerun'] / t['cached']:.1f}x)."])


if __name__ == "__main__":
    raise SystemExit(main())
