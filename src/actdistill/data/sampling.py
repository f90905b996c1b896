"""Temporal sampling, chosen once per sample and shared by all of its modalities.

Every function returns absolute frame numbers in the segment's RGB numbering (1-based file
numbers, inclusive range ``[start, stop]``) as an int array of shape ``[views, T]``. Readers map
these numbers into their own numbering (:func:`map_frame_numbers`) and audio/IMU readers into
seconds, so all modalities of one sample look at the same moments ("consistent teaching").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLING_MODES = ("tsn", "uniform", "dense")


def tsn_indices(start: int, stop: int, num_segments: int, train: bool, rng: np.random.Generator) -> np.ndarray:
    """TSN: split ``[start, stop]`` into equal segments, one frame per segment.

    Training takes a random frame within each segment, testing its centre. Segments shorter than
    one frame repeat frames, so short clips still yield ``num_segments`` numbers.
    """
    n = stop - start + 1
    edges = np.linspace(0, n, num_segments + 1)
    lo, hi = edges[:-1], edges[1:]
    if train:
        offs = lo + rng.random(num_segments) * (hi - lo)
    else:
        offs = (lo + hi) / 2.0
    offs = np.clip(np.floor(offs).astype(np.int64), 0, n - 1)
    return start + offs


def uniform_indices(
    start: int, stop: int, num_frames: int, train: bool, rng: np.random.Generator, max_pad: int = 5
) -> np.ndarray:
    """TRX-style ``linspace`` sampling with jittered end points (the few-shot reference protocol).

    With ``n`` frames (0-based positions): training pads ``pad = int(min(max_pad, (n - T) / 2))``;
    if ``pad >= 1`` the start is drawn from ``0..pad`` and the end from ``n-1-pad..n-1``. Testing
    uses start 1 and end ``n - 2``. If ``end - start < T`` the whole range ``0..n-1`` is used.
    Positions are ``int(linspace(start, end, T))``, truncated as the reference does.
    """
    n = stop - start + 1
    if train:
        pad = int(min(max_pad, (n - num_frames) / 2))
        if pad >= 1:
            s = int(rng.integers(0, pad + 1))
            e = int(rng.integers(n - 1 - pad, n))
        else:
            s, e = 0, n - 1
    else:
        s, e = 1, n - 2
    if e - s < num_frames:
        s, e = 0, n - 1
    pos = np.linspace(s, e, num_frames).astype(np.int64)
    return start + np.clip(pos, 0, n - 1)


def dense_indices(
    start: int, stop: int, num_frames: int, stride: int, train: bool, rng: np.random.Generator, view: float = 0.5
) -> np.ndarray:
    """A dense clip of ``num_frames`` frames ``stride`` apart (SlowFast/I3D style).

    Training places the clip at random; testing at relative position ``view`` in ``[0, 1]``
    (0.5 = centred; multi-clip testing spreads several views). Short segments are padded by
    clamping to the last frame.
    """
    n = stop - start + 1
    span = (num_frames - 1) * stride + 1
    room = max(n - span, 0)
    first = int(rng.integers(0, room + 1)) if train else round(room * view)
    pos = first + np.arange(num_frames) * stride
    return start + np.clip(pos, 0, n - 1)


@dataclass(frozen=True)
class TemporalSampler:
    """Chooses the frame numbers of one sample: ``[views, T]``.

    ``views`` > 1 gives multi-clip testing: TSN views shift the within-segment offset, dense views
    spread clips over the segment, uniform views jitter end points with the sample's RNG.
    Training always uses one view.
    """

    mode: str = "tsn"
    num_frames: int = 8
    stride: int = 2
    views: int = 1
    max_pad: int = 5

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode {self.mode!r} is not one of {SAMPLING_MODES}")
        if self.num_frames < 1 or self.views < 1 or self.stride < 1:
            raise ValueError("num_frames, views and stride must be at least 1")

    def __call__(self, start: int, stop: int, train: bool, rng: np.random.Generator) -> np.ndarray:
        if stop < start:
            raise ValueError(f"empty frame range [{start}, {stop}]")
        views = 1 if train else self.views
        out = []
        for v in range(views):
            if self.mode == "tsn":
                if train or views == 1:
                    out.append(tsn_indices(start, stop, self.num_frames, train, rng))
                else:
                    out.append(_tsn_view(start, stop, self.num_frames, (v + 0.5) / views))
            elif self.mode == "uniform":
                out.append(uniform_indices(start, stop, self.num_frames, train or v > 0, rng, self.max_pad))
            else:
                pos = 0.5 if views == 1 else v / (views - 1)
                out.append(dense_indices(start, stop, self.num_frames, self.stride, train, rng, pos))
        return np.stack(out)


def _tsn_view(start: int, stop: int, num_segments: int, rel: float) -> np.ndarray:
    n = stop - start + 1
    edges = np.linspace(0, n, num_segments + 1)
    offs = edges[:-1] + rel * (edges[1:] - edges[:-1])
    return start + np.clip(np.floor(offs).astype(np.int64), 0, n - 1)


def epic_flow_index(rgb_numbers: np.ndarray, half_rate: bool, num_flow_frames: int | None = None) -> np.ndarray:
    """Map EPIC RGB frame numbers to flow frame numbers.

    2018 videos (``PXX_YY``) have flow at half the RGB rate: ``(rgb - 1) // 2 + 1``; 2020 videos
    (``PXX_1YY``) are 1:1 with one flow frame fewer than RGB. Both clamp to ``[1, last flow frame]``.
    """
    rgb = np.asarray(rgb_numbers, dtype=np.int64)
    flow = (rgb - 1) // 2 + 1 if half_rate else rgb.copy()
    flow = np.maximum(flow, 1)
    if num_flow_frames is not None:
        flow = np.minimum(flow, num_flow_frames)
    return flow


def is_epic_2018(video_id: str) -> bool:
    """``PXX_YY`` (two-digit video number) is a 2018 video; ``PXX_1YY`` a 2020 one."""
    return len(video_id.split("_")[-1]) == 2


def map_frame_numbers(frames: np.ndarray, index_map: str, num_frames: int | None = None) -> np.ndarray:
    """Translate RGB-numbered frames into a source's own numbering (see ``Source.index_map``)."""
    if index_map == "identity":
        out = np.asarray(frames, dtype=np.int64)
        out = np.maximum(out, 1)
        return np.minimum(out, num_frames) if num_frames is not None else out
    if index_map == "epic_flow_half":
        return epic_flow_index(frames, True, num_frames)
    if index_map == "epic_flow_full":
        return epic_flow_index(frames, False, num_frames)
    raise ValueError(f"unknown index map {index_map!r}")
