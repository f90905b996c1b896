"""Something-Something v2, read from the official label files as published.

- ``something-something-v2-labels.json`` (mirrors: ``labels.json``): template without brackets
  -> class index as a string (174 classes).
- ``something-something-v2-{train,validation}.json`` (mirrors: ``train.json`` ...): a list of
  ``{"id", "label", "template", "placeholders"}``; class =
  ``int(labels[template.replace("[", "").replace("]", "")])``.
- ``something-something-v2-test.json``: ``[{"id"}]`` only, so test segments have no labels.
- Videos ``<root>/<id>.webm`` or extracted frames ``<root>/<id>/img_00001.jpg``; the layout is
  detected once per dataset from what exists.
- Optional Something-Else boxes: ``<boxes_root>/<id>.json`` per video, or one JSON object keyed
  by video id (``boxes_root`` is then that file; it is not opened here, because the published
  files are gigabytes, so the reader looks the id up via ``Source.options["key"]``).

The annotation files are looked for in ``annotations`` (default: ``root``) and its ``labels/``
sub-folder, which is where the official label package unpacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from actdistill.data.datasets.video_folder import (
    describe_media,
    flow_source,
    problem_kind,
    read_json,
    safe_name,
    with_fps,
)
from actdistill.data.records import DataError, DatasetIndex, Problem, Segment, Source

SPLITS = ("train", "validation", "test")
MODALITIES = ("rgb", "flow", "boxes")
NUM_CLASSES = 174
_VIDEO_EXTS = (".webm", ".mp4")
_AUTO_SAMPLE = 64  # ids checked to detect the layout: enough to survive a few missing videos
#: frames assumed per video when the media are not read (``check_media=False``): about 4 s at the
#: published 12 fps (the clips run 2-6 s). Only the segment's ``stop_frame`` carries it.
ASSUMED_FRAMES = 48


def _find(ann_dir: Path, names: Sequence[str]) -> Path | None:
    for d in (ann_dir, ann_dir / "labels"):
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def template_key(template: str) -> str:
    """The labels-file key of a template: the template with its brackets removed."""
    return template.replace("[", "").replace("]", "")


def read_ssv2_labels(path: str | Path) -> dict[str, int]:
    """Parse the labels file into ``{template without brackets: class index}``.

    Indices must be integers (the file stores them as strings) forming 0..N-1, because the class
    list is rebuilt from them; anything else makes the split unusable and raises.
    """
    p = Path(path)
    data = read_json(p)
    if not isinstance(data, dict):
        raise DataError(p, f"expected a JSON object mapping templates to indices, got {type(data).__name__}")
    out: dict[str, int] = {}
    for key, value in data.items():
        try:
            idx = int(value)
        except (TypeError, ValueError):
            raise DataError(p, f"field {key!r}: class index {value!r} is not an integer") from None
        out[template_key(key)] = idx
    if sorted(out.values()) != list(range(len(out))):
        raise DataError(p, "class indices are not 0..N-1 without gaps or repeats")
    return out


def _detect_layout(root: Path, ids: Sequence[str]) -> tuple[str, str]:
    """``("video", ext)`` or ``("frames", "")`` from the first ids that exist on disk."""
    for vid in ids[:_AUTO_SAMPLE]:
        for ext in _VIDEO_EXTS:
            if (root / f"{vid}{ext}").is_file():
                return "video", ext
        if (root / vid).is_dir():
            return "frames", ""
    return "video", ".webm"


def load_ssv2(
    root: str | Path,
    annotations: str | Path | None = None,
    split: str = "train",
    modalities: Sequence[str] = ("rgb",),
    frames_layout: str = "auto",
    frame_template: str = "img_{:05d}.jpg",
    flow_root: str | Path | None = None,
    boxes_root: str | Path | None = None,
    fps: float = 12.0,
    *,
    flow_template: str | None = None,
    workers: int = 8,
    check_media: bool = True,
) -> DatasetIndex:
    """Index one SSv2 split: one whole-video :class:`Segment` per listed id, task ``"class"``.

    ``fps`` is used for frame folders (the published videos are about 12 fps); for video files
    the container's rate is used. Bad rows and missing videos become problems; a missing or
    malformed labels/split file raises :class:`DataError`. Segments carry ``template``,
    ``placeholders`` and ``label`` (the filled-in description) in ``meta`` for text prompts.

    ``check_media=False`` reads the label files alone (rows and labels validated as usual): every
    row becomes a segment with the sources the official layout names (see
    :func:`_declared_sources`), unverified, and :data:`ASSUMED_FRAMES` frames where the video's
    header or frame folder would otherwise give the count (``meta["num_frames_assumed"]``); ``root``
    need not exist. Why: ``actdistill karmma plan`` sizes a run before the 220k videos (and their
    flow and boxes) are downloaded, and without probing every one of them; nothing may decode
    such an index.
    """
    if split not in SPLITS:
        raise ValueError(f"SSv2 split must be one of {SPLITS}, got {split!r}")
    mods = tuple(modalities)
    if set(mods) - set(MODALITIES):
        raise ValueError(f"SSv2: unsupported modalities {sorted(set(mods) - set(MODALITIES))} (use {MODALITIES})")
    if "rgb" not in mods:
        raise ValueError("SSv2: 'rgb' is required (it defines each video's frames)")
    if "flow" in mods and flow_root is None:
        raise ValueError("SSv2: modality 'flow' needs flow_root")
    if "boxes" in mods and boxes_root is None:
        raise ValueError("SSv2: modality 'boxes' needs boxes_root")
    if frames_layout not in ("auto", "video", "frames"):
        raise ValueError(f"frames_layout must be auto, video or frames, got {frames_layout!r}")

    root_p = Path(root)
    if check_media and not root_p.is_dir():
        raise DataError(root_p, "dataset root not found")
    ann_dir = Path(annotations) if annotations is not None else root_p
    labels_names = ("something-something-v2-labels.json", "labels.json")
    labels_path = _find(ann_dir, labels_names)
    labels: dict[str, int] | None = None
    if labels_path is not None:
        labels = read_ssv2_labels(labels_path)
    elif split != "test":
        raise DataError(ann_dir / labels_names[0], "labels file not found (also looked for labels.json)")
    split_names = (f"something-something-v2-{split}.json", f"{split}.json")
    split_path = _find(ann_dir, split_names)
    if split_path is None:
        raise DataError(ann_dir / split_names[0], f"split file not found (also looked for {split_names[1]})")
    rows = read_json(split_path)
    if not isinstance(rows, list):
        raise DataError(split_path, f"expected a JSON list of videos, got {type(rows).__name__}")

    classes = sorted(labels, key=labels.__getitem__) if labels is not None else []
    problems: list[Problem] = []
    if labels is not None and len(labels) != NUM_CLASSES:
        problems.append(
            Problem(
                str(labels_path),
                f"{len(labels)} classes (the official release has {NUM_CLASSES})",
                "malformed",
            )
        )

    parsed = _parse_rows(rows, split_path, labels, split != "test", problems)
    if not check_media:
        declared = [
            _segment(
                row,
                _declared_sources(root_p, row["id"], mods, frames_layout, frame_template, flow_root, boxes_root,
                                  flow_template, fps),
                ASSUMED_FRAMES,
                fps,
            )
            for row in parsed
        ]
        for seg in declared:
            seg.meta["num_frames_assumed"] = True
        return DatasetIndex(name="ssv2", split=split, segments=declared, classes={"class": classes},
                            problems=problems, rows_read=len(rows))
    ids = [r["id"] for r in parsed]
    if frames_layout == "auto":
        layout, ext = _detect_layout(root_p, ids)
    else:
        layout = frames_layout
        ext = _detect_layout(root_p, ids)[1] if layout == "video" else ""
        ext = ext or ".webm"

    todo: list[tuple[dict[str, Any], Path]] = []
    for row in parsed:
        rgb = root_p / (row["id"] if layout == "frames" else f"{row['id']}{ext}")
        if not rgb.exists():
            what = "frame folder" if layout == "frames" else "video file"
            problems.append(Problem(str(rgb), f"{what} not found", "missing"))
            continue
        todo.append((row, rgb))

    template = frame_template if layout == "frames" else None
    described = describe_media([t[1] for t in todo], template, workers)
    boxes_file = Path(boxes_root) if boxes_root is not None and Path(boxes_root).is_file() else None
    if "boxes" in mods and boxes_root is not None and boxes_file is None and not Path(boxes_root).is_dir():
        problems.append(Problem(str(boxes_root), "boxes folder/file not found", "missing"))

    segments: list[Segment] = []
    for (row, _rgb), media in zip(todo, described):
        if isinstance(media, DataError):
            problems.append(Problem.from_error(media, problem_kind(media)))
            continue
        vid = row["id"]
        rate = float(media.fps or fps)
        sources: dict[str, Source] = {"rgb": with_fps(media.source, rate)}
        if "flow" in mods and flow_root is not None:
            try:
                src, extra = flow_source(Path(flow_root) / vid, flow_template or frame_template)
                sources["flow"] = with_fps(src, rate)
                problems.extend(extra)
            except DataError as e:
                problems.append(Problem.from_error(e, problem_kind(e)))
        if "boxes" in mods and boxes_root is not None:
            size = media.image_size or _first_frame_size(media.source)
            box = _boxes_source(Path(boxes_root), boxes_file, vid, size)
            if isinstance(box, Problem):
                problems.append(box)
            elif box is not None:
                sources["boxes"] = box
        segments.append(_segment(row, sources, media.num_frames, rate))
    return DatasetIndex(name="ssv2", split=split, segments=segments, classes={"class": classes}, problems=problems,
                        rows_read=len(rows))


def _segment(row: dict[str, Any], sources: dict[str, Source], num_frames: int, fps: float) -> Segment:
    """The whole-video segment of one parsed row (text fields kept in ``meta`` for prompts)."""
    meta: dict[str, Any] = {k: row[k] for k in ("template", "placeholders", "label") if k in row}
    if "template" in row:
        meta["class_name"] = template_key(row["template"])
    return Segment(
        uid=row["id"],
        video_id=row["id"],
        start_frame=1,
        stop_frame=num_frames,
        fps=fps,
        labels={"class": row["class"]} if "class" in row else {},
        sources=sources,
        meta=meta,
    )


def _declared_sources(
    root: Path,
    vid: str,
    modalities: Sequence[str],
    frames_layout: str,
    frame_template: str,
    flow_root: str | Path | None,
    boxes_root: str | Path | None,
    flow_template: str | None,
    fps: float,
) -> dict[str, Source]:
    """Where the official layout puts each modality of ``vid``, not checked on disk.

    RGB is the released ``<root>/<id>.webm`` unless ``frames_layout="frames"`` names extracted
    frames (``auto`` cannot look, so it assumes the release); flow is ``<flow_root>/<id>/{u,v}/``;
    boxes are one file keyed by id when ``boxes_root`` is a ``.json`` file (or an existing file),
    else ``<boxes_root>/<id>.json``. No frame counts and no box image sizes: they are on disk only.
    """
    where: dict[str, Source] = {}
    if frames_layout == "frames":
        where["rgb"] = Source(kind="frames", path=str(root / vid), template=frame_template, fps=fps)
    else:
        where["rgb"] = Source(kind="video", path=str(root / f"{vid}{_VIDEO_EXTS[0]}"), fps=fps)
    if "flow" in modalities and flow_root is not None:
        where["flow"] = Source(kind="uv_frames", path=str(Path(flow_root) / vid),
                               template=flow_template or frame_template, fps=fps)
    if "boxes" in modalities and boxes_root is not None:
        b = Path(boxes_root)
        if b.suffix.lower() == ".json" or b.is_file():
            where["boxes"] = Source(kind="boxes_json", path=str(b), options={"key": vid})
        else:
            where["boxes"] = Source(kind="boxes_json", path=str(b / f"{vid}.json"))
    return {m: src for m, src in where.items() if m in modalities}


def _parse_rows(
    rows: list[Any], path: Path, labels: dict[str, int] | None, labelled: bool, problems: list[Problem]
) -> list[dict[str, Any]]:
    """Validate split rows; each bad row becomes a problem naming its index and field."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(Problem(str(path), f"item {i}: expected an object, got {type(row).__name__}", "malformed"))
            continue
        vid = row.get("id")
        if isinstance(vid, int) and not isinstance(vid, bool):
            vid = str(vid)
        if not isinstance(vid, str) or not vid.strip() or not safe_name(vid):
            problems.append(
                Problem(str(path), f"item {i}: field 'id' must be a video id string, got {vid!r}", "malformed")
            )
            continue
        if vid in seen:
            problems.append(Problem(str(path), f"item {i}: id {vid} appears twice; keeping the first", "malformed"))
            continue
        rec: dict[str, Any] = {"id": vid}
        if labelled:
            template = row.get("template")
            if not isinstance(template, str):
                problems.append(
                    Problem(
                        str(path),
                        f"item {i} (id {vid}): field 'template' must be a string, got {template!r}",
                        "malformed",
                    )
                )
                continue
            assert labels is not None
            key = template_key(template)
            if key not in labels:
                problems.append(
                    Problem(
                        str(path),
                        f"item {i} (id {vid}): template {template!r} is not in the labels file",
                        "unknown_label",
                    )
                )
                continue
            placeholders = row.get("placeholders", [])
            if not isinstance(placeholders, list) or not all(isinstance(x, str) for x in placeholders):
                problems.append(
                    Problem(
                        str(path),
                        f"item {i} (id {vid}): field 'placeholders' must be a list of strings",
                        "malformed",
                    )
                )
                continue
            label = row.get("label", "")
            if not isinstance(label, str):
                problems.append(Problem(str(path), f"item {i} (id {vid}): field 'label' must be a string", "malformed"))
                continue
            rec.update(template=template, placeholders=placeholders, label=label, **{"class": labels[key]})
        seen.add(vid)
        out.append(rec)
    return out


def _first_frame_size(src: Source) -> tuple[int, int] | None:
    """(W, H) of a frame folder's first image, read from its header only.

    Assumes the frames were extracted at the videos' native size, which is what the published
    Something-Else boxes are drawn on; frames resized at extraction would need the reader's own
    ``image_size``.
    """
    if src.kind != "frames":
        return None
    files = src.options.get("files")
    name = files[0] if files else src.template.format(1)
    try:
        with Image.open(Path(src.path) / name) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, ValueError):
        return None


def _boxes_source(
    boxes_root: Path, boxes_file: Path | None, vid: str, image_size: tuple[int, int] | None
) -> Source | Problem | None:
    """Something-Else boxes for one video: its own JSON file, or its key in one big JSON object.

    ``image_size`` (W, H) is what the box reader normalises pixel coordinates by; SSv2 widths
    vary per video, so it is recorded per video (from the container, or the first frame).
    """
    options: dict[str, Any] = {"image_size": image_size} if image_size is not None else {}
    if boxes_file is not None:
        return Source(kind="boxes_json", path=str(boxes_file), options={**options, "key": vid})
    if not boxes_root.is_dir():
        return None  # reported once by the caller
    per_video = boxes_root / f"{vid}.json"
    if not per_video.is_file():
        return Problem(str(per_video), "boxes file not found", "missing")
    return Source(kind="boxes_json", path=str(per_video), options=options)
