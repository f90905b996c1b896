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
reference's ``(Lq - 1) * Ls`` scalar-cell steps, and its gradient is the analytic reverse
wavefront (as in soft-DTW) rather than autograd replaying every tiny op.
:func:`otam_distance_loop` is the direct transcription (with a numerically safe
``logsumexp``), kept as the test oracle; ``benchmarks/otam.py`` measures the difference.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from actdistill.models.fewshot.protonet import FewShotHead, class_means, register_head

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
        m = width - 1  # >= 2: the padding makes the matrix at least 3 columns wide
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


def _skew(grid: Tensor, n_diag: int) -> Tensor:
    """``[rows, width, B]`` -> ``[n_diag, rows, B]`` whose ``[k, l]`` is cell ``(l, k - l)`` (zero
    outside the matrix): zero-pad the columns by ``rows - 1`` on each side, then one
    ``as_strided`` view (one row down and one column left stays on the same diagonal)."""
    rows, width, batch = grid.shape
    wp = width + 2 * (rows - 1)
    padded = grid.new_empty((rows, wp, batch))
    padded[:, : rows - 1] = 0.0
    padded[:, rows - 1 + width :] = 0.0
    padded[:, rows - 1 : rows - 1 + width] = grid
    return padded.as_strided((n_diag, rows, batch), (batch, (wp - 1) * batch, 1), (rows - 1) * batch)


def _unskew(skewed: Tensor, rows: int, width: int) -> Tensor:
    """Inverse of :func:`_skew` for a contiguous ``[>= n_diag, rows + 1, B]`` buffer: the
    ``[rows, width, B]`` view whose ``[l, m]`` is ``skewed[l + m, l]``."""
    _, r1, batch = skewed.shape
    return skewed.as_strided((rows, width, batch), ((r1 + 1) * batch, r1 * batch, 1))


class _Masks:
    """Which predecessor links exist, per skewed cell ``[k, l]`` = cell ``(l, k - l)``."""

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        n_diag = rows + width - 1
        lidx = torch.arange(rows, device=device)[None, :]
        col = torch.arange(n_diag, device=device)[:, None] - lidx  # [K, L]
        # Forward: rows >= 1 inside the matrix (column 0 stays 0); the two padding-adjacent
        # columns also take the vertical step.
        self.valid = ((col >= 1) & (col <= width - 1) & (lidx >= 1))[..., None]
        self.three = ((col == 1) | (col == width - 1))[..., None]
        # Backward: does cell p feed its right neighbour (l, m+1), the cell below (l+1, m)
        # (padding-adjacent columns only), the next diagonal cell (l+1, m+1)?
        inside = (col >= 0) & (col + 1 <= width - 1)
        below = lidx + 1 <= rows - 1
        self.left = inside[..., None]
        self.up = (((col == 1) | (col == width - 1)) & below)[..., None]
        self.diag = (inside & below)[..., None]


@functools.lru_cache(maxsize=64)
def _masks(rows: int, width: int, device: torch.device) -> _Masks:
    return _Masks(rows, width, device)


def _wavefront_forward(nd: Tensor, masks: _Masks) -> tuple[Tensor, Tensor]:
    """Forward recursion on ``nd = -d_pad / lbda`` ``[rows, W, B]`` in the scaled space
    ``e = -c / lbda`` (each step is ``e = nd + logaddexp(...)``, no divisions).

    Returns the skewed ``e`` ``[K, rows, B]`` and ``z`` ``[K + 2, rows + 1, B]``, the log-sum-exp
    of each cell's predecessors (``e - nd``), which is all the backward needs. Entries outside
    the matrix are unspecified (the backward masks them); column-0 cells hold 0.
    """
    rows, width, batch = nd.shape
    n_diag = rows + width - 1
    row0 = torch.cumsum(nd[0], dim=0)  # [W, B]: c[0, 0] = 0 (padding), then the plain running sum
    nd_skew = _skew(nd, n_diag)
    e = nd.new_empty((n_diag, rows, batch))
    z = nd.new_empty((n_diag + 2, rows + 1, batch))
    e[:2] = 0.0
    e[0, 0], z[1, 0] = row0[0], row0[0]
    e[1, 0] = row0[1]  # width >= 3: the padding columns
    zeros = nd.new_zeros((rows - 1, batch))
    for k in range(2, n_diag):
        if k < width:  # row 0 is a plain running sum: its "predecessor sum" is the previous cell
            e[k, 0], z[k, 0] = row0[k], row0[k - 1]
        else:
            e[k, 0] = 0.0
        before, last = e[k - 2], e[k - 1]
        # before[l-1] = (l-1, m-1) diagonal step, last[l] = (l, m-1) left step, last[l-1] = (l-1, m) up.
        two = torch.logaddexp(before[:-1], last[1:])
        # Masking the vertical term with -inf inside one logsumexp would be exact too, but exp(-inf)
        # takes a scalar slow path on CPU that costs more than the whole recursion.
        z[k, 1:rows] = torch.where(masks.three[k, 1:], torch.logaddexp(two, last[:-1]), two)
        e[k, 1:] = torch.where(masks.valid[k, 1:], nd_skew[k, 1:] + z[k, 1:rows], zeros)
    return e, z


def _wavefront_backward(e: Tensor, z: Tensor, masks: _Masks) -> Tensor:
    """``d out / d e`` at every cell as a skewed ``[K + 2, rows + 1, B]`` buffer (soft-DTW style).

    A cell's gradient is the sum over the cells that read it (right, below in the
    padding-adjacent columns, next diagonal) of their gradient times the soft-min weight
    ``exp(e[p] - z[s])``; for row 0 that weight is exactly 1 (a plain sum), since there
    ``z[s] = e[p]``. All weights are computed at once; the loop only accumulates.
    """
    n_diag, rows, batch = e.shape
    w_left = torch.where(masks.left, torch.exp(e - z[1 : n_diag + 1, :rows]), 0.0)
    w_up = torch.where(masks.up, torch.exp(e - z[1 : n_diag + 1, 1:]), 0.0)
    w_diag = torch.where(masks.diag, torch.exp(e - z[2 : n_diag + 2, 1:]), 0.0)
    grads = e.new_empty((n_diag + 2, rows + 1, batch))
    grads[n_diag - 1 :] = 0.0
    grads[:, rows] = 0.0  # the row below the last one: read as "no successor there"
    grads[n_diag - 1, rows - 1] = 1.0
    for k in range(n_diag - 2, -1, -1):
        below = grads[k + 1, 1:] * w_up[k] + grads[k + 2, 1:] * w_diag[k]
        grads[k, :rows] = torch.addcmul(below, grads[k + 1, :rows], w_left[k])
    return grads


class _OTAMFunction(torch.autograd.Function):
    """One OTAM direction over ``[rows, W, B]`` scaled distances with a hand-written backward.

    Autograd through the wavefront records ~10 tiny ops per diagonal and replays them with
    allocations; the analytic reverse wavefront needs three multiply-adds per diagonal.
    """

    @staticmethod
    def forward(ctx: Any, nd: Tensor) -> Tensor:
        masks = _masks(nd.shape[0], nd.shape[1], nd.device)
        e, z = _wavefront_forward(nd, masks)
        ctx.save_for_backward(e, z)
        ctx.masks = masks
        return e[-1, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        e, z = ctx.saved_tensors
        rows = e.shape[1]
        width = e.shape[0] - rows + 1
        # Each cell is e = nd + (terms of earlier cells), so d out / d nd = d out / d e, cell by cell.
        grads = _wavefront_backward(e, z, ctx.masks)
        return _unskew(grads, rows, width) * grad_out


def _one_direction_wavefront(dists: Tensor, lbda: float) -> Tensor:
    """One OTAM direction of ``dists`` ``[..., Lq, Ls]`` -> ``[...]``; the batch is flattened and moved
    last (``[rows, W, B]``) so that shifting a diagonal by one row is a contiguous slice, which keeps
    every elementwise op vectorised (batch-first, the size-``rows`` inner runs are several times slower)."""
    batch = dists.shape[:-2]
    nd = (F.pad(dists, (1, 1)) / -lbda).reshape(-1, dists.shape[-2], dists.shape[-1] + 2).permute(1, 2, 0)
    return (-lbda * _OTAMFunction.apply(nd)).reshape(batch)


def otam_distance(dists: Tensor, lbda: float = 0.5, bidirectional: bool = True) -> Tensor:
    """OTAM cumulative distance of ``dists`` ``[..., Lq, Ls]`` (any leading dims) -> ``[...]``.

    ``bidirectional`` adds the support -> query direction (the transposed matrix), as the
    reference does unless its ``SINGLE_DIRECT`` switch is set. Values can be negative (the
    soft-min of several paths is below each of them). Square matrices run both directions in
    one wavefront pass. Differentiable once (no double backward: nothing here needs it).
    """
    _check(dists, lbda)
    if not bidirectional:
        return _one_direction_wavefront(dists, lbda)
    if dists.shape[-1] == dists.shape[-2]:
        both = _one_direction_wavefront(torch.stack([dists, dists.transpose(-1, -2)]), lbda)
        return both[0] + both[1]
    return _one_direction_wavefront(dists, lbda) + _one_direction_wavefront(dists.transpose(-1, -2), lbda)


@register_head("otam")
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
