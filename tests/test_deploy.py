"""Deployment: ``Recognizer.from_run(...).predict(video)``, ``actdistill predict`` and ``export onnx``.

One tiny KARMMA run (tiny synthetic data, tiny models, one epoch) is trained per module and
shared by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actdistill.cli import main
from actdistill.data.datasets.synthetic import write_synthetic_epic
from actdistill.demo import demo_config
from actdistill.deploy import Recognizer
from actdistill.engine.karmma import run_karmma
from actdistill.rundir import save_config
from tests.test_karmma_pipeline import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("deploy")
    root = base / "tiny"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    over = [o for o in TINY if not o.startswith("rows=")]
    cfg = demo_config(None, [f"data.root={root}", f"cache.root={base / 'cache'}", *over,
                             "rows=[student,late_fusion]", "eval.efficiency=false"])
    run_dir = base / "run"
    run_dir.mkdir()
    save_config(run_dir, cfg)
    run_karmma(cfg, run_dir)
    return run_dir, root


def _video(root: Path) -> Path:
    return sorted(root.glob("P*/videos/*.MP4"))[0]


def test_model_info_written_with_the_run(run: tuple[Path, Path]) -> None:
    run_dir, _ = run
    info = json.loads((run_dir / "model.json").read_text())
    assert info["modalities"] == ["rgb", "flow", "audio", "depth"]
    assert set(info["heads"]) == {"verb", "noun"}
    assert len(info["classes"]["verb"]) == info["heads"]["verb"]
    assert info["input_shapes"]["rgb"] == [4, 3, 28, 28]


def test_predict_a_video_with_every_modality_it_has(run: tuple[Path, Path]) -> None:
    run_dir, root = run
    rec = Recognizer.from_run(run_dir)
    video = _video(root)
    pred = rec.predict(video, top=3)
    # the MP4 gives rgb, flow (TV-L1 from its frames) and audio; depth needs its PNG folder
    assert pred.used == ["rgb", "flow", "audio"]
    assert "depth" in pred.missing and "--depth" in pred.missing["depth"]
    assert set(pred.top_k) == {"verb", "noun", "action"}
    for task, items in pred.top_k.items():
        assert len(items) == 3
        probs = [it["prob"] for it in items]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1, task
    v, n = pred.top_k["verb"][0], pred.top_k["noun"][0]
    assert pred.top_k["action"][0]["label"] == f"{v['label']} {n['label']}"
    assert pred.top_k["action"][0]["prob"] == pytest.approx(v["prob"] * n["prob"], rel=1e-5)
    # with the depth folder all four are used; the inputs have the shapes the model was trained on
    depth = video.parents[1] / "depth_frames" / video.stem
    inputs, present, missing = rec.preprocess(video, depth=depth)
    assert present.tolist() == [[True, True, True, True]] and not missing
    for m, shape in rec.info["input_shapes"].items():
        assert list(inputs[m].shape[2:]) == shape, m


def test_predict_a_subset_and_a_frame_folder(run: tuple[Path, Path]) -> None:
    run_dir, root = run
    rec = Recognizer.from_run(run_dir)
    video = _video(root)
    only = rec.predict(video, ["rgb"])
    assert only.used == ["rgb"] and not only.missing
    # the model changes its answer with its input: rgb alone vs rgb + audio differ in probabilities
    both = rec.predict(video, ["rgb", "audio"])
    assert both.used == ["rgb", "audio"]
    assert only.top_k["verb"][0]["prob"] != both.top_k["verb"][0]["prob"]
    frames = video.parents[1] / "rgb_frames" / video.stem
    folder = rec.predict(frames, ["rgb", "audio"])  # a frame folder has no audio
    assert folder.used == ["rgb"] and "audio" in folder.missing
    with pytest.raises(ValueError, match="imu"):
        rec.predict(video, ["imu"])


def test_predict_a_sample_folder_with_one_entry_per_modality(run: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """rgb.mp4 and depth/ named after their modalities; flow and audio still come from the video."""
    run_dir, root = run
    video = _video(root)
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / "rgb.mp4").symlink_to(video)
    (sample / "depth").symlink_to(video.parents[1] / "depth_frames" / video.stem)
    assert main(["predict", str(run_dir), str(sample), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["modalities"] == ["rgb", "flow", "audio", "depth"] and not out["missing"]
    assert all(len(v) == 2 for v in out["top_k"].values())


def test_export_out_that_is_a_file_or_read_only(run: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import read_only_dir

    run_dir, _ = run
    target = tmp_path / "deploy"
    target.write_text("a file")
    assert main(["export", "onnx", str(run_dir), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"actdistill: error: {target}: output folder (--out) is an existing file, not a folder"
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only_dir(ro):
        assert main(["export", "onnx", str(run_dir), "--out", str(ro)]) == 2
    assert capsys.readouterr().err.strip() == f"actdistill: error: {ro}: output folder (--out) is not writable"


def test_recognizer_errors(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, _ = run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Recognizer.from_run(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown row"):
        Recognizer.from_run(run_dir, "ensemble")
    with pytest.raises(FileNotFoundError, match=r"baseline\.safetensors"):
        Recognizer.from_run(run_dir, "baseline")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    rec = Recognizer.from_run(run_dir)
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        rec.predict(bad)


def test_rows_rebuilt_from_the_run_reproduce_its_predictions(run: tuple[Path, Path]) -> None:
    """Teacher (frozen extractors + fusion, all from teacher.safetensors) and student rebuilt by
    ``Recognizer.from_run`` predict, on the run's cached test clips, exactly the per-sample
    predictions its evaluation wrote."""
    import csv

    from actdistill.data.builder import load_index
    from actdistill.engine.clips import eval_loader, load_clips

    run_dir, root = run
    for row in ("teacher", "student"):
        rec = Recognizer.from_run(run_dir, row)
        d = rec.cfg.data
        split = load_clips(d, d.test_split, False, d.sampling.test_views, rec.cfg.cache.root,
                           load_index(d, d.test_split), False)
        b = next(iter(eval_loader(split, len(split))))
        inputs = {m: torch.stack([v[m] for v in b["views"]], 1) for m in b["views"][0]}
        logits = rec.logits(inputs, b["present"])
        with open(run_dir / f"predictions_{row}.csv", newline="") as f:
            rows = {r["uid"]: r for r in csv.DictReader(f)}
        for task in ("verb", "noun"):
            want = [int(rows[u][f"{task}_pred"]) for u in split.uids]
            assert logits[task].argmax(1).tolist() == want, (row, task)
    pred = Recognizer.from_run(run_dir, "teacher").predict(_video(root), ["rgb", "audio"])
    assert pred.used == ["rgb", "audio"] and pred.row == "teacher"


def test_cli_predict_json(run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, root = run
    assert main(["predict", str(run_dir), str(_video(root)), "--modalities", "rgb,flow", "--json",
                 "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["modalities"] == ["rgb", "flow"] and len(out["top_k"]["noun"]) == 2
    assert main(["predict", str(run_dir), str(root / "missing.mp4")]) == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_export_onnx_serves_every_subset(run: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from actdistill.deploy.export import export_onnx

    run_dir, root = run
    report = export_onnx(run_dir, tmp_path / "onnx")
    assert len(report["validation"]) == 16  # 15 subsets + a batch mixing subsets row by row
    assert report["max_abs_diff"] < 1e-4, report["validation"]
    card = (tmp_path / "onnx" / "MODEL_CARD.md").read_text()
    assert "`present`" in card and "rgb+flow+audio+depth" in card and "log(mel power" in card
    labels = json.loads((tmp_path / "onnx" / "labels.json").read_text())
    assert set(labels) >= {"verb", "noun"}
    # the graph on a real preprocessed video (audio and depth absent) matches the Recognizer
    rec = Recognizer.from_run(run_dir)
    inputs, present, _ = rec.preprocess(_video(root), ["rgb", "flow"])
    sess = ort.InferenceSession(report["onnx"], providers=["CPUExecutionProvider"])
    feeds = {m: np.zeros([1, *rec.info["input_shapes"][m]], np.float32) for m in rec.modalities}
    feeds.update({m: x[:, 0].numpy() for m, x in inputs.items()})
    got = dict(zip(rec.heads, sess.run(list(rec.heads), {**feeds, "present": present.numpy()})))
    want = rec.logits(inputs, present)
    for t in rec.heads:
        assert torch.allclose(torch.from_numpy(got[t]), want[t], atol=1e-4), t
    # late fusion has no single fused graph
    with pytest.raises(ValueError, match="LateFusion"):
        export_onnx(run_dir, tmp_path / "lf", row="late_fusion")


# -- few-shot: a support folder of class folders ------------------------------------------------------


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import shutil

    from actdistill.data.datasets.synthetic_fewshot import write_synthetic_fewshot
    from actdistill.engine.fewshot import run_fewshot
    from tests.test_fewshot_pipeline import tiny_config

    base = tmp_path_factory.mktemp("fewshot_deploy")
    root = base / "data"
    write_synthetic_fewshot(root, seed=0, size="tiny", progress=False)
    cfg = tiny_config(root, base, ["otam", "clip_m2df"], episodes=4)
    run_dir = base / "run"
    run_dir.mkdir()
    save_config(run_dir, cfg)
    run_fewshot(cfg, run_dir)
    # a support set in the class-folder layout users have: <support>/<class>/<video>
    support = base / "support"
    videos = sorted(root.glob("*.mp4"))
    for k, name in enumerate(["Pushing_something", "Lifting_something", "Dropping_something"]):
        (support / name).mkdir(parents=True)
        shutil.copy(videos[k], support / name / videos[k].name)
    return run_dir, support


def test_fewshot_predict_against_a_support_folder(fewshot_run: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.deploy import FewShotRecognizer

    run_dir, support = fewshot_run
    otam = FewShotRecognizer.from_run(run_dir, "otam")
    # a query identical to one 1-shot support video: OTAM distance 0 to that class, its top class
    for cls in ("Pushing_something", "Dropping_something"):
        video = next((support / cls).glob("*.mp4"))
        pred = otam.predict(video, support, top=3)
        assert pred.top_k["class"][0]["label"] == cls.replace("_", " "), pred.top_k
        assert pred.info["way"] == 3 and sum(pred.info["shots"].values()) == 3
    m2df = FewShotRecognizer.from_run(run_dir)  # clip_m2df by default: text prompts from folder names
    assert m2df.method == "clip_m2df"
    pred = m2df.predict(next((support / "Lifting_something").glob("*.mp4")), support)
    assert {it["label"] for it in pred.top_k["class"]} == {"Pushing something", "Lifting something",
                                                          "Dropping something"}
    assert sum(it["prob"] for it in pred.top_k["class"]) == pytest.approx(1.0, abs=1e-5)
    # the CLI picks the few-shot path from the run directory
    video = next((support / "Pushing_something").glob("*.mp4"))
    assert main(["predict", str(run_dir), str(video), "--support", str(support), "--method", "otam", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top_k"]["class"][0]["label"] == "Pushing something" and out["way"] == 3
    assert main(["predict", str(run_dir), str(video)]) == 2
    assert "--support" in capsys.readouterr().err
    with pytest.raises(ValueError, match="trx"):
        FewShotRecognizer.from_run(run_dir, "trx")


def test_fewshot_support_with_an_empty_class_folder_is_refused(fewshot_run: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An empty class folder would silently make the 3-way question a 2-way one."""
    import shutil

    from actdistill.data.records import DataError
    from actdistill.deploy import FewShotRecognizer

    run_dir, support = fewshot_run
    mine = tmp_path / "support"
    shutil.copytree(support, mine)
    (mine / "Spinning_something").mkdir()
    with pytest.raises(DataError, match="Spinning_something: support class folder has no videos"):
        FewShotRecognizer.from_run(run_dir, "otam").support_index(mine)
    video = next((mine / "Pushing_something").glob("*.mp4"))
    assert main(["predict", str(run_dir), str(video), "--support", str(mine), "--method", "otam"]) == 2
    assert str(mine / "Spinning_something") in capsys.readouterr().err


def test_bench_deploy_and_teacher_cache_smoke(run: tuple[Path, Path], tmp_path: Path) -> None:
    """The benchmarks run end to end on a tiny run and write their JSON (timings are not asserted)."""
    run_dir, _ = run
    out = tmp_path / "deploy.json"
    assert main(["bench", "deploy", "--run", str(run_dir), "--subsets", "full,rgb",
                 "--runtimes", "eager,onnxruntime,eager-bf16", "--warmup", "0", "--repeats", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {(r["model"], r["runtime"], r["subset"], r["batch"]) for r in res["rows"]} == {
        (m, rt, s, b) for m in ("teacher", "student") for rt in ("eager", "onnxruntime", "eager-bf16")
        for s in ("rgb", "rgb+flow+audio+depth") for b in (1, 16)}
    assert res["matmul_peak"]["gflops_per_s"] > 0
    assert res["achieved"]["teacher"]["gflops_per_clip"] > res["achieved"]["student"]["gflops_per_clip"]
    out = tmp_path / "cache.json"
    assert main(["bench", "teacher-cache", "--run", str(run_dir), "--batch", "4", "--warmup", "0", "--repeats", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["per_step_ms"]) == {"cached tokens", "re-run extractors", "extract (cache build)"}
