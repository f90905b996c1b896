"""The frozen teacher: eval mode forever, no gradients, never wrapped by DDP.

The engine must wrap only the student in DistributedDataParallel: the teacher has no trainable
parameters, and keeping it outside DDP avoids gradient buckets and broadcasts for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from actdistill.models.encoders.base import freeze

TEACHER_INPUTS = ("dropped", "all")


class FrozenTeacher(nn.Module):
    """Wrap a trained multimodal model as a distillation teacher.

    ``inputs="dropped"`` (default; KARMMA v3): the teacher sees exactly the modalities the student
    sees after modality dropout. ``inputs="all"`` (KARMMA v1): it sees every modality the sample
    has (the pre-dropout mask passed as ``available``).
    """

    def __init__(self, model: nn.Module, inputs: str = "dropped") -> None:
        super().__init__()
        if inputs not in TEACHER_INPUTS:
            raise ValueError(f"unknown teacher inputs {inputs!r} (known: {', '.join(TEACHER_INPUTS)})")
        self.model = freeze(model)
        self.inputs = inputs

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(getattr(self.model, "modalities", ()))

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever the training loop asks (BatchNorm/dropout stay fixed)."""
        return super().train(False)

    def mask_for(self, present: Tensor, available: Tensor | None) -> Tensor:
        """The presence mask the teacher should use for this batch."""
        if self.inputs == "all":
            if available is None:
                raise ValueError("teacher inputs='all' needs the pre-dropout mask (available=...)")
            return available
        return present

    @torch.no_grad()
    def forward(
        self,
        inputs: Mapping[str, Tensor],
        present: Tensor,
        available: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Teacher outputs for ``present`` (student's mask) or ``available`` (``inputs="all"``)."""
        return self.model(inputs, self.mask_for(present, available), **kwargs)
