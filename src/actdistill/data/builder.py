"""Typed data configuration and the one function that turns it into datasets and loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from actdistill.data.batch import Collate
from actdistill.data.dataset import MultimodalDataset
from actdistill.data.datasets import get_dataset
from actdistill.data.modalities.base import ModalityReader, build_reader, options_for
from actdistill.data.records import DataError, DatasetIndex
from actdistill.data.sampling import TemporalSampler
from actdistill.data.transforms import SpatialTransform


@dataclass
class SamplingConfig:
    mode: str = "tsn"  # tsn | uniform | dense
    num_frames: int = 8
    stride: int = 2
    test_views: int = 1
    max_pad: int = 5


@dataclass
class SpatialConfig:
    short_side: int = 128
    crop_size: int = 112
    flip: bool = True
    scale_range: tuple[float, float] = (1.0, 1.15)
    normalize: str = "none"  # none | imagenet | clip


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str = "data/synthetic"
    annotations: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["rgb", "flow", "audio", "depth"])
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "validation"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    readers: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-modality reader options
    options: dict[str, Any] = field(default_factory=dict)  # dataset-adapter options
    batch_size: int = 16
    num_workers: int = 0
    on_error: str = "raise"  # raise | skip
    seed: int = 0


def load_index(cfg: DataConfig, split: str) -> DatasetIndex:
    """Index ``split`` of the configured dataset; a split with no usable sample is a :class:`DataError`.

    Why raise: an empty split would otherwise surface far from its cause (a DataLoader refusing
    ``num_samples=0``, or a training stage that runs zero steps and saves untrained weights),
    while here the first problem found says which file made every sample unusable.
    """
    spec = get_dataset(cfg.dataset)
    index = spec.load(cfg.root, split, annotations=cfg.annotations, modalities=tuple(cfg.modalities), **cfg.options)
    if not index.segments:
        where = cfg.annotations or cfg.root
        if index.problems:
            first = index.problems[0]
            detail = f"{len(index.problems)} problem(s) found, the first: {first.path}: {first.message}"
        else:
            detail = "the split lists no samples"
        raise DataError(where, f"split {split!r} of dataset {cfg.dataset!r} has no usable samples ({detail}); "
                               "see `actdistill data summary`")
    return index


def build_readers(cfg: DataConfig) -> dict[str, ModalityReader]:
    """One reader per modality, by kind (``imu:acc`` -> the ``imu`` reader), with the options of
    ``data.readers.<name>`` or, when a named modality has none, of its kind."""
    return {m: build_reader(m, options_for(cfg.readers, m)) for m in cfg.modalities}


def build_dataset(cfg: DataConfig, split: str, train: bool, index: DatasetIndex | None = None) -> MultimodalDataset:
    """Index ``split`` and wrap it with the configured readers, sampler and spatial transform."""
    index = index if index is not None else load_index(cfg, split)
    s = cfg.sampling
    sampler = TemporalSampler(s.mode, s.num_frames, s.stride, s.test_views, s.max_pad)
    sp = cfg.spatial
    transform = SpatialTransform(sp.short_side, sp.crop_size, train, sp.flip, sp.scale_range, sp.normalize)
    return MultimodalDataset(index, cfg.modalities, build_readers(cfg), sampler, transform, train,
                             seed=cfg.seed, on_error=cfg.on_error)


def build_loader(dataset: MultimodalDataset, cfg: DataConfig, shuffle: bool, batch_size: int | None = None,
                 num_workers: int | None = None) -> DataLoader:
    workers = cfg.num_workers if num_workers is None else num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=Collate(dataset.modalities),
        persistent_workers=workers > 0,
    )
