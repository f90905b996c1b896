"""Building blocks of CLIP-M²DF (``specs/clip_m2df.md``, "Model"), kept apart from the episode logic.

Each block mirrors one mechanism of the reference code (cofly2014/CLIP-MDMF) with module names of
our own; :mod:`actdistill.models.fewshot.reference_import` maps the reference's key names onto
these. Every block is written so that, in eval mode, it computes the same numbers as the reference
(same formulas, same reduction order where it matters for 1e-5 agreement).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def cos_sim(x: Tensor, y: Tensor, eps: float = 0.01) -> Tensor:
    """Cosine similarity of the last dims, ``x @ y^T / (|x| |y|^T + eps)`` (reference ``cos_sim``).

    The additive ``eps`` (not a clamp) slightly shrinks every similarity; it is part of the
    reference numbers (PPS scores, frame distances, t-compare), so it is kept everywhere.
    """
    num = torch.matmul(x, y.transpose(-1, -2))
    xn = torch.norm(x, dim=-1).unsqueeze(-1)
    yn = torch.norm(y, dim=-1).unsqueeze(-1)
    return num / (torch.matmul(xn, yn.transpose(-1, -2)) + eps)


def class_mean(x: Tensor, labels: Tensor, way: int) -> Tensor:
    """Mean of the rows of ``x`` per episode label ``0..way-1`` (labels need not be grouped).

    Gathers and averages each class like the reference (``index_select`` + ``mean``) rather
    than a one-hot matmul, so the float summation order, and thus the numbers, agree.
    """
    return torch.stack([x.index_select(0, (labels == c).nonzero().reshape(-1)).mean(0) for c in range(way)])


class LocalTemporalContext(nn.Module):
    """LTCE: two ``Conv1d(D, D, 3, pad=1)`` over time with no activation between them.

    Two stacked linear convs are one linear 5-frame filter with a rank constraint; the reference
    keeps them separate, so do we (their weights import one to one).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        return self.conv2(self.conv1(x.permute(0, 2, 1))).permute(0, 2, 1)


class TemporalBlock(nn.Module):
    """One causal dilated residual block of the TCN (Bai et al. 2018, locuslab/TCN).

    ``2 x [weight-normed Conv1d, chomp, ReLU, Dropout]`` + residual (1x1 conv only when the
    width changes) + ReLU. The conv pads ``(k-1)*dilation`` on both sides and the chomp drops the
    right-hand excess, so output ``t`` only sees inputs ``<= t``. Weight norm uses the current
    parametrization API; the old ``weight_g``/``weight_v`` keys are converted on import.
    """

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.chomp = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(cin, cout, kernel, padding=self.chomp, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(cout, cout, kernel, padding=self.chomp, dilation=dilation))
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout1(F.relu(self.conv1(x)[:, :, : -self.chomp].contiguous()))
        out = self.dropout2(F.relu(self.conv2(out)[:, :, : -self.chomp].contiguous()))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class GlobalTemporalContext(nn.Module):
    """GTCE: a causal TCN whose last time step (a summary of the whole clip) is added to every frame.

    Kernel 3, dilations ``1, 2, 4, ...`` (receptive field 15 frames for 3 levels, so the last
    step sees all 8 frames); ``x + tcn(x)[:, -1]`` broadcast over time.
    """

    def __init__(self, dim: int, levels: int = 3, kernel: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.network = nn.Sequential(*[TemporalBlock(dim, dim, kernel, 2**i, dropout) for i in range(levels)])

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        summary = self.network(x.transpose(1, 2)).transpose(1, 2)[:, -1:, :]
        return summary + x


class FusionLayer(nn.Module):
    """One pre-norm cross-attention layer + feed-forward, as the reference's ``Transformer_v1`` layer.

    ``h = Attn(LN(q), LN(kv), LN(kv)) + q``; ``out = FFN(h) + h``. One LayerNorm is shared by
    queries, keys and values, q/k/v projections have no bias, and the FFN has no norm before it
    (the reference's layout, not the usual pre-norm block).
    """

    def __init__(
        self, dim: int, heads: int = 8, mlp_dim: int = 2048, attn_dropout: float = 0.2, ffn_dropout: float = 0.05
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        inner = self.head_dim * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(ffn_dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(ffn_dropout),
        )

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, q_in: Tensor, kv: Tensor) -> Tensor:
        """``q_in [B, Nq, D]``, ``kv [B, Nk, D]`` -> ``[B, Nq, D]``."""
        qn, kvn = self.norm(q_in), self.norm(kv)
        q, k, v = self._split(self.to_q(qn)), self._split(self.to_k(kvn)), self._split(self.to_v(kvn))
        attn = (torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1)
        h = self.attn_dropout(self.to_out(out)) + q_in
        return self.ffn(h) + h


class FusionEncoder(nn.Module):
    """The multi-modal fusion encoder of one view: cross-attention first, self-attention after.

    Depth 1 in the paper; deeper stacks follow the reference (layers after the first attend the
    running output to itself).
    """

    def __init__(self, dim: int, depth: int = 1, **layer_options: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList([FusionLayer(dim, **layer_options) for _ in range(depth)])

    def forward(self, q_in: Tensor, kv: Tensor) -> Tensor:
        x = self.layers[0](q_in, kv)
        for layer in self.layers[1:]:
            x = layer(x, x)
        return x


class TinyFrameEncoder(nn.Module):
    """A per-frame CNN of a few thousand parameters with the CLIP visual tower's interface, for fast tests."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.output_dim = dim
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W] -> [N, dim]``."""
        return self.net(x)
