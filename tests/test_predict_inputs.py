"""``predict`` inputs beyond a video, and flow in the model's pixels.

* A run trained on IMU (named modalities ``imu:acc``, ``imu:gyro``) predicts from a sample folder
  or a generic manifest row, each modality read by its kind's reader; a stub stands in for the
  trained model (only the input side is under test, so nothing is trained).
* Flow is a displacement in pixels: a known translation gives the same model input whether TV-L1
  ran at full resolution and the spatial transform resized the flow, or ran at the model's scale.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from actdistill.data.records import DataError, Segment, Source
from actdistill.deploy import Recognizer

IMUS = ["imu:acc", "imu:gyro"]


class Stub(nn.Module):
    """Logits from the mean of each present input, so the answer depends on what was read."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, tuple[int, ...]]] = []

    def forward(self, x: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        self.seen.append({m: tuple(t.shape) for m, t in x.items()})
        score = sum((t.float().mean() for t in x.values()), torch.tensor(0.0))
        return {"logits": {"label": torch.stack([score, -score, score * 0]).expand(present.shape[0], 3)}}


def _imu_recognizer(tmp_path: Path) -> Recognizer:
    from actdistill.config import build_config
    from actdistill.engine.karmma import KarmmaConfig

    cfg = build_config(KarmmaConfig, None, [f"data.modalities=[{','.join(IMUS)}]", "data.sampling.num_frames=4",
                                            "data.readers={imu: {samples: 16, window_sec: 0.5}}"])
    info = {"modalities": IMUS, "heads": {"label": 3}, "classes": {"label": ["a", "b", "c"]}, "input_shapes": {}}
    return Recognizer(Stub(), cfg, info, "student", tmp_path)


def _imu_csv(path: Path, channels: int, seed: int) -> Path:
    from actdistill.data.modalities.imu import write_imu_csv

    t = np.linspace(0.0, 2.0, 101)
    return write_imu_csv(path, t, np.random.default_rng(seed).normal(size=(101, channels)),
                         [f"c{i}" for i in range(channels)])


def test_imu_run_predicts_from_a_sample_folder(tmp_path: Path) -> None:
    rec = _imu_recognizer(tmp_path)
    sample = tmp_path / "sample"
    _imu_csv(sample / "imu:acc.csv", 3, 0)
    _imu_csv(sample / "imu_gyro.csv", 2, 1)  # ':' written as '_' for file systems that refuse it
    pred = rec.predict(sample, top=2)
    assert pred.used == IMUS and not pred.missing
    assert rec.model.seen[-1] == {"imu:acc": (1, 4, 3, 16), "imu:gyro": (1, 4, 2, 16)}
    assert [it["label"] for it in pred.top_k["label"]] and len(pred.top_k["label"]) == 2
    (sample / "imu_gyro.csv").unlink()
    pred = rec.predict(sample)
    assert pred.used == ["imu:acc"] and "no entry named imu:gyro" in pred.missing["imu:gyro"]
    assert set(rec.model.seen[-1]) == {"imu:acc"}


def test_imu_run_predicts_from_a_manifest_row(tmp_path: Path) -> None:
    rec = _imu_recognizer(tmp_path)
    root = tmp_path / "data"
    for uid, seed in (("a", 0), ("b", 1)):
        _imu_csv(root / "imu" / f"{uid}_acc.csv", 3, seed)
        _imu_csv(root / "imu" / f"{uid}_gyro.csv", 2, seed + 10)
    (root / "manifest.csv").write_text("uid,imu:acc,imu:gyro,fps\n"
                                       "a,imu/a_acc.csv,imu/a_gyro.csv,10\nb,imu/b_acc.csv,,10\n")
    a = rec.predict(root / "manifest.csv", uid="a")
    assert a.used == IMUS and not a.missing and a.video.endswith("manifest.csv#a")
    b = rec.predict(root, uid="b")  # the folder holding the manifest works too
    assert b.used == ["imu:acc"] and "imu:gyro" in b.missing
    assert a.top_k["label"][0]["prob"] != b.top_k["label"][0]["prob"]
    with pytest.raises(DataError, match="2 rows; choose one with --uid"):
        rec.predict(root / "manifest.csv")
    with pytest.raises(DataError, match="no row with uid 'z'"):
        rec.predict(root / "manifest.csv", uid="z")


def test_a_video_is_refused_by_a_model_without_video(tmp_path: Path) -> None:
    rec = _imu_recognizer(tmp_path)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="none of them a video: give a sample folder"):
        rec.predict(video)


# -- flow: known translation, resized ---------------------------------------------------------------------


def _shifted_frames(folder: Path, shift: int, size: tuple[int, int] = (128, 160)) -> Path:
    """Two textured frames, the second the first moved ``shift`` pixels to the right."""
    h, w = size
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w + shift)).astype(np.uint8), (0, 0), 2.0)
    folder.mkdir(parents=True)
    for n, img in enumerate((base[:, shift:], base[:, :-shift]), 1):
        cv2.imwrite(str(folder / f"frame_{n:010d}.png"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    return folder


def _median_uv(flow: torch.Tensor) -> tuple[float, float]:
    inner = flow[0, :, 8:-8, 8:-8]
    return float(inner[0].median()), float(inner[1].median())


def test_flow_is_rescaled_with_the_frames(tmp_path: Path) -> None:
    from actdistill.data.datasets.video_folder import describe_one
    from actdistill.data.modalities.flow import FlowReader
    from actdistill.data.transforms import SpatialParams, SpatialTransform

    shift, bound = 6, 20.0
    rgb = describe_one(_shifted_frames(tmp_path / "frames", shift)).source
    seg = Segment(uid="s", video_id="s", start_frame=1, stop_frame=2, fps=30.0, sources={})
    reader = FlowReader(tvl1_bound=bound)
    full = reader.read(Source("from_rgb", rgb.path, num_frames=1, options={"rgb_source": rgb}), np.array([1]), seg)
    assert full.shape[-2:] == (128, 160)
    u, v = _median_uv(full)
    assert u * bound == pytest.approx(shift, rel=0.1) and abs(v * bound) < 0.3
    # the transform halves the image, and so the motion
    half = SpatialTransform(short_side=64, crop_size=0, train=False).apply("flow", full, SpatialParams())
    assert half.shape[-2:] == (64, 80)
    u2, v2 = _median_uv(half)
    assert u2 * bound == pytest.approx(shift / 2, rel=0.1) and abs(v2 * bound) < 0.2
    # predict's path: TV-L1 at the model's scale gives the same units, on 4x fewer pixels
    small = reader.read(Source("from_rgb", rgb.path, num_frames=1, options={"rgb_source": rgb, "short_side": 64}),
                        np.array([1]), seg)
    assert small.shape[-2:] == (64, 80)
    u3, _ = _median_uv(small)
    assert u3 * bound == pytest.approx(shift / 2, rel=0.15)
    # rgb and depth are images, not displacements: resized, never rescaled
    img = torch.full((1, 3, 128, 160), 0.5)
    assert torch.allclose(SpatialTransform(64, 0, train=False).apply("rgb", img, SpatialParams()), torch.tensor(0.5))
