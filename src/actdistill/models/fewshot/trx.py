"""TRX: temporal-relational cross-transformers (Perrett et al., CVPR 2021; tobyperrett/trx).

Every ordered ``k``-tuple of frames (all ``C(T, k)`` index combinations, ascending) of every
clip becomes one token: the concatenation of its ``k`` frame features after a fixed sinusoidal
positional encoding (scaled by 0.1, dropout 0.1). Keys (``LayerNorm(Linear)``) and values
(``Linear``, no norm) are shared by support and query. For each query tuple and class, a
softmax over *all tuples of all shots of that class* weighs the class's value tuples into a
query-specific prototype; the class distance is the squared Euclidean distance between the
query's value tuples and that prototype, divided by the number of tuples. One such
"cross-transformer" runs per cardinality (2 and 3 by default).

Combining cardinalities: the reference stacks the per-cardinality logits ``-d_k`` and returns
``-||(-d_2, -d_3)||_2`` (``combine="norm"``, default); ``combine="sum"`` returns ``-(d_2 + d_3)``.
The per-class loop of the reference is replaced by one masked softmax over all classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import torch
from torch import Tensor, nn

from actdistill.models.fewshot.protonet import FewShotHead, episode_way, register_head

__all__ = ["TRX", "TemporalCrossTransformer", "sinusoid_encoding"]

COMBINE_MODES = ("norm", "sum")


def sinusoid_encoding(length: int, dim: int, scale: float = 0.1) -> Tensor:
    """``[length, dim]`` sine/cosine positional encoding (Vaswani et al.) times ``scale``.

    TRX scales it by 0.1 so position nudges, rather than swamps, the backbone features.
    """
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe * scale


class TemporalCrossTransformer(nn.Module):
    """One TRX cardinality: tuple keys/values and query-specific class prototypes.

    Returns the distance ``[Q, way]`` (non-negative; logits are its negation).
    """

    def __init__(
        self, dim: int, cardinality: int, out_dim: int = 1152, dropout: float = 0.1, pe_scale: float = 0.1
    ) -> None:
        super().__init__()
        if cardinality < 1:
            raise ValueError(f"TRX cardinality must be at least 1, got {cardinality}")
        self.dim, self.cardinality, self.out_dim, self.pe_scale = dim, cardinality, out_dim, pe_scale
        self.dropout = nn.Dropout(dropout)
        self.k_linear = nn.Linear(dim * cardinality, out_dim)
        self.v_linear = nn.Linear(dim * cardinality, out_dim)
        self.norm_k = nn.LayerNorm(out_dim)
        self._cache: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def _tuples_and_pe(self, frames: int, ref: Tensor) -> tuple[Tensor, Tensor]:
        key = (frames, str(ref.device))
        if key not in self._cache:
            if frames < self.cardinality:
                raise ValueError(f"TRX cardinality {self.cardinality} needs at least that many frames, got {frames}")
            tuples = torch.tensor(list(combinations(range(frames), self.cardinality)), device=ref.device)
            self._cache[key] = (tuples, sinusoid_encoding(frames, self.dim, self.pe_scale).to(ref.device))
        tuples, pe = self._cache[key]
        return tuples, pe.to(ref.dtype)

    def _tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tuples, pe = self._tuples_and_pe(x.shape[1], x)
        x = self.dropout(x + pe)
        tok = x[:, tuples].flatten(2)  # [B, P, k * D], frames of a tuple in time order
        return self.norm_k(self.k_linear(tok)), self.v_linear(tok)

    def forward(self, support: Tensor, labels: Tensor, query: Tensor, way: int) -> Tensor:
        return self.distances(*self._tokens(support), *self._tokens(query), labels, way)

    def distances(self, sk: Tensor, sv: Tensor, qk: Tensor, qv: Tensor, labels: Tensor, way: int) -> Tensor:
        """``[Q, way]`` distances from the tuple keys/values of supports ``[S, P, d]`` and queries ``[Q, P, d]``.

        Split from :meth:`forward` because the tokens are a function of one video each: a frozen
        evaluation computes them once per video (:meth:`TRX.video_stage`).
        """
        n_tuples = sk.shape[1]
        counts = torch.bincount(labels.long(), minlength=way)
        if way > 0 and bool((counts == counts[0]).all()) and int(counts[0]) > 0:
            # Equal shots (every N-way K-shot episode): attend within each class's supports only. The
            # same softmax as the masked form below, without computing `way` times the attention.
            order = torch.argsort(labels.long(), stable=True)
            skc = sk[order].reshape(way, -1, sk.shape[-1])  # [way, K * P, d]
            svc = sv[order].reshape(way, -1, sv.shape[-1])
            attn = (torch.einsum("qpd,crd->qcpr", qk, skc) / math.sqrt(self.out_dim)).softmax(-1)
            proto = torch.einsum("qcpr,crd->qcpd", attn, svc)
            return (qv[:, None] - proto).pow(2).sum((-2, -1)) / n_tuples  # [Q, way]
        scores = torch.einsum("qpd,srd->qpsr", qk, sk) / math.sqrt(self.out_dim)  # [Q, P, S, P]
        member = labels[None, :] == torch.arange(way, device=labels.device)[:, None]  # [way, S]
        mask = torch.zeros(member.shape, dtype=scores.dtype, device=scores.device).masked_fill(~member, float("-inf"))
        scores = scores[:, None] + mask[None, :, None, :, None]  # [Q, way, P, S, P]
        q_, c_, p_, s_, r_ = scores.shape
        attn = scores.reshape(q_, c_, p_, s_ * r_).softmax(-1).reshape(q_, c_, p_, s_, r_)
        proto = torch.einsum("qcpsr,srd->qcpd", attn, sv)  # query-specific prototypes
        return (qv[:, None] - proto).pow(2).sum((-2, -1)) / n_tuples  # [Q, way]


@register_head("trx")
class TRX(FewShotHead):
    """TRX few-shot head over frame features ``[B, T, D]`` (``T >= max(cardinalities)``).

    ``out_dim`` is the reference's ``trans_linear_out_dim`` (1152); ``cardinalities`` its
    ``temp_set`` (``(2, 3)``). The reference sums the cross-entropy over queries
    (``loss_reduction="sum"``); the project default averages, like the other heads.
    """

    def __init__(
        self,
        dim: int | None = None,
        backbone: Any = None,
        cardinalities: Sequence[int] = (2, 3),
        out_dim: int = 1152,
        dropout: float = 0.1,
        pe_scale: float = 0.1,
        combine: str = "norm",
        loss_reduction: str = "mean",
    ) -> None:
        super().__init__(dim, backbone, loss_reduction)
        cards = tuple(int(c) for c in cardinalities)
        if not cards or len(set(cards)) != len(cards):
            raise ValueError(f"cardinalities must be distinct and non-empty, got {cardinalities!r}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        d = self._need_dim()
        self.cardinalities = cards
        self.combine = combine
        self.transformers = nn.ModuleList(TemporalCrossTransformer(d, c, out_dim, dropout, pe_scale) for c in cards)

    def head(self, support: Tensor, labels: Tensor, query: Tensor, way: int, **_: Any) -> dict[str, Tensor]:
        dists = torch.stack([t(support, labels, query, way) for t in self.transformers], dim=-1)  # [Q, way, n]
        return self._combine(dists)

    def video_stage(self, x: Tensor) -> dict[str, Tensor]:
        """What depends on one video only: its tuple keys and values per cardinality (``[N, P, d]``).

        In eval mode (no dropout) this is exactly what :meth:`head` computes for that video, so a
        frozen evaluation can compute it once per video and run episodes on it (:meth:`episode_logits`).
        """
        out: dict[str, Tensor] = {}
        for t in self.transformers:
            out[f"k{t.cardinality}"], out[f"v{t.cardinality}"] = t._tokens(x)
        return out

    def episode_logits(self, support: Mapping[str, Tensor], labels: Tensor, query: Mapping[str, Tensor],
                       *, support_real_labels: Tensor | None = None) -> dict[str, Tensor]:
        """:meth:`head` on per-video stages from :meth:`video_stage` (real labels unused)."""
        way = episode_way(labels)
        dists = torch.stack([t.distances(support[f"k{t.cardinality}"], support[f"v{t.cardinality}"],
                                         query[f"k{t.cardinality}"], query[f"v{t.cardinality}"], labels, way)
                             for t in self.transformers], dim=-1)
        return self._combine(dists)

    def _combine(self, dists: Tensor) -> dict[str, Tensor]:
        out = {f"distance_card{c}": dists[..., i] for i, c in enumerate(self.cardinalities)}
        if self.combine == "norm":
            # sqrt has an infinite slope at 0; distances of exactly 0 only occur in degenerate inputs.
            logits = -dists.pow(2).sum(-1).clamp_min(1e-12).sqrt()
        else:
            logits = -dists.sum(-1)
        out["logits"] = logits
        return out
