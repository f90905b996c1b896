"""One resumable training loop for every stage, built on Lightning Fabric.

Stages (unimodal fits, the teacher, the student rows, episodic few-shot training) differ in what a
step computes, not in the bookkeeping, so that lives here once.

**Why Fabric underneath.** Device placement, autocast precision (``bf16-mixed``, ``16-mixed``
with its gradient scaler), the backward pass, gradient clipping after unscaling, DDP wrapping and
``no_sync`` during gradient accumulation, process-group set-up and TensorBoard logging are generic
and easy to get subtly wrong; a maintained library does them, and new strategies (FSDP, other
accelerators) become a constructor argument instead of new code here. Fabric is a thin layer: the
loop stays ours and readable.

**What we keep ourselves, and why.**

- *Checkpoints* stay :mod:`actdistill.engine.checkpoint`'s atomic safetensors folders (never
  pickle: Fabric's ``save``/``load`` use ``torch.save``), so old runs resume and foreign code can
  never be executed from a checkpoint.
- *Exact resume at any optimizer step*: a checkpoint records (epoch, batch position in the epoch,
  global step) and the epoch's running sums; on resume the loop asks ``batches(epoch, start)`` for
  the rest of the epoch (or skips ``start`` batches itself), so a killed run ends bit-identical to
  an uninterrupted one.
- *Per-step seeding*: before each batch is fetched and stepped, the global torch / numpy / python
  RNGs are reseeded from a hash of ``(seed, stage, epoch, batch index, rank)``. Anything random
  inside ``step`` (modality dropout on the default generator, ``nn.Dropout``) is then a pure
  function of its position, never of how the run was split into resumed pieces.
- *Metrics CSV*: our own small writer (see :class:`CsvLog` for why not Fabric's ``CSVLogger``).

On-disk layout inside ``run_dir``::

    checkpoints/<stage>/epoch_NNNN/       safetensors checkpoint (NNNN = finished epochs, or the
                                          global optimizer step once step checkpoints are used)
    logs/<stage>/metrics.csv              one row per ``log_every`` steps and one per epoch
    logs/<stage>/events.out.tfevents.*    the same scalars for TensorBoard, when it is installed
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from lightning_fabric import Fabric
from lightning_fabric.plugins.environments import ClusterEnvironment
from lightning_fabric.strategies import DDPStrategy, SingleDeviceStrategy
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from actdistill.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from actdistill.engine.distributed import is_distributed, is_main, rank
from actdistill.rundir import holding_run_dir

PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
SCHEDULERS = ("cosine", "none")


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
    opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, kind: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over ``cfg.epochs * steps_per_epoch`` optimizer steps after a linear warm-up
    of ``cfg.warmup_epochs`` epochs; ``kind="none"`` keeps the LR constant (a LambdaLR all the same,
    so every stage saves and restores one kind of schedule state)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


StepFn = Callable[..., dict[str, torch.Tensor]]
BatchesFn = Callable[..., Iterable[dict[str, Any]]]


# ----------------------------------------------------------------------------------------- helpers
def step_seed(seed: int, stage: str, epoch: int, index: int, rank_: int) -> int:
    """The seed of batch ``index`` of ``epoch``: a stable hash, the same in every process and run."""
    digest = hashlib.blake2b(f"{seed}/{stage}/{epoch}/{index}/{rank_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def reseed(seed: int) -> None:
    """Reseed every global RNG a step may draw from (torch seeds all CUDA devices too)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def _positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` accepts (a large number for ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the plain form
        return 1
    n = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return 1 << 16
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def batch_size_of(batch: Any) -> int | None:
    """Samples in ``batch``: dim 0 of the first tensor in ``batch["labels"]``, else of ``batch["present"]``."""
    if not isinstance(batch, dict):
        return None
    labels = batch.get("labels")
    if torch.is_tensor(labels) and labels.ndim > 0:
        return int(labels.shape[0])
    if isinstance(labels, dict):
        for v in labels.values():
            if torch.is_tensor(v) and v.ndim > 0:
                return int(v.shape[0])
    present = batch.get("present")
    if torch.is_tensor(present) and present.ndim > 0:
        return int(present.shape[0])
    return None


class _ProcessGroupEnvironment(ClusterEnvironment):
    """Fabric's view of a process group someone else (``torchrun`` + ``init_from_env``) already made.

    Ranks come from ``torch.distributed`` itself rather than from launcher variables, so the loop
    works under torchrun, under ``torch.multiprocessing`` (tests) and under any other launcher.
    Each process drives one device, so Fabric sees ``parallel_devices=[this device]`` and
    ``local_rank() == 0``; setters are ignored because the group exists already.
    """

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return int(os.environ.get("MASTER_PORT", "29500"))

    @staticmethod
    def detect() -> bool:
        return is_distributed()

    def world_size(self) -> int:
        return dist.get_world_size()

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return dist.get_rank()

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return 0


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def make_fabric(model: torch.nn.Module, precision: str = "32",
                device: str | torch.device | None = None) -> tuple[Fabric, bool]:
    """A launched Fabric for ``model``; returns ``(fabric, wrap)`` where ``wrap`` says Fabric must wrap
    the model in DDP (a process group exists, the model has trainable parameters and is not DDP yet).

    ``device=None`` keeps the model where the caller put it (our callers move their batches to
    that device inside ``step``). Under an existing process group ``fabric.launch()`` only runs
    the strategy's ``setup_environment``: ``_init_dist_connection`` returns early when
    ``torch.distributed.is_initialized()`` (lightning_fabric/utilities/distributed.py).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(k for k in PRECISIONS if k != '32-true')}, "
                         f"got {precision!r}")
    dev = torch.device(device) if device is not None else _model_device(model)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if PRECISIONS[precision] == "16-mixed" and dev.type != "cuda":
        raise ValueError(f"precision='16-mixed' (float16 autocast with a gradient scaler) needs a CUDA device, "
                         f"but training runs on {dev.type}; use precision='bf16-mixed' there")
    wrap = (is_distributed() and not isinstance(model, DistributedDataParallel)
            and any(p.requires_grad for p in model.parameters()))
    accelerator = "cuda" if dev.type == "cuda" else "cpu"
    if wrap:
        strategy: Any = DDPStrategy(cluster_environment=_ProcessGroupEnvironment(), parallel_devices=[dev],
                                    find_unused_parameters=True)
    else:  # single process, or the caller's own DDP module (never wrap twice)
        strategy = SingleDeviceStrategy(device=dev)
    fabric = Fabric(accelerator=accelerator, strategy=strategy, precision=PRECISIONS[precision])  # type: ignore[arg-type]
    fabric.launch()
    return fabric, wrap


@contextlib.contextmanager
def _forward_through(raw: torch.nn.Module, wrapper: torch.nn.Module | None) -> Iterator[None]:
    """Route calls of ``raw(...)`` through ``wrapper`` (Fabric's DDP module) for one step.

    A one-argument ``step(batch)`` closes over the raw model, but DDP only synchronises gradients
    of forwards that go through its own ``forward``. While the step runs, ``raw.forward`` is
    replaced by a shim that calls the wrapper, whose inner call of ``raw`` reaches the original
    ``forward`` (the shim steps aside while the wrapper is running).
    """
    if wrapper is None:
        yield
        return
    had_own = "forward" in raw.__dict__
    original = raw.forward
    depth = [0]

    def routed(*args: Any, **kwargs: Any) -> Any:
        if depth[0]:
            return original(*args, **kwargs)
        depth[0] += 1
        try:
            return wrapper(*args, **kwargs)
        finally:
            depth[0] -= 1

    raw.forward = routed  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had_own:
            raw.forward = original  # type: ignore[method-assign]
        else:
            del raw.forward


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def _tensorboard_logger(log_dir: Path, purge_step: int | None) -> Any:
    """Fabric's TensorBoardLogger writing straight into ``log_dir`` (no ``version_N`` folder), or
    None when neither tensorboard nor tensorboardX is installed. ``purge_step`` hides the events a
    killed run wrote after the checkpoint it resumes from."""
    if not _tensorboard_available():
        return None
    from lightning_fabric.loggers import TensorBoardLogger

    kwargs = {"purge_step": purge_step} if purge_step is not None else {}
    return TensorBoardLogger(root_dir=str(log_dir.parent), name=log_dir.name, version="",
                             default_hp_metric=False, **kwargs)


class CsvLog:
    """``metrics.csv`` of one stage, flushed row by row.

    Why not Fabric's ``CSVLogger``: it writes under ``<name>/version_N/`` folders (a resumed run
    would start a new file), buffers rows until ``flush_logs_every_n_steps`` (rows before a
    checkpoint are lost when the job is killed) and cannot drop rows a killed run logged after the
    checkpoint it resumes from. This writer keeps the rows in memory (a few per epoch), appends
    each one and flushes it, and rewrites the file atomically only when a new column appears.
    """

    FIRST = ("kind", "epoch", "step")

    def __init__(self, path: Path, keep_through_step: int | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = list(self.FIRST)
        if keep_through_step is not None and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                for name in reader.fieldnames or []:
                    if name not in self.fields:
                        self.fields.append(name)
                for row in reader:
                    with contextlib.suppress(TypeError, ValueError):
                        if int(row.get("step") or -1) <= keep_through_step:
                            self.rows.append({k: v for k, v in row.items() if v not in ("", None)})
        path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def write(self, row: dict[str, Any]) -> None:
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if v is not None}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields.extend(new)
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)


class _Loggers:
    """CSV + optional TensorBoard, on rank 0 only (other ranks get a no-op)."""

    def __init__(self, run_dir: Path, stage: str, resumed_step: int | None) -> None:
        self.on = is_main()
        self.csv: CsvLog | None = None
        self.tb: Any = None
        if not self.on:
            return
        log_dir = run_dir / "logs" / stage
        self.csv = CsvLog(log_dir / "metrics.csv", resumed_step)
        self.tb = _tensorboard_logger(log_dir, None if resumed_step is None else resumed_step + 1)

    def log(self, kind: str, epoch: int, step: int, values: dict[str, float]) -> None:
        if not self.on:
            return
        assert self.csv is not None
        self.csv.write({"kind": kind, "epoch": epoch, "step": step, **values})
        if self.tb is not None:
            prefix = "epoch/" if kind == "epoch" else "train/"
            scalars = {f"{prefix}{k}": float(v) for k, v in values.items()
                       if isinstance(v, int | float) and math.isfinite(float(v))}
            self.tb.log_metrics(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.finalize("success")
            self.tb = None


class _Running:
    """Running sums of one epoch (and of the current log window): saved in mid-epoch checkpoints
    so the epoch's averages after a resume equal an uninterrupted run's."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        s = state or {}
        self.sums: dict[str, float] = dict(s.get("sums", {}))
        self.n: int = int(s.get("n", 0))
        self.samples: int | None = s.get("samples")
        self.seconds: float = float(s.get("seconds", 0.0))
        self.win_sums: dict[str, float] = dict(s.get("win_sums", {}))
        self.win_n: int = int(s.get("win_n", 0))

    def add(self, out: dict[str, Any], batch: Any) -> None:
        self.n += 1
        self.win_n += 1
        for k, v in out.items():
            if torch.is_tensor(v) and v.ndim == 0:
                x = float(v.detach())
                self.sums[k] = self.sums.get(k, 0.0) + x
                self.win_sums[k] = self.win_sums.get(k, 0.0) + x
        size = batch_size_of(batch)
        if size is not None:
            self.samples = (self.samples or 0) + size

    def window(self) -> dict[str, float]:
        out = {k: v / max(self.win_n, 1) for k, v in self.win_sums.items()}
        self.win_sums, self.win_n = {}, 0
        return out

    def state(self, seconds: float) -> dict[str, Any]:
        return {"sums": self.sums, "n": self.n, "samples": self.samples, "seconds": seconds,
                "win_sums": self.win_sums, "win_n": self.win_n}


# -------------------------------------------------------------------------------------------- fit
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locks_run_dir(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` holding its ``run_dir``'s lock (:func:`actdistill.rundir.lock_run_dir`) on rank 0.

    Why here as well as where the pipelines open the run directory: a library caller of
    :func:`fit` writes checkpoints too, and two processes stepping one checkpoint folder would
    overwrite each other's steps. Only rank 0 writes, so only rank 0 locks (other ranks never
    touch the file); a process that holds the lock already (a pipeline) shares it.
    """
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not is_main():
            return fn(*args, **kwargs)
        with holding_run_dir(sig.bind(*args, **kwargs).arguments["run_dir"]):
            return fn(*args, **kwargs)

    return wrapper


@_locks_run_dir
def fit(
    model: torch.nn.Module,
    step: StepFn,
    batches: BatchesFn,
    steps_per_epoch: int,
    cfg: OptimConfig,
    run_dir: str | Path,
    stage: str,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    precision: str = "32",
    checkpoint_every: int = 0,
    seed: int = 0,
    log_every: int = 50,
    scheduler: str = "cosine",
    accumulate: int = 1,
    device: str | torch.device | None = None,
    stop_after_steps: int | None = None,
    keep: int = 2,
    seed_name: str | None = None,
    _step_based: bool = False,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` epochs, resuming from ``run_dir/checkpoints/<stage>`` if a
    checkpoint exists there. Returns ``{"history": [epoch logs], "resumed_from": epoch,
    "resumed_step": global step, "global_step": steps done, "stopped": bool}``.

    ``batches(epoch)`` yields the epoch's batches (dicts). If it also accepts a second positional
    argument ``start``, ``batches(epoch, start)`` must yield the epoch's batches from index
    ``start`` on (exact mid-epoch resume without reading the skipped ones); otherwise the loop
    skips ``start`` batches itself. If it returns a sized object (a DataLoader), its length must be
    ``steps_per_epoch - start``.

    ``step(batch)`` returns a dict with ``loss`` (and scalar components, averaged into the logs); a
    ``step(batch, module)`` also receives the module to call: Fabric's wrapper (DDP, autocast)
    or the model itself. A one-argument step's calls of the raw model are routed through Fabric's
    DDP wrapper when Fabric wrapped it. The step runs under the precision's autocast.

    ``steps_per_epoch``: the batches *this process* iterates per epoch; under DDP that is the
    per-rank count (each rank sees its shard), which is what the LR schedule must count. With
    ``accumulate > 1`` the loss of ``accumulate`` consecutive batches is summed (not averaged: scale
    it in ``step`` if wanted) into one optimizer step, without DDP gradient sync on all but the last;
    the schedule then counts ``ceil(steps_per_epoch / accumulate)`` optimizer steps per epoch.

    ``precision``: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"`` (CUDA only). ``checkpoint_every``:
    also checkpoint every that many optimizer steps (0: at epoch ends only). ``seed``: base of the
    per-batch reseeding (see the module docstring). ``log_every``: a ``metrics.csv`` row (window
    means) every that many optimizer steps. ``scheduler``: ``"cosine"`` or ``"none"``.
    ``device``: where Fabric puts the model (None: where it is). ``stop_after_steps``: return after
    that many global optimizer steps, as a killed job would (for tests and dry runs).
    ``seed_name``: the name the per-step seeds are keyed by (default: ``stage``); give one when the
    stage name carries something that must not change the draws (e.g. a cache key's hash).

    A non-finite loss raises FloatingPointError naming the stage and epoch. Only rank 0 writes
    checkpoints and logs, holding ``run_dir``'s lock meanwhile (:func:`actdistill.rundir.lock_run_dir`):
    a run directory another live process writes is a DataError naming it and that process.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    if steps_per_epoch < 1:
        raise ValueError(f"{stage}: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    run_dir = Path(run_dir)
    fabric, wrap = make_fabric(model, precision, device)
    opt = optimizer or make_optimizer(model, cfg)
    opt_steps = -(-steps_per_epoch // accumulate)
    sched = make_scheduler(opt, cfg, opt_steps, scheduler)
    module: Any = fabric.setup_module(model) if wrap else model
    fopt = fabric.setup_optimizers(opt)
    pass_module = _positional_arity(step) >= 2
    route = module if wrap and not pass_module else None
    given_start = _positional_arity(batches) >= 2
    rk = rank()

    # ---- resume
    ckpt_dir = f"checkpoints/{stage}"
    history: list[dict[str, Any]] = []
    epoch0, pos0, gstep = 0, 0, 0
    running_state: dict[str, Any] | None = None
    by_step = _step_based or checkpoint_every > 0
    resumed_step: int | None = None
    last = latest_checkpoint(run_dir, ckpt_dir)
    if last is not None:
        state = load_checkpoint(last, model, opt, sched)
        extra = state.get("extra", {})
        history = list(extra.get("history", []))
        loop = extra.get("loop")
        if loop is not None:
            epoch0, pos0, gstep = int(loop["epoch"]), int(loop["pos"]), int(loop["global_step"])
            running_state = loop.get("running")
            by_step = by_step or loop.get("numbering") == "step"
            if loop.get("scaler"):
                fabric.strategy.precision.load_state_dict(loop["scaler"])
        elif _step_based:  # a step-numbered checkpoint of the old few-shot loop: "epoch" = steps done
            gstep = int(state["epoch"])
            pos0 = gstep * accumulate
        else:  # a per-epoch checkpoint of the old loop: "epoch" = finished epochs
            epoch0 = int(state["epoch"])
            gstep = epoch0 * opt_steps
        if pos0 >= steps_per_epoch:
            epoch0, pos0 = epoch0 + 1, 0
        resumed_step = gstep
    resumed_from = epoch0
    logs = _Loggers(run_dir, stage, resumed_step)

    def checkpoint(epoch: int, pos: int, running: _Running | None, seconds: float) -> None:
        if not is_main():
            return
        loop = {"epoch": epoch, "pos": pos, "global_step": gstep, "numbering": "step" if by_step else "epoch",
                "running": running.state(seconds) if running is not None else None,
                "scaler": fabric.strategy.precision.state_dict() or None}
        save_checkpoint(run_dir, gstep if by_step else epoch, model, opt, sched,
                        extra={"history": history, "loop": loop}, keep=keep, name=ckpt_dir)

    if stop_after_steps is not None and gstep >= stop_after_steps:
        logs.close()
        return _result(history, resumed_from, resumed_step, gstep, True)
    stopped = False
    try:
        for epoch in range(epoch0, cfg.epochs):
            start = pos0 if epoch == epoch0 else 0
            running = _Running(running_state if epoch == epoch0 and start > 0 else None)
            t0 = time.perf_counter() - running.seconds
            model.train()
            bar = tqdm(total=steps_per_epoch, initial=start, desc=f"{stage} {epoch + 1}/{cfg.epochs}",
                       disable=not (progress and is_main()), leave=True, unit="batch", dynamic_ncols=True)
            try:
                reseed(step_seed(seed, seed_name or stage, epoch, start if given_start else 0, rk))
                source = batches(epoch, start) if given_start else batches(epoch)
                expect = steps_per_epoch - (start if given_start else 0)
                if hasattr(source, "__len__") and len(source) != expect:  # type: ignore[arg-type]
                    raise ValueError(
                        f"{stage}: batches({epoch}{', ' + str(start) if given_start else ''}) has "
                        f"{len(source)} batches but steps_per_epoch={steps_per_epoch} says {expect}; "  # type: ignore[arg-type]
                        "pass the number of batches this process iterates (per rank under DDP)")
                it = iter(source)
                if not given_start:
                    for j in range(start):
                        reseed(step_seed(seed, seed_name or stage, epoch, j, rk))
                        if next(it, None) is None:
                            raise ValueError(f"{stage}: epoch {epoch + 1} has fewer than {start} batches to resume")
                i = start
                while True:
                    reseed(step_seed(seed, seed_name or stage, epoch, i, rk))
                    batch = next(it, None)
                    if batch is None:
                        break
                    if i >= steps_per_epoch:
                        raise ValueError(f"{stage}: epoch {epoch + 1} yields more than steps_per_epoch="
                                         f"{steps_per_epoch} batches; pass the number this process iterates")
                    first = i % accumulate == 0 or i == start
                    last_in_group = (i + 1) % accumulate == 0 or i + 1 == steps_per_epoch
                    if first:
                        fopt.zero_grad(set_to_none=True)
                    out = _micro_step(fabric, model, module, step, batch, pass_module, route,
                                      sync=last_in_group, stage=stage, epoch=epoch, sched=sched)
                    running.add(out, batch)
                    i += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{running.sums['loss'] / running.n:.3f}")
                    if last_in_group:
                        lr = _optimizer_step(fabric, module, fopt, sched, cfg.grad_clip)
                        gstep += 1
                        if log_every > 0 and gstep % log_every == 0:
                            logs.log("step", epoch + 1, gstep, {**running.window(), "lr": lr})
                        if checkpoint_every > 0 and gstep % checkpoint_every == 0 and i < steps_per_epoch:
                            checkpoint(epoch, i, running, time.perf_counter() - t0)
                        if stop_after_steps is not None and gstep >= stop_after_steps:
                            stopped = True
                            return _result(history, resumed_from, resumed_step, gstep, stopped)
                if i % accumulate != 0 and i < steps_per_epoch:  # a short epoch left a partial group
                    _optimizer_step(fabric, module, fopt, sched, cfg.grad_clip)
                    gstep += 1
                if i < steps_per_epoch:
                    warnings.warn(f"{stage}: epoch {epoch + 1} yielded {i} batches, steps_per_epoch says "
                                  f"{steps_per_epoch}: the LR schedule will not complete", stacklevel=2)
                log: dict[str, Any] = {k: v / max(running.n, 1) for k, v in running.sums.items()}
                log["epoch"] = epoch + 1
                log["seconds"] = time.perf_counter() - t0
                log["step"] = gstep
                log["lr"] = float(sched.get_last_lr()[0])
                if on_epoch_end is not None:
                    log.update(on_epoch_end(epoch, log) or {})
                history.append(log)
                row = {k: v for k, v in log.items() if k not in ("epoch", "step")}
                if running.samples is not None and log["seconds"] > 0:
                    row["samples_per_s"] = running.samples / log["seconds"]
                logs.log("epoch", epoch + 1, gstep, row)
                bar.set_postfix_str(f"loss {log.get('loss', float('nan')):.4f}, {log['seconds']:.1f}s")
            finally:
                bar.close()
            checkpoint(epoch + 1, 0, None, 0.0)
    finally:
        logs.close()
    return _result(history, resumed_from, resumed_step, gstep, stopped)


def _result(history: list[dict[str, Any]], resumed_from: int, resumed_step: int | None, gstep: int,
            stopped: bool) -> dict[str, Any]:
    return {"history": history, "resumed_from": resumed_from, "resumed_step": resumed_step,
            "global_step": gstep, "stopped": stopped}


def _micro_step(fabric: Fabric, model: torch.nn.Module, module: Any, step: StepFn, batch: Any, pass_module: bool,
                route: Any, *, sync: bool, stage: str, epoch: int, sched: Any) -> dict[str, Any]:
    """Forward (under autocast) and backward of one batch; no DDP gradient sync unless ``sync``."""
    if sync:
        no_sync: Any = contextlib.nullcontext()
    elif module is not model:  # Fabric's DDP wrapper
        no_sync = fabric.no_backward_sync(module)
    elif isinstance(model, DistributedDataParallel):  # the caller's own DDP module
        no_sync = model.no_sync()
    else:
        no_sync = contextlib.nullcontext()
    with no_sync:
        with fabric.autocast(), _forward_through(model, route):
            out = step(batch, module) if pass_module else step(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}: non-finite loss at epoch {epoch + 1} (lr {sched.get_last_lr()})")
        fabric.backward(loss)
    return out


def _optimizer_step(fabric: Fabric, module: Any, fopt: Any, sched: Any, grad_clip: float) -> float:
    """Clip (after unscaling), step the optimizer and the schedule; returns the LR the step used."""
    lr = float(sched.get_last_lr()[0])
    if grad_clip > 0:
        fabric.clip_gradients(module, fopt, max_norm=grad_clip, error_if_nonfinite=False)
    fopt.step()
    sched.step()
    return lr


def fit_steps(
    model: torch.nn.Module,
    step: StepFn,
    batches: Callable[[int], Iterable[dict[str, Any]]],
    num_batches: int,
    cfg: OptimConfig,
    run_dir: str | Path,
    stage: str,
    progress: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    accumulate: int = 1,
    checkpoint_every: int = 0,
    scheduler: str = "none",
    **kwargs: Any,
) -> dict[str, Any]:
    """Step-based training (no epochs; e.g. episodic few-shot) on the same loop as :func:`fit`.

    ``batches(start)`` yields this process's batches from index ``start`` on (``num_batches`` of
    them in all, per rank under DDP); every ``accumulate`` consecutive ones make one optimizer step
    (``ceil(num_batches / accumulate)`` steps). Checkpoints are numbered by optimizer step (the
    old few-shot loop's layout, whose checkpoints, whose ``epoch`` field counts steps, resume
    here). ``cfg.epochs`` is ignored; ``cfg.warmup_epochs`` is the warm-up as a fraction of all
    steps when ``scheduler="cosine"``. Other keywords are :func:`fit`'s.
    """
    one = dataclasses.replace(cfg, epochs=1)

    def by_epoch(epoch: int, start: int) -> Iterable[dict[str, Any]]:
        return batches(start)

    return fit(model, step, by_epoch, num_batches, one, run_dir, stage, progress, optimizer=optimizer,
               accumulate=accumulate, checkpoint_every=checkpoint_every, scheduler=scheduler,
               _step_based=True, **kwargs)
