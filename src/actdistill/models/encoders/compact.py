"""Built-in compact encoders: small per-frame CNNs, an object-slot MLP and a 1D IMU conv.

They exist so that everything (tests, the synthetic default, CPU laptops) runs without
downloaded backbones, and so that the KARMMA student has trainable extractors of a chosen size.
Three sizes per encoder: ``tiny`` (unit tests), ``student`` (the deployable student) and
``teacher`` (a unimodal teacher when no pretrained extractor is available). Any width/depth can
also be given explicitly. Following the paper, the student's audio encoder is tiny: about 1% of
the teacher-size audio encoder's FLOPs (the paper: 4.7 against 568 GFLOPs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from actdistill.models.encoders.base import (
    DEFAULT_CHANNELS,
    ENCODERS,
    Encoder,
    SpatialSoftmax,
    check_pool,
    fold_frames,
    grid_tokens,
    modality_kind,
)

SIZES = ("tiny", "student", "teacher")

# (stage widths, blocks per stage) per encoder kind and size.
FRAME_PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "tiny": ((8, 16), 1),
    "student": ((32, 64, 128, 256), 1),
    "teacher": ((64, 128, 256, 512), 2),
}
SPECTROGRAM_PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "tiny": ((4, 8), 1),
    "student": ((16, 32, 64), 1),
    "teacher": ((64, 128, 256, 512), 2),
}
BOXES_PRESETS: dict[str, tuple[int, int]] = {"tiny": (16, 1), "student": (128, 2), "teacher": (256, 3)}
IMU_PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "tiny": ((8, 16), 1),
    "student": ((32, 64, 128), 1),
    "teacher": ((64, 128, 256), 2),
}


def _preset(table: dict[str, Any], size: str, kind: str) -> Any:
    if size not in table:
        raise ValueError(f"unknown {kind} encoder size {size!r} (known: {', '.join(table)})")
    return table[size]


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (known: batch, group, none)")


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm = _norm2d(norm, cout)
        self.act = nn.ReLU(inplace=True)
        self.residual = residual and cin == cout and stride == 1

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.conv(x)))
        return x + y if self.residual else y


def conv_stack(in_channels: int, widths: Sequence[int], blocks: int, norm: str) -> nn.Sequential:
    """Stages of 3x3 convs; each stage halves the resolution, then adds ``blocks-1`` residual blocks."""
    layers: list[nn.Module] = []
    cin = in_channels
    for w in widths:
        layers.append(_ConvBlock(cin, w, 2, norm, residual=False))
        layers.extend(_ConvBlock(w, w, 1, norm, residual=True) for _ in range(blocks - 1))
        cin = w
    return nn.Sequential(*layers)


def frame_standardize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Each frame and channel to zero mean and unit standard deviation over its pixels.

    Why: a depth frame is a large smooth offset (the scene's distance) plus small steps (an object
    15 mm above the counter is 0.15% of a 10 m range). Unnormalised, the offset dominates every
    first-layer response and BatchNorm scales the steps away; standardised per frame, the steps are
    what varies. ``eps`` keeps a flat frame (e.g. an all-zero "no measurement" frame) finite.

    The unbiased standard deviation is computed from the centred values by hand: the same numbers
    as ``Tensor.std`` (two passes, no cancellation), but ``std`` over two dimensions took about
    190 us for a ``[8, 2, 56, 56]`` clip on the 2-core CPU and this about 40 us, 6% of the
    synthetic demo student's batch-1 latency.
    """
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    n = x.shape[-2] * x.shape[-1]
    var = centred.square().sum(dim=(-2, -1), keepdim=True) / max(n - 1, 1)
    return centred / (var.sqrt() + eps)


def temporal_shift(x: Tensor, num_frames: int, fraction: float) -> Tensor:
    """Temporal Shift Module (Lin et al., ICCV 2019): on ``[B*T, C, h, w]`` per-frame features,
    move ``fraction`` of the channels one frame back in time and as many one frame forward
    (zeros at the clip's ends); the rest stay. Zero FLOPs and zero parameters, and the next conv
    then mixes neighbouring frames, so a 2D CNN sees motion, not only appearance.
    """
    if num_frames < 2 or fraction <= 0:
        return x
    n, c, h, w = x.shape
    k = max(1, int(c * fraction))
    v = x.view(n // num_frames, num_frames, c, h, w)
    zeros = v.new_zeros(v.shape[0], 1, k, h, w)
    back = torch.cat([v[:, 1:, :k], zeros], dim=1)  # frame t sees frame t+1
    fwd = torch.cat([zeros, v[:, :-1, k : 2 * k]], dim=1)  # frame t sees frame t-1
    return torch.cat([back, fwd, v[:, :, 2 * k :]], dim=2).view(n, c, h, w)


class FrameCNN(Encoder):
    """A small 2D CNN applied to every sampled frame, pooled to ``grid x grid`` tokens per frame,
    then mixed over time. Used for RGB, depth, flow stacks and log-mel spectrogram windows.

    Tokens are time-major: ``num_tokens(T) = T * grid**2``. ``out_dim`` is the last stage width
    (plus ``2 * keypoints``), or ``out_dim`` when given (a linear projection). ``keypoints > 0``
    appends that many spatial-softmax keypoints (see ``SpatialSoftmax``) to every token, so the
    tokens say where the strongest responses are, not only what they are; needs ``grid=1``.
    ``shift > 0`` applies a temporal shift of that channel fraction (each way) before every
    conv block after the first (see ``temporal_shift``): motion for a per-frame CNN at no cost.
    """

    def __init__(
        self,
        modality: str,
        in_channels: int | None = None,
        size: str = "student",
        widths: Sequence[int] | None = None,
        blocks: int | None = None,
        grid: int = 1,
        temporal_layers: int = 1,
        temporal_kernel: int = 3,
        norm: str = "batch",
        out_dim: int | None = None,
        presets: dict[str, tuple[tuple[int, ...], int]] = FRAME_PRESETS,
        pool: str = "avg",
        keypoints: int = 0,
        shift: float = 0.0,
        input_norm: str = "none",
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if in_channels is None:
            if modality_kind(modality) not in DEFAULT_CHANNELS:
                raise ValueError(f"give in_channels for modality {modality!r}")
            in_channels = DEFAULT_CHANNELS[modality_kind(modality)]
        pw, pb = _preset(presets, size, "frame")
        widths = tuple(widths) if widths is not None else pw
        blocks = blocks if blocks is not None else pb
        if not widths or blocks < 1 or grid < 1:
            raise ValueError("widths must be non-empty, blocks and grid at least 1")
        if not 0.0 <= shift <= 0.5:
            raise ValueError(f"shift is a channel fraction per direction in [0, 0.5], got {shift}")
        if input_norm not in ("none", "frame"):
            raise ValueError(f"unknown input_norm {input_norm!r} (known: none, frame)")
        if keypoints and grid != 1:
            raise ValueError(f"keypoints need grid=1 (one token per frame), got grid={grid}")
        self.modality = modality
        self.in_channels = in_channels
        self.grid = grid
        self.pool = check_pool(pool)
        self.shift = shift
        self.input_norm = input_norm
        self.backbone = conv_stack(in_channels, widths, blocks, norm)
        self.keypoints = SpatialSoftmax(widths[-1], keypoints) if keypoints else None
        self._output(widths[-1] + 2 * keypoints, out_dim, temporal_layers, temporal_kernel)
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        return num_frames * self.grid**2

    def encode(self, x: Tensor) -> Tensor:
        frames, b, t = fold_frames(x, 3)
        if frames.shape[1] != self.in_channels:
            hint = (" (flow stacks of k frames have 2k channels: set the encoder's in_channels, or use the"
                    " `flow` encoder with stack: k)" if modality_kind(self.modality) == "flow" else
                    " (set the encoder's in_channels)")
            raise ValueError(f"{self.modality} encoder expects {self.in_channels} channels, "
                             f"got {frames.shape[1]}{hint}")
        if self.input_norm == "frame":
            frames = frame_standardize(frames)
        feat = frames
        for i, block in enumerate(self.backbone):  # temporal_shift is the identity when shift == 0
            feat = block(temporal_shift(feat, t, self.shift) if i > 0 else feat)
        tok = grid_tokens(feat, self.grid, self.pool)  # [B*T, S, C]
        if self.keypoints is not None:
            tok = torch.cat([tok, self.keypoints(feat).unsqueeze(1)], dim=-1)
        tok = self.proj(tok)
        tok = tok.reshape(b, t * self.grid**2, self.out_dim)
        return self.temporal(tok, t)


@ENCODERS.register("frames")
def frames_encoder(modality: str = "rgb", **options: Any) -> FrameCNN:
    """Per-frame CNN for RGB (3 channels) or depth (1 channel)."""
    return FrameCNN(modality, **options)


@ENCODERS.register("flow")
def flow_encoder(modality: str = "flow", stack: int = 1, **options: Any) -> FrameCNN:
    """Per-frame CNN over a stack of ``stack`` u/v flow pairs (``2 * stack`` input channels)."""
    options.setdefault("in_channels", 2 * stack)
    return FrameCNN(modality, **options)


@ENCODERS.register("spectrogram")
def spectrogram_encoder(modality: str = "audio", **options: Any) -> FrameCNN:
    """Per-window CNN over ``[1, n_mels, steps]`` log-mel windows (one window per sampled frame).

    Uses its own presets: the ``student`` size is about 1% of the ``teacher`` size in FLOPs.
    """
    options.setdefault("presets", SPECTROGRAM_PRESETS)
    options.setdefault("in_channels", 1)
    return FrameCNN(modality, **options)


@ENCODERS.register("boxes")
class BoxesEncoder(Encoder):
    """Object detections ``[B, T, K, 6]`` (x1, y1, x2, y2, category id, valid) -> one token per frame.

    Each slot gets geometric features (corners, centre, size) and a category embedding, goes
    through a shared MLP, and the valid slots of a frame are pooled (masked mean or max). A frame
    without any valid slot gets a learned "no objects" vector, so padding never reads as an object.
    Category ids must be below ``num_categories`` (0 = padding, 1 = hand, 2 = object by default).
    """

    def __init__(
        self,
        modality: str = "boxes",
        size: str = "student",
        hidden: int | None = None,
        layers: int | None = None,
        num_categories: int = 3,
        category_dim: int | None = None,
        pool: str = "mean",
        temporal_layers: int = 1,
        temporal_kernel: int = 3,
        out_dim: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        ph, pl = _preset(BOXES_PRESETS, size, "boxes")
        hidden = hidden or ph
        layers = layers or pl
        if pool not in ("mean", "max"):
            raise ValueError(f"unknown pool {pool!r} (known: mean, max)")
        self.modality = modality
        self.num_categories = num_categories
        self.pool = pool
        cdim = category_dim or max(4, hidden // 4)
        self.category = nn.Embedding(num_categories, cdim)
        mlp: list[nn.Module] = []
        cin = 8 + cdim
        for _ in range(layers):
            mlp += [nn.Linear(cin, hidden), nn.LayerNorm(hidden), nn.GELU()]
            cin = hidden
        self.mlp = nn.Sequential(*mlp)
        self.empty = nn.Parameter(torch.zeros(hidden))
        self._output(hidden, out_dim, temporal_layers, temporal_kernel)
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        return num_frames

    def encode(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != 6:
            raise ValueError(f"boxes must be [B, T, K, 6], got {tuple(x.shape)}")
        b, t, _, _ = x.shape
        valid = x[..., 5] > 0.5
        cat = x[..., 4].round().long()
        if bool((cat[valid] >= self.num_categories).any()) or bool((cat[valid] < 0).any()):
            raise ValueError(f"box category ids must lie in [0, {self.num_categories}); raise num_categories")
        cat = torch.where(valid, cat, torch.zeros_like(cat))
        x1, y1, x2, y2 = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
        geo = torch.stack([x1, y1, x2, y2, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
        h = self.mlp(torch.cat([geo, self.category(cat)], dim=-1))  # [B, T, K, hidden]
        m = valid.unsqueeze(-1)
        count = m.sum(2)
        if self.pool == "mean":
            pooled = torch.where(m, h, 0.0).sum(2) / count.clamp(min=1)
        else:
            pooled = torch.where(m, h, torch.finfo(h.dtype).min).amax(2)
        pooled = torch.where(count > 0, pooled, self.empty.expand_as(pooled))
        return self.temporal(self.proj(pooled), t).reshape(b, t, self.out_dim)


@ENCODERS.register("imu")
class IMUEncoder(Encoder):
    """IMU windows ``[B, T, C, L]`` (one window per sampled frame) -> one token per frame.

    A strided 1D conv stack over each window, global average pooled, then temporal mixing.
    ``in_channels`` is the number of CSV columns the reader returns (default 6: accelerometer +
    gyroscope); the KARMMA pipeline sets it from the data when the config leaves it out.
    """

    def __init__(
        self,
        modality: str = "imu",
        in_channels: int = 6,
        size: str = "student",
        widths: Sequence[int] | None = None,
        blocks: int | None = None,
        kernel: int = 5,
        temporal_layers: int = 1,
        temporal_kernel: int = 3,
        out_dim: int | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        pw, pb = _preset(IMU_PRESETS, size, "imu")
        widths = tuple(widths) if widths is not None else pw
        blocks = blocks if blocks is not None else pb
        self.modality = modality
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            for i in range(blocks):
                layers += [
                    nn.Conv1d(cin, w, kernel, stride=2 if i == 0 else 1, padding=kernel // 2, bias=False),
                    nn.BatchNorm1d(w),
                    nn.ReLU(inplace=True),
                ]
                cin = w
        self.backbone = nn.Sequential(*layers)
        self._output(widths[-1], out_dim, temporal_layers, temporal_kernel)
        self._finish(freeze)

    def num_tokens(self, num_frames: int) -> int:
        return num_frames

    def encode(self, x: Tensor) -> Tensor:
        win, b, t = fold_frames(x, 2)
        if win.shape[1] != self.in_channels:
            raise ValueError(f"{self.modality} encoder expects {self.in_channels} channels, got {win.shape[1]} "
                             "(leave the encoder's in_channels unset and the pipeline takes it from the data)")
        tok = self.proj(self.backbone(win).mean(-1)).reshape(b, t, self.out_dim)
        return self.temporal(tok, t)


COMPACT_FOR_MODALITY = {
    "rgb": "frames",
    "depth": "frames",
    "flow": "flow",
    "audio": "spectrogram",
    "boxes": "boxes",
    "imu": "imu",
}
"""The built-in encoder each modality gets by default."""


@ENCODERS.register("compact")
def compact_encoder(modality: str, **options: Any) -> Encoder:
    """The built-in encoder for ``modality``'s kind (see ``COMPACT_FOR_MODALITY``; ``imu:acc`` gets
    the ``imu`` one), so configs can say ``name: compact, size: student`` for every modality alike."""
    kind = modality_kind(modality)
    if kind not in COMPACT_FOR_MODALITY:
        raise ValueError(f"no built-in encoder for modality {modality!r}")
    return ENCODERS.build(COMPACT_FOR_MODALITY[kind], modality=modality, **options)
