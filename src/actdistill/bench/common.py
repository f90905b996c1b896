"""Shared benchmark methodology: the machine description, the warm-up / repeat / median timer,
and result files (JSON + the Markdown table printed and pasted into ``docs/benchmarks.md``)."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from actdistill.evaluation.efficiency import time_fn


def machine(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on (recorded next to every result)."""
    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones: median, min and max milliseconds
    (the library's own timer, with autograd on so a backward pass can be timed too)."""
    return time_fn(fn, warmup, repeats, device, grad=True)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_result(path: str | Path, result: dict[str, object]) -> None:
    """JSON result file, written atomically (a killed benchmark leaves the previous one intact)."""
    import json

    from actdistill.rundir import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
