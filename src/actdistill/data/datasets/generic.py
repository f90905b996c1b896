"""Generic multimodal format for a user's own data.

Bring your own videos and modalities without writing an adapter: put a manifest next to them.

Layout::

    <root>/manifest.csv        (or manifest.jsonl: one JSON object per line, same keys)
    <root>/classes.json        optional: {"<task>": ["class 0", "class 1", ...], ...}
    <root>/...                 the data, anywhere below <root>

Manifest columns (only ``uid`` is required):

=============== ===========================================================================
column          meaning
=============== ===========================================================================
``uid``         unique id of the segment (one row = one labelled stretch of one video)
``video_id``    the video the segment comes from (default: ``uid``)
``start_frame`` first frame, 1-based, inclusive, in the RGB numbering (default: 1)
``stop_frame``  last frame, inclusive (default: the number of frames of the rgb/depth/flow
                source, read from the folder or the video header)
``fps``         rate of the frame numbering, used to turn frames into seconds for audio and
                IMU (default: the rgb video's rate, else ``default_fps``)
``split``       e.g. ``train`` / ``validation`` / ``test``; rows are selected by it
                (``val`` and ``validation`` name the same split, see below)
task columns    one column per task (``label``, or ``verb`` and ``noun``, ...): a class name
                from ``classes.json`` or its integer index; empty = unlabelled for that task
``rgb``         frame folder or video file (.mp4 .avi .webm .mkv .mov)
``flow``        folder holding ``u/`` and ``v/`` frame folders
``audio``       .wav file, or a video file whose audio stream is used
``depth``       folder of 16-bit PNG frames, or a video file
``boxes``       JSON file of per-frame boxes
``imu``         CSV file of IMU samples (``timestamp`` in seconds, or ``timestamp_ms`` ...)
``<kind>:<name>`` a named modality of a kind above, e.g. ``imu:acc`` and ``imu:gyro`` for
                two sensors of one watch, ``audio:mic2``: read like its kind, but a modality
                of its own (own encoder, own presence, own place in the subsets)
``<m>_template`` optional ``str.format`` template for a frame folder of modality ``m``
                (e.g. ``img_{:05d}.jpg``); inferred from the file names when absent
``width``,      optional size in pixels of the image the boxes refer to (default: the rgb
``height``      video's size when rgb is a video)
``meta_*``,     free text (e.g. a narration) copied into ``Segment.meta`` (``meta_`` stripped)
``text``
=============== ===========================================================================

Paths are relative to ``<root>`` (absolute paths are accepted if they lie inside it). A path
that leaves ``<root>`` (``../``, or an absolute path elsewhere) rejects its row as
``malformed``: a manifest from elsewhere must not make the loader touch arbitrary files. The
check is on the written path, so data that ``<root>`` reaches through a symbolic link the user
made is still usable. An empty modality cell means the sample lacks that modality (robust
multimodal methods train on such samples); a path that does not exist is reported as
``missing`` and the row is kept without it. Rows with no usable source are dropped.

Task columns are the keys of ``classes.json``; any other column not listed above is then
copied into ``meta``. Without ``classes.json`` every unlisted column is a task, and its classes
are the sorted distinct values over *all* rows (so indices agree between splits), or ``0..max``
when every value is an integer.

Splits: rows are selected by their ``split`` cell. ``val`` and ``validation`` are one split
(selecting either picks rows marked with either), because the configs' default validation
split is ``validation`` while manifests often say ``val``, and rows silently vanishing from
training and from ``data summary`` is the worst way to find that out. :func:`manifest_layout`
lists the splits and modality columns a manifest really has (what ``data summary`` shows).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from actdistill.data.datasets.video_folder import (
    VIDEO_EXTS,
    describe_one,
    flow_source,
    problem_kind,
    read_json,
    with_fps,
)
from actdistill.data.modalities.base import modality_kind
from actdistill.data.records import DataError, DatasetIndex, Problem, Segment, Source

MODALITIES = ("rgb", "flow", "audio", "depth", "boxes", "imu")
SPLIT_ALIASES = {"val": "validation"}  # a manifest's split name -> the name configs and summaries use
RESERVED = frozenset(
    {"uid", "video_id", "start_frame", "stop_frame", "fps", "split", "width", "height", "text"}
    | set(MODALITIES)
    | {f"{m}_template" for m in MODALITIES}
)
_FRAME_COUNTING = ("rgb", "depth", "flow")  # modalities whose frame count can define stop_frame
# An integer class index as text. Not ``str.isdigit``: it accepts "--1" after lstrip("-") and
# superscripts such as "¹", on which int() then raises instead of the row being reported.
_INT_TEXT = re.compile(r"-?[0-9]+")


def modality_column(key: str) -> bool:
    """Whether a manifest column holds a modality's paths: a kind (``imu``) or a named modality
    of a kind (``imu:acc``). Such a column is never a task or free text."""
    kind, sep, name = key.partition(":")
    return kind in MODALITIES and (not sep or bool(name))


def _reserved(key: str) -> bool:
    """Columns with a meaning of their own (not tasks, not copied into ``meta``)."""
    if key in RESERVED or modality_column(key):
        return True
    return key.endswith("_template") and modality_column(key[: -len("_template")])


def split_name(name: str) -> str:
    """The canonical name of a manifest split (``val`` -> ``validation``; others unchanged)."""
    return SPLIT_ALIASES.get(name, name)


def _check_modalities(mods: Sequence[str]) -> None:
    bad = [m for m in mods if not modality_column(m)]
    if bad:
        raise ValueError(f"generic: unsupported modalities {bad} (use {', '.join(MODALITIES)}, or a named "
                         "modality <kind>:<name> of one of them, e.g. imu:acc)")


def manifest_layout(root: str | Path, manifest: str | Path | None = None) -> tuple[list[str], list[str]]:
    """The splits (canonical names, ``["all"]`` without a ``split`` column) and the modality
    columns (kinds and named ones, in the manifest's column order) of a manifest.

    Why: the adapter's registered splits and modalities are only the usual ones; a manifest may
    use ``holdout`` or ``imu:gyro``, and ``data summary`` must show what is there, not hide it.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise DataError(root_p, "dataset root not found")
    _, raw_rows = _read_manifest(root_p, Path(manifest) if manifest is not None else None)
    splits: dict[str, None] = {}
    columns: dict[str, None] = {}
    has_split = False
    for _, row in raw_rows:
        if isinstance(row, str):
            continue
        for k in row:
            if modality_column(k):
                columns.setdefault(k, None)
        if "split" in row:
            has_split = True
            if _cell(row.get("split")):
                splits.setdefault(split_name(_cell(row.get("split"))), None)
    usual = ("train", "validation", "test")
    ordered = [s for s in usual if s in splits] + sorted(s for s in splits if s not in usual)
    return (ordered if has_split else ["all"]), list(columns)


def _read_manifest(root: Path, manifest: Path | None) -> tuple[Path, Iterator[tuple[int, dict[str, Any] | str]]]:
    """Find the manifest and yield ``(row number, row dict | error text)``; rows are 1-based."""
    if manifest is None:
        for name in ("manifest.csv", "manifest.jsonl"):
            if (root / name).is_file():
                manifest = root / name
                break
        else:
            raise DataError(root / "manifest.csv", "manifest not found (also looked for manifest.jsonl)")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(manifest, "manifest not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(manifest, f"cannot read manifest: {e}") from None
    if manifest.suffix.lower() == ".jsonl":
        return manifest, _jsonl_rows(text)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as e:
        raise DataError(manifest, f"CSV syntax error in the header: {e}") from None
    if fieldnames is None or "uid" not in [f.strip() for f in fieldnames]:
        raise DataError(manifest, "CSV header must name a 'uid' column")
    return manifest, _csv_rows(reader, manifest)


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, f"invalid JSON at column {e.colno}: {e.msg}"
            continue
        except RecursionError:  # json raises this, not JSONDecodeError, for hostile nesting depth
            yield lineno, "JSON nested too deeply"
            continue
        yield lineno, obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"


def _csv_rows(reader: csv.DictReader[str], manifest: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Rows of a CSV manifest. A CSV syntax error (a field over the csv module's size limit, a
    stray NUL) leaves the rest of the file unparseable, so it is a :class:`DataError` naming the
    manifest and row, not a traceback from the csv module."""
    i = 0
    try:
        for i, row in enumerate(reader, 1):
            if None in row or any(v is None for v in row.values()):
                yield i, "wrong number of cells for the header"
                continue
            yield i, {k.strip(): v.strip() for k, v in row.items()}
    except csv.Error as e:
        raise DataError(manifest, f"CSV syntax error at row {i + 1}: {e}") from None


def _read_classes(path: Path) -> dict[str, list[str]]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, f"expected an object mapping task -> list of class names, got {type(data).__name__}")
    out: dict[str, list[str]] = {}
    for task, names in data.items():
        if not isinstance(names, list):
            raise DataError(path, f"field {task!r}: expected a list of class names, got {type(names).__name__}")
        for i, n in enumerate(names):
            if not isinstance(n, str):
                raise DataError(path, f"field {task!r}, item {i}: class name must be a string, got {n!r}")
        out[task] = list(names)
    return out


def _derive_classes(rows: list[dict[str, Any]], tasks: Sequence[str]) -> dict[str, list[str]]:
    """Classes per task from every row (all splits), so that indices agree between splits."""
    out: dict[str, list[str]] = {}
    for task in tasks:
        values = {_cell(r.get(task)) for r in rows} - {""}
        if values and all(_INT_TEXT.fullmatch(v) for v in values):
            top = max(int(v) for v in values)
            out[task] = [str(i) for i in range(top + 1)]
        else:
            out[task] = sorted(values)
    return out


def _cell(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if it stays inside ``root`` after normalising ``..``; else ``None``."""
    if "\x00" in rel:
        return None
    root_abs = os.path.normpath(os.path.abspath(root))
    cand = os.path.normpath(os.path.abspath(os.path.join(root_abs, rel)))
    if os.path.commonpath([root_abs, cand]) != root_abs:
        return None
    return Path(cand)


def _int_cell(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)  # tolerate "12.0" from spreadsheets, but not "12.5"
    except ValueError:
        f = float("nan")
    if not f.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(f)


def load_generic(
    root: str | Path,
    split: str | None,
    modalities: Sequence[str] | None = None,
    *,
    manifest: str | Path | None = None,
    default_fps: float = 30.0,
) -> DatasetIndex:
    """Index the rows of ``split`` (``None`` or ``"all"``: every row) of a generic manifest.

    ``modalities`` limits which path columns are used (default: all present, named ones such as
    ``imu:acc`` included). See the module docstring for the format. A missing manifest, a CSV
    without ``uid`` or a malformed ``classes.json`` raises :class:`DataError`; every bad row
    becomes a problem naming the row.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise DataError(root_p, "dataset root not found")
    if modalities is not None:
        _check_modalities(modalities)
    manifest_p, raw_rows = _read_manifest(root_p, Path(manifest) if manifest is not None else None)
    problems: list[Problem] = []
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, row in raw_rows:
        if isinstance(row, str):
            problems.append(Problem(str(manifest_p), f"row {n}: {row}", "malformed"))
        else:
            rows.append((n, row))

    all_keys = {k: None for _, r in rows for k in r}  # dict: first-seen column order
    if modalities is None:
        mods = tuple(MODALITIES) + tuple(k for k in all_keys if ":" in k and modality_column(k))
    else:
        mods = tuple(modalities)
    classes_path = root_p / "classes.json"
    if classes_path.is_file():
        classes = _read_classes(classes_path)
        tasks = list(classes)
    else:
        tasks = sorted(k for k in all_keys if not _reserved(k) and not k.startswith("meta_"))
        classes = _derive_classes([r for _, r in rows], tasks)
    class_idx = {t: {c: i for i, c in enumerate(names)} for t, names in classes.items()}
    if split not in (None, "all") and "split" not in all_keys and rows:
        raise DataError(manifest_p, f"no 'split' column, so split {split!r} cannot be selected (use split='all')")

    segments: list[Segment] = []
    seen: set[str] = set()
    rows_read = len(problems)  # unparseable rows (their split is unknown) count in every split
    for n, row in rows:
        if split not in (None, "all") and split_name(_cell(row.get("split"))) != split_name(split):
            continue
        rows_read += 1
        where = f"row {n}"
        uid = _cell(row.get("uid"))
        if not uid:
            problems.append(Problem(str(manifest_p), f"{where}: empty 'uid'", "malformed"))
            continue
        where = f"row {n} (uid {uid})"
        if uid in seen:
            problems.append(Problem(str(manifest_p), f"{where}: uid appears twice; keeping the first", "malformed"))
            continue
        seen.add(uid)
        seg = _build_segment(root_p, manifest_p, row, uid, where, mods, tasks, class_idx, default_fps, problems)
        if seg is not None:
            segments.append(seg)
    name = root_p.resolve().name or "generic"
    return DatasetIndex(name=name, split=split or "all", segments=segments, classes=classes, problems=problems,
                        rows_read=rows_read)


def _build_segment(
    root: Path,
    manifest: Path,
    row: dict[str, Any],
    uid: str,
    where: str,
    mods: Sequence[str],
    tasks: Sequence[str],
    class_idx: dict[str, dict[str, int]],
    default_fps: float,
    problems: list[Problem],
) -> Segment | None:
    """One manifest row -> a segment, or ``None`` after recording why not."""

    def bad(msg: str, kind: str = "malformed") -> None:
        problems.append(Problem(str(manifest), f"{where}: {msg}", kind))

    labels: dict[str, int] = {}
    for task in tasks:
        value = _cell(row.get(task))
        if not value:
            continue
        if value in class_idx[task]:
            labels[task] = class_idx[task][value]
        elif _INT_TEXT.fullmatch(value) and 0 <= int(value) < len(class_idx[task]):
            labels[task] = int(value)
        else:
            bad(f"{task} {value!r} is not a known class", "unknown_label")
            return None

    paths: dict[str, Path] = {}
    for m in mods:
        rel = _cell(row.get(m))
        if not rel:
            continue
        p = _inside(root, rel)
        if p is None:
            bad(f"{m} path {rel!r} resolves outside the dataset root {root}")
            return None
        paths[m] = p

    sources: dict[str, Source] = {}
    counts: dict[str, int] = {}
    video_fps: float | None = None
    image_size: tuple[int, int] | None = None
    for m, p in paths.items():
        if not p.exists():
            problems.append(Problem(str(p), f"{where}: {m} source not found", "missing"))
            continue
        template = _cell(row.get(f"{m}_template")) or None
        kind = modality_kind(m)
        try:
            if kind in ("rgb", "depth"):
                media = describe_one(p, template, "frames" if kind == "rgb" else "png16")
                sources[m], counts[m] = media.source, media.num_frames
                if kind == "rgb" and media.fps is not None and video_fps is None:  # rgb before rgb:<name>
                    video_fps, image_size = media.fps, media.image_size
            elif kind == "flow":
                sources[m], extra = flow_source(p, template)
                counts[m] = sources[m].num_frames or 0
                problems.extend(extra)
            else:
                sources[m] = _file_source(kind, p)
        except DataError as e:
            problems.append(Problem(e.path, f"{where}: {e.problem}", problem_kind(e)))

    box_mods = [m for m in sources if modality_kind(m) == "boxes"]
    if box_mods:
        try:
            w, h = _cell(row.get("width")), _cell(row.get("height"))
            size = (_int_cell(w, "width"), _int_cell(h, "height")) if w and h else image_size
        except ValueError as e:
            bad(str(e))
            return None
        if size is not None:
            for m in box_mods:
                b = sources[m]
                sources[m] = Source(kind=b.kind, path=b.path, options={**b.options, "image_size": size})

    if not sources:
        bad("no usable modality source", "empty")
        return None

    # the frame count of the first frame-counting source, kinds in _FRAME_COUNTING's order (rgb first)
    counting = sorted((m for m in counts if modality_kind(m) in _FRAME_COUNTING),
                      key=lambda m: (_FRAME_COUNTING.index(modality_kind(m)), m != modality_kind(m)))
    length = counts[counting[0]] if counting else None
    try:
        start_s, stop_s = _cell(row.get("start_frame")), _cell(row.get("stop_frame"))
        start = _int_cell(start_s, "start_frame") if start_s else 1
        if stop_s:
            stop = _int_cell(stop_s, "stop_frame")
        elif length is not None:
            stop = length
        else:
            raise ValueError("stop_frame is required when no rgb/depth/flow source gives the length")
        fps_s = _cell(row.get("fps"))
        try:
            fps = float(fps_s) if fps_s else (video_fps or default_fps)
        except ValueError:
            raise ValueError(f"fps must be a number, got {fps_s!r}") from None
    except ValueError as e:
        bad(str(e))
        return None
    if start < 1 or stop < start:
        bad(f"frame range [{start}, {stop}] is empty or not 1-based")
        return None
    if length is not None and start > length:
        bad(f"start_frame {start} is past the last frame ({length})")
        return None
    if not (fps > 0 and math.isfinite(fps)):  # "inf" parses as a float and would put every frame at t = 0
        bad(f"fps must be a positive finite number, got {fps}")
        return None

    sources = {m: with_fps(src, fps) if modality_kind(m) in _FRAME_COUNTING else src
               for m, src in sources.items()}
    meta: dict[str, Any] = {}
    for k, v in row.items():
        if k.startswith("meta_"):
            meta[k[5:]] = v
        elif k == "text" or (not _reserved(k) and k not in tasks):
            meta[k] = v
    return Segment(
        uid=uid,
        video_id=_cell(row.get("video_id")) or uid,
        start_frame=start,
        stop_frame=stop,
        fps=fps,
        labels=labels,
        sources=sources,
        meta=meta,
    )


def _file_source(modality: str, path: Path) -> Source:
    """Sources that are single files: audio (wav or a video's audio track), boxes, IMU."""
    ext = path.suffix.lower()
    if path.is_dir():
        raise DataError(path, f"{modality} must be a file, got a folder")
    if modality == "audio":
        if ext == ".wav":
            return Source(kind="wav", path=str(path))
        if ext in VIDEO_EXTS:
            return Source(kind="video", path=str(path))
        raise DataError(path, f"unsupported audio file {ext!r} (use .wav or a video file)")
    if modality == "boxes":
        if ext != ".json":
            raise DataError(path, f"boxes must be a .json file, got {ext!r}")
        return Source(kind="boxes_json", path=str(path))
    if ext != ".csv":
        raise DataError(path, f"imu must be a .csv file, got {ext!r}")
    return Source(kind="imu_csv", path=str(path))
