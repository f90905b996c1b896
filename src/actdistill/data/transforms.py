"""Spatial augmentation shared by every spatial modality of a sample.

Parameters (scale, crop position, flip) are drawn once per sample and applied to RGB, flow,
depth and box coordinates alike, so the modalities stay aligned ("consistent teaching"). Crop
positions are relative (fractions of the free margin), so modalities stored at different
resolutions still see the same part of the scene. A horizontal flip mirrors the image and
negates flow's x (u) channels, because mirrored motion to the right is motion to the left. A
resize scales flow's u and v channels by the width and height ratios: flow is a displacement in
pixels, so it must stay in pixels of the image the model sees, whatever resolution the flow was
stored or computed at (``actdistill predict`` computes TV-L1 at the model's scale, training reads
it at the dataset's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SpatialParams:
    """One sample's draw: resize factor on the short side, relative crop offsets, flip."""

    scale: float = 1.0
    rel_y: float = 0.5
    rel_x: float = 0.5
    flip: bool = False


@dataclass(frozen=True)
class SpatialTransform:
    """Resize the short side to ``short_side * scale``, crop ``crop_size`` square, maybe flip.

    ``train=False`` gives the deterministic test view: scale 1, centre crop, no flip.
    ``flip=False`` disables flipping, e.g. for direction-sensitive classes (SSv2's
    "left to right"). ``crop_size=0`` keeps the resized frame uncropped.
    """

    short_side: int = 128
    crop_size: int = 112
    train: bool = True
    flip: bool = True
    scale_range: tuple[float, float] = (1.0, 1.15)
    normalize: str = "none"  # none | imagenet | clip  (applied to rgb only)

    def sample(self, rng: np.random.Generator) -> SpatialParams:
        if not self.train:
            return SpatialParams()
        lo, hi = self.scale_range
        return SpatialParams(
            scale=float(rng.uniform(lo, hi)),
            rel_y=float(rng.random()),
            rel_x=float(rng.random()),
            flip=bool(self.flip and rng.random() < 0.5),
        )

    def _geometry(self, h: int, w: int, p: SpatialParams) -> tuple[int, int, int, int, int, int]:
        target = max(1, round(self.short_side * p.scale))
        if h <= w:
            nh, nw = target, max(1, round(w * target / h))
        else:
            nh, nw = max(1, round(h * target / w)), target
        c = self.crop_size
        if c <= 0:
            return nh, nw, 0, 0, nh, nw
        ch, cw = min(c, nh), min(c, nw)
        top = round((nh - ch) * p.rel_y)
        left = round((nw - cw) * p.rel_x)
        return nh, nw, top, left, ch, cw

    def apply(self, modality: str, x: torch.Tensor, p: SpatialParams) -> torch.Tensor:
        """Transform ``[N, C, H, W]`` of one spatial modality."""
        h, w = x.shape[-2:]
        nh, nw, top, left, ch, cw = self._geometry(h, w, p)
        if (nh, nw) != (h, w):
            mode = "nearest" if modality == "depth" else "bilinear"
            kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
            x = F.interpolate(x, size=(nh, nw), mode=mode, **kwargs)
            if modality == "flow":  # flow is in pixels: a 2x downscale halves the motion
                x[:, 0::2] *= nw / w
                x[:, 1::2] *= nh / h
        x = x[:, :, top : top + ch, left : left + cw]
        if p.flip:
            x = x.flip(-1)
            if modality == "flow":
                x = x.clone()
                x[:, 0::2] = -x[:, 0::2]  # u channels: horizontal motion changes sign
        if modality == "rgb" and self.normalize != "none":
            mean, std = (CLIP_MEAN, CLIP_STD) if self.normalize == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
            x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        return x.contiguous()

    def apply_boxes(self, boxes: torch.Tensor, p: SpatialParams, image_hw: tuple[int, int]) -> torch.Tensor:
        """Map normalised boxes ``[..., 6]`` (x1, y1, x2, y2, category, valid) into the crop frame.

        Boxes are clipped to the crop; a box that falls entirely outside becomes invalid.
        """
        h, w = image_hw
        nh, nw, top, left, ch, cw = self._geometry(h, w, p)
        out = boxes.clone()
        xs = out[..., [0, 2]] * nw - left
        ys = out[..., [1, 3]] * nh - top
        xs = xs.clamp(0, cw) / cw
        ys = ys.clamp(0, ch) / ch
        if p.flip:
            xs = 1.0 - xs.flip(-1)
        out[..., 0], out[..., 2] = xs[..., 0], xs[..., 1]
        out[..., 1], out[..., 3] = ys[..., 0], ys[..., 1]
        empty = (out[..., 2] - out[..., 0] <= 0) | (out[..., 3] - out[..., 1] <= 0)
        out[..., 5] = torch.where(empty, torch.zeros_like(out[..., 5]), out[..., 5])
        out[..., :5] = out[..., :5] * out[..., 5:6]
        return out
