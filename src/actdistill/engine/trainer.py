"""A small, resumable epoch loop shared by every training stage.

Stages (unimodal fit, teacher, student rows, episodic few-shot) differ in what a step computes,
not in the bookkeeping, so that lives here once: optimizer + cosine schedule with warm-up,
gradient clipping, progress bars, a checkpoint after every epoch (atomic, safetensors), and
resumption from the newest checkpoint with the optimizer, schedule and RNG states restored, so a
killed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from actdistill.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from actdistill.engine.distributed import is_main


@dataclass
class OptimConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    grad_clip: float = 1.0
    batch_size: int = 32


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases, norms and learned tokens (standard for transformers)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "token" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


StepFn = Callable[[dict[str, Any]], dict[str, torch.Tensor]]


def fit(
    model: torch.nn.Module,
    step: StepFn,
    batches: Callable[[int], Iterable[dict[str, Any]]],
    steps_per_epoch: int,
    cfg: OptimConfig,
    run_dir: str | Path,
    stage: str,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` epochs, resuming from ``run_dir/<stage>`` if a checkpoint exists.

    ``batches(epoch)`` yields the epoch's batches; ``step(batch)`` returns a dict with ``loss``
    (and any components, averaged into the epoch log). Returns the history of epoch logs.
    """
    opt = optimizer or make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    ckpt_dir = f"checkpoints/{stage}"
    history: list[dict[str, float]] = []
    start = 0
    last = latest_checkpoint(run_dir, ckpt_dir)
    if last is not None:
        state = load_checkpoint(last, model, opt, sched)
        start = int(state["epoch"])
        history = list(state["extra"].get("history", []))
    for epoch in range(start, cfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        n = 0
        t0 = time.perf_counter()
        bar = tqdm(batches(epoch), total=steps_per_epoch, desc=f"{stage} {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and is_main()), leave=False, unit="batch")
        for batch in bar:
            out = step(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{stage}: non-finite loss at epoch {epoch + 1} (lr {sched.get_last_lr()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            n += 1
            for k, v in out.items():
                if torch.is_tensor(v) and v.ndim == 0:
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / n:.3f}")
        log = {k: v / max(n, 1) for k, v in sums.items()}
        log["epoch"] = epoch + 1
        log["seconds"] = time.perf_counter() - t0
        if on_epoch_end is not None:
            log.update(on_epoch_end(epoch, log) or {})
        history.append(log)
        if is_main():
            save_checkpoint(run_dir, epoch + 1, model, opt, sched, extra={"history": history}, name=ckpt_dir)
    return {"history": history, "resumed_from": start}
