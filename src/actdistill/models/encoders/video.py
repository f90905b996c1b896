"""torchvision video backbones (3D CNNs and video transformers) as clip encoders.

The backbone sees the whole ``[B, T, 3, H, W]`` clip (rearranged to ``[B, 3, T, H, W]``), its
classification head removed. ``tokens="clip"`` gives one token per clip; ``tokens="time"``
keeps the temporal axis of the last feature map (spatially averaged), one token per output time
step. Weights come from a local ``checkpoint`` only (torchvision state dict; head keys ignored).
The MViT models have fixed-size positional embeddings: they need 16 frames of 224 x 224.
"""

from __future__ import annotations

import math
import os

from torch import Tensor, nn

from actdistill.models.encoders.base import (
    ENCODERS,
    KINETICS_MEAN,
    KINETICS_STD,
    Encoder,
    Normalize,
    drop_prefixes,
    load_state_dict_file,
)

# arch -> (feature dim, head attribute, temporal downsampling kind)
VIDEO_ARCHS: dict[str, tuple[int, str, str]] = {
    "r3d_18": (512, "fc", "halve3"),
    "r2plus1d_18": (512, "fc", "halve3"),
    "mc3_18": (512, "fc", "none"),
    "swin3d_t": (768, "head", "halve1"),
    "swin3d_s": (768, "head", "halve1"),
    "swin3d_b": (1024, "head", "halve1"),
    "mvit_v1_b": (768, "head", "mvit"),
    "mvit_v2_s": (768, "head", "mvit"),
}


@ENCODERS.register("torchvision_video")
class TorchvisionVideoEncoder(Encoder):
    """A ``torchvision.models.video`` architecture without its head (see module docstring)."""

    def __init__(
        self,
        modality: str = "rgb",
        arch: str = "r3d_18",
        checkpoint: str | os.PathLike[str] | None = None,
        tokens: str = "clip",
        normalize_input: bool = True,
        out_dim: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models import video as tvv

        if arch not in VIDEO_ARCHS:
            raise ValueError(f"unknown torchvision video arch {arch!r} (known: {', '.join(VIDEO_ARCHS)})")
        if tokens not in ("clip", "time"):
            raise ValueError(f"unknown tokens {tokens!r} (known: clip, time)")
        feat_dim, head, self._downsample = VIDEO_ARCHS[arch]
        self.arch = arch
        self.net = getattr(tvv, arch)(weights=None)
        if checkpoint is not None:
            sd = drop_prefixes(load_state_dict_file(checkpoint), (f"{head}.",))
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.startswith(f"{head}.")]
            if missing or unexpected:
                raise ValueError(
                    f"{checkpoint}: does not fit {arch}; missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        setattr(self.net, head, nn.Identity())
        self.modality = modality
        self.tokens = tokens
        self.normalize: nn.Module = Normalize(KINETICS_MEAN, KINETICS_STD) if normalize_input else nn.Identity()
        self.proj: nn.Module = nn.Linear(feat_dim, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or feat_dim
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        if self.tokens == "clip":
            return 1
        if self._downsample == "halve3":
            t = num_frames
            for _ in range(3):
                t = math.ceil(t / 2)
            return t
        if self._downsample == "halve1":
            return math.ceil(num_frames / 2)
        if self._downsample == "mvit":
            return int(self.net.pos_encoding.temporal_size)
        return num_frames

    def _time_tokens(self, x: Tensor) -> Tensor:
        net = self.net
        if self._downsample in ("halve3", "none"):
            x = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))  # [B, C, t, h, w]
            return x.mean((3, 4)).transpose(1, 2)
        if self._downsample == "halve1":
            x = net.norm(net.features(net.pos_drop(net.patch_embed(x))))  # [B, t, h, w, C]
            return x.mean((2, 3))
        x = net.conv_proj(x).flatten(2).transpose(1, 2)
        x = net.pos_encoding(x)
        thw = (net.pos_encoding.temporal_size, *net.pos_encoding.spatial_size)
        for block in net.blocks:
            x, thw = block(x, thw)
        x = net.norm(x)[:, 1:]  # drop the class token
        return x.reshape(x.shape[0], thw[0], thw[1] * thw[2], -1).mean(2)

    def encode(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected an RGB clip [B, T, 3, H, W], got {tuple(x.shape)}")
        clip = self.normalize(x.transpose(1, 2))  # [B, 3, T, H, W]
        tok = self.net(clip).unsqueeze(1) if self.tokens == "clip" else self._time_tokens(clip)
        return self.proj(tok)
