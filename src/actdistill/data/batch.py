"""Collating samples that may lack some modalities into one batch with a presence mask.

A batch is a dict keyed by modality plus ``present: bool[B, M]`` over a fixed modality order.
A sample without a modality contributes a zero slot whose mask entry is ``False``: the zeros
are storage, never data, and every consumer must read the mask (the KARMMA embedding replaces
those slots with learned missing-modality tokens; losses and metrics ignore nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from actdistill.data.records import Problem


def collate(samples: Sequence[dict[str, Any] | None], modalities: Sequence[str]) -> dict[str, Any]:
    """Stack samples from :class:`~actdistill.data.dataset.MultimodalDataset` into a batch.

    ``None`` entries (samples skipped because every modality failed to read, when skipping was
    asked for) are dropped and counted in ``batch["skipped"]``; their problems travel along in
    ``batch["problems"]`` so the training loop can report them even from worker processes.
    """
    problems: list[Problem] = []
    kept: list[dict[str, Any]] = []
    skipped = 0
    for s in samples:
        if s is None:
            skipped += 1
            continue
        problems.extend(s.get("problems", []))
        if s.get("skipped"):
            skipped += 1
            continue
        kept.append(s)
    batch: dict[str, Any] = {
        "modalities": tuple(modalities),
        "uid": [s["uid"] for s in kept],
        "problems": problems,
        "skipped": skipped,
    }
    b = len(kept)
    present = torch.zeros(b, len(modalities), dtype=torch.bool)
    for j, m in enumerate(modalities):
        tensors = [s["inputs"].get(m) for s in kept]
        ref = next((t for t in tensors if t is not None), None)
        if ref is None:
            continue
        out = ref.new_zeros((b, *ref.shape))
        for i, t in enumerate(tensors):
            if t is not None:
                if t.shape != ref.shape:
                    raise ValueError(
                        f"sample {kept[i]['uid']}: {m} has shape {tuple(t.shape)}, batch expects "
                        f"{tuple(ref.shape)}; use the same sampling/crop settings for every sample"
                    )
                out[i] = t
                present[i, j] = True
        batch[m] = out
    if b and not present.any(1).all():
        bad = [kept[i]["uid"] for i in range(b) if not present[i].any()]
        raise ValueError(f"samples with no modality reached collate: {bad[:5]}")
    batch["present"] = present
    tasks = sorted({t for s in kept for t in s.get("labels", {})})
    batch["labels"] = {
        t: torch.tensor([int(s.get("labels", {}).get(t, -1)) for s in kept], dtype=torch.long) for t in tasks
    }
    batch["index"] = torch.tensor([int(s.get("index", -1)) for s in kept], dtype=torch.long)
    return batch


class Collate:
    """Picklable collate function bound to a modality order (for DataLoader workers)."""

    def __init__(self, modalities: Sequence[str]) -> None:
        self.modalities = tuple(modalities)

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        return collate(samples, self.modalities)
