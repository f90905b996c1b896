"""The shared training loop (engine/trainer.py): Fabric precision and DDP, exact resume at any
step, the LR schedule's step count, logs, progress bars, step-based training with accumulation."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from actdistill.engine import trainer
from actdistill.engine.checkpoint import latest_checkpoint
from actdistill.engine.trainer import OptimConfig, fit, fit_steps
from tests.conftest import free_port

G = torch.Generator().manual_seed(7)
X, Y = torch.randn(40, 6, generator=G), torch.randint(0, 3, (40,), generator=G)


class Killed(Exception):
    pass


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))


def _make_step(model: torch.nn.Module, kill_at: int | None, calls: list[int]):
    def step(b: dict[str, Any]) -> dict[str, torch.Tensor]:
        calls[0] += 1
        if calls[0] == kill_at:
            raise Killed
        keep = (torch.rand(b["x"].shape[0]) > 0.2).float()  # randomness inside the step (global RNG)
        ce = torch.nn.functional.cross_entropy(model(b["x"]), b["labels"]["y"], reduction="none")
        loss = (ce * keep).sum() / keep.sum().clamp(min=1)
        return {"loss": loss, "loss_ce": ce.mean().detach()}

    return step


def _batches_plain(epoch: int):
    perm = torch.randperm(40)  # global RNG: reseeded per batch index by the loop
    for i in range(0, 40, 8):
        idx = perm[i:i + 8]
        yield {"x": X[idx], "labels": {"y": Y[idx]}}


def _batches_start(epoch: int, start: int):
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(100 + epoch))
    for i in range(start * 8, 40, 8):
        idx = perm[i:i + 8]
        yield {"x": X[idx], "labels": {"y": Y[idx]}}


def _run(run_dir: Path, batches: Any, kill_at: int | None = None, **kw: Any) -> tuple[torch.nn.Module, dict]:
    model = _net()
    calls = [0]
    out = fit(model, _make_step(model, kill_at, calls), batches, 5, OptimConfig(epochs=3, lr=0.05), run_dir,
              "toy", progress=False, seed=3, log_every=2, **kw)
    return model, out


def _rows(run_dir: Path, stage: str = "toy") -> list[dict[str, str]]:
    with (run_dir / "logs" / stage / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("batches", [_batches_plain, _batches_start], ids=["loop_skips", "batches_start"])
def test_kill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, batches: Any) -> None:
    """Killed at batch 9 (epoch 2, after the step-6 checkpoint), resumed: weights, history and the
    CSV equal an uninterrupted run's; the model has dropout and the step draws random numbers."""
    ref, ref_out = _run(tmp_path / "a", batches, checkpoint_every=3)
    with pytest.raises(Killed):
        _run(tmp_path / "b", batches, kill_at=9, checkpoint_every=3)
    last = latest_checkpoint(tmp_path / "b", "checkpoints/toy")
    assert last is not None and last.name == "epoch_0006"
    loop = json.loads((last / "state.json").read_text())["extra"]["loop"]
    assert (loop["epoch"], loop["pos"], loop["global_step"]) == (1, 1, 6)
    resumed, out = _run(tmp_path / "b", batches, checkpoint_every=3)
    assert out["resumed_from"] == 1 and out["resumed_step"] == 6 and out["global_step"] == 15
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)

    def strip(h: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "seconds"} for e in h]

    assert strip(ref_out["history"]) == strip(out["history"])
    rows = _rows(tmp_path / "b")
    steps = [(r["kind"], int(r["step"])) for r in rows]
    assert steps == [(r["kind"], int(r["step"])) for r in _rows(tmp_path / "a")]  # nothing duplicated or lost
    assert [r["loss"] for r in rows if r["kind"] == "step"] == [r["loss"] for r in _rows(tmp_path / "a")
                                                                 if r["kind"] == "step"]


def test_old_per_epoch_checkpoint_still_resumes(tmp_path: Path) -> None:
    """A checkpoint whose state.json has no loop fields (the old per-epoch layout) resumes at the
    next epoch and still ends equal to an uninterrupted run."""
    ref, _ = _run(tmp_path / "a", _batches_plain)
    with pytest.raises(Killed):
        _run(tmp_path / "b", _batches_plain, kill_at=13)  # in epoch 3, after the epoch-2 checkpoint
    last = latest_checkpoint(tmp_path / "b", "checkpoints/toy")
    assert last is not None and last.name == "epoch_0002"
    state = json.loads((last / "state.json").read_text())
    del state["extra"]["loop"]
    (last / "state.json").write_text(json.dumps(state))
    resumed, out = _run(tmp_path / "b", _batches_plain)
    assert out["resumed_from"] == 2 and len(out["history"]) == 3
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_bf16_mixed_on_cpu_trains_under_autocast_with_float32_weights(tmp_path: Path) -> None:
    model = _net()
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    out = fit(model, _make_step(model, None, [0]), _batches_plain, 5, OptimConfig(epochs=1, lr=0.05),
              tmp_path, "bf16", progress=False, precision="bf16-mixed")
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(out["history"][-1]["loss"]))


def test_16_mixed_needs_cuda_and_unknown_precision_is_named(tmp_path: Path) -> None:
    model = _net()
    with pytest.raises(ValueError, match=r"16-mixed.*bf16-mixed"):
        fit(model, _make_step(model, None, [0]), _batches_plain, 5, OptimConfig(epochs=1), tmp_path, "fp16",
            progress=False, precision="16-mixed")
    with pytest.raises(ValueError, match="precision must be one of"):
        fit(model, _make_step(model, None, [0]), _batches_plain, 5, OptimConfig(epochs=1), tmp_path, "x",
            progress=False, precision="64")


def test_cosine_completes_on_the_per_rank_count_and_a_wrong_count_fails(tmp_path: Path) -> None:
    """batches(epoch) returns this rank's shard (rank 0 of 2: 20 samples, 5 batches of 4): the LR
    factor ends at 0 when steps_per_epoch is that per-rank count; the global count (10) is refused."""
    model = _net()
    shard = [{"x": X[i:i + 4], "labels": {"y": Y[i:i + 4]}} for i in range(0, 20, 4)]
    cfg = OptimConfig(epochs=2, lr=0.1, warmup_epochs=0.0)
    out = fit(model, _make_step(model, None, [0]), lambda epoch: shard, 5, cfg, tmp_path / "a", "lr",
              progress=False)
    assert out["global_step"] == 10
    assert out["history"][-1]["lr"] / cfg.lr == pytest.approx(0.0, abs=1e-12)
    assert out["history"][0]["lr"] / cfg.lr == pytest.approx(0.5, abs=1e-6)  # half-way through the cosine
    with pytest.raises(ValueError, match="per rank"):
        fit(_net(), _make_step(model, None, [0]), lambda epoch: shard, 10, cfg, tmp_path / "b", "lr",
            progress=False)


def test_logs_csv_and_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path / "a", _batches_plain)
    rows = _rows(tmp_path / "a")
    step_rows = [r for r in rows if r["kind"] == "step"]
    epoch_rows = [r for r in rows if r["kind"] == "epoch"]
    assert [int(r["step"]) for r in step_rows] == [2, 4, 6, 8, 10, 12, 14]
    assert [(int(r["epoch"]), int(r["step"])) for r in epoch_rows] == [(1, 5), (2, 10), (3, 15)]
    for r in epoch_rows:
        assert float(r["samples_per_s"]) > 0 and float(r["seconds"]) > 0
        assert {"loss", "loss_ce", "lr"} <= {k for k, v in r.items() if v}
    if trainer._tensorboard_available():
        assert list((tmp_path / "a" / "logs" / "toy").glob("events.out.tfevents.*"))
    monkeypatch.setattr(trainer, "_tensorboard_available", lambda: False)
    _run(tmp_path / "b", _batches_plain)
    assert (tmp_path / "b" / "logs" / "toy" / "metrics.csv").is_file()
    assert not list((tmp_path / "b" / "logs" / "toy").glob("events.out.tfevents.*"))


def test_progress_leaves_one_line_per_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _net()
    fit(model, _make_step(model, None, [0]), _batches_plain, 5, OptimConfig(epochs=3), tmp_path / "a", "bar")
    err = capsys.readouterr().err
    lines = [ln.split("\r")[-1] for ln in err.split("\n") if ln.strip()]
    assert len(lines) == 3 and all("5/5" in ln and "loss" in ln for ln in lines), err
    fit(model, _make_step(model, None, [0]), _batches_plain, 5, OptimConfig(epochs=1), tmp_path / "b", "bar",
        progress=False)
    assert capsys.readouterr().err == ""


def test_non_finite_loss_names_stage_and_epoch(tmp_path: Path) -> None:
    model = _net()

    def step(b: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": model(b["x"]).sum() * float("nan")}

    with pytest.raises(FloatingPointError, match=r"nanstage: non-finite loss at epoch 1"):
        fit(model, step, _batches_plain, 5, OptimConfig(epochs=1), tmp_path, "nanstage", progress=False)


def test_accumulate_sums_losses_into_one_optimizer_step(tmp_path: Path) -> None:
    """Two half batches with half-weighted losses and accumulate=2 take the step one full batch takes;
    a two-argument step receives the module to call."""
    full, halves = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    halves.load_state_dict(full.state_dict())
    cfg = OptimConfig(epochs=1, lr=0.1, grad_clip=0.0)

    def one(epoch: int):
        return [{"x": X[i:i + 8], "y": Y[i:i + 8]} for i in range(0, 40, 8)]

    def two(epoch: int):
        return [{"x": X[i:i + 4], "y": Y[i:i + 4]} for i in range(0, 40, 4)]

    got: list[Any] = []

    def step(b: dict[str, Any], module: torch.nn.Module) -> dict[str, torch.Tensor]:
        got.append(module)
        return {"loss": torch.nn.functional.cross_entropy(module(b["x"]), b["y"]) / 2}

    fit(full, lambda b: {"loss": torch.nn.functional.cross_entropy(full(b["x"]), b["y"])}, one, 5, cfg,
        tmp_path / "a", "acc", progress=False, optimizer=torch.optim.SGD(full.parameters(), lr=0.1),
        scheduler="none")
    out = fit(halves, step, two, 10, cfg, tmp_path / "b", "acc", progress=False, accumulate=2,
              optimizer=torch.optim.SGD(halves.parameters(), lr=0.1), scheduler="none")
    assert out["global_step"] == 5 and got[0] is halves
    assert torch.allclose(full.weight, halves.weight, atol=1e-6)


def _episodic(run_dir: Path, stop: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The few-shot shape: Adam, no schedule, accumulate=2 episodes per step, per-episode seeding,
    a checkpoint every 2 steps; 7 episodes = 4 steps (the last one short)."""
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def episodes(start: int):
        for i in range(start, 7):
            g = torch.Generator().manual_seed(i)
            idx = torch.randperm(40, generator=g)[:10]
            yield {"x": X[idx], "labels": {"y": Y[idx]}, "episode": i}

    def step(b: dict[str, Any]) -> dict[str, torch.Tensor]:
        torch.manual_seed(1000 + b["episode"])  # per-episode seeding, as seed_episode does
        return {"loss": torch.nn.functional.cross_entropy(model(b["x"]), b["labels"]["y"]) / 2}

    out = fit_steps(model, step, episodes, 7, OptimConfig(grad_clip=0.0), run_dir, "protonet", progress=False,
                    optimizer=opt, accumulate=2, checkpoint_every=2, stop_after_steps=stop)
    return model, out


def test_fit_steps_resumes_episodic_training_exactly(tmp_path: Path) -> None:
    ref, ref_out = _episodic(tmp_path / "a")
    assert ref_out["global_step"] == 4 and len(ref_out["history"]) == 1
    _, stopped = _episodic(tmp_path / "b", stop=3)
    assert stopped["stopped"] and stopped["global_step"] == 3
    assert latest_checkpoint(tmp_path / "b", "checkpoints/protonet").name == "epoch_0002"
    resumed, out = _episodic(tmp_path / "b")
    assert out["resumed_step"] == 2 and out["global_step"] == 4
    assert latest_checkpoint(tmp_path / "b", "checkpoints/protonet").name == "epoch_0004"
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- DDP
def _one_arg_step(model: torch.nn.Module):
    """A legacy ``step(batch)`` closing over the model (raw, or the caller's DDP module)."""
    def step(b: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.cross_entropy(model(b["x"]), b["labels"]["y"])}

    return step


def _ddp_worker(rk: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rk, world_size=world)
    try:
        torch.set_num_threads(1)
        for prewrap in (False, True):
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
            model: torch.nn.Module = (torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
                                      if prewrap else net)

            def batches(epoch: int):  # this rank's shard: 4 batches of 5
                lo = rk * 20
                return [{"x": X[lo + i:lo + i + 5], "labels": {"y": Y[lo + i:lo + i + 5]}} for i in range(0, 20, 5)]

            name = "caller_ddp" if prewrap else "fabric_wraps"
            fit(model, _one_arg_step(model), batches, 4, OptimConfig(epochs=2, lr=0.1), f"{root}/{name}", "ddp",
                progress=False, accumulate=2)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f"{root}/{name}.{rk}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process group test")
def test_ddp_under_an_existing_process_group_keeps_ranks_in_sync(tmp_path: Path) -> None:
    """Two gloo ranks with different shards: Fabric wraps a plain model in DDP (routing the step's
    calls of the raw model through it), or leaves the caller's DDP module alone, and does not
    re-initialise the group; both ranks end with the same weights (gradients were averaged), the
    same either way. Only rank 0 writes logs and checkpoints."""
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    weights = {name: [load_file(str(tmp_path / f"{name}.{r}.safetensors")) for r in (0, 1)]
               for name in ("fabric_wraps", "caller_ddp")}
    for w0, w1 in weights.values():
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
    a, b = weights["fabric_wraps"][0], weights["caller_ddp"][0]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for name in weights:
        assert (tmp_path / name / "logs" / "ddp" / "metrics.csv").is_file()
        assert latest_checkpoint(tmp_path / name, "checkpoints/ddp") is not None


def test_fit_holds_the_run_dir_lock_on_rank_0_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 writes checkpoints, so it holds the run directory's lock while it trains: a second
    writer (here another lock on the same file) makes ``fit`` stop with a ``DataError`` naming the
    run directory and the holder before any step. Other ranks write nothing and never take it, so
    a held lock does not stop them; after ``fit`` the lock is free again."""
    from actdistill.data.records import DataError
    from actdistill.rundir import LOCK_NAME, ProcessLock

    run = tmp_path / "run"
    run.mkdir()
    other = ProcessLock(run / LOCK_NAME)
    with pytest.raises(DataError, match=f"pid {os.getpid()}") as err:
        _run(run, _batches_plain)
    assert err.value.path == str(run) and not (run / "checkpoints").exists()
    monkeypatch.setattr(trainer, "is_main", lambda: False)
    _, out = _run(run, _batches_plain)
    assert out["global_step"] == 15 and not (run / "checkpoints").exists()
    monkeypatch.undo()
    other.release()
    _run(run, _batches_plain)
    assert latest_checkpoint(run, "checkpoints/toy") is not None
    ProcessLock(run / LOCK_NAME).release()  # released when fit returned
