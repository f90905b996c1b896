"""Inertial data (accelerometer, gyroscope, ...) from a per-video CSV with a timestamp column.

Egocentric captures often carry head-mounted IMU streams at rates unrelated to the video, so the
reader works in seconds: each sampled frame n sits at ``(n - 1) / segment.fps`` and gets a fixed
window resampled by linear interpolation to a fixed number of points, which makes every sample
the same shape whatever the sensor's rate.

Timestamps are seconds unless declared otherwise (the column header ``timestamp_ms`` /
``timestamp_us`` / ``timestamp_ns`` / ``timestamp_s``, or the reader option ``time_unit``), and
both mistakes that would otherwise train on garbage without a word are errors naming the file: a
sampling rate no IMU has (milliseconds read as seconds make a 50 Hz sensor look like 0.05 Hz,
so every window interpolates between one or two samples), and a segment holding fewer than two
of the file's samples (nothing but held or interpolated values would be returned).
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
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
"""Seconds per timestamp unit (the suffix of a ``timestamp_<unit>`` header, or ``time_unit``)."""
RATE_RANGE_HZ = (1.0, 100_000.0)
"""Sampling rates an IMU can have. Outside it, seconds were not what the timestamps count: real
IMUs log at tens of Hz to a few kHz, so a rate below 1 Hz is a millisecond (or finer) clock read
as seconds. Checked only when the unit is not declared (``time_unit: auto`` and a plain
``timestamp`` header); declaring it is how a genuinely unusual sensor opts out."""

_CACHE: OrderedDict[tuple[str, int, int, str], IMUTable] = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class IMUTable:
    """A parsed CSV: strictly increasing ``times [T]`` seconds, ``values [T, C]``, channel names.

    ``unit`` is the unit the file's timestamps were read in, ``rate_hz`` the median sampling rate
    (for error messages that must say what the clock looked like)."""

    times: np.ndarray
    values: np.ndarray
    channels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    unit: str = "s"
    rate_hz: float = 0.0


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


def _header_unit(p: Path, first: str) -> str | None:
    """The unit a ``timestamp[_<unit>]`` header declares (``None``: plain ``timestamp``)."""
    name = first.lower()
    if name == "timestamp":
        return None
    unit = name.removeprefix("timestamp_")
    if name.startswith("timestamp_") and unit in TIME_UNITS:
        return unit
    raise DataError(p, f"line 1: first column must be 'timestamp' (seconds) or 'timestamp_<unit>' with "
                       f"unit one of {', '.join(TIME_UNITS)}, found {first!r}")


def _check_unit(name: str) -> str:
    if name != "auto" and name not in TIME_UNITS:
        raise ValueError(f"data.readers.imu.time_unit must be auto or one of {', '.join(TIME_UNITS)}, got {name!r}")
    return name


def parse_imu_csv(path: str | Path, time_unit: str = "auto") -> IMUTable:
    """Read and validate an IMU CSV; every error names the file and the line number (1 = header).

    ``time_unit`` (``auto`` | ``s`` | ``ms`` | ``us`` | ``ns``): the timestamps' unit; ``auto``
    takes it from the header (``timestamp_ms``, ...; plain ``timestamp`` = seconds) and checks that
    the sampling rate is one an IMU can have (:data:`RATE_RANGE_HZ`). A declared unit that the
    header contradicts is an error: one of the two is wrong and only the user knows which.
    """
    p = Path(path)
    _check_unit(time_unit)
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark, which the manifest reader
        # accepts too; with plain utf-8 it glues onto 'timestamp' and the header looks wrong.
        fh = open(p, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by `with fh` below
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
            if all(_is_number(c) for c in header):
                raise DataError(p, "line 1: missing header (expected 'timestamp,<channel>,...')")
            declared = _header_unit(p, header[0])
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
    if declared is not None and time_unit not in ("auto", declared):
        raise DataError(p, f"line 1: the header says the timestamps are in {declared} ({header[0]!r}) but "
                           f"time_unit is {time_unit}; fix whichever is wrong")
    unit = declared or (time_unit if time_unit != "auto" else "s")
    arr = np.asarray(rows, dtype=np.float64)
    times = arr[:, 0] * TIME_UNITS[unit]
    rate = 1.0 / float(np.median(np.diff(times)))
    if declared is None and time_unit == "auto":
        _check_rate(p, arr[:, 0], rate)
    values = arr[:, 1:]
    std = values.std(axis=0)
    return IMUTable(times, values, tuple(header[1:]), values.mean(axis=0), np.where(std > 0, std, 1.0),
                    unit, rate)


def _check_rate(p: Path, raw: np.ndarray, rate: float) -> None:
    """A :class:`DataError` when timestamps read as seconds give a rate no IMU has, naming the
    unit that would give a plausible one (the usual cause: a millisecond clock)."""
    lo, hi = RATE_RANGE_HZ
    if lo <= rate <= hi:
        return
    guess = next((u for u, sec in TIME_UNITS.items() if 10 <= rate / sec <= 10_000), None)
    hint = (f"; in {guess} it would be {rate / TIME_UNITS[guess]:.4g} Hz: name the column 'timestamp_{guess}' "
            f"or set the reader option time_unit: {guess}" if guess else
            "; declare the unit (a 'timestamp_<unit>' header or the reader option time_unit) if it is right")
    raise DataError(p, f"timestamps {raw[0]:.6g}..{raw[-1]:.6g} read as seconds give a median sampling rate "
                       f"of {rate:.4g} Hz, which no IMU has (expected {lo:g} Hz to {hi:g} Hz){hint}")


def cached_imu(path: str | Path, cache_files: int = 16, time_unit: str = "auto") -> IMUTable:
    """:func:`parse_imu_csv` behind a per-process LRU keyed by path, mtime, size and unit."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "IMU CSV file does not exist") from None
    key = (p, st.st_mtime_ns, st.st_size, time_unit)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    table = parse_imu_csv(p, time_unit)
    with _LOCK:
        _CACHE[key] = table
        while len(_CACHE) > max(cache_files, 1):
            _CACHE.popitem(last=False)
    return table


@READERS.register("imu")
class IMUReader(ModalityReader):
    """IMU windows ``float32 [N, C, samples]``, one per sampled frame.

    ``Source.kind == "imu_csv"``: ``source.path`` is the CSV (``timestamp`` in seconds, or
    ``timestamp_<unit>``, then one numeric column per channel); ``source.options.get("time_offset",
    0)`` is the CSV time (seconds) of video frame 1, for logs whose clock does not start with the
    video. The window of ``window_sec`` is centred on each frame's time and sampled at ``samples``
    evenly spaced points (end points included) by linear interpolation; outside the recording the
    first/last value is held, but a segment with fewer than two of the file's samples in its span
    is an error. ``normalize`` standardises each channel by the file's own mean and standard
    deviation. ``time_unit`` (``auto`` | ``s`` | ``ms`` | ``us`` | ``ns``) declares the timestamps'
    unit (see :func:`parse_imu_csv`). ``channels`` picks columns by name, in that order, so one
    CSV holding accelerometer and gyroscope can feed two named modalities (``imu:acc`` with
    ``[ax, ay, az]``, ``imu:gyro`` with ``[gx, gy, gz]``); default: every column.

    Every file of one modality must give the same number of channels (the encoder's input width);
    the first file read fixes it, and a later file with another count is an error naming both
    files, not a shape mismatch deep in batching that names neither.
    """

    modality = "imu"
    spatial = False

    def __init__(self, window_sec: float = 2.0, samples: int = 64, normalize: bool = False,
                 time_unit: str = "auto", channels: Sequence[str] | None = None) -> None:
        if window_sec <= 0 or samples < 1:
            raise ValueError("window_sec must be positive and samples at least 1")
        self.window_sec = window_sec
        self.samples = samples
        self.normalize = normalize
        self.time_unit = _check_unit(time_unit)
        if channels is not None and (isinstance(channels, str) or not channels):
            raise ValueError(f"data.readers.imu.channels must be a non-empty list of column names, got {channels!r}")
        self.channels = tuple(str(c) for c in channels) if channels is not None else None
        self._first: tuple[str, int] | None = None  # (file, channel count) of the first file read

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        if source.kind not in IMU_KINDS:
            raise DataError(
                source.path, f"imu reader cannot read source kind {source.kind!r} (known: {IMU_KINDS})"
            )
        if not segment.fps or segment.fps <= 0:
            raise DataError(
                source.path, f"segment {segment.uid} has no fps; cannot place IMU windows in time"
            )
        table = cached_imu(source.path, time_unit=self.time_unit)
        values = (table.values - table.mean) / table.std if self.normalize else table.values
        values = values[:, self._columns(source.path, table)]
        self._check_count(source.path, values.shape[1])
        offset = float(source.options.get("time_offset", 0.0))
        half = self.window_sec / 2.0
        self._check_span(source.path, table, segment, offset, half)
        numbers = as_frame_numbers(frames)
        centres = (numbers - 1) / float(segment.fps) + offset
        offsets = np.linspace(-half, half, self.samples) if self.samples > 1 else np.zeros(1)
        query = centres[:, None] + offsets[None, :]  # [N, S]
        out = np.stack([np.interp(query, table.times, values[:, c]) for c in range(values.shape[1])], axis=1)
        return torch.from_numpy(out.astype(np.float32))

    def _columns(self, path: str, table: IMUTable) -> list[int]:
        if self.channels is None:
            return list(range(len(table.channels)))
        missing = [c for c in self.channels if c not in table.channels]
        if missing:
            raise DataError(path, f"no column {missing} for the reader option channels {list(self.channels)}; "
                                  f"the file has {list(table.channels)}")
        return [table.channels.index(c) for c in self.channels]

    def _check_count(self, path: str, count: int) -> None:
        if self._first is None:
            self._first = (path, count)
        elif count != self._first[1]:
            raise DataError(path, f"{count} IMU channel(s), but {self._first[0]} has {self._first[1]}: every file "
                                  "of one modality needs the same channels (pick them by name with the reader "
                                  "option channels, or split the sensors into named modalities such as imu:acc)")

    def _check_span(self, path: str, table: IMUTable, segment: Segment, offset: float, half: float) -> None:
        """A segment whose span holds fewer than two samples would get only held or interpolated
        values: the file's clock does not match the video's (wrong unit, or a missing offset)."""
        t0 = (segment.start_frame - 1) / float(segment.fps) + offset - half
        t1 = (segment.stop_frame - 1) / float(segment.fps) + offset + half
        inside = int(np.searchsorted(table.times, t1, side="right") - np.searchsorted(table.times, t0, side="left"))
        if inside >= 2:
            return
        raise DataError(path, f"segment {segment.uid} spans {t0:.6g}..{t1:.6g} s (frames {segment.start_frame}.."
                              f"{segment.stop_frame} at {segment.fps:g} fps, +-{half:g} s window, time_offset "
                              f"{offset:g} s) but holds {inside} of the file's {table.times.size} samples, which "
                              f"span {table.times[0]:.6g}..{table.times[-1]:.6g} s read as {table.unit} at "
                              f"{table.rate_hz:.4g} Hz; check the timestamps' unit (time_unit, or a "
                              "'timestamp_<unit>' header) and the time_offset")

    def check(self, source: Source) -> Problem | None:
        p = Path(source.path)
        if not p.exists():
            return Problem(str(p), "IMU CSV file not found", "missing")
        if not p.is_file() or p.stat().st_size == 0:
            return Problem(str(p), "IMU CSV file is empty or not a file", "empty")
        return None
