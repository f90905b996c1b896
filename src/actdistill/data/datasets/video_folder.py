"""Class-folder video datasets (Kinetics, UCF101, HMDB51, a user's own) and shared media helpers.

Layout: ``<root>/<class>/<video>.mp4|avi|webm|mkv|mov`` or ``<root>/<class>/<video>/<frame files>``
(frames in natural-sort order, any image extension). Classes are the class folders sorted by
name unless an official class list says otherwise (UCF101's ``classInd.txt`` is *not* Python's
sort order: ``JumpingJack`` comes before ``JumpRope`` there), because label indices must match the
published ones for reported numbers to be comparable.

Official split readers: UCF101 ``classInd.txt`` / ``trainlist0N.txt`` / ``testlist0N.txt`` and
HMDB51 ``<class>_test_splitN.txt`` (``<video> <0|1|2>``: 1 = train, 2 = test, 0 = unused).

The media helpers here (:func:`natural_key`, :func:`inspect_frame_folder`, :func:`probe_video`,
:func:`describe_media`, :func:`read_json`) are shared by the sibling adapters (SSv2, few-shot
splits, generic manifests), so that every adapter finds frames, counts them and reads container
headers the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actdistill.data.records import DataError, DatasetIndex, Problem, Segment, Source

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov")

_DIGITS = re.compile(r"(\d+)")
_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[^.]+)$")
_TRAILING_INT = re.compile(r"^(.*\S)\s+\d+$")


# --------------------------------------------------------------------------- shared helpers


def natural_key(s: str) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers by value: ``img_2.jpg`` before ``img_10.jpg``.

    Frame files are not always zero-padded, and a plain string sort would then shuffle time.
    Text parts compare case-insensitively; the original string breaks ties so the order is total.
    """
    parts = [int(t) if i % 2 else t.lower() for i, t in enumerate(_DIGITS.split(s))]
    return (parts, s)


def safe_name(name: str) -> bool:
    """Whether a listed class/video name is one plain path component.

    List and annotation files name folders under the dataset root; ``..``, separators or NUL
    bytes would let a bad line reach outside it (or make ``os.stat`` raise instead of reporting).
    """
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file is a :class:`DataError` naming the position."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(p, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(p, f"cannot read file: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(p, f"invalid JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}") from None
    except RecursionError:  # json raises this, not JSONDecodeError, for hostile nesting depth
        raise DataError(p, "invalid JSON: nested too deeply") from None


@dataclass(frozen=True)
class FrameFolder:
    """A folder of frame images: how frame number ``k`` (1-based) maps to a file name.

    ``template`` is set when the names follow one numbering pattern starting at 1; otherwise
    ``files`` lists the names in natural order (frame ``k`` is ``files[k - 1]``), which covers
    extractions numbered from 0 or with irregular names without renaming anything on disk.
    """

    path: str
    num_frames: int
    template: str
    files: tuple[str, ...] | None = None

    def to_source(self, kind: str = "frames", fps: float | None = None) -> Source:
        options: dict[str, Any] = {"files": list(self.files)} if self.files is not None else {}
        return Source(
            kind=kind,
            path=self.path,
            template=self.template,
            num_frames=self.num_frames,
            fps=fps,
            options=options,
        )


def list_images(folder: str | Path) -> list[str]:
    """Image file names in ``folder`` in natural order (raises ``OSError`` if unreadable)."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS and e.is_file()]
    names.sort(key=natural_key)
    return names


def infer_template(names: Sequence[str]) -> str | None:
    """The ``str.format`` template that produces ``names`` for frame numbers 1..n, if one does."""
    if not names:
        return None
    m = _NUMBERED.match(names[0])
    if m is None:
        return None
    prefix, digits, ext = m.groups()
    esc_prefix, esc_ext = (
        prefix.replace("{", "{{").replace("}", "}}"),
        ext.replace("{", "{{").replace("}", "}}"),
    )
    padded = len(digits) > 1 and digits.startswith("0")
    template = f"{esc_prefix}{{:0{len(digits)}d}}{esc_ext}" if padded else f"{esc_prefix}{{:d}}{esc_ext}"
    if all(template.format(i + 1) == n for i, n in enumerate(names)):
        return template
    return None


def inspect_frame_folder(folder: str | Path, template: str | None = None) -> FrameFolder:
    """Count the frames of one extracted video and work out how to address them.

    A given ``template`` is trusted after a cheap check (frames 1 and n exist), which keeps
    indexing 100k+ folders fast; otherwise the numbering is inferred from the listing.
    Raises :class:`DataError` when the folder is missing, unreadable or has no images.
    """
    p = Path(folder)
    try:
        names = list_images(p)
    except FileNotFoundError:
        raise DataError(p, "frame folder not found") from None
    except OSError as e:
        raise DataError(p, f"cannot list frame folder: {e}") from None
    n = len(names)
    if n == 0:
        raise DataError(p, "frame folder has no image files")
    if template is not None:
        try:
            first, last = template.format(1), template.format(n)
        except (IndexError, ValueError, KeyError):
            first = last = ""
        if first and not (safe_name(first) and safe_name(last)):
            # a template comes from a manifest column or a config option: it must name files *in*
            # the folder, or a row could make the readers decode files from anywhere on disk
            raise DataError(p, f"frame template {template!r} names {first!r}, not a file inside the folder")
        if first and (p / first).is_file() and (p / last).is_file():
            return FrameFolder(str(p), n, template)
    inferred = infer_template(names)
    if inferred is not None:
        return FrameFolder(str(p), n, inferred)
    return FrameFolder(str(p), n, "", tuple(names))


@dataclass(frozen=True)
class VideoInfo:
    """What a container header says about a video (no frame is decoded)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool


def probe_video(path: str | Path) -> VideoInfo:
    """Read frame count, rate, size and audio presence from the container header with PyAV.

    WebM (SSv2) carries no frame count, so it falls back to ``duration * fps``; readers clamp,
    so an estimate off by one frame is harmless. Raises :class:`DataError` for unreadable files.
    """
    import av  # deferred: PyAV is only needed when video files are indexed

    p = Path(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(p, "container has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            n = int(stream.frames or 0)
            if n <= 0 and fps > 0:
                if stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                elif container.duration:
                    seconds = container.duration / av.time_base
                else:
                    seconds = 0.0
                n = round(seconds * fps)
            width, height = stream.codec_context.width, stream.codec_context.height
            has_audio = bool(container.streams.audio)
    except FileNotFoundError:
        raise DataError(p, "video file not found") from None
    except DataError:
        raise
    except Exception as e:  # PyAV raises many FFmpeg error types; all mean "cannot read"
        raise DataError(p, f"cannot read video header: {e}") from None
    if fps <= 0:
        raise DataError(p, "video header has no frame rate")
    if n <= 0:
        raise DataError(p, "video has no frames (or no duration in its header)")
    return VideoInfo(str(p), n, fps, int(width), int(height), has_audio)


@dataclass(frozen=True)
class Media:
    """One RGB-like source (frame folder or video file) with what indexing learned about it."""

    source: Source
    num_frames: int
    fps: float | None  # container rate for videos; None for frame folders (rate unknown on disk)
    image_size: tuple[int, int] | None = None  # (W, H), from the container header
    has_audio: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def describe_one(path: str | Path, frame_template: str | None = None, frames_kind: str = "frames") -> Media:
    """Describe a frame folder or a video file; :class:`DataError` if it cannot be used."""
    p = Path(path)
    if p.is_dir():
        ff = inspect_frame_folder(p, frame_template)
        return Media(ff.to_source(frames_kind), ff.num_frames, None)
    if not p.exists():
        raise DataError(p, "not found")
    if p.suffix.lower() not in VIDEO_EXTS:
        raise DataError(p, f"unsupported file type {p.suffix!r} (expected a frame folder or {', '.join(VIDEO_EXTS)})")
    info = probe_video(p)
    src = Source(kind="video", path=str(p), num_frames=info.num_frames, fps=info.fps)
    return Media(src, info.num_frames, info.fps, (info.width, info.height), info.has_audio)


def describe_media(
    paths: Sequence[str | Path],
    frame_template: str | None = None,
    workers: int = 8,
    frames_kind: str = "frames",
) -> list[Media | DataError]:
    """:func:`describe_one` over many paths, in threads (listing and header reads wait on disk)."""

    def one(p: str | Path) -> Media | DataError:
        try:
            return describe_one(p, frame_template, frames_kind)
        except DataError as e:
            return e

    if workers <= 1 or len(paths) < 2:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def with_fps(src: Source, fps: float) -> Source:
    """``src`` with its numbering rate filled in when indexing could not read one from disk."""
    return src if src.fps is not None else dataclasses.replace(src, fps=float(fps))


def problem_kind(err: DataError) -> str:
    """Map a reader error onto a Problem kind (missing / empty / unreadable)."""
    msg = err.problem
    if "not found" in msg:
        return "missing"
    if "no image files" in msg or "no frames" in msg:
        return "empty"
    return "unreadable"


def flow_source(folder: str | Path, template: str | None = None) -> tuple[Source, list[Problem]]:
    """A ``uv_frames`` source for a folder holding ``u/`` and ``v/``; :class:`DataError` if unusable.

    The frame count is the smaller of the two (a mismatch is reported, not fatal: readers clamp).
    """
    p = Path(folder)
    if not p.is_dir():
        raise DataError(p, "flow folder not found")
    u = inspect_frame_folder(p / "u", template)
    v = inspect_frame_folder(p / "v", template)
    problems = []
    if u.num_frames != v.num_frames:
        problems.append(Problem(str(p), f"u/ has {u.num_frames} frames but v/ has {v.num_frames}", "malformed"))
    options: dict[str, Any] = {"files": list(u.files)} if u.files is not None else {}
    src = Source(
        kind="uv_frames",
        path=str(p),
        template=u.template,
        index_map="identity",
        num_frames=min(u.num_frames, v.num_frames),
        options=options,
    )
    return src, problems


# --------------------------------------------------------------------------- list / split readers


def read_video_list(path: str | Path, problems: list[Problem] | None = None) -> list[tuple[str, str]]:
    """Read ``<class>/<video>[ <int>]`` lines (UCF101 train/test lists, TRX few-shot splits).

    Blank lines are skipped, CRLF is tolerated and a trailing integer column (UCF101's 1-based
    label, or a label some split mirrors append) is dropped: labels come from the class order,
    not from the file. Class names may contain spaces (SSv2-Small templates); a leading path
    before the class is ignored. A malformed line is appended to ``problems`` when a list is
    given, otherwise it raises :class:`DataError` naming the file and line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(p, "split file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(p, f"cannot read split file: {e}") from None
    out: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _TRAILING_INT.match(line)
        if m is not None and "/" in m.group(1):
            line = m.group(1)
        line = line.replace("\\", "/").rstrip("/")
        cls_part, sep, video = line.rpartition("/")
        cls = cls_part.rpartition("/")[2].strip()
        video = video.strip()
        if not sep or not safe_name(cls) or not safe_name(video):
            msg = f"line {lineno}: expected '<class>/<video>', got {raw.strip()!r}"
            if problems is None:
                raise DataError(p, msg)
            problems.append(Problem(str(p), msg, "malformed"))
            continue
        out.append((cls, video))
    return out


def read_ucf101_class_index(path: str | Path) -> list[str]:
    """UCF101 ``classInd.txt`` (``<1-based index> <ClassName>`` per line) -> names in label order."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(p, "class index file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(p, f"cannot read class index: {e}") from None
    by_index: dict[int, str] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        parts = raw.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(p, f"line {lineno}: expected '<index> <class>', got {raw.strip()!r}")
        idx = int(parts[0])
        if idx in by_index:
            raise DataError(p, f"line {lineno}: index {idx} appears twice")
        by_index[idx] = parts[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DataError(p, "class indices are not 1..N without gaps")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d+)\.txt$")
_HMDB_ROLES = {"1": "train", "2": "test", "0": "unused"}


def read_hmdb51_splits(
    split_dir: str | Path, split_id: int = 1, problems: list[Problem] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """HMDB51 ``<class>_test_split<k>.txt`` files -> ``{"train"|"test"|"unused": [(class, video)]}``.

    Each line is ``<video>.avi <0|1|2>`` (often with a trailing space). Malformed lines go to
    ``problems`` (or raise when no list is given); no split file at all is a :class:`DataError`.
    """
    d = Path(split_dir)
    if not d.is_dir():
        raise DataError(d, "HMDB51 split folder not found")
    files = sorted(
        (m.group("cls"), d / name)
        for name in os.listdir(d)
        if (m := _HMDB_SPLIT.match(name)) and int(m.group("k")) == split_id
    )
    if not files:
        raise DataError(d, f"no '<class>_test_split{split_id}.txt' files")
    out: dict[str, list[tuple[str, str]]] = {"train": [], "test": [], "unused": []}
    for cls, f in files:
        try:
            lines = f.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f, f"cannot read split file: {e}") from None
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            parts = raw.split()
            if len(parts) != 2 or parts[1] not in _HMDB_ROLES or not safe_name(parts[0]):
                msg = f"line {lineno}: expected '<video> <0|1|2>', got {raw.strip()!r}"
                if problems is None:
                    raise DataError(f, msg)
                problems.append(Problem(str(f), msg, "malformed"))
                continue
            out[_HMDB_ROLES[parts[1]]].append((cls, parts[0]))
    return out


# --------------------------------------------------------------------------- loaders


def resolve_video(root: Path, class_folder: str, video: str) -> Path | None:
    """Find ``<root>/<class>/<video>`` as listed, as a frame folder named by its stem, or with any
    video extension (lists name ``x.avi`` while the disk may hold frames ``x/`` or ``x.mp4``)."""
    base = root / class_folder
    exact = base / video
    if exact.exists():
        return exact
    stem = video
    for ext in VIDEO_EXTS:
        if video.lower().endswith(ext):
            stem = video[: -len(ext)]
            break
    if (base / stem).is_dir():
        return base / stem
    for ext in VIDEO_EXTS:
        cand = base / f"{stem}{ext}"
        if cand.is_file():
            return cand
    return None


def _scan_class_folders(root: Path) -> list[tuple[str, str]]:
    """Every ``(class, entry)`` under ``root``: video files and sub-folders, in natural order."""
    entries: list[tuple[str, str]] = []
    for cls in sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")):
        with os.scandir(root / cls) as it:
            names = [
                e.name
                for e in it
                if not e.name.startswith(".") and (e.is_dir() or os.path.splitext(e.name)[1].lower() in VIDEO_EXTS)
            ]
        entries.extend((cls, n) for n in sorted(names, key=natural_key))
    return entries


def _video_stem(name: str) -> str:
    low = name.lower()
    for ext in VIDEO_EXTS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def load_video_folder(
    root: str | Path,
    split_file: str | Path | None = None,
    modalities: Sequence[str] = ("rgb",),
    *,
    entries: Iterable[tuple[str, str]] | None = None,
    classes: Sequence[str] | None = None,
    split: str = "all",
    name: str = "video_folder",
    fps: float | None = None,
    default_fps: float = 30.0,
    frame_template: str | None = None,
    flow_root: str | Path | None = None,
    flow_template: str | None = None,
    min_frames: int = 1,
    workers: int = 8,
) -> DatasetIndex:
    """Index a class-folder dataset: one :class:`Segment` per video, task ``"class"``.

    Without ``split_file``/``entries`` every video under ``root`` is indexed. ``split_file``
    holds ``<class>/<video>[ <label>]`` lines (UCF101 style); ``entries`` are ready
    ``(class, video)`` pairs from one of the official readers. ``classes`` fixes the label order
    (official class index); otherwise it is the class folders on disk plus those the list names,
    sorted by name, so train and test lists of one dataset share indices.

    Modalities: ``rgb`` (frames or video), ``audio`` (the video file, when it has an audio
    stream), ``flow`` (``<flow_root>/<class>/<video>/{u,v}/``). Bad videos are reported in
    ``problems`` and left out; a missing secondary modality is reported and omitted from that
    segment only. ``fps`` overrides the rate; frame folders otherwise get ``default_fps``.
    """
    root_p = Path(root)
    mods = tuple(modalities)
    unknown = set(mods) - {"rgb", "audio", "flow"}
    if unknown:
        raise ValueError(f"video_folder: unsupported modalities {sorted(unknown)} (use rgb, audio, flow)")
    if "rgb" not in mods:
        raise ValueError("video_folder: 'rgb' is required (it defines each video's frames)")
    if "flow" in mods and flow_root is None:
        raise ValueError("video_folder: modality 'flow' needs flow_root")
    if not root_p.is_dir():
        raise DataError(root_p, "dataset root not found")

    problems: list[Problem] = []
    if entries is not None:
        items = list(entries)
    elif split_file is not None:
        items = read_video_list(split_file, problems)
    else:
        items = _scan_class_folders(root_p)
    rows_read = len(items) + len(problems)  # the unparseable list lines are the only problems so far

    if classes is not None:
        class_list = list(classes)
    else:
        on_disk = {e.name for e in os.scandir(root_p) if e.is_dir() and not e.name.startswith(".")}
        class_list = sorted(on_disk | {c for c, _ in items})
    class_idx = {c: i for i, c in enumerate(class_list)}

    seen: set[str] = set()
    todo: list[tuple[str, str, Path]] = []
    for cls, video in items:
        uid = f"{cls}/{_video_stem(video)}"
        if not safe_name(cls) or not safe_name(video):
            problems.append(
                Problem(str(root_p), f"entry {cls!r}/{video!r} is not a plain class/video name", "malformed")
            )
            continue
        if cls not in class_idx:
            problems.append(
                Problem(str(root_p / cls / video), f"class {cls!r} is not in the class list", "unknown_label")
            )
            continue
        if uid in seen:
            problems.append(Problem(str(root_p / cls / video), "video listed twice; keeping the first", "malformed"))
            continue
        seen.add(uid)
        path = resolve_video(root_p, cls, video)
        if path is None:
            problems.append(Problem(str(root_p / cls / video), "video not found (no file or frame folder)", "missing"))
            continue
        todo.append((cls, video, path))

    described = describe_media([t[2] for t in todo], frame_template, workers)
    segments: list[Segment] = []
    for (cls, video, path), media in zip(todo, described):
        if isinstance(media, DataError):
            problems.append(Problem.from_error(media, problem_kind(media)))
            continue
        if media.num_frames < min_frames:
            problems.append(Problem(str(path), f"{media.num_frames} frames < min_frames={min_frames}", "empty"))
            continue
        stem = _video_stem(video)
        rate = fps or media.fps or default_fps
        sources: dict[str, Source] = {"rgb": with_fps(media.source, rate)}
        if "audio" in mods:
            if media.source.kind == "video" and media.has_audio:
                sources["audio"] = Source(kind="video", path=media.source.path)
            else:
                problems.append(Problem(str(path), "no audio stream for modality 'audio'", "missing"))
        if "flow" in mods and flow_root is not None:
            try:
                src, extra = flow_source(Path(flow_root) / cls / stem, flow_template)
                sources["flow"] = with_fps(src, rate)
                problems.extend(extra)
            except DataError as e:
                problems.append(Problem.from_error(e, problem_kind(e)))
        segments.append(
            Segment(
                uid=f"{cls}/{stem}",
                video_id=stem,
                start_frame=1,
                stop_frame=media.num_frames,
                fps=float(rate),
                labels={"class": class_idx[cls]},
                sources=sources,
                meta={"class_folder": cls, "class_name": readable_class_name(cls)},
            )
        )
    return DatasetIndex(name=name, split=split, segments=segments, classes={"class": class_list}, problems=problems,
                        rows_read=rows_read)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def readable_class_name(folder: str) -> str:
    """A class folder name as words for text prompts: ``brush_hair`` -> ``brush hair``,
    ``BlowingCandles`` -> ``blowing candles``; names that already have spaces are kept as they are
    (Kinetics, SSv2 templates)."""
    if " " in folder.strip():
        return " ".join(folder.split())
    words = folder.replace("_", " ")
    if " " not in words and any(c.islower() for c in words) and any(c.isupper() for c in words[1:]):
        words = _CAMEL.sub(" ", words).lower()
    return " ".join(words.split())


def load_ucf101(
    root: str | Path,
    split_dir: str | Path,
    split: str = "train",
    split_id: int = 1,
    modalities: Sequence[str] = ("rgb",),
    **kwargs: Any,
) -> DatasetIndex:
    """UCF101 with its official ``classInd.txt`` order and ``trainlist0N``/``testlist0N`` lists."""
    if split not in ("train", "test"):
        raise ValueError(f"UCF101 split must be 'train' or 'test', got {split!r}")
    d = Path(split_dir)
    class_list = read_ucf101_class_index(d / "classInd.txt")
    problems: list[Problem] = []
    items = read_video_list(d / f"{split}list{split_id:02d}.txt", problems)
    index = load_video_folder(
        root, modalities=modalities, entries=items, classes=class_list, split=split, name="ucf101", **kwargs
    )
    index.problems[:0] = problems
    return index


def load_hmdb51(
    root: str | Path,
    split_dir: str | Path,
    split: str = "train",
    split_id: int = 1,
    modalities: Sequence[str] = ("rgb",),
    **kwargs: Any,
) -> DatasetIndex:
    """HMDB51 from its official ``<class>_test_split<k>.txt`` files; classes sorted by name."""
    if split not in ("train", "test", "unused"):
        raise ValueError(f"HMDB51 split must be 'train', 'test' or 'unused', got {split!r}")
    problems: list[Problem] = []
    roles = read_hmdb51_splits(split_dir, split_id, problems)
    class_list = sorted({c for items in roles.values() for c, _ in items})
    index = load_video_folder(
        root,
        modalities=modalities,
        entries=roles[split],
        classes=class_list,
        split=split,
        name="hmdb51",
        **kwargs,
    )
    index.problems[:0] = problems
    return index
