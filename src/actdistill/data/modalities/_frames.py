"""Helpers shared by the readers of per-frame image files (RGB, flow, depth).

Every image modality in the official releases is a folder of numbered files (or the same files
inside an uncompressed tar). Formatting a file name, checking it exists, telling a truncated
JPEG from a good one and decoding each distinct frame number only once are the same job for all
of them, so it lives here once and every reader reports failures in the same words.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from actdistill.data.records import DataError, Problem, Source
from actdistill.data.sampling import map_frame_numbers

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"

_LOCK = threading.Lock()
_COUNT_CACHE: dict[tuple[str, str, int], int] = {}
_TAR_CACHE: dict[str, tuple[int, int, TarIndex]] = {}


def as_frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Validate the sampler's output: a non-empty 1-D array of integer frame numbers."""
    arr = np.asarray(frames)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"frames must be a non-empty 1-D array of frame numbers, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError("frames must be integer frame numbers")
    return arr.astype(np.int64)


def mapped_numbers(source: Source, frames: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """Frame numbers in the source's own numbering, clamped to ``[1, num_frames]`` when known."""
    n = source.num_frames if num_frames is None else num_frames
    return map_frame_numbers(as_frame_numbers(frames), source.index_map, n)


def frame_name(template: str | Sequence[str], n: int) -> str:
    """The file name of 1-based frame ``n``.

    ``template`` is a format string such as ``frame_{:010d}.jpg``, or, for folders whose names no
    template describes (numbered from 0, irregular names), the natural-sorted list of file names
    an adapter stored in ``Source.options["files"]`` (see :func:`frame_names`).
    """
    if isinstance(template, str):
        return template.format(int(n))
    if not 1 <= n <= len(template):
        raise IndexError(n)
    return template[int(n) - 1]


def frame_names(source: Source) -> str | Sequence[str]:
    """What :func:`frame_name` needs for ``source``: its explicit file list, else its template."""
    files = source.options.get("files") if source.options else None
    return list(files) if files else source.template


def read_frame_file(folder: Path, template: str | Sequence[str], n: int) -> tuple[Path, bytes]:
    """Read one frame file's bytes; a missing folder and a missing file are told apart."""
    try:
        name = frame_name(template, n)
    except IndexError:
        raise DataError(folder, f"frame {n} is beyond the {len(template)} listed frame files") from None
    path = folder / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not folder.is_dir():
            raise DataError(folder, "frame folder does not exist") from None
        raise DataError(path, f"frame file {n} is missing") from None
    except OSError as e:
        raise DataError(path, f"cannot read frame file: {e}") from None
    return path, data


def jpeg_is_complete(data: bytes) -> bool:
    """True when JPEG bytes end with the EOI marker (trailing zero padding allowed).

    OpenCV decodes a truncated JPEG without complaint, filling the missing rows with grey, so a
    half-written frame would silently become training data; the end marker is the cheap tell.
    """
    return data.rstrip(b"\x00").endswith(JPEG_EOI)


def decode_image(data: bytes, path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode image bytes with OpenCV, rejecting empty, truncated or undecodable files."""
    if not data:
        raise DataError(path, "image file is empty (0 bytes)")
    if data.startswith(JPEG_SOI) and not jpeg_is_complete(data):
        raise DataError(path, "truncated JPEG: the end-of-image marker (FF D9) is missing")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if img is None:
        raise DataError(path, "not a decodable image (corrupt or unsupported format)")
    return img


def gather_unique(numbers: np.ndarray, decode: Callable[[int], tuple[str | Path, np.ndarray]]) -> np.ndarray:
    """Decode each distinct number once and return ``stack[len(numbers), ...]`` in request order.

    Samplers repeat frame numbers for short segments; decoding a repeat again would only cost
    time. All decoded frames must share one shape, since a segment is a single tensor.
    """
    uniq, inverse = np.unique(numbers, return_inverse=True)
    out: list[np.ndarray] = []
    first_path: str | Path | None = None
    for n in uniq:
        path, arr = decode(int(n))
        if out and arr.shape != out[0].shape:
            raise DataError(
                path, f"frame shape {arr.shape} differs from {out[0].shape} of {first_path} in the same video"
            )
        if not out:
            first_path = path
        out.append(arr)
    return np.stack(out)[inverse.reshape(-1)]


def count_files(folder: str | Path, suffix: str = "") -> int:
    """Number of files in ``folder`` ending with ``suffix``, cached per process.

    Used to clamp frame numbers when a source does not record its frame count. The cache key
    includes the folder's mtime, so a folder still being written is counted again.
    """
    folder = Path(folder)
    try:
        mtime = folder.stat().st_mtime_ns
    except FileNotFoundError:
        raise DataError(folder, "frame folder does not exist") from None
    key = (str(folder), suffix, mtime)
    with _LOCK:
        hit = _COUNT_CACHE.get(key)
    if hit is not None:
        return hit
    try:
        with os.scandir(folder) as it:
            count = sum(1 for e in it if e.name.endswith(suffix) and not e.name.startswith("."))
    except NotADirectoryError:
        raise DataError(folder, "expected a folder of frame files, found a file") from None
    with _LOCK:
        _COUNT_CACHE[key] = count
    return count


def template_suffix(template: str) -> str:
    """File extension of a template (``.jpg`` for ``frame_{:010d}.jpg``), used to count frames."""
    return Path(frame_name(template, 1)).suffix


def check_frame_folder(path: str | Path, modality: str) -> Problem | None:
    """Cheap check that a frame folder exists, is a folder and holds at least one file."""
    p = Path(path)
    if not p.exists():
        return Problem(str(p), f"{modality} frame folder not found", "missing")
    if not p.is_dir():
        return Problem(str(p), f"{modality} source should be a folder of frames, found a file", "malformed")
    with os.scandir(p) as it:
        if not any(not e.name.startswith(".") for e in it):
            return Problem(str(p), f"{modality} frame folder is empty", "empty")
    return None


# ---------------------------------------------------------------------------------------------
# tar archives (EPIC ships ``P01/rgb_frames/P01_01.tar``)


@dataclass(frozen=True)
class TarMember:
    offset: int  # byte offset of the member's data in the archive (uncompressed archives only)
    size: int
    name: str


@dataclass
class TarIndex:
    """Member name -> data location, built once per archive so reads are a seek and a read."""

    path: str
    members: dict[str, TarMember]
    compressed: bool
    num_files: int

    def lookup(self, name: str) -> TarMember:
        m = self.members.get(name)
        if m is None:
            raise DataError(self.path, f"archive has no member {name!r}")
        return m


def _normalise_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def tar_index(path: str | Path) -> TarIndex:
    """Index an archive's members once per process (cached; re-indexed if the file changes).

    Members may be stored as ``./frame_0000000001.jpg``, ``frame_0000000001.jpg`` or under a
    folder (``P01_01/frame_...``); all are found by their plain file name. Only offsets are
    cached, never an open file handle, so the cache is safe across forked DataLoader workers.
    """
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "tar archive does not exist") from None
    with _LOCK:
        hit = _TAR_CACHE.get(p)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    members: dict[str, TarMember] = {}
    by_base: dict[str, TarMember] = {}
    compressed = False
    try:
        try:
            tf = tarfile.open(p, mode="r:")  # noqa: SIM115 - closed by the `with tf` below
        except tarfile.ReadError:
            # gz/bz2/xz: readable, but only by streaming
            tf = tarfile.open(p, mode="r:*")  # noqa: SIM115 - closed by the `with tf` below
            compressed = True
        with tf:
            for info in tf:
                if not info.isfile():
                    continue
                name = _normalise_member(info.name)
                m = TarMember(info.offset_data, info.size, info.name)
                members[name] = m
                by_base.setdefault(os.path.basename(name), m)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(p, f"not a readable tar archive: {e}") from None
    for base, m in by_base.items():
        members.setdefault(base, m)
    index = TarIndex(p, members, compressed, len(by_base))
    with _LOCK:
        _TAR_CACHE[p] = (st.st_mtime_ns, st.st_size, index)
    return index


def read_tar_member(path: str | Path, name: str) -> tuple[str, bytes]:
    """Read one member's bytes; returns ``("archive.tar:member", bytes)`` for error messages."""
    index = tar_index(path)
    m = index.lookup(name)
    label = f"{index.path}:{m.name}"
    try:
        if index.compressed:
            with tarfile.open(index.path, mode="r:*") as tf:
                fh = tf.extractfile(m.name)
                data = fh.read() if fh is not None else b""
        else:
            with open(index.path, "rb") as fh:
                fh.seek(m.offset)
                data = fh.read(m.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(label, f"cannot read archive member: {e}") from None
    if len(data) != m.size:
        raise DataError(label, f"archive member truncated: {len(data)} of {m.size} bytes present")
    return label, data
