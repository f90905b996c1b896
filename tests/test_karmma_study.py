"""Seed studies: per-clip scores, the interval statistics and ``karmma study`` end to end (tiny data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from actdistill.config import ConfigError
from actdistill.demo import demo_config
from actdistill.evaluation.protocols import evaluate_missing_modalities
from actdistill.evaluation.study import paired_bootstrap, seed_interval, t975, verdict
from tests.test_karmma_pipeline import TINY, tiny_root  # noqa: F401  (fixture)


def test_per_sample_scores_average_to_the_reported_accuracies() -> None:
    gen = torch.Generator().manual_seed(0)
    mods = ["a", "b"]
    batches = []
    for i in range(3):
        present = torch.rand(8, 2, generator=gen) < 0.8
        present[0] = torch.tensor([False, True])  # a clip without "a": left out of a's subset
        batches.append({"present": present, "labels": {"verb": torch.randint(0, 3, (8,), generator=gen),
                                                      "noun": torch.randint(0, 4, (8,), generator=gen)},
                        "uid": [f"s{i}-{j}" for j in range(8)], "x": torch.randn(8, 2, 7, generator=gen)})

    def predict(batch, present):  # logits that depend on which modalities are present
        x = (batch["x"] * present[:, :, None]).sum(1)
        return {"verb": x[:, :3], "noun": x[:, 3:]}

    res = evaluate_missing_modalities(predict, batches, mods, [0.0, 0.5, 0.9], seed=3, drop_repeats=2)
    ps = res["per_sample"]
    for name, acc in res["subsets"].items():
        v = ps["subsets"][name]
        assert v.shape == (24,)
        assert float(v.nanmean()) == pytest.approx(acc, abs=1e-4)
        assert int((~v.isnan()).sum()) == res["subset_metrics"][name]["samples"]
    assert math.isnan(float(ps["subsets"]["a"][0]))
    assert ps["drop"].shape == (3, 24)
    for i, acc in enumerate(res["drop_curve"]):
        assert float(ps["drop"][i].nanmean()) == pytest.approx(acc, abs=1e-4)
    # a clip's score at p = 0.5 is the mean of its two draws: 0, 50 or 100
    assert set(ps["drop"][1].tolist()) <= {0.0, 50.0, 100.0}


def test_seed_interval_and_paired_bootstrap() -> None:
    s = seed_interval([70.0, 72.0, 68.0, 71.0, 69.0])
    half = 2.776 * np.std([70, 72, 68, 71, 69], ddof=1) / math.sqrt(5)
    assert s["mean"] == 70.0 and s["ci95"] == pytest.approx([70 - half, 70 + half])
    assert t975(4) == 2.776 and 1.96 < t975(500) < 1.98
    assert math.isnan(seed_interval([70.0])["ci95"][0])

    rng = np.random.default_rng(0)
    a = (rng.random((5, 300)) < 0.6) * 100.0
    same = paired_bootstrap(a, a)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0] and verdict(same) == "within noise"
    better = np.maximum(a, (rng.random((5, 300)) < 0.5) * 100.0)  # right wherever a is, and more
    d = paired_bootstrap(better, a)
    assert d["ci95"][0] > 0 and d["p_a_better"] == 1.0 and verdict(d) == "A ahead"
    assert paired_bootstrap(a, better)["ci95"][1] < 0
    # shifting A by a constant shifts the mean and the interval by it (paired: B's noise cancels)
    shifted = paired_bootstrap(a + 5.0, a)
    assert shifted["mean"] == pytest.approx(5.0) and shifted["ci95"] == pytest.approx([5.0, 5.0])
    # NaN cells (clips not scored) are left out of both rows
    holes = a.copy()
    holes[:, :10] = np.nan
    assert paired_bootstrap(holes, a)["units"] == 290
    with pytest.raises(ValueError, match="seeds, units"):
        paired_bootstrap(a, a[:, :10])


def _study_cfg(tiny_root: Path, tmp_path: Path, *extra: str):  # noqa: F811
    return demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / 'cache'}", *TINY,
                              "rows=[baseline,student]", "eval.efficiency=false",
                              "data.test_split=train",  # tiny's held-out split has 3 clips: every score 0
                              *extra])


def test_study_runs_seeds_pairs_rows_and_resumes(tiny_root: Path, tmp_path: Path,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.engine.karmma import read_per_clip
    from actdistill.engine.karmma_study import run_study

    out = tmp_path / "study"
    study = run_study(_study_cfg(tiny_root, tmp_path), 2, out, teacher="shared", resamples=200)
    # the shared teacher is scored once: seed 1 reads seed 0's evaluation (the same numbers)
    assert len(list((tmp_path / "cache" / "teacher-eval").glob("*.pt"))) == 1
    assert capsys.readouterr().out.count("teacher: evaluation read from") == 1
    for name in ("study.json", "study.md", "study_differences.png", "seed-0/report.md", "seed-1/per_clip.safetensors"):
        assert (out / name).is_file(), name
    assert study["seeds"] == [0, 1] and study["rows"] == ["teacher", "baseline", "student"]
    # the shared teacher: seed 1 loaded seed 0's (same weights file content), the rows were retrained
    t0, t1 = (out / f"seed-{k}/teacher.safetensors" for k in (0, 1))
    assert t0.read_bytes() == t1.read_bytes()
    assert (out / "seed-0/logs/teacher").is_dir() and not (out / "seed-1/logs/teacher").exists()
    assert (out / "seed-0/student.safetensors").read_bytes() != (out / "seed-1/student.safetensors").read_bytes()
    assert all(study["per_row"][r]["all"]["mean"] > 0 for r in study["rows"])
    # per-row numbers over seeds are each seed's own summary
    for k in (0, 1):
        summary = json.loads((out / f"seed-{k}/summary.json").read_text())
        for row in study["rows"]:
            assert study["per_row"][row]["all"]["per_seed"][k] == pytest.approx(
                summary[row]["subsets"]["rgb+flow+audio+depth"], abs=1e-4)
            assert study["per_row"][row]["auc"]["per_seed"][k] == pytest.approx(summary[row]["auc"], abs=1e-3)
    # the paired difference is the mean over seeds and clips of the per-clip difference
    diffs = []
    for k in (0, 1):
        tensors, meta = read_per_clip(out / f"seed-{k}/per_clip.safetensors")
        assert meta["rows"] == ["teacher", "baseline", "student"]
        diffs.append((tensors["baseline/drop"][-1] - tensors["student/drop"][-1]).numpy())
    pair = study["paired"]["baseline - student"]
    assert pair["p=0.9"]["mean"] == pytest.approx(float(np.nanmean(np.stack(diffs))), abs=1e-4)
    assert set(pair) >= {"all", "rgb", "flow", "audio", "depth", "p=0.9", "auc"}
    assert "within noise" in (out / "study.md").read_text() or "ahead" in (out / "study.md").read_text()

    # rerunning reuses both seeds (nothing retrained) and writes the same study
    before = (out / "seed-1/student.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    again = run_study(_study_cfg(tiny_root, tmp_path), 2, out, teacher="shared", resamples=200)
    assert "seed 0: reusing" in capsys.readouterr().out
    assert (out / "seed-1/student.safetensors").stat().st_mtime_ns == before
    assert again["per_row"] == study["per_row"]
    # another configuration into the same study directory is refused
    with pytest.raises(ConfigError, match="another configuration"):
        run_study(_study_cfg(tiny_root, tmp_path, "student.alpha=0.9"), 2, out, teacher="shared")


def test_teacher_weights_from_other_extractors_are_refused(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    from actdistill.engine.karmma import KarmmaPipeline

    def pipe(name: str, *extra: str) -> KarmmaPipeline:
        cfg = _study_cfg(tiny_root, tmp_path, *extra)
        run = tmp_path / name
        run.mkdir()
        p = KarmmaPipeline(cfg, run)
        p.load_data()
        return p

    first = pipe("a")
    ext = first.build_extractors()
    first.teacher_tokens(ext)
    first.train_teacher(ext)
    weights = tmp_path / "a" / "teacher.safetensors"
    # the same teacher seed: the file loads and gives the trained teacher back
    same = pipe("b", f"teacher.weights={weights}", "run.seed=5", "teacher.seed=0")
    ext = same.build_extractors()
    same.teacher_tokens(ext)
    loaded = same.train_teacher(ext)
    assert (tmp_path / "b" / "teacher.safetensors").read_bytes() == weights.read_bytes()
    assert loaded.fusion is not None
    # another teacher seed builds other extractors (random rgb init, other unimodal fits): refused
    other = pipe("c", f"teacher.weights={weights}", "run.seed=5")
    ext = other.build_extractors()
    other.teacher_tokens(ext)
    with pytest.raises(ConfigError, match=r"teacher\.seed"):
        other.train_teacher(ext)
