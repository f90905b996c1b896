"""Object detections (boxes + categories per frame) in the Something-Else annotation format.

KARMMA's SSv2 setting uses detections as its third modality. The Something-Else release stores
them as JSON: either one list of frames per video, or (the release files) one object mapping
video ids to such lists; each frame is ``{"name": "<video_id>/0001.jpg", "labels": [{"box2d":
{"x1", "y1", "x2", "y2"}, "category", "standard_category"}]}``. Coordinates are returned
normalised to ``[0, 1]`` so that the shared spatial transform can crop/flip them like the pixels
(:meth:`~actdistill.data.transforms.SpatialTransform.apply_boxes`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actdistill.data.modalities._frames import as_frame_numbers
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.records import DataError, Problem, Segment, Source
from actdistill.data.sampling import map_frame_numbers

BOXES_KINDS = ("boxes_json",)
PAD, HAND, OBJECT = 0, 1, 2
_DIGITS = re.compile(r"\d+")

_FILE_CACHE: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_VIDEO_CACHE: OrderedDict[tuple[Any, ...], VideoBoxes] = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class VideoBoxes:
    """One video's detections, validated once: frame numbers and ``[F, max_objects, 6]`` rows."""

    numbers: np.ndarray  # sorted frame numbers present in the file
    rows: np.ndarray  # float32 [F, max_objects, 6]


def load_json(path: str | Path, cache_files: int = 2) -> Any:
    """Parse a JSON file once per process (LRU); errors name the file and the error position.

    Something-Else's release files are large dicts shared by thousands of videos, so re-parsing
    per sample would dominate loading time.
    """
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "boxes JSON file does not exist") from None
    key = (p, st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _FILE_CACHE:
            _FILE_CACHE.move_to_end(key)
            return _FILE_CACHE[key]
    try:
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(
            p, f"malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from None
    except RecursionError:  # json raises this, not JSONDecodeError, for hostile nesting depth
        raise DataError(p, "malformed JSON: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise DataError(p, f"not UTF-8 text (byte {e.start}): {e.reason}") from None
    except OSError as e:
        raise DataError(p, f"cannot read file: {e}") from None
    with _LOCK:
        _FILE_CACHE[key] = data
        while len(_FILE_CACHE) > max(cache_files, 1):
            _FILE_CACHE.popitem(last=False)
    return data


def _number(value: Any, path: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(path, f"{field}: expected a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value):
        raise DataError(path, f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _frame_number(name: Any, position: int, path: str, where: str) -> int:
    """The number in a frame's ``name`` (``78687/0012.jpg`` -> 12); its list position if none."""
    if name is None:
        return position
    if not isinstance(name, str):
        raise DataError(path, f"{where}.name: expected a string, got {type(name).__name__}")
    digits = _DIGITS.findall(os.path.basename(name))
    return int(digits[-1]) if digits else position


@READERS.register("boxes")
class BoxesReader(ModalityReader):
    """Detections as ``float32 [N, max_objects, 6]``: ``x1, y1, x2, y2, category, valid``.

    ``Source.kind == "boxes_json"``: ``source.path`` is the JSON file; a dict file is indexed by
    ``segment.video_id``. Frame numbers map through ``source.index_map``/``num_frames`` as for RGB;
    a frame's number is the number in its ``name`` (natural parse, else its 1-based position).

    Options: ``max_objects`` slots per frame (extra objects dropped, missing ones zero rows with
    valid 0: "no detection" is legitimate data, not a failure); ``image_size`` ``(W, H)`` in
    pixels to normalise coordinates (else ``source.options["image_size"]``); ``categories`` maps
    ``standard_category`` strings to ids, with ``"hand"`` -> 1 and any other id (``"0000"``,
    ``"0001"``, ...) -> ``unknown_category`` (2, object) by default, 0 being padding;
    ``sort_objects`` puts hands first, then objects by ``standard_category``, so a slot tends to
    hold the same object across frames; ``missing_frame`` decides what a frame number absent
    from the file gives inside the annotated range (``empty`` rows, ``nearest`` frame, or
    ``error``); numbers past the last annotated frame clamp to it, like every other modality.
    """

    modality = "boxes"
    spatial = False

    def __init__(
        self,
        max_objects: int = 4,
        image_size: tuple[int, int] | None = None,
        categories: Mapping[str, int] | None = None,
        unknown_category: int = OBJECT,
        sort_objects: bool = True,
        missing_frame: str = "empty",
        cache_videos: int = 1024,
    ) -> None:
        if max_objects < 1:
            raise ValueError("max_objects must be at least 1")
        if missing_frame not in ("empty", "nearest", "error"):
            raise ValueError("missing_frame must be one of 'empty', 'nearest', 'error'")
        self.max_objects = max_objects
        self.image_size = tuple(image_size) if image_size is not None else None
        self.categories = dict(categories) if categories is not None else {"hand": HAND}
        self.unknown_category = unknown_category
        self.sort_objects = sort_objects
        self.missing_frame = missing_frame
        self.cache_videos = cache_videos

    def category_id(self, standard_category: str) -> int:
        return self.categories.get(standard_category, self.unknown_category)

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        if source.kind not in BOXES_KINDS:
            raise DataError(
                source.path, f"boxes reader cannot read source kind {source.kind!r} (known: {BOXES_KINDS})"
            )
        video = self._video(source, segment.video_id)
        numbers = map_frame_numbers(as_frame_numbers(frames), source.index_map, source.num_frames)
        numbers = np.minimum(numbers, video.numbers[-1])
        pos = np.searchsorted(video.numbers, numbers)
        pos = np.minimum(pos, len(video.numbers) - 1)
        found = video.numbers[pos] == numbers
        out = np.zeros((len(numbers), self.max_objects, 6), dtype=np.float32)
        out[found] = video.rows[pos[found]]
        if not found.all():
            if self.missing_frame == "error":
                n = int(numbers[~found][0])
                raise DataError(source.path, f"video {segment.video_id}: no annotation for frame {n}")
            if self.missing_frame == "nearest":
                lo = np.maximum(pos - 1, 0)
                nearer_lo = np.abs(video.numbers[lo] - numbers) <= np.abs(video.numbers[pos] - numbers)
                best = np.where(nearer_lo, lo, pos)
                out[~found] = video.rows[best[~found]]
        return torch.from_numpy(out)

    def _image_size(self, source: Source) -> tuple[float, float]:
        size = self.image_size or source.options.get("image_size")
        if size is None:
            raise DataError(
                source.path,
                "box coordinates are in pixels but the image size is unknown: pass image_size=(W, H) "
                "or set Source.options['image_size']",
            )
        w, h = (float(v) for v in size)
        if w <= 0 or h <= 0:
            raise DataError(source.path, f"image_size must be positive, got {size}")
        return w, h

    def _video(self, source: Source, video_id: str) -> VideoBoxes:
        w, h = self._image_size(source)
        st = os.stat(source.path) if os.path.exists(source.path) else None
        key = (
            source.path,
            st.st_mtime_ns if st else 0,
            video_id,
            w,
            h,
            self.max_objects,
            tuple(sorted(self.categories.items())),
            self.unknown_category,
            self.sort_objects,
        )
        with _LOCK:
            if key in _VIDEO_CACHE:
                _VIDEO_CACHE.move_to_end(key)
                return _VIDEO_CACHE[key]
        data = load_json(source.path)
        video = self._compile(source.path, data, video_id, w, h)
        with _LOCK:
            _VIDEO_CACHE[key] = video
            while len(_VIDEO_CACHE) > max(self.cache_videos, 1):
                _VIDEO_CACHE.popitem(last=False)
        return video

    def _compile(self, path: str, data: Any, video_id: str, w: float, h: float) -> VideoBoxes:
        """Validate one video's frame list and turn it into fixed-size rows."""
        if isinstance(data, dict):
            if video_id not in data:
                raise DataError(path, f"no entry for video {video_id!r} in the boxes file")
            frames = data[video_id]
            where0 = f"[{video_id!r}]"
        else:
            frames = data
            where0 = ""
        if not isinstance(frames, list):
            raise DataError(
                path, f"{where0 or 'top level'}: expected a list of frames, got {type(frames).__name__}"
            )
        if not frames:
            raise DataError(path, f"{where0 or 'top level'}: the frame list is empty")
        numbers: list[int] = []
        rows = np.zeros((len(frames), self.max_objects, 6), dtype=np.float32)
        for i, frame in enumerate(frames):
            where = f"{where0}[{i}]"
            if not isinstance(frame, dict):
                raise DataError(path, f"{where}: expected a frame object, got {type(frame).__name__}")
            numbers.append(_frame_number(frame.get("name"), i + 1, path, where))
            labels = frame.get("labels", [])
            if not isinstance(labels, list):
                raise DataError(path, f"{where}.labels: expected a list, got {type(labels).__name__}")
            objs: list[tuple[int, str, list[float]]] = []
            for j, label in enumerate(labels):
                lw = f"{where}.labels[{j}]"
                if not isinstance(label, dict):
                    raise DataError(path, f"{lw}: expected an object, got {type(label).__name__}")
                box = label.get("box2d")
                if not isinstance(box, dict):
                    raise DataError(path, f"{lw}.box2d: expected an object with x1, y1, x2, y2")
                x1, y1, x2, y2 = (
                    _number(box.get(k), path, f"{lw}.box2d.{k}") for k in ("x1", "y1", "x2", "y2")
                )
                std = label.get("standard_category", label.get("category"))
                if not isinstance(std, str):
                    raise DataError(
                        path, f"{lw}.standard_category: expected a string, got {type(std).__name__}"
                    )
                coords = [min(x1, x2) / w, min(y1, y2) / h, max(x1, x2) / w, max(y1, y2) / h]
                objs.append((self.category_id(std), std, [min(max(c, 0.0), 1.0) for c in coords]))
            if self.sort_objects:
                objs.sort(key=lambda o: (o[1] != "hand", o[1]))
            for k, (cat, _, coords) in enumerate(objs[: self.max_objects]):
                rows[i, k, :4] = coords
                rows[i, k, 4] = float(cat)
                rows[i, k, 5] = 1.0
        nums = np.asarray(numbers, dtype=np.int64)
        order = np.argsort(nums, kind="stable")
        nums = nums[order]
        dup = np.flatnonzero(np.diff(nums) == 0)
        if dup.size:
            raise DataError(path, f"{where0 or 'top level'}: frame number {int(nums[dup[0]])} appears twice")
        return VideoBoxes(nums, rows[order])

    def check(self, source: Source) -> Problem | None:
        p = Path(source.path)
        if not p.exists():
            return Problem(str(p), "boxes JSON file not found", "missing")
        if not p.is_file() or p.stat().st_size == 0:
            return Problem(str(p), "boxes JSON file is empty or not a file", "empty")
        return None
