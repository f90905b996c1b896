"""``actdistill fewshot study``: seeds differ in training only, every seed is scored on the same test
episodes, the study's numbers are the seed directories' own, and a rerun reuses or resumes seeds.

One 2-seed study of two methods on the ``tiny`` synthetic few-shot dataset (tiny frame CNN) is run
once per module; the tests read it (or a copy of it).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from actdistill.cli import main
from actdistill.config import to_dict
from actdistill.data.datasets.synthetic_fewshot import write_synthetic_fewshot
from tests.test_fewshot_pipeline import tiny_config

METHODS = ["clip_m2df", "protonet"]


@pytest.fixture(scope="module")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fewshot_study_data")
    write_synthetic_fewshot(root, seed=0, size="tiny", progress=False)
    return root


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _experiment(root: Path, tmp: Path) -> Path:
    # train_views=1: the cold encoding of the training videos is most of this module's time
    cfg = tiny_config(root, tmp, [*METHODS, "otam"], train_views=1)
    cfg.eval.settings = ["3way1shot"]
    exp = tmp / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(cfg)))
    return exp


@pytest.fixture(scope="module")
def study(study_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fewshot_study")
    exp = _experiment(study_root, tmp)
    out = tmp / "study"
    argv = ["fewshot", "study", str(exp), "--seeds", "2", "--methods", ",".join(METHODS), "--out", str(out),
            "--resamples", "300"]
    rc, stdout, stderr = _run(argv)
    assert rc == 0, stderr
    return {"argv": argv, "out": out, "stdout": stdout, "exp": exp, "tmp": tmp,
            "json": json.loads((out / "study.json").read_text())}


def _seed(out: Path, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    d = out / f"seed-{k}"
    return json.loads((d / "summary.json").read_text()), json.loads((d / "episodes.json").read_text())


def test_two_seed_study_pairs_the_same_test_episodes(study: dict[str, Any]) -> None:
    """Seeds differ in their training seeds (and so their weights) but not in their test episodes;
    the study's per-seed numbers are the seed directories' own, and the paired difference is the
    mean over seeds and episodes of A - B per episode."""
    from actdistill.data.episodes import EpisodeSampler
    from actdistill.engine.fewshot import FewShotPipeline, load_run_config, parse_setting

    out, st = study["out"], study["json"]
    assert (out / "study.md").is_file() and (out / "study_differences.png").stat().st_size > 1000
    assert st["seeds"] == [0, 1] and st["methods"] == METHODS and st["settings"] == ["3way1shot"]
    assert st["command"].startswith("actdistill fewshot study ") and "--seeds 2" in st["command"]
    assert [r["reused"] for r in st["runs"]] == [False, False]
    base = st["config"]
    assert [r["run_seed"] for r in st["runs"]] == [base["run"]["seed"], base["run"]["seed"] + 1]
    assert [r["train_seed"] for r in st["runs"]] == [base["train"]["seed"], base["train"]["seed"] + 1]

    seeds = [_seed(out, k) for k in (0, 1)]
    for m in METHODS:
        stat = st["per_method"][m]["3way1shot"]
        assert stat["per_seed"] == [summary[m]["3way1shot"]["acc"] for summary, _ in seeds]
        assert stat["mean"] == pytest.approx(np.mean(stat["per_seed"])) and stat["seeds"] == 2
        assert stat["ci95"][0] <= stat["mean"] <= stat["ci95"][1]
    (pair,) = st["paired"]
    assert pair == "clip_m2df - protonet"
    diff = st["paired"][pair]["3way1shot"]
    a = np.array([eps["clip_m2df"]["3way1shot"] for _, eps in seeds])
    b = np.array([eps["protonet"]["3way1shot"] for _, eps in seeds])
    assert a.shape == (2, 12)
    assert diff["mean"] == pytest.approx(float((a - b).mean()))
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1] and (diff["seeds"], diff["units"]) == (2, 12)
    assert diff["verdict"] in ("A ahead", "B ahead", "within noise")

    # Training differs: every method's weights differ between the seeds, as do the seeds in config.yaml.
    cfgs = [load_run_config(out / f"seed-{k}") for k in (0, 1)]
    assert cfgs[1].run.seed == cfgs[0].run.seed + 1 and cfgs[1].train.seed == cfgs[0].train.seed + 1
    for m in METHODS:
        w0, w1 = (load_file(str(out / f"seed-{k}" / "models" / f"{m}.safetensors")) for k in (0, 1))
        assert w0.keys() == w1.keys() and any(not np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0), m
    # ... the test episodes do not: data and eval are the same, and so is every episode's support and query.
    assert to_dict(cfgs[0].eval) == to_dict(cfgs[1].eval) and to_dict(cfgs[0].data) == to_dict(cfgs[1].data)
    episodes = []
    for c, d in zip(cfgs, ("seed-0", "seed-1")):
        pipe = FewShotPipeline(c, out / d)
        with contextlib.redirect_stdout(io.StringIO()):
            pipe.load_data()
        way, shot = parse_setting("3way1shot")
        sampler = EpisodeSampler.from_index(pipe.test_index, way=way, shot=shot, query=c.eval.query, seed=c.eval.seed)
        episodes.append([sampler.episode(i) for i in range(c.eval.episodes)])
    assert episodes[0] == episodes[1]

    md = (out / "study.md").read_text()
    assert "| clip_m2df |" in md and "| clip_m2df - protonet |" in md and "Student-t" in md and "bootstrap" in md
    assert md.strip() in study["stdout"]  # printed at the end


def test_episodes_json_matches_the_summary_and_episode_order(study: dict[str, Any]) -> None:
    """episodes.json: one accuracy per test episode, averaging to the summary's accuracy; a
    re-evaluation over fewer episodes (``fewshot eval --episodes 5``) gives the same first five."""
    out = study["out"]
    for k in (0, 1):
        summary, eps = _seed(out, k)
        assert set(eps) == set(summary) == set(METHODS)
        for m in METHODS:
            accs = eps[m]["3way1shot"]
            assert len(accs) == summary[m]["3way1shot"]["episodes"] == 12
            assert round(float(np.mean(accs)), 3) == summary[m]["3way1shot"]["acc"]
            assert all(any(abs(a - 100 * j / 3) < 1e-9 for j in range(4)) for a in accs)  # 3 queries per episode
    run = out / "seed-1"
    rc, _, stderr = _run(["fewshot", "eval", str(run), "--episodes", "5"])
    assert rc == 0, stderr
    (evald,) = run.glob("eval-*")
    again = json.loads((evald / "episodes.json").read_text())
    _, eps = _seed(out, 1)
    for m in METHODS:
        assert again[m]["3way1shot"] == eps[m]["3way1shot"][:5]


def test_rerun_reuses_finished_seeds_and_resumes_a_killed_one(study: dict[str, Any], tmp_path: Path) -> None:
    """Rerunning the study reuses both seed directories (no training: weights untouched, same
    numbers); a seed whose results and final weights are gone resumes from its step checkpoints
    to the same weights; a seed directory of another configuration is refused."""
    out = tmp_path / "study"
    shutil.copytree(study["out"], out)
    argv = [*study["argv"]]
    argv[argv.index("--out") + 1] = str(out)
    weights = {p: p.stat().st_mtime_ns for p in out.glob("seed-*/models/*.safetensors")}
    assert len(weights) == 4

    rc, stdout, stderr = _run(argv)
    assert rc == 0, stderr
    assert "seed 0: reused" in stdout and "seed 1: reused" in stdout
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    again = json.loads((out / "study.json").read_text())
    assert [r["reused"] for r in again["runs"]] == [True, True]
    assert again["per_method"] == study["json"]["per_method"] and again["paired"] == study["json"]["paired"]

    # A killed seed: no results, no final weights of one method, its step checkpoints on disk.
    seed1 = out / "seed-1"
    before = _seed(out, 1)
    ref = load_file(str(seed1 / "models" / "protonet.safetensors"))
    for name in ("summary.json", "episodes.json", "models/protonet.safetensors"):
        (seed1 / name).unlink()
    rc, stdout, stderr = _run(argv)
    assert rc == 0, stderr
    assert "seed 0: reused" in stdout and "seed 1: resuming" in stdout
    assert "clip_m2df: reusing trained weights" in stdout and "protonet: resumed at step" in stdout
    new = load_file(str(seed1 / "models" / "protonet.safetensors"))
    assert all(np.array_equal(ref[k].numpy(), new[k].numpy()) for k in ref)
    assert _seed(out, 1) == before
    assert json.loads((out / "study.json").read_text())["per_method"] == study["json"]["per_method"]

    # One seed of the same study: reused, with a warning that no interval over seeds can be given.
    argv1 = [*argv]
    argv1[argv1.index("--seeds") + 1] = "1"
    rc, stdout, stderr = _run(argv1)
    assert rc == 0 and "no interval over seeds" in stderr and "seed 0: reused" in stdout
    one = json.loads((out / "study.json").read_text())
    assert one["per_method"]["protonet"]["3way1shot"]["ci95"] == [None, None]

    # Another training config on the same --out: refused, naming the difference, before any training.
    rc, _, stderr = _run([*argv, "train.lr=0.01"])
    assert rc == 2 and "another configuration" in stderr and "train.lr" in stderr


def test_study_statistics_on_known_numbers(tmp_path: Path) -> None:
    """summarize_study on hand-written seed directories: Student-t over the seeds' summary values,
    the paired mean over seeds x episodes, a constant difference gives a zero-width interval."""
    from actdistill.engine.fewshot_study import method_pairs, summarize_study

    dirs = []
    a = np.array([[100.0, 0.0, 50.0, 50.0], [50.0, 50.0, 100.0, 0.0], [0.0, 100.0, 50.0, 50.0]])
    for k in range(3):
        d = tmp_path / f"seed-{k}"
        d.mkdir()
        eps = {"x": {"s": list(a[k])}, "y": {"s": list(a[k] - 10)}, "z": {"s": list(a[k][::-1])}}
        summary = {m: {"s": {"acc": float(np.mean(v["s"])) + k, "ci95": 0.0, "episodes": 4}} for m, v in eps.items()}
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "episodes.json").write_text(json.dumps(eps))
        dirs.append(d)
    res = summarize_study(dirs, ["x", "y", "z"], ["s"], resamples=200)
    x = res["per_method"]["x"]["s"]
    assert x["per_seed"] == [50.0, 51.0, 52.0] and x["mean"] == pytest.approx(51.0) and x["sd"] == pytest.approx(1.0)
    assert x["ci95"] == pytest.approx([51.0 - 4.303 / 3**0.5, 51.0 + 4.303 / 3**0.5])
    assert list(res["paired"]) == ["x - y", "x - z", "y - z"] == [f"{p} - {q}" for p, q in method_pairs("xyz")]
    xy = res["paired"]["x - y"]["s"]
    assert xy["mean"] == pytest.approx(10.0) and xy["ci95"] == pytest.approx([10.0, 10.0])
    assert xy["verdict"] == "A ahead"
    assert res["paired"]["y - z"]["s"]["mean"] == pytest.approx(float(((a - 10) - a[:, ::-1]).mean()))
    (dirs[2] / "episodes.json").write_text(json.dumps({m: {"s": [1.0, 2.0]} for m in "xyz"}))
    with pytest.raises(ValueError, match="same test episodes"):
        summarize_study(dirs, ["x", "y"], ["s"])


def test_study_cli_help_and_usage_errors(study_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fewshot", "study", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--seeds" in text and "study-<run.name>" in text and "paired" in text
    exp = _experiment(study_root, tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fewshot", "study", str(exp), "--seeds", "0"])
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err
    assert main(["fewshot", "study", str(exp), "--seeds", "2", "--methods", "protonet,trx"]) == 2
    assert "trx not in the config's heads.methods" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before anything was written
