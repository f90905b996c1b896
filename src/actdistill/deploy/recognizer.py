"""Single-video inference with a trained KARMMA row: ``Recognizer.from_run(dir).predict(video)``.

A run directory holds everything needed (``config.yaml``, ``model.json``, ``<row>.safetensors``),
so prediction never touches the training data. The video goes through the *same* data layer as
training (readers, test-time temporal sampling and spatial transform of the run's config), which
is what keeps deployed predictions consistent with the reported accuracy:

* ``rgb`` from the video's frames (or a frame folder);
* ``flow`` computed from those frames with TV-L1 (``Source.kind == "from_rgb"``), so a user
  needs no pre-extracted flow; the frames are first shrunk to the run's ``data.spatial.short_side``
  (the model sees a crop at that scale; TV-L1 at 720p costs 25x more);
* ``audio`` from the container's audio stream, when it has one;
* ``depth`` only when a folder of 16-bit PNGs is given (no video carries depth).

A model trained on other modalities (IMU, boxes, depth, named ones such as ``imu:acc``) takes a
sample folder or a generic manifest row instead (:mod:`actdistill.deploy.inputs`). Whatever is
asked for but unavailable is reported as missing and the model runs on the rest: the student is
trained to cope with any subset.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actdistill.data.batch import collate
from actdistill.data.records import DataError, DatasetIndex, Segment

STUDENT_ROWS = ("student", "baseline", "baseline_delta", "mmt", "late_fusion")


def run_kind(run_dir: str | Path) -> str:
    """``"fewshot"`` or ``"karmma"``: which pipeline wrote ``run_dir`` (from its ``config.yaml``).

    Why: the two share the run-directory layout but not their config schema, and building a KARMMA
    config from a few-shot run fails on its first unknown key (``cache_root``), which says nothing
    about what went wrong."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(path, f"cannot read the run's config: {e}") from None
    keys = set(cfg) if isinstance(cfg, dict) else set()
    if isinstance(cfg, dict) and cfg.get("job") in ("fewshot", "karmma"):
        return str(cfg["job"])
    return "fewshot" if {"heads", "backbone"} <= keys or "cache_root" in keys else "karmma"


def check_top(top: int) -> None:
    """``top`` must be a positive class count."""
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"--top-k must be a positive number of classes, got {top}")


def read_model_info(run_dir: Path) -> dict[str, Any]:
    """``model.json`` of a run directory, checked; a clear error when the run predates it."""
    from actdistill.data.datasets.video_folder import read_json
    from actdistill.engine.karmma import MODEL_INFO

    path = Path(run_dir) / MODEL_INFO
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found. Is {run_dir} a KARMMA run directory (runs written before model.json "
            "existed must be re-run)?")
    info = read_json(path)
    for key in ("modalities", "heads", "classes", "input_shapes"):
        if not isinstance(info, dict) or key not in info:
            raise DataError(path, f"model info lacks {key!r}")
    return info


@dataclass
class Prediction:
    """Top-k classes per task for one video, with what was used to get them."""

    video: str
    row: str
    used: list[str]
    missing: dict[str, str]
    top_k: dict[str, list[dict[str, Any]]]
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the support set of a few-shot prediction

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video, "row": self.row, "modalities": self.used, "missing": self.missing,
                "top_k": self.top_k, "seconds": self.seconds, **self.info}

    def format(self) -> str:
        lines = [f"{self.video}  ({self.row}; modalities: {'+'.join(self.used)})"]
        if "shots" in self.info:
            lines.append(f"  support: {self.info['way']} classes, {sum(self.info['shots'].values())} videos")
        for m, why in self.missing.items():
            lines.append(f"  missing {m}: {why}")
        for task, items in self.top_k.items():
            best = ", ".join(f"{it['label']} {100 * it['prob']:.1f}%" for it in items)
            lines.append(f"  {task:<6} {best}")
        return "\n".join(lines)


def video_segment(video: str | Path, uid: str | None = None, fps: float = 30.0) -> tuple[Segment, Any]:
    """A whole video file or frame folder as one unlabelled segment with its ``rgb`` source, and
    its :class:`~actdistill.data.datasets.video_folder.Media` (frame count, audio presence).
    ``fps`` numbers frame folders only (a container states its own rate)."""
    from actdistill.data.datasets.video_folder import describe_one, with_fps

    media = describe_one(video)
    rate = float(media.fps or fps)
    seg = Segment(uid=uid or Path(video).name, video_id=Path(video).stem, start_frame=1,
                  stop_frame=media.num_frames, fps=rate, sources={"rgb": with_fps(media.source, rate)})
    return seg, media


def top_k(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    p, idx = probs.topk(min(k, probs.numel()))
    return [{"label": labels[i] if i < len(labels) else str(i), "index": int(i), "prob": float(v)}
            for v, i in zip(p.tolist(), idx.tolist())]


def action_top_k(verb: torch.Tensor, noun: torch.Tensor, verbs: Sequence[str], nouns: Sequence[str],
                 k: int) -> list[dict[str, Any]]:
    """EPIC-style actions without an action head: ``P(verb, noun) = P(verb) P(noun)``, top-k pairs."""
    joint = verb[:, None] * noun[None, :]
    p, flat = joint.flatten().topk(min(k, joint.numel()))
    out = []
    for v, f in zip(p.tolist(), flat.tolist()):
        vi, ni = divmod(int(f), noun.numel())
        out.append({"label": f"{verbs[vi]} {nouns[ni]}", "index": [vi, ni], "prob": float(v)})
    return out


class Recognizer:
    """A trained row of a KARMMA run, ready for single videos. Build with :meth:`from_run`."""

    def __init__(self, model: nn.Module, cfg: Any, info: dict[str, Any], row: str, run_dir: Path,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.cfg = cfg
        self.info = info
        self.row = row
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.modalities: tuple[str, ...] = tuple(info["modalities"])
        self.heads: dict[str, int] = dict(info["heads"])
        self.classes: dict[str, list[str]] = {t: list(v) for t, v in info["classes"].items()}

    @classmethod
    def from_run(cls, run_dir: str | Path, row: str = "student", device: str = "cpu") -> Recognizer:
        """Load ``row`` (default the KARMMA student) from a run directory written by
        ``actdistill demo`` or ``actdistill karmma train``. ``row="teacher"`` loads the whole teacher
        (its frozen extractors are in ``teacher.safetensors``)."""
        from actdistill.config import build_config
        from actdistill.engine.checkpoint import load_weights
        from actdistill.engine.karmma import KarmmaConfig, build_row, build_teacher

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: run directory does not exist")
        if row not in (*STUDENT_ROWS, "teacher"):
            raise ValueError(f"unknown row {row!r}; choose one of {(*STUDENT_ROWS, 'teacher')}")
        if run_kind(run_dir) == "fewshot":
            raise ValueError(f"{run_dir}: a few-shot run (its methods classify against a support set, "
                             "use `actdistill predict RUN VIDEO --support DIR`); only the rows of a KARMMA run "
                             f"({', '.join(r for r in (*STUDENT_ROWS, 'teacher') if r != 'late_fusion')}) "
                             "load here and export to ONNX")
        cfg = build_config(KarmmaConfig, run_dir / "config.yaml")
        info = read_model_info(run_dir)
        weights = run_dir / f"{row}.safetensors"
        if not weights.exists():
            trained = sorted(p.stem for p in run_dir.glob("*.safetensors"))
            raise FileNotFoundError(f"{weights}: not found; this run has weights for {trained or 'no row'}")
        mods, heads = tuple(info["modalities"]), dict(info["heads"])
        shapes = info["input_shapes"]  # the encoders' in_channels when the config leaves them to the data
        if row == "teacher":  # frozen extractors + fusion, all in teacher.safetensors
            model = build_teacher(cfg, mods, heads, int(next(iter(shapes.values()))[0]), shapes)
        else:
            model = build_row(cfg, mods, heads, row, shapes)
        load_weights(model, weights)
        return cls(model, cfg, info, row, run_dir, device)

    # ------------------------------------------------------------------ input
    def segment(self, video: str | Path, modalities: Sequence[str] | None = None,
                depth: str | Path | None = None, fps: float = 30.0,
                uid: str | None = None) -> tuple[Segment, dict[str, str]]:
        """The one-segment record of ``video`` and the asked-for modalities it cannot provide.

        ``video`` is a video file or frame folder, a sample folder (one entry per modality, named
        after it) or a generic manifest (file or its folder; ``uid`` picks the row), see
        :mod:`actdistill.deploy.inputs`. ``fps`` numbers frame folders and IMU-only samples."""
        from actdistill.deploy.inputs import resolve

        want = list(self.modalities if modalities is None else modalities)
        unknown = [m for m in want if m not in self.modalities]
        if unknown:
            raise ValueError(f"this model takes {self.modalities}; cannot use {unknown}")
        return resolve(video, self.modalities, want, uid=uid, depth=depth, fps=fps,
                       short_side=int(self.cfg.data.spatial.short_side))

    def preprocess(self, video: str | Path, modalities: Sequence[str] | None = None,
                   depth: str | Path | None = None,
                   uid: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, str]]:
        """Model inputs ``{m: [1, V, T, ...]}``, presence ``[1, M]`` and the missing modalities."""
        from actdistill.data.builder import build_dataset

        seg, missing = self.segment(video, modalities, depth, uid=uid)
        index = DatasetIndex("video", "predict", [seg])
        # the run's own readers, test-time sampling and crop; an unreadable modality becomes missing
        ds = build_dataset(dataclasses.replace(self.cfg.data, on_error="skip"), "predict", False, index=index)
        sample = ds[0]
        for p in sample["problems"]:
            m = next((k for k, s in seg.sources.items() if s.path == p.path), None)
            missing[m or p.path] = p.message
        if sample.get("skipped"):
            raise DataError(video, f"no modality could be read: {missing}")
        batch = collate([sample], self.modalities)
        inputs = {m: batch[m] for m in self.modalities if m in batch}
        return inputs, batch["present"], missing

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def logits(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task averaged over the test views: ``inputs[m]`` is ``[B, V, T, ...]``."""
        views = next(iter(inputs.values())).shape[1]
        outs = []
        for v in range(views):
            x = {m: t[:, v].to(self.device) for m, t in inputs.items()}
            outs.append(self.model(x, present.to(self.device))["logits"])
        return {t: torch.stack([o[t] for o in outs]).mean(0).cpu() for t in outs[0]}

    def predict(self, video: str | Path, modalities: Sequence[str] | None = None, top: int = 5,
                depth: str | Path | None = None, uid: str | None = None) -> Prediction:
        """Top-``top`` verb/noun/action (or the run's tasks) for one sample: a video file or frame
        folder, a sample folder or a manifest row (``uid``), see :meth:`segment`."""
        check_top(top)
        t0 = time.perf_counter()
        inputs, present, missing = self.preprocess(video, modalities, depth, uid)
        t1 = time.perf_counter()
        logits = self.logits(inputs, present)
        t2 = time.perf_counter()
        probs = {t: x[0].softmax(-1) for t, x in logits.items()}
        out = {t: top_k(p, self.classes.get(t, []), top) for t, p in probs.items()}
        if "action" not in out and {"verb", "noun"} <= set(probs):
            out["action"] = action_top_k(probs["verb"], probs["noun"], self.classes["verb"],
                                         self.classes["noun"], top)
        used = [m for j, m in enumerate(self.modalities) if bool(present[0, j])]
        return Prediction(f"{video}#{uid}" if uid else str(video), self.row, used, missing, out,
                          {"preprocess": round(t1 - t0, 4), "model": round(t2 - t1, 4)})
