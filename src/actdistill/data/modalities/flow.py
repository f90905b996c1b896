"""Optical flow: EPIC-style u/v JPEG folders, or TV-L1 computed from RGB for datasets without it.

EPIC-KITCHENS ships TV-L1 flow as greyscale JPEG pairs ``flow_frames/P01_01/{u,v}/frame_N.jpg``
where pixel 128 means zero motion and the range maps linearly to a clipped displacement bound.
2018 videos have flow at half the RGB rate, 2020 videos 1:1 (``Source.index_map`` says which).
Datasets without flow (SSv2, few-shot sets) get it from :func:`extract_flow_folder` once, in the
same format, or on the fly with ``Source.kind == "from_rgb"`` (slow; for small experiments).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from actdistill.data.modalities._frames import (
    check_frame_folder,
    count_files,
    decode_image,
    frame_names,
    gather_unique,
    mapped_numbers,
    read_frame_file,
    template_suffix,
)
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.modalities.rgb import RGBReader, check_rgb_source, iter_rgb_frames
from actdistill.data.records import DataError, Problem, Segment, Source

FLOW_KINDS = ("uv_frames", "from_rgb")
_TVL1_LOCAL = threading.local()


def _tvl1() -> Any:
    """One TV-L1 solver per thread: creating it is cheap but it keeps internal buffers."""
    solver = getattr(_TVL1_LOCAL, "solver", None)
    if solver is None:
        solver = cv2.optflow.DualTVL1OpticalFlow_create()
        _TVL1_LOCAL.solver = solver
    return solver


def compute_tvl1(prev_gray: np.ndarray, next_gray: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """TV-L1 flow from ``prev_gray`` to ``next_gray`` (``uint8 [H, W]``) as ``float32 [2, H, W]``.

    Channel 0 is horizontal (u, positive = rightwards), channel 1 vertical (v, positive =
    downwards), in pixels, clipped to ``[-bound, bound]`` the way the EPIC release clips before
    quantising (large displacements are mostly TV-L1 failures, and clipping keeps the range usable).
    """
    if prev_gray.shape != next_gray.shape or prev_gray.ndim != 2:
        raise ValueError(
            f"need two greyscale frames of one size, got {prev_gray.shape} and {next_gray.shape}"
        )
    flow = _tvl1().calc(prev_gray, next_gray, None)
    flow = np.clip(flow, -bound, bound).astype(np.float32)
    return np.ascontiguousarray(flow.transpose(2, 0, 1))


def flow_to_uint8(flow_channel: np.ndarray, bound: float) -> np.ndarray:
    """EPIC quantisation of one flow channel: ``128 + f / bound * 127``, rounded and clipped."""
    return np.clip(np.round(128.0 + flow_channel / bound * 127.0), 0, 255).astype(np.uint8)


def _as_source(obj: Any, where: str) -> Source:
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, dict):
        return Source(**obj)
    raise DataError(where, "flow source of kind 'from_rgb' needs options['rgb_source'] (a Source or dict)")


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def shrink_to_short_side(img: np.ndarray, short_side: int | None) -> np.ndarray:
    """``img`` resized (area interpolation) so its short side is ``short_side``; never enlarged.

    Why: TV-L1 costs grow with the pixel count (about 100 s for a 720p clip against 4 s at the
    model's 128 px), while the model only sees a crop of the frame resized to ``short_side``.
    """
    h, w = img.shape[:2]
    if not short_side or min(h, w) <= short_side:
        return img
    f = short_side / min(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


@READERS.register("flow")
class FlowReader(ModalityReader):
    """Optical flow as ``float32 [N, 2 * stack, H, W]``, channels ``u0, v0, u1, v1, ...``.

    ``Source.kind``:
      * ``uv_frames``: ``source.path`` holds ``u/`` and ``v/`` with files named by
        ``source.template``; numbers map through ``source.index_map`` (``epic_flow_half``,
        ``epic_flow_full``, ``identity``) and clamp to ``source.num_frames`` or, if unknown, to
        the number of files in ``u/`` (counted once per process). Values are
        ``(pixel - 128) / 128 * scale``: pixel 128 is zero motion, ``scale = 1`` puts the
        release's clipping bound at about +-1.
      * ``from_rgb``: TV-L1 between RGB frames n and n + 1 of ``source.options["rgb_source"]``
        (a frames/tar/video Source), clipped to ``tvl1_bound`` pixels and divided by it, times
        ``scale``, so both kinds share one range. ``source.options["short_side"]`` (set by
        ``actdistill predict`` to the run's ``data.spatial.short_side``) first shrinks the frames
        to that short side, so the flow is computed, in pixels, at the scale the model sees.
        (Flow of either kind is rescaled with the frames by the spatial transform.)

    ``stack``: TSN-style stacking of ``stack`` consecutive flow frames from each mapped number,
    clamped at the last flow frame.
    """

    modality = "flow"
    spatial = True

    def __init__(self, stack: int = 1, scale: float = 1.0, tvl1_bound: float = 20.0) -> None:
        if stack < 1:
            raise ValueError("stack must be at least 1")
        if tvl1_bound <= 0:
            raise ValueError("tvl1_bound must be positive")
        self.stack = stack
        self.scale = scale
        self.tvl1_bound = tvl1_bound

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        if source.kind == "uv_frames":
            return self._read_uv(source, frames)
        if source.kind == "from_rgb":
            return self._read_from_rgb(source, frames)
        raise DataError(
            source.path, f"flow reader cannot read source kind {source.kind!r} (known: {FLOW_KINDS})"
        )

    # -- u/v folders ---------------------------------------------------------------------------
    def _read_uv(self, source: Source, frames: np.ndarray) -> torch.Tensor:
        root = Path(source.path)
        udir, vdir = root / "u", root / "v"
        if not root.is_dir():
            raise DataError(root, "flow folder does not exist")
        for d in (udir, vdir):
            if not d.is_dir():
                raise DataError(d, "flow folder has no such sub-folder (expected u/ and v/)")
        last = source.num_frames
        if last is None:
            last = count_files(udir, template_suffix(source.template))
            if last == 0:
                raise DataError(udir, "flow folder is empty")
        base = mapped_numbers(source, frames, last)
        numbers = np.minimum(base[:, None] + np.arange(self.stack)[None, :], last).reshape(-1)

        def dec(n: int) -> tuple[Path, np.ndarray]:
            pu, du = read_frame_file(udir, frame_names(source), n)
            pv, dv = read_frame_file(vdir, frame_names(source), n)
            u = decode_image(du, pu, cv2.IMREAD_GRAYSCALE)
            v = decode_image(dv, pv, cv2.IMREAD_GRAYSCALE)
            if u.shape != v.shape:
                raise DataError(pv, f"v frame size {v.shape} differs from u frame size {u.shape}")
            return pu, np.stack([u, v])

        uv = gather_unique(numbers, dec)  # [N * stack, 2, H, W] uint8
        n = len(base)
        out = torch.from_numpy(uv).float().sub_(128.0).mul_(self.scale / 128.0)
        return out.reshape(n, 2 * self.stack, *out.shape[-2:]).contiguous()

    # -- on the fly from RGB -------------------------------------------------------------------
    def _read_from_rgb(self, source: Source, frames: np.ndarray) -> torch.Tensor:
        rgb_src = _as_source(source.options.get("rgb_source"), source.path)
        reader = RGBReader()
        last = reader.count(rgb_src)
        base = mapped_numbers(rgb_src, frames, last)
        starts = base[:, None] + np.arange(self.stack)[None, :]
        if last is not None:
            if last < 2:
                raise DataError(rgb_src.path, "optical flow needs at least two RGB frames")
            starts = np.minimum(starts, last - 1)
        starts = starts.reshape(-1)
        needed = np.unique(np.concatenate([starts, starts + 1]))
        rgb = reader.read_uint8(rgb_src, needed)
        short = source.options.get("short_side")
        gray = {int(n): shrink_to_short_side(_to_gray(img), short) for n, img in zip(needed, rgb)}

        def dec(n: int) -> tuple[str, np.ndarray]:
            return rgb_src.path, compute_tvl1(gray[n], gray[n + 1], self.tvl1_bound)

        flow = gather_unique(starts, dec)  # [N * stack, 2, H, W] float32 pixels
        out = torch.from_numpy(flow).mul_(self.scale / self.tvl1_bound)
        return out.reshape(len(base), 2 * self.stack, *out.shape[-2:]).contiguous()

    def check(self, source: Source) -> Problem | None:
        if source.kind == "uv_frames":
            root = Path(source.path)
            if not root.exists():
                return Problem(str(root), "flow folder not found", "missing")
            for sub in ("u", "v"):
                problem = check_frame_folder(root / sub, "flow")
                if problem is not None:
                    return problem
            return None
        if source.kind == "from_rgb":
            try:
                rgb_src = _as_source(source.options.get("rgb_source"), source.path)
            except DataError as e:
                return Problem.from_error(e, "malformed")
            return check_rgb_source(rgb_src, "flow (rgb)")
        return Problem(source.path, f"unknown flow source kind {source.kind!r}", "malformed")


def extract_flow_folder(
    rgb_source: Source,
    out_dir: str | Path,
    bound: float = 20.0,
    stride: int = 1,
    template: str = "frame_{:010d}.jpg",
    quality: int = 95,
    progress: bool = True,
) -> int:
    """Compute TV-L1 flow for a whole video and write it in the EPIC u/v JPEG format.

    Flow frame k is computed from RGB frames ``s`` and ``s + stride`` with
    ``s = 1 + (k - 1) * stride``: ``stride=1`` gives one flow frame per RGB frame but the last
    (EPIC 2020, read back with ``index_map="epic_flow_full"``); ``stride=2`` gives the half-rate
    flow of EPIC 2018 (``index_map="epic_flow_half"``). Pixels are ``128 + flow / bound * 127``.
    Returns the number of flow frames written. This is how datasets without released flow get
    the flow modality without a private format.
    """
    if stride < 1:
        raise ValueError("stride must be at least 1")
    out = Path(out_dir)
    udir, vdir = out / "u", out / "v"
    udir.mkdir(parents=True, exist_ok=True)
    vdir.mkdir(parents=True, exist_ok=True)
    total = RGBReader().count(rgb_source)
    bar_total = (total - 1) // stride if total is not None else None
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    written = 0
    prev: np.ndarray | None = None
    with tqdm(
        total=bar_total, desc=f"TV-L1 {Path(rgb_source.path).name}", unit="flow", disable=not progress
    ) as bar:
        for n, rgb in iter_rgb_frames(rgb_source):
            if (n - 1) % stride != 0:
                continue
            gray = _to_gray(rgb)
            if prev is not None:
                flow = compute_tvl1(prev, gray, bound)
                written += 1
                for d, ch in ((udir, flow[0]), (vdir, flow[1])):
                    path = d / template.format(written)
                    ok, buf = cv2.imencode(path.suffix or ".jpg", flow_to_uint8(ch, bound), params)
                    if not ok:
                        raise DataError(path, "could not encode flow image")
                    tmp = path.with_name(path.name + ".part")
                    tmp.write_bytes(buf.tobytes())
                    os.replace(tmp, path)  # never leave a half-written frame behind
                bar.update(1)
            prev = gray
    if written == 0:
        raise DataError(rgb_source.path, "optical flow needs at least two RGB frames")
    return written
