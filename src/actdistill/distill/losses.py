"""Classification and distillation losses over task heads, returned as dicts of components.

Every model predicts several tasks (EPIC: verb, noun, optionally action); losses are averaged
over task heads, and label ``-1`` (unknown) is ignored by cross-entropy. Each function returns
``loss`` plus its components, so the training loop can log them all (timm's distillation task
does the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _tasks(logits: Mapping[str, Tensor], tasks: Sequence[str] | None) -> list[str]:
    names = list(tasks) if tasks is not None else list(logits)
    if not names:
        raise ValueError("no task heads to compute a loss over")
    return names


def _zero(like: Mapping[str, Tensor]) -> Tensor:
    """A zero that still belongs to the graph (so ``backward`` works when nothing is labelled)."""
    return torch.stack([v.sum() * 0.0 for v in like.values()]).sum()


def ce_loss(
    logits: Mapping[str, Tensor],
    labels: Mapping[str, Tensor],
    tasks: Sequence[str] | None = None,
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """Mean over tasks of cross-entropy, ignoring label -1; tasks without any known label in the
    batch (or without labels at all) are left out of the mean. Keys: ``loss``, ``loss_ce``,
    ``loss_ce/<task>``."""
    out: dict[str, Tensor] = {}
    terms = []
    for t in _tasks(logits, tasks):
        y = labels.get(t)
        if y is None or not bool((y >= 0).any()):
            continue
        term = F.cross_entropy(logits[t], y.to(logits[t].device), ignore_index=-1, label_smoothing=label_smoothing)
        out[f"loss_ce/{t}"] = term
        terms.append(term)
    total = torch.stack(terms).mean() if terms else _zero(logits)
    out["loss_ce"] = total
    out["loss"] = total
    return out


def kl_divergence(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher.detach() / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def kd_loss(
    student_logits: Mapping[str, Tensor],
    teacher_logits: Mapping[str, Tensor],
    labels: Mapping[str, Tensor] | None,
    alpha: float = 0.5,
    T: float = 1.0,
    tasks: Sequence[str] | None = None,
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """KARMMA's student loss ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    Both terms are averaged over task heads. ``T^2`` keeps the soft-target gradients on the same
    scale as the hard-label ones when ``T`` changes (Hinton et al.). Keys: ``loss``, ``loss_kd``
    (the unscaled mean KL), ``loss_ce``, and per task ``loss_kd/<task>``, ``loss_ce/<task>``.
    """
    if not 0.0 <= alpha <= 1.0 or T <= 0:
        raise ValueError(f"need 0 <= alpha <= 1 and T > 0, got alpha={alpha}, T={T}")
    names = _tasks(student_logits, tasks)
    lacking = [t for t in names if t not in teacher_logits]
    if lacking:
        raise KeyError(f"teacher has no head for task(s) {lacking}")
    out: dict[str, Tensor] = {}
    kd_terms = []
    for t in names:
        term = kl_divergence(student_logits[t], teacher_logits[t], T)
        out[f"loss_kd/{t}"] = term
        kd_terms.append(term)
    loss_kd = torch.stack(kd_terms).mean()
    ce = ce_loss(student_logits, labels or {}, names, label_smoothing)
    out.update({k: v for k, v in ce.items() if k.startswith("loss_ce/")})
    out["loss_kd"] = loss_kd
    out["loss_ce"] = ce["loss_ce"]
    out["loss"] = alpha * T**2 * loss_kd + (1.0 - alpha) * ce["loss_ce"]
    return out
