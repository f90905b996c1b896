"""Calibration and per-class views of a run report (issue 19).

The numbers behind ``reliability.png`` / ``calibration.json`` and ``per_class_<task>.png`` /
``per_class.json`` are checked on hand-made predictions whose bins and class accuracies can be
worked out on paper, because a plot that looks plausible can still bin or count wrongly. Nothing
that cannot be measured (an empty bin, a class never tested) may become NaN: JSON has no NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from actdistill.evaluation.calibration import (
    per_class_accuracy,
    ranked_classes,
    reliability_bins,
    untested_classes,
    view_tasks,
)
from actdistill.evaluation.metrics import expected_calibration_error
from actdistill.evaluation.report import class_views_markdown, write_class_views


def _strict_json(path: Path) -> Any:
    """Load JSON, failing on NaN/Infinity (which ``json`` would otherwise accept)."""
    def bad(token: str) -> Any:
        raise ValueError(f"{path.name} holds {token}")
    return json.loads(path.read_text(), parse_constant=bad)


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (rows summing to 1)."""
    return torch.tensor(probs).log()


def test_reliability_bins_on_a_hand_made_example() -> None:
    # confidences 0.95 (right), 0.9 (wrong), 0.7 (right), 0.65 (right); the last sample is unlabelled
    logits = _logits([[0.95, 0.05], [0.9, 0.1], [0.3, 0.7], [0.65, 0.35], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0, -1])
    got = reliability_bins(logits, labels, bins=5)
    bins = got["bins"]
    assert got["samples"] == 4 and sum(b["count"] for b in bins) == 4
    assert [b["count"] for b in bins] == [0, 0, 0, 2, 2]
    assert [b["accuracy"] for b in bins[:3]] == [None, None, None]
    assert bins[3]["accuracy"] == pytest.approx(1.0) and bins[3]["confidence"] == pytest.approx(0.675)
    assert bins[4]["accuracy"] == pytest.approx(0.5) and bins[4]["confidence"] == pytest.approx(0.925)
    assert (bins[3]["lo"], bins[3]["hi"]) == pytest.approx((0.6, 0.8))
    # ECE = 2/4 * |0.675 - 1| + 2/4 * |0.925 - 0.5|, the same as the metric the report prints
    assert got["ece"] == pytest.approx(0.375, abs=1e-6)
    assert got["ece"] == pytest.approx(expected_calibration_error(logits[:4], labels[:4], bins=5), abs=1e-6)


def test_reliability_bins_agree_with_the_ece_metric_on_random_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=g) * 3
    labels = torch.randint(0, 7, (200,), generator=g)
    got = reliability_bins(logits, labels)
    assert len(got["bins"]) == 15 and sum(b["count"] for b in got["bins"]) == 200
    assert got["ece"] == pytest.approx(expected_calibration_error(logits, labels), abs=1e-5)


def test_no_labelled_sample_gives_empty_bins_and_no_nan(tmp_path: Path) -> None:
    got = reliability_bins(torch.randn(3, 4), torch.full((3,), -1))
    assert got["samples"] == 0 and got["ece"] is None
    assert all(b["count"] == 0 and b["accuracy"] is None for b in got["bins"])
    json.dumps(got, allow_nan=False)


def test_per_class_accuracy_on_a_hand_made_example() -> None:
    # predictions 0, 1, 1, 1, 0, 2 against labels a, a, b, b, b, unknown: class c is never tested
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0, 2]), 3).float()
    labels = torch.tensor([0, 0, 1, 1, 1, -1])
    got = per_class_accuracy(logits, labels, ["a", "b", "c"])
    assert [(c["name"], c["samples"], c["correct"]) for c in got] == [("a", 2, 1), ("b", 3, 2), ("c", 0, 0)]
    assert got[0]["top1"] == pytest.approx(50.0) and got[1]["top1"] == pytest.approx(200 / 3)
    assert got[2]["top1"] is None and untested_classes(got) == 1
    json.dumps(got, allow_nan=False)
    # without names a class is named by its id
    assert per_class_accuracy(logits, labels)[2]["name"] == "2"


def test_ranked_classes_skip_untested_and_break_ties_by_samples() -> None:
    classes = [{"id": 0, "samples": 2, "top1": 0.0}, {"id": 1, "samples": 9, "top1": 0.0},
               {"id": 2, "samples": 0, "top1": None}, {"id": 3, "samples": 4, "top1": 75.0},
               {"id": 4, "samples": 1, "top1": 100.0}]
    assert [c["id"] for c in ranked_classes(classes, 3)] == [1, 0, 3]
    assert [c["id"] for c in ranked_classes(classes, 2, worst=False)] == [4, 3]


def test_view_tasks_leave_out_an_action_head_beside_verb_and_noun() -> None:
    x = torch.zeros(1, 2)
    assert view_tasks({"verb": x, "noun": x, "action": x}, {"verb": x, "noun": x, "action": x}) == ["verb", "noun"]
    assert view_tasks({"class": x, "extra": x}, {"class": x}) == ["class"]


def test_write_class_views_writes_plots_json_and_report_lines(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    n, verbs, nouns = 40, 20, 5
    labels = {"verb": torch.arange(n) % (verbs - 1),  # every verb tested but the last
              "noun": torch.arange(n) % nouns}
    full = {row: {"logits": {"verb": torch.randn(n, verbs, generator=g), "noun": torch.randn(n, nouns, generator=g),
                             "action": torch.randn(n, 3, generator=g)}, "labels": labels}
            for row in ("teacher", "student")}
    names = {"verb": [f"v{i}" for i in range(verbs)], "noun": [f"n{i}" for i in range(nouns)]}
    calibration, per_class = write_class_views(tmp_path, full, names, k=4)
    for name in ("reliability.png", "per_class_verb.png", "per_class_noun.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not (tmp_path / "per_class_action.png").exists()
    cal, per = _strict_json(tmp_path / "calibration.json"), _strict_json(tmp_path / "per_class.json")
    assert cal == calibration and per == per_class
    assert set(per) == {"teacher", "student"} and set(per["student"]) == {"verb", "noun"}
    assert per["student"]["verb"][-1] == {"id": 19, "name": "v19", "samples": 0, "correct": 0, "top1": None}
    assert sum(b["count"] for b in cal["teacher"]["noun"]["bins"]) == n

    text = "\n".join(class_views_markdown(calibration, per_class))
    worst = ranked_classes(per_class["student"]["verb"], 5)
    assert "The 5 worst verb classes of `student`" in text and "1 of 20 classes have no test sample" in text
    assert all(f"| {c['name']} | {c['samples']} |" in text for c in worst)
    for row in ("teacher", "student"):
        assert f"| {row} | {calibration[row]['verb']['ece']:.3f} | {calibration[row]['noun']['ece']:.3f} |" in text
    assert "nan" not in text.lower() and not math.isnan(calibration["student"]["verb"]["ece"])


def test_efficiency_ratios_are_measurements_against_the_teacher_not_targets() -> None:
    from actdistill.engine.karmma import efficiency_ratios, render_report

    full = "rgb+audio"
    eff = {"teacher": {"gflops": 2.0, "params": 4e6, "peak_mem_mb": 20.0, "latency_ms": 30.0, "throughput": 1.0},
           "student": {"gflops": 0.5, "params": 1e6, "peak_mem_mb": 0.0, "latency_ms": 6.0, "throughput": 9.0}}
    summary = {name: {"subsets": {full: 90.0}, "drop_curve": [90.0, 50.0], "auc": 70.0,
                      "worst_subset": {"subset": full, "accuracy": 90.0}, "efficiency": {full: e}}
               for name, e in eff.items()}
    ratios = efficiency_ratios(summary, ("rgb", "audio"))
    assert ratios == {"student": {"gflops_ratio": 0.25, "params_ratio": 0.25, "peak_mem_ratio": 0.0,
                                  "latency_speedup": 5.0}}
    summary["teacher"]["efficiency"] = {}
    assert efficiency_ratios(summary, ("rgb", "audio")) == {}  # nothing to compare against
    summary["teacher"]["efficiency"] = {full: eff["teacher"]}
    text = render_report(summary, ("rgb", "audio"), [0.0, 0.9], ratios, {"total": 1.0})
    assert "Cost against the teacher" in text and "| student | 0.25 | 0.25 | 0.00 | 5.00 |" in text
    assert "Targets" not in text and "met" not in text
