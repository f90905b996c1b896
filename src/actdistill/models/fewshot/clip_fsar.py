"""CLIP-FSAR (Wang et al., IJCV 2023; alibaba-mmai-research/CLIP-FSAR, head ``CNN_OTAM_CLIPFSAR``).

What the reference does, and this module reproduces:

- Text: one frozen CLIP text embedding per class of the split (``"a photo of {class}"``), a train
  table used in training mode and a test table in eval mode. They are given to the head
  (:meth:`CLIPFSAR.set_text_features` or the ``text_features`` argument), not learned, and not
  part of the state dict.
- Prototype modulation: each support clip's frames get its class's text embedding as one extra
  token (the reference appends it after the frames), one temporal transformer runs over the
  ``T + 1`` tokens, the frame tokens are kept and averaged over the shots of the class. The
  transformer has no positional encoding, so where the text token sits changes nothing.
- Queries have no text (their class is what is being predicted): they go through the *same*
  transformer as plain self-attention over their ``T`` frames.
- Metric: frame distance ``1 - cos`` (eps 0.01), bidirectional OTAM with ``lbda = 0.5``;
  logits ``= -distance``.
- Video-text loss: the time-averaged backbone features of every support and query clip are
  compared with every class text of the table (``cos`` with eps 0.01, times a learnable scale
  initialised to 1) and trained with cross-entropy against the real labels; its weight is the
  reference's ``USE_CLASSIFICATION_VALUE`` (3.0 in the SSv2-Small configs, 1.0 here).

The temporal transformer's parameter names follow the reference (``context2.layers.0.0.norm``,
``...fn.to_q``, ``...fn.to_out.0``, ``context2.layers.0.1.net.0``/``net.3``, ``scale``), so a
CLIP-FSAR checkpoint's head loads into this module with ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actdistill.models.fewshot.otam import frame_cosine_distance, otam_distance
from actdistill.models.fewshot.protonet import FewShotHead, class_means, register_head

__all__ = ["CLIPFSAR", "CrossAttention", "FeedForward", "PreNormCrossAttention", "TemporalTransformer", "cosine_eps"]


def cosine_eps(a: Tensor, b: Tensor, eps: float = 0.01) -> Tensor:
    """Cosine similarity matrix ``[N, M]`` of ``a`` ``[N, D]`` and ``b`` ``[M, D]`` with the
    reference's ``eps`` added to the denominator."""
    return 1.0 - frame_cosine_distance(a, b, eps)


class CrossAttention(nn.Module):
    """Multi-head attention with separate bias-free q/k/v projections (reference ``Attention_qkv``)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int | None = None, dropout: float = 0.2) -> None:
        super().__init__()
        dim_head = dim_head or dim // heads
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        project = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project else nn.Identity()

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        def split(x: Tensor) -> Tensor:
            return x.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)  # [B, h, n, dh]

        out = F.scaled_dot_product_attention(split(self.to_q(q)), split(self.to_k(k)), split(self.to_v(v)))
        return self.to_out(out.transpose(1, 2).flatten(2))


class PreNormCrossAttention(nn.Module):
    """``fn(LN(q), LN(k), LN(v)) + q`` with one LayerNorm shared by q, k and v (as the reference)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.fn(self.norm(q), self.norm(k), self.norm(v)) + q


class FeedForward(nn.Module):
    """``Linear, GELU, Dropout, Linear, Dropout`` with no norm before it (reference ``FeedForward``)."""

    def __init__(self, dim: int, hidden: int = 2048, dropout: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TemporalTransformer(nn.Module):
    """The reference ``Transformer_v1``: the first layer attends from ``q`` to ``k``/``v``, later
    layers self-attend; each layer is ``x = PreNormAttn(...) ; x = FFN(x) + x``. No positional
    encoding."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        depth: int = 1,
        mlp_dim: int = 2048,
        attn_dropout: float = 0.2,
        ffn_dropout: float = 0.05,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNormCrossAttention(dim, CrossAttention(dim, heads, dim // heads, attn_dropout)),
                    FeedForward(dim, mlp_dim, ffn_dropout),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, q: Tensor, k: Tensor | None = None, v: Tensor | None = None) -> Tensor:
        k = q if k is None else k
        v = k if v is None else v
        x = q
        for i, layer in enumerate(self.layers):
            attn, ffn = layer[0], layer[1]
            x = attn(q, k, v) if i == 0 else attn(x, x, x)
            x = ffn(x) + x
        return x


@register_head("clip_fsar")
class CLIPFSAR(FewShotHead):
    """CLIP-FSAR head: text-modulated support prototypes, OTAM metric, video-text loss.

    ``dim`` is the frame feature size (1024 for CLIP RN50, 512 for ViT-B/16); ``text_dim``
    defaults to it (CLIP's projected embeddings share one space), otherwise a linear map is
    learned. Real labels index the current text table: ``support_real_labels`` are required
    (they pick each support's text token), ``query_real_labels`` only for the video-text loss.
    """

    def __init__(
        self,
        dim: int | None = None,
        backbone: Any = None,
        text_dim: int | None = None,
        heads: int = 8,
        depth: int = 1,
        mlp_dim: int = 2048,
        lbda: float = 0.5,
        bidirectional: bool = True,
        text_loss_weight: float = 1.0,
        eps: float = 0.01,
        loss_reduction: str = "mean",
    ) -> None:
        super().__init__(dim, backbone, loss_reduction)
        d = self._need_dim()
        self.context2 = TemporalTransformer(d, heads, depth, mlp_dim)
        self.text_proj: nn.Module = nn.Identity() if text_dim in (None, d) else nn.Linear(int(text_dim), d)
        self.scale = nn.Parameter(torch.ones(1))
        self.lbda, self.bidirectional, self.eps = float(lbda), bidirectional, float(eps)
        self.loss_weights = {"loss_text": float(text_loss_weight)}
        self.register_buffer("text_train", torch.empty(0), persistent=False)
        self.register_buffer("text_test", torch.empty(0), persistent=False)

    uses_text = True

    @classmethod
    def for_episodes(cls, dim: int, options: Mapping[str, Any], text_dim: int | None = None,
                     accumulate: int = 1) -> CLIPFSAR:
        opts = dict(options)
        if text_dim is not None:
            opts.setdefault("text_dim", text_dim)
        return cls(dim=dim, **opts)

    def set_text_tables(self, train: Tensor | None, test: Tensor | None) -> None:
        if train is not None:
            self.set_text_features(train, test)

    def set_text_features(self, train: Tensor, test: Tensor | None = None) -> None:
        """Store the per-class text embeddings ``[N_split, text_dim]`` of the train and test splits.

        Detached copies: the text encoder is frozen in the reference.
        """
        self.text_train = train.detach().to(self.scale.device, self.scale.dtype)
        self.text_test = (train if test is None else test).detach().to(self.scale.device, self.scale.dtype)

    def _table(self, text_features: Tensor | None) -> Tensor:
        table = text_features if text_features is not None else (self.text_train if self.training else self.text_test)
        if table.dim() != 2 or table.shape[0] == 0:
            raise ValueError(
                "CLIP-FSAR needs class text embeddings [N_split, text_dim]: call set_text_features() "
                "or pass text_features="
            )
        return self.text_proj(table)

    def head(
        self,
        support: Tensor,
        labels: Tensor,
        query: Tensor,
        way: int,
        *,
        support_real_labels: Tensor | None = None,
        query_real_labels: Tensor | None = None,
        text_features: Tensor | None = None,
        **_: Any,
    ) -> dict[str, Tensor]:
        if support_real_labels is None:
            raise ValueError("CLIP-FSAR needs support_real_labels (each support's index in the split's class list)")
        table = self._table(text_features)
        frames = support.shape[1]
        out: dict[str, Tensor] = {}

        # Video-text head on the raw backbone features of every clip (supports first, as the reference).
        pooled = torch.cat([support, query]).mean(1)
        out["class_logits"] = cosine_eps(pooled, table, self.eps) * self.scale
        if query_real_labels is not None:
            real = torch.cat([support_real_labels, query_real_labels]).long()
            out["loss_text"] = F.cross_entropy(out["class_logits"], real, reduction=self.loss_reduction)

        q = self.context2(query)
        tokens = torch.cat([support, table[support_real_labels.long()][:, None]], dim=1)  # [S, T + 1, D]
        s = self.context2(tokens)[:, :frames]
        protos = class_means(s, labels, way)  # [way, T, D]
        dist = otam_distance(frame_cosine_distance(q[:, None], protos[None], self.eps), self.lbda, self.bidirectional)
        out["distances"] = dist
        out["logits"] = -dist
        return out
