"""KARMMA fusion: modality embedding, transformer fusion block, CLS/modality pooling, averaged heads.

One class serves teacher and student (they differ in sizes and in their encoders). The layout
follows the paper's figure (specs/karmma.md): per-modality ``Linear(d_m, d)`` + a learned
modality token + a learned token-specific (positional) token, ``[CLS]`` prepended, pre-norm
transformer layers, ``z_cls`` and per-modality mean-pooled ``z_m``, one multi-head MLP applied to
all of them, logits averaged over CLS and the modalities each sample has.

Missing modalities (``missing``):

- ``"tokens"`` (the paper, default): an absent modality keeps its slots, filled with modality
  token + token-specific token only, so the fusion block always sees the same layout and learns
  what "this modality is missing" looks like.
- ``"mask"``: its slots are removed from attention through ``src_key_padding_mask``.
- ``"single_token"`` (Ramazanova et al., 2024): one learned token per modality replaces every
  slot of that modality, with no modality/positional token added.
- ``"zeros"``: naive baseline; zero features go through the projection as if they were data.

In every mode the data of an absent modality is never read, so its zero-filled storage (or
anything else) cannot change the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from actdistill.models.base import average_logits, check_present, encode_present, register_fusion
from actdistill.models.encoders import build_encoder
from actdistill.models.encoders.base import Encoder, encoder_entry
from actdistill.models.heads import MultiHeadMLP

MISSING_MODES = ("tokens", "mask", "single_token", "zeros")
PREDICTIONS = ("average", "cls")

FUSION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
    "student": {"dim": 256, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0},
    "teacher": {"dim": 512, "depth": 2, "num_heads": 8, "mlp_ratio": 4.0},
}


class KARMMAFusion(nn.Module):
    """Token fusion over a fixed modality tuple; see the module docstring for the design.

    Args:
        modalities: the order of ``present``'s columns.
        in_dims: token width ``d_m`` per modality (the encoder's ``out_dim``).
        heads: task -> number of classes (e.g. ``{"verb": 97, "noun": 300}``).
        dim, depth, num_heads, mlp_ratio, dropout: transformer sizes (pre-norm, GELU).
        missing: one of ``MISSING_MODES``.
        max_tokens: slots per modality with their own token-specific token.
        num_tokens: slots to lay out for a modality given no tokens in a call (default
            ``max_tokens``); :class:`MultimodalRecognizer` passes the encoders' counts instead.
        head_hidden, head_dropout: the multi-head MLP (``head_hidden=0``: linear heads).
        prediction: ``"average"`` (CLS + present modalities, the paper) or ``"cls"`` only.
        init_std: std of the learned tokens' truncated-normal initialisation.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        in_dims: Mapping[str, int],
        heads: Mapping[str, int],
        dim: int = 256,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        missing: str = "tokens",
        max_tokens: int = 64,
        num_tokens: Mapping[str, int] | None = None,
        head_hidden: int | None = None,
        head_dropout: float = 0.0,
        prediction: str = "average",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if missing not in MISSING_MODES:
            raise ValueError(f"unknown missing mode {missing!r} (known: {', '.join(MISSING_MODES)})")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r} (known: {', '.join(PREDICTIONS)})")
        unknown = [m for m in modalities if m not in in_dims]
        if unknown:
            raise ValueError(f"in_dims lacks {unknown}")
        self.modalities = tuple(modalities)
        self.missing = missing
        self.prediction = prediction
        self.max_tokens = max_tokens
        self.dim = dim
        self.default_tokens = {m: int((num_tokens or {}).get(m, max_tokens)) for m in self.modalities}
        nm = len(self.modalities)
        self.proj = nn.ModuleDict({m: nn.Linear(int(in_dims[m]), dim) for m in self.modalities})
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_tokens = nn.Parameter(torch.zeros(nm, dim))
        self.position_tokens = nn.Parameter(torch.zeros(nm, max_tokens, dim))
        self.missing_tokens = nn.Parameter(torch.zeros(nm, dim)) if missing == "single_token" else None
        for p in (self.cls_token, self.modality_tokens, self.position_tokens, self.missing_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=init_std)
        layer = nn.TransformerEncoderLayer(
            dim,
            num_heads,
            int(dim * mlp_ratio),
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = MultiHeadMLP(dim, heads, hidden=head_hidden, dropout=head_dropout)

    def _embed(self, j: int, m: str, x: Tensor | None, rows: Tensor, n: int, b: int) -> Tensor:
        """Embedded slots ``[B, n, d]`` of modality ``m``; absent rows never read ``x``."""
        if n > self.max_tokens:
            raise ValueError(f"{m}: {n} tokens exceed max_tokens={self.max_tokens}; raise max_tokens")
        base = (self.modality_tokens[j] + self.position_tokens[j, :n]).unsqueeze(0).expand(b, n, self.dim)
        keep = rows.view(b, 1, 1)
        if x is None:
            feat = None
        else:
            if x.shape[0] != b or x.shape[1] != n:
                raise ValueError(f"{m}: tokens of shape {tuple(x.shape)} do not fit batch {b} x {n} slots")
            feat = self.proj[m](x)
        if self.missing == "zeros":
            zero = self.proj[m].bias.view(1, 1, -1).expand(b, n, self.dim)
            return (zero if feat is None else torch.where(keep, feat, zero)) + base
        if self.missing == "single_token":
            assert self.missing_tokens is not None
            fill = self.missing_tokens[j].view(1, 1, -1).expand(b, n, self.dim)
            return fill if feat is None else torch.where(keep, feat + base, fill)
        return base if feat is None else torch.where(keep, feat + base, base)  # tokens, mask

    def forward(
        self,
        tokens: Mapping[str, Tensor],
        present: Tensor,
        num_tokens: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """``tokens[m]``: ``[B, n_m, d_m]`` for modalities present in some row (others may be left out).

        Returns ``logits`` (task -> ``[B, C]``), ``cls`` (``z_cls``), ``cls_logits``,
        ``modality_embeddings`` (m -> ``z_m``), ``per_modality_logits`` (m -> task -> ``[B, C]``;
        meaningful only where ``present``), and ``present``.
        """
        present = check_present(present, self.modalities)
        b = present.shape[0]
        seq = [self.cls_token.expand(b, 1, self.dim)]
        pad = [torch.zeros(b, 1, dtype=torch.bool, device=present.device)]
        spans: dict[str, tuple[int, int]] = {}
        start = 1
        for j, m in enumerate(self.modalities):
            x = tokens.get(m)
            rows = present[:, j]
            if x is None and self.missing == "mask":
                continue  # every slot would be masked: leave the modality out
            n = int(x.shape[1]) if x is not None else int((num_tokens or {}).get(m, self.default_tokens[m]))
            seq.append(self._embed(j, m, x, rows, n, b))
            pad.append((~rows).view(b, 1).expand(b, n))
            spans[m] = (start, start + n)
            start += n
        mask = torch.cat(pad, dim=1) if self.missing == "mask" else None
        out = self.blocks(torch.cat(seq, dim=1), src_key_padding_mask=mask)
        z_cls = out[:, 0]
        cls_logits = self.head(z_cls)
        z_mod = {m: out[:, s:e].mean(1) for m, (s, e) in spans.items()}
        per_mod = {m: self.head(z) for m, z in z_mod.items()}
        if self.prediction == "cls":
            logits = dict(cls_logits)
        else:
            always = torch.ones(b, dtype=torch.bool, device=present.device)
            order = [m for m in self.modalities if m in per_mod]
            weights = [always] + [present[:, self.modalities.index(m)] for m in order]
            logits = {t: average_logits([cls_logits[t]] + [per_mod[m][t] for m in order], weights) for t in cls_logits}
        return {
            "logits": logits,
            "cls": z_cls,
            "cls_logits": cls_logits,
            "modality_embeddings": z_mod,
            "per_modality_logits": per_mod,
            "present": present,
        }


class MultimodalRecognizer(nn.Module):
    """Encoders (one per modality) + :class:`KARMMAFusion`: raw ``[B, T, ...]`` inputs -> logits.

    Encoders run only on the rows where their modality is present (see
    :func:`~actdistill.models.base.encode_present`); ``precomputed`` token tensors (cached
    frozen-extractor features) replace the corresponding encoders' outputs.
    """

    def __init__(self, encoders: Mapping[str, Encoder], fusion: KARMMAFusion) -> None:
        super().__init__()
        missing = [m for m in fusion.modalities if m not in encoders]
        if missing:
            raise ValueError(f"no encoder for {missing}")
        for m in fusion.modalities:
            if encoders[m].out_dim != fusion.proj[m].in_features:
                raise ValueError(f"{m}: encoder out_dim {encoders[m].out_dim} != fusion in_dim")
        self.modalities = fusion.modalities
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.fusion = fusion

    def encode(
        self, inputs: Mapping[str, Tensor], present: Tensor, precomputed: Mapping[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, int]]:
        return encode_present(self.encoders, self.modalities, inputs, present, precomputed)

    def forward(
        self, inputs: Mapping[str, Tensor], present: Tensor, precomputed: Mapping[str, Tensor] | None = None
    ) -> dict[str, Any]:
        tokens, counts = self.encode(inputs, present, precomputed)
        return self.fusion(tokens, present, counts)


def _encoder_spec(spec: str | Mapping[str, Any] | None, size: str) -> tuple[str, dict[str, Any]]:
    if spec is None:
        return "compact", {"size": size}
    if isinstance(spec, str):
        return spec, ({"size": size} if spec == "compact" else {})
    opts = dict(spec)
    name = str(opts.pop("name", "compact"))
    if name in ("compact", "frames", "flow", "spectrogram", "boxes", "imu"):
        opts.setdefault("size", size)
    return name, opts


def build_encoders(
    modalities: Sequence[str], size: str = "student", encoders: Mapping[str, Any] | None = None
) -> dict[str, Encoder]:
    """One encoder per modality: ``encoders[m]`` is a name or ``{"name": ..., **options}``
    (default: the built-in ``compact`` encoder of the given ``size``). A named modality
    (``imu:acc``) without an entry of its own uses its kind's (``imu``), as its own instance."""
    out = {}
    for m in modalities:
        name, opts = _encoder_spec(encoder_entry(encoders or {}, m), size)
        out[m] = build_encoder(name, modality=m, **opts)
    return out


@register_fusion("karmma", "KARMMA: a transformer over every modality's tokens (learned tokens stand in "
                 "for missing ones), CLS and modality pooling, averaged heads")
def build_karmma(
    modalities: Sequence[str],
    heads: Mapping[str, int],
    size: str = "student",
    encoders: Mapping[str, Any] | None = None,
    **fusion: Any,
) -> MultimodalRecognizer:
    """A KARMMA recognizer from plain config values.

    ``size`` (``tiny``/``student``/``teacher``) picks the built-in encoders' and the fusion block's
    preset; ``encoders`` overrides per modality; ``fusion`` keyword options override
    :class:`KARMMAFusion` arguments (``dim``, ``depth``, ``missing``, ...).
    """
    if size not in FUSION_PRESETS:
        raise ValueError(f"unknown size {size!r} (known: {', '.join(FUSION_PRESETS)})")
    encs = build_encoders(modalities, size, encoders)
    options = {**FUSION_PRESETS[size], **fusion}
    fuse = KARMMAFusion(modalities, {m: e.out_dim for m, e in encs.items()}, heads, **options)
    return MultimodalRecognizer(encs, fuse)
