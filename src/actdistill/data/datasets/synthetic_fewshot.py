"""A synthetic few-shot action dataset written in the Something-Something v2 layout.

Why it exists: few-shot recognition (OTAM, TRX, CLIP-FSAR, CLIP-M²DF) must run end to end on a
2-core CPU with no network, through the *same* adapters that read the real SSv2 release and the
TRX-style few-shot split files. So this writes exactly what those adapters read:

- ``something-something-v2-labels.json`` (template without brackets -> class index as a string),
  ``something-something-v2-train.json`` / ``-validation.json`` (lists of ``{id, label, template,
  placeholders}``), one ``<id>.mp4`` per video in the root (H.264, or MPEG-4 part 2 when this
  FFmpeg lacks libx264; 64x64, 16-24 frames at 12 fps). Both our SSv2 adapter and the few-shot
  split adapter find ``<root>/<id>.mp4`` by id.
- ``splits/{train,val,test}list01.txt``: 64/12/24 classes, one ``<class>/<id>`` line per video,
  the class written as its template without brackets (the SSv2-Small/CMN convention).

Why the content looks the way it does: a class is a *motion* applied to an *object*
("Pushing a red cube from left to right"); 10 motions x 10 objects = 100 classes. Objects share
shapes and colours (red/blue cubes, blue/yellow balls, ...), and motions differ in trajectory
(direction, growth, rotation, oscillation), so recognising a class needs both appearance and
temporal order. The split is drawn so that every motion and every object of a val/test class also
occurs in some training class: novel classes are new *combinations*, and their names say which.
Class text therefore carries real information about novel classes, which is what the text-aware
methods exploit. In SSv2 the bracketed slot is ``[something]``; here it names the object
(template ``"Pushing [a red cube] from left to right"``), so that the class key, the template
without brackets, is the full natural-language class name.

Per-video nuisances (background colour and texture, start position, size, speed, timing within
the clip, sensor noise) make instances of one class differ. Everything is seeded per video
(``SeedSequence([seed, video id])``): the output does not depend on generation order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm.auto import tqdm

from actdistill.data.datasets._generated import prepare_output

__all__ = [
    "MOTIONS",
    "OBJECTS",
    "SIZES",
    "FewShotPlan",
    "VideoSpec",
    "plan_synthetic_fewshot",
    "render_clip",
    "write_synthetic_fewshot",
]

GENERATOR = "actdistill.synthetic_fewshot_ssv2"
GENERATOR_VERSION = 1
META_FILE = "synth_fewshot_meta.json"
MARKER_FILE = ".synth_fewshot_incomplete.json"
LABELS_FILE = "something-something-v2-labels.json"
SPLIT_FILES = {"train": "something-something-v2-train.json", "validation": "something-something-v2-validation.json"}
SPLITS_DIR = "splits"
FRAME_SIZE = 64
FPS = 12
SPLIT_CLASSES = {"train": 64, "val": 12, "test": 24}  # the SSv2-Small / SSv2-Full class counts
VALIDATION_FRACTION = 0.15  # share of videos listed in the SSv2 validation JSON instead of train

#: Motion key -> template; ``{}`` is the object slot (written as ``[a red cube]`` in the template).
MOTIONS: dict[str, str] = {
    "push_right": "Pushing {} from left to right",
    "push_left": "Pushing {} from right to left",
    "lift": "Lifting {} up",
    "put_down": "Putting {} down",
    "approach": "Moving {} towards the camera",
    "recede": "Moving {} away from the camera",
    "spin": "Spinning {}",
    "shake": "Shaking {}",
    "throw": "Throwing {} in the air and catching it",
    "circle": "Moving {} in a circle",
}


@dataclass(frozen=True)
class ObjectSpec:
    """How an object is named and drawn: a shape outline and an RGB colour."""

    name: str
    shape: str
    colour: tuple[int, int, int]


# Every shape and every colour is shared by two objects: neither cue alone names the object.
OBJECTS: tuple[ObjectSpec, ...] = (
    ObjectSpec("a red cube", "cube", (210, 40, 40)),
    ObjectSpec("a blue cube", "cube", (40, 80, 215)),
    ObjectSpec("a blue ball", "ball", (40, 80, 215)),
    ObjectSpec("a yellow ball", "ball", (235, 205, 40)),
    ObjectSpec("a green bottle", "bottle", (40, 165, 70)),
    ObjectSpec("a red bottle", "bottle", (210, 40, 40)),
    ObjectSpec("a yellow book", "book", (235, 205, 40)),
    ObjectSpec("a purple book", "book", (140, 60, 180)),
    ObjectSpec("a purple cone", "cone", (140, 60, 180)),
    ObjectSpec("a green cone", "cone", (40, 165, 70)),
)

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "description": "for tests: 100 classes x 2 videos, 16 frames, a few seconds",
        "videos": (2, 2),
        "frames": (16, 16),
    },
    "small": {
        "description": "100 classes x 8-10 videos (about 900), 16-24 frames",
        "videos": (8, 10),
        "frames": (16, 24),
    },
}

_BACKGROUNDS = ((196, 186, 170), (170, 176, 182), (150, 132, 110), (205, 200, 188), (128, 140, 128), (182, 168, 150))


@dataclass(frozen=True)
class VideoSpec:
    """One planned video: its SSv2 id, class, SSv2 annotation split and frame count."""

    video_id: str
    class_index: int
    motion: str
    object_index: int
    ssv2_split: str  # train | validation (which SSv2 JSON lists it)
    num_frames: int


@dataclass(frozen=True)
class FewShotPlan:
    """Everything about a dataset except pixels: classes, few-shot splits, videos."""

    seed: int
    size: str
    classes: tuple[tuple[str, int], ...]  # (motion, object index) per class index (sorted by name)
    fewshot_split: dict[str, tuple[int, ...]]  # train/val/test -> class indices
    videos: tuple[VideoSpec, ...]

    def class_name(self, index: int) -> str:
        motion, obj = self.classes[index]
        return MOTIONS[motion].format(OBJECTS[obj].name)

    def template(self, index: int) -> str:
        motion, obj = self.classes[index]
        return MOTIONS[motion].format(f"[{OBJECTS[obj].name}]")


def _split_classes(pairs: list[tuple[str, int]], rng: np.random.Generator) -> dict[str, tuple[int, ...]]:
    """64/12/24 class indices such that every motion and object of val/test also occurs in train."""
    motions, objects = set(MOTIONS), set(range(len(OBJECTS)))
    n_train, n_val = SPLIT_CLASSES["train"], SPLIT_CLASSES["val"]
    for _ in range(1000):
        order = rng.permutation(len(pairs))
        train = order[:n_train]
        if {pairs[i][0] for i in train} == motions and {pairs[i][1] for i in train} == objects:
            return {
                "train": tuple(sorted(int(i) for i in train)),
                "val": tuple(sorted(int(i) for i in order[n_train : n_train + n_val])),
                "test": tuple(sorted(int(i) for i in order[n_train + n_val :])),
            }
    raise RuntimeError("could not draw a split covering every motion and object")  # pragma: no cover


def plan_synthetic_fewshot(seed: int = 0, size: str = "small") -> FewShotPlan:
    """The dataset's classes, splits and videos (cheap: no rendering). Deterministic per seed."""
    if size not in SIZES:
        raise ValueError(f"unknown synthetic few-shot size {size!r}; choose one of {sorted(SIZES)}")
    cfg = SIZES[size]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF5]))
    pairs = sorted(
        ((m, o) for m in MOTIONS for o in range(len(OBJECTS))), key=lambda p: MOTIONS[p[0]].format(OBJECTS[p[1]].name)
    )
    split = _split_classes(pairs, rng)
    counts = rng.integers(cfg["videos"][0], cfg["videos"][1] + 1, size=len(pairs))
    ids = rng.choice(np.arange(10000, 100000), size=int(counts.sum()), replace=False)
    videos: list[VideoSpec] = []
    k = 0
    for ci, (motion, obj) in enumerate(pairs):
        for _ in range(int(counts[ci])):
            frames = int(rng.integers(cfg["frames"][0], cfg["frames"][1] + 1))
            part = "validation" if rng.random() < VALIDATION_FRACTION else "train"
            videos.append(VideoSpec(str(int(ids[k])), ci, motion, obj, part, frames))
            k += 1
    return FewShotPlan(seed, size, tuple(pairs), split, tuple(videos))


# --------------------------------------------------------------------------------------------------
# Rendering.


def _shape_sdf(shape: str, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Signed distance (px at scale 1, negative inside) to an object's outline, object frame."""
    if shape == "ball":
        return np.sqrt(lx * lx + ly * ly) - 7.0
    if shape == "cube":
        return np.maximum(np.abs(lx), np.abs(ly)) - 6.0
    if shape == "book":
        return np.maximum(np.abs(lx) - 9.0, np.abs(ly) - 4.0)
    if shape == "bottle":
        body = np.maximum(np.abs(lx) - 4.0, np.abs(ly - 2.0) - 7.0)
        neck = np.maximum(np.abs(lx) - 1.8, np.abs(ly + 7.0) - 3.5)
        return np.minimum(body, neck)
    if shape == "cone":
        c, s = math.cos(math.pi / 6), 0.5
        return np.maximum(ly, np.maximum(c * lx - s * ly, -c * lx - s * ly)) - 4.5
    raise ValueError(f"unknown shape {shape!r}")


def _ease(u: np.ndarray) -> np.ndarray:
    return u * u * (3.0 - 2.0 * u)


def _trajectory(motion: str, u: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Centre ``(x, y)`` in px, ``scale`` and ``angle`` (rad) over normalised action time ``u``."""
    c = FRAME_SIZE / 2
    x0, y0 = c + rng.uniform(-5, 5), c + rng.uniform(-4, 6)
    span = rng.uniform(0.55, 0.8) * FRAME_SIZE / 2
    x, y = np.full_like(u, x0), np.full_like(u, y0)
    scale, angle = np.ones_like(u), np.full_like(u, rng.uniform(-0.2, 0.2))
    e = _ease(u)
    if motion == "push_right":
        x = c - span + 2 * span * e
    elif motion == "push_left":
        x = c + span - 2 * span * e
    elif motion == "lift":
        y = c + span * 0.8 - 1.6 * span * e
    elif motion == "put_down":
        y = c - span * 0.8 + 1.6 * span * e
    elif motion == "approach":
        scale = 0.55 + 1.0 * e
    elif motion == "recede":
        scale = 1.55 - 1.0 * e
    elif motion == "spin":
        angle = angle + rng.choice([-1.0, 1.0]) * 2 * math.pi * rng.uniform(0.8, 1.3) * e
    elif motion == "shake":
        x = x0 + rng.uniform(6, 10) * np.sin(2 * math.pi * rng.uniform(2.5, 3.5) * u)
    elif motion == "throw":
        y = y0 + 8 - rng.uniform(20, 28) * 4 * u * (1 - u)
    elif motion == "circle":
        r, phase = rng.uniform(10, 15), rng.uniform(0, 2 * math.pi)
        x, y = x0 + r * np.cos(phase + 2 * math.pi * u), y0 + r * np.sin(phase + 2 * math.pi * u)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return x, y, scale * rng.uniform(0.9, 1.15), angle


def render_clip(motion: str, object_index: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """One clip as ``[T, 64, 64, 3]`` uint8 RGB (nothing written; for the writer, tests, figures)."""
    obj = OBJECTS[object_index]
    t = np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1)
    t0, t1 = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)  # the action need not fill the clip
    u = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    x, y, scale, angle = _trajectory(motion, u, rng)

    grid = np.arange(FRAME_SIZE, dtype=np.float64) + 0.5
    base = np.array(_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))], dtype=np.float64)
    shade = 1.0 + rng.uniform(-0.15, 0.15) * (grid[:, None] / FRAME_SIZE - 0.5)  # lighting gradient
    texture = rng.normal(0.0, 6.0, size=(FRAME_SIZE // 8, FRAME_SIZE // 8, 3)).repeat(8, 0).repeat(8, 1)
    background = base[None, None] * shade[..., None] + texture
    colour = np.clip(np.array(obj.colour, dtype=np.float64) * rng.uniform(0.85, 1.1), 0, 255)

    dx = grid[None, None, :] - x[:, None, None]  # [T, 1, W]
    dy = grid[None, :, None] - y[:, None, None]  # [T, H, 1]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    s = scale[:, None, None]
    lx, ly = (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s  # object frame, px at scale 1
    alpha = np.clip(0.5 - _shape_sdf(obj.shape, lx, ly) * s, 0.0, 1.0)[..., None]  # anti-aliased coverage
    stripe = np.where(lx > 2.0, 0.6, 1.0)[..., None]  # a darker side shows rotation, even on a ball
    frames = background[None] * (1 - alpha) + (colour * stripe) * alpha
    frames += rng.normal(0.0, 3.0, size=frames.shape)  # sensor noise
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_mp4(path: Path, frames: np.ndarray, codec: str) -> None:
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = FRAME_SIZE, FRAME_SIZE, "yuv420p"
        stream.thread_count = 1  # deterministic output, and one process per core is enough
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Writing.


def _annotation(plan: FewShotPlan, video: VideoSpec) -> dict[str, Any]:
    obj = OBJECTS[video.object_index].name
    return {
        "id": video.video_id,
        "label": plan.class_name(video.class_index).lower(),
        "template": plan.template(video.class_index),
        "placeholders": [obj],
    }


def _write_annotations(out: Path, plan: FewShotPlan) -> None:
    labels = {plan.class_name(i): str(i) for i in range(len(plan.classes))}
    (out / LABELS_FILE).write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    for split, name in SPLIT_FILES.items():
        rows = [_annotation(plan, v) for v in plan.videos if v.ssv2_split == split]
        (out / name).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    splits = out / SPLITS_DIR
    splits.mkdir(exist_ok=True)
    for split, classes in plan.fewshot_split.items():
        members = set(classes)
        lines = [f"{plan.class_name(v.class_index)}/{v.video_id}" for v in plan.videos if v.class_index in members]
        (splits / f"{split}list01.txt").write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")


def _metadata(plan: FewShotPlan, codec: str, seconds: float) -> dict[str, Any]:
    per_split = {s: [plan.class_name(i) for i in c] for s, c in plan.fewshot_split.items()}
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": plan.seed,
        "size": plan.size,
        "layout": "ssv2",
        "codec": codec,
        "fps": FPS,
        "frame_size": [FRAME_SIZE, FRAME_SIZE],
        "num_classes": len(plan.classes),
        "num_videos": len(plan.videos),
        "videos_per_split": {s: sum(v.ssv2_split == s for v in plan.videos) for s in SPLIT_FILES},
        "fewshot_classes": per_split,
        "split_dir": SPLITS_DIR,
        "benchmark": "ssv2_small",
        "seconds": round(seconds, 2),
    }


def _clear_killed(out: Path) -> None:
    """Remove what a killed generation of ours wrote (videos, annotation and split files)."""
    for child in out.iterdir():
        if child.name == SPLITS_DIR and child.is_dir():
            shutil.rmtree(child)
        elif child.suffix in (".mp4", ".part") or child.name in (LABELS_FILE, *SPLIT_FILES.values()):
            child.unlink()


def _prepare(out: Path, seed: int, size: str) -> dict[str, Any] | None:
    identity = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size}
    return prepare_output(out, identity, META_FILE, MARKER_FILE, _clear_killed, "synthetic few-shot dataset")


def write_synthetic_fewshot(
    out: str | Path,
    seed: int = 0,
    size: str = "small",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the synthetic few-shot dataset into ``out`` (SSv2 layout + TRX split files).

    Returns its metadata (also written to ``synth_fewshot_meta.json``, last, so its presence
    means the dataset is complete). Idempotent: a folder already holding this seed/size is
    returned as is; a killed generation of the same seed/size is cleared and redone; any other
    non-empty folder is refused with ``ValueError``. Read it back with
    ``load_fewshot_split(out, out / "splits", split, benchmark="ssv2_small")`` or ``load_ssv2(out)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    plan = plan_synthetic_fewshot(seed, size)
    out = Path(out)
    existing = _prepare(out, seed, size)
    if existing is not None:
        return existing
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    marker = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size}
    (out / MARKER_FILE).write_text(json.dumps(marker), encoding="utf-8")
    _write_annotations(out, plan)
    codec = _video_codec()
    for video in tqdm(plan.videos, desc=f"synthetic few-shot ({size})", unit="video", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(video.video_id)]))
        frames = render_clip(video.motion, video.object_index, video.num_frames, rng)
        _write_mp4(out / f"{video.video_id}.mp4", frames, codec)
    meta = _metadata(plan, codec, time.perf_counter() - start)
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)
    (out / MARKER_FILE).unlink(missing_ok=True)
    return meta
