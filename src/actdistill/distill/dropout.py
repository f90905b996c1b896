"""Modality dropout: hide whole modalities per sample so models learn to cope with missing ones.

KARMMA trains teacher and student with it ([D] p = 0.5, independent Bernoulli per modality per
sample, resample if everything was dropped). Dropout only ever *removes* modalities a sample
has; it never marks an absent one present, and never leaves a sample that had something empty.
The same function with a seeded generator is the dynamic-drop evaluation protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

ON_EMPTY = ("resample", "keep_one")


def _bernoulli_keep(shape: tuple[int, ...], p: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else p.device
    return torch.rand(shape, generator=generator, device=device).to(p.device) >= p


def modality_dropout(
    present: Tensor,
    p: float | Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    keep_at_least_one: bool = True,
    on_empty: str = "resample",
    max_resample: int = 100,
) -> Tensor:
    """Drop each present modality of each sample independently with probability ``p``.

    Args:
        present: bool ``[B, M]`` availability.
        p: one probability, or one per modality (``[M]``).
        generator: for reproducible drops (its device is used for sampling).
        keep_at_least_one: a sample that had any modality keeps at least one of its own.
        on_empty: what to do with a sample whose draw dropped everything: ``"resample"`` draws
            again (exactly the Bernoulli draw conditioned on keeping something; after
            ``max_resample`` rounds, or when every ``p`` of its modalities is 1, it falls back to
            ``"keep_one"``), ``"keep_one"`` restores one of its available modalities uniformly.

    Returns a new bool ``[B, M]`` mask that is a subset of ``present``.
    """
    if on_empty not in ON_EMPTY:
        raise ValueError(f"unknown on_empty {on_empty!r} (known: {', '.join(ON_EMPTY)})")
    present = present.bool()
    probs = torch.as_tensor(p, dtype=torch.float32, device=present.device)
    if probs.dim() == 0:
        probs = probs.expand(present.shape[1])
    if probs.shape != (present.shape[1],) or bool(((probs < 0) | (probs > 1)).any()):
        raise ValueError(f"p must be in [0, 1], one value or one per modality; got {p!r}")
    out = present & _bernoulli_keep(tuple(present.shape), probs, generator)
    if not keep_at_least_one:
        return out
    empty = present.any(1) & ~out.any(1)
    if on_empty == "resample" and bool(empty.any()):
        for _ in range(max_resample):
            rows = empty.nonzero().squeeze(1)
            can = (present[rows] & (probs < 1)).any(1)  # rows that can ever keep something
            rows = rows[can]
            if rows.numel() == 0:
                break
            redraw = present[rows] & _bernoulli_keep((rows.numel(), present.shape[1]), probs, generator)
            out[rows] = redraw
            empty = present.any(1) & ~out.any(1)
            if not bool(empty.any()):
                break
    if bool(empty.any()):
        rows = empty.nonzero().squeeze(1)
        device = generator.device if generator is not None else present.device
        scores = torch.rand((rows.numel(), present.shape[1]), generator=generator, device=device)
        scores = scores.to(present.device).masked_fill(~present[rows], -1.0)
        pick = scores.argmax(1)
        out[rows, pick] = True
    return out


def mask_inputs(inputs: Mapping[str, Tensor], present: Tensor, modalities: Sequence[str]) -> dict[str, Tensor]:
    """Zero the rows of dropped modalities, keeping the batch contract "absent entries are zeros".

    Models never read absent rows, so this is not needed for correctness; it keeps dropped data
    from reaching anything that ignores the mask (visualisation, caches, user hooks).
    """
    out = dict(inputs)
    for j, m in enumerate(modalities):
        if m in out:
            keep = present[:, j].view(-1, *([1] * (out[m].dim() - 1)))
            out[m] = torch.where(keep, out[m], torch.zeros_like(out[m]))
    return out
