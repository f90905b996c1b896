"""Efficiency measurements: parameters, FLOPs, peak memory, latency and throughput.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real forward pass and
reported as GFLOPs (floating-point operations, where one multiply-add counts as 2 FLOPs), not
MACs. Latency follows fixed methodology: warm-up iterations, then timed repeats, median
reported with min and max. Peak memory on CPU is the peak of bytes held by tensors allocated
during the forward (tracked op by op with a dispatch mode); on CUDA it is
``torch.cuda.max_memory_allocated`` after a reset.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


# Attention kernels the counter has no formula for. On CPU, scaled_dot_product_attention runs
# ``_scaled_dot_product_flash_attention_for_cpu``, which torch's registry (GPU kernels only) misses:
# every attention score and weighted sum would count as zero FLOPs.
_EXTRA_FLOP_FORMULAS = {
    op: _sdpa_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call. The fused inference path of ``nn.TransformerEncoderLayer`` is invisible to
    the counter (it would report ~20x too few FLOPs for a fusion block), so it is switched off
    while counting; the arithmetic is the same either way. CPU attention kernels get the same
    formula as their GPU counterparts (``_EXTRA_FLOP_FORMULAS``)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
    return int(counter.get_total_flops())


class _LiveTensorBytes(TorchDispatchMode):
    """Counts bytes of tensor storages created by ops while active, and their peak.

    A storage is counted once, when the first op output on it appears, and released when the
    last Python tensor created on it here is garbage-collected: that is the activation memory a
    forward pass holds (weights and inputs, created before, are excluded).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage ptr -> [bytes, referencing tensors]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        flat_in = tree_flatten((args, kwargs))[0]
        inputs = {a.untyped_storage().data_ptr() for a in flat_in if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key == 0:
                    continue
                entry = self.live.get(key)
                if entry is None and key in inputs:
                    continue  # a view or in-place result on memory that existed before this op
                if entry is None:
                    entry = self.live[key] = [storage.nbytes(), 0]
                    self.current += entry[0]
                    self.peak = max(self.peak, self.current)
                entry[1] += 1
                weakref.finalize(t, self._release, key)
        return out


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | None = None) -> int:
    """Peak bytes held by tensors allocated during ``fn`` (activations + outputs; weights excluded)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    tracker = _LiveTensorBytes()
    with torch.no_grad(), tracker:
        out = fn()
    del out
    return int(tracker.peak)


def time_fn(
    fn: Callable[[], Any], warmup: int = 3, repeats: int = 10, device: torch.device | None = None,
    grad: bool = False,
) -> dict[str, float]:
    """Median/min/max wall time of ``fn`` in milliseconds after ``warmup`` untimed calls.

    Under ``no_grad`` unless ``grad`` (to time a backward pass too); on CUDA every call is
    synchronised, so the time is the work's, not the launch's. Python's garbage collector is
    paused while timing (as ``timeit`` does): in a process holding many objects a collection
    landing inside a millisecond-scale forward would otherwise be timed as the model's.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device is not None and device.type == "cuda" else (lambda: None)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with contextlib.nullcontext() if grad else torch.no_grad():
            for _ in range(warmup):
                fn()
            sync()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync()
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def profile_forward(fn: Callable[[], Any], batch_size: int, params: int, warmup: int = 3, repeats: int = 10,
                    device: torch.device | None = None) -> dict[str, float]:
    """Everything the efficiency table needs for one (model, subset, batch size) forward."""
    flops = count_flops(fn)
    timing = time_fn(fn, warmup, repeats, device)
    mem = peak_memory_bytes(fn, device)
    return {
        "params": params,
        "gflops": flops / 1e9 / batch_size,
        "peak_mem_mb": mem / 2**20,
        "latency_ms": timing["median_ms"],
        "latency_min_ms": timing["min_ms"],
        "latency_max_ms": timing["max_ms"],
        "throughput": batch_size / (timing["median_ms"] / 1000.0),
        "batch_size": batch_size,
    }
