"""Official formats: EPIC-KITCHENS-100 metrics and challenge JSON, SSv2 predictions file.

Hand-made examples whose numbers are worked out in the comments, so a scorer that drifts from the
official definitions (action top-5, the tail/unseen subsets) fails here, not on a leaderboard.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from actdistill.data.records import Segment
from actdistill.evaluation.metrics import action_hits, action_topk_pairs, class_mean_recall, score
from actdistill.evaluation.official import (
    EpicGroundTruth,
    epic_metrics,
    epic_submission,
    read_epic_submission,
    read_ssv2_predictions,
    score_epic_submission,
    score_ssv2_predictions,
    write_epic_submission,
    write_ssv2_predictions,
)


def _one_hot_logits(pred: list[int], num: int) -> torch.Tensor:
    """Logits whose argmax is ``pred`` and whose other classes rank in index order."""
    x = -torch.arange(num, dtype=torch.float32).repeat(len(pred), 1) * 0.1
    x[torch.arange(len(pred)), torch.tensor(pred)] = 10.0
    return x


def _gt(verb: list[int], noun: list[int], unseen: list[bool], tail_verb: list[bool],
        tail_noun: list[bool]) -> EpicGroundTruth:
    return EpicGroundTruth([f"P01_101_{i}" for i in range(len(verb))], torch.tensor(verb), torch.tensor(noun),
                           torch.tensor(unseen), torch.tensor(tail_verb), torch.tensor(tail_noun))


def test_action_top5_ranks_pairs_by_the_product_of_softmaxes() -> None:
    # verbs nearly tied, nouns 1 apart: pair log-probs (0,0)=0 > (1,0)=-.1 > (0,1)=-1 > (1,1)=-1.1
    # > (0,2)=-2 > (1,2)=-2.1 > (0,3)=-3: (0,3) has its verb at rank 1 and its noun at rank 4,
    # both in their own top-5, yet the pair is 7th, so it is no action top-5 hit; (1,1) is 4th.
    v = torch.tensor([[0.0, -0.1]] * 2)
    n = torch.tensor([[0.0, -1.0, -2.0, -3.0, -4.0]] * 2)
    assert action_hits(v, n, torch.tensor([0, 1]), torch.tensor([3, 1]), 5).tolist() == [False, True]
    verbs, nouns = action_topk_pairs(v[:1], n[:1], 5)
    assert list(zip(verbs[0].tolist(), nouns[0].tolist())) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]


def test_action_topk_pairs_equal_the_full_joint_ranking() -> None:
    g = torch.Generator().manual_seed(0)
    v, n = torch.randn(50, 9, generator=g), torch.randn(50, 13, generator=g)
    joint = (v.softmax(-1)[:, :, None] * n.softmax(-1)[:, None, :]).flatten(1)
    best = joint.topk(5, dim=-1).indices
    verbs, nouns = action_topk_pairs(v, n, 5)
    assert torch.equal(verbs, best // 13) and torch.equal(nouns, best % 13)


def test_class_mean_recall_weighs_every_class_once() -> None:
    # class 0: 3 of 3 right; class 1: 0 of 1 right -> accuracy 75 %, class mean (1 + 0) / 2 = 50 %
    logits = _one_hot_logits([0, 0, 0, 0, 1], 3)
    labels = torch.tensor([0, 0, 0, 1, -1])  # -1: ignored
    assert class_mean_recall(logits, labels) == pytest.approx(50.0)


def test_epic_metrics_on_the_official_subsets() -> None:
    # s0 seen            verb ok  noun ok   action ok
    # s1 unseen, tail v  verb bad noun ok   action bad
    # s2 unseen, tail n  verb ok  noun bad  action bad
    # s3 tail v and n    verb ok  noun ok   action ok
    gt = _gt([0, 1, 0, 1], [0, 1, 2, 2], [False, True, True, False], [False, True, False, True],
             [False, False, True, True])
    m = epic_metrics(_one_hot_logits([0, 2, 0, 1], 3), _one_hot_logits([0, 1, 3, 2], 4), gt)
    assert m["all_verb_accuracy_at_1"] == 75.0 and m["all_noun_accuracy_at_1"] == 75.0
    assert m["all_action_accuracy_at_1"] == 50.0
    assert m["tail_verb_accuracy_at_1"] == 50.0  # s1, s3
    assert m["tail_noun_accuracy_at_1"] == 50.0  # s2, s3
    assert m["tail_action_accuracy_at_1"] == pytest.approx(100 / 3)  # tail verb OR tail noun: s1, s2, s3
    assert (m["unseen_verb_accuracy_at_1"], m["unseen_noun_accuracy_at_1"], m["unseen_action_accuracy_at_1"]) == (
        50.0, 50.0, 0.0)
    assert m["all_verb_class_mean_recall"] == 75.0  # (1 + 1/2) / 2
    assert m["all_noun_class_mean_recall"] == pytest.approx(250 / 3)  # (1 + 1 + 1/2) / 3
    assert m["all_action_class_mean_recall"] == 50.0  # pairs (0,0) 1, (1,1) 0, (0,2) 0, (1,2) 1
    assert m["all_verb_accuracy_at_5"] == 100.0  # 3 verbs: every one is in the top 5
    assert "unseen_verb_accuracy_at_5" not in m  # the official scorer reports top-1 only on subsets


def test_epic_metrics_leave_out_an_empty_unseen_subset_as_the_official_scorer() -> None:
    gt = _gt([0, 1], [0, 1], [False, False], [False, False], [False, False])
    m = epic_metrics(_one_hot_logits([0, 1], 2), _one_hot_logits([0, 1], 2), gt)
    assert not any(k.startswith(("unseen_", "tail_")) for k in m)


def test_ground_truth_from_adapter_segments() -> None:
    segs = [Segment(f"P01_101_{i}", "P01_101", 1, 10, 50.0, {"verb": i, "noun": 2 * i},
                    meta={"unseen_participant": i == 1, "tail_verb": i == 0, "tail_noun": False}) for i in range(2)]
    gt = EpicGroundTruth.from_segments(segs)
    assert gt.verb.tolist() == [0, 1] and gt.noun.tolist() == [0, 2]
    assert gt.unseen.tolist() == [False, True] and gt.tail_verb.tolist() == [True, False]
    unlabelled = Segment("P01_101_9", "P01_101", 1, 10, 50.0, {}, meta={})
    with pytest.raises(ValueError, match="challenge server"):
        EpicGroundTruth.from_segments([*segs, unlabelled])


@pytest.mark.parametrize("name", ["test.zip", "submission.json"])
def test_epic_submission_round_trip_scores_as_in_memory(tmp_path: Path, name: str) -> None:
    g = torch.Generator().manual_seed(1)
    v, n = torch.randn(12, 5, generator=g), torch.randn(12, 7, generator=g)
    gt = _gt(torch.randint(0, 5, (12,), generator=g).tolist(), torch.randint(0, 7, (12,), generator=g).tolist(),
             [i % 3 == 0 for i in range(12)], [i % 4 == 0 for i in range(12)], [i % 5 == 0 for i in range(12)])
    path = write_epic_submission(tmp_path / name, epic_submission(gt.ids, v, n, sls_pt=2, sls_tl=3, sls_td=4))
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            assert zf.namelist() == ["test.json"]
            data = json.loads(zf.read("test.json"))
    else:
        data = json.loads(path.read_text())
    assert {k: data[k] for k in ("version", "challenge", "sls_pt", "sls_tl", "sls_td")} == {
        "version": "0.2", "challenge": "action_recognition", "sls_pt": 2, "sls_tl": 3, "sls_td": 4}
    entry = data["results"]["P01_101_0"]
    assert list(entry["verb"]) == [str(i) for i in range(5)] and list(entry["noun"]) == [str(i) for i in range(7)]
    sub = read_epic_submission(path)
    assert torch.equal(sub.verb, v) and torch.equal(sub.noun, n)
    # reordered ground truth: the scorer aligns by segment id
    order = list(reversed(gt.ids))
    assert score_epic_submission(path, gt.take(order)) == epic_metrics(v, n, gt)


def test_epic_submission_refuses_what_the_server_would(tmp_path: Path) -> None:
    v, n = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="sls_td"):
        epic_submission(["a", "b"], v, n, 2, 3, 6)
    good = epic_submission(["a", "b"], v, n, 0, 0, 0)
    gt = _gt([0, 0], [0, 0], [False] * 2, [False] * 2, [False] * 2)
    path = write_epic_submission(tmp_path / "s.json", good)
    with pytest.raises(ValueError, match="missing"):
        score_epic_submission(path, gt)  # ids a, b are not P01_101_0/1
    bad = json.loads(json.dumps(good))
    bad["results"]["a"]["verb"] = {"1": 0.0, "2": 0.0, "3": 0.0}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="class ids"):
        read_epic_submission(tmp_path / "bad.json")
    bad = {**good, "version": "0.1"}
    (tmp_path / "old.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="version"):
        read_epic_submission(tmp_path / "old.json")


def test_ssv2_predictions_round_trip(tmp_path: Path) -> None:
    classes = [f"Putting something, then {i} things, onto something" for i in range(8)]  # commas in templates
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(20, 8, generator=g), torch.randint(0, 8, (20,), generator=g)
    ids = [str(1000 + i) for i in range(20)]
    path = write_ssv2_predictions(tmp_path / "ssv2.csv", ids, logits, classes)
    first = path.read_text().splitlines()[0].split(";")
    assert first[0] == "1000" and len(first) == 6 and first[1] == classes[int(logits[0].argmax())]
    assert list(read_ssv2_predictions(path)) == ids
    expected = score({"class": logits}, {"class": labels})
    got = score_ssv2_predictions(path, ids, labels, classes)
    assert got == pytest.approx({k: expected[k] for k in ("class_top1", "class_top5")})
    assert 0 < got["class_top1"] < got["class_top5"] < 100  # the example tells top-1 from top-5


def test_ssv2_predictions_refuse_unknown_labels_and_separators(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="';'"):
        write_ssv2_predictions(tmp_path / "x.csv", ["1"], torch.zeros(1, 2), ["a;b", "c"])
    (tmp_path / "p.csv").write_text("1;Pushing somthing\n")
    with pytest.raises(ValueError, match="no class name"):
        score_ssv2_predictions(tmp_path / "p.csv", ["1"], torch.tensor([0]), ["Pushing something"])


# ------------------------------------------------------------------------------ karmma submit
@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KARMMA run directory with a seeded, untrained rgb+flow student: what ``karmma submit``
    reads (config, model.json, weights) without the minutes a trained run costs."""
    from actdistill.data.builder import load_index
    from actdistill.data.datasets.synthetic import write_synthetic_epic
    from actdistill.demo import demo_config
    from actdistill.engine.checkpoint import save_weights
    from actdistill.engine.clips import load_clips
    from actdistill.engine.karmma import build_row, write_model_info
    from actdistill.rundir import save_config
    from tests.test_karmma_pipeline import TINY

    base = tmp_path_factory.mktemp("submit")
    root = base / "tiny"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    cfg = demo_config(None, [f"data.root={root}", f"cache.root={base / 'cache'}", *TINY, "data.modalities=[rgb,flow]"])
    run_dir = base / "run"
    run_dir.mkdir()
    save_config(run_dir, cfg)
    classes = load_index(cfg.data, cfg.data.train_split).classes
    heads = {t: len(classes[t]) for t in ("verb", "noun")}
    val = load_index(cfg.data, "validation")
    shapes = {m: list(s) for m, s in load_clips(cfg.data, "validation", False, cfg.data.sampling.test_views,
                                                 cfg.cache.root, val, progress=False).shapes.items()}
    mods = tuple(cfg.data.modalities)
    write_model_info(run_dir, mods, heads, classes, False, shapes)
    torch.manual_seed(0)
    save_weights(build_row(cfg, mods, heads, "student", shapes), run_dir / "student.safetensors")
    return run_dir


def test_karmma_submit_writes_a_file_that_scores_as_in_memory(untrained_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main, split_logits
    from actdistill.deploy import Recognizer

    out = tmp_path / "val.zip"
    assert main(["karmma", "submit", str(untrained_run), "--split", "validation", "--out", str(out),
                 "--modalities", "rgb", "--sls-pt", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    index, uids, logits = split_logits(Recognizer.from_run(untrained_run), "validation", ["rgb"])
    sub = read_epic_submission(out)
    assert sub.ids == uids and len(uids) == report["samples"] > 0 and sub.sls["sls_pt"] == 1
    segs = {s.uid: s for s in index.segments}
    gt = EpicGroundTruth.from_segments([segs[u] for u in uids])
    assert report["metrics"] == epic_metrics(logits["verb"], logits["noun"], gt)
    full = split_logits(Recognizer.from_run(untrained_run), "validation", None)[2]
    assert not torch.equal(full["verb"], logits["verb"])  # --modalities restricts what the row sees


def test_karmma_submit_on_the_unlabelled_test_split(untrained_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main

    out = tmp_path / "test.json"
    assert main(["karmma", "submit", str(untrained_run), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "metrics" not in report and report["split"] == "test"
    data = json.loads(out.read_text())
    assert data["challenge"] == "action_recognition" and len(data["results"]) == report["samples"] > 0
    assert main(["karmma", "submit", str(untrained_run), "--out", str(out), "--modalities", "depth"]) == 2


# ------------------------------------------------------------------------------ karmma submit, SSv2
SSV2_SPLITS = {"train": 7, "validation": 12, "test": 4}  # videos; 7 classes, so top-5 is not every class


@pytest.fixture(scope="module")
def ssv2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained rgb-only KARMMA run on a tiny Something-Something v2 in its official layout
    (label/split JSON, one ``<id>/img_00001.jpg`` frame folder per video)."""
    import numpy as np
    from PIL import Image

    from actdistill.config import build_config, load_yaml
    from actdistill.data.builder import load_index
    from actdistill.demo import DEMO_EXPERIMENT
    from actdistill.engine.checkpoint import save_weights
    from actdistill.engine.clips import load_clips
    from actdistill.engine.karmma import KarmmaConfig, build_row, write_model_info
    from actdistill.rundir import save_config
    from actdistill.shipped import shipped_path
    from tests.test_karmma_pipeline import TINY
    from tests.test_plan import write_ssv2_annotations

    base = tmp_path_factory.mktemp("submit_ssv2")
    root = write_ssv2_annotations(base / "ssv2", *SSV2_SPLITS.values(), n_classes=7, seed=3)
    # keys written against their index order: class names must come from the indices, not the key order
    labels_file = root / "something-something-v2-labels.json"
    labels = json.loads(labels_file.read_text())
    labels_file.write_text(json.dumps(dict(sorted(labels.items(), key=lambda kv: -int(kv[1])))))
    rng = np.random.default_rng(0)
    for split in SSV2_SPLITS:  # a coloured square moving on black: videos differ, so do the untrained row's scores
        for row in json.loads((root / f"something-something-v2-{split}.json").read_text()):
            (root / row["id"]).mkdir()
            (x, y), (dx, dy), colour = rng.integers(0, 16, 2), rng.integers(-3, 4, 2), rng.integers(64, 256, 3)
            for k in range(1, 7):
                frame = np.zeros((24, 32, 3), np.uint8)
                top, left = int(np.clip(y + k * dy, 0, 16)), int(np.clip(x + k * dx, 0, 24))
                frame[top:top + 8, left:left + 8] = colour
                Image.fromarray(frame).save(root / row["id"] / f"img_{k:05d}.jpg")
    demo = load_yaml(shipped_path(DEMO_EXPERIMENT))
    del demo["data"]["options"]  # the synthetic dataset's; mappings merge, so an override cannot drop them
    tiny = [o for o in TINY if not o.startswith("data.options.")]
    cfg = build_config(KarmmaConfig, demo, [f"data.root={root}", f"cache.root={base / 'cache'}", *tiny,
                                            "data.dataset=ssv2", "data.modalities=[rgb]", "data.test_split=test"])
    run_dir = base / "run"
    run_dir.mkdir()
    save_config(run_dir, cfg)
    classes = load_index(cfg.data, cfg.data.train_split).classes
    heads = {"class": len(classes["class"])}
    val = load_index(cfg.data, "validation")
    shapes = {m: list(s) for m, s in load_clips(cfg.data, "validation", False, cfg.data.sampling.test_views,
                                                 cfg.cache.root, val, progress=False).shapes.items()}
    write_model_info(run_dir, ("rgb",), heads, classes, False, shapes)
    torch.manual_seed(0)
    save_weights(build_row(cfg, ("rgb",), heads, "student", shapes), run_dir / "student.safetensors")
    return run_dir


def _ssv2_file(root: Path, split: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Class names by index, the split's video ids in file order and their templates, read from
    the JSON files themselves (not through the adapter under test)."""
    labels = json.loads((root / "something-something-v2-labels.json").read_text())
    names = sorted(labels, key=lambda k: int(labels[k]))
    rows = json.loads((root / f"something-something-v2-{split}.json").read_text())
    return names, [r["id"] for r in rows], {r["id"]: r.get("template", "") for r in rows}


def test_karmma_submit_ssv2_writes_template_names_that_score_as_in_memory(
        ssv2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main, split_logits
    from actdistill.deploy import Recognizer

    root = ssv2_run.parent / "ssv2"
    names, ids, templates = _ssv2_file(root, "validation")
    out = tmp_path / "val.csv"
    assert main(["karmma", "submit", str(ssv2_run), "--split", "validation", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dataset"], report["split"], report["samples"]) == ("ssv2", "validation", len(ids))
    _, uids, logits = split_logits(Recognizer.from_run(ssv2_run), "validation", None)
    assert uids == ids and logits["class"].shape == (len(ids), len(names))
    lines = [line.split(";") for line in out.read_text().splitlines()]
    # one line per video in the validation file's order: <id>;<5 template names, best first>
    best = logits["class"].topk(5, dim=-1).indices
    assert lines == [[u, *(names[j] for j in row)] for u, row in zip(ids, best.tolist())]
    truth = torch.tensor([names.index(templates[u].replace("[", "").replace("]", "")) for u in ids])
    top1 = 100.0 * float((best[:, 0] == truth).float().mean())
    top5 = 100.0 * float((best == truth[:, None]).any(1).float().mean())
    assert report["metrics"] == pytest.approx({"class_top1": top1, "class_top5": top5})
    assert report["metrics"]["class_top5"] >= report["metrics"]["class_top1"]
    # what gives the checks above their teeth: rows differ (ids misaligned with rows would show) and
    # the example tells top-1 from top-5 from "every class"
    assert len({tuple(line[1:]) for line in lines}) > 1
    assert 0 < top1 < top5 < 100


def test_karmma_submit_ssv2_on_the_unlabelled_test_split(ssv2_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main

    names, ids, _ = _ssv2_file(ssv2_run.parent / "ssv2", "test")
    out = tmp_path / "test.csv"
    assert main(["karmma", "submit", str(ssv2_run), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "metrics" not in report and report["split"] == "test" and report["samples"] == len(ids)
    preds = read_ssv2_predictions(out)
    assert list(preds) == ids and all(len(p) == 5 and set(p) <= set(names) for p in preds.values())
    assert main(["karmma", "submit", str(ssv2_run), "--out", str(out), "--modalities", "flow"]) == 2
    assert "--modalities must name some of the run's modalities ['rgb']" in capsys.readouterr().err
