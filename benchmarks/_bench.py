"""Shared benchmark methodology: the machine description and the warm-up / repeat / median timer."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch


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
    """``warmup`` untimed calls, then ``repeats`` timed ones: median, min and max milliseconds.

    On CUDA every call is synchronised, so the time is the work's, not the launch's.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}
