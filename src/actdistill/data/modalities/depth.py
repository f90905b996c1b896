"""Depth maps from 16-bit PNG frames (millimetres), the common layout of RGB-D captures.

Depth is not part of EPIC or SSv2; when used it lives in a per-video folder shaped like the RGB
frame folder, so it shares the frame-file helpers (template, index map, missing-file messages).
An 8-bit PNG is rejected rather than rescaled: it is almost always a visualisation of depth, not
depth, and guessing its scale would feed the model wrong distances.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from actdistill.data.modalities._frames import (
    check_frame_folder,
    decode_image,
    frame_names,
    gather_unique,
    mapped_numbers,
    read_frame_file,
)
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.records import DataError, Problem, Segment, Source

DEPTH_KINDS = ("png16",)


@READERS.register("depth")
class DepthReader(ModalityReader):
    """Depth as ``float32 [N, 1, H, W]`` in ``[0, 1]`` (= 0 .. ``max_depth`` metres).

    ``Source.kind == "png16"``: ``source.path`` is the frame folder, ``source.template`` the file
    name (e.g. ``frame_{:010d}.png``), ``source.index_map``/``num_frames`` as for RGB. Pixel values
    times ``scale`` give metres (0.001 for millimetre PNGs), clipped to ``max_depth`` and divided
    by it. Zero stays zero, which in these captures means "no measurement".
    """

    modality = "depth"
    spatial = True

    def __init__(self, scale: float = 0.001, max_depth: float = 10.0) -> None:
        if scale <= 0 or max_depth <= 0:
            raise ValueError("scale and max_depth must be positive")
        self.scale = scale
        self.max_depth = max_depth

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        if source.kind not in DEPTH_KINDS:
            raise DataError(
                source.path, f"depth reader cannot read source kind {source.kind!r} (known: {DEPTH_KINDS})"
            )
        folder = Path(source.path)
        numbers = mapped_numbers(source, frames)

        def dec(n: int) -> tuple[Path, np.ndarray]:
            path, data = read_frame_file(folder, frame_names(source), n)
            img = decode_image(data, path, cv2.IMREAD_UNCHANGED)
            if img.dtype != np.uint16:
                raise DataError(path, f"depth image must be 16-bit (uint16), found {img.dtype}")
            if img.ndim != 2:
                raise DataError(path, f"depth image must be single-channel, found shape {img.shape}")
            return path, img

        raw = gather_unique(numbers, dec)  # [N, H, W] uint16
        metres = torch.from_numpy(raw.astype(np.float32)).mul_(self.scale)
        return metres.clamp_(0.0, self.max_depth).div_(self.max_depth).unsqueeze(1).contiguous()

    def check(self, source: Source) -> Problem | None:
        if source.kind not in DEPTH_KINDS:
            return Problem(source.path, f"unknown depth source kind {source.kind!r}", "malformed")
        return check_frame_folder(source.path, self.modality)
