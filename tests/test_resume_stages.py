"""Exact resume of every training stage, interrupted where a user's job would be.

Each pipeline runs twice on tiny synthetic data: once straight through, and once interrupted
inside every training stage in turn (a ``KeyboardInterrupt`` raised in the middle of a random step,
as SIGINT does; whatever was not checkpointed is lost, as with SIGKILL) and relaunched each time
with the command a user types, ``actdistill karmma train CONFIG run.resume=RUN`` (``fewshot
train``), in this process. The kill points avoid checkpoint boundaries (``train.checkpoint_every=2``),
so every resume restarts from a checkpoint some steps back and recomputes them. The saved weights
must equal the straight run's bit for bit: every random stream a stage uses (batch order, modality
dropout and its ramp, ``nn.Dropout``, episode sampling, clip draws) is restored exactly.

``python -m pytest tests/test_resume_stages.py -q -s`` prints where each stage was interrupted,
the checkpoint it resumed from and the largest weight difference (docs/reliability.md).
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from actdistill.cli import main
from actdistill.config import dump_yaml
from actdistill.data.datasets.synthetic import write_synthetic_epic
from actdistill.data.datasets.synthetic_fewshot import write_synthetic_fewshot
from actdistill.demo import demo_config
from actdistill.engine import trainer
from tests.test_fewshot_pipeline import tiny_config
from tests.test_karmma_pipeline import TINY

CHECKPOINT_EVERY = 2


def _base(stage: str) -> str:
    """A stage's name without the cache-key hash a unimodal fit carries (``unimodal_audio_1a2b3c4d``)."""
    return re.sub(r"_[0-9a-f]{8}$", "", stage)


class Interrupter:
    """Stands in for :func:`trainer._micro_step`: in the launch that starts stage ``s`` from scratch,
    raises ``KeyboardInterrupt`` after the forward of micro-step ``plan[s]`` (0-based), once.

    Also records which checkpoint each stage resumed from (``trainer.latest_checkpoint``)."""

    def __init__(self, plan: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
        self.plan = dict(plan)
        self.seen: dict[str, int] = {}
        self.killed: list[str] = []
        self.resumed: dict[str, int | None] = {}
        real_step, real_latest = trainer._micro_step, trainer.latest_checkpoint

        def micro_step(*args: Any, stage: str, **kwargs: Any) -> dict[str, Any]:
            out = real_step(*args, stage=stage, **kwargs)
            key = _base(stage)
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
            if self.plan.get(key) == n:
                del self.plan[key]
                self.killed.append(key)
                raise KeyboardInterrupt
            return out

        def latest(run_dir: Any, name: str = "checkpoints") -> Path | None:
            path = real_latest(run_dir, name)
            key = _base(name.removeprefix("checkpoints/"))
            if self.killed and key == self.killed[-1] and key not in self.resumed:
                self.resumed[key] = int(path.name.removeprefix("epoch_")) if path is not None else None
            return path

        monkeypatch.setattr(trainer, "_micro_step", micro_step)
        monkeypatch.setattr(trainer, "latest_checkpoint", latest)

    def launch(self, argv: list[str]) -> int:
        self.seen = {}
        return main(argv)


def _run_until_done(argv: list[str], out_dir: Path, launch: Callable[[list[str]], int]) -> tuple[Path, int]:
    """Launch ``argv``, then relaunch it with ``run.resume=<its run dir>`` until it exits 0."""
    code = launch(argv)
    (run,) = [p for p in out_dir.iterdir() if p.is_dir()]
    launches = 1
    while code == 130:
        assert launches < 20
        code = launch([*argv, f"run.resume={run}"])
        launches += 1
    assert code == 0
    return run, launches


def _kill_point(micro_steps: int, accumulate: int, boundaries: set[int], pick: random.Random) -> int:
    """A random micro-step (0-based) of a stage of ``micro_steps`` batches, ``accumulate`` per optimizer
    step, whose optimizer step follows neither the start nor a checkpoint (``boundaries``: the
    optimizer steps after which one is written): the resumed run must recompute the steps since
    the last checkpoint as well as the interrupted one."""
    return pick.choice([m for m in range(micro_steps)
                        if m // accumulate > min(boundaries) and m // accumulate not in boundaries])


def _checkpoint_before(micro: int, accumulate: int, boundaries: set[int]) -> int:
    return max(b for b in boundaries if b <= micro // accumulate)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def _report(title: str, plan: dict[str, int], acc: int, resumed: dict[str, int | None],
            diffs: dict[str, float], launches: int) -> None:
    print(f"\n{title}: {launches} launches")
    for stage, micro in plan.items():
        print(f"  {stage:<18} interrupted in optimizer step {micro // acc + 1} (micro-step {micro % acc + 1}"
              f"/{acc}), resumed from checkpoint step {resumed.get(stage)}")
    for name, d in diffs.items():
        print(f"  {name:<18} max |difference| {d}")


# --------------------------------------------------------------------------------------------- KARMMA
@pytest.fixture(scope="module")
def epic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    return root


def test_every_karmma_stage_resumes_exactly_after_an_interrupt_inside_it(
        epic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unimodal fit (teacher extractor), teacher (fusion dropout 0.2, modality dropout), the
    student's ``init_unimodal`` fit and the rows baseline, baseline_delta (modality dropout with a
    ramp) and student (KD from the cached teacher logits): each interrupted inside, resumed with
    ``run.resume``; every saved network and the evaluation summary equal the straight run's."""
    cache = tmp_path / "cache"
    overrides = [f"data.root={epic_root}", f"cache.root={cache}", *TINY, "data.modalities=[audio,depth]",
                 "data.sampling.num_frames=2", "data.spatial.short_side=16", "data.spatial.crop_size=16",
                 "rows=[baseline,baseline_delta,student]", "eval.efficiency=false", "eval.drop_rates=[0.5]",
                 f"train.checkpoint_every={CHECKPOINT_EVERY}", "teacher.fit_unimodal=[audio]",
                 "student.init_unimodal=[depth]", "student.single_passes=0", "student.unimodal_aux=0",
                 "student.dropout_ramp_epochs=2",
                 "teacher.model.fusion={dim: 32, depth: 1, num_heads: 2, dropout: 0.2}",
                 *[f"{o}.epochs=3" for o in ("teacher.unimodal_optim", "teacher.optim", "student.optim")],
                 *[f"{o}.batch_size=2" for o in ("teacher.unimodal_optim", "teacher.optim", "student.optim")]]
    # 6 training clips, batches of 2, 3 epochs: checkpoints every 2 steps and at the epochs' ends
    steps, boundaries = 3 * 3, {2, 3, 4, 6, 8, 9}
    pick = random.Random(18)
    plan = {s: _kill_point(steps, 1, boundaries, pick) for s in
            ("unimodal_audio", "teacher", "unimodal_depth", "baseline", "baseline_delta", "student")}

    def runs(name: str, launch: Callable[[list[str]], int]) -> tuple[dict[str, dict[str, torch.Tensor]], Path, int]:
        cfg = demo_config(None, [*overrides, f"run.out_dir={tmp_path / name}"])
        dump_yaml(cfg, tmp_path / f"{name}.yaml")
        shutil.rmtree(cache / "unimodal", ignore_errors=True)  # the fits are stages under test: never reuse
        run, launches = _run_until_done(["karmma", "train", str(tmp_path / f"{name}.yaml")], tmp_path / name, launch)
        nets = {n: load_file(str(run / f"{n}.safetensors"))
                for n in ("teacher", "baseline", "baseline_delta", "student")}
        for fit in sorted((cache / "unimodal").glob("*.safetensors")):
            nets[f"unimodal_{fit.name.split('-')[0]}"] = load_file(str(fit))
        return nets, run, launches

    straight, straight_run, _ = runs("straight", main)
    stop = Interrupter(plan, monkeypatch)
    resumed, run, launches = runs("killed", stop.launch)
    assert not stop.plan and launches == len(plan) + 1, f"interrupts not reached: {stop.plan}"
    assert set(straight) == set(resumed) == {"teacher", "baseline", "baseline_delta", "student", "unimodal_audio",
                                             "unimodal_depth"}
    for stage, micro in plan.items():  # resumed from the last checkpoint before the interrupt
        assert stop.resumed[stage] == _checkpoint_before(micro, 1, boundaries) < micro, (stage, stop.resumed)
    diffs = {n: _max_diff(straight[n], resumed[n]) for n in straight}
    _report("KARMMA", plan, 1, stop.resumed, diffs, launches)
    for name, weights in straight.items():
        for k, v in weights.items():
            assert torch.equal(v, resumed[name][k]), (name, k, diffs[name])
    assert (run / "summary.json").read_text() == (straight_run / "summary.json").read_text()


# -------------------------------------------------------------------------------------------- few-shot
@pytest.fixture(scope="module")
def fewshot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fewshot_data")
    write_synthetic_fewshot(root, seed=0, size="tiny", progress=False)
    return root


def test_fewshot_training_of_each_method_resumes_exactly_after_an_interrupt_inside_it(
        fewshot_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ProtoNet (the plain episode contract: episode sampling and view draws) and CLIP-M2DF
    (dropout, prompt fusion, multi-view distillation): each interrupted inside a random
    accumulation group of a random step (11 episodes, 2 per step: 6 steps), resumed with
    ``run.resume``; the weights equal the straight run's and so does the evaluation."""
    methods = ["protonet", "clip_m2df"]
    acc, episodes, boundaries = 2, 11, {2, 4, 6}  # 6 optimizer steps, the last of 1 episode
    pick = random.Random(17)
    plan = {m: _kill_point(episodes, acc, boundaries, pick) for m in methods}

    def runs(name: str, launch: Callable[[list[str]], int]) -> tuple[dict[str, dict[str, torch.Tensor]], Path, int]:
        cfg = tiny_config(fewshot_root, tmp_path / name, methods, episodes=episodes, accumulate=acc,
                          checkpoint_every=CHECKPOINT_EVERY)
        cfg.eval.episodes = 4  # evaluated after each finished method in every launch: keep it short
        dump_yaml(cfg, tmp_path / f"{name}.yaml")
        run, launches = _run_until_done(["fewshot", "train", str(tmp_path / f"{name}.yaml")], tmp_path / name / "runs",
                                        launch)
        return {m: load_file(str(run / "models" / f"{m}.safetensors")) for m in methods}, run, launches

    straight, straight_run, _ = runs("straight", main)
    stop = Interrupter(plan, monkeypatch)
    resumed, run, launches = runs("killed", stop.launch)
    assert not stop.plan and launches == len(plan) + 1, f"interrupts not reached: {stop.plan}"
    for m, micro in plan.items():
        assert stop.resumed[m] == _checkpoint_before(micro, acc, boundaries) < micro // acc, (m, stop.resumed)
    diffs = {m: _max_diff(straight[m], resumed[m]) for m in methods}
    _report("few-shot", plan, acc, stop.resumed, diffs, launches)
    for m in methods:
        for k, v in straight[m].items():
            assert torch.equal(v, resumed[m][k]), (m, k, diffs[m])
    assert (run / "summary.json").read_text() == (straight_run / "summary.json").read_text()
