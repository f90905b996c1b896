from __future__ import annotations

import numpy as np
import pytest
import torch

from actdistill.data.batch import collate
from actdistill.data.transforms import SpatialParams, SpatialTransform


def test_same_crop_for_all_modalities_and_flow_flip() -> None:
    t = SpatialTransform(short_side=16, crop_size=8, train=True)
    p = SpatialParams(scale=1.0, rel_y=0.0, rel_x=1.0, flip=True)
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(2, 1, 16, 32)
    rgb = t.apply("rgb", ramp.expand(2, 3, 16, 32), p)
    depth = t.apply("depth", ramp, p)
    flow = torch.cat([torch.ones(2, 1, 16, 32), torch.full((2, 1, 16, 32), 0.5)], 1)
    flow_out = t.apply("flow", flow, p)
    assert rgb.shape == (2, 3, 8, 8) and depth.shape == (2, 1, 8, 8)
    # rel_x=1 -> right-most 8 columns, flipped
    assert rgb[0, 0, 0].tolist() == list(range(31, 23, -1))
    assert torch.equal(depth[:, 0], rgb[:, 0])
    assert torch.all(flow_out[:, 0] == -1) and torch.all(flow_out[:, 1] == 0.5)


def test_test_view_is_deterministic_centre_crop() -> None:
    t = SpatialTransform(short_side=16, crop_size=8, train=False)
    p = t.sample(np.random.default_rng(0))
    assert p == SpatialParams()
    x = torch.arange(16.0 * 16).view(1, 1, 16, 16)
    out = t.apply("depth", x, p)
    assert out[0, 0, 0, 0].item() == x[0, 0, 4, 4].item()


def test_boxes_follow_crop_and_flip() -> None:
    t = SpatialTransform(short_side=10, crop_size=10, train=False)
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 2.0, 1.0]]])
    same = t.apply_boxes(boxes, SpatialParams(), (10, 10))
    assert torch.allclose(same, boxes)
    flipped = t.apply_boxes(boxes, SpatialParams(flip=True), (10, 10))
    assert torch.allclose(flipped[0, 0, :4], torch.tensor([0.7, 0.2, 0.9, 0.4]))
    t2 = SpatialTransform(short_side=10, crop_size=5, train=False)
    gone = t2.apply_boxes(torch.tensor([[[0.0, 0.0, 0.1, 0.1, 2.0, 1.0]]]), SpatialParams(), (10, 10))
    assert gone[0, 0, 5] == 0 and gone[0, 0, :5].abs().sum() == 0


def _sample(uid: str, mods: dict[str, torch.Tensor], label: int) -> dict:
    return {"uid": uid, "index": 0, "inputs": mods, "labels": {"verb": label}, "problems": []}


def test_collate_presence_mask_and_skips() -> None:
    a = _sample("a", {"rgb": torch.ones(1, 2, 3, 4, 4)}, 1)
    b = _sample("b", {"flow": torch.ones(1, 2, 2, 4, 4)}, 2)
    c = {**_sample("c", {}, 0), "skipped": True}
    batch = collate([a, b, c, None], ("rgb", "flow", "audio"))
    assert batch["uid"] == ["a", "b"] and batch["skipped"] == 2
    assert batch["present"].tolist() == [[True, False, False], [False, True, False]]
    assert "audio" not in batch
    assert batch["rgb"][1].abs().sum() == 0  # storage for an absent modality, masked out
    assert batch["labels"]["verb"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="shape"):
        collate([a, _sample("d", {"rgb": torch.ones(1, 3, 3, 4, 4)}, 0)], ("rgb",))
