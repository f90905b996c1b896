"""The efficiency primitives behind every table: FLOP counts, activation memory and timing."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from actdistill.evaluation.efficiency import count_flops, peak_memory_bytes, profile_forward, time_fn


def test_flops_are_counted_as_flops_not_macs() -> None:
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    assert count_flops(lambda: lin(x)) == 2 * 4 * 16 * 8
    conv = nn.Conv2d(3, 5, 3, padding=1)
    img = torch.randn(2, 3, 10, 10)
    assert count_flops(lambda: conv(img)) == 2 * 2 * 5 * 3 * 9 * 10 * 10


def test_flops_of_a_transformer_layer_include_its_attention() -> None:
    """The fused fast path of ``nn.TransformerEncoderLayer`` hides its matmuls from the counter in
    eval mode; counting must switch it off (and restore it)."""
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    proj = 2 * 2 * 10 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)  # qkv, out, two feed-forward layers
    attn = 2 * 2 * 2 * 10 * 10 * 32  # scores and weighted sum
    assert count_flops(lambda: layer(x)) == proj + attn  # elementwise ops (softmax, norms) are not counted
    assert torch.backends.mha.get_fastpath_enabled()


def test_peak_memory_counts_activations_not_weights() -> None:
    lin = nn.Linear(256, 256)
    x = torch.randn(64, 256)
    peak = peak_memory_bytes(lambda: lin(x))
    assert 64 * 256 * 4 <= peak < 4 * 64 * 256 * 4  # the output, not the 256 KiB of weights


def test_time_fn_pauses_gc_only_while_timing() -> None:
    seen: list[bool] = []

    def fn() -> None:
        seen.append(gc.isenabled())

    assert gc.isenabled()
    res = time_fn(fn, warmup=2, repeats=5)
    assert len(seen) == 7 and not any(seen)
    assert gc.isenabled()
    assert res["min_ms"] <= res["median_ms"] <= res["max_ms"]

    gc.disable()
    try:
        time_fn(fn, warmup=0, repeats=1)
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()

    def boom() -> None:
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        time_fn(boom)
    assert gc.isenabled()


def test_profile_forward_reports_per_clip_flops_and_throughput() -> None:
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    prof = profile_forward(lambda: lin(x), batch_size=4, params=136, warmup=1, repeats=3)
    assert prof["gflops"] == pytest.approx(2 * 16 * 8 / 1e9)
    assert prof["throughput"] == pytest.approx(4 / (prof["latency_ms"] / 1000.0))
    assert prof["params"] == 136 and prof["batch_size"] == 4
