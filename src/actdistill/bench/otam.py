"""OTAM soft-DTW: the anti-diagonal wavefront (``otam_distance``) against the reference's double loop.

Methodology (fixed): for each episode shape ``[Q, C, T, T]`` (5-way 1-shot training and test
episodes, the reference OTAM's per-video distances for 5-shot, a 16-frame episode), random
distances in ``[0, 2]`` (the range of ``1 - cos``), bidirectional, ``lbda = 0.5``. Each
implementation is warmed up (``--warmup`` calls), then timed over ``--repeats`` calls, forward
only (``no_grad``) and forward + backward; we report the median, min and max milliseconds and
the ratio of medians (loop / vectorised). Outputs are checked to agree before timing. CPU
timings use ``--threads`` threads (default 1: per-episode tensors are small, and one thread
keeps a shared machine's busy cores out of the measurement); on CUDA every call is synchronised.

    actdistill bench otam --out benchmarks/results/otam.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from actdistill.bench.common import machine, time_calls
from actdistill.models.fewshot.otam import otam_distance, otam_distance_loop

CASES: dict[str, tuple[int, int, int, int]] = {
    "5w1s_train": (25, 5, 8, 8),
    "5w1s_test": (5, 5, 8, 8),
    "5w5s_per_video": (25, 25, 8, 8),
    "5w1s_train_16f": (25, 5, 16, 16),
}


def bench_case(shape: tuple[int, ...], device: torch.device, warmup: int, repeats: int) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    dists = (torch.rand(shape, generator=gen) * 2).to(device).requires_grad_(True)
    fast, slow = otam_distance(dists), otam_distance_loop(dists)
    max_diff = float((fast - slow).detach().abs().max())

    def forward(fn: Callable[[Tensor], Tensor]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return fn(dists)

        return run

    def forward_backward(fn: Callable[[Tensor], Tensor]) -> Callable[[], object]:
        def run() -> object:
            dists.grad = None
            fn(dists).sum().backward()
            return dists.grad

        return run

    out: dict[str, object] = {"shape": list(shape), "max_abs_diff": max_diff}
    for mode, wrap in (("forward", forward), ("forward_backward", forward_backward)):
        vec = time_calls(wrap(otam_distance), device, warmup, repeats)
        loop = time_calls(wrap(otam_distance_loop), device, warmup, repeats)
        out[mode] = {
            "vectorised": vec,
            "loop": loop,
            "speedup": loop["median_ms"] / vec["median_ms"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads); 0 = leave as is")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    ap.add_argument("--out", default="benchmarks/results/otam.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {
        "benchmark": "otam",
        "machine": machine(device),
        "settings": {"lbda": 0.5, "bidirectional": True, "warmup": args.warmup, "repeats": args.repeats},
        "cases": {},
    }
    for name in args.cases.split(","):
        res = bench_case(CASES[name], device, args.warmup, args.repeats)
        results["cases"][name] = res
        fw, fb = res["forward"], res["forward_backward"]  # type: ignore[index]
        print(
            f"{name:>16} {CASES[name]!s:>18}: forward {fw['vectorised']['median_ms']:7.2f} ms vs "
            f"{fw['loop']['median_ms']:7.2f} ms ({fw['speedup']:.1f}x); forward+backward "
            f"{fb['vectorised']['median_ms']:7.2f} ms vs {fb['loop']['median_ms']:7.2f} ms ({fb['speedup']:.1f}x)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
