"""Inertial data (accelerometer, gyroscope, ...) from a per-video CSV with a timestamp column.

Egocentric captures often carry head-mounted IMU streams at rates unrelated to the video, so the
reader works in seconds: each sampled frame n sits at ``(n - 1) / segment.fps`` and gets a fixed
window resampled by linear interpolation to a fixed number of points, which makes every sample
the same shape whatever the sensor's rate.
"""

from __future__ import annotations

import csv
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actdistill.data.modalities._frames import as_frame_numbers
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.records import DataError, Problem, Segment, Source

IMU_KINDS = ("imu_csv",)

_CACHE: OrderedDict[tuple[str, int, int], IMUTable] = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class IMUTable:
    """A parsed CSV: strictly increasing ``times [T]`` seconds, ``values [T, C]``, channel names."""

    times: np.ndarray
    values: np.ndarray
    channels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray


def write_imu_csv(
    path: str | Path, timestamps: Sequence[float] | np.ndarray, data: np.ndarray, channel_names: Sequence[str]
) -> Path:
    """Write ``timestamp,<channel>...`` with one row per sample (the format :class:`IMUReader` reads)."""
    t = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    d = np.asarray(data, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    if d.shape != (t.size, len(channel_names)):
        raise ValueError(
            f"data shape {d.shape} does not match {t.size} timestamps x {len(channel_names)} channels"
        )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", *channel_names])
        for ti, row in zip(t, d):
            w.writerow([repr(float(ti)), *(repr(float(v)) for v in row)])
    return p


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_imu_csv(path: str | Path) -> IMUTable:
    """Read and validate an IMU CSV; every error names the file and the line number (1 = header)."""
    p = Path(path)
    try:
        fh = open(p, newline="", encoding="utf-8")  # noqa: SIM115 - closed by `with fh` below
    except FileNotFoundError:
        raise DataError(p, "IMU CSV file does not exist") from None
    except OSError as e:
        raise DataError(p, f"cannot read file: {e}") from None
    rows: list[list[float]] = []
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or not any(c.strip() for c in header):
                raise DataError(p, "IMU CSV is empty (no header line)")
            header = [c.strip() for c in header]
            if header[0].lower() != "timestamp":
                if all(_is_number(c) for c in header):
                    raise DataError(p, "line 1: missing header (expected 'timestamp,<channel>,...')")
                raise DataError(p, f"line 1: first column must be 'timestamp', found {header[0]!r}")
            if len(header) < 2:
                raise DataError(p, "line 1: no data channels after 'timestamp'")
            for row in reader:
                line = reader.line_num
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(p, f"line {line}: {len(row)} cells, header has {len(header)}")
                vals: list[float] = []
                for name, cell in zip(header, row):
                    try:
                        v = float(cell)
                    except ValueError:
                        raise DataError(
                            p, f"line {line}, column {name!r}: non-numeric value {cell!r}"
                        ) from None
                    if not math.isfinite(v):
                        raise DataError(p, f"line {line}, column {name!r}: non-finite value {cell!r}")
                    vals.append(v)
                if rows and vals[0] <= rows[-1][0]:
                    raise DataError(
                        p, f"line {line}: timestamp {vals[0]} is not after the previous one {rows[-1][0]}"
                    )
                rows.append(vals)
        except csv.Error as e:
            raise DataError(p, f"line {reader.line_num}: malformed CSV: {e}") from None
        except UnicodeDecodeError as e:
            raise DataError(p, f"not UTF-8 text (byte {e.start}): {e.reason}") from None
    if len(rows) < 2:
        raise DataError(p, f"IMU CSV has {len(rows)} data row(s); interpolation needs at least 2")
    arr = np.asarray(rows, dtype=np.float64)
    values = arr[:, 1:]
    std = values.std(axis=0)
    return IMUTable(arr[:, 0], values, tuple(header[1:]), values.mean(axis=0), np.where(std > 0, std, 1.0))


def cached_imu(path: str | Path, cache_files: int = 16) -> IMUTable:
    """:func:`parse_imu_csv` behind a per-process LRU keyed by path, mtime and size."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "IMU CSV file does not exist") from None
    key = (p, st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    table = parse_imu_csv(p)
    with _LOCK:
        _CACHE[key] = table
        while len(_CACHE) > max(cache_files, 1):
            _CACHE.popitem(last=False)
    return table


@READERS.register("imu")
class IMUReader(ModalityReader):
    """IMU windows ``float32 [N, C, samples]``, one per sampled frame.

    ``Source.kind == "imu_csv"``: ``source.path`` is the CSV (``timestamp`` in seconds, then one
    numeric column per channel); ``source.options.get("time_offset", 0)`` is the CSV time of video
    frame 1, for logs whose clock does not start with the video. The window of ``window_sec`` is
    centred on each frame's time and sampled at ``samples`` evenly spaced points (end points
    included) by linear interpolation; outside the recording the first/last value is held.
    ``normalize`` standardises each channel by the file's own mean and standard deviation.
    """

    modality = "imu"
    spatial = False

    def __init__(self, window_sec: float = 2.0, samples: int = 64, normalize: bool = False) -> None:
        if window_sec <= 0 or samples < 1:
            raise ValueError("window_sec must be positive and samples at least 1")
        self.window_sec = window_sec
        self.samples = samples
        self.normalize = normalize

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        if source.kind not in IMU_KINDS:
            raise DataError(
                source.path, f"imu reader cannot read source kind {source.kind!r} (known: {IMU_KINDS})"
            )
        if not segment.fps or segment.fps <= 0:
            raise DataError(
                source.path, f"segment {segment.uid} has no fps; cannot place IMU windows in time"
            )
        table = cached_imu(source.path)
        numbers = as_frame_numbers(frames)
        centres = (numbers - 1) / float(segment.fps) + float(source.options.get("time_offset", 0.0))
        half = self.window_sec / 2.0
        offsets = np.linspace(-half, half, self.samples) if self.samples > 1 else np.zeros(1)
        query = centres[:, None] + offsets[None, :]  # [N, S]
        values = (table.values - table.mean) / table.std if self.normalize else table.values
        out = np.stack([np.interp(query, table.times, values[:, c]) for c in range(values.shape[1])], axis=1)
        return torch.from_numpy(out.astype(np.float32))

    def check(self, source: Source) -> Problem | None:
        p = Path(source.path)
        if not p.exists():
            return Problem(str(p), "IMU CSV file not found", "missing")
        if not p.is_file() or p.stat().st_size == 0:
            return Problem(str(p), "IMU CSV file is empty or not a file", "empty")
        return None
