"""Shared fixtures: tiny datasets written in the exact official layouts."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

EPIC_HEADER = [
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
    "noun_class", "all_nouns", "all_noun_classes",
]  # fmt: skip


def free_port() -> int:
    """A free TCP port on localhost, for a test's own gloo process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ts(frame: int, fps: float) -> str:
    s = (frame - 1) / fps
    return f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:05.2f}"


def write_frames(folder: Path, n: int, ext: str = ".jpg", size: tuple[int, int] = (24, 32), seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(1, n + 1):
        if ext == ".png":
            img = rng.integers(200, 3000, (h, w), dtype=np.uint16)
        else:
            img = np.full((h, w, 3), (i * 7) % 255, np.uint8)
            img[:, :, 1] = rng.integers(0, 255)
        cv2.imwrite(str(folder / f"frame_{i:010d}{ext}"), img)


def make_epic(root: Path, rows_per_video: int = 3, depth: bool = False) -> Path:
    """A tiny EPIC-KITCHENS-100 release: one 2018 video (half-rate flow) and one 2020 video."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    verbs = ["take", "put", "open"]
    nouns = ["plate", "cup", "knife", "door"]
    with (ann / "EPIC_100_verb_classes.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "key", "instances", "category"])
        for i, v in enumerate(verbs):
            w.writerow([i, v, f"['{v}']", "manipulation"])
    with (ann / "EPIC_100_noun_classes.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "key", "instances", "category"])
        for i, n in enumerate(nouns):
            w.writerow([i, n, f"['{n}']", "utensils"])
    videos = {"P01_01": 60.0, "P02_101": 50.0}
    n_frames = 40
    rows = {"train": [], "validation": [], "test": []}
    for vid, fps in videos.items():
        pid = vid.split("_")[0]
        write_frames(root / pid / "rgb_frames" / vid, n_frames)
        n_flow = (n_frames + 1) // 2 if vid == "P01_01" else n_frames - 1
        for c in "uv":
            write_frames(root / pid / "flow_frames" / vid / c, n_flow)
        if depth:
            write_frames(root / pid / "depth_frames" / vid, n_frames, ext=".png")
        for k in range(rows_per_video):
            start, stop = 1 + k * 12, 10 + k * 12
            v, n = k % len(verbs), (k + (vid == "P02_101")) % len(nouns)
            row = [f"{vid}_{k}", pid, vid, _ts(start, fps), _ts(start, fps), _ts(stop, fps), start, stop,
                   f"{verbs[v]} {nouns[n]}", verbs[v], v, nouns[n], n, f"['{nouns[n]}']", f"[{n}]"]
            split = "train" if pid == "P01" else "validation"
            rows[split].append(row)
            if k == 0:
                rows["test"].append(row[:8])
    for split, name in (("train", "EPIC_100_train.csv"), ("validation", "EPIC_100_validation.csv")):
        with (ann / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(EPIC_HEADER)
            w.writerows(rows[split])
    with (ann / "EPIC_100_test_timestamps.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(EPIC_HEADER[:8])
        w.writerows(rows["test"])
    (ann / "EPIC_100_tail_verbs.csv").write_text("verb\n2\n")
    (ann / "EPIC_100_tail_nouns.csv").write_text("noun\n3\n")
    (ann / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\nP02\n")
    (ann / "EPIC_100_unseen_participant_ids_test.csv").write_text("participant_id\nP02\n")
    return root


@pytest.fixture
def epic_root(tmp_path: Path) -> Path:
    return make_epic(tmp_path / "epic")


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[str]:
    """Make ``path`` unwritable for this process; yields how: ``"mode"`` (chmod 0o555) or, where
    the mode bits do not stop the user (root), ``"immutable"`` (``chattr +i``: the OS answers
    EPERM instead of EACCES). Skips the test where neither works."""
    path.chmod(0o555)
    how = "mode"
    if os.access(path, os.W_OK):  # root ignores the mode bits
        path.chmod(0o755)
        tool = shutil.which("chattr")
        if tool is None or subprocess.run([tool, "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for this user (root without chattr)")
        how = "immutable"
    try:
        yield how
    finally:
        if how == "immutable":
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)
