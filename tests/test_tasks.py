"""KARMMA task modules (``forward(batch) -> losses``), the row registry, and the trainer settings
every stage takes (precision, step checkpoints, metrics logs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from actdistill.data.datasets.synthetic import write_synthetic_epic
from actdistill.demo import demo_config
from actdistill.engine.tasks import ROWS, RowSpec, RowTask, TeacherTask, register_row, row_spec
from actdistill.models.fusion import KARMMAFusion
from tests.test_karmma_pipeline import TINY


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    return root


def _pipe(tiny_root: Path, tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from actdistill.engine.karmma import KarmmaPipeline

    cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY,
                             "student.init_unimodal=[]", *overrides])
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    pipe = KarmmaPipeline(cfg, run)
    pipe.load_data()
    return pipe


def _batch(b: int = 4) -> dict:
    gen = torch.Generator().manual_seed(0)
    tokens = {"rgb": torch.randn(b, 3, 8, generator=gen), "audio": torch.randn(b, 2, 8, generator=gen)}
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True]])[:b]
    return {"inputs": tokens, "present": present, "mask": present.clone(),
            "labels": {"verb": torch.tensor([0, 1, 2, 1])[:b], "noun": torch.tensor([1, 0, 3, 2])[:b]}}


def test_teacher_task_returns_the_loss_and_its_components() -> None:
    """A task's forward is the whole training objective: a scalar ``loss`` (differentiable) and its
    components; single passes add ``loss_single`` into ``loss`` with their weight."""
    torch.manual_seed(0)
    fusion = KARMMAFusion(("rgb", "audio"), {"rgb": 8, "audio": 8}, {"verb": 3, "noun": 4}, dim=16, depth=1,
                          num_heads=2, num_tokens={"rgb": 3, "audio": 2}, dropout=0.0)
    plain = TeacherTask(fusion, {"rgb": 3, "audio": 2})(_batch())
    assert set(plain) == {"loss", "loss_ce", "loss_ce/verb", "loss_ce/noun"}
    singles = TeacherTask(fusion, {"rgb": 3, "audio": 2}, single_passes=0.5)(_batch())
    assert "loss_single" in singles
    torch.testing.assert_close(singles["loss"], plain["loss"] + 0.5 * singles["loss_single"])
    singles["loss"].backward()
    assert any(p.grad is not None for p in fusion.parameters())


def test_every_registered_row_is_a_task(tiny_root: Path, tmp_path: Path) -> None:
    """Each registered row builds, and its task's forward on a real batch gives a finite scalar loss
    (KD rows with their ``loss_kd``); the frozen teacher is not a submodule of the task, so it is
    neither trained, wrapped in DDP nor checkpointed."""
    from actdistill.engine.clips import CollateViews, ViewDataset

    pipe = _pipe(tiny_root, tmp_path, "student.unimodal_aux=1", "student.single_passes=1",
                 "student.teacher_input=dropped")
    ext = pipe.build_extractors()
    pipe.teacher_tokens(ext)
    teacher = pipe.train_teacher(ext)
    ds = ViewDataset(pipe.train_split, 0, {"teacher_tokens": pipe.train_tokens})
    batch = CollateViews(pipe.train_split, ds.extra)([ds[i] for i in range(4)])
    for kind in ROWS.names():
        spec = row_spec(kind)
        task = RowTask(pipe.build_row(kind), spec, pipe.heads, pipe.modalities,
                       teacher=teacher if spec.distil else None, token_counts=pipe.token_counts, unimodal_aux=1.0,
                       single_passes=1.0)
        out = task(batch)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]), kind
        assert ("loss_kd" in out) == spec.distil, kind
        assert not any(k.startswith("teacher") for k in task.state_dict()), kind
        out["loss"].backward()


def test_a_registered_row_trains_like_the_built_in_ones(tiny_root: Path, tmp_path: Path) -> None:
    """A row registered from outside the pipeline (here: distillation without modality dropout) is
    trained and saved by ``train_row`` like the built-in ones; an unknown row names the known ones."""
    spec = RowSpec("kd_no_dropout", "KD on complete input", dropout=False, distil=True)
    if "kd_no_dropout" not in ROWS:
        register_row(spec)
    pipe = _pipe(tiny_root, tmp_path, "rows=[kd_no_dropout]")
    ext = pipe.build_extractors()
    pipe.teacher_tokens(ext)
    teacher = pipe.train_teacher(ext)
    model = pipe.train_row("kd_no_dropout", teacher)
    assert (pipe.run_dir / "kd_no_dropout.safetensors").exists() and not model.training
    with pytest.raises(ValueError, match=r"baseline_delta"):
        pipe.train_row("baseline_deltaa", None)


def test_bf16_mixed_and_step_checkpoints_on_a_row(tiny_root: Path, tmp_path: Path) -> None:
    """``train.precision=bf16-mixed`` runs a row's forward under bfloat16 autocast on the CPU
    (weights stay float32); ``train.checkpoint_every`` writes step checkpoints; every stage logs
    ``logs/<stage>/metrics.csv`` with its loss components, lr and throughput."""
    pipe = _pipe(tiny_root, tmp_path, "train.precision=bf16-mixed", "train.checkpoint_every=1",
                 "train.log_every=1", "student.optim.epochs=2")
    seen: list[torch.dtype] = []
    model = pipe.build_row("baseline_delta")
    real = pipe.build_row
    pipe.build_row = lambda kind: model  # type: ignore[method-assign]
    hook = model.fusion.register_forward_hook(lambda _m, _i, out: seen.append(out["logits"]["verb"].dtype))
    pipe.train_row("baseline_delta", None)
    hook.remove()
    pipe.build_row = real  # type: ignore[method-assign]
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in model.parameters())
    steps = sorted(p.name for p in (pipe.run_dir / "checkpoints" / "baseline_delta").glob("epoch_*"))
    assert steps, "step checkpoints written"
    with open(pipe.run_dir / "logs" / "baseline_delta" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"step", "epoch"} and all(r["loss"] for r in rows)
    assert any(r.get("samples_per_s") for r in rows if r["kind"] == "epoch")


class _Killed(Exception):
    pass


def test_every_stage_resumes_bit_identical_after_a_kill_inside_it(tiny_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed inside a stage (after a step checkpoint: ``train.checkpoint_every=1``), at a
    random step of each of the unimodal fit, the teacher, a dropout row and a distilling row, and
    then resumed, ends with exactly the weights of an uninterrupted run: every random stream (batch
    order, modality dropout, nn.Dropout) is a function of the run's seed and the step, not of the
    process that happened to run it."""
    import random

    from safetensors.torch import load_file

    from actdistill.engine import karmma

    overrides = ["train.checkpoint_every=1", "teacher.unimodal_optim.epochs=2", "teacher.optim.epochs=2",
                 "student.optim.epochs=2", "teacher.unimodal_optim.batch_size=2", "teacher.optim.batch_size=2",
                 "student.optim.batch_size=2", "student.teacher_input=dropped", "teacher.fit_unimodal=[audio]",
                 "teacher.model.fusion={dim: 32, depth: 1, num_heads: 2, dropout: 0.2}"]
    pick = random.Random(7)
    kills = {"unimodal_audio": pick.randint(1, 5), "teacher": pick.randint(1, 5),
             "baseline_delta": pick.randint(1, 5), "student": pick.randint(1, 5)}
    real_fit = karmma.fit
    pending = dict(kills)

    def killing_fit(task, step, batches, steps, ocfg, run_dir, stage, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = next((k for k in pending if stage.startswith(k)), None)
        seen = [0]

        def counted(batch, module):  # type: ignore[no-untyped-def]
            if key is not None and seen[0] == pending[key]:
                del pending[key]
                raise _Killed(stage)
            seen[0] += 1
            return step(batch, module)

        return real_fit(task, counted, batches, steps, ocfg, run_dir, stage, *args, **kwargs)

    def run(root: Path) -> dict[str, dict[str, torch.Tensor]]:
        while True:
            try:
                pipe = _pipe(tiny_root, root, *overrides)
                ext = pipe.build_extractors()
                pipe.teacher_tokens(ext)
                teacher = pipe.train_teacher(ext)
                for kind in ("baseline_delta", "student"):
                    pipe.train_row(kind, teacher)
                break
            except _Killed:
                continue  # the same command again: resume
        fits = sorted((root / "cache" / "unimodal").glob("audio-*.safetensors"))
        out = {name: load_file(str(pipe.run_dir / f"{name}.safetensors"))
               for name in ("teacher", "baseline_delta", "student")}
        out["fit"] = load_file(str(fits[0]))
        return out

    straight = run(tmp_path / "straight")
    monkeypatch.setattr(karmma, "fit", killing_fit)
    resumed = run(tmp_path / "killed")
    assert not pending, f"kills not reached: {pending}"
    for name, weights in straight.items():
        assert weights.keys() == resumed[name].keys()
        for k, v in weights.items():
            assert torch.equal(v, resumed[name][k]), (name, k)


def test_a_fit_does_not_depend_on_where_the_data_lives(tiny_root: Path, tmp_path: Path) -> None:
    """The same data in another folder gives the same unimodal fit: the fit's cache key (which
    holds ``data.root``) names its checkpoints, not its random draws."""
    import shutil

    from safetensors.torch import load_file

    from actdistill.engine.karmma import KarmmaPipeline

    other = tmp_path / "elsewhere"
    shutil.copytree(tiny_root, other)
    fits = []
    for root, name in ((tiny_root, "a"), (other, "b")):
        cfg = demo_config(None, [f"data.root={root}", f"cache.root={tmp_path / name}", *TINY,
                                 "teacher.unimodal_optim.epochs=2", "teacher.unimodal_optim.batch_size=2"])
        (tmp_path / f"run-{name}").mkdir()
        pipe = KarmmaPipeline(cfg, tmp_path / f"run-{name}")
        pipe.load_data()
        fits.append(load_file(str(pipe.fit_unimodal("audio"))))
    assert fits[0].keys() == fits[1].keys()
    assert all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])
