"""OTAM: ordered temporal alignment of two frame sequences by a soft DTW, and the OTAM few-shot head.

The recursion is the one every public few-shot code base copies (OTAM by Cao et al. as
re-implemented in TRX, CLIP-FSAR and CLIP-MDMF as ``OTAM_cum_dist``). On a frame-distance matrix
``d[l, m]`` (``l`` over the ``Lq`` frames of the first sequence, ``m`` over the ``Ls`` of the
second) padded with a zero column at each end (width ``W = Ls + 2``), the cumulative cost ``c``:

- first row: a plain running sum, ``c[0, m] = d[0, m] + c[0, m-1]`` (no soft-min), ``c[0, 0] = 0``;
- first (padding) column: ``c[l, 0] = 0`` for every row;
- rows ``l >= 1``, column 1: ``d + softmin(c[l-1, 0], c[l-1, 1], c[l, 0])``;
- middle columns ``2 <= m <= W-2``: ``d + softmin(c[l-1, m-1], c[l, m-1])`` (diagonal and left
  only: no vertical step, which is what keeps the alignment ordered);
- last (padding) column ``m = W-1``: ``d + softmin(c[l-1, m-1], c[l-1, m], c[l, m-1])``;

with ``softmin(x...) = -lbda * log(sum(exp(-x / lbda)))``, and the distance is ``c[Lq-1, W-1]``.
The padding columns let an alignment start late and finish early at zero cost. Bidirectional
OTAM adds the same quantity on the transposed matrix (support -> query).

:func:`otam_distance` computes it over anti-diagonals: every cell of diagonal ``k = l + m``
depends only on diagonals ``k-1`` and ``k-2``, so ``Lq + Ls - 1`` batched steps replace the
reference's ``(Lq - 1) * Ls`` scalar-cell steps. :func:`otam_distance_loop` is the direct
transcription (with a numerically safe ``logsumexp``), kept as the test oracle.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from actdistill.models.base import MODELS
from actdistill.models.fewshot.protonet import FewShotHead, class_means

__all__ = [
    "OTAM",
    "frame_cosine_distance",
    "otam_distance",
    "otam_distance_loop",
]


def frame_cosine_distance(a: Tensor, b: Tensor, eps: float = 0.01) -> Tensor:
    """``1 - cos`` between every frame of ``a`` ``[..., La, D]`` and of ``b`` ``[..., Lb, D]``.

    ``cos(x, y) = x.y / (|x| |y| + eps)`` with the reference's ``eps = 0.01`` added to the
    *denominator* (not a clamp), so distances of small vectors are slightly above ``1 - cos``;
    reproducing it keeps reference checkpoints calibrated. Leading dims broadcast:
    ``frame_cosine_distance(q[:, None], p[None])`` gives ``[Q, C, La, Lb]``.
    """
    num = a @ b.transpose(-1, -2)
    den = a.norm(dim=-1).unsqueeze(-1) * b.norm(dim=-1).unsqueeze(-2) + eps
    return 1.0 - num / den


def _softmin(values: list[Tensor], lbda: float) -> Tensor:
    return -lbda * torch.logsumexp(torch.stack([-v / lbda for v in values]), dim=0)


def _one_direction_loop(dists: Tensor, lbda: float) -> Tensor:
    d = F.pad(dists, (1, 1))
    rows, width = d.shape[-2], d.shape[-1]
    zero = d.new_zeros(d.shape[:-2])
    cum: list[list[Tensor]] = [[zero]]
    for m in range(1, width):
        cum[0].append(d[..., 0, m] + cum[0][m - 1])
    for row in range(1, rows):
        prev, cur = cum[row - 1], [zero]
        cur.append(d[..., row, 1] + _softmin([prev[0], prev[1], cur[0]], lbda))
        for m in range(2, width - 1):
            cur.append(d[..., row, m] + _softmin([prev[m - 1], cur[m - 1]], lbda))
        if width - 1 >= 2:
            m = width - 1
            cur.append(d[..., row, m] + _softmin([prev[m - 1], prev[m], cur[m - 1]], lbda))
        cum.append(cur)
    return cum[-1][-1]


def otam_distance_loop(dists: Tensor, lbda: float = 0.5, bidirectional: bool = True) -> Tensor:
    """The reference's cell-by-cell double loop over ``dists`` ``[..., Lq, Ls]``; returns ``[...]``.

    Slow (one batched op per cell); the oracle :func:`otam_distance` is tested against.
    """
    _check(dists, lbda)
    out = _one_direction_loop(dists, lbda)
    if bidirectional:
        out = out + _one_direction_loop(dists.transpose(-1, -2), lbda)
    return out


def _check(dists: Tensor, lbda: float) -> None:
    if dists.dim() < 2 or dists.shape[-1] < 1 or dists.shape[-2] < 1:
        raise ValueError(f"OTAM needs a distance matrix [..., Lq, Ls] with Lq, Ls >= 1, got {tuple(dists.shape)}")
    if not lbda > 0:
        raise ValueError(f"OTAM lbda must be positive, got {lbda}")


def _one_direction_wavefront(dists: Tensor, lbda: float) -> Tensor:
    """One direction over anti-diagonals. Diagonal ``k`` is held as a vector over rows ``l``
    (cell ``(l, k - l)``); cells outside the matrix hold 0 and are never read by valid cells."""
    d = F.pad(dists, (1, 1))
    rows, width = d.shape[-2], d.shape[-1]
    row0 = torch.cumsum(d[..., 0, :], dim=-1)  # c[0, 0] = d[0, 0] = 0 (padding), then the running sum
    if rows == 1:
        return row0[..., -1]
    n_diag = rows + width - 1
    device = d.device
    lidx = torch.arange(1, rows, device=device)  # rows 1..L-1, the only ones the recursion fills
    kidx = torch.arange(n_diag, device=device)
    col = kidx[:, None] - lidx[None, :]  # [K, L-1]: the column each (diagonal, row) cell sits in
    valid = (col >= 1) & (col <= width - 1)
    three = (col == 1) | (col == width - 1)  # the two padding-adjacent columns also take the vertical step
    gathered = d[..., 1:, :].gather(-1, col.clamp(0, width - 1).T.expand(*d.shape[:-2], rows - 1, n_diag))
    d_diag = gathered.movedim(-1, 0)  # [K, ..., L-1]: d at each (diagonal, row) cell
    neg_inf = d.new_tensor(float("-inf"))
    zeros_rows = d.new_zeros((*d.shape[:-2], rows - 1))

    def first(k: int) -> Tensor:
        return row0[..., k : k + 1] if k < width else row0.new_zeros((*row0.shape[:-1], 1))

    before = torch.cat([first(0), zeros_rows], dim=-1)  # diagonal 0: only (0, 0)
    last = torch.cat([first(1), zeros_rows], dim=-1)  # diagonal 1: (0, 1) and (1, 0) = 0
    for k in range(2, n_diag):
        diag, up, left = before[..., :-1], last[..., :-1], last[..., 1:]
        up_term = torch.where(three[k], -up / lbda, neg_inf)
        z = torch.stack([-diag / lbda, -left / lbda, up_term])
        cell = d_diag[k] - lbda * torch.logsumexp(z, dim=0)
        cell = torch.where(valid[k], cell, zeros_rows)  # column 0 and out-of-matrix cells are 0
        before, last = last, torch.cat([first(k), cell], dim=-1)
    return last[..., -1]


def otam_distance(dists: Tensor, lbda: float = 0.5, bidirectional: bool = True) -> Tensor:
    """OTAM cumulative distance of ``dists`` ``[..., Lq, Ls]`` (any leading dims) -> ``[...]``.

    ``bidirectional`` adds the support -> query direction (the transposed matrix), as the
    reference does unless its ``SINGLE_DIRECT`` switch is set. Values can be negative (the
    soft-min of several paths is below each of them). Square matrices run both directions in
    one wavefront pass.
    """
    _check(dists, lbda)
    if not bidirectional:
        return _one_direction_wavefront(dists, lbda)
    if dists.shape[-1] == dists.shape[-2]:
        both = _one_direction_wavefront(torch.stack([dists, dists.transpose(-1, -2)]), lbda)
        return both[0] + both[1]
    return _one_direction_wavefront(dists, lbda) + _one_direction_wavefront(dists.transpose(-1, -2), lbda)


@MODELS.register("otam")
class OTAM(FewShotHead):
    """OTAM baseline (Cao et al. 2020, as re-implemented in TRX/CLIP-FSAR's ``CNN_OTAM``).

    Parameter-free on top of the backbone: per-frame features, frame distance ``1 - cos``
    (eps 0.01), bidirectional OTAM. ``aggregate="distance"`` (the reference) aligns the query
    with every support video and averages the distances over the shots of a class;
    ``"prototype"`` first averages the support features over shots (CLIP-FSAR's choice), which
    is cheaper for 5-shot. The reference ``CNN_OTAM`` uses ``lbda = 0.1``; CLIP-FSAR and
    CLIP-MDMF use 0.5.
    """

    def __init__(
        self,
        dim: int | None = None,
        backbone: Any = None,
        lbda: float = 0.1,
        bidirectional: bool = True,
        aggregate: str = "distance",
        eps: float = 0.01,
        loss_reduction: str = "mean",
    ) -> None:
        super().__init__(dim, backbone, loss_reduction)
        if aggregate not in ("distance", "prototype"):
            raise ValueError(f"aggregate must be 'distance' or 'prototype', got {aggregate!r}")
        if not lbda > 0:
            raise ValueError(f"lbda must be positive, got {lbda}")
        self.lbda = float(lbda)
        self.bidirectional = bidirectional
        self.aggregate = aggregate
        self.eps = float(eps)

    def head(self, support: Tensor, labels: Tensor, query: Tensor, way: int, **_: Any) -> dict[str, Tensor]:
        ref = class_means(support, labels, way) if self.aggregate == "prototype" else support
        frame_dists = frame_cosine_distance(query[:, None], ref[None], self.eps)  # [Q, S or C, T, T]
        dist = otam_distance(frame_dists, self.lbda, self.bidirectional)
        if self.aggregate == "distance":
            dist = class_means(dist.T, labels, way).T  # mean over the shots of each class
        return {"logits": -dist, "distances": dist}
