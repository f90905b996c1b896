"""Accuracy and calibration metrics, EPIC-style.

Verb and noun are scored top-1/top-5 on their own heads. Action top-k follows the EPIC
evaluation: an action is correct at top-1 when verb and noun are both correct; for top-k the
joint score is the product of the verb and noun probabilities over all (verb, noun) pairs, and
the true pair must be among the k best. A dataset with a single task ("class") is scored on it.
Labels of -1 (unknown) are ignored.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``[B]``: the label is among the ``k`` highest logits."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1)


def action_topk_pairs(verb_logits: torch.Tensor, noun_logits: torch.Tensor,
                      k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best (verb, noun) pairs per sample, best first: two long tensors ``[B, k]``.

    Pairs are ranked by the product of the verb and noun softmax probabilities, as the official
    EPIC-KITCHENS-100 scorer does (C1-Action-Recognition ``utils/scoring.compute_action_scores``).
    Why not the full ``[B, V*N]`` joint: the k best pairs always lie within the k best verbs x the
    k best nouns, so ranking those k*k sums of log-probabilities gives the same pairs in
    ``O(B k^2)`` memory instead of ~1 GB for the 9668 x 97 x 300 EPIC validation set.
    """
    k_v, k_n = min(k, verb_logits.shape[-1]), min(k, noun_logits.shape[-1])
    top_v = verb_logits.float().log_softmax(-1).topk(k_v, dim=-1)
    top_n = noun_logits.float().log_softmax(-1).topk(k_n, dim=-1)
    joint = (top_v.values[:, :, None] + top_n.values[:, None, :]).flatten(1)
    best = joint.topk(min(k, joint.shape[-1]), dim=-1).indices
    return top_v.indices.gather(1, best // k_n), top_n.indices.gather(1, best % k_n)


def action_hits(verb_logits: torch.Tensor, noun_logits: torch.Tensor, verb: torch.Tensor, noun: torch.Tensor,
                k: int) -> torch.Tensor:
    """Bool ``[B]``: the true (verb, noun) pair is among the ``k`` best pairs (:func:`action_topk_pairs`)."""
    if k == 1:
        return (verb_logits.argmax(-1) == verb) & (noun_logits.argmax(-1) == noun)
    verbs, nouns = action_topk_pairs(verb_logits, noun_logits, k)
    return ((verbs == verb[:, None]) & (nouns == noun[:, None])).any(-1)


def class_mean_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of their top-1 recall, in %.

    Why next to accuracy: EPIC and SSv2 are long-tailed, so top-1 accuracy is dominated by a few
    frequent classes; the class mean weighs every class that occurs once. Labels of -1 are ignored;
    NaN when no label is left.
    """
    ok = labels >= 0
    y, pred = labels[ok], logits[ok].argmax(-1)
    if y.numel() == 0:
        return float("nan")
    classes = y.unique()
    recalls = [float((pred[y == c] == c).float().mean()) for c in classes]
    return 100.0 * sum(recalls) / len(recalls)


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017), in [0, 1]."""
    if labels.numel() == 0:
        return float("nan")
    probs = logits.float().softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.float().mean() * (conf[sel].mean() - correct[sel].mean()).abs()
    return float(ece)


def score(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Top-1/top-5 accuracy (in %) per task, action included when verb and noun are both predicted."""
    out: dict[str, float] = {}
    for task, lg in logits.items():
        if task not in labels or (task == "action" and {"verb", "noun"} <= set(logits)):
            continue
        y = labels[task]
        ok = y >= 0
        if ok.any():
            out[f"{task}_top1"] = 100.0 * float(topk_hits(lg[ok], y[ok], 1).float().mean())
            out[f"{task}_top5"] = 100.0 * float(topk_hits(lg[ok], y[ok], 5).float().mean())
            out[f"{task}_ece"] = expected_calibration_error(lg[ok], y[ok])
    if {"verb", "noun"} <= set(logits) and {"verb", "noun"} <= set(labels):
        v, n = labels["verb"], labels["noun"]
        ok = (v >= 0) & (n >= 0)
        if ok.any():
            for k in (1, 5):
                hits = action_hits(logits["verb"][ok], logits["noun"][ok], v[ok], n[ok], k)
                out[f"action_top{k}"] = 100.0 * float(hits.float().mean())
    return out


def primary_hits(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per sample, 100 if the headline prediction (:func:`primary_metric`) is right, else 0; NaN
    where the sample has no label for it. Its mean over the labelled samples is the headline
    top-1, so per-sample scores of two models can be paired (seed studies)."""
    if {"verb", "noun"} <= set(logits) and {"verb", "noun"} <= set(labels):
        v, n = labels["verb"], labels["noun"]
        hit = (logits["verb"].argmax(-1) == v) & (logits["noun"].argmax(-1) == n)
        ok = (v >= 0) & (n >= 0)
    else:
        task = next(t for t in logits if t in labels and not (t == "action" and {"verb", "noun"} <= set(logits)))
        y = labels[task]
        hit, ok = logits[task].argmax(-1) == y, y >= 0
    return torch.where(ok, 100.0 * hit.float(), torch.full(hit.shape, float("nan")))


def primary_metric(metrics: Mapping[str, float]) -> float:
    """The headline number: action top-1 when there is one, else the first task's top-1."""
    if "action_top1" in metrics:
        return metrics["action_top1"]
    top1 = [v for k, v in metrics.items() if k.endswith("_top1")]
    return top1[0] if top1 else float("nan")
