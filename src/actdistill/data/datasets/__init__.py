"""Dataset adapters, one per dataset, built by name from config.

Each entry maps a name to a loader ``(root, split, annotations, modalities, **options) ->
DatasetIndex`` that reads the dataset's official layout. Loaders are imported lazily so that
``actdistill --help`` stays fast and an adapter's optional dependencies load only when used.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actdistill.data.records import DatasetIndex
from actdistill.registry import Registry, spec_factory_problem


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset: loader location, its splits and modalities, and a description."""

    name: str
    loader: str  # "module:function"
    splits: tuple[str, ...]
    modalities: tuple[str, ...]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    annotations_arg: str = "annotations"  # the loader's name for the annotation/split-file location

    def load(
        self,
        root: str | Path,
        split: str,
        annotations: str | Path | None = None,
        modalities: tuple[str, ...] | list[str] | None = None,
        **options: Any,
    ) -> DatasetIndex:
        module, func = self.loader.split(":")
        fn: Callable[..., DatasetIndex] | None = getattr(importlib.import_module(module), func, None)
        problem = loader_problem(fn, self.annotations_arg, self.loader)
        if problem:  # a plugin's loader, found wrong when first used: one line, not a traceback
            raise ValueError(f"dataset {self.name!r}: {problem}")
        assert fn is not None
        accepted = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        kwargs: dict[str, Any] = {**self.defaults, **options}
        unknown = [k for k in kwargs if k not in accepted and not takes_any]
        if unknown:
            raise ValueError(f"dataset {self.name!r} has no option {unknown}; options: "
                             f"{[k for k in accepted if k not in ('root', 'split', 'modalities')]}")
        if annotations is not None:
            kwargs[self.annotations_arg] = annotations
        if "modalities" in accepted:
            kwargs["modalities"] = tuple(modalities or self.modalities)
        elif modalities and set(modalities) - set(self.modalities):
            raise ValueError(f"dataset {self.name!r} provides only {list(self.modalities)}")
        return fn(root=root, split=split, **kwargs)


def loader_problem(fn: Any, annotations_arg: str, loader: str) -> str | None:
    """What is wrong with ``fn`` as a dataset loader (``None``: nothing): the adapter signature is
    ``(root, split, [modalities], [<annotations_arg>], **options) -> DatasetIndex``; ``modalities``
    and the annotations argument are passed only when the loader takes them (or when given)."""
    if fn is None:
        return f"loader {loader!r}: the module has no such function"
    if not callable(fn):
        return f"loader {loader!r} is not callable"
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [a for a in ("root", "split") if a not in params and not takes_any]
    if missing:
        return (f"loader {loader!r} takes no {' or '.join(missing)} argument (a loader is called as "
                f"fn(root=..., split=..., [modalities=...], [{annotations_arg}=...], **options) and returns a "
                "DatasetIndex)")
    return None


def spec_problem(spec: Any) -> str | None:
    """What is wrong with ``spec`` as a dataset entry (``None``: nothing). The loader's module is
    imported lazily (optional dependencies load only when the dataset is used), so its function is
    checked here only when the module is already imported, as a plugin's own module is; otherwise
    when the dataset is first loaded."""
    if not isinstance(spec, DatasetSpec):
        return f"expected a DatasetSpec, got {type(spec).__qualname__}"
    module, sep, func = spec.loader.partition(":") if isinstance(spec.loader, str) else ("", "", "")
    if not (module and sep and func):
        return f"loader must be 'module:function' (e.g. f'{{__name__}}:load_mine'), got {spec.loader!r}"
    for key in ("splits", "modalities"):
        value = getattr(spec, key)
        if not isinstance(value, tuple | list) or not value or not all(isinstance(v, str) for v in value):
            return f"{key} must be a non-empty tuple of names, got {value!r}"
    if not isinstance(spec.description, str):
        return f"description must be a string, got {spec.description!r}"
    if module in sys.modules and hasattr(sys.modules[module], func):
        return loader_problem(getattr(sys.modules[module], func), spec.annotations_arg, spec.loader)
    return None


def _dataset_contract(factory: Any) -> str | None:
    return spec_factory_problem(factory, DatasetSpec, "register_dataset", spec_problem)


DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", contract=_dataset_contract,
    what="register_dataset(DatasetSpec(name, 'module:function', splits, modalities, description)); see "
    "docs/extending.md",
)


def register_dataset(spec: DatasetSpec) -> None:
    """Add ``spec`` to :data:`DATASETS` under ``spec.name`` (checked: see :func:`spec_problem`)."""
    name = spec.name if isinstance(spec, DatasetSpec) else repr(spec)
    description = spec.description if isinstance(spec, DatasetSpec) and isinstance(spec.description, str) else None
    DATASETS.register(name, description=description)(lambda: spec)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.build(name)


_EPIC = "actdistill.data.datasets.epic_kitchens:load_epic_kitchens"
register_dataset(DatasetSpec(
    "epic_kitchens_100", _EPIC, ("train", "validation", "test", "train_star", "val_star"),
    ("rgb", "flow", "audio"), "EPIC-KITCHENS-100 (annotations v1.1, official frame/video layout)",
))
register_dataset(DatasetSpec(
    "synthetic", "actdistill.data.datasets.synthetic_loader:load_synthetic",
    ("train", "validation", "heldout", "test", "train_star", "val_star"), ("rgb", "flow", "audio", "depth"),
    "built-in synthetic multimodal dataset in the EPIC-KITCHENS-100 layout (generated if absent)",
))
register_dataset(DatasetSpec(
    "ssv2", "actdistill.data.datasets.ssv2:load_ssv2", ("train", "validation", "test"), ("rgb",),
    "Something-Something v2 (labels/train/validation/test JSON; .webm videos or frame folders; "
    "optional flow and Something-Else boxes)",
))
register_dataset(DatasetSpec(
    "video_folder", "actdistill.data.datasets.video_folder:load_video_folder", ("all",), ("rgb",),
    "class-folder videos or frame folders (Kinetics, UCF101, HMDB51, your own); optional split list",
    annotations_arg="split_file",
))
register_dataset(DatasetSpec(
    "ucf101", "actdistill.data.datasets.video_folder:load_ucf101", ("train", "test"), ("rgb",),
    "UCF101 class folders with the official classInd/trainlist/testlist files (annotations = split folder)",
    annotations_arg="split_dir",
))
register_dataset(DatasetSpec(
    "hmdb51", "actdistill.data.datasets.video_folder:load_hmdb51", ("train", "test"), ("rgb",),
    "HMDB51 class folders with the official <class>_test_split<k>.txt files (annotations = split folder)",
    annotations_arg="split_dir",
))
register_dataset(DatasetSpec(
    "fewshot", "actdistill.data.datasets.fewshot_splits:load_fewshot_split", ("train", "val", "test"), ("rgb",),
    "few-shot benchmarks from TRX-style split files (SSv2-Full/Small, Kinetics-100, UCF101, HMDB51; "
    "annotations = the splits folder)",
    annotations_arg="split_dir",
))
register_dataset(DatasetSpec(
    "generic", "actdistill.data.datasets.generic:load_generic", ("train", "validation", "test"),
    ("rgb", "flow", "audio", "depth", "boxes", "imu"),
    "your own multimodal data: manifest.csv/.jsonl + classes.json (see docs/data.md)",
    annotations_arg="manifest",
))
