"""RGB frames from a JPEG folder, a tar of JPEGs, or a video container.

All three official layouts are read as published (EPIC's ``rgb_frames/P01_01/`` folders or
``P01_01.tar`` archives, SSv2's ``.webm`` videos, few-shot frame folders), so nobody has to
repack a dataset before training. Output is ``float32 [N, 3, H, W]`` in ``[0, 1]``, RGB order, at
the native resolution; cropping and flipping happen later in the shared spatial transform.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from actdistill.data.modalities._frames import (
    check_frame_folder,
    count_files,
    decode_image,
    frame_name,
    frame_names,
    gather_unique,
    mapped_numbers,
    read_frame_file,
    read_tar_member,
    tar_index,
    template_suffix,
)
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.records import DataError, Problem, Segment, Source

RGB_KINDS = ("frames", "tar", "video")
_AV_ERRORS = (av.FFmpegError, OSError)


def _to_tensor(frames_hwc: np.ndarray) -> torch.Tensor:
    """``uint8 [N, H, W, C]`` -> ``float32 [N, C, H, W]`` in ``[0, 1]``."""
    t = torch.from_numpy(np.ascontiguousarray(frames_hwc))
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _decode_rgb(data: bytes, path: str | Path) -> np.ndarray:
    bgr = decode_image(data, path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------
# video containers


def _open_video(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    p = Path(path)
    if not p.exists():
        raise DataError(p, "video file does not exist")
    if p.stat().st_size == 0:
        raise DataError(p, "video file is empty (0 bytes)")
    try:
        container = av.open(str(p))
    except _AV_ERRORS as e:
        raise DataError(p, f"cannot open video container: {e}") from None
    if not container.streams.video:
        container.close()
        raise DataError(p, "container has no video stream")
    return container, container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream, fallback: float | None) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate:
        return float(rate)
    return fallback


def video_frame_count(path: str | Path) -> int | None:
    """Frame count from the container header, or ``None`` if it does not say (e.g. webm)."""
    container, stream = _open_video(path)
    with container:
        return int(stream.frames) if stream.frames else None


def decode_video_frames(
    path: str | Path, numbers: np.ndarray, fps: float | None = None, seek: bool = True
) -> np.ndarray:
    """Decode frames numbered ``numbers`` (1-based: n = the n-th decoded frame) as ``uint8 [N,H,W,3]``.

    With ``seek`` the decoder jumps to the key frame before the first wanted frame and identifies
    frames by their timestamps (``round((pts - start) * time_base * fps) + 1``), which equals the
    decode count for constant-frame-rate video and avoids decoding a long video from its start
    for every segment. ``seek=False`` decodes from the start and counts frames, the exact
    definition, for variable-frame-rate files.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    want = np.unique(numbers)
    first, last = int(want[0]), int(want[-1])
    wanted = set(want.tolist())
    got: dict[int, np.ndarray] = {}
    container, stream = _open_video(path)
    try:
        with container:
            stream.thread_type = "AUTO"
            rate = _stream_fps(stream, fps)
            tb = stream.time_base
            start_pts = stream.start_time or 0
            use_pts = seek and rate is not None and tb is not None and first > 1
            if use_pts:
                got = _decode_by_pts(container, stream, wanted, first, last, rate, tb, start_pts)
                if got is None:  # seek landed after the wanted frame or timestamps are missing
                    container.seek(0, stream=stream, backward=True, any_frame=False)
                    got = {}
                    use_pts = False
            if not use_pts:
                for i, frame in enumerate(container.decode(stream), start=1):
                    if i in wanted:
                        got[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
    except _AV_ERRORS as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    missing = sorted(wanted - set(got))
    if missing:
        raise DataError(
            path,
            f"video has no frame {missing[0]} (decoded up to {max(got) if got else 0}); "
            "set Source.num_frames to clamp frame numbers to the video's length",
        )
    shapes = {a.shape for a in got.values()}
    if len(shapes) > 1:
        raise DataError(path, f"decoded frames have different sizes {sorted(shapes)}")
    uniq = np.stack([got[int(n)] for n in want])
    return uniq[np.searchsorted(want, numbers)]


def _decode_by_pts(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    wanted: set[int],
    first: int,
    last: int,
    rate: float,
    tb: Fraction,
    start_pts: int,
) -> dict[int, np.ndarray] | None:
    """Seek near ``first`` and collect wanted frames by timestamp; ``None`` means fall back."""
    got: dict[int, np.ndarray] = {}
    margin = 1.0  # seconds before the wanted frame: guards against rounding in the seek target
    for _ in range(3):
        target_sec = max(0.0, (first - 1) / rate - margin)
        container.seek(start_pts + int(target_sec / tb), stream=stream, backward=True, any_frame=False)
        got.clear()
        ok = True
        for i_frame, frame in enumerate(container.decode(stream)):
            if frame.pts is None:
                return None
            idx = round(float((frame.pts - start_pts) * tb) * rate) + 1
            if i_frame == 0 and idx > first:
                ok = False  # landed past the first wanted frame: seek further back
                break
            if idx in wanted:
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= last:
                break
        if ok:
            return got
        margin *= 4
    return None


def iter_video_frames(path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(n, uint8 [H, W, 3] RGB)`` for every frame of a video, in order, 1-based."""
    container, stream = _open_video(path)
    try:
        with container:
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream), start=1):
                yield i, frame.to_ndarray(format="rgb24")
    except _AV_ERRORS as e:
        raise DataError(path, f"cannot decode video: {e}") from None


# ---------------------------------------------------------------------------------------------
# the reader


@READERS.register("rgb")
class RGBReader(ModalityReader):
    """RGB frames; ``Source.kind`` is ``frames``, ``tar`` or ``video``.

    Uses ``source.path`` (the frame folder, the archive, or the video file), ``source.template``
    (file name of frame n for ``frames``/``tar``), ``source.index_map`` and ``source.num_frames``
    (clamping) and, for ``video``, ``source.fps`` only as a fallback when the stream has no rate.

    ``seek``: for videos, jump to the nearest key frame instead of decoding from the start (see
    :func:`decode_video_frames`).
    """

    modality = "rgb"
    spatial = True

    def __init__(self, seek: bool = True) -> None:
        self.seek = seek

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        numbers = mapped_numbers(source, frames)
        return _to_tensor(self.read_uint8(source, numbers))

    def read_uint8(self, source: Source, numbers: np.ndarray) -> np.ndarray:
        """Frames in the source's own numbering (already mapped) as ``uint8 [N, H, W, 3]`` RGB.

        Public because optical flow computed from RGB needs the raw pixels, not ``[0, 1]`` floats.
        """
        numbers = np.asarray(numbers, dtype=np.int64)
        if source.kind == "frames":
            folder = Path(source.path)

            def dec(n: int) -> tuple[Path, np.ndarray]:
                path, data = read_frame_file(folder, frame_names(source), n)
                return path, _decode_rgb(data, path)

            return gather_unique(numbers, dec)
        if source.kind == "tar":

            def dec_tar(n: int) -> tuple[str, np.ndarray]:
                label, data = read_tar_member(source.path, frame_name(source.template, n))
                return label, _decode_rgb(data, label)

            return gather_unique(numbers, dec_tar)
        if source.kind == "video":
            return decode_video_frames(source.path, numbers, fps=source.fps, seek=self.seek)
        raise DataError(
            source.path, f"rgb reader cannot read source kind {source.kind!r} (known: {RGB_KINDS})"
        )

    def count(self, source: Source) -> int | None:
        """How many frames the source has: recorded, counted on disk, or from the video header."""
        if source.num_frames is not None:
            return source.num_frames
        if source.kind == "frames":
            return count_files(source.path, template_suffix(source.template))
        if source.kind == "tar":
            return tar_index(source.path).num_files
        if source.kind == "video":
            return video_frame_count(source.path)
        raise DataError(
            source.path, f"rgb reader cannot read source kind {source.kind!r} (known: {RGB_KINDS})"
        )

    def check(self, source: Source) -> Problem | None:
        return check_rgb_source(source, self.modality)


def check_rgb_source(source: Source, modality: str = "rgb") -> Problem | None:
    """Existence and shape checks that cost a stat, a directory peek or a container header."""
    if source.kind == "frames":
        return check_frame_folder(source.path, modality)
    p = Path(source.path)
    if not p.exists():
        return Problem(str(p), f"{modality} source not found", "missing")
    if p.is_dir():
        return Problem(str(p), f"{modality} {source.kind} source is a folder, expected a file", "malformed")
    if p.stat().st_size == 0:
        return Problem(str(p), f"{modality} {source.kind} file is empty (0 bytes)", "empty")
    try:
        if source.kind == "tar":
            if tar_index(p).num_files == 0:
                return Problem(str(p), f"{modality} tar archive holds no files", "empty")
        elif source.kind == "video":
            container, _ = _open_video(p)
            container.close()
        else:
            return Problem(str(p), f"unknown {modality} source kind {source.kind!r}", "malformed")
    except DataError as e:
        return Problem.from_error(e, "unreadable")
    return None


def iter_rgb_frames(source: Source) -> Iterator[tuple[int, np.ndarray]]:
    """Every frame of an RGB source in its own numbering, ``(n, uint8 [H, W, 3])``, in order.

    Videos are decoded once sequentially; frame folders and archives are read file by file.
    """
    if source.kind == "video":
        yield from iter_video_frames(source.path)
        return
    reader = RGBReader()
    total = reader.count(source)
    if total is None:
        raise DataError(source.path, "cannot tell how many frames the source has")
    for n in range(1, total + 1):
        yield n, reader.read_uint8(source, np.array([n]))[0]
