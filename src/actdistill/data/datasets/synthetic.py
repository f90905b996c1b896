"""A synthetic multimodal action dataset written in the official EPIC-KITCHENS-100 layout.

Why it exists: the project must run end to end on a 2-core CPU machine with no network, and its
EPIC adapter must be exercised on files laid out *exactly* as the official release (see
``shared/specs/data_formats.md``). So instead of a private toy format, this module writes the real
layout: the 15-column annotation CSVs, ``rgb_frames``/``flow_frames`` JPEG folders numbered from 1,
``videos/*.MP4`` with an AAC audio track, and (the project's addition) 16-bit depth PNGs.

Why the content looks the way it does: KARMMA is about fusing modalities and surviving missing ones,
which can only be studied when each modality is informative on its own but unreliable, so that fusion
beats any single modality and a model that loses some modalities can still answer:

* **RGB** shows the noun (shape, colour, size and material finish) and, through the object's
  positions over time, the verb.
* **Flow** is computed analytically from the known motion of the object's outline, so it carries the
  verb's motion and the object's shape and size, but not its colour or material.
* **Audio** carries the material (timbre of impacts and scrapes), the size (large objects ring low in
  their material's pitch range, small ones high) and the verb's rhythm (one impact, repeated hits, a
  scrape); a scrape fades as the object slides away from the head-mounted mic (push) and grows as it
  comes closer (pull).
* **Depth** carries height above the counter, distance to the camera (lift, push/pull) and the
  object's outline, size and height (a plate is flat, a jar tall), but no colour and no material.

Every noun shares its shape with one other noun, its colour with another and its material with a
third, so no single *attribute* names a noun; sizes are assigned so that, among the first eight nouns
(the ``tiny`` and ``small`` sizes), each modality's own cues do. History: version 2 drew the object as
a fixed disc in flow and depth; version 3 drew its outline but every noun had one size, so flow, depth
and audio named a noun only up to a pair and no model could keep 70% of its accuracy on one modality
(the KARMMA demo's robustness target); version 4 adds the size, which real objects show to every
sensor. Version 6 draws objects a third larger (a 56-pixel crop showed the smaller noun of a shape
pair at about 4 pixels' radius), lets push and pull differ in loudness over time, and cuts the
nuisance rates below by about 45%: with three RGB nuisances at 15% each only 61% of segments had
a clean RGB view, so no model could keep most of its accuracy on one modality, where real
egocentric RGB alone keeps about 90% of it (specs/karmma.md: EPIC 39.35 of 42.55, SSv2 55.39 of
63.19).

Per-segment nuisances (blur, occlusion, low light, flow noise, loud or muted audio, depth holes and
noise) hit each modality on 8-12% of segments independently, so fusion still beats any single
modality.

Everything is seeded per video (``SeedSequence([seed, crc32(video_id), stream])``), so the result is
the same whatever order or number of processes renders the videos.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from tqdm.auto import tqdm

from actdistill.data.datasets._generated import prepare_output

GENERATOR = "actdistill.synthetic_epic"
GENERATOR_VERSION = 7  # bump whenever the bytes written for a (seed, size) change
META_FILE = "synth_meta.json"
# Written first and removed after META_FILE: proves a half-written folder is ours to clear.
MARKER_FILE = ".synth_incomplete.json"

FRAME_W, FRAME_H = 96, 72
RGB_FPS = {2018: 60, 2020: 50}  # extraction rate = numbering of rgb/depth frames and of the MP4
NATIVE_FPS = {2018: 60000 / 1001, 2020: 50.0}  # what EPIC_100_video_info.csv reports
FLOW_SCALE = 8.0  # grey = clip(round(128 + FLOW_SCALE * flow_px), 0, 255): about +-16 px
AUDIO_RATE = 24000
DEPTH_MISSING = 0  # depth PNG value of a hole (no measurement)

ANNOTATION_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
TEST_COLUMNS = ANNOTATION_COLUMNS[:8]

# Probability that a segment suffers each nuisance, drawn independently.
NUISANCE_RATES: dict[str, float] = {
    "rgb_blur": 0.08,
    "rgb_occlusion": 0.08,
    "rgb_low_light": 0.08,
    "flow_noise": 0.12,
    "audio_noise": 0.12,
    "audio_mute": 0.08,
    "depth_holes": 0.12,
    "depth_noise": 0.08,
}


@dataclass(frozen=True)
class VerbSpec:
    """A verb class: its key, the narrated forms (EPIC's ``instances``) and a sampling weight."""

    key: str
    instances: tuple[str, ...]
    category: str
    weight: float


@dataclass(frozen=True)
class NounSpec:
    """A noun class: what it looks like (shape, colour, size) and sounds like (material, size).

    ``scale`` multiplies the outline (every modality that draws it sees it) and sets the pitch
    band of its impacts: large objects ring in the low part of their material's range, small
    ones in the high part, as real objects of one material do. ``height`` (mm) is how far its top
    stands above the counter: a depth sensor sees a flat plate and a tall jar differently.
    """

    key: str
    instances: tuple[str, ...]
    category: str
    shape: str
    colour: str
    material: str
    weight: float
    scale: float
    height: float


COLOURS: dict[str, tuple[int, int, int]] = {  # RGB
    "white": (236, 234, 228),
    "grey": (158, 166, 182),
    "brown": (140, 84, 40),
    "red": (205, 38, 36),
    "green": (40, 150, 60),
}

VERBS: tuple[VerbSpec, ...] = (
    VerbSpec("take", ("take", "pick-up", "grab"), "retrieve", 0.26),
    VerbSpec("put", ("put", "put-down", "place"), "leave", 0.24),
    VerbSpec("push", ("push", "slide"), "manipulate", 0.16),
    VerbSpec("pull", ("pull", "drag"), "manipulate", 0.14),
    VerbSpec("lift", ("lift", "raise"), "retrieve", 0.12),
    VerbSpec("shake", ("shake", "jiggle"), "manipulate", 0.08),
    VerbSpec("rotate", ("rotate", "turn"), "manipulate", 0.06),
    VerbSpec("tap", ("tap", "knock"), "sound", 0.05),
)

# Each shape, colour and material is shared by at least two nouns, so no single attribute names the
# noun; the sizes are chosen so that, among the first eight nouns (sizes tiny/small), two nouns of one
# shape differ in size, and so do two of one material: each modality's own cues name the noun.
NOUNS: tuple[NounSpec, ...] = (
    NounSpec("plate", ("plate", "dish"), "crockery", "circle", "white", "glass", 0.20, 1.2, 15),
    NounSpec("pan", ("pan", "pan:frying", "saucepan"), "cookware", "circle", "grey", "metal", 0.16, 0.8, 50),
    NounSpec("board:chopping", ("board:chopping", "board"), "utensils", "square", "brown", "wood", 0.14, 1.2, 25),
    NounSpec("box", ("box", "container"), "containers", "square", "white", "plastic", 0.12, 0.8, 70),
    NounSpec("knife", ("knife",), "cutlery", "bar", "grey", "metal", 0.12, 1.2, 12),
    NounSpec("spoon", ("spoon", "spoon:wooden"), "cutlery", "bar", "brown", "wood", 0.10, 0.8, 20),
    NounSpec("cup", ("cup", "mug"), "crockery", "triangle", "red", "plastic", 0.09, 1.2, 90),
    NounSpec("jar", ("jar",), "containers", "triangle", "red", "glass", 0.07, 0.8, 120),
    NounSpec("bowl", ("bowl",), "crockery", "ring", "green", "plastic", 0.06, 1.2, 55),
    NounSpec("lid", ("lid", "cover"), "cookware", "ring", "grey", "metal", 0.05, 0.8, 20),
    NounSpec("bottle", ("bottle",), "containers", "bar", "green", "glass", 0.04, 1.0, 150),
    NounSpec("tray", ("tray",), "utensils", "square", "green", "wood", 0.03, 1.0, 22),
)

# Sizes. Videos are split per participant (as in EPIC): ``train_videos`` per training participant,
# ``val_seen``/``test_seen``/``heldout_seen`` extra videos of training participants, ``*_unseen`` videos of
# one new participant each. Every video holds ``segments_per_video`` actions. ``heldout`` is a labelled
# split that EPIC does not have (its test labels are private): settings are tuned on ``validation``
# and results reported on ``heldout``, so that no reported number comes from the split it was tuned on.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "description": "for unit tests only: 6 videos, 18 segments, about 1 s to generate",
        "verbs": 6,
        "nouns": 8,
        "train_participants": 1,
        "train_videos": 2,
        "val_seen": 1,
        "val_unseen": 1,
        "test_seen": 0,
        "test_unseen": 1,
        "heldout_seen": 0,
        "heldout_unseen": 1,
        "segments_per_video": 3,
    },
    "small": {
        "description": "embedded default: 300 train / 200 validation / 200 held-out / 40 test segments, 37 videos",
        "verbs": 6,
        "nouns": 8,
        "train_participants": 3,
        "train_videos": 5,
        "val_seen": 5,
        "val_unseen": 5,
        "test_seen": 1,
        "test_unseen": 1,
        "heldout_seen": 5,
        "heldout_unseen": 5,
        "segments_per_video": 20,
    },
    "medium": {
        "description": "about 4x small: 1800 train / 300 validation / 300 held-out / 210 test segments, 8 verbs, "
                       "12 nouns",
        "verbs": 8,
        "nouns": 12,
        "train_participants": 6,
        "train_videos": 10,
        "val_seen": 6,
        "val_unseen": 4,
        "test_seen": 3,
        "test_unseen": 4,
        "heldout_seen": 6,
        "heldout_unseen": 4,
        "segments_per_video": 30,
    },
}

# Counter-top base colours (RGB) a video's background is drawn from.
_COUNTERS = ((150, 144, 132), (120, 124, 128), (158, 124, 92), (92, 96, 102), (132, 142, 132))

# Nouns something can be put on ("put cup on board"): drawn as a static, larger object.
_SURFACES = ("plate", "board:chopping", "tray")

# Timing of one video: background gaps between sequential actions.
SEGMENT_SECONDS = (0.8, 1.6)
GAP_SECONDS = (0.2, 0.5)
OBJECT_RADIUS = 12.0  # px at height 0 for a noun of scale 1 (NounSpec.scale multiplies it)
PERSPECTIVE = 0.08  # px the object moves up in the image per mm of height
HAND_ANCHOR_DY = 14.0


# --------------------------------------------------------------------------------------------------
# Plan: everything random about a video except pixel/sample noise, cheap to compute.


@dataclass(frozen=True)
class SegmentPlan:
    """One action of a video, in the video's RGB frame numbering (1-based, inclusive)."""

    index: int
    start_frame: int
    stop_frame: int
    verb: int
    noun: int
    verb_word: str
    noun_word: str
    second_noun: int | None
    second_word: str | None
    narration_time: float | None
    nuisances: tuple[str, ...]
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoPlan:
    """One video: identity, split, timing and its scene (counter colour, lighting, camera jitter)."""

    video_id: str
    participant_id: str
    split: str  # train | validation | test | heldout
    year: int  # 2018 (PXX_YY, flow at half rate) or 2020 (PXX_1YY, flow 1:1 minus one)
    n_frames: int
    segments: tuple[SegmentPlan, ...]
    scene: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> int:
        return RGB_FPS[self.year]

    @property
    def half_rate_flow(self) -> bool:
        return self.year == 2018

    @property
    def n_flow(self) -> int:
        return math.ceil(self.n_frames / 2) if self.half_rate_flow else self.n_frames - 1

    @property
    def n_samples(self) -> int:
        return round(self.n_frames / self.fps * AUDIO_RATE)


def _rng(seed: int, video_id: str, stream: int) -> np.random.Generator:
    """Per-video, per-purpose generator: independent of the order videos are generated in."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(video_id.encode()), stream]))


def _video_layout(size: str) -> list[tuple[str, str, str, int]]:
    """``(video_id, participant_id, split, year)`` for every video of a size, in id order."""
    cfg = SIZES[size]
    counters: dict[str, int] = {}
    rows: list[tuple[str, str, str, int]] = []

    def add(pid: str, split: str) -> None:
        k = counters.get(pid, 0)
        counters[pid] = k + 1
        year = 2018 if k % 2 == 0 else 2020
        number = k // 2 + 1
        vid = f"{pid}_{number:02d}" if year == 2018 else f"{pid}_{100 + number}"
        rows.append((vid, pid, split, year))

    n_train = cfg["train_participants"]
    train_pids = [f"P{i + 1:02d}" for i in range(n_train)]
    for pid in train_pids:
        for _ in range(cfg["train_videos"]):
            add(pid, "train")
    for i in range(cfg["val_seen"]):
        add(train_pids[i % n_train], "validation")
    for i in range(cfg["test_seen"]):
        add(train_pids[(i + cfg["val_seen"]) % n_train], "test")
    for _ in range(cfg["val_unseen"]):
        add(f"P{n_train + 1:02d}", "validation")
    for _ in range(cfg["test_unseen"]):
        add(f"P{n_train + 2:02d}", "test")
    # after every other split, so that adding it left the other videos' ids (and bytes) as they were
    for i in range(cfg["heldout_seen"]):
        add(train_pids[(i + cfg["val_seen"] + cfg["test_seen"]) % n_train], "heldout")
    for _ in range(cfg["heldout_unseen"]):
        add(f"P{n_train + 3:02d}", "heldout")
    return sorted(rows)


def _weights(specs: Iterable[VerbSpec | NounSpec]) -> np.ndarray:
    w = np.array([s.weight for s in specs], dtype=np.float64)
    return w / w.sum()


def _segment_params(verb: str, rng: np.random.Generator) -> dict[str, float]:
    """The motion of one action: rest position, speed warp and the verb's own amplitudes."""
    p = {
        "x0": rng.uniform(30, 66),
        "y0": rng.uniform(28, 42),
        "theta0": rng.uniform(-0.4, 0.4),
        "warp": rng.uniform(0.85, 1.2),
        "entry_dx": rng.uniform(8, 20),
        "f0": rng.uniform(0.0, 1.0),  # position of the impact pitch within the material's range
    }
    if verb in ("take", "put"):
        p.update(carry_dx=rng.uniform(-4, 14), carry_dy=rng.uniform(34, 46), carry_h=rng.uniform(40, 70))
    elif verb in ("push", "pull"):
        p.update(length=rng.uniform(14, 22), angle=rng.uniform(-0.35, 0.35))
    elif verb == "lift":
        p.update(height=rng.uniform(90, 140))
    elif verb == "shake":
        p.update(
            height=rng.uniform(40, 70),
            freq=rng.uniform(4.0, 6.0),
            amp=rng.uniform(4.0, 7.0),
            angle=rng.uniform(-0.3, 0.3),
        )
    elif verb == "rotate":
        p.update(turn=rng.choice([-1.0, 1.0]) * rng.uniform(1.6, 3.0))
    elif verb == "tap":
        p.update(freq=rng.uniform(2.5, 3.5))
    return {k: float(v) for k, v in p.items()}


def _nuisance_params(rng: np.random.Generator) -> dict[str, float]:
    """How strong each nuisance is when it strikes (drawn for every segment, used if it does)."""
    return {
        "occ_dx": float(rng.uniform(-8, 8)),
        "occ_dy": float(rng.uniform(-6, 6)),
        "occ_w": float(rng.uniform(26, 40)),
        "occ_h": float(rng.uniform(22, 34)),
        "blur_len": float(rng.integers(7, 12)),
        "blur_angle": float(rng.uniform(0, math.pi)),
        "light": float(rng.uniform(0.2, 0.35)),
        "noise_level": float(rng.uniform(0.25, 0.45)),
    }


def plan_video(video_id: str, participant_id: str, split: str, year: int, seed: int, size: str) -> VideoPlan:
    """Draw one video's actions, timing, nuisances and scene from its own seeded generator."""
    cfg = SIZES[size]
    rng = _rng(seed, video_id, 0)
    verbs, nouns = VERBS[: cfg["verbs"]], NOUNS[: cfg["nouns"]]
    wv, wn = _weights(verbs), _weights(nouns)
    fps = RGB_FPS[year]
    segments: list[SegmentPlan] = []
    cursor = 0
    for k in range(cfg["segments_per_video"]):
        cursor += round(rng.uniform(*GAP_SECONDS) * fps)
        length = round(rng.uniform(*SEGMENT_SECONDS) * fps)
        start, stop = cursor + 1, cursor + length
        cursor = stop
        v = int(rng.choice(len(verbs), p=wv))
        n = int(rng.choice(len(nouns), p=wn))
        vspec, nspec = verbs[v], nouns[n]
        verb_word = vspec.key if rng.random() < 0.7 else str(rng.choice(vspec.instances))
        noun_word = nspec.key if rng.random() < 0.75 else str(rng.choice(nspec.instances))
        second: int | None = None
        second_word: str | None = None
        surfaces = [i for i, ns in enumerate(nouns) if ns.key in _SURFACES and i != n]
        if vspec.key == "put" and surfaces and rng.random() < 0.3:
            second = int(rng.choice(surfaces))
            second_word = nouns[second].key
        t_start = (start - 1) / fps
        narr = None if rng.random() < 0.05 else max(0.0, t_start + rng.uniform(-0.3, 0.5))
        nuis = tuple(name for name, rate in NUISANCE_RATES.items() if rng.random() < rate)
        params = _segment_params(vspec.key, rng)
        params.update(_nuisance_params(rng))
        segments.append(
            SegmentPlan(k, start, stop, v, n, verb_word, noun_word, second, second_word, narr, nuis, params)
        )
    cursor += round(rng.uniform(*GAP_SECONDS) * fps)
    scene = _scene(rng, seed, participant_id, year)
    return VideoPlan(video_id, participant_id, split, year, cursor, tuple(segments), scene)


def _scene(rng: np.random.Generator, seed: int, participant_id: str, year: int) -> dict[str, Any]:
    """A video's look and sound: counter, lighting, camera jitter, depth plane, room noise.

    Skin and sleeve colours come from the participant's own generator, so a participant looks
    the same in every video (what makes "unseen participant" splits mean something).
    """
    pid_rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(participant_id.encode()), 9]))
    return {
        "counter": [float(c) for c in rng.choice(np.array(_COUNTERS, dtype=np.float64))],
        "tiles": bool(rng.random() < 0.5),
        "tile_size": int(rng.integers(18, 30)),
        "brightness": float(rng.uniform(0.88, 1.08)),
        "jitter_amp": float(rng.uniform(0.6, 1.8)),
        "jitter_freq": [float(f) for f in rng.uniform(0.3, 1.7, size=4)],
        "jitter_phase": [float(f) for f in rng.uniform(0, 2 * math.pi, size=4)],
        "depth_d0": float(rng.uniform(520, 620)),
        "depth_slope": float(rng.uniform(2.5, 4.0)),
        "hum_hz": 50.0 if year == 2020 else 60.0,
        "bg_noise": float(rng.uniform(0.006, 0.015)),
        "skin": [float(c) for c in pid_rng.uniform([180, 120, 95], [235, 180, 150])],
        "sleeve": [float(c) for c in pid_rng.uniform([20, 20, 40], [90, 90, 140])],
    }


def plan_synthetic_epic(seed: int = 0, size: str = "small") -> list[VideoPlan]:
    """The whole dataset's plan (no pixels): which actions and nuisances each video holds.

    Public so analyses can ask, e.g., which validation segments had their audio muted, without
    storing that in the dataset (the official layout has no place for it).
    """
    if size not in SIZES:
        raise ValueError(f"unknown synthetic size {size!r}; choose one of {sorted(SIZES)}")
    return [plan_video(vid, pid, split, year, seed, size) for vid, pid, split, year in _video_layout(size)]


# --------------------------------------------------------------------------------------------------
# Kinematics: the single source of truth every modality is rendered from.


def _ease(a: float, b: float, u: np.ndarray) -> np.ndarray:
    x = np.clip((u - a) / (b - a), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _event_time(u: float, t0: float, dur: float, warp: float) -> float:
    """Seconds at which the warped normalised time reaches ``u``."""
    return t0 + dur * u ** (1.0 / warp)


def kinematics(
    verb: str, p: dict[str, float], tsec: np.ndarray, t0: float, dur: float
) -> dict[str, np.ndarray]:
    """Object and hand state of one action at times ``tsec`` (seconds), in world pixel coordinates.

    Returns object centre ``ox, oy`` (image position when the camera is at rest, perspective already
    applied), height above the counter ``oh`` (mm), orientation ``oth`` (rad), scale ``os``; hand
    centre ``hx, hy``, height ``hh`` (mm) and scale ``hs``. Times outside the action clamp to its
    ends, so finite differences across its boundary are zero motion.
    """
    tsec = np.asarray(tsec, dtype=np.float64)
    u = np.clip((tsec - t0) / dur, 0.0, 1.0) ** p["warp"]
    x0, y0 = p["x0"], p["y0"]
    ex, ey = x0 + p["entry_dx"], FRAME_H + HAND_ANCHOR_DY
    zero = np.zeros_like(u)
    ox, oy, oh, oth = zero + x0, zero + y0, zero.copy(), zero + p["theta0"]
    gx, gy = 4.0, 10.0  # where the hand holds the object (its near edge), relative to its centre
    approach = _ease(0.0, 0.3, u)
    retreat = zero.copy()
    hh = zero + 20.0
    tapping = False
    if verb == "take":
        approach = _ease(0.0, 0.35, u)
        c = _ease(0.4, 0.95, u)
        ox = x0 + c * p["carry_dx"]
        oy = y0 + c * p["carry_dy"]
        oh = p["carry_h"] * _ease(0.4, 0.7, u)
    elif verb == "put":
        approach = zero + 1.0
        c = 1.0 - _ease(0.0, 0.6, u)
        ox = x0 + c * p["carry_dx"]
        oy = y0 + c * p["carry_dy"]
        oh = p["carry_h"] * (1.0 - _ease(0.15, 0.6, u))
        retreat = _ease(0.65, 1.0, u)
    elif verb in ("push", "pull"):
        approach = _ease(0.0, 0.25, u)
        c = _ease(0.25, 0.8, u) * p["length"]
        sign = -1.0 if verb == "push" else 1.0
        ox = x0 + c * math.sin(p["angle"])
        oy = y0 + sign * c * math.cos(p["angle"])
        if verb == "push":
            gx, gy = 0.0, 12.0  # behind the object
        retreat = _ease(0.85, 1.0, u)
    elif verb == "lift":
        oh = p["height"] * _ease(0.3, 0.65, u)
    elif verb == "shake":
        approach = _ease(0.0, 0.2, u)
        oh = p["height"] * _ease(0.2, 0.35, u)
        ts0 = _event_time(0.35, t0, dur, p["warp"])
        env = _ease(0.35, 0.42, u) * (1.0 - _ease(0.84, 0.9, u))
        osc = env * p["amp"] * np.sin(2 * math.pi * p["freq"] * (tsec - ts0))
        ox = ox + osc * math.cos(p["angle"])
        oy = oy + osc * math.sin(p["angle"])
    elif verb == "rotate":
        approach = _ease(0.0, 0.25, u)
        oth = oth + p["turn"] * _ease(0.3, 0.85, u)
        rot = oth - p["theta0"]
        gx, gy = 4.0 * np.cos(rot) - 10.0 * np.sin(rot), 4.0 * np.sin(rot) + 10.0 * np.cos(rot)
        retreat = _ease(0.9, 1.0, u)
    elif verb == "tap":
        tapping = True
        approach = _ease(0.0, 0.25, u)
        ts0 = _event_time(0.3, t0, dur, p["warp"])
        env = _ease(0.25, 0.3, u) * (1.0 - _ease(0.9, 0.95, u))
        hh = 45.0 - env * 30.0 * (0.5 + 0.5 * np.cos(2 * math.pi * p["freq"] * (tsec - ts0)))
    else:
        raise ValueError(f"no motion defined for verb {verb!r}")
    oy = oy - PERSPECTIVE * oh
    if tapping:
        hold_x, hold_y = ox + 1.0, oy - 2.0 - PERSPECTIVE * (hh - 15.0)
    else:
        hold_x, hold_y = ox + gx, oy + gy
        hh = oh + 20.0
    w = approach * (1.0 - retreat)
    hx = ex + w * (hold_x - ex)
    hy = ey + w * (hold_y - ey)
    return {
        "ox": ox,
        "oy": oy,
        "oh": oh,
        "oth": oth,
        "os": 1.0 + oh / 350.0,
        "hx": hx,
        "hy": hy,
        "hh": hh,
        "hs": 1.0 + (hh - 20.0) / 400.0,
    }


def audio_events(verb: str, p: dict[str, float], t0: float, dur: float) -> list[tuple[float, str, float]]:
    """``(seconds, kind, amplitude)`` of the action's impacts: kind ``impact`` rings in the object's
    material, ``thud`` is the hand (material-independent). Scrapes come from the kinematics."""
    w = p["warp"]

    def at(u: float) -> float:
        return _event_time(u, t0, dur, w)

    ev: list[tuple[float, str, float]] = []
    if verb == "take":
        ev += [(at(0.34), "thud", 0.12), (at(0.4), "impact", 0.22)]
    elif verb == "put":
        ev += [(at(0.6), "impact", 0.7)]
    elif verb in ("push", "pull", "rotate"):
        ev += [(at(0.25), "thud", 0.14)]
    elif verb == "lift":
        ev += [(at(0.29), "thud", 0.12), (at(0.31), "impact", 0.12)]
    elif verb == "shake":
        ts0, te = at(0.35), at(0.9)
        half = 1.0 / (2.0 * p["freq"])
        t, j = ts0 + 0.5 * half, 0
        while t < te:
            ev.append((t, "impact", 0.42 + 0.1 * ((j * 7919) % 5) / 4.0))
            t += half
            j += 1
    elif verb == "tap":
        ts0, te = at(0.3), at(0.9)
        period = 1.0 / p["freq"]
        t = ts0
        while t < te:
            ev.append((t, "impact", 0.5))
            t += period
    return ev


# --------------------------------------------------------------------------------------------------
# Audio synthesis.

MATERIALS: dict[str, dict[str, Any]] = {
    # pitch range of the lowest partial, partial ratios/amplitudes/decays (s), noise share, scrape band
    "metal": {
        "f0": (1800, 2600),
        "ratios": (1.0, 2.76, 5.40, 8.93),
        "amps": (1.0, 0.6, 0.4, 0.25),
        "decays": (0.30, 0.20, 0.12, 0.08),
        "noise": 0.05,
        "band": (2500, 6000),
    },
    "glass": {
        "f0": (3000, 4200),
        "ratios": (1.0, 2.32, 4.25),
        "amps": (1.0, 0.5, 0.3),
        "decays": (0.09, 0.05, 0.03),
        "noise": 0.05,
        "band": (3500, 8000),
    },
    "wood": {
        "f0": (250, 450),
        "ratios": (1.0, 2.57, 4.3),
        "amps": (1.0, 0.35, 0.15),
        "decays": (0.035, 0.02, 0.01),
        "noise": 0.4,
        "band": (150, 900),
    },
    "plastic": {
        "f0": (900, 1400),
        "ratios": (1.0, 1.9),
        "amps": (1.0, 0.4),
        "decays": (0.012, 0.008),
        "noise": 0.8,
        "band": (900, 2500),
    },
}


def _fft_len(n: int) -> int:
    """A power of two >= n: FFTs of arbitrary (possibly prime) lengths are many times slower."""
    return 1 << max(n - 1, 1).bit_length()


def _bandpass_noise(n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """White noise kept between ``lo`` and ``hi`` Hz (FFT mask), unit RMS."""
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    m = _fft_len(n)
    spec = np.fft.rfft(rng.standard_normal(m, dtype=np.float32))
    f = np.fft.rfftfreq(m, 1.0 / AUDIO_RATE)
    spec[(f < lo) | (f > hi)] = 0.0
    out = np.fft.irfft(spec, m)[:n].astype(np.float32)
    rms = float(np.sqrt(np.mean(out**2))) or 1.0
    return out / rms


def material_sound(material: str, amp: float, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One impact on an object of ``material``: decaying inharmonic partials plus a noise burst.

    ``pitch`` in [0, 1] picks the fundamental within the material's range, so timbre (not one
    exact frequency) identifies the material.
    """
    m = MATERIALS[material]
    length = int(AUDIO_RATE * min(0.6, 5 * max(m["decays"])) + 64)
    t = np.arange(length) / AUDIO_RATE
    f0 = m["f0"][0] + pitch * (m["f0"][1] - m["f0"][0])
    out = np.zeros(length)
    for r, a, d in zip(m["ratios"], m["amps"], m["decays"]):
        out += a * np.exp(-t / d) * np.sin(2 * math.pi * f0 * r * t + rng.uniform(0, 2 * math.pi))
    burst = rng.standard_normal(length) * np.exp(-t / 0.004)
    if material == "wood":
        burst = np.convolve(burst, np.ones(8) / 8, mode="same")  # dull knock
    elif material == "plastic":
        burst = np.diff(np.convolve(burst, np.ones(3) / 3, mode="same"), prepend=0.0)  # click
    out = (1 - m["noise"]) * out / max(sum(m["amps"]), 1e-6) + m["noise"] * burst / 2.0
    return (amp * out).astype(np.float32)


def pitch_position(f0: float, scale: float) -> float:
    """Where in its material's pitch range an object of ``scale`` rings, from a draw ``f0`` in [0, 1].

    Large objects (scale > 1) use the lowest 40% of the range, small ones (< 1) the highest 40%,
    scale 1 the middle 40%: two nouns of one material and different sizes never share a pitch.
    """
    base = 0.0 if scale > 1.0 else 0.6 if scale < 1.0 else 0.3
    return base + 0.4 * f0


def hand_thud(amp: float, rng: np.random.Generator) -> np.ndarray:
    """The hand touching something: low and short, the same for every material."""
    length = int(AUDIO_RATE * 0.08)
    t = np.arange(length) / AUDIO_RATE
    f = rng.uniform(110, 190)
    out = np.exp(-t / 0.018) * np.sin(2 * math.pi * f * t)
    out += 0.3 * np.convolve(rng.standard_normal(length), np.ones(24) / 24, mode="same") * np.exp(-t / 0.01)
    return (amp * out).astype(np.float32)


def _add(track: np.ndarray, start: int, clip: np.ndarray) -> None:
    if start >= len(track) or start + len(clip) <= 0:
        return
    a, b = max(start, 0), min(start + len(clip), len(track))
    track[a:b] += clip[a - start : b - start]


def synthesize_audio(plan: VideoPlan, seed: int) -> np.ndarray:
    """The whole video's mono 24 kHz track: room noise and hum, then every action's sounds."""
    rng = _rng(seed, plan.video_id, 2)
    n = plan.n_samples
    m = _fft_len(n)
    spec = np.fft.rfft(rng.standard_normal(m, dtype=np.float32))
    spec /= np.sqrt(np.maximum(np.fft.rfftfreq(m, 1.0 / AUDIO_RATE), 40.0))  # pink-ish room tone
    track = np.fft.irfft(spec, m)[:n].astype(np.float32)
    track *= plan.scene["bg_noise"] / (float(np.sqrt(np.mean(track**2))) or 1.0)
    hum = plan.scene["hum_hz"]  # mains hum: one period repeated, not a sine over the whole track
    period = np.arange(round(AUDIO_RATE / hum)) / AUDIO_RATE
    cycle = (0.003 * np.sin(2 * math.pi * hum * period) + 0.0015 * np.sin(4 * math.pi * hum * period)).astype(
        np.float32
    )
    track += np.resize(cycle, n)
    fps = plan.fps
    nouns = NOUNS
    for seg in plan.segments:
        p = seg.params
        verb = VERBS[seg.verb].key
        material, scale = nouns[seg.noun].material, nouns[seg.noun].scale
        t0 = (seg.start_frame - 1) / fps
        dur = (seg.stop_frame - seg.start_frame + 1) / fps
        gain = 0.03 if "audio_mute" in seg.nuisances else 1.0
        for when, kind, amp in audio_events(verb, p, t0, dur):
            pitch = pitch_position(float(np.clip(p["f0"] + rng.normal(0, 0.05), 0, 1)), scale)
            clip = material_sound(material, amp, pitch, rng) if kind == "impact" else hand_thud(amp, rng)
            _add(track, round(when * AUDIO_RATE), gain * clip)
        # Scrape: object sliding or turning on the counter, loud as it is fast.
        a, b = round(t0 * AUDIO_RATE), min(round((t0 + dur) * AUDIO_RATE), n)
        ctrl_t = np.arange(t0, t0 + dur, 1e-3)
        k = kinematics(verb, p, ctrl_t, t0, dur)
        speed = np.hypot(np.gradient(k["ox"], ctrl_t), np.gradient(k["oy"], ctrl_t))
        speed += np.abs(np.gradient(k["oth"], ctrl_t)) * OBJECT_RADIUS * scale
        contact = (k["oh"] < 1.0).astype(np.float64)
        env_ctrl = contact * np.clip(speed / 60.0, 0.0, 1.5) * 0.12
        # Heard from a head-mounted mic: a scrape fades as the object slides away (push) and grows as
        # it comes closer (pull), about as 1 / distance.
        env_ctrl *= np.clip(1.0 + (k["oy"] - p["y0"]) / 20.0, 0.25, 2.0)
        if env_ctrl.max() > 1e-4 and b > a:
            env = np.interp(np.arange(a, b) / AUDIO_RATE, ctrl_t, env_ctrl)
            grain = 1.0 + 0.5 * np.sin(2 * math.pi * rng.uniform(20, 40) * np.arange(b - a) / AUDIO_RATE)
            lo, hi = MATERIALS[material]["band"]
            track[a:b] += gain * (env * grain * _bandpass_noise(b - a, lo, hi, rng)).astype(np.float32)
        if "audio_noise" in seg.nuisances and b > a:
            fade = np.minimum(1.0, np.minimum(np.arange(b - a), np.arange(b - a)[::-1]) / (0.02 * AUDIO_RATE))
            track[a:b] += (p["noise_level"] * fade * _bandpass_noise(b - a, 300, 7000, rng)).astype(
                np.float32
            )
    return np.clip(track, -0.99, 0.99, out=track)


# --------------------------------------------------------------------------------------------------
# Pixels: RGB, flow and depth of one video, rendered in chunks of frames.


def _shape_sdf(shape: str, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Approximate signed distance (px at scale 1, negative inside) to a noun's outline."""
    r = OBJECT_RADIUS
    if shape == "circle":
        return np.sqrt(lx * lx + ly * ly) - r
    if shape == "square":
        return np.maximum(np.abs(lx), np.abs(ly)) - 0.85 * r
    if shape == "bar":
        return np.maximum(np.abs(lx) - 1.45 * r, np.abs(ly) - 0.42 * r)
    if shape == "triangle":
        c, s = math.cos(math.pi / 6), 0.5
        d = np.maximum(ly, np.maximum(c * lx - s * ly, -c * lx - s * ly))
        return d - 0.6 * r
    if shape == "ring":
        return np.abs(np.sqrt(lx * lx + ly * ly) - 0.72 * r) - 0.28 * r
    raise ValueError(f"unknown shape {shape!r}")


class _VideoRenderer:
    """Renders one planned video in chunks of frames (memory stays flat whatever its length).

    Per frame, the hand/arm/object geometry is computed once, on small windows around each layer,
    and shared by RGB, depth and the flow frame that starts at that RGB frame: that is what keeps
    the ``small`` size within its time budget on two cores.
    """

    def __init__(self, plan: VideoPlan, seed: int) -> None:
        self.plan = plan
        self.fps = plan.fps
        self.rng = _rng(seed, plan.video_id, 1)
        self.margin = m = 4
        sc = plan.scene
        h, w = FRAME_H + 2 * m, FRAME_W + 2 * m
        tex_rng = _rng(seed, plan.video_id, 3)
        low = cv2.resize(tex_rng.standard_normal((h // 8 + 2, w // 8 + 2)).astype(np.float32), (w, h))
        fine = cv2.GaussianBlur(tex_rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
        tex = 9.0 * low + 3.0 * fine
        if sc["tiles"]:
            yy, xx = np.mgrid[0:h, 0:w]
            ts = sc["tile_size"]
            tex -= 22.0 * (((yy % ts) < 1) | ((xx % ts) < 1))
        self.bg = np.clip(np.asarray(sc["counter"], np.float32)[None, None, :] + tex[..., None], 0, 255)
        yw = np.arange(h, dtype=np.float32)[:, None] - m + np.zeros((1, w), np.float32)
        self.bg_depth = self._plane(yw).astype(np.float32)
        self.xs = np.arange(FRAME_W, dtype=np.float32)
        self.ys = np.arange(FRAME_H, dtype=np.float32)
        self.starts = np.array([(s.start_frame - 1) / self.fps for s in plan.segments])
        self.ends = np.array([s.stop_frame / self.fps for s in plan.segments])
        # Small banks of noise frames, picked at random per frame: drawing fresh full-frame noise
        # for every frame would cost more than rendering it.
        self.noise_rgb = self.rng.normal(0.0, 5.0, (8, FRAME_H, FRAME_W, 3)).astype(np.float32)
        self.noise_d = self.rng.normal(0.0, 1.0, (8, FRAME_H, FRAME_W)).astype(np.float32)
        self.skin = np.asarray(sc["skin"], np.float32)
        self.sleeve = np.asarray(sc["sleeve"], np.float32)

    def _plane(self, y_world: Any) -> Any:
        """Counter depth (mm): further away towards the top of the image."""
        sc = self.plan.scene
        return sc["depth_d0"] + (FRAME_H - y_world) * sc["depth_slope"]

    def camera(self, tsec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer camera offset (px) at ``tsec``: head-mounted jitter, bounded by the margin."""
        sc = self.plan.scene
        f, ph, a = sc["jitter_freq"], sc["jitter_phase"], sc["jitter_amp"]
        t = np.asarray(tsec, np.float64)
        cx = a * (np.sin(2 * math.pi * f[0] * t + ph[0]) + 0.5 * np.sin(2 * math.pi * f[1] * t + ph[1]))
        cy = a * (np.sin(2 * math.pi * f[2] * t + ph[2]) + 0.5 * np.sin(2 * math.pi * f[3] * t + ph[3]))
        lim = self.margin
        return np.clip(np.round(cx), -lim, lim).astype(int), np.clip(np.round(cy), -lim, lim).astype(int)

    def segment_of(self, tsec: np.ndarray) -> np.ndarray:
        """Index of the action containing each time, -1 in background gaps."""
        i = np.searchsorted(self.starts, tsec, side="right") - 1
        ok = (i >= 0) & (tsec < self.ends[np.maximum(i, 0)])
        return np.where(ok, i, -1)

    def states(self, tsec: np.ndarray, seg: np.ndarray) -> dict[str, np.ndarray]:
        """Kinematics at ``tsec`` of the actions ``seg`` (NaN where ``seg`` is -1)."""
        keys = ("ox", "oy", "oh", "oth", "os", "hx", "hy", "hh", "hs")
        out = {k: np.full(len(tsec), np.nan) for k in keys}
        for s in np.unique(seg[seg >= 0]):
            sp = self.plan.segments[s]
            sel = seg == s
            t0 = self.starts[s]
            k = kinematics(VERBS[sp.verb].key, sp.params, tsec[sel], t0, self.ends[s] - t0)
            for key in keys:
                out[key][sel] = k[key]
        return out

    # -- geometry on windows ------------------------------------------------------------------------

    def _win(
        self, x0: float, x1: float, y0: float, y1: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """Pixel window covering ``[x0, x1] x [y0, y1]`` and its broadcastable coordinates."""
        xa, xb = max(math.floor(x0), 0), min(math.ceil(x1) + 1, FRAME_W)
        ya, yb = max(math.floor(y0), 0), min(math.ceil(y1) + 1, FRAME_H)
        if xa >= xb or ya >= yb:
            return None
        return slice(ya, yb), slice(xa, xb), self.xs[None, xa:xb], self.ys[ya:yb, None]

    def _hand(self, hx: float, hy: float, hs: float) -> dict[str, Any]:
        """Soft masks of the hand (ellipse) and forearm (capsule to the bottom edge); ``w`` is the
        arm's position along its length (0 at the body, 1 at the hand), used for its flow."""
        g: dict[str, Any] = {"hand": None, "arm": None}
        rx, ry = 5.5 * hs, 4.5 * hs
        win = self._win(hx - rx - 1, hx + rx + 1, hy - ry - 1, hy + ry + 1)
        if win is not None:
            sy, sx, x, y = win
            q = np.sqrt(((x - hx) / rx) ** 2 + ((y - hy) / ry) ** 2)
            g["hand"] = ((sy, sx), _unit(0.5 - (q - 1.0) * 5.5 * hs))
        ax, ay = hx + 16.0, FRAME_H + HAND_ANCHOR_DY
        win = self._win(min(hx, ax) - 5.5, max(hx, ax) + 5.5, min(hy, ay) - 5.5, max(hy, ay) + 5.5)
        if win is not None:
            sy, sx, x, y = win
            vx, vy = hx - ax, hy - ay
            w = _unit(((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy + 1e-6))
            dist = np.sqrt((x - (ax + w * vx)) ** 2 + (y - (ay + w * vy)) ** 2)
            g["arm"] = ((sy, sx), _unit(4.7 - dist), w)
        return g

    def _silhouette(
        self, shape: str, cx: float, cy: float, th: float, s: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Soft mask of a shape at centre ``(cx, cy)``, angle ``th``, scale ``s`` on its window,
        with the signed distance and the object-frame coordinates (for material finishes).

        RGB, depth and flow all draw an object through this one outline, as a real camera, depth
        sensor and flow field would: each modality sees the shape, none sees everything."""
        rad = 1.6 * OBJECT_RADIUS * s + 1.5
        win = self._win(cx - rad, cx + rad, cy - rad, cy + rad)
        if win is None:
            return None
        sy, sx, x, y = win
        dx, dy = (x - cx) / s, (y - cy) / s
        c, sn = math.cos(th), math.sin(th)
        lx, ly = c * dx + sn * dy, -sn * dx + c * dy
        d = _shape_sdf(shape, lx, ly) * s
        return (sy, sx), _unit(0.5 - d), d, lx, ly

    @staticmethod
    def _object(
        noun: NounSpec, sil: tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Colour and alpha of one object on the window of its silhouette (:meth:`_silhouette`,
        computed once per frame and shared with depth and flow): colour and material finish."""
        if sil is None:
            return None
        (sy, sx), alpha, d, lx, ly = sil
        rim = 0.62 + 0.38 * _unit(d / -1.5)
        col = np.asarray(COLOURS[noun.colour], np.float32) * rim[..., None]
        if noun.material == "wood":
            col = col * (0.86 + 0.14 * np.sin(1.7 * lx + 0.6 * np.sin(0.9 * ly)))[..., None]
        else:
            gain = {"metal": 90.0, "glass": 60.0, "plastic": 25.0}[noun.material]
            col = col + (gain * np.exp(-((lx + 2.5) ** 2 + (ly + 2.5) ** 2) / 6.0))[..., None]
            if noun.material == "glass":
                alpha = alpha * 0.72
        return (sy, sx), col, alpha

    # -- one chunk of frames ------------------------------------------------------------------------

    def render(
        self, frames: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """RGB ``[T, H, W, 3]`` uint8, depth ``[T, H, W]`` uint16 (mm, 0 = hole) of 1-based RGB
        ``frames``, and ``(k, u, v)`` for every flow frame that starts at one of them."""
        plan, fps = self.plan, self.fps
        t = (frames - 1) / fps
        seg = self.segment_of(t)
        st = self.states(t, seg)
        cxs, cys = self.camera(t)
        # Flow frame k starts at RGB frame 2k-1 (2018, half rate) or k (2020).
        if plan.half_rate_flow:
            ks = np.where(frames % 2 == 1, (frames + 1) // 2, 0)
            tb = t + 2.0 / fps
        else:
            ks = np.where(frames <= plan.n_flow, frames, 0)
            tb = t + 1.0 / fps
        sb = self.states(tb, seg)
        cxb, cyb = self.camera(tb)
        rgb = np.empty((len(frames), FRAME_H, FRAME_W, 3), np.float32)
        depth = np.empty((len(frames), FRAME_H, FRAME_W), np.float32)
        flow = np.empty((len(frames), 2, FRAME_H, FRAME_W), np.float32)
        m = self.margin
        for i in range(len(frames)):
            cx, cy = int(cxs[i]), int(cys[i])
            rgb[i] = self.bg[m + cy : m + cy + FRAME_H, m + cx : m + cx + FRAME_W]
            depth[i] = self.bg_depth[m + cy : m + cy + FRAME_H, m + cx : m + cx + FRAME_W]
            has_flow = ks[i] > 0
            if has_flow:  # the counter moves against the camera
                flow[i, 0] = cx - cxb[i]
                flow[i, 1] = cy - cyb[i]
            s = seg[i]
            if s >= 0:
                fu, fv = (flow[i, 0], flow[i, 1]) if has_flow else (None, None)
                sp = plan.segments[s]
                self._draw_action(
                    i, sp, st, sb, (cx, cy), (int(cxb[i]), int(cyb[i])), rgb[i], depth[i], fu, fv
                )
        rgb *= plan.scene["brightness"]
        rgb += 0.5
        rgb_u8 = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
        depth_u16 = np.clip(np.rint(depth, out=depth), 0, 65535, out=depth).astype(np.uint16)
        sel = np.nonzero(ks > 0)[0]
        flow_u8 = np.clip(np.rint(128.0 + FLOW_SCALE * flow[sel]), 0, 255).astype(np.uint8)
        flows = [(int(ks[j]), flow_u8[n, 0], flow_u8[n, 1]) for n, j in enumerate(sel)]
        return rgb_u8, depth_u16, flows

    def _draw_action(
        self,
        i: int,
        sp: SegmentPlan,
        st: dict[str, np.ndarray],
        sb: dict[str, np.ndarray],
        cam: tuple[int, int],
        cam_b: tuple[int, int],
        img: np.ndarray,
        d: np.ndarray,
        fu: np.ndarray | None,
        fv: np.ndarray | None,
    ) -> None:
        """Draw one frame of an action into ``img`` (RGB), ``d`` (depth) and ``fu, fv`` (flow)."""
        p, nz = sp.params, sp.nuisances
        cx, cy = cam
        ox, oy, oh, s = st["ox"][i] - cx, st["oy"][i] - cy, st["oh"][i], st["os"][i]
        # RGB: shadow on the counter below the object, fading with height
        sig = 6.0 + 0.03 * oh
        sxc, syc = ox + 0.05 * oh, oy + PERSPECTIVE * oh + 2.0 + 0.04 * oh
        win = self._win(sxc - 2.5 * sig, sxc + 2.5 * sig, syc - 2.5 * sig, syc + 2.5 * sig)
        if win is not None:
            wy, wx, x, y = win
            shadow = np.exp(-((x - sxc) ** 2 + (y - syc) ** 2) / (2 * sig * sig))
            img[wy, wx] *= (1.0 - 0.35 * math.exp(-oh / 200.0) * shadow)[..., None]
        if sp.second_noun is not None:  # the surface something is put on: static, drawn below
            tx, ty = p["x0"] - cx, p["y0"] - cy + 1.0
            surface = NOUNS[sp.second_noun]
            sil = self._silhouette(surface.shape, tx, ty, 0.0, 1.35 * surface.scale)
            lay = self._object(surface, sil)
            if lay is not None:
                (wy, wx), col, a = lay
                img[wy, wx] += a[..., None] * (col - img[wy, wx])
            if sil is not None:
                (wy, wx), a = sil[:2]
                d[wy, wx][a > 0.5] = self._plane(p["y0"]) - surface.height
        noun = NOUNS[sp.noun]
        sil = self._silhouette(noun.shape, ox, oy, st["oth"][i], s * noun.scale)
        lay = self._object(noun, sil)
        if lay is not None:
            (wy, wx), col, a = lay
            img[wy, wx] += a[..., None] * (col - img[wy, wx])
        # depth: the object's outline at its distance from the camera (no colour, no material)
        if sil is not None:
            (wy, wx), a = sil[:2]
            d[wy, wx][a > 0.5] = self._plane(st["oy"][i] + PERSPECTIVE * oh) - noun.height - oh
        hand = self._hand(st["hx"][i] - cx, st["hy"][i] - cy, st["hs"][i])
        hand_d = self._plane(min(st["hy"][i], FRAME_H)) - 25.0 - st["hh"][i]
        if hand["arm"] is not None:
            (wy, wx), a, _ = hand["arm"]
            img[wy, wx] += a[..., None] * (self.sleeve - img[wy, wx])
            sub = d[wy, wx]
            np.minimum(sub, hand_d - 30.0, out=sub, where=a > 0.5)
        if hand["hand"] is not None:
            (wy, wx), a = hand["hand"]
            img[wy, wx] += a[..., None] * (self.skin - img[wy, wx])
            d[wy, wx][a > 0.5] = hand_d
        # RGB nuisances
        if "rgb_occlusion" in nz:
            win = self._win(
                p["x0"] + p["occ_dx"] - cx - p["occ_w"] / 2,
                p["x0"] + p["occ_dx"] - cx + p["occ_w"] / 2,
                p["y0"] + p["occ_dy"] - cy - p["occ_h"] / 2,
                p["y0"] + p["occ_dy"] - cy + p["occ_h"] / 2,
            )
            if win is not None:
                wy, wx, x, y = win
                cloth = 70.0 + 40.0 * ((x.astype(int) // 4 + y.astype(int) // 4) % 2)
                img[wy, wx] = np.stack([cloth, 0.6 * cloth, 1.4 * cloth], -1)
        if "rgb_blur" in nz:
            img[:] = cv2.filter2D(img, -1, _blur_kernel(int(p["blur_len"]), p["blur_angle"]))
        if "rgb_low_light" in nz:
            img *= p["light"]
            img += self.noise_rgb[self.rng.integers(8)]
        # depth nuisances
        if "depth_noise" in nz:
            d += 15.0 * self.noise_d[self.rng.integers(8)]
            d[self.rng.random(d.shape) < 0.03] = DEPTH_MISSING
        if "depth_holes" in nz:
            low = self.rng.random((FRAME_H // 8, FRAME_W // 8)) < 0.2
            d[low.repeat(8, 0).repeat(8, 1)] = DEPTH_MISSING
        if fu is None or fv is None:
            return
        # Flow: each layer moves rigidly. The object's outline follows its similarity transform
        # (translation, rotation, scale); the hand likewise; the arm interpolates body -> hand.
        cbx, cby = cam_b
        bx, by = sb["ox"][i] - cbx, sb["oy"][i] - cby
        r = sb["os"][i] / s
        dth = sb["oth"][i] - st["oth"][i]
        c, sn = r * math.cos(dth), r * math.sin(dth)
        if sil is not None:
            (wy, wx), a = sil[:2]
            x, y = self.xs[None, wx], self.ys[wy, None]
            dx, dy = x - ox, y - oy
            fu[wy, wx] += a * (bx + c * dx - sn * dy - x - fu[wy, wx])
            fv[wy, wx] += a * (by + sn * dx + c * dy - y - fv[wy, wx])
        hax, hay = st["hx"][i] - cx, st["hy"][i] - cy
        hbx, hby = sb["hx"][i] - cbx, sb["hy"][i] - cby
        if hand["arm"] is not None:
            (wy, wx), a, w = hand["arm"]
            fu[wy, wx] += a * (w * (hbx - hax) - fu[wy, wx])
            fv[wy, wx] += a * (w * (hby - hay) - fv[wy, wx])
        if hand["hand"] is not None:
            (wy, wx), a = hand["hand"]
            x, y = self.xs[None, wx], self.ys[wy, None]
            hr = sb["hs"][i] / st["hs"][i]
            fu[wy, wx] += a * (hbx + hr * (x - hax) - x - fu[wy, wx])
            fv[wy, wx] += a * (hby + hr * (y - hay) - y - fv[wy, wx])
        if "flow_noise" in nz:
            for f in (fu, fv):
                low = self.rng.normal(0.0, 1.2, (FRAME_H // 12, FRAME_W // 12)).astype(np.float32)
                f += cv2.resize(low, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
                f += 0.6 * self.noise_d[self.rng.integers(8)]


def _unit(x: np.ndarray) -> np.ndarray:
    """Clamp a fresh temporary to [0, 1] in place (``np.clip`` costs more than the maths here)."""
    return np.minimum(np.maximum(x, 0.0, out=x), 1.0, out=x)


def _blur_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised line kernel: linear motion blur of ``length`` px at ``angle``."""
    ker = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    for j in range(length):
        ker[round(c + (j - c) * math.sin(angle)), round(c + (j - c) * math.cos(angle))] = 1.0
    return ker / ker.sum()


# --------------------------------------------------------------------------------------------------
# Writing one video (runs in a worker process).


def png16(depth: np.ndarray) -> bytes:
    """Encode a uint16 greyscale image as PNG (Sub filter, zlib level 1).

    Written by hand because OpenCV's encoder spends most of its time choosing row filters; the Sub
    filter is ideal here anyway (the counter's depth is constant along a row). Any PNG reader
    (OpenCV ``IMREAD_UNCHANGED``, Pillow) returns the exact uint16 values.
    """
    h, w = depth.shape
    raw = np.ascontiguousarray(depth, dtype=">u2").view(np.uint8).reshape(h, 2 * w)
    filt = raw.copy()
    filt[:, 2:] -= raw[:, :-2]  # PNG filter 1 (Sub), 2 bytes per pixel, modulo 256
    data = np.concatenate([np.ones((h, 1), np.uint8), filt], axis=1).tobytes()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)  # 16-bit greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data, 1))
        + chunk(b"IEND", b"")
    )


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def render_video(root: str, plan: VideoPlan, seed: int, chunk: int = 64) -> dict[str, Any]:
    """Write every file of one video under ``root`` and check the MP4 it wrote.

    RGB and flow frames are JPEG (quality 90, OpenCV), depth 16-bit PNG (:func:`png16`); the MP4
    carries the same RGB frames at the extraction rate (frame i of the MP4 = rgb frame i), H.264
    (``mpeg4`` if this FFmpeg lacks libx264), and the mono AAC audio track over the same duration.
    """
    base = Path(root) / plan.participant_id
    vid = plan.video_id
    rgb_dir = base / "rgb_frames" / vid
    u_dir, v_dir = base / "flow_frames" / vid / "u", base / "flow_frames" / vid / "v"
    depth_dir = base / "depth_frames" / vid
    for d in (rgb_dir, u_dir, v_dir, depth_dir, base / "videos"):
        d.mkdir(parents=True, exist_ok=True)
    rgb_t, depth_t = str(rgb_dir / "frame_{:010d}.jpg"), str(depth_dir / "frame_{:010d}.png")
    u_t, v_t = str(u_dir / "frame_{:010d}.jpg"), str(v_dir / "frame_{:010d}.jpg")
    r = _VideoRenderer(plan, seed)
    audio = synthesize_audio(plan, seed)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, 90]
    mp4 = base / "videos" / f"{vid}.MP4"
    codec = _video_codec()
    with av.open(str(mp4), mode="w", format="mp4") as container:
        vs = container.add_stream(codec, rate=Fraction(plan.fps))
        vs.width, vs.height, vs.pix_fmt = FRAME_W, FRAME_H, "yuv420p"
        vs.thread_count = 1
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "18"}
        aus = container.add_stream("aac", rate=AUDIO_RATE)
        aus.layout = "mono"
        aus.bit_rate = 64000
        aus.options = {"aac_coder": "fast"}
        a_done = 0
        for f0 in range(1, plan.n_frames + 1, chunk):
            frames = np.arange(f0, min(f0 + chunk, plan.n_frames + 1))
            rgb, depth, flows = r.render(frames)
            for j, f in enumerate(frames):
                cv2.imwrite(rgb_t.format(f), rgb[j, :, :, ::-1], jpeg)
                Path(depth_t.format(f)).write_bytes(png16(depth[j]))
                vf = av.VideoFrame.from_ndarray(rgb[j], format="rgb24")
                vf.pts = int(f - 1)
                vf.time_base = Fraction(1, plan.fps)
                container.mux(vs.encode(vf))
            for k, u, v in flows:
                cv2.imwrite(u_t.format(k), u, jpeg)
                cv2.imwrite(v_t.format(k), v, jpeg)
            last = frames[-1] == plan.n_frames
            a_end = plan.n_samples if last else round(frames[-1] / plan.fps * AUDIO_RATE)
            while a_done + 1024 <= a_end or (last and a_done < a_end):
                piece = np.ascontiguousarray(audio[a_done : min(a_done + 1024, a_end)])
                af = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
                af.sample_rate = AUDIO_RATE
                af.pts = a_done
                af.time_base = Fraction(1, AUDIO_RATE)
                container.mux(aus.encode(af))
                a_done += len(piece)
        container.mux(vs.encode(None))
        container.mux(aus.encode(None))
    _check_mp4(mp4, plan)
    return {"video_id": vid, "frames": plan.n_frames, "flow_frames": plan.n_flow, "codec": codec}


def render_segment(
    verb: str,
    noun: str,
    seed: int = 0,
    year: int = 2020,
    nuisances: Iterable[str] = (),
    duration: float = 1.2,
) -> dict[str, Any]:
    """Render one action alone and return every modality as arrays (nothing is written).

    For tests, figures and sanity checks of what each modality can tell. Motion parameters and
    scene depend only on ``seed`` (and the verb's own amplitudes on ``verb``), so two calls that
    differ only in ``noun`` isolate the noun, and likewise for ``verb``. Returns ``rgb``
    ``[T, H, W, 3]`` uint8, ``depth`` ``[T, H, W]`` uint16 (mm), ``flow`` ``[K, 2, H, W]`` uint8
    (u, v; the flow frames the action's RGB frames map to), ``audio`` float32 at 24 kHz, ``fps``.
    """
    vi = [v.key for v in VERBS].index(verb)
    ni = [n.key for n in NOUNS].index(noun)
    nuisances = tuple(nuisances)
    unknown = set(nuisances) - set(NUISANCE_RATES)
    if unknown:
        raise ValueError(f"unknown nuisances {sorted(unknown)}; known: {sorted(NUISANCE_RATES)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    fps = RGB_FPS[year]
    gap, length = round(0.3 * fps), round(duration * fps)
    # Its own generator: the common parameters (position, speed...) come first, so they are the
    # same for every verb, and the verb's own amplitudes follow.
    params = _segment_params(verb, np.random.default_rng(np.random.SeedSequence([seed, 8])))
    params.update(_nuisance_params(rng))
    seg = SegmentPlan(0, gap + 1, gap + length, vi, ni, verb, noun, None, None, None, nuisances, params)
    vid = "P00_01" if year == 2018 else "P00_101"
    plan = VideoPlan(vid, "P00", "train", year, 2 * gap + length, (seg,), _scene(rng, seed, "P00", year))
    rgb, depth, flows = _VideoRenderer(plan, seed).render(np.arange(1, plan.n_frames + 1))
    audio = synthesize_audio(plan, seed)
    first, last = seg.start_frame, seg.stop_frame
    if plan.half_rate_flow:
        ks = set(range((first - 1) // 2 + 1, (last - 1) // 2 + 2))
    else:
        ks = set(range(first, min(last, plan.n_flow) + 1))
    flow = np.stack([np.stack([u, v]) for k, u, v in flows if k in ks])
    a, b = round((first - 1) / fps * AUDIO_RATE), round(last / fps * AUDIO_RATE)
    return {
        "rgb": rgb[first - 1 : last],
        "depth": depth[first - 1 : last],
        "flow": flow,
        "audio": audio[a:b],
        "fps": fps,
    }


def _check_mp4(path: Path, plan: VideoPlan) -> None:
    """Cheap container-level check (no decoding): frame count and audio duration as planned."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        n = v.frames
        dur = float(a.duration * a.time_base) if a.duration else float(c.duration or 0) / 1e6
    want = plan.n_frames / plan.fps
    if abs(n - plan.n_frames) > 1 or abs(dur - want) > 0.1:
        raise RuntimeError(
            f"{path}: wrote {n} video frames / {dur:.2f} s audio, expected {plan.n_frames} / {want:.2f} s"
        )


# --------------------------------------------------------------------------------------------------
# Annotations.


def _ts(seconds: float, decimals: int = 2) -> str:
    """``HH:MM:SS.ff`` (or ``.fff``), as EPIC writes its timestamps."""
    scale = 10**decimals
    units = round(seconds * scale)
    whole, frac = divmod(units, scale)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{frac:0{decimals}d}"


def parse_timestamp(text: str) -> float:
    """Inverse of the ``HH:MM:SS.ff`` format (used by tests and readers alike)."""
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _narration(verb_word: str, noun_word: str, second_word: str | None) -> str:
    def spoken(word: str) -> str:
        parts = word.split(":")
        return " ".join(parts[1:] + parts[:1])  # board:chopping -> chopping board

    text = f"{verb_word.replace('-', ' ')} {spoken(noun_word)}"
    return f"{text} on {spoken(second_word)}" if second_word else text


def _rows(plan: VideoPlan) -> list[list[Any]]:
    """The video's annotation rows (15 columns). Timestamps are the segment's edges:
    ``start = (start_frame - 1) / fps``, ``stop = stop_frame / fps`` at the extraction rate."""
    rows = []
    for sp in plan.segments:
        nouns = [sp.noun_word] + ([sp.second_word] if sp.second_word else [])
        classes = [sp.noun] + ([sp.second_noun] if sp.second_noun is not None else [])
        rows.append(
            [
                f"{plan.video_id}_{sp.index}",
                plan.participant_id,
                plan.video_id,
                "" if sp.narration_time is None else _ts(sp.narration_time, 3),
                _ts((sp.start_frame - 1) / plan.fps),
                _ts(sp.stop_frame / plan.fps),
                sp.start_frame,
                sp.stop_frame,
                _narration(sp.verb_word, sp.noun_word, sp.second_word),
                sp.verb_word,
                sp.verb,
                sp.noun_word,
                sp.noun,
                repr(nouns),
                repr(classes),
            ]
        )
    return rows


def _write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write like ``pandas.DataFrame.to_csv(index=False)``: minimal quoting, ``\\n`` line ends."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(list(header))
        w.writerows(rows)


def _tail(counts: np.ndarray) -> list[int]:
    """Tail classes as EPIC-100 defines them: the rarest classes that together hold the last 20%
    of training instances (at least one class)."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    total, acc, head = counts.sum(), 0, []
    for i in order:
        if acc >= 0.8 * total:
            break
        head.append(i)
        acc += counts[i]
    tail = [i for i in order if i not in head]
    return sorted(tail or order[-1:])


def _write_annotations(out: Path, plans: list[VideoPlan], size: str) -> dict[str, Any]:
    cfg = SIZES[size]
    verbs, nouns = VERBS[: cfg["verbs"]], NOUNS[: cfg["nouns"]]
    ann = out / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[list[Any]]] = {"train": [], "validation": [], "test": [], "heldout": []}
    for plan in plans:
        by_split[plan.split].extend(_rows(plan))
    _write_csv(ann / "EPIC_100_train.csv", ANNOTATION_COLUMNS, by_split["train"])
    _write_csv(ann / "EPIC_100_validation.csv", ANNOTATION_COLUMNS, by_split["validation"])
    _write_csv(ann / "EPIC_100_test_timestamps.csv", TEST_COLUMNS, [r[:8] for r in by_split["test"]])
    _write_csv(ann / "EPIC_100_heldout.csv", ANNOTATION_COLUMNS, by_split["heldout"])
    _write_csv(
        ann / "EPIC_100_verb_classes.csv",
        ("id", "key", "instances", "category"),
        [(i, v.key, repr(list(v.instances)), v.category) for i, v in enumerate(verbs)],
    )
    _write_csv(
        ann / "EPIC_100_noun_classes.csv",
        ("id", "key", "instances", "category"),
        [(i, n.key, repr(list(n.instances)), n.category) for i, n in enumerate(nouns)],
    )
    _write_csv(
        ann / "EPIC_100_video_info.csv",
        ("video_id", "duration", "fps", "resolution"),
        [
            (p.video_id, f"{p.n_frames / p.fps:.6f}", repr(NATIVE_FPS[p.year]), f"{FRAME_W}x{FRAME_H}")
            for p in plans
        ],
    )
    vc = np.bincount([r[10] for r in by_split["train"]], minlength=len(verbs))
    nc = np.bincount([r[12] for r in by_split["train"]], minlength=len(nouns))
    tail_v, tail_n = _tail(vc), _tail(nc)
    _write_csv(ann / "EPIC_100_tail_verbs.csv", ("verb",), [(i,) for i in tail_v])
    _write_csv(ann / "EPIC_100_tail_nouns.csv", ("noun",), [(i,) for i in tail_n])
    n_train = cfg["train_participants"]
    unseen_val, unseen_test, unseen_held = f"P{n_train + 1:02d}", f"P{n_train + 2:02d}", f"P{n_train + 3:02d}"
    _write_csv(ann / "EPIC_100_unseen_participant_ids_validation.csv", ("participant_id",), [(unseen_val,)])
    _write_csv(ann / "EPIC_100_unseen_participant_ids_test.csv", ("participant_id",), [(unseen_test,)])
    _write_csv(ann / "EPIC_100_unseen_participant_ids_heldout.csv", ("participant_id",),
               [(unseen_held,)] if cfg["heldout_unseen"] else [])
    return {
        "tail_verbs": tail_v,
        "tail_nouns": tail_n,
        "train_verb_counts": vc.tolist(),
        "train_noun_counts": nc.tolist(),
        "unseen_participants": {"validation": [unseen_val], "test": [unseen_test],
                                "heldout": [unseen_held] if cfg["heldout_unseen"] else []},
    }


# --------------------------------------------------------------------------------------------------
# Public entry point.


def _metadata(
    seed: int, size: str, plans: list[VideoPlan], ann: dict[str, Any], codec: str
) -> dict[str, Any]:
    cfg = SIZES[size]
    verbs, nouns = VERBS[: cfg["verbs"]], NOUNS[: cfg["nouns"]]
    counts = {
        split: {
            "videos": sum(p.split == split for p in plans),
            "segments": sum(len(p.segments) for p in plans if p.split == split),
            "frames": sum(p.n_frames for p in plans if p.split == split),
        }
        for split in ("train", "validation", "test", "heldout")
    }
    nuisance_counts = {k: sum(k in s.nuisances for p in plans for s in p.segments) for k in NUISANCE_RATES}
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "layout": "EPIC-KITCHENS-100",
        "counts": counts,
        "verbs": [v.key for v in verbs],
        "nouns": [n.key for n in nouns],
        "noun_attributes": {
            n.key: {"shape": n.shape, "colour": n.colour, "material": n.material, "scale": n.scale,
                    "height_mm": n.height}
            for n in nouns
        },
        "frame_rates": {
            "rgb": {"2018": RGB_FPS[2018], "2020": RGB_FPS[2020]},
            "depth": {"2018": RGB_FPS[2018], "2020": RGB_FPS[2020]},
            "video": {"2018": RGB_FPS[2018], "2020": RGB_FPS[2020]},
            "flow": {"2018": RGB_FPS[2018] / 2, "2020": RGB_FPS[2020]},
            "native": {"2018": NATIVE_FPS[2018], "2020": NATIVE_FPS[2020]},
            "audio_sample_rate": AUDIO_RATE,
        },
        "flow_frames": {
            "2018": "ceil(n_rgb / 2); flow k = motion rgb 2k-1 -> 2k+1, serves rgb 2k-1 and 2k",
            "2020": "n_rgb - 1; flow k = motion rgb k -> k+1",
        },
        "videos_2018": [p.video_id for p in plans if p.year == 2018],
        "videos_2020": [p.video_id for p in plans if p.year == 2020],
        "splits": {s: [p.video_id for p in plans if p.split == s] for s in ("train", "validation", "test", "heldout")},
        "participants": {
            "train": sorted({p.participant_id for p in plans if p.split == "train"}),
            "unseen_validation": ann["unseen_participants"]["validation"],
            "unseen_test": ann["unseen_participants"]["test"],
            "unseen_heldout": ann["unseen_participants"]["heldout"],
        },
        "resolution": f"{FRAME_W}x{FRAME_H}",
        "flow_scale": FLOW_SCALE,
        "flow_encoding": "grey = clip(round(128 + flow_scale * flow_px), 0, 255); u right, v down",
        "depth_units": "mm",
        "depth_missing_value": DEPTH_MISSING,
        "audio": {"sample_rate": AUDIO_RATE, "channels": 1, "codec": "aac"},
        "video_codec": codec,
        "timestamps": "start=(start_frame-1)/rgb_fps, stop=stop_frame/rgb_fps, rounded to 0.01 s",
        "tail_verbs": ann["tail_verbs"],
        "tail_nouns": ann["tail_nouns"],
        "train_verb_counts": ann["train_verb_counts"],
        "train_noun_counts": ann["train_noun_counts"],
        "nuisance_rates": dict(NUISANCE_RATES),
        "nuisance_counts": nuisance_counts,
    }


_OWN_DIR = re.compile(r"^P\d{2}$")


def _clear_killed(out: Path) -> None:
    """Remove what a killed generation of ours wrote (annotations and participant folders only)."""
    for child in out.iterdir():
        if child.is_dir() and (child.name == "annotations" or _OWN_DIR.match(child.name)):
            shutil.rmtree(child)


def _prepare(out: Path, seed: int, size: str) -> dict[str, Any] | None:
    identity = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size}
    return prepare_output(out, identity, META_FILE, MARKER_FILE, _clear_killed, "synthetic dataset")


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _worker_init() -> None:
    # One render thread per core already: OpenCV's own thread pool would only oversubscribe.
    cv2.setNumThreads(1)


def _run_videos(
    root: Path, plans: list[VideoPlan], seed: int, workers: int, on_done: Callable[[dict[str, Any]], None]
) -> None:
    if workers <= 1 or len(plans) <= 1:
        for plan in plans:
            on_done(render_video(str(root), plan, seed))
        return
    # Longest first keeps both workers busy until the end.
    order = sorted(plans, key=lambda p: -p.n_frames)
    # Threads, not processes: rendering is numpy/OpenCV/PyAV work that releases the GIL, and forked
    # workers can deadlock in a parent that already runs thread pools (a test suite hung that way).
    with ThreadPoolExecutor(max_workers=workers, initializer=_worker_init) as ex:
        futures = [ex.submit(render_video, str(root), plan, seed) for plan in order]
        try:
            for fut in as_completed(futures):
                on_done(fut.result())
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)  # fail fast: do not render the rest
            raise


def write_synthetic_epic(
    out: str | Path, seed: int = 0, size: str = "small", progress: bool = True, *, workers: int | None = None
) -> dict[str, Any]:
    """Write the synthetic dataset into ``out`` in the EPIC-KITCHENS-100 layout; return its metadata.

    Idempotent: a folder already holding this seed/size/version is returned as is. A folder with
    a killed generation of the same seed/size (``.synth_incomplete.json`` present, no
    ``synth_meta.json``) is cleared (only ``annotations/`` and ``PXX/``) and regenerated, and so
    is a complete one of the same seed/size by an older generator version. Any other non-empty
    folder is refused with ``ValueError``. ``synth_meta.json`` is written last, so
    its presence means the dataset is complete. ``workers`` processes render videos (default: the
    usable CPU count, at most 8); the output does not depend on it.
    """
    if size not in SIZES:
        raise ValueError(f"unknown synthetic size {size!r}; choose one of {sorted(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    out = Path(out)
    existing = _prepare(out, seed, size)
    if existing is not None:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    marker = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size}
    (out / MARKER_FILE).write_text(json.dumps(marker), encoding="utf-8")
    plans = plan_synthetic_epic(seed, size)
    ann = _write_annotations(out, plans, size)
    codecs: set[str] = set()
    with tqdm(total=len(plans), desc=f"synthetic EPIC ({size})", unit="video", disable=not progress) as bar:

        def done(info: dict[str, Any]) -> None:
            codecs.add(info["codec"])
            bar.update(1)

        _run_videos(out, plans, seed, workers or _default_workers(), done)
    meta = _metadata(seed, size, plans, ann, "+".join(sorted(codecs)))
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)
    (out / MARKER_FILE).unlink(missing_ok=True)
    return meta
