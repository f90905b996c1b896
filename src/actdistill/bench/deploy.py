"""Student against teacher, per modality subset, on three runtimes; and how close to the machine's limit.

Methodology (fixed): a trained KARMMA run directory (default: the newest ``runs/demo-*``); the
teacher (frozen extractors + fusion, rebuilt from ``teacher.safetensors``) and the student;
inputs of the run's shapes, seeded uniform [0, 1]. For every non-empty modality subset, batch 1
(latency) and batch 16 (throughput): ``--warmup`` untimed calls, ``--repeats`` timed calls,
median / min / max milliseconds. Runtimes, measured in the same run:

* ``eager``: the PyTorch model as trained (encoders of absent modalities are skipped);
* ``compile``: ``torch.compile`` of the presence-mask graph (one graph for every subset: every
  encoder runs and absent ones are discarded, so its cost does not fall with fewer modalities);
* ``onnxruntime``: the exported ONNX graph (same graph), CPU provider, as many intra-op threads
  as torch uses;
* ``eager-bf16`` (opt-in, meant for GPUs): eager under ``torch.autocast(dtype=torch.bfloat16)``.

``--device cuda`` runs the PyTorch runtimes on the GPU (every timed call synchronised).

Then the achieved floating-point rate of the full-modality forward (FLOPs counted by
``torch.utils.flop_counter`` / median time, batch 16, eager) against the machine's measured
fp32 matmul peak (best median of square matmuls, 512 to 2048): how much of the CPU the models use.

    actdistill bench deploy --run runs/demo-20261123-160006 --out benchmarks/results/deploy.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from actdistill.bench.common import machine, markdown_table, time_calls, write_result
from actdistill.evaluation.efficiency import count_flops
from actdistill.evaluation.protocols import modality_subsets, subset_name

RUNTIMES = ("eager", "compile", "onnxruntime")
ALL_RUNTIMES = (*RUNTIMES, "eager-bf16")


def newest_demo_run(base: str = "runs") -> Path:
    runs = sorted((p for p in Path(base).glob("demo-*") if (p / "teacher.safetensors").exists()),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no trained demo run under {base}/; run `actdistill demo` or pass --run")
    return runs[-1]


def matmul_peak(device: torch.device, warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Best median GFLOP/s of fp32 ``n x n @ n x n`` (2 n^3 FLOPs) over a few sizes."""
    best: dict[str, float] = {"gflops_per_s": 0.0}
    for n in (512, 1024, 2048):
        a = torch.rand(n, n, device=device)
        b = torch.rand(n, n, device=device)
        t = time_calls(lambda a=a, b=b: a @ b, device, warmup, repeats)
        rate = 2 * n**3 / (t["median_ms"] / 1e3) / 1e9
        if rate > best["gflops_per_s"]:
            best = {"gflops_per_s": rate, "n": float(n), "median_ms": t["median_ms"]}
    return best


def _inputs(shapes: dict[str, list[int]], mods: tuple[str, ...], batch: int) -> dict[str, torch.Tensor]:
    from actdistill.deploy.export import random_inputs

    return random_inputs(shapes, mods, batch, torch.Generator().manual_seed(0))


Maker = Callable[[dict[str, torch.Tensor], torch.Tensor], Callable[[], object]]


def _runners(rec: Any, runtime: str, onnx_path: Path | None, device: torch.device) -> Maker:
    """``make(inputs, present) -> call`` for one runtime (inputs hold every modality)."""
    from actdistill.deploy.export import PresenceMaskGraph

    mods, tasks = rec.modalities, list(rec.heads)
    model = rec.model.eval().to(device)
    if runtime in ("eager", "eager-bf16"):
        def make(x: dict[str, torch.Tensor], present: torch.Tensor) -> Callable[[], object]:
            sub = {m: x[m].to(device) for j, m in enumerate(mods) if bool(present[:, j].any())}
            pres = present.to(device)
            if runtime == "eager":
                return lambda: model(sub, pres)

            def bf16() -> object:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return model(sub, pres)
            return bf16
        return make
    if runtime == "compile":
        graph = torch.compile(PresenceMaskGraph(model, tasks).eval(), dynamic=False)

        def make_c(x: dict[str, torch.Tensor], present: torch.Tensor) -> Callable[[], object]:
            args = [x[m].to(device) for m in mods]
            pres = present.to(device)
            return lambda: graph(*args, pres)
        return make_c
    if runtime != "onnxruntime":
        raise ValueError(f"unknown runtime {runtime!r}; choose from {ALL_RUNTIMES}")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def make_o(x: dict[str, torch.Tensor], present: torch.Tensor) -> Callable[[], object]:
        feeds = {**{m: x[m].numpy() for m in mods}, "present": present.numpy()}
        return lambda: sess.run(tasks, feeds)
    return make_o


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="KARMMA run directory (default: the newest runs/demo-*)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, from {ALL_RUNTIMES}")
    ap.add_argument("--subsets", default="all", help="all, or comma-separated subset names (full, rgb+audio, ...)")
    ap.add_argument("--batches", default="1,16", help="latency batch, throughput batch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ONNX Runtime always runs on the CPU provider)")
    ap.add_argument("--out", default="benchmarks/results/deploy.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from actdistill.deploy import Recognizer
    from actdistill.deploy.export import export_onnx

    run = Path(args.run) if args.run else newest_demo_run()
    device = torch.device(args.device)
    recs = {row: Recognizer.from_run(run, row) for row in ("teacher", "student")}
    mods = recs["student"].modalities
    shapes = {m: list(v) for m, v in recs["student"].info["input_shapes"].items()}
    all_subsets = modality_subsets(mods)
    if args.subsets == "all":
        subsets = all_subsets
    else:
        wanted = {subset_name(mods) if w == "full" else w for w in args.subsets.split(",")}
        subsets = [s for s in all_subsets if subset_name(s) in wanted]
        if len(subsets) != len(wanted):
            raise ValueError(f"--subsets: unknown subset in {sorted(wanted)}; known: "
                             f"{[subset_name(s) for s in all_subsets]}")
    batches = [int(b) for b in args.batches.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]
    rows: list[dict[str, Any]] = []
    setup_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        for row, rec in recs.items():
            for runtime in runtimes:
                t0 = time.perf_counter()
                onnx = None
                if runtime == "onnxruntime":
                    onnx = Path(export_onnx(run, Path(tmp) / row, row)["onnx"])
                make = _runners(rec, runtime, onnx, device)
                for batch in batches:
                    x = _inputs(shapes, mods, batch)
                    for k, subset in enumerate(subsets):
                        present = torch.tensor([[m in subset for m in mods]] * batch)
                        xs = {m: torch.where(present[:, j].view(-1, *[1] * (x[m].dim() - 1)), x[m], 0.0)
                              for j, m in enumerate(mods)}
                        call = make(xs, present)
                        if k == 0:
                            with torch.no_grad():
                                call()  # compile / first-run cost stays out of the warm-up count
                            setup_s[f"{row}/{runtime}/b{batch}"] = round(time.perf_counter() - t0, 2)
                        with torch.no_grad():
                            t = time_calls(call, device, args.warmup, args.repeats)
                        rows.append({"model": row, "runtime": runtime, "subset": subset_name(subset), "batch": batch,
                                     **t, "clips_per_s": batch / (t["median_ms"] / 1e3)})
                        print(f"{row:<8} {runtime:<12} b{batch:<3} {subset_name(subset):<24} "
                              f"{t['median_ms']:9.2f} ms", flush=True)
    # achieved FLOP/s of the full-modality eager forward at the throughput batch
    peak = matmul_peak(device)
    big = batches[-1]
    achieved = {}
    for row, rec in recs.items():
        x = {m: v.to(device) for m, v in _inputs(shapes, mods, big).items()}
        present = torch.ones(big, len(mods), dtype=torch.bool, device=device)
        with torch.no_grad():
            flops = count_flops(lambda rec=rec, x=x, present=present: rec.model(x, present))
        t = next(r for r in rows if r["model"] == row and r["runtime"] == "eager" and r["batch"] == big
                 and r["subset"] == subset_name(mods)) if "eager" in runtimes and tuple(mods) in subsets else None
        if t is None:
            with torch.no_grad():
                t = time_calls(lambda rec=rec, x=x, present=present: rec.model(x, present), device, args.warmup,
                               args.repeats)
        rate = flops / (t["median_ms"] / 1e3) / 1e9
        achieved[row] = {"gflops_per_clip": flops / big / 1e9, "gflops_per_s": rate,
                         "fraction_of_matmul_peak": rate / peak["gflops_per_s"]}
    result = {"benchmark": "deploy", "machine": machine(device), "run": str(run),
              "settings": {"warmup": args.warmup, "repeats": args.repeats, "batches": batches,
                           "runtimes": runtimes},
              "setup_seconds": setup_s, "rows": rows, "matmul_peak": peak, "achieved": achieved}
    write_result(args.out, result)
    print()
    print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    """Markdown: per runtime, teacher vs student latency and throughput per subset, then FLOP/s."""
    rows = result["rows"]
    batches = result["settings"]["batches"]
    lat, thr = batches[0], batches[-1]

    def get(model: str, runtime: str, subset: str, batch: int) -> dict[str, Any] | None:
        return next((r for r in rows if (r["model"], r["runtime"], r["subset"], r["batch"]) ==
                     (model, runtime, subset, batch)), None)

    out = []
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    for runtime in result["settings"]["runtimes"]:
        table = []
        for s in subsets:
            t1, s1 = get("teacher", runtime, s, lat), get("student", runtime, s, lat)
            t2, s2 = get("teacher", runtime, s, thr), get("student", runtime, s, thr)
            if not (t1 and s1 and t2 and s2):
                continue
            table.append([s, round(t1["median_ms"], 2), round(s1["median_ms"], 2),
                          f"{t1['median_ms'] / s1['median_ms']:.1f}x", round(t2["clips_per_s"], 1),
                          round(s2["clips_per_s"], 1), f"{s2['clips_per_s'] / t2['clips_per_s']:.1f}x"])
        out += [f"**{runtime}**", "", markdown_table(
            ["subset", f"teacher ms (b{lat})", f"student ms (b{lat})", "latency ratio",
             f"teacher clips/s (b{thr})", f"student clips/s (b{thr})", "throughput ratio"], table), ""]
    peak = result["matmul_peak"]
    out += [f"fp32 matmul peak: {peak['gflops_per_s']:.1f} GFLOP/s (n = {int(peak.get('n', 0))})", "",
            markdown_table(["model", "GFLOPs / clip", f"achieved GFLOP/s (eager, full, b{thr})", "of matmul peak"],
                           [[m, round(a["gflops_per_clip"], 4), round(a["gflops_per_s"], 2),
                             f"{100 * a['fraction_of_matmul_peak']:.1f}%"] for m, a in result["achieved"].items()])]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
