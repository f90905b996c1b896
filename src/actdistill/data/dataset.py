"""A torch Dataset over adapter segments: sample frames once, read each modality, transform alike.

Per sample: one RNG seeded by (seed, epoch, uid) so runs are reproducible and independent of
worker count; one temporal draw ``[views, T]`` shared by every modality; one spatial draw shared
by every spatial modality and the box coordinates. Outputs per modality are ``[V, T, ...]``.

Bad input: with ``on_error="raise"`` the first :class:`DataError` propagates (naming the file).
With ``on_error="skip"`` a modality that fails to read is treated as missing for that sample and
the problem is recorded; a sample whose every modality failed is skipped and counted. A sample
is never returned with zero modalities.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from actdistill.data.modalities.base import ModalityReader, modality_kind
from actdistill.data.records import DataError, DatasetIndex, Problem, Segment
from actdistill.data.sampling import TemporalSampler
from actdistill.data.transforms import SpatialTransform

ON_ERROR = ("raise", "skip")


class MultimodalDataset(Dataset):
    def __init__(
        self,
        index: DatasetIndex,
        modalities: Sequence[str],
        readers: Mapping[str, ModalityReader],
        sampler: TemporalSampler,
        transform: SpatialTransform,
        train: bool,
        seed: int = 0,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        missing = [m for m in modalities if m not in readers]
        if missing:
            raise ValueError(f"no reader configured for modalities {missing}")
        self.index = index
        self.segments: list[Segment] = [s for s in index.segments if any(m in s.sources for m in modalities)]
        self.dropped_no_modality = len(index.segments) - len(self.segments)
        self.modalities = tuple(modalities)
        self.readers = dict(readers)
        self.sampler = sampler
        self.transform = transform
        self.train = train
        self.seed = seed
        self.on_error = on_error
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.segments)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw for a new epoch (deterministic given seed and epoch)."""
        self.epoch = epoch

    def rng_for(self, i: int, epoch: int | None = None) -> np.random.Generator:
        """Sample ``i``'s draws (frames, crop, flip) in this epoch, keyed by its uid, not its position:
        the same clip whatever subset, shard or worker reads it, so the frames a frozen teacher saw
        when its tokens were cached can be decoded again for the student ("consistent teaching")."""
        uid = int.from_bytes(hashlib.blake2b(self.segments[i].uid.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, uid, int(self.train)])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(i, self.epoch)

    def get(self, i: int, epoch: int) -> dict[str, Any]:
        """Sample ``i`` as drawn in ``epoch`` (without changing the dataset's own epoch)."""
        seg = self.segments[i]
        rng = self.rng_for(i, epoch)
        frames = self.sampler(seg.start_frame, seg.stop_frame, self.train, rng)  # [V, T]
        params = self.transform.sample(rng)
        views, t = frames.shape
        flat = frames.reshape(-1)
        inputs: dict[str, torch.Tensor] = {}
        problems: list[Problem] = []
        image_hw: tuple[int, int] | None = None
        for m in self.modalities:
            src = seg.sources.get(m)
            if src is None:
                continue
            reader = self.readers[m]
            try:
                x = reader.read(src, flat, seg)
            except DataError as err:
                if self.on_error == "raise":
                    raise
                problems.append(Problem.from_error(err))
                continue
            if x.shape[0] != flat.shape[0]:
                raise RuntimeError(f"{m} reader returned {x.shape[0]} frames for {flat.shape[0]} requested")
            if reader.spatial:
                image_hw = image_hw or (int(x.shape[-2]), int(x.shape[-1]))
                x = self.transform.apply(modality_kind(m), x, params)  # flow:x flips like flow
            elif modality_kind(m) == "boxes":
                x = self.transform.apply_boxes(x, params, self._box_hw(src.options, image_hw))
            inputs[m] = x.reshape(views, t, *x.shape[1:])
        sample: dict[str, Any] = {"uid": seg.uid, "index": i, "labels": dict(seg.labels), "problems": problems}
        if not inputs:
            if self.on_error == "raise":  # only reachable when sources exist but reading returned nothing
                raise DataError(seg.uid, "sample has no readable modality")
            sample["skipped"] = True
            problems.append(Problem(seg.uid, "every modality failed to read; sample skipped", "unreadable"))
        sample["inputs"] = inputs
        return sample

    @staticmethod
    def _box_hw(options: Mapping[str, Any], image_hw: tuple[int, int] | None) -> tuple[int, int]:
        if image_hw is not None:
            return image_hw
        size = options.get("image_size")
        if size:
            w, h = size
            return int(h), int(w)
        return 1, 1
