"""Any 2D timm backbone as a per-frame encoder (timm is imported only when one is built).

``timm.create_model(name, pretrained=False, num_classes=0)``: nothing is downloaded; weights come
from a local ``checkpoint`` file (safetensors or a torch state dict read with
``weights_only=True``), with the classifier's keys ignored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from actdistill.models.encoders.base import (
    ENCODERS,
    Encoder,
    Normalize,
    fold_frames,
    grid_tokens,
    load_state_dict_file,
)


@ENCODERS.register("timm")
class TimmEncoder(Encoder):
    """timm model ``model_name`` applied per frame.

    ``tokens="pooled"``: the model's own global pooling (and pre-logits layers), one token per frame;
    ``tokens="grid"``: ``forward_features`` pooled to ``grid x grid`` tokens per frame (CNN maps,
    NHWC maps, or ViT patch tokens with the prefix tokens dropped). ``normalize_input`` applies the
    model's ``pretrained_cfg`` mean/std to ``[0, 1]`` RGB input.
    """

    def __init__(
        self,
        modality: str = "rgb",
        model_name: str = "resnet18",
        checkpoint: str | os.PathLike[str] | None = None,
        in_channels: int = 3,
        tokens: str = "pooled",
        grid: int = 1,
        normalize_input: bool = True,
        model_kwargs: Mapping[str, Any] | None = None,
        temporal_layers: int = 0,
        temporal_kernel: int = 3,
        out_dim: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        import timm

        if tokens not in ("pooled", "grid"):
            raise ValueError(f"unknown tokens {tokens!r} (known: pooled, grid)")
        self.model = timm.create_model(
            model_name, pretrained=False, num_classes=0, in_chans=in_channels, **dict(model_kwargs or {})
        )
        if checkpoint is not None:
            sd = load_state_dict_file(checkpoint)
            head = self.model.pretrained_cfg.get("classifier")
            heads = tuple(f"{h}." for h in ([head] if isinstance(head, str) else head or []))
            sd = {k: v for k, v in sd.items() if not (heads and k.startswith(heads))}
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{checkpoint}: does not fit timm {model_name!r}; "
                    f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
                )
        cfg = self.model.pretrained_cfg
        self.normalize: nn.Module = (
            Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))
            if normalize_input and in_channels == 3 and "mean" in cfg
            else nn.Identity()
        )
        self.modality = modality
        self.tokens = tokens
        self.grid = grid if tokens == "grid" else 1
        # pooled output can be wider than the feature map (e.g. MobileNetV3's conv_head)
        head_dim = getattr(self.model, "head_hidden_size", None) if tokens == "pooled" else None
        feat_dim = int(head_dim or self.model.num_features)
        self._output(feat_dim, out_dim, temporal_layers, temporal_kernel)
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        return num_frames * self.grid**2

    def _grid(self, frames: Tensor) -> Tensor:
        feat = self.model.forward_features(frames)
        if feat.dim() == 3:  # ViT-like [N, prefix + L, C]
            feat = feat[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
            side = math.isqrt(feat.shape[1])
            if side * side != feat.shape[1]:
                raise ValueError(f"cannot arrange {feat.shape[1]} patch tokens on a square grid")
            feat = feat.transpose(1, 2).reshape(feat.shape[0], -1, side, side)
        elif str(getattr(self.model, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC"):
            feat = feat.permute(0, 3, 1, 2)
        return grid_tokens(feat, self.grid)

    def encode(self, x: Tensor) -> Tensor:
        frames, b, t = fold_frames(x, 3)
        frames = self.normalize(frames)
        tok = self.model(frames).unsqueeze(1) if self.tokens == "pooled" else self._grid(frames)
        tok = self.proj(tok).reshape(b, t * self.grid**2, self.out_dim)
        return self.temporal(tok, t)
