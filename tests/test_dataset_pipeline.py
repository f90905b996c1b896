"""The multimodal dataset end to end on an EPIC-format fixture: shapes, alignment, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actdistill.config import build_config
from actdistill.data.builder import build_dataset, build_loader
from actdistill.data.records import DataError
from actdistill.experiment import ExperimentConfig


def _cfg(root: Path, *extra: str) -> ExperimentConfig:
    return build_config(ExperimentConfig, None, [
        "data.dataset=epic_kitchens_100", f"data.root={root}", "data.modalities=[rgb,flow,depth]",
        "data.sampling.num_frames=4", "data.spatial.short_side=16", "data.spatial.crop_size=12",
        "data.batch_size=2", *extra,
    ])


@pytest.fixture
def epic_depth(tmp_path: Path) -> Path:
    from tests.conftest import make_epic

    return make_epic(tmp_path / "epic", depth=True)


def test_batches_have_aligned_modalities(epic_depth: Path) -> None:
    cfg = _cfg(epic_depth)
    ds = build_dataset(cfg.data, "train", train=True)
    batch = next(iter(build_loader(ds, cfg.data, shuffle=False)))
    assert batch["rgb"].shape == (2, 1, 4, 3, 12, 12)
    assert batch["flow"].shape == (2, 1, 4, 2, 12, 12)
    assert batch["depth"].shape == (2, 1, 4, 1, 12, 12)
    assert batch["present"].all() and batch["labels"]["verb"].tolist() == [0, 1]
    # same seed, epoch and index -> identical sample; another epoch -> another augmentation draw
    a, b = ds[0], ds[0]
    assert torch.equal(a["inputs"]["rgb"], b["inputs"]["rgb"])
    ds.set_epoch(1)
    assert ds.rng_for(0).random() != build_dataset(cfg.data, "train", train=True).rng_for(0).random()


def test_bad_frame_raises_or_is_skipped_and_counted(epic_depth: Path) -> None:
    # every frame of P01_01's depth is truncated: raise names the file; skip drops depth for those samples
    for f in (epic_depth / "P01" / "depth_frames" / "P01_01").iterdir():
        f.write_bytes(f.read_bytes()[:40])
    cfg = _cfg(epic_depth)
    ds = build_dataset(cfg.data, "train", train=False)
    with pytest.raises(DataError, match=r"depth_frames/P01_01/frame_\d+\.png"):
        ds[0]
    cfg = _cfg(epic_depth, "data.on_error=skip")
    ds = build_dataset(cfg.data, "train", train=False)
    batch = next(iter(build_loader(ds, cfg.data, shuffle=False, batch_size=3)))
    assert batch["present"].tolist() == [[True, True, False]] * 3
    assert len(batch["problems"]) == 3 and all("depth_frames" in p.path for p in batch["problems"])
    assert batch["skipped"] == 0


def test_sample_with_nothing_readable_is_skipped(epic_depth: Path) -> None:
    import shutil

    cfg = _cfg(epic_depth, "data.on_error=skip", "data.modalities=[rgb]")
    ds = build_dataset(cfg.data, "train", train=False)
    shutil.rmtree(epic_depth / "P01" / "rgb_frames" / "P01_01")  # vanished after indexing
    batch = next(iter(build_loader(ds, cfg.data, shuffle=False, batch_size=3)))
    assert batch["uid"] == [] and batch["skipped"] == 3
    assert any("frame folder does not exist" in p.message for p in batch["problems"])
