"""Load the built-in synthetic dataset through the real EPIC-KITCHENS-100 adapter.

The synthetic data is written in the EPIC layout, so loading it exercises exactly the code a
user's real EPIC download goes through; this module only generates it first when absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actdistill.data.datasets.epic_kitchens import load_epic_kitchens
from actdistill.data.records import DatasetIndex


def ensure_synthetic(root: str | Path, seed: int = 0, size: str = "small", progress: bool = True) -> Path:
    """Generate the synthetic dataset into ``root`` unless a complete one is already there."""
    from actdistill.data.datasets.synthetic import write_synthetic_epic

    root = Path(root)
    write_synthetic_epic(root, seed=seed, size=size, progress=progress)
    return root


def load_synthetic(
    root: str | Path,
    split: str = "train",
    annotations: str | Path | None = None,
    modalities: tuple[str, ...] = ("rgb", "flow", "audio", "depth"),
    seed: int = 0,
    size: str = "small",
    generate: bool = True,
    progress: bool = True,
    **options: Any,
) -> DatasetIndex:
    if generate:
        ensure_synthetic(root, seed=seed, size=size, progress=progress)
    index = load_epic_kitchens(root, split=split, annotations=annotations, modalities=modalities, **options)
    index.name = "synthetic"
    return index
