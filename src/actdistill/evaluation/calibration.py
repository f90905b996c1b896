"""Calibration and per-class views of one row's predictions: the numbers behind a run report's
reliability diagram and per-class accuracy plots.

A headline top-1 hides two things users check before trusting a model: whether its confidence
means what it says (a reliability diagram: accuracy against confidence, bin by bin) and which
classes it gets wrong (per-class accuracy). Both are pure functions of logits and labels, so a
run's plots, JSON files and report.md are computed once here and can be unit-tested by hand.

Labels of -1 (unknown) are left out, as in :mod:`actdistill.evaluation.metrics`. Anything that
cannot be measured (an empty bin, a class with no test sample) is ``None``, never NaN: NaN is not
valid JSON and reads as a number in a table.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def view_tasks(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> list[str]:
    """The tasks worth a view: every labelled task, except an action head beside verb and noun
    (EPIC scores action from verb and noun, so its own head would be a second, unreported view)."""
    return [t for t in logits if t in labels and not (t == "action" and {"verb", "noun"} <= set(logits))]


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Equal-width confidence bins of top-1 predictions, as in
    :func:`~actdistill.evaluation.metrics.expected_calibration_error` (a sample falls in ``(lo, hi]``),
    so the diagram and the ECE in the same report agree.

    Returns ``{"samples", "ece", "bins": [{"lo", "hi", "count", "confidence", "accuracy"}]}``:
    ``confidence`` is the bin's mean top-1 probability and ``accuracy`` its fraction correct, both
    in [0, 1] and ``None`` for an empty bin; ``ece`` is ``None`` with no labelled sample. The counts
    add up to ``samples``, the labelled samples."""
    ok = labels >= 0
    probs = logits[ok].float().softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels[ok]).float()
    n = int(ok.sum())
    edges = torch.linspace(0, 1, bins + 1)
    out: list[dict[str, Any]] = []
    ece = 0.0
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        # the first bin also takes a confidence of exactly 0 (impossible after softmax, but no sample is lost)
        sel = (conf > lo if i else conf >= lo) & (conf <= hi)
        count = int(sel.sum())
        c = float(conf[sel].mean()) if count else None
        a = float(correct[sel].mean()) if count else None
        if c is not None and a is not None:
            ece += count / n * abs(c - a)
        out.append({"lo": round(float(lo), 6), "hi": round(float(hi), 6), "count": count,
                    "confidence": c, "accuracy": a})
    return {"samples": n, "ece": ece if n else None, "bins": out}


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor,
                       names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Top-1 accuracy (%) per class: ``[{"id", "name", "samples", "correct", "top1"}]`` for every
    class of the head, in id order. A class with no labelled test sample has ``samples`` 0 and
    ``top1`` ``None``, so "never tested" is never mistaken for "always wrong"."""
    ok = labels >= 0
    y = labels[ok].long()
    n_classes = logits.shape[-1]
    hit = (logits[ok].argmax(-1) == y).double()
    samples = torch.bincount(y, minlength=n_classes)
    correct = torch.bincount(y, weights=hit, minlength=n_classes).long()
    return [{"id": c, "name": names[c] if c < len(names) else str(c), "samples": int(samples[c]),
             "correct": int(correct[c]),
             "top1": 100.0 * int(correct[c]) / int(samples[c]) if samples[c] else None}
            for c in range(n_classes)]


def ranked_classes(per_class: Sequence[Mapping[str, Any]], k: int, worst: bool = True) -> list[Mapping[str, Any]]:
    """The ``k`` tested classes with the lowest (``worst``) or highest accuracy. Ties go to the
    class with more samples: its accuracy is the better-supported one."""
    tested = [c for c in per_class if c["samples"] > 0]
    sign = 1.0 if worst else -1.0
    return sorted(tested, key=lambda c: (sign * c["top1"], -c["samples"], c["id"]))[:k]


def untested_classes(per_class: Sequence[Mapping[str, Any]]) -> int:
    """How many classes had no labelled test sample (their accuracy is not measured)."""
    return sum(1 for c in per_class if c["samples"] == 0)
