"""Dataset adapters, one per dataset, built by name from config.

Each entry maps a name to a loader ``(root, split, annotations, modalities, **options) ->
DatasetIndex`` that reads the dataset's official layout. Loaders are imported lazily so that
``actdistill --help`` stays fast and an adapter's optional dependencies load only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actdistill.data.records import DatasetIndex
from actdistill.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset: loader location, its splits and modalities, and a description."""

    name: str
    loader: str  # "module:function"
    splits: tuple[str, ...]
    modalities: tuple[str, ...]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def load(
        self,
        root: str | Path,
        split: str,
        annotations: str | Path | None = None,
        modalities: tuple[str, ...] | list[str] | None = None,
        **options: Any,
    ) -> DatasetIndex:
        module, func = self.loader.split(":")
        fn: Callable[..., DatasetIndex] = getattr(importlib.import_module(module), func)
        kwargs = {**self.defaults, **options}
        return fn(root=root, split=split, annotations=annotations,
                  modalities=tuple(modalities or self.modalities), **kwargs)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(lambda: spec)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.build(name)


_EPIC = "actdistill.data.datasets.epic_kitchens:load_epic_kitchens"
register_dataset(DatasetSpec(
    "epic_kitchens_100", _EPIC, ("train", "validation", "test", "train_star", "val_star"),
    ("rgb", "flow", "audio"), "EPIC-KITCHENS-100 (annotations v1.1, official frame/video layout)",
))
register_dataset(DatasetSpec(
    "synthetic", "actdistill.data.datasets.synthetic_loader:load_synthetic",
    ("train", "validation", "test", "train_star", "val_star"), ("rgb", "flow", "audio", "depth"),
    "built-in synthetic multimodal dataset in the EPIC-KITCHENS-100 layout (generated if absent)",
))
