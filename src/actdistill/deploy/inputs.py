"""What ``actdistill predict`` reads: one sample, for the modalities of the run's model.

A model trained on IMU, depth or boxes cannot be fed a video, so the input is one of:

* a **video file or frame folder**: ``rgb`` from its frames; ``flow`` computed from them (TV-L1,
  at the model's scale); ``audio`` from the container's audio stream; ``depth`` from ``--depth``;
* a **sample folder**: one entry per modality, named after it: ``rgb.mp4`` or ``rgb/`` (frames),
  ``flow/`` (``u/`` and ``v/``), ``audio.wav``, ``depth/`` (16-bit PNGs), ``boxes.json``,
  ``imu.csv``; a named modality ``imu:acc`` is ``imu:acc.csv`` (or ``imu_acc.csv``);
* a **manifest row** of the generic format (:mod:`actdistill.data.datasets.generic`): a
  ``manifest.csv`` / ``manifest.jsonl`` file, or the folder holding it, and ``--uid`` for the row
  (not needed when the manifest has one row). Its cells give each modality's path, relative to the
  manifest's folder, and may set ``start_frame``, ``stop_frame`` and ``fps``.

Every modality is keyed by its name and read later by the run's reader for its kind
(:func:`~actdistill.data.modalities.base.modality_kind`), exactly as in training, which is why a
sample folder and a manifest row go through the generic adapter's own row builder. A run
modality the input lacks is reported as missing with the reason; flow and audio are still derived
from an ``rgb`` video when the input gives them no file of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actdistill.data.modalities.base import modality_kind
from actdistill.data.records import DataError, Segment, Source

MANIFESTS = ("manifest.csv", "manifest.jsonl")


def entry_key(entry: Path) -> str:
    """The modality name a sample-folder entry stands for: ``imu.csv`` -> ``imu``, ``rgb/`` -> ``rgb``."""
    return entry.name if entry.is_dir() else entry.name.split(".", 1)[0]


def sample_entries(folder: Path, modalities: Sequence[str]) -> dict[str, Path]:
    """The entries of a sample folder that stand for ``modalities`` (``imu:acc`` may be ``imu_acc``)."""
    want = {alias: m for m in modalities for alias in (m, m.replace(":", "_"))}
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        m = want.get(entry_key(entry))
        if m is not None and m not in found:
            found[m] = entry
    return found


def is_sample_folder(folder: Path, modalities: Sequence[str]) -> bool:
    """A folder with an entry named after one of ``modalities`` or a modality kind (not a frame folder)."""
    from actdistill.data.datasets.generic import MODALITIES

    if not folder.is_dir():
        return False
    names = {*modalities, *(m.replace(":", "_") for m in modalities), *MODALITIES}
    return any(entry_key(e) in names for e in folder.iterdir() if not e.name.startswith("."))


def manifest_of(path: Path) -> Path | None:
    """``path`` itself when it is a manifest file, the manifest inside it when it is a folder, else None."""
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        return path
    if path.is_dir():
        return next((path / n for n in MANIFESTS if (path / n).is_file()), None)
    return None


def manifest_row(manifest: Path, uid: str | None) -> dict[str, Any]:
    """Row ``uid`` of a generic manifest (the only row when ``uid`` is None)."""
    from actdistill.data.datasets.generic import _read_manifest

    _, raw = _read_manifest(manifest.parent, manifest)
    rows = []
    for n, row in raw:
        if isinstance(row, str):
            if uid is None:
                raise DataError(manifest, f"row {n}: {row}")
            continue
        rows.append(row)
    if uid is None:
        if len(rows) != 1:
            some = ", ".join(str(r.get("uid", "")) for r in rows[:3])
            raise DataError(manifest, f"{len(rows)} rows; choose one with --uid UID (e.g. {some})" if rows
                            else "no rows")
        return rows[0]
    for row in rows:
        if str(row.get("uid", "")).strip() == uid:
            return row
    raise DataError(manifest, f"no row with uid {uid!r}")


def _imu_frames(path: Path, fps: float) -> int:
    """Frames a CSV's recording spans at ``fps``: the length of an IMU-only sample."""
    from actdistill.data.modalities.imu import parse_imu_csv

    t = parse_imu_csv(path).times
    return max(1, int((float(t[-1]) - float(t[0])) * fps) + 1)


def row_segment(root: Path, where: Path, row: dict[str, Any], modalities: Sequence[str],
                default_fps: float) -> tuple[Segment, dict[str, str]]:
    """A segment of ``row`` (a manifest row, or a sample folder written as one) for the modalities
    it has cells for, and the reasons the others are missing. Built by the generic adapter's own
    row builder, so predict reads a row exactly as training indexed it."""
    from actdistill.data.datasets.generic import _build_segment, _cell

    have = [m for m in modalities if _cell(row.get(m))]
    missing = {m: f"{where} gives no {m}" for m in modalities if m not in have}
    if not have:
        raise DataError(where, f"gives none of the model's modalities {list(modalities)}")
    row = dict(row)
    counting = [m for m in have if modality_kind(m) in ("rgb", "depth", "flow")]
    imu = [m for m in have if modality_kind(m) == "imu"]
    if not counting and imu and not _cell(row.get("stop_frame")):  # the recording gives the length
        fps = float(_cell(row.get("fps")) or default_fps)
        path = Path(_cell(row.get(imu[0])))
        row["stop_frame"] = str(_imu_frames(path if path.is_absolute() else root / path, fps))
    problems: list[Any] = []
    uid = _cell(row.get("uid")) or where.name
    seg = _build_segment(root, where, row, uid, f"{where.name}", have, [], {}, default_fps, problems)
    for p in problems:  # a named file that cannot be used: missing, with the reason
        m = next((k for k in have if _cell(row.get(k)) and Path(p.path).name == Path(_cell(row[k])).name), None)
        if seg is None or m is None:
            raise DataError(p.path, p.message)
        missing[m] = p.message
    if seg is None:
        raise DataError(where, "no usable modality")
    return seg, missing


def video_rgb(modalities: Sequence[str]) -> str | None:
    """The run's modality that a video's frames are: its first of kind ``rgb``."""
    return next((m for m in modalities if modality_kind(m) == "rgb"), None)


def derive_from_video(seg: Segment, want: Sequence[str], missing: dict[str, str], depth: str | Path | None,
                      short_side: int | None, rgb: Source | None = None) -> Segment:
    """Fill the modalities ``want`` still lacks from the rgb video (``rgb``, default ``seg``'s first
    source of kind rgb): TV-L1 flow computed at the model's scale (``short_side``), the container's
    audio stream, ``--depth`` PNGs."""
    from actdistill.data.datasets.video_folder import describe_one, inspect_frame_folder

    sources = dict(seg.sources)
    if rgb is None:
        rgb = next((s for m, s in sources.items() if modality_kind(m) == "rgb"), None)
    media = describe_one(rgb.path, rgb.template) if rgb is not None else None
    for m in want:
        if m in sources:
            continue
        kind = modality_kind(m)
        if kind == "flow" and rgb is not None and media is not None:
            if media.num_frames < 2:
                missing[m] = "flow needs at least two frames"
            else:
                sources[m] = Source("from_rgb", rgb.path, num_frames=media.num_frames - 1, fps=seg.fps,
                                    options={"rgb_source": rgb, "short_side": short_side})
                missing.pop(m, None)
        elif kind == "audio" and rgb is not None and media is not None:
            if rgb.kind == "video" and media.has_audio:
                sources[m] = Source("video", rgb.path, fps=seg.fps)
                missing.pop(m, None)
            elif m not in missing:
                missing[m] = "the video has no audio stream" if rgb.kind == "video" else "a frame folder has no audio"
        elif kind == "depth" and depth is not None:
            sources[m] = inspect_frame_folder(depth).to_source("png16", fps=seg.fps)
            missing.pop(m, None)
        elif m not in missing:
            missing[m] = ("no depth folder given (--depth DIR of 16-bit PNGs)" if kind == "depth" else
                          f"cannot derive {m} from a video: give a sample folder or a manifest row with it")
    return dataclasses.replace(seg, sources=sources)


def resolve(path: str | Path, model_modalities: Sequence[str], want: Sequence[str], *, uid: str | None = None,
            depth: str | Path | None = None, fps: float = 30.0,
            short_side: int | None = None) -> tuple[Segment, dict[str, str]]:
    """The one-segment record of ``path`` (video, frame folder, sample folder or manifest row) with
    sources for ``want`` where it has them, and the reasons for those it lacks."""
    from actdistill.data.datasets.video_folder import describe_one, with_fps

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: input does not exist")
    manifest = manifest_of(p)
    rgb: Source | None = None
    if manifest is not None:
        seg, missing = row_segment(manifest.parent, manifest, manifest_row(manifest, uid), model_modalities, fps)
    elif is_sample_folder(p, model_modalities):
        row = {m: str(e.name) for m, e in sample_entries(p, model_modalities).items()}
        seg, missing = row_segment(p, p, {"uid": p.name, **row}, model_modalities, fps)
        for m in missing:
            if missing[m].endswith(f"gives no {m}"):
                missing[m] = f"no entry named {m} in the sample folder {p}"
    else:
        rgb_name = video_rgb(model_modalities)
        if rgb_name is None:
            raise DataError(p, f"this model takes {list(model_modalities)}, none of them a video: give a "
                               "sample folder (one entry per modality, e.g. imu.csv) or a manifest row")
        media = describe_one(p)
        rate = float(media.fps or fps)
        rgb = with_fps(media.source, rate)
        seg = Segment(uid=uid or p.name, video_id=p.stem, start_frame=1, stop_frame=media.num_frames, fps=rate,
                      sources={rgb_name: rgb})
        missing = {}
    seg = derive_from_video(seg, want, missing, depth, short_side, rgb)
    sources = {m: s for m, s in seg.sources.items() if m in want}
    missing = {m: why for m, why in missing.items() if m in want}
    if not sources:
        raise DataError(p, f"none of the modalities {list(want)} is available ({missing})")
    return dataclasses.replace(seg, sources=sources), missing
