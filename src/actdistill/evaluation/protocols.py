"""Missing-modality evaluation protocols (KARMMA): static subsets and the dynamic drop-rate curve.

* Static: every non-empty subset of the model's modalities. A sample is scored on a subset with
  the modalities it actually has inside that subset; samples that have none of them are left out
  of that subset's score (and counted), never scored on fabricated input.
* Dynamic: each available modality is dropped independently with probability ``p``, at least
  one kept, with a seed per (``p``, draw, sample) so every model sees exactly the same drops
  whatever the batch size or the number of processes sharing the test set.
Single numbers: area under the drop-rate curve (trapezoid over p, divided by the p range, i.e.
the curve's mean height) and the worst subset's accuracy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actdistill.evaluation.metrics import primary_hits, primary_metric, score
from actdistill.seeding import stable_seed

Predict = Callable[[Mapping[str, Any], torch.Tensor], Mapping[str, torch.Tensor]]
DROP_RATES = tuple(round(0.1 * i, 1) for i in range(10))


def modality_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """All non-empty subsets, smallest first, each in the given modality order."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset)


def drop_modalities(present: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each present modality with probability ``p``; a sample left with none keeps one at random."""
    drop = torch.rand(present.shape, generator=generator) < p
    kept = present & ~drop
    empty = ~kept.any(1) & present.any(1)
    if empty.any():
        scores = torch.rand(present.shape, generator=generator).masked_fill(~present, -1.0)
        choice = scores.argmax(1)
        rows = empty.nonzero().squeeze(1)
        kept[rows, choice[rows]] = True
    return kept


MaskFn = Callable[[torch.Tensor, Sequence[Any]], torch.Tensor]


def keyed_drop(present: torch.Tensor, p: float, keys: Sequence[Any], *salt: Any) -> torch.Tensor:
    """:func:`drop_modalities` with one generator per sample, seeded by ``(salt, key)``.

    Why per sample: a sample's drop draw then depends on the sample alone, not on which samples
    were evaluated before it, so the protocol gives the same draws for any batch size and when the
    test set is shared out to ranks and gathered."""
    rows = [drop_modalities(present[i:i + 1], p, torch.Generator().manual_seed(stable_seed(*salt, key)))
            for i, key in enumerate(keys)]
    return torch.cat(rows) if rows else present.clone()


@dataclass
class Collected:
    """Every mask's logits and scored rows for a set of samples (``index``: their positions)."""

    index: torch.Tensor
    labels: dict[str, torch.Tensor]
    logits: list[dict[str, torch.Tensor]]
    valid: list[torch.Tensor]

    @staticmethod
    def merge(parts: Sequence[Collected]) -> Collected:
        """One :class:`Collected` from disjoint parts (e.g. one per rank), in sample order."""
        index = torch.cat([c.index for c in parts])
        order = torch.argsort(index)
        cat = torch.cat
        return Collected(index[order], {t: cat([c.labels[t] for c in parts])[order] for t in parts[0].labels},
                         [{t: cat([c.logits[k][t] for c in parts])[order] for t in parts[0].logits[k]}
                          for k in range(len(parts[0].logits))],
                         [cat([c.valid[k] for c in parts])[order] for k in range(len(parts[0].valid))])


def collect(predict: Predict, batches: Iterable[Mapping[str, Any]], masks: Sequence[MaskFn]) -> Collected:
    """Every mask's logits, labels and scored rows, reading each batch once.

    The loop runs over batches outside and masks inside, so a batch is read (and, by a caller
    that caches per batch, encoded) once whatever the number of masks, and ``batches`` may be a
    one-pass stream from disk. A mask gets the batch's presence and its samples' keys
    (``batch["uid"]``, else their running position in the stream).
    """
    logits: list[dict[str, list[torch.Tensor]]] = [{} for _ in masks]
    valid: list[list[torch.Tensor]] = [[] for _ in masks]
    labels: dict[str, list[torch.Tensor]] = {}
    index: list[torch.Tensor] = []
    seen = 0
    for batch in batches:
        present = batch["present"]
        n = present.shape[0]
        keys = batch.get("uid") or list(range(seen, seen + n))
        index.append(torch.as_tensor(batch["index"]) if "index" in batch else torch.arange(seen, seen + n))
        seen += n
        for k, mask_fn in enumerate(masks):
            mask = mask_fn(present, keys)
            ok = mask.any(1)
            # rows with nothing left keep their full input (so every model gets a valid forward) but are not scored
            effective = torch.where(ok[:, None], mask, present)
            with torch.no_grad():
                out = predict(batch, effective)
            for task, lg in out.items():
                logits[k].setdefault(task, []).append(lg.float().cpu())
            valid[k].append(ok)
        for task, y in batch["labels"].items():
            labels.setdefault(task, []).append(y.cpu())
    empty = torch.zeros(0, dtype=torch.bool)
    return Collected(torch.cat(index) if index else torch.zeros(0, dtype=torch.long),
                     {t: torch.cat(v) for t, v in labels.items()},
                     [{t: torch.cat(v) for t, v in lg.items()} for lg in logits],
                     [torch.cat(ok) if ok else empty for ok in valid])


def _score_valid(
    logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], valid: torch.Tensor
) -> dict[str, float]:
    return score({k: v[valid] for k, v in logits.items()}, {k: v[valid] for k, v in labels.items()})


def wilson_interval(percent: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval (in %) of an accuracy measured on ``n`` samples.

    Why: on an 80-clip test set one clip is 1.25 points, and two rows 5 points apart can be
    noise; the interval says so next to every headline number (exact enough for small n, unlike
    the normal approximation, and never outside [0, 100])."""
    if n <= 0 or percent != percent:  # no samples, or NaN
        return [float("nan"), float("nan")]
    phat = percent / 100.0
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * ((phat * (1 - phat) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return [round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2)]


def evaluate_missing_modalities(
    predict: Predict,
    batches: Iterable[Mapping[str, Any]],
    modalities: Sequence[str],
    drop_rates: Sequence[float] = DROP_RATES,
    seed: int = 0,
    subsets: Sequence[Sequence[str]] | None = None,
    drop_repeats: int = 1,
    gather: Callable[[Collected], Collected] | None = None,
) -> dict[str, Any]:
    """Run both protocols. ``predict(batch, present)`` returns logits per task for the given mask.

    ``drop_repeats``: seeded drop draws per rate, metrics averaged over them. Why: at p = 0.9 one
    draw gives every clip one random modality, so on a small test set the number depends on which
    modality each clip happened to keep as much as on the model; the mean of several fixed-seed
    draws is as reproducible and much less noisy (draw 0 is the single-draw protocol's draw).
    The interval ``ci95`` still counts clips, not draws: repeats do not add test samples.

    Drop draws are keyed per sample (:func:`keyed_drop`), so ``batches`` may be any share of the
    test set: ``gather`` turns this process's :class:`Collected` into the whole set's (e.g. all
    ranks' shares merged) before the metrics are computed.
    """
    if drop_repeats < 1:
        raise ValueError(f"drop_repeats must be at least 1, got {drop_repeats}")
    mods = list(modalities)
    result: dict[str, Any] = {"subsets": {}, "subset_metrics": {}, "drop_curve": [], "drop_metrics": []}
    chosen = list(subsets or modality_subsets(mods))
    masks: list[MaskFn] = []
    for subset in chosen:
        sel = torch.tensor([m in subset for m in mods])
        masks.append(lambda present, _keys, s=sel: present & s)
    for p in drop_rates:
        for r in range(drop_repeats):
            masks.append(lambda present, keys, q=p, r=r: keyed_drop(present, q, keys, "drop", seed, round(q * 100), r))
    got = collect(predict, batches, masks)
    if gather is not None:
        got = gather(got)
    scored = [(logits, got.labels, valid) for logits, valid in zip(got.logits, got.valid)]
    full_logits: dict[str, torch.Tensor] | None = None
    per_sample: dict[str, Any] = {"subsets": {}, "drop": []}

    def sample_hits(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                    valid: torch.Tensor) -> torch.Tensor:
        hits = primary_hits(logits, labels)
        return torch.where(valid, hits, torch.full_like(hits, float("nan")))

    for subset, (logits, labels, valid) in zip(chosen, scored):
        metrics = _score_valid(logits, labels, valid)
        metrics["samples"] = int(valid.sum())
        metrics["left_out"] = int((~valid).sum())
        metrics["ci95"] = wilson_interval(primary_metric(metrics), metrics["samples"])
        name = subset_name(subset)
        result["subset_metrics"][name] = metrics
        result["subsets"][name] = primary_metric(metrics)
        per_sample["subsets"][name] = sample_hits(logits, labels, valid)
        if len(subset) == len(mods):
            full_logits, full_labels = logits, labels
    for i, p in enumerate(drop_rates):
        runs = scored[len(chosen) + i * drop_repeats:len(chosen) + (i + 1) * drop_repeats]
        draws = [_score_valid(logits, labels, valid) for logits, labels, valid in runs]
        per_sample["drop"].append(torch.stack([sample_hits(*run) for run in runs]).nanmean(0))
        metrics = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
        metrics["draws"] = drop_repeats
        metrics["ci95"] = wilson_interval(primary_metric(metrics), int(runs[-1][2].sum()))
        result["drop_metrics"].append({"p": p, **metrics})
        result["drop_curve"].append(primary_metric(metrics))
    curve = np.asarray(result["drop_curve"], dtype=float)
    rates = np.asarray(drop_rates, dtype=float)
    span = rates[-1] - rates[0]
    result["auc"] = float(np.trapezoid(curve, rates) / span) if len(rates) > 1 and span > 0 else float(curve.mean())
    worst = min(result["subsets"].items(), key=lambda kv: kv[1])
    result["worst_subset"] = {"subset": worst[0], "accuracy": worst[1]}
    if full_logits is not None:
        result["full"] = {"logits": full_logits, "labels": full_labels}
    # ``[N]`` per subset and ``[P, N]`` per drop rate (mean over draws): 100/0 per sample, NaN where
    # not scored; their means are the accuracies above (samples in ``got.index`` order)
    result["per_sample"] = {"index": got.index, "subsets": per_sample["subsets"],
                            "drop": torch.stack(per_sample["drop"]) if per_sample["drop"] else torch.zeros(0)}
    return result
