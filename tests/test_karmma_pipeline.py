"""End-to-end smoke test of the KARMMA pipeline on the tiny synthetic dataset with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actdistill.config import to_dict
from actdistill.data.datasets.synthetic import write_synthetic_epic
from actdistill.demo import demo_config
from actdistill.engine.karmma import run_karmma

TINY = [
    "data.options.size=tiny", "data.options.generate=false", "data.modalities=[rgb,flow,audio,depth]",
    "data.sampling.num_frames=4", "data.spatial.short_side=32", "data.spatial.crop_size=28",
    "cache.train_views=1",
    "teacher.model.encoders.rgb.pretrained=null", "teacher.model.encoders.rgb.width_mult=0.25",
    # the YAML's compact encoders (their widths, pooling, shift) at the tiny preset
    *(f"{who}.model.encoders.{m}.size=tiny" for who in ("teacher", "student") for m in ("flow", "audio", "depth")),
    "student.model.encoders.rgb.size=tiny",
    "teacher.model.fusion.dim=32", "teacher.model.fusion.depth=1", "teacher.model.fusion.num_heads=2",
    "teacher.unimodal_optim.epochs=1", "teacher.optim.epochs=1",
    "student.model.fusion.dim=16", "student.model.fusion.num_heads=2",
    "student.optim.epochs=1", "rows=[baseline,baseline_delta,student,mmt,late_fusion]",
    "eval.repeats=1", "eval.latency_repeats=2", "eval.warmup=0", "eval.throughput_batch=2",
    "eval.drop_rates=[0.0,0.5,0.9]",
    "run.progress=false",
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    return root


def test_pipeline_end_to_end_and_resume(tiny_root: Path, tmp_path: Path) -> None:
    cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = run_karmma(cfg, run_dir)
    rows = ["teacher", "baseline", "baseline_delta", "student", "mmt", "late_fusion"]
    assert list(summary) == rows
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for row in rows:
        s = on_disk[row]
        assert len(s["subsets"]) == 15 and "rgb+flow+audio+depth" in s["subsets"]
        assert len(s["drop_curve"]) == 3 and 0 <= s["auc"] <= 100
        eff = s["efficiency"]["rgb+flow+audio+depth"]
        assert {"params", "gflops", "peak_mem_mb", "latency_ms"} <= set(eff) and eff["gflops"] > 0
    # rows that run the same network are profiled once; other networks get their own measurement
    assert [on_disk[r]["efficiency_measured_on"] for r in rows] == [
        "teacher", "baseline", "baseline", "baseline", "mmt", "late_fusion"]
    assert on_disk["student"]["efficiency"] == on_disk["baseline"]["efficiency"]
    # fewer parameters/FLOPs when a modality is absent (its encoder is skipped)
    st = on_disk["student"]["efficiency"]
    assert st["rgb"]["gflops"] < st["rgb+flow+audio+depth"]["gflops"]
    assert len(on_disk["student"]["metrics"]["subsets"]["rgb"]["ci95"]) == 2
    assert "95% Wilson intervals" in (run_dir / "report.md").read_text()
    for name in ("report.md", "drop_curve.png", "subset_accuracy.png", "accuracy_vs_gflops.png",
                 "predictions_student.csv", "teacher.safetensors", "student.safetensors", "run_info.json",
                 "reliability.png", "per_class_verb.png", "per_class_noun.png", "calibration.json", "per_class.json"):
        assert (run_dir / name).exists(), name
    # a second run over the same run directory resumes every stage from its checkpoint and reuses caches
    again = run_karmma(cfg, run_dir)
    assert again["student"]["subsets"] == summary["student"]["subsets"]


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(tiny_root: Path, tmp_path: Path) -> None:
    """Two gloo ranks at batch B against one process at batch 2B: every rank decodes and extracts
    its share of the chunks (the merged token cache is bit-identical to one process's), each rank
    takes half of every global batch, the LR schedule counts the steps a rank really takes, and
    the trained teacher and rows equal one process's weights to float-reduction noise.

    GroupNorm encoders and no fusion dropout: BatchNorm statistics over half a batch and dropout
    draws per rank are not a single process's, so only these make the comparison exact."""
    import os
    import shutil
    import subprocess
    import sys

    import torch
    import yaml
    from safetensors.torch import load_file

    from actdistill.engine.cache import FeatureCache

    group = ("{name: compact, size: tiny, norm: group}")
    common = [f"data.root={tiny_root}", *TINY, "rows=[baseline,student]", "eval.efficiency=false",
              "student.unimodal_aux=0", "student.single_passes=0", "student.init_unimodal=[]",
              "cache.chunk=2", "teacher.optim.epochs=2", "student.optim.epochs=2",
              *[f"teacher.model.encoders.{m}={group}" for m in ("flow", "audio", "depth")],
              *[f"student.model.encoders.{m}={group}" for m in ("rgb", "flow", "audio", "depth")],
              "teacher.model.fusion={dim: 32, depth: 1, num_heads: 2, dropout: 0.0}",
              "student.model.fusion={dim: 16, depth: 1, num_heads: 2, missing: tokens, dropout: 0.0}"]
    # the unimodal fits' options (batch size included) key their cache: the same in both runs, so the
    # ranks reuse the single process's fits and the tokens can be compared bit for bit
    common.append("teacher.unimodal_optim.batch_size=4")
    batch = ["teacher.optim.batch_size={}", "student.optim.batch_size={}"]
    # one thread like each rank (OMP_NUM_THREADS=1 below): the order of a kernel's float reductions
    # depends on the thread count, and bit-identical tokens need the same order
    single = demo_config(None, [*common, f"cache.root={tmp_path / 'cache1'}", *[b.format(4) for b in batch],
                                "run.threads=1"])
    (tmp_path / "single").mkdir()
    threads = torch.get_num_threads()
    try:
        run_karmma(single, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    shutil.copytree(tmp_path / "cache1" / "unimodal", tmp_path / "cache2" / "unimodal")
    cfg = demo_config(None, [*common, f"cache.root={tmp_path / 'cache2'}", *[b.format(2) for b in batch],
                             f"run.out_dir={tmp_path / 'runs'}"])
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
           "-m", "actdistill.cli", "karmma", "train", str(exp), "run.name=ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").glob("ddp*"))
    assert len(runs) == 1, runs  # rank 1 did not open a second run directory
    for folder in sorted((tmp_path / "cache1").glob("tokens-*")):
        twin = tmp_path / "cache2" / folder.name
        assert {p.stem.split("-", 1)[1] for p in twin.glob("index-*.jsonl")} == {"shard0of2", "shard1of2"}
        key = yaml.safe_load((folder / "key.json").read_text())["key"]
        a, b = FeatureCache(tmp_path / "cache1", folder.name.rsplit("-", 1)[0], key), \
            FeatureCache(tmp_path / "cache2", folder.name.rsplit("-", 1)[0], key)
        assert sorted(a.entries()) == sorted(b.entries()) and len(a)
        for uid, view in a.entries():
            x, y = a.get(uid, view), b.get(uid, view)
            assert x.keys() == y.keys() and all(torch.equal(x[m], y[m]) for m in x), (uid, view)
    for name in ("teacher", "baseline", "student"):
        want, got = load_file(str(tmp_path / "single" / f"{name}.safetensors")), \
            load_file(str(runs[0] / f"{name}.safetensors"))
        assert want.keys() == got.keys()
        for k in want:
            a, b = _without_invariant_directions(k, want[k]), _without_invariant_directions(k, got[k])
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m, k=f"{name} {k}": f"{k}: {m}")
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert list(summary) == ["teacher", "baseline", "student"]
    assert all(len(s["subsets"]) == 15 for s in summary.values())
    # evaluation: each rank scored its share of the test clips (drop draws keyed per clip), gathered
    alone = json.loads((tmp_path / "single" / "summary.json").read_text())
    for row in summary:
        assert summary[row]["subsets"] == alone[row]["subsets"], row
        assert summary[row]["drop_curve"] == alone[row]["drop_curve"], row


def _without_invariant_directions(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` less the parameters whose true gradient is zero: the attention's key bias (softmax
    ignores a shift shared by all keys) and the keypoint maps' bias (a spatial softmax likewise).
    Their gradients are float noise, which Adam scales up to full-size steps, so they differ
    between any two reduction orders and say nothing about the data a rank saw."""
    if name.endswith("self_attn.in_proj_bias"):
        n = t.numel() // 3
        return torch.cat([t[:n], t[2 * n:]])
    if name.endswith("keypoints.maps.bias"):
        return t[:0]
    return t


def test_dropout_ramp_rises_linearly_to_the_rate(tiny_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``student.dropout_ramp_epochs``: the rate climbs from p/ramp to p over the first epochs, then
    stays; 0 (the default) keeps the paper's constant rate."""
    import actdistill.engine.clips as clips
    import actdistill.engine.karmma as karmma

    seen: list[float] = []
    real = clips.modality_dropout

    def spy(present, p, gen):  # type: ignore[no-untyped-def]
        seen.append(round(float(p), 4))
        return real(present, p, gen)

    monkeypatch.setattr(clips, "modality_dropout", spy)  # drawn per sample by the training loader
    for ramp, want in ((2, [0.25, 0.5]), (0, [0.5])):
        seen.clear()
        cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY,
                                 "student.optim.epochs=3", f"student.dropout_ramp_epochs={ramp}"])
        run = tmp_path / f"run{ramp}"
        run.mkdir()
        pipe = karmma.KarmmaPipeline(cfg, run)
        pipe.load_data()
        pipe.train_row("baseline_delta", None)
        assert sorted(set(seen)) == want and seen[-1] == 0.5


def test_an_unlabelled_test_split_is_a_clear_error(tiny_root: Path, tmp_path: Path) -> None:
    """EPIC's test split has no verb/noun: evaluating on it must say so, not report NaN accuracy."""
    from actdistill.engine.karmma import KarmmaPipeline

    cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY,
                             "data.test_split=test"])
    pipe = KarmmaPipeline(cfg, tmp_path)
    with pytest.raises(ValueError, match=r"test_split='test'.*no verb/noun labels"):
        pipe.load_data()


def test_evaluate_row_encodes_once_with_the_same_results(tiny_root: Path, tmp_path: Path) -> None:
    """``evaluate_row`` encodes each view once and reruns only the fusion per mask; every subset,
    drop-curve point and logit must equal the whole model run for every mask."""
    import torch

    from actdistill.engine.karmma import KarmmaPipeline

    cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY])
    pipe = KarmmaPipeline(cfg, tmp_path)
    pipe.load_data()
    model = pipe.train_row("baseline_delta", None)
    whole = pipe.evaluate("whole", lambda inp, pr: model(inp, pr)["logits"], pipe.test_split)
    once = pipe.evaluate_row("once", model)
    assert once["subsets"] == whole["subsets"] and once["drop_curve"] == whole["drop_curve"]
    for task, logits in whole["full"]["logits"].items():
        torch.testing.assert_close(once["full"]["logits"][task], logits, rtol=0, atol=1e-5)


def test_unimodal_aux_loss_reads_only_present_rows() -> None:
    """The auxiliary loss is each present modality's own cross-entropy, averaged over modalities;
    logits of rows where a modality is absent (zero-filled tokens) must not count."""
    import torch
    import torch.nn.functional as F

    from actdistill.engine.karmma import unimodal_aux_loss

    torch.manual_seed(0)
    mods = ("rgb", "audio")
    labels = {"verb": torch.tensor([0, 1, 2]), "noun": torch.tensor([1, 1, 0])}
    out = {"unimodal_logits": {m: {"verb": torch.randn(3, 3), "noun": torch.randn(3, 2)} for m in mods}}
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    got = unimodal_aux_loss(out, mask, labels, mods)
    want = []
    for j, m in enumerate(mods):
        rows = mask[:, j]
        want.append(sum(F.cross_entropy(out["unimodal_logits"][m][t][rows], y[rows]) for t, y in labels.items()) / 2)
    torch.testing.assert_close(got, torch.stack(want).mean())
    out["unimodal_logits"]["rgb"]["verb"][2] += 100.0  # rgb is absent from row 2
    torch.testing.assert_close(unimodal_aux_loss(out, mask, labels, mods), got)
    assert float(unimodal_aux_loss(out, torch.zeros(3, 2, dtype=torch.bool), labels, mods)) == 0.0


def _tiny_pipe(tiny_root: Path, tmp_path: Path, name: str, *overrides: str):
    """A loaded pipeline on the tiny data with ``overrides``, running in ``tmp_path / name``."""
    from actdistill.engine.karmma import KarmmaPipeline

    cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY, *overrides])
    run = tmp_path / name
    run.mkdir()
    pipe = KarmmaPipeline(cfg, run)
    pipe.load_data()
    return pipe


def test_unimodal_aux_trains_the_encoders_and_saves_only_the_row(tiny_root: Path, tmp_path: Path) -> None:
    """``student.unimodal_aux``: the auxiliary heads change training (different weights) but are not
    part of the saved row, which loads into a plain row of the same kind."""
    import torch

    from actdistill.engine.checkpoint import load_weights
    from actdistill.models.fusion import MultimodalRecognizer

    trained = {}
    for w in (0.0, 1.0):
        pipe = _tiny_pipe(tiny_root, tmp_path, f"aux{w}", f"student.unimodal_aux={w}")
        model = pipe.train_row("baseline_delta", None)
        assert isinstance(model, MultimodalRecognizer)
        fresh = pipe.build_row("baseline_delta")
        load_weights(fresh, pipe.run_dir / "baseline_delta.safetensors")  # strict: no aux.* keys, none missing
        trained[w] = fresh.state_dict()
    enc = "encoders.rgb.backbone.0.conv.weight"
    assert not torch.equal(trained[0.0][enc], trained[1.0][enc])


@pytest.mark.parametrize("missing", ["tokens", "mask"])
def test_single_passes_equal_the_model_given_one_modality(missing: str) -> None:
    """``student.single_passes``: the one batched fusion call gives, for every row where a
    modality is present, exactly the logits the row's model gives that modality alone."""
    import torch

    from actdistill.engine.karmma import TrainingExtras
    from actdistill.models.fusion import build_karmma

    torch.manual_seed(0)
    mods = ("rgb", "audio", "depth")
    model = build_karmma(mods, {"verb": 3, "noun": 4}, size="tiny", missing=missing, dropout=0.0).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {"rgb": torch.rand(4, 2, 3, 32, 32, generator=g), "audio": torch.randn(4, 2, 1, 32, 24, generator=g),
              "depth": torch.rand(4, 2, 1, 32, 32, generator=g)}
    present = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)  # depth only in row 3
    extras = TrainingExtras(model, {"verb": 3, "noun": 4}, aux=False, singles=True).eval()
    with torch.no_grad():
        out = extras(inputs, present)
        assert "unimodal_logits" not in out and set(out["single_logits"]) == set(mods)
        for j, m in enumerate(mods):
            rows, logits = out["single_logits"][m]
            assert rows.tolist() == present[:, j].nonzero().squeeze(1).tolist()
            only = torch.zeros_like(present)
            only[:, j] = True
            alone = model({m: inputs[m][rows]}, only[rows])["logits"]
            for t, v in logits.items():
                torch.testing.assert_close(v, alone[t], rtol=1e-5, atol=1e-5)


def test_single_passes_train_every_kind_and_save_only_the_row(tiny_root: Path, tmp_path: Path) -> None:
    """The single-pass loss changes training of the rows with dropout (CE rows, KD rows whose
    single passes learn from the labels, and KD rows that distil them from the teacher on the
    dropped input or on all modalities), and the saved row is the plain architecture."""
    import torch

    from actdistill.engine.checkpoint import load_weights

    fusion = "fusion.blocks.layers.0.linear1.weight"
    for kind, extra in (("baseline_delta", []), ("student", ["student.teacher_input=dropped"]),
                        ("student", ["student.teacher_input=dropped", "student.single_pass_target=teacher"]),
                        ("student", ["student.teacher_input=all", "student.single_pass_target=teacher"])):
        trained = {}
        for w in (0.0, 1.0):
            pipe = _tiny_pipe(tiny_root, tmp_path, f"{kind}{len(extra)}{len(extra) and extra[0][-3:]}{w}",
                              "student.unimodal_aux=0", f"student.single_passes={w}", *extra)
            teacher = None
            if kind == "student":
                ext = pipe.build_extractors()
                pipe.teacher_tokens(ext)
                teacher = pipe.train_teacher(ext)
            pipe.train_row(kind, teacher)
            fresh = pipe.build_row(kind)
            load_weights(fresh, pipe.run_dir / f"{kind}.safetensors")
            trained[w] = fresh.state_dict()
        assert not torch.equal(trained[0.0][fusion], trained[1.0][fusion]), (kind, extra)


def test_teacher_single_passes_change_training_and_save_a_plain_teacher(tiny_root: Path, tmp_path: Path) -> None:
    """``teacher.single_passes``: the teacher's fusion trains on each modality alone too; the saved
    teacher is the plain architecture (strict load)."""
    import torch

    from actdistill.engine.checkpoint import load_weights
    from actdistill.engine.karmma import build_teacher

    trained = {}
    for w in (0.0, 1.0):
        pipe = _tiny_pipe(tiny_root, tmp_path, f"teacher{w}", f"teacher.single_passes={w}")
        ext = pipe.build_extractors()
        pipe.teacher_tokens(ext)
        pipe.train_teacher(ext)
        fresh = build_teacher(pipe.cfg, pipe.modalities, pipe.heads, pipe.cfg.data.sampling.num_frames)
        load_weights(fresh, pipe.run_dir / "teacher.safetensors")
        trained[w] = fresh.state_dict()
    key = "fusion.blocks.layers.0.linear1.weight"
    assert not torch.equal(trained[0.0][key], trained[1.0][key])


def test_teacher_logits_for_all_modalities_are_computed_once(tiny_root: Path, tmp_path: Path) -> None:
    """``teacher_input: all``: the precomputed logits of every training view equal what the frozen
    teacher gives a mini-batch of the same samples at a training step."""
    import torch

    from actdistill.engine.karmma import KarmmaPipeline

    cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY])
    pipe = KarmmaPipeline(cfg, tmp_path)
    pipe.load_data()
    ext = pipe.build_extractors()
    pipe.teacher_tokens(ext)
    teacher = pipe.train_teacher(ext)
    from actdistill.engine.clips import CollateViews, ViewDataset
    from actdistill.engine.tasks import RowTask, row_spec

    task = RowTask(pipe.build_row("student"), row_spec("student"), pipe.heads, pipe.modalities, teacher=teacher,
                   token_counts=pipe.token_counts)
    fixed = pipe.teacher_logits_all(task)
    assert len(fixed) == len(pipe.train_split) and fixed.views == pipe.train_split.views
    rows = [2, 0, 1]
    ds = ViewDataset(pipe.train_split, 0, {"teacher_tokens": pipe.train_tokens, "teacher_logits": fixed})
    b = CollateViews(pipe.train_split, ds.extra)([ds[i] for i in rows])
    step = task.teacher_logits(b["teacher_tokens"], b["present"])
    for t, v in step.items():
        torch.testing.assert_close(b["teacher_logits"][t], v, rtol=0, atol=1e-5)


def test_init_unimodal_starts_every_fused_row_from_the_fits(tiny_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``student.init_unimodal``: the listed encoders are fitted alone once and every fused row
    starts from those weights (rows differ only in training); a student encoder configured like the
    teacher's extractor reuses the teacher's cached fit instead of fitting again."""
    import torch

    from actdistill.engine import karmma as K
    from actdistill.engine.checkpoint import load_weights

    pipe = _tiny_pipe(tiny_root, tmp_path, "init", "student.init_unimodal=[rgb,depth]",
                      "teacher.model.encoders.depth.shift=0.125", "student.model.encoders.depth.shift=0.125")
    ext = pipe.build_extractors()  # fits the teacher's flow, audio, depth (the student's depth: same config)
    pipe.teacher_tokens(ext)
    fits: list[str] = []
    real_fit = K.KarmmaPipeline.fit_unimodal
    monkeypatch.setattr(K.KarmmaPipeline, "fit_unimodal",
                        lambda self, m, spec=None, label="unimodal": fits.append(m) or real_fit(self, m, spec, label))
    paths = pipe.unimodal_init()
    assert set(paths) == {"rgb", "depth"}
    assert paths["depth"].parent.name == "unimodal"
    assert pipe.timings.get("student_unimodal_rgb", 0) > 0 and "student_unimodal_depth" not in pipe.timings
    captured = {}
    real_build = pipe.build_row
    monkeypatch.setattr(pipe, "build_row", lambda kind: captured.setdefault(kind, real_build(kind)))
    monkeypatch.setattr(K, "fit", lambda model, *a, **k: None)  # no training: look at the start point
    teacher = pipe.train_teacher(ext)
    for kind in ("baseline", "student"):
        captured.clear()
        pipe.train_row(kind, None if kind == "baseline" else teacher)
        for m in ("rgb", "depth"):
            fitted = real_build(kind).encoders[m]
            load_weights(fitted, paths[m])
            for k, v in fitted.state_dict().items():
                assert torch.equal(captured[kind].encoders[m].state_dict()[k], v), (kind, m, k)
        torch.manual_seed(pipe.cfg.run.seed)
        fresh = real_build(kind).encoders["flow"].state_dict()  # not listed: the seeded from-scratch init
        assert all(torch.equal(captured[kind].encoders["flow"].state_dict()[k], v) for k, v in fresh.items())
    assert fits == ["rgb", "depth"]  # fitted (or found) once, not once per row
    with pytest.raises(ValueError, match=r"student\.init_unimodal names \['boxes'\]"):
        _tiny_pipe(tiny_root, tmp_path, "bad", "student.init_unimodal=[boxes]").unimodal_init()


def test_single_pass_target_switches_the_kd_rows_loss(tiny_root: Path, tmp_path: Path) -> None:
    """``student.single_pass_target``: a KD row's single passes learn from the labels or from the
    teacher, which trains it differently; an unknown value (or teacher_input) is a clear error."""
    import torch

    trained = {}
    for target in ("labels", "teacher"):
        pipe = _tiny_pipe(tiny_root, tmp_path, f"target-{target}", "student.single_passes=1",
                          "student.teacher_input=dropped", f"student.single_pass_target={target}")
        ext = pipe.build_extractors()
        pipe.teacher_tokens(ext)
        trained[target] = pipe.train_row("student", pipe.train_teacher(ext)).state_dict()
    key = "fusion.blocks.layers.0.linear1.weight"
    assert not torch.equal(trained["labels"][key], trained["teacher"][key])
    for bad in ("student.single_pass_target=logits", "student.teacher_input=some"):
        pipe = _tiny_pipe(tiny_root, tmp_path, f"bad-{bad.split('=')[0][8:]}", bad)
        with pytest.raises(ValueError, match="must be one of"):
            pipe.train_row("baseline_delta", None)
