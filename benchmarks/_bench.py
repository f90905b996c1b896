"""Shared benchmark methodology: the machine description and the warm-up / repeat / median timer."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable

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
