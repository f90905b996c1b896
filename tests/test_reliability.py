"""Reliability suite: inject faults and bad input, and show that nothing is lost.

Every fault ends in one of three outcomes, and each test checks its outcome exactly:

* **clear error**: a :class:`~actdistill.data.records.DataError` whose ``.path`` names the bad file
  (or folder) and whose ``.problem`` says what is wrong with it; never a traceback from a library;
* **counted skip**: with ``DataConfig.on_error="skip"`` (read time) or at indexing, a
  :class:`~actdistill.data.records.Problem` naming the file, and exactly the affected modality,
  sample or row left out and counted; everything else is delivered untouched;
* **identical result**: a run or cache killed with SIGKILL and resumed ends bit-identical to an
  uninterrupted one.

The faults are catalogues (plain lists of cases fed to ``pytest.mark.parametrize``) so that
``docs/reliability.md`` can report how many were injected of each kind. Property-based tests
(hypothesis) cover the parsers, samplers, collate and modality dropout beyond what
tests/test_sampling.py, tests/test_models_karmma.py and tests/test_fewshot_baselines.py already do.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import wave
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from actdistill.data.batch import collate
from actdistill.data.builder import DataConfig, SamplingConfig, SpatialConfig, build_dataset, build_loader, load_index
from actdistill.data.datasets.epic_kitchens import COLUMNS, load_epic_kitchens, parse_timestamp
from actdistill.data.datasets.generic import load_generic
from actdistill.data.datasets.ssv2 import load_ssv2
from actdistill.data.datasets.video_folder import (
    load_ucf101,
    load_video_folder,
    read_hmdb51_splits,
    read_ucf101_class_index,
    read_video_list,
    safe_name,
)
from actdistill.data.records import DataError, DatasetIndex, Problem
from actdistill.data.sampling import SAMPLING_MODES, TemporalSampler, epic_flow_index, map_frame_numbers
from actdistill.distill.dropout import mask_inputs, modality_dropout
from actdistill.engine.cache import FeatureCache
from actdistill.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_foreign_state_dict,
    load_weights,
    save_checkpoint,
)
from tests.conftest import write_frames

EPIC_MODALITIES = ["rgb", "flow", "audio", "depth"]
BROKEN_VIDEO = "P01_01"  # train split: 3 segments of P01_01 (faults go here) and 3 of P01_101 (left intact)


# =============================================================================================
# fixtures and helpers


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset in the official EPIC-KITCHENS-100 layout (never modified)."""
    from actdistill.data.datasets.synthetic import write_synthetic_epic

    root = tmp_path_factory.mktemp("synth") / "epic"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    return root


def clone(src: Path, dst: Path, *copies: str) -> Path:
    """A copy of a synthetic EPIC root that is safe to damage where it will be damaged: the
    annotations and the ``copies`` (paths relative to the root) are real copies, everything else
    is a symlink to the pristine dataset (fast, and nothing to corrupt by accident)."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.is_file() or entry.name == "annotations":
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, dst / entry.name)
        else:
            (dst / entry.name).symlink_to(entry, target_is_directory=True)
    for rel in copies:
        here = dst
        for part in Path(rel).parts[:-1]:  # turn each linked folder on the way into a folder of links
            here = here / part
            if here.is_symlink():
                target = here.resolve()
                here.unlink()
                here.mkdir()
                for entry in target.iterdir():
                    (here / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        leaf = dst / rel
        origin = leaf.resolve()
        leaf.unlink()
        (shutil.copytree if origin.is_dir() else shutil.copy2)(origin, leaf)
    return dst


MEDIA_PATHS = {  # what a fault in each modality of the broken video touches
    "rgb": f"P01/rgb_frames/{BROKEN_VIDEO}",
    "flow": f"P01/flow_frames/{BROKEN_VIDEO}",
    "depth": f"P01/depth_frames/{BROKEN_VIDEO}",
    "audio": f"P01/videos/{BROKEN_VIDEO}.MP4",
}


def names(path: str | Path, target: Path) -> bool:
    """Whether an error/problem path is ``target`` itself or a file inside it."""
    p, t = os.path.normpath(str(path)), os.path.normpath(str(target))
    return p == t or p.startswith(t + os.sep)


def rewrite(folder: Path, pattern: str, fn: Callable[[bytes], bytes]) -> None:
    for f in sorted(folder.glob(pattern)):
        f.write_bytes(fn(f.read_bytes()))


def faststart_copy(src: Path, dst: Path) -> None:
    """Remux an MP4 with its ``moov`` header first, as streaming tools and downloads write them:
    a truncated file then still opens, and the loss only shows when the tail is decoded."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for pkt in inp.demux():
            if pkt.dts is None:
                continue
            pkt.stream = streams[pkt.stream.index]
            out.mux(pkt)


def write_wav(path: Path, seconds: float = 1.0, sr: int = 16000, seed: int = 0) -> Path:
    samples = (np.random.default_rng(seed).normal(size=int(seconds * sr)) * 3000).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(samples.tobytes())
    return path


def write_float_wav(path: Path, samples: np.ndarray, sr: int = 16000) -> None:
    """A 32-bit float WAV (format 3), which can carry NaN/Inf samples; the wave module cannot write it."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"fact" + struct.pack("<II", 4, len(samples)) + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def write_mp4(path: Path, n: int = 50, fps: int = 25, size: tuple[int, int] = (64, 48)) -> Path:
    """A small mpeg4 video of noise frames (so the frames, not the header, make up most of the
    file) whose ``moov`` header is written last, as encoders do by default."""
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.gop_size = 5
        for k in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, fps)
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return path


def epic_cfg(root: Path, on_error: str = "raise", **options: Any) -> DataConfig:
    return DataConfig(
        dataset="epic_kitchens_100", root=str(root), modalities=list(EPIC_MODALITIES),
        sampling=SamplingConfig(num_frames=2), spatial=SpatialConfig(short_side=24, crop_size=24, flip=False),
        batch_size=16, on_error=on_error, options=dict(options),
    )


def epic_rows(root: Path, name: str = "EPIC_100_train.csv") -> list[list[str]]:
    with (root / "annotations" / name).open(newline="") as fh:
        return list(csv.reader(fh))


def write_rows(root: Path, rows: list[list[str]], name: str = "EPIC_100_train.csv") -> Path:
    path = root / "annotations" / name
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def deliver_all(cfg: DataConfig, index: DatasetIndex | None = None) -> tuple[Any, dict[str, Any]]:
    """Read every sample of the train split through the real DataLoader path: one batch."""
    ds = build_dataset(cfg, "train", train=False, index=index)
    batch = next(iter(build_loader(ds, cfg, shuffle=False, batch_size=len(ds))))
    return ds, batch


# =============================================================================================
# catalogue 1: corrupt, truncated and missing media, found when a sample is read


@dataclass(frozen=True)
class MediaFault:
    """A fault injected into the media of one video, after (``after_index``) or before indexing.

    ``inject(root)`` returns the file or folder the error must name; ``expect`` is a fragment of
    the problem text; ``modality`` the one modality the fault must take away (and nothing else).
    """

    name: str
    kind: str
    modality: str
    inject: Callable[[Path], Path]
    expect: str
    after_index: bool = False


def _rgb(root: Path) -> Path:
    return root / "P01" / "rgb_frames" / BROKEN_VIDEO


def _flow(root: Path) -> Path:
    return root / "P01" / "flow_frames" / BROKEN_VIDEO


def _depth(root: Path) -> Path:
    return root / "P01" / "depth_frames" / BROKEN_VIDEO


def _mp4(root: Path) -> Path:
    return root / "P01" / "videos" / f"{BROKEN_VIDEO}.MP4"


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _zero_header(data: bytes) -> bytes:
    return data[:2] + bytes(min(200, len(data) - 4)) + data[2 + min(200, len(data) - 4):]


def _corrupt_png_idat(data: bytes) -> bytes:
    i = data.find(b"IDAT")
    return data[: i + 8] + bytes(16) + data[i + 24:]


def _png8(root: Path) -> Path:
    for f in _depth(root).glob("*.png"):
        f.write_bytes(cv2.imencode(".png", np.full((8, 8), 100, np.uint8))[1].tobytes())
    return _depth(root)


def _frames_deleted(root: Path) -> Path:
    for f in _rgb(root).glob("*.jpg"):
        f.unlink()
    return _rgb(root)


def _rgb_tar_truncated(root: Path) -> Path:
    tar = _rgb(root).with_suffix(".tar")
    with tarfile.open(tar, "w") as tf:
        for f in sorted(_rgb(root).iterdir()):
            tf.add(f, arcname=f"./{f.name}")
    shutil.rmtree(_rgb(root))
    tar.write_bytes(_half(tar.read_bytes()))
    return tar


def _mp4_faststart_cut(at_packet: bool) -> Callable[[Path], Path]:
    """Keep the header and about half of the data of a header-first MP4: cut in the middle of an
    audio packet (FFmpeg then fails on that packet) or exactly between two packets (FFmpeg then
    decodes the first half as if it were the whole recording)."""

    def inject(root: Path) -> Path:
        tmp = _mp4(root).with_name("faststart.mp4")
        faststart_copy(_mp4(root), tmp)
        data = tmp.read_bytes()
        with av.open(str(tmp)) as c:
            audio = [p.pos for p in c.demux(c.streams.audio[0]) if p.pos is not None and p.size]
        cut = min(audio, key=lambda pos: abs(pos - len(data) // 2))
        _mp4(root).write_bytes(data[: cut if at_packet else cut + 7])
        tmp.unlink()
        return _mp4(root)

    return inject


def _rm(path_of: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        shutil.rmtree(path_of(root))
        return path_of(root)

    return inject


def _bytes(path_of: Callable[[Path], Path], pattern: str, fn: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        target = path_of(root)
        if target.is_dir():
            rewrite(target, pattern, fn)
        else:
            target.write_bytes(fn(target.read_bytes()))
        return target

    return inject


def _garbage(data: bytes) -> bytes:
    return bytes(np.random.default_rng(0).integers(0, 256, max(len(data), 4096), dtype=np.uint8))


MEDIA_FAULTS = [
    MediaFault("rgb_jpeg_truncated", "corrupt/truncated media", "rgb", _bytes(_rgb, "*.jpg", _half), "truncated JPEG"),
    MediaFault("rgb_jpeg_zero_bytes", "corrupt/truncated media", "rgb", _bytes(_rgb, "*.jpg", lambda d: b""),
               "image file is empty"),
    MediaFault("rgb_jpeg_header_zeroed", "corrupt/truncated media", "rgb", _bytes(_rgb, "*.jpg", _zero_header),
               "not a decodable image"),
    MediaFault("rgb_tar_truncated", "corrupt/truncated media", "rgb", _rgb_tar_truncated, "not a readable tar archive"),
    MediaFault("rgb_frame_files_deleted", "missing media", "rgb", _frames_deleted, "is missing", after_index=True),
    MediaFault("rgb_frame_folder_removed", "missing media", "rgb", _rm(_rgb), "frame folder does not exist",
               after_index=True),
    MediaFault("flow_u_jpeg_truncated", "corrupt/truncated media", "flow",
               _bytes(lambda r: _flow(r) / "u", "*.jpg", _half), "truncated JPEG"),
    MediaFault("flow_v_folder_removed", "missing media", "flow", _rm(lambda r: _flow(r) / "v"), "sub-folder",
               after_index=True),
    MediaFault("depth_png_idat_corrupt", "corrupt/truncated media", "depth",
               _bytes(_depth, "*.png", _corrupt_png_idat), "not a decodable image"),
    MediaFault("depth_png_8bit", "corrupt/truncated media", "depth", _png8, "16-bit"),
    MediaFault("audio_mp4_truncated", "corrupt/truncated media", "audio", _bytes(_mp4, "", _half),
               "cannot decode audio"),
    MediaFault("audio_mp4_header_first_cut_mid_packet", "corrupt/truncated media", "audio", _mp4_faststart_cut(False),
               "cannot decode audio"),
    MediaFault("audio_mp4_header_first_cut_between_packets", "corrupt/truncated media", "audio",
               _mp4_faststart_cut(True), "audio stream is truncated"),
    MediaFault("audio_mp4_zero_bytes", "corrupt/truncated media", "audio", _bytes(_mp4, "", lambda d: b""),
               "empty (0 bytes)"),
    MediaFault("audio_mp4_garbage", "corrupt/truncated media", "audio", _bytes(_mp4, "", _garbage),
               "cannot decode audio"),
    MediaFault("audio_mp4_removed_after_indexing", "missing media", "audio",
               lambda r: (_mp4(r).unlink(), _mp4(r))[1], "does not exist", after_index=True),
]


@pytest.mark.parametrize("fault", MEDIA_FAULTS, ids=[f.name for f in MEDIA_FAULTS])
def test_media_fault_is_a_clear_error_or_a_counted_skip(fault: MediaFault, synth: Path, tmp_path: Path) -> None:
    root = clone(synth, tmp_path / "epic", MEDIA_PATHS[fault.modality])
    target = None if fault.after_index else fault.inject(root)
    index = load_index(epic_cfg(root), "train")
    target = fault.inject(root) if fault.after_index else target
    assert target is not None
    ds = build_dataset(epic_cfg(root), "train", train=False, index=index)
    affected = [i for i, s in enumerate(ds.segments) if s.video_id == BROKEN_VIDEO]
    assert len(affected) == 3 and len(ds) == 6

    # on_error="raise": the first affected sample raises, naming the damaged file and the problem
    with pytest.raises(DataError) as err:
        ds[affected[0]]
    assert names(err.value.path, target), (err.value.path, target)
    assert fault.expect in err.value.problem
    assert str(err.value) == f"{err.value.path}: {err.value.problem}"
    ds[next(i for i in range(len(ds)) if i not in affected)]  # an intact sample still reads

    # on_error="skip": exactly the damaged modality of exactly the affected samples is missing,
    # one problem per affected sample names the file; every sample is still delivered
    _, batch = deliver_all(epic_cfg(root, "skip"), index)
    assert batch["skipped"] == 0 and len(batch["uid"]) == len(ds)
    j = EPIC_MODALITIES.index(fault.modality)
    expected = torch.ones(len(ds), len(EPIC_MODALITIES), dtype=torch.bool)
    expected[affected, j] = False
    assert torch.equal(batch["present"], expected)
    assert len(batch["problems"]) == len(affected)
    assert all(names(p.path, target) and fault.expect in p.message for p in batch["problems"])
    assert float(batch[fault.modality][affected].abs().sum()) == 0.0  # absent slots are zeros, not data


def test_every_modality_broken_skips_and_counts_the_samples(synth: Path, tmp_path: Path) -> None:
    """A sample whose every modality fails is skipped and counted, never delivered empty."""
    root = clone(synth, tmp_path / "epic", *MEDIA_PATHS.values())
    index = load_index(epic_cfg(root), "train")
    for inject in (_rm(_rgb), _rm(_flow), _rm(_depth)):
        inject(root)
    _mp4(root).write_bytes(b"")
    with pytest.raises(DataError, match="frame folder does not exist"):
        build_dataset(epic_cfg(root), "train", train=False, index=index)[0]
    ds, batch = deliver_all(epic_cfg(root, "skip"), index)
    assert batch["skipped"] == 3
    assert batch["uid"] == [s.uid for s in ds.segments if s.video_id != BROKEN_VIDEO]
    assert batch["present"].all()
    # 4 modality problems for each of the 3 samples, plus one "skipped" record per sample
    assert len(batch["problems"]) == 3 * 4 + 3
    assert sum("sample skipped" in p.message for p in batch["problems"]) == 3


def test_missing_modalities_at_indexing_are_reported_and_the_rest_is_kept(synth: Path, tmp_path: Path) -> None:
    """Missing modality folders for some videos: reported once per video, samples keep the others."""
    root = clone(synth, tmp_path / "epic", *MEDIA_PATHS.values())
    shutil.rmtree(_flow(root))
    _mp4(root).unlink()
    (root / "P01" / "depth_frames" / "P01_101").unlink()  # a symlink in the clone: the source stays intact
    index = load_index(epic_cfg(root), "train")
    missing = sorted((p.path, p.kind) for p in index.problems)
    assert missing == sorted([(str(_flow(root)), "missing"), (str(_mp4(root)), "missing"),
                              (str(root / "P01" / "depth_frames" / "P01_101"), "missing")])
    assert len(index.segments) == 6
    _, batch = deliver_all(epic_cfg(root, "skip"), index)
    pattern = {"P01_01": [True, False, False, True], "P01_101": [True, True, True, False]}
    assert batch["present"].tolist() == [pattern[u.rsplit("_", 1)[0]] for u in batch["uid"]]
    assert batch["problems"] == [] and batch["skipped"] == 0

    # a video with none of the requested modalities: its rows are dropped and each one reported
    shutil.rmtree(_rgb(root))
    shutil.rmtree(_depth(root))
    index = load_epic_kitchens(root, "train", modalities=("rgb", "flow", "audio", "depth"))
    dropped = [p for p in index.problems if "on disk; dropped" in p.message]
    assert len(index.segments) == 3 and len(dropped) == 3
    assert {s.video_id for s in index.segments} == {"P01_101"}


@pytest.mark.xfail(strict=True, reason="known limit: libjpeg only warns when the entropy-coded data of a JPEG is "
                                       "damaged but its end marker survives; OpenCV returns the damaged image")
def test_known_limit_jpeg_damaged_in_the_middle(synth: Path, tmp_path: Path) -> None:
    from actdistill.data.modalities._frames import decode_image

    data = (synth / "P01" / "rgb_frames" / BROKEN_VIDEO / "frame_0000000010.jpg").read_bytes()
    mid = len(data) // 2
    with pytest.raises(DataError):
        decode_image(data[:mid] + bytes(300) + data[mid + 300:], "frame.jpg")


# ---------------------------------------------------------------------------------------------
# the same for a generic manifest: WAV audio, IMU CSV and box JSON per sample


def make_generic(root: Path) -> Path:
    """Three samples a, b, c, each with rgb frames, a WAV, an IMU CSV and a boxes JSON."""
    for uid in "abc":
        write_frames(root / "clips" / uid, 12)
        write_wav(root / "audio" / f"{uid}.wav", seed=ord(uid))
        (root / "imu" / f"{uid}.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / "imu" / f"{uid}.csv").write_text("timestamp,ax,ay,az\n0.0,0,0,1\n0.5,0,1,0\n1.0,1,0,0\n2.0,0,0,1\n")
        (root / "boxes").mkdir(exist_ok=True)
        frames = [{"name": f"{k:04d}.jpg", "labels": [{"box2d": {"x1": 1, "y1": 2, "x2": 10, "y2": 12},
                                                       "category": "cup"}]} for k in range(1, 13)]
        (root / "boxes" / f"{uid}.json").write_text(json.dumps(frames))
    (root / "classes.json").write_text('{"label": ["wave", "clap"]}')
    (root / "manifest.csv").write_text(
        "uid,split,label,rgb,audio,imu,boxes,width,height,fps\n"
        + "".join(f"{u},train,{lab},clips/{u},audio/{u}.wav,imu/{u}.csv,boxes/{u}.json,32,24,10\n"
                  for u, lab in zip("abc", ("wave", "clap", "wave")))
    )
    return root


GENERIC_MODALITIES = ["rgb", "audio", "imu", "boxes"]


def generic_cfg(root: Path, on_error: str = "raise") -> DataConfig:
    return DataConfig(dataset="generic", root=str(root), modalities=list(GENERIC_MODALITIES),
                      sampling=SamplingConfig(num_frames=2), spatial=SpatialConfig(short_side=16, crop_size=16,
                                                                                   flip=False),
                      on_error=on_error)


def _wav(root: Path) -> Path:
    return root / "audio" / "a.wav"


def _nan_wav(root: Path) -> Path:
    s = np.sin(np.arange(16000) / 10).astype(np.float32)
    s[4000:4100] = np.nan
    write_float_wav(_wav(root), s)
    return _wav(root)


def _deep_json(root: Path) -> Path:
    path = root / "boxes" / "a.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _nan_boxes(root: Path) -> Path:
    path = root / "boxes" / "a.json"
    path.write_text(path.read_text().replace('"x1": 1,', '"x1": NaN,'))
    return path


def _imu_inf(root: Path) -> Path:
    path = root / "imu" / "a.csv"
    path.write_text("timestamp,ax,ay,az\n0.0,0,0,1\n0.5,inf,1,0\n1.0,1,0,0\n")
    return path


GENERIC_MEDIA_FAULTS = [
    MediaFault("wav_data_chunk_truncated", "corrupt/truncated media", "audio", _bytes(_wav, "", _half),
               "truncated WAV"),
    MediaFault("wav_header_only_samples_lost", "corrupt/truncated media", "audio",
               _bytes(_wav, "", lambda d: d[:44]), "truncated WAV"),
    MediaFault("wav_zero_samples", "corrupt/truncated media", "audio", lambda r: write_wav(_wav(r), seconds=0),
               "audio stream is empty"),
    MediaFault("wav_header_cut", "corrupt/truncated media", "audio", _bytes(_wav, "", lambda d: d[:20]),
               "cannot decode audio"),
    MediaFault("wav_zero_bytes", "corrupt/truncated media", "audio", _bytes(_wav, "", lambda d: b""),
               "empty (0 bytes)"),
    MediaFault("wav_float_nan_samples", "NaN/Inf values", "audio", _nan_wav, "NaN or Inf"),
    MediaFault("imu_csv_inf_value", "NaN/Inf values", "imu", _imu_inf, "non-finite"),
    MediaFault("boxes_json_nan_coordinate", "NaN/Inf values", "boxes", _nan_boxes, "finite number"),
    MediaFault("boxes_json_nested_100k_deep", "hostile JSON/CSV", "boxes", _deep_json, "nested too deeply"),
]


@pytest.mark.parametrize("fault", GENERIC_MEDIA_FAULTS, ids=[f.name for f in GENERIC_MEDIA_FAULTS])
def test_generic_media_fault_is_a_clear_error_or_a_counted_skip(fault: MediaFault, tmp_path: Path) -> None:
    root = make_generic(tmp_path / "mine")
    target = fault.inject(root)
    cfg = generic_cfg(root)
    ds = build_dataset(cfg, "train", train=False)
    assert [s.uid for s in ds.segments] == ["a", "b", "c"]
    with pytest.raises(DataError) as err:
        ds[0]
    assert names(err.value.path, target) and fault.expect in err.value.problem, str(err.value)
    ds[1]
    _, batch = deliver_all(generic_cfg(root, "skip"))
    expected = torch.ones(3, len(GENERIC_MODALITIES), dtype=torch.bool)
    expected[0, GENERIC_MODALITIES.index(fault.modality)] = False
    assert batch["uid"] == ["a", "b", "c"] and batch["skipped"] == 0
    assert torch.equal(batch["present"], expected)
    assert len(batch["problems"]) == 1 and names(batch["problems"][0].path, target)


# ---------------------------------------------------------------------------------------------
# video files (class-folder datasets): truncated MP4s at indexing and at reading


def test_truncated_mp4_videos_are_reported_or_refused(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    for k in range(3):
        write_mp4(root / "Wave" / f"v{k}.mp4")
    header_last = root / "Wave" / "v0.mp4"
    header_last.write_bytes(_half(header_last.read_bytes()))  # moov atom lost: unreadable at indexing
    header_first = root / "Wave" / "v1.mp4"
    faststart_copy(root / "Wave" / "v2.mp4", header_first)
    header_first.write_bytes(header_first.read_bytes()[: int(header_first.stat().st_size * 0.6)])
    index = load_video_folder(root)
    assert [p.path for p in index.problems] == [str(header_last)]
    assert index.problems[0].kind == "unreadable" and "cannot read video header" in index.problems[0].message
    assert [s.uid for s in index.segments] == ["Wave/v1", "Wave/v2"]
    cfg = DataConfig(dataset="video_folder", root=str(root), modalities=["rgb"],
                     sampling=SamplingConfig(num_frames=2), spatial=SpatialConfig(short_side=16, crop_size=16))
    ds = build_dataset(cfg, "all", train=False, index=index)
    with pytest.raises(DataError, match="video has no frame") as err:  # the header survives, the frames do not
        ds[0]
    assert err.value.path == str(header_first)
    assert ds[1]["inputs"]["rgb"].shape == (1, 2, 3, 16, 16)


# =============================================================================================
# catalogue 2: malformed and hostile annotation files, found at indexing


@dataclass(frozen=True)
class AnnotationFault:
    """A change to an annotation file. ``outcome``: ``raise`` (the file is unusable: DataError
    naming it), ``drop`` (one bad row: a Problem naming file and row, the row left out and
    every other row kept) or ``clamp`` (a fixable row: reported, fixed, kept)."""

    name: str
    kind: str
    inject: Callable[[Path], Path]
    outcome: str
    expect: str
    problem_kind: str = "malformed"


def _epic_row(col: str, value: str, row: int = 1) -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        rows = epic_rows(root)
        rows[row][COLUMNS.index(col)] = value
        return write_rows(root, rows)

    return inject


def _epic_text(fn: Callable[[str], str], name: str = "EPIC_100_train.csv") -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        path = root / "annotations" / name
        path.write_text(fn(path.read_text()))
        return path

    return inject


def _epic_bytes(fn: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        path = root / "annotations" / "EPIC_100_train.csv"
        path.write_bytes(fn(path.read_bytes()))
        return path

    return inject


def _short_row(root: Path) -> Path:
    rows = epic_rows(root)
    rows[1] = rows[1][:5]
    return write_rows(root, rows)


MARKER_CODE = "__import__('pathlib').Path({marker!r}).write_text('pwned')"


def _code_injection(root: Path) -> Path:
    """``all_nouns`` holding code that would write ``<root>/../pwned`` if it were ever evaluated."""
    return _epic_row("all_nouns", MARKER_CODE.format(marker=str(root.parent / "pwned")))(root)

EPIC_FAULTS = [
    AnnotationFault("csv_missing_column", "malformed CSV/JSON",
                    _epic_text(lambda t: t.replace("verb_class", "verb_cls", 1)), "raise", "missing columns"),
    AnnotationFault("csv_empty_file", "malformed CSV/JSON", _epic_text(lambda t: ""), "raise", "file is empty"),
    AnnotationFault("csv_not_utf8", "malformed CSV/JSON", _epic_bytes(lambda b: b.replace(b"pull spoon", b"pull \xff")),
                    "raise", "not UTF-8"),
    AnnotationFault("csv_field_of_300k_chars", "hostile JSON/CSV", _epic_row("narration", "x" * 300_000),
                    "raise", "field larger than field limit"),
    AnnotationFault("csv_header_only", "empty dataset", _epic_text(lambda t: t.splitlines()[0] + "\n"),
                    "raise", "has no usable samples"),
    AnnotationFault("verb_classes_id_gap", "malformed CSV/JSON",
                    _epic_text(lambda t: t.replace("\n1,", "\n7,", 1), "EPIC_100_verb_classes.csv"),
                    "raise", "class ids are not 0..n-1"),
    AnnotationFault("noun_classes_id_not_int", "malformed CSV/JSON",
                    _epic_text(lambda t: t.replace("\n1,", "\none,", 1), "EPIC_100_noun_classes.csv"),
                    "raise", "is not an integer"),
    AnnotationFault("row_too_few_fields", "malformed CSV/JSON", _short_row, "drop", "5 fields, expected 15"),
    AnnotationFault("row_start_frame_text", "wrong types", _epic_row("start_frame", "twenty"), "drop",
                    "are not integers"),
    AnnotationFault("row_verb_class_float", "wrong types", _epic_row("verb_class", "1.5"), "drop",
                    "are not integers"),
    AnnotationFault("row_all_noun_classes_strings", "wrong types", _epic_row("all_noun_classes", "['a']"), "drop",
                    "not a list of integers"),
    AnnotationFault("row_verb_class_999", "class id out of range", _epic_row("verb_class", "999"), "drop",
                    "outside the", "unknown_label"),
    AnnotationFault("row_noun_class_negative", "class id out of range", _epic_row("noun_class", "-1"), "drop",
                    "outside the", "unknown_label"),
    AnnotationFault("row_bad_timestamp", "wrong types", _epic_row("start_timestamp", "1:2:3"), "drop", "HH:MM:SS"),
    AnnotationFault("row_inverted_frame_range", "malformed CSV/JSON", _epic_row("stop_frame", "3"), "drop",
                    "empty or starts before frame 1"),
    AnnotationFault("row_video_id_traversal", "path traversal in ids", _epic_row("video_id", "../../../etc/P01_01"),
                    "drop", "video_id"),
    AnnotationFault("row_participant_id_traversal", "path traversal in ids",
                    _epic_row("participant_id", "../../../../tmp"), "drop", "participant_id"),
    AnnotationFault("row_participant_id_absolute", "path traversal in ids", _epic_row("participant_id", "/etc"),
                    "drop", "participant_id"),
    AnnotationFault("row_all_nouns_code_injection", "hostile JSON/CSV", _code_injection, "drop",
                    "not Python-literal lists"),
    AnnotationFault("row_all_nouns_nested_100k_deep", "hostile JSON/CSV", _epic_row("all_nouns", "-" * 100_000 + "1"),
                    "drop", "not Python-literal lists"),
    AnnotationFault("row_all_nouns_unhashable_set", "hostile JSON/CSV", _epic_row("all_nouns", "{[]: 1}"), "drop",
                    "not Python-literal lists"),
    AnnotationFault("row_names_another_participant", "malformed CSV/JSON", _epic_row("participant_id", "P02"), "drop",
                    "on disk; dropped", "missing"),
    AnnotationFault("row_stop_frame_past_the_video", "malformed CSV/JSON", _epic_row("stop_frame", "999999"),
                    "clamp", "clamped"),
]


@pytest.mark.parametrize("fault", EPIC_FAULTS, ids=[f.name for f in EPIC_FAULTS])
def test_epic_annotation_fault(fault: AnnotationFault, synth: Path, tmp_path: Path) -> None:
    root = clone(synth, tmp_path / "epic")
    n_good = len(load_index(epic_cfg(root), "train").segments)
    path = fault.inject(root)
    check_annotation_outcome(fault, lambda: load_index(epic_cfg(root), "train"), path, n_good,
                             bad_uid="P01_01_0", where="line 2")
    assert not (tmp_path / "pwned").exists()


def check_annotation_outcome(fault: AnnotationFault, load: Callable[[], DatasetIndex], path: Path, n_good: int,
                             bad_uid: str, where: str = "") -> None:
    """``raise``: a DataError naming the file (an empty split names the dataset folder holding it);
    ``drop``/``clamp``: one Problem naming the file and ``where`` (its line/row/item), and the
    segments are the good ones minus the bad row (``drop``) or all of them (``clamp``)."""
    if fault.outcome == "raise":
        with pytest.raises(DataError) as err:
            load()
        if fault.kind == "empty dataset":
            assert names(path, err.value.path) and err.value.path != "/", str(err.value)
        else:
            assert names(err.value.path, path), str(err.value)
        assert fault.expect in err.value.problem, str(err.value)
        return
    index = load()
    hits = [p for p in index.problems if fault.expect in p.message]
    assert len(hits) == 1, [p.message for p in index.problems]
    assert hits[0].path == str(path) and where in hits[0].message and hits[0].kind == fault.problem_kind
    uids = [s.uid for s in index.segments]
    if fault.outcome == "drop":
        assert bad_uid not in uids and len(uids) == n_good - 1  # only the bad row is lost
    else:
        assert bad_uid in uids and len(uids) == n_good


# ---------------------------------------------------------------------------------------------
# generic manifests (CSV / JSONL) and classes.json


def _manifest_row(col: str, value: str) -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        path = root / "manifest.csv"
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        rows[0][col] = value
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) + [k for k in [col] if k not in rows[0]])
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(out.getvalue())
        return path

    return inject


def _jsonl(first: str) -> Callable[[Path], Path]:
    """Turn the manifest into JSONL and replace its first row by the raw line ``first``."""

    def inject(root: Path) -> Path:
        rows = list(csv.DictReader(io.StringIO((root / "manifest.csv").read_text())))
        (root / "manifest.csv").unlink()
        path = root / "manifest.jsonl"
        path.write_text("\n".join([first, *(json.dumps(r) for r in rows[1:])]) + "\n")
        return path

    return inject


def _classes(text: str) -> Callable[[Path], Path]:
    def inject(root: Path) -> Path:
        (root / "classes.json").write_text(text)
        return root / "classes.json"

    return inject


def _outside_frames(root: Path) -> Path:
    outside = root.parent / "outside"
    write_frames(outside, 12)  # files a template could reach with ../
    return _manifest_row("rgb_template", "../../../outside/frame_{:010d}.jpg")(root)


def _all_rows_bad(root: Path) -> Path:
    path = root / "manifest.csv"
    path.write_text(path.read_text().replace("clips/", "../elsewhere/"))
    return path


GENERIC_FAULTS = [
    AnnotationFault("manifest_without_uid_column", "malformed CSV/JSON",
                    lambda r: (r / "manifest.csv").write_text("id,rgb\na,clips/a\n") and r / "manifest.csv",
                    "raise", "must name a 'uid' column"),
    AnnotationFault("manifest_field_of_300k_chars", "hostile JSON/CSV", _manifest_row("label", "x" * 300_000),
                    "raise", "field larger than field limit"),
    AnnotationFault("manifest_not_utf8", "malformed CSV/JSON",
                    lambda r: (r / "manifest.csv").write_bytes(b"uid,rgb\n\xff\xfe,clips/a\n") and r / "manifest.csv",
                    "raise", "cannot read manifest"),
    AnnotationFault("manifest_every_row_bad", "empty dataset", _all_rows_bad, "raise", "has no usable samples"),
    AnnotationFault("classes_json_is_a_list", "malformed CSV/JSON", _classes('["wave", "clap"]'), "raise",
                    "expected an object"),
    AnnotationFault("classes_json_name_not_string", "wrong types", _classes('{"label": ["wave", 3]}'), "raise",
                    "class name must be a string"),
    AnnotationFault("classes_json_nested_100k_deep", "hostile JSON/CSV", _classes("[" * 100_000), "raise",
                    "nested too deeply"),
    AnnotationFault("jsonl_row_nested_100k_deep", "hostile JSON/CSV", _jsonl("[" * 100_000), "drop",
                    "nested too deeply"),
    AnnotationFault("jsonl_row_not_an_object", "malformed CSV/JSON", _jsonl('["a", "clips/a"]'), "drop",
                    "expected a JSON object"),
    AnnotationFault("jsonl_row_invalid", "malformed CSV/JSON", _jsonl('{"uid": "a",'), "drop", "invalid JSON"),
    AnnotationFault("jsonl_start_frame_is_a_list", "wrong types",
                    _jsonl('{"uid": "a", "split": "train", "label": "wave", "rgb": "clips/a", "start_frame": [1, 2]}'),
                    "drop", "start_frame must be an integer"),
    AnnotationFault("start_frame_text", "wrong types", _manifest_row("start_frame", "one"), "drop",
                    "start_frame must be an integer"),
    AnnotationFault("fps_inf", "NaN/Inf values", _manifest_row("fps", "inf"), "drop", "positive finite"),
    AnnotationFault("fps_nan", "NaN/Inf values", _manifest_row("fps", "nan"), "drop", "positive finite"),
    AnnotationFault("label_index_out_of_range", "class id out of range", _manifest_row("label", "7"), "drop",
                    "not a known class", "unknown_label"),
    AnnotationFault("label_index_negative", "class id out of range", _manifest_row("label", "-1"), "drop",
                    "not a known class", "unknown_label"),
    AnnotationFault("rgb_path_nested_dotdot", "path traversal in ids", _manifest_row("rgb", "clips/../../outside"),
                    "drop", "resolves outside the dataset root"),
    AnnotationFault("rgb_path_nul_byte", "path traversal in ids", _manifest_row("rgb", "clips/a\x00/../../x"),
                    "drop", "resolves outside the dataset root"),
    AnnotationFault("rgb_template_traversal", "path traversal in ids", _outside_frames, "drop",
                    "not a file inside the folder", "unreadable"),
    AnnotationFault("duplicate_uid", "malformed CSV/JSON", _manifest_row("uid", "b"), "drop", "uid appears twice"),
]


@pytest.mark.parametrize("fault", GENERIC_FAULTS, ids=[f.name for f in GENERIC_FAULTS])
def test_generic_annotation_fault(fault: AnnotationFault, tmp_path: Path) -> None:
    root = make_generic(tmp_path / "mine")
    path = fault.inject(root)
    cfg = DataConfig(dataset="generic", root=str(root), modalities=["rgb"])
    if fault.name == "rgb_template_traversal":
        # the row's only source is refused (problem names the folder); the row then has nothing left
        index = load_index(cfg, "train")
        refused = [p for p in index.problems if fault.expect in p.message]
        assert len(refused) == 1 and refused[0].path == str(root / "clips" / "a")
        assert [s.uid for s in index.segments] == ["b", "c"]
        return
    if fault.name == "duplicate_uid":
        index = load_index(cfg, "train")
        hits = [p for p in index.problems if fault.expect in p.message]
        assert len(hits) == 1 and hits[0].path == str(path) and "row 2" in hits[0].message
        assert [s.uid for s in index.segments] == ["b", "c"]
        assert index.segments[0].sources["rgb"].path == str(root / "clips" / "a")  # the first "b" row is kept
        return
    check_annotation_outcome(fault, lambda: load_index(cfg, "train"), path, 3, bad_uid="a", where="row 1")


# ---------------------------------------------------------------------------------------------
# list files of class-folder datasets (UCF101, HMDB51) and SSv2's JSON


def _ucf(root: Path) -> tuple[Path, Path]:
    for cls in ("ApplyEyeMakeup", "Archery"):
        write_frames(root / "videos" / cls / f"v_{cls}_g01_c01", 4)
    split = root / "splits"
    split.mkdir()
    (split / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (split / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n"
                                           "Archery/v_Archery_g01_c01.avi 2\n")
    return root / "videos", split


LIST_FAULTS = [
    AnnotationFault("ucf_class_index_repeated", "malformed CSV/JSON",
                    lambda s: (s / "classInd.txt").write_text("1 A\n1 B\n") and s / "classInd.txt",
                    "raise", "appears twice"),
    AnnotationFault("ucf_class_index_gap", "malformed CSV/JSON",
                    lambda s: (s / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n") and s / "classInd.txt",
                    "raise", "not 1..N"),
    AnnotationFault("ucf_list_entry_dotdot", "path traversal in ids",
                    lambda s: (s / "trainlist01.txt").write_text("ApplyEyeMakeup/..\nArchery/v_Archery_g01_c01.avi\n")
                    and s / "trainlist01.txt", "drop", "expected '<class>/<video>'"),
    AnnotationFault("ucf_list_class_not_in_index", "class id out of range",
                    lambda s: (s / "trainlist01.txt").write_text("Juggling/v_Juggling_g01_c01.avi\n"
                                                                 "Archery/v_Archery_g01_c01.avi\n")
                    and s / "trainlist01.txt", "drop", "not in the class list", "unknown_label"),
]


@pytest.mark.parametrize("fault", LIST_FAULTS, ids=[f.name for f in LIST_FAULTS])
def test_video_list_fault(fault: AnnotationFault, tmp_path: Path) -> None:
    videos, split = _ucf(tmp_path)
    path = fault.inject(split)

    def load() -> DatasetIndex:
        return load_ucf101(videos, split, "train", workers=1)

    if fault.outcome == "raise":
        check_annotation_outcome(fault, load, path, 2, bad_uid="")
        return
    index = load()
    hits = [p for p in index.problems if fault.expect in p.message]
    assert len(hits) == 1 and hits[0].kind == fault.problem_kind, index.problems
    assert names(hits[0].path, path) or names(hits[0].path, videos)
    assert [s.uid for s in index.segments] == ["Archery/v_Archery_g01_c01"]  # the good line survives


SSV2_ROWS = [{"id": str(k), "template": "Holding [something]", "label": "holding x", "placeholders": ["x"]}
             for k in (1, 2)]


def _ssv2(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something": "1"}))
    (root / "train.json").write_text(json.dumps(SSV2_ROWS))
    for k in (1, 2):
        write_frames(root / str(k), 4)
    return root


SSV2_FAULTS = [
    AnnotationFault("ssv2_id_traversal", "path traversal in ids",
                    lambda r: (r / "train.json").write_text(json.dumps([{**SSV2_ROWS[0], "id": "../../etc"},
                                                                        SSV2_ROWS[1]])) and r / "train.json",
                    "drop", "field 'id' must be a video id string"),
    AnnotationFault("ssv2_labels_nested_100k_deep", "hostile JSON/CSV",
                    lambda r: (r / "labels.json").write_text('{"a":' * 100_000) and r / "labels.json",
                    "raise", "nested too deeply"),
    AnnotationFault("ssv2_label_index_not_int", "wrong types",
                    lambda r: (r / "labels.json").write_text('{"Holding something": "zero"}') and r / "labels.json",
                    "raise", "is not an integer"),
]


@pytest.mark.parametrize("fault", SSV2_FAULTS, ids=[f.name for f in SSV2_FAULTS])
def test_ssv2_annotation_fault(fault: AnnotationFault, tmp_path: Path) -> None:
    root = _ssv2(tmp_path / "ssv2")
    path = fault.inject(root)
    check_annotation_outcome(fault, lambda: load_ssv2(root, split="train", workers=1), path, 2, bad_uid="1",
                             where="item 0")


# ---------------------------------------------------------------------------------------------
# the CLI turns these into one clear line and exit status 2


CLI_FAULTS = ["csv_header_only", "csv_missing_column", "verb_classes_id_gap"]


@pytest.mark.parametrize("name", CLI_FAULTS)
def test_cli_reports_bad_data_in_one_line(name: str, synth: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main

    fault = next(f for f in EPIC_FAULTS if f.name == name)
    root = clone(synth, tmp_path / "epic")
    fault.inject(root)
    code = main(["unimodal", "fit", "data.dataset=epic_kitchens_100", f"data.root={root}", "data.modalities=[rgb]",
                 f"run.out_dir={tmp_path / 'runs'}", "run.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("actdistill: error: ") and fault.expect in err[0], err
    assert str(root) in err[0]


# =============================================================================================
# catalogue 3: storage faults in the feature cache and in checkpoints


def _cache(root: Path, n: int = 6, shard_size: int = 2, dtype: torch.dtype | None = None) -> FeatureCache:
    c = FeatureCache(root, "feat", {"k": 1}, shard_size=shard_size, dtype=dtype)
    for i in range(n):
        c.add(f"u{i}", 0, {"x": torch.full((3,), float(i))})
    c.flush()
    return c


def _cache_shard_truncated(tmp: Path) -> None:
    c = _cache(tmp)
    shard = c.dir / c._entries["u2#0"][0]
    shard.write_bytes(_half(shard.read_bytes()))
    again = FeatureCache(tmp, "feat", {"k": 1})
    assert torch.equal(again.get("u0", 0)["x"], torch.zeros(3))  # other shards unaffected
    with pytest.raises(DataError, match="cache shard unreadable") as err:
        again.get("u2", 0)
    assert err.value.path == str(shard)


def _cache_shard_deleted(tmp: Path) -> None:
    c = _cache(tmp)
    (c.dir / c._entries["u2#0"][0]).unlink()
    again = FeatureCache(tmp, "feat", {"k": 1})
    todo = again.missing([f"u{i}" for i in range(6)], 1)
    assert todo == [("u2", 0), ("u3", 0)] and len(again) == 4  # counted, and recomputed below
    for uid, view in todo:
        again.add(uid, view, {"x": torch.full((3,), float(uid[1:]))})
    again.flush()
    final = FeatureCache(tmp, "feat", {"k": 1})
    assert all(torch.equal(final.get(f"u{i}", 0)["x"], torch.full((3,), float(i))) for i in range(6))


def _cache_tmp_leftovers(tmp: Path) -> None:
    c = _cache(tmp)
    (c.dir / ".index-main.jsonl.abc.tmp").write_text('{"shard": "x.safetensors", "entries": [["ghost#0", 0, ["x"]]]}\n')
    (c.dir / ".meta.json.abc.tmp").write_text('{"ghost": 1}')
    (c.dir / ".shard.def.tmp").write_bytes(b"\x00" * 100)
    again = FeatureCache(tmp, "feat", {"k": 1})
    assert len(again) == 6 and ("ghost", 0) not in again and again.meta == {}


def _rewrite_first_log_line(c: FeatureCache, edit: Callable[[bytes], bytes]) -> Path:
    """Damage the first of the writer's three log lines: a line in the middle, never a torn tail."""
    log = c.dir / "index-main.jsonl"
    first, rest = log.read_bytes().split(b"\n", 1)
    log.write_bytes(edit(first) + b"\n" + rest)
    return log


def _edit_entry(i: int, value: Any) -> Callable[[bytes], bytes]:
    def edit(line: bytes) -> bytes:
        data = json.loads(line)
        data["entries"][i] = value(data["entries"][i])
        return json.dumps(data).encode()
    return edit


def _cache_index_truncated(tmp: Path) -> None:
    # a torn *final* line is what a killed append leaves and is ignored (tests/test_cache.py); a cut
    # line followed by more lines cannot come from a kill: the log is damaged
    c = _cache(tmp)
    log = _rewrite_first_log_line(c, _half)
    with pytest.raises(DataError, match="cache index is corrupt") as err:
        FeatureCache(tmp, "feat", {"k": 1})
    assert err.value.path == str(log) and "delete" in err.value.problem


def _cache_index_hostile_entry(tmp: Path) -> None:
    c = _cache(tmp)
    _rewrite_first_log_line(c, _edit_entry(1, lambda e: 5))
    with pytest.raises(DataError, match="cache index is corrupt"):
        FeatureCache(tmp, "feat", {"k": 1})


def _cache_row_missing_from_shard(tmp: Path) -> None:
    c = _cache(tmp)
    _rewrite_first_log_line(c, _edit_entry(1, lambda e: [e[0], 7, e[2]]))  # the shard holds rows 0 and 1 only
    with pytest.raises(DataError, match="has no tensor"):
        FeatureCache(tmp, "feat", {"k": 1}).get("u1", 0)


def _cache_nan_refused_at_write(tmp: Path) -> None:
    c = FeatureCache(tmp, "feat", {"k": 1}, shard_size=1, dtype=None)
    with pytest.raises(DataError, match="NaN or Inf"):
        c.add("bad", 0, {"x": torch.tensor([1.0, float("inf")])})
    assert len(c) == 0 and not list(c.dir.glob("shard*"))


def _cache_float16_overflow_refused(tmp: Path) -> None:
    c = FeatureCache(tmp, "feat", {"k": 1}, shard_size=1)  # default storage: float16, max 65504
    with pytest.raises(DataError, match=r"beyond the range of torch\.float16"):
        c.add("big", 0, {"x": torch.tensor([70000.0])})
    c.add("ok", 0, {"x": torch.tensor([65000.0])})
    assert float(FeatureCache(tmp, "feat", {"k": 1}).get("ok", 0)["x"]) == 64992.0


def _cache_nan_in_shard_on_disk(tmp: Path) -> None:
    c = _cache(tmp)
    shard = c.dir / c._entries["u4#0"][0]
    data = load_file(str(shard))
    data["0/x"] = torch.tensor([float("nan"), 0.0, 0.0])  # written by an older version, or damaged
    save_file(data, str(shard))
    with pytest.raises(DataError, match="holds NaN or Inf") as err:
        FeatureCache(tmp, "feat", {"k": 1}).get("u4", 0)
    assert err.value.path == str(shard)


def _ckpt(tmp: Path, epochs: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer, Path]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    path = tmp
    for e in range(1, epochs + 1):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        path = save_checkpoint(tmp, e, model, opt)
    return model, opt, path


def _ckpt_file_damaged(file: str, fn: Callable[[bytes], bytes], expect: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        model, opt, path = _ckpt(tmp)
        (path / file).write_bytes(fn((path / file).read_bytes()))
        with pytest.raises(DataError, match=expect) as err:
            load_checkpoint(path, model, opt)
        assert err.value.path == str(path / file)

    return run


def _ckpt_state_json_incomplete(tmp: Path) -> None:
    model, opt, path = _ckpt(tmp)
    (path / "state.json").write_text('{"epoch": 2}')
    with pytest.raises(DataError, match="incomplete") as err:
        load_checkpoint(path, model, opt)
    assert err.value.path == str(path)


def _pointer_case(mutate: Callable[[Path], Any], expect: str = "epoch_0002") -> Callable[[Path], None]:
    """Damage ``latest`` or the checkpoint it names: resuming uses the newest complete checkpoint
    (epochs 2 and 3 are kept on disk), never a half one, never one outside the run, never none."""

    def run(tmp: Path) -> None:
        _ckpt(tmp, epochs=3)
        root = tmp / "checkpoints"
        mutate(root)
        assert latest_checkpoint(tmp) == root / expect

    return run


def _pointer_outside(root: Path) -> None:
    shutil.copytree(root / "epoch_0002", root.parent / "elsewhere")  # complete, but not in the run's folder
    (root / "latest").write_text("../elsewhere")


def _half_written_checkpoint(tmp: Path) -> None:
    model, opt, _ = _ckpt(tmp)
    half = tmp / "checkpoints" / ".tmp_epoch_0003"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp) == tmp / "checkpoints" / "epoch_0002"
    assert load_checkpoint(latest_checkpoint(tmp), model, opt)["epoch"] == 2
    save_checkpoint(tmp, 3, model, opt)  # the next save replaces the leftover
    assert not half.exists() and latest_checkpoint(tmp) == tmp / "checkpoints" / "epoch_0003"


def _ckpt_step_numbers_past_9999(tmp: Path) -> None:
    """Step-numbered checkpoints (few-shot training) pass epoch_9999: pruning must keep the newest."""
    model, opt, _ = _ckpt(tmp, epochs=1)
    for step in (9998, 9999, 10000):
        save_checkpoint(tmp, step, model, opt)
    kept = sorted(p.name for p in (tmp / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["epoch_10000", "epoch_9999"]
    assert latest_checkpoint(tmp) == tmp / "checkpoints" / "epoch_10000"


def _weights_for_another_model(tmp: Path) -> None:
    _, _, path = _ckpt(tmp)
    with pytest.raises(DataError, match="weights do not match the model") as err:
        load_weights(torch.nn.Linear(3, 4), path / "model.safetensors")
    assert err.value.path == str(path / "model.safetensors")


@dataclass(frozen=True)
class StorageFault:
    name: str
    kind: str
    outcome: str  # clear error | counted skip (recomputed) | ignored (never read)
    run: Callable[[Path], None]


STORAGE_FAULTS = [
    StorageFault("cache_shard_truncated", "cache", "clear error", _cache_shard_truncated),
    StorageFault("cache_shard_deleted", "cache", "counted skip", _cache_shard_deleted),
    StorageFault("cache_tmp_leftovers", "cache", "ignored", _cache_tmp_leftovers),
    StorageFault("cache_index_truncated", "cache", "clear error", _cache_index_truncated),
    StorageFault("cache_index_hostile_entry", "cache", "clear error", _cache_index_hostile_entry),
    StorageFault("cache_index_row_not_in_shard", "cache", "clear error", _cache_row_missing_from_shard),
    StorageFault("cache_nan_refused_at_write", "NaN/Inf values", "clear error", _cache_nan_refused_at_write),
    StorageFault("cache_float16_overflow_refused", "NaN/Inf values", "clear error", _cache_float16_overflow_refused),
    StorageFault("cache_nan_in_shard_on_disk", "NaN/Inf values", "clear error", _cache_nan_in_shard_on_disk),
    StorageFault("ckpt_model_truncated", "checkpoint", "clear error",
                 _ckpt_file_damaged("model.safetensors", _half, "not a readable safetensors file")),
    StorageFault("ckpt_state_tensors_truncated", "checkpoint", "clear error",
                 _ckpt_file_damaged("state.safetensors", _half, "not a readable safetensors file")),
    StorageFault("ckpt_state_json_garbage", "checkpoint", "clear error",
                 _ckpt_file_damaged("state.json", lambda d: d[:7], "checkpoint state unreadable")),
    StorageFault("ckpt_state_json_incomplete", "checkpoint", "clear error", _ckpt_state_json_incomplete),
    StorageFault("ckpt_weights_for_another_model", "checkpoint", "clear error", _weights_for_another_model),
    StorageFault("ckpt_half_written_folder", "checkpoint", "ignored", _half_written_checkpoint),
    StorageFault("ckpt_step_numbers_past_9999", "checkpoint", "ignored", _ckpt_step_numbers_past_9999),
    StorageFault("ckpt_latest_pointer_deleted", "checkpoint", "ignored",
                 _pointer_case(lambda r: (r / "latest").unlink(), "epoch_0003")),
    StorageFault("ckpt_latest_names_deleted_folder", "checkpoint", "ignored",
                 _pointer_case(lambda r: shutil.rmtree(r / "epoch_0003"))),
    StorageFault("ckpt_latest_names_incomplete_folder", "checkpoint", "ignored",
                 _pointer_case(lambda r: (r / "epoch_0003" / "state.safetensors").unlink())),
    StorageFault("ckpt_latest_pointer_leaves_the_run", "checkpoint", "ignored",
                 _pointer_case(_pointer_outside, "epoch_0003")),
]


@pytest.mark.parametrize("fault", STORAGE_FAULTS, ids=[f.name for f in STORAGE_FAULTS])
def test_storage_fault(fault: StorageFault, tmp_path: Path) -> None:
    fault.run(tmp_path)


# =============================================================================================
# catalogue 4: foreign checkpoints carrying pickled code


def _exec_payload(marker: Path) -> Any:
    class Exec:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (MARKER_CODE.format(marker=str(marker)),))

    return Exec()


def _system_payload(marker: Path) -> Any:
    class System:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    return System()


def _raw_pickle(obj: Callable[[Path], Any], protocol: int) -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        path.write_bytes(pickle.dumps({"weight": obj(marker)}, protocol=protocol))

    return write


def _torch_zip(obj: Callable[[Path], Any], nested: bool = False) -> Callable[[Path, Path], None]:
    def write(path: Path, marker: Path) -> None:
        payload = {"weight": torch.ones(2), "bias": obj(marker)}
        torch.save({"state_dict": payload} if nested else payload, path)

    return write


def _torchscript_lookalike(path: Path, marker: Path) -> None:
    """A zip that looks like a TorchScript archive (``constants.pkl``), whose ``data.pkl`` runs code."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _exec_payload(marker)}, protocol=2))
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/version", "3\n")


PAYLOADS = {
    "raw_pickle_exec_protocol2": _raw_pickle(_exec_payload, 2),
    "raw_pickle_os_system_protocol5": _raw_pickle(_system_payload, 5),
    "torch_save_zip_exec": _torch_zip(_exec_payload),
    "torch_save_zip_nested_state_dict": _torch_zip(_system_payload, nested=True),
    "torchscript_lookalike_zip": _torchscript_lookalike,
}


def _load_with_models_encoders(path: Path) -> Any:
    from actdistill.models.encoders.base import load_state_dict_file

    return load_state_dict_file(path)


def _load_with_reference_import(path: Path) -> Any:
    from actdistill.models.fewshot.reference_import import read_state_dict

    return read_state_dict(path)


LOADERS = {
    "engine.checkpoint.load_foreign_state_dict": load_foreign_state_dict,
    "models.encoders.base.load_state_dict_file": _load_with_models_encoders,
    "models.fewshot.reference_import.read_state_dict": _load_with_reference_import,
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_pickle_payloads_are_live(payload: str, tmp_path: Path) -> None:
    """Control: each payload really runs code when unpickled the unsafe way, so the refusals below
    are meaningful (a payload that did nothing could not show anything)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    PAYLOADS[payload](path, marker)
    if payload.startswith("torch_save"):
        torch.load(path, weights_only=False)  # the unsafe path actdistill never takes
    elif zipfile.is_zipfile(path):
        pickle.loads(zipfile.ZipFile(path).read("archive/data.pkl"))
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_foreign_checkpoint_with_pickled_code_is_refused(loader: str, payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    PAYLOADS[payload](path, marker)
    with pytest.raises(DataError) as err:  # every loader: a DataError naming the file
        LOADERS[loader](path)
    assert not marker.exists(), "the payload ran"
    assert err.value.path == str(path)
    assert "refused" in err.value.problem or "TorchScript" in err.value.problem
    assert "weights_only` set to `False`" not in err.value.problem  # never torch's "retry unsafely" advice


@pytest.mark.parametrize("loader", list(LOADERS))
def test_plain_foreign_weights_still_load(loader: str, tmp_path: Path) -> None:
    """Control: a plain state dict (weights only) loads through each loader, wrapped or not."""
    model = torch.nn.Linear(3, 2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ok.pth")
    sd = LOADERS[loader](tmp_path / "ok.pth")
    assert set(sd) == {"weight", "bias"} and torch.equal(sd["weight"], model.weight.detach())


# =============================================================================================
# SIGKILL: a killed and resumed run ends bit-identical; a killed cache writer leaves a readable cache

TRAIN_CHILD = """
import os, sys, time
import torch
torch.set_num_threads(1)
from actdistill.engine import checkpoint as ck
from actdistill.engine.trainer import OptimConfig, fit

run_dir, epochs = sys.argv[1], int(sys.argv[2])
real_save = ck.save_file
def slow_save(*args, **kwargs):  # same bytes; a wider window for a kill to land inside save_checkpoint
    real_save(*args, **kwargs)
    time.sleep(0.04)
ck.save_file = slow_save

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(128, 5))
g = torch.Generator().manual_seed(1)
x, y = torch.randn(96, 32, generator=g), torch.randint(0, 5, (96,), generator=g)

def batches(epoch):
    perm = torch.randperm(96)  # global RNG: restored from the checkpoint on resume
    for i in range(0, 96, 12):
        yield {"x": x[perm[i:i + 12]], "y": y[perm[i:i + 12]]}

def step(b):
    time.sleep(0.01)
    return {"loss": torch.nn.functional.cross_entropy(model(b["x"]), b["y"])}

out = fit(model, step, batches, 8, OptimConfig(epochs=epochs, lr=0.01, warmup_epochs=1), run_dir, "toy",
          progress=False)
print("resumed_from", out["resumed_from"], flush=True)
"""


def _wait(cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise TimeoutError("child made no progress")


def _complete_epoch(run: Path) -> int:
    last = latest_checkpoint(run, "checkpoints/toy")
    return int(last.name.split("_")[1]) if last is not None else 0


def test_sigkill_at_random_points_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    """Kill a real training process 3 times (mid-epoch, inside a checkpoint write, mid-epoch) and
    resume it each time: the final weights equal an uninterrupted run's bit for bit."""
    epochs = 6
    script = tmp_path / "train_child.py"
    script.write_text(TRAIN_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(run: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(script), str(run), str(epochs)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = launch(ref_dir)  # runs alongside the killed one
    rng = random.Random(20240611)
    plan = [("mid_epoch", 1), ("inside_checkpoint_write", 3), ("mid_epoch", 4)]
    log = []
    for where, after in plan:
        proc = launch(run_dir)
        if where == "mid_epoch":
            assert _wait(lambda a=after: _complete_epoch(run_dir) >= a, proc)
            time.sleep(rng.uniform(0.02, 0.12))  # an epoch is 8 steps of >= 10 ms
        else:
            assert _wait(lambda a=after: any(int(p.name.rsplit("_", 1)[1]) > a
                                             for p in (run_dir / "checkpoints" / "toy").glob(".tmp_epoch_*")), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        leftovers = sorted(p.name for p in (run_dir / "checkpoints" / "toy").glob(".tmp_*"))
        log.append({"where": where, "complete_epochs_at_kill": _complete_epoch(run_dir), "tmp_left": leftovers})
    assert log[1]["tmp_left"], "the second kill should land while a checkpoint folder is being written"
    final = launch(run_dir)
    out, errs = final.communicate(timeout=120)
    assert final.returncode == 0, errs.decode()[-2000:]
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()[-2000:] if reference.stderr else ""
    assert f"resumed_from {log[-1]['complete_epochs_at_kill']}" in out.decode()

    a = load_file(str(latest_checkpoint(ref_dir, "checkpoints/toy") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(run_dir, "checkpoints/toy") / "model.safetensors"))
    assert set(a) == set(b)
    max_diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), max_diff
    hist = [json.loads((latest_checkpoint(d, "checkpoints/toy") / "state.json").read_text())["extra"]["history"]
            for d in (ref_dir, run_dir)]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in hist[0]] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in hist[1]]
    print(f"\nSIGKILL resume: kills {log}; final epoch {epochs}; max abs weight difference {max_diff}")


CACHE_CHILD = """
import sys, time
import torch
from actdistill.engine import cache as cm

real_save = cm.save_file
def slow_save(*args, **kwargs):  # same bytes; a wider window between shard write, rename and index write
    real_save(*args, **kwargs)
    time.sleep(0.01)
cm.save_file = slow_save

c = cm.FeatureCache(sys.argv[1], "feat", {"k": 1}, shard_size=4, dtype=None)
for uid, view in c.missing([f"u{i:03d}" for i in range(int(sys.argv[2]))], 1):
    i = int(uid[1:])
    c.add(uid, view, {"x": torch.full((64,), float(i)), "n": torch.arange(i + 1)})
    time.sleep(0.002)
c.flush()
print("entries", len(c), flush=True)
"""


def _check_cache(root: Path) -> int:
    """Open the cache as a new process would and read every entry it lists: all must be exact."""
    c = FeatureCache(root, "feat", {"k": 1}, dtype=None)
    for eid in list(c._entries):
        uid = eid.split("#")[0]
        got = c.get(uid, 0)
        i = int(uid[1:])
        assert torch.equal(got["x"], torch.full((64,), float(i))) and torch.equal(got["n"], torch.arange(i + 1))
    assert len(c) % 4 == 0  # whole shards only: never a partly written one
    return len(c)


def _indexed(root: Path) -> int:
    """Entries the cache logs list right now (complete lines only: the writer may be mid-append)."""
    lines = [line for log in root.glob("feat-*/index-*.jsonl") for line in log.read_bytes().split(b"\n")[:-1]]
    return sum(len(json.loads(line)["entries"]) for line in lines)


def test_sigkill_during_cache_writes_leaves_a_readable_cache(tmp_path: Path) -> None:
    """Kill a cache writer twice at random moments after it has made progress: each time a new
    reader opens the cache without error and reads exact tensors for every entry the index lists;
    the next run skips those and completes the cache."""
    n, root = 160, tmp_path / "c"
    script = tmp_path / "cache_child.py"
    script.write_text(CACHE_CHILD)
    rng = random.Random(7)
    counts = [0]
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert _wait(lambda c=counts[-1]: _indexed(root) > c, proc)  # this run has flushed a shard
        time.sleep(rng.uniform(0.05, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        counts.append(_check_cache(root))
    assert 0 < counts[1] < counts[2] < n, counts  # each run added entries and the second resumed the first's
    done = subprocess.run([sys.executable, str(script), str(root), str(n)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _check_cache(root) == n
    leftovers = [p.name for p in root.glob("feat-*/.*.tmp")]
    print(f"\ncache SIGKILL: entries readable after kill 1 / kill 2 / resume: {counts[1:]} / {n}; "
          f"temporary files left by the kills: {leftovers}")


# =============================================================================================
# property-based tests: parsers, samplers, collate, modality dropout

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
HOSTILE = st.sampled_from([
    "", " ", "../..", "/etc/passwd", "P01", "P02", "P01_01", "P02_101", "-1", "0", "3", "999", "1.5", "1e9", "nan",
    "inf", "00:00:01.00", "99:99:99.99", "[1]", "['x']", "[-1]", "{}", "\x00", "__import__('os')", "P01_01/../../x",
    "P01/../P01", "./P01", "line\nbreak", '"quoted"', "-" * 5000 + "1",
])


@pytest.fixture(scope="module")
def epic_props(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int, int]:
    root = clone(synth, tmp_path_factory.mktemp("props") / "epic")
    n_rgb = len(list((root / "P01" / "rgb_frames" / "P01_101").glob("*.jpg")))
    verbs = len(epic_rows(root, "EPIC_100_verb_classes.csv")) - 1
    nouns = len(epic_rows(root, "EPIC_100_noun_classes.csv")) - 1
    return root, n_rgb, verbs, nouns


@st.composite
def epic_row(draw: st.DrawFn, n_rgb: int, verbs: int, nouns: int) -> tuple[list[str], bool]:
    """A valid P01_101 row, or one with a single field replaced by hostile text."""
    start = draw(st.integers(1, n_rgb))
    stop = draw(st.integers(start, n_rgb))
    verb, noun = draw(st.integers(0, verbs - 1)), draw(st.integers(0, nouns - 1))
    ts = f"00:00:{(start - 1) / 50:05.2f}"
    row = ["", "P01", "P01_101", ts, ts, f"00:00:{(stop - 1) / 50:05.2f}", str(start), str(stop), "take x", "take",
           str(verb), "x", str(noun), "['x']", f"[{noun}]"]
    if draw(st.booleans()):
        col = draw(st.sampled_from(range(1, 15)))
        row[col] = draw(st.one_of(HOSTILE, TEXT))
        return row, False
    return row, True


@SETTINGS
@given(data=st.data())
def test_epic_rows_property(epic_props: tuple[Path, int, int, int], data: st.DataObject) -> None:
    """Any mix of valid and hostile rows: no exception, every valid row becomes the right segment,
    and every row is either a segment or a problem naming its line (nothing is silently lost)."""
    root, n_rgb, verbs, nouns = epic_props
    rows = data.draw(st.lists(epic_row(n_rgb, verbs, nouns), min_size=1, max_size=8))
    for i, (row, _) in enumerate(rows):
        row[0] = f"R{i}"
    write_rows(root, [list(COLUMNS), *[r for r, _ in rows]])
    index = load_epic_kitchens(root, "train", modalities=("rgb",))
    segs = {s.uid: s for s in index.segments}
    row_problems = [p for p in index.problems if p.message.startswith("line ") and not p.message.endswith("clamped")]
    assert len(segs) + len(row_problems) == len(rows)
    assert all(p.path == str(root / "annotations" / "EPIC_100_train.csv") for p in row_problems)
    for i, (row, valid) in enumerate(rows):
        if valid:
            s = segs[f"R{i}"]
            assert (s.start_frame, s.stop_frame) == (int(row[6]), int(row[7]))
            assert (s.labels["verb"], s.labels["noun"]) == (int(row[10]), int(row[12]))
            assert set(s.sources) == {"rgb"}
    for s in index.segments:
        assert 1 <= s.start_frame <= s.stop_frame <= n_rgb
        assert s.sources["rgb"].path == str(root / "P01" / "rgb_frames" / s.video_id)  # no other way in


@settings(max_examples=200, deadline=None)
@given(h=st.integers(0, 99), m=st.integers(0, 59), cs=st.integers(0, 5999), text=TEXT)
def test_epic_timestamp_property(h: int, m: int, cs: int, text: str) -> None:
    assert parse_timestamp(f"{h:02d}:{m:02d}:{cs / 100:05.2f}") == pytest.approx(h * 3600 + m * 60 + cs / 100)
    try:
        value = parse_timestamp(text)
    except ValueError:
        return
    assert value >= 0 and math.isfinite(value)


@pytest.fixture(scope="module")
def generic_props(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generic_props") / "mine"
    write_frames(root / "clips" / "a", 10)
    write_frames(root / "clips" / "b", 6)
    (root / "classes.json").write_text('{"label": ["wave", "clap"]}')
    write_frames(root.parent / "outside", 3)
    return root


CELL = {
    "rgb": st.one_of(st.sampled_from(["clips/a", "clips/b", "clips/missing", "../outside", "/etc", "clips/../clips/a",
                                      "clips/a/../../..", "", str(Path("/") / "tmp")]), TEXT),
    "label": st.one_of(st.sampled_from(["wave", "clap", "0", "1", "2", "-1", "", "7", "--1", "¹", "٣"]), TEXT),
    "start_frame": st.one_of(st.integers(-2, 12).map(str), st.sampled_from(["", "1.0", "1.5", "x"]), TEXT),
    "stop_frame": st.one_of(st.integers(-2, 12).map(str), st.sampled_from(["", "1e3"]), TEXT),
    "fps": st.sampled_from(["", "30", "0", "-1", "inf", "nan", "1e308", "abc"]),
    "rgb_template": st.sampled_from(["", "frame_{:010d}.jpg", "../x_{:d}.jpg", "{}", "{0}{1}", "/abs_{:d}.jpg"]),
}


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries(CELL), min_size=1, max_size=6))
def test_generic_manifest_property(generic_props: Path, rows: list[dict[str, str]]) -> None:
    """Any manifest: no exception, every source stays inside the root, every kept row is sane,
    and every row that is not a segment has a problem naming that row."""
    root = generic_props
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["uid", *CELL])
    writer.writeheader()
    writer.writerows({"uid": f"s{i}", **r} for i, r in enumerate(rows))
    (root / "manifest.csv").write_text(out.getvalue(), encoding="utf-8")
    index = load_generic(root, "all", modalities=("rgb",))
    for s in index.segments:
        assert 1 <= s.start_frame <= s.stop_frame and math.isfinite(s.fps) and s.fps > 0
        assert 0 <= s.labels.get("label", 0) < 2
        assert names(s.sources["rgb"].path, root)
        tpl = s.sources["rgb"].template
        assert not tpl or safe_name(tpl.format(1))
    assert len(index.segments) + len(rows_with_problems(index)) == len(rows)
    assert not {int(s.uid[1:]) + 1 for s in index.segments} & rows_with_problems(index)


def rows_with_problems(index: DatasetIndex) -> set[int]:
    """Manifest rows (1-based) named by a problem ("row 3: ...", "row 3 (uid x): ...")."""
    return {int(m.group(1)) for p in index.problems if (m := re.match(r"row (\d+)[ :]", p.message))}


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=8)


@SETTINGS
@given(values=st.lists(st.one_of(JSON_VALUES, st.fixed_dictionaries({"uid": TEXT, "rgb": CELL["rgb"]},
                                                                    optional={"label": JSON_VALUES,
                                                                              "start_frame": JSON_VALUES})),
                       min_size=1, max_size=6))
def test_generic_jsonl_property(generic_props: Path, values: list[Any]) -> None:
    """Any JSON values as manifest lines: no exception; every line is a segment or a named problem."""
    root = generic_props
    path = root / "lines.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in values) + "\n", encoding="utf-8")
    index = load_generic(root, "all", modalities=("rgb",), manifest=path)
    assert all(names(s.sources["rgb"].path, root) for s in index.segments)
    assert len(index.segments) + len(rows_with_problems(index)) == len(values)


LINE_CHARS = st.lists(st.sampled_from([*"ab/\\. 0123_-\t", "..", "\x00", "é"]), max_size=12).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(LINE_CHARS, st.sampled_from(["Archery/v_1.avi 1", "../../etc/passwd", "a/..",
                                                             "/abs/x", "x/ 2", "C/v\\w"])), max_size=10))
def test_video_list_reader_property(tmp_path: Path, lines: list[str]) -> None:
    """Every non-blank line is one entry (a plain class name and a plain video name) or one problem."""
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    problems: list[Problem] = []
    entries = read_video_list(path, problems)
    nonblank = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    assert len(entries) + len(problems) == len(nonblank)
    assert all(safe_name(c) and safe_name(v) for c, v in entries)
    assert all(p.path == str(path) and p.kind == "malformed" for p in problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(LINE_CHARS, st.sampled_from(["v.avi 1", "v.avi 2 ", "v.avi 0", "v.avi 3", ".. 1",
                                                             "a b 1"])), max_size=10),
       class_lines=st.lists(st.one_of(LINE_CHARS, st.builds("{} {}".format, st.integers(0, 4), LINE_CHARS)),
                            max_size=6))
def test_hmdb_and_ucf_split_readers_property(tmp_path: Path, lines: list[str], class_lines: list[str]) -> None:
    """HMDB51 split lines: each non-blank line is one (class, video) in one role, or one problem.
    UCF101 classInd: a list of names in index order, or a DataError naming the file; nothing else."""
    d = tmp_path / "splits"
    d.mkdir(exist_ok=True)
    (d / "brush_hair_test_split1.txt").write_text("\n".join(lines), encoding="utf-8")
    problems: list[Problem] = []
    roles = read_hmdb51_splits(d, 1, problems)
    nonblank = [ln for ln in (d / "brush_hair_test_split1.txt").read_text().splitlines() if ln.strip()]
    assert sum(len(v) for v in roles.values()) + len(problems) == len(nonblank)
    assert all(safe_name(v) and c == "brush_hair" for items in roles.values() for c, v in items)
    (d / "classInd.txt").write_text("\n".join(class_lines), encoding="utf-8")
    try:
        classes = read_ucf101_class_index(d / "classInd.txt")
    except DataError as err:
        assert err.path == str(d / "classInd.txt")
        return
    assert len(classes) == len([ln for ln in (d / "classInd.txt").read_text().splitlines() if ln.strip()])


@settings(max_examples=200, deadline=None)
@given(mode=st.sampled_from(SAMPLING_MODES), start=st.integers(1, 10_000), length=st.integers(1, 300),
       t=st.integers(1, 12), stride=st.integers(1, 4), views=st.integers(1, 4), train=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_temporal_sampler_property(mode: str, start: int, length: int, t: int, stride: int, views: int,
                                   train: bool, seed: int) -> None:
    """The sampler as the dataset calls it (views, modes): ``[views, T]`` frame numbers within
    ``[start, stop]``, identical for the same seed (tests/test_sampling.py covers the functions)."""
    stop = start + length - 1
    sampler = TemporalSampler(mode, t, stride, views)
    a = sampler(start, stop, train, np.random.default_rng(seed))
    b = sampler(start, stop, train, np.random.default_rng(seed))
    assert a.shape == (1 if train else views, t) and a.dtype.kind == "i"
    assert a.min() >= start and a.max() <= stop
    assert np.array_equal(a, b)
    assert (np.diff(a, axis=1) >= 0).all()


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.integers(-5, 5000), min_size=1, max_size=20), n=st.integers(1, 3000),
       index_map=st.sampled_from(["identity", "epic_flow_half", "epic_flow_full"]))
def test_frame_number_mapping_property(frames: list[int], n: int, index_map: str) -> None:
    """Any RGB frame numbers map into the source's own ``[1, n]`` (flow/depth never read past the end)."""
    out = map_frame_numbers(np.array(frames), index_map, n)
    assert out.min() >= 1 and out.max() <= n and out.shape == (len(frames),)
    half = epic_flow_index(np.array(frames), True, n)
    assert (half <= np.maximum(np.array(frames), 1)).all()


@st.composite
def presence_and_p(draw: st.DrawFn) -> tuple[torch.Tensor, list[float]]:
    b, m = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    bits = draw(st.lists(st.booleans(), min_size=b * m, max_size=b * m))
    p = draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]) | st.floats(0, 1), min_size=m, max_size=m))
    return torch.tensor(bits, dtype=torch.bool).view(b, m), p


@settings(max_examples=100, deadline=None)
@given(case=presence_and_p(), seed=st.integers(0, 2**31 - 1), max_resample=st.sampled_from([0, 1, 100]),
       on_empty=st.sampled_from(["resample", "keep_one"]))
def test_modality_dropout_per_modality_p_property(case: tuple[torch.Tensor, list[float]], seed: int,
                                                  max_resample: int, on_empty: str) -> None:
    """Per-modality p (including 1.0) and a resample budget of 0 or 1 still never empty a sample that
    had a modality, never turn on an absent one, and are reproducible per seed (the scalar-p case is
    tests/test_models_karmma.py::test_modality_dropout_properties)."""
    present, p = case
    out = modality_dropout(present, p, torch.Generator().manual_seed(seed), on_empty=on_empty,
                           max_resample=max_resample)
    assert not (out & ~present).any()
    assert torch.equal(out.any(1), present.any(1))
    certain = torch.tensor(p) == 0.0  # p = 0 modalities are never dropped
    assert torch.equal(out[:, certain], present[:, certain])
    again = modality_dropout(present, p, torch.Generator().manual_seed(seed), on_empty=on_empty,
                             max_resample=max_resample)
    assert torch.equal(out, again)
    x = {"m0": torch.randn(present.shape[0], 2)}
    masked = mask_inputs(x, out, [f"m{j}" for j in range(present.shape[1])])
    assert torch.equal(masked["m0"][out[:, 0]], x["m0"][out[:, 0]])
    assert not masked["m0"][~out[:, 0]].any()


@st.composite
def samples(draw: st.DrawFn) -> list[dict[str, Any] | None]:
    mods = ["rgb", "flow", "audio"]
    out: list[dict[str, Any] | None] = []
    for i in range(draw(st.integers(0, 6))):
        state = draw(st.sampled_from(["ok", "ok", "none", "skipped"]))
        if state == "none":
            out.append(None)
            continue
        have = draw(st.lists(st.sampled_from(mods), min_size=1, max_size=3, unique=True))
        inputs = {m: torch.full((1, 2, 3), float(i * 10 + mods.index(m) + 1)) for m in have}
        sample: dict[str, Any] = {"uid": f"s{i}", "index": i, "labels": {"verb": i}, "inputs": inputs,
                                  "problems": [Problem(f"s{i}", "x")] * (state == "skipped")}
        if state == "skipped":
            sample.update(skipped=True, inputs={})
        out.append(sample)
    return out


@settings(max_examples=150, deadline=None)
@given(batch_in=samples())
def test_collate_counts_skips_and_masks_exactly(batch_in: list[dict[str, Any] | None]) -> None:
    """Whatever mix of full, partial, failed (``None``) and skipped samples: the batch keeps the others
    in order, counts the rest in ``skipped``, and its presence mask says exactly what each sample had."""
    mods = ("rgb", "flow", "audio")
    batch = collate(batch_in, mods)
    kept = [s for s in batch_in if s is not None and not s.get("skipped")]
    assert batch["skipped"] == len(batch_in) - len(kept)
    assert batch["uid"] == [s["uid"] for s in kept]
    assert len(batch["problems"]) == sum(len(s["problems"]) for s in batch_in if s is not None)
    for i, s in enumerate(kept):
        for j, m in enumerate(mods):
            assert bool(batch["present"][i, j]) == (m in s["inputs"])
            if m in s["inputs"]:
                assert torch.equal(batch[m][i], s["inputs"][m])
            elif m in batch:
                assert not batch[m][i].any()
    assert bool(batch["present"].any(1).all()) or not kept


# =============================================================================================
# run directory lock: one writer per run directory


_HOLD_LOCK = """
import os, sys, time
from actdistill.rundir import open_run_dir
open_run_dir("unused", "unused", resume=sys.argv[1])
child = 0
if sys.argv[2] == "orphan":  # a forked child (like a DataLoader worker) keeps the descriptor, the holder dies
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
print("locked", child, flush=True)
if sys.argv[2] == "orphan":
    os._exit(0)
time.sleep(60)
"""


def _hold_lock(run: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    """A process holding ``run``'s lock, and the pid of the child it forked (``mode="orphan"``)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    word, child = proc.stdout.readline().split()
    assert word == "locked"
    return proc, int(child)


def test_a_second_writer_of_a_run_dir_gets_one_line_naming_the_holder(synth: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A job resubmitted while the first still writes the run directory (``run.resume`` of the same
    folder) stops before touching it: a ``DataError`` naming the run directory and the holder's host
    and pid, one CLI line, status 2. Once the holder is killed (SIGKILL), its lock is taken over."""
    import socket

    from actdistill.cli import main
    from actdistill.rundir import LOCK_NAME, open_run_dir, release_run_dir

    run = tmp_path / "run"
    run.mkdir()
    holder, _ = _hold_lock(run, "hold")
    try:
        who = f"host {socket.gethostname()} pid {holder.pid}"
        with pytest.raises(DataError) as err:
            open_run_dir(tmp_path, "x", resume=run)
        assert err.value.path == str(run) and who in err.value.problem
        code = main(["unimodal", "fit", "data.dataset=epic_kitchens_100", f"data.root={synth}",
                     "data.modalities=[rgb]", f"run.resume={run}", "run.progress=false"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"actdistill: error: {run}: ") and who in lines[0]
        assert not (run / "config.yaml").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    assert open_run_dir(tmp_path, "x", resume=run) == run  # the dead holder's lock is free: taken over
    assert (run / LOCK_NAME).read_text().split()[:4] == ["host", socket.gethostname(), "pid", str(os.getpid())]
    release_run_dir(run)


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="needs Linux PID namespaces in /proc")
def test_a_lock_kept_only_by_an_orphaned_child_of_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    """The holder died but a child it forked still has the lock file open (a DataLoader worker that
    outlives its killed parent for a moment), so the ``flock`` is still taken: the pid written in
    the file is dead on this host, so the lock file is replaced and the new job runs."""
    import socket

    from actdistill.rundir import LOCK_NAME, lock_run_dir, release_run_dir

    run = tmp_path / "run"
    run.mkdir()
    holder, orphan = _hold_lock(run, "orphan")
    holder.wait()  # reaped: its pid is gone
    old_inode = (run / LOCK_NAME).stat().st_ino
    lock = lock_run_dir(run)
    try:
        assert lock.previous == "" and (run / LOCK_NAME).stat().st_ino != old_inode
        assert (run / LOCK_NAME).read_text().split()[:4] == ["host", socket.gethostname(), "pid", str(os.getpid())]
    finally:
        release_run_dir(run)
        os.kill(orphan, signal.SIGKILL)


def test_two_locks_on_one_run_dir_conflict_even_in_one_process(tmp_path: Path) -> None:
    """``flock`` belongs to an open file description, so two opens conflict in one process too; the
    run-directory registry shares one lock per process instead (a pipeline and its trainer), and
    the last release frees it for the next owner."""
    from actdistill.rundir import LOCK_NAME, LockHeld, ProcessLock, lock_run_dir, release_run_dir

    first = ProcessLock(tmp_path / LOCK_NAME)
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        ProcessLock(tmp_path / LOCK_NAME)
    first.release()
    assert lock_run_dir(tmp_path) is lock_run_dir(tmp_path)
    release_run_dir(tmp_path)
    with pytest.raises(LockHeld):
        ProcessLock(tmp_path / LOCK_NAME)
    release_run_dir(tmp_path)
    ProcessLock(tmp_path / LOCK_NAME).release()


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="needs Linux PID namespaces in /proc")
def test_a_dead_pid_counts_only_on_this_host_and_pid_namespace(tmp_path: Path) -> None:
    """A held lock whose text names a dead pid is taken over only when host and PID namespace are
    ours: a pid from another container sharing the host name (Docker with host networking) or
    from a lock file without a namespace cannot be checked here, so its holder counts as live."""
    import socket

    from actdistill.rundir import LOCK_NAME, LockHeld, ProcessLock

    path = tmp_path / LOCK_NAME
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    ns = str(os.stat("/proc/self/ns/pid").st_ino)
    held = ProcessLock(path)  # the flock stays taken throughout, as by an orphaned child
    for text, taken_over in ((f"host {socket.gethostname()} pid {dead} pidns {int(ns) + 1}", False),
                             (f"host {socket.gethostname()} pid {dead}", False),
                             (f"host elsewhere pid {dead} pidns {ns}", False),
                             (f"host {socket.gethostname()} pid {dead} pidns {ns}", True)):
        path.write_text(text + "\n")
        if taken_over:
            ProcessLock(path).release()
        else:
            with pytest.raises(LockHeld, match=re.escape(text)):
                ProcessLock(path)
    held.release()
