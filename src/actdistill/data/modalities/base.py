"""The contract every modality reader follows.

A reader decodes one modality of one segment at frame numbers chosen by the temporal sampler
(once per sample, shared by all modalities). It returns a float tensor whose first dimension is
the number of requested frame numbers; spatial readers return ``[N, C, H, W]`` at the source's
native resolution so that one shared spatial transform (same crop, same flip) can be applied to
every spatial modality afterwards. Readers raise :class:`~actdistill.data.records.DataError`
naming the file on bad input and never return fabricated data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from actdistill.data.records import Problem, Segment, Source
from actdistill.registry import Registry

READERS: Registry[ModalityReader] = Registry("modality reader")


class ModalityReader(ABC):
    """Decode one modality. Subclasses set ``modality`` and whether the spatial transform applies."""

    modality: str = ""
    spatial: bool = True

    @abstractmethod
    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        """Decode the frames numbered ``frames`` (1-D int array, the segment's RGB numbering)."""

    def check(self, source: Source) -> Problem | None:
        """A cheap existence check for ``data summary``: the problem, or ``None`` if it looks fine."""
        if not Path(source.path).exists():
            return Problem(source.path, f"{self.modality} source not found", "missing")
        return None
