"""The visual tower of an open_clip model as a per-frame encoder (open_clip imported lazily).

``open_clip.create_model(arch, pretrained=None)`` builds the architecture (RN50, ViT-B-16, ...)
without downloading anything; ``pretrained`` is a local checkpoint file only (a full CLIP state
dict, or a visual-tower-only one), read with safetensors or ``torch.load(weights_only=True)``.
One token per frame: the tower's projected image embedding (``out_dim`` = CLIP embed dim).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from actdistill.models.encoders.base import (
    CLIP_MEAN,
    CLIP_STD,
    ENCODERS,
    Encoder,
    Normalize,
    fold_frames,
    load_state_dict_file,
)


@ENCODERS.register("open_clip")
class OpenCLIPEncoder(Encoder):
    """open_clip ``arch``'s image tower per frame; ``normalize_input`` applies CLIP mean/std to
    ``[0, 1]`` input (else the data config must use ``spatial.normalize: clip``).
    ``image_size`` overrides the architecture's input size (positional embeddings resized)."""

    def __init__(
        self,
        modality: str = "rgb",
        arch: str = "ViT-B-16",
        pretrained: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        normalize_input: bool = True,
        temporal_layers: int = 0,
        temporal_kernel: int = 3,
        out_dim: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        import open_clip

        if pretrained is not None and not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"open_clip pretrained must be a local checkpoint file, got {pretrained!r} "
                "(actdistill never downloads weights)"
            )
        model = open_clip.create_model(arch, pretrained=None, pretrained_text=False, force_image_size=image_size)
        if pretrained is not None:
            sd = load_state_dict_file(pretrained)
            target: nn.Module = model if any(k.startswith("visual.") for k in sd) else model.visual
            missing, unexpected = target.load_state_dict(sd, strict=False)
            if target is model:
                missing = [k for k in missing if k.startswith("visual.")]
            if missing or unexpected:
                raise ValueError(
                    f"{pretrained}: does not fit open_clip {arch!r}; "
                    f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
                )
        self.visual = model.visual
        feat_dim = getattr(self.visual, "output_dim", None) or open_clip.get_model_config(arch)["embed_dim"]
        del model  # drop the text tower
        self.modality = modality
        self.arch = arch
        self.normalize: nn.Module = Normalize(CLIP_MEAN, CLIP_STD) if normalize_input else nn.Identity()
        self._output(int(feat_dim), out_dim, temporal_layers, temporal_kernel)
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        return num_frames

    def encode(self, x: Tensor) -> Tensor:
        frames, b, t = fold_frames(x, 3)
        emb = self.visual(self.normalize(frames))
        if isinstance(emb, tuple):  # towers configured to also return patch tokens
            emb = emb[0]
        return self.temporal(self.proj(emb).reshape(b, t, self.out_dim), t)
