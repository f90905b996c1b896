"""EPIC-KITCHENS-100, read exactly as released (annotations v1.1 + the official frame layout).

Annotations: ``EPIC_100_{train,validation}.csv`` (15 columns), ``EPIC_100_test_timestamps.csv``
(8 columns, no labels), the verb/noun class CSVs, the video-info CSV, the tail-class and
unseen-participant CSVs. Pickled copies of the CSVs are ignored on purpose (never unpickle).

Media under ``root``::

    P01/rgb_frames/P01_01/frame_0000000001.jpg   (or P01/rgb_frames/P01_01.tar)
    P01/flow_frames/P01_01/{u,v}/frame_0000000001.jpg
    P01/videos/P01_01.MP4                        (audio lives only here)
    P01/depth_frames/P01_01/frame_0000000001.png (not official: this project's depth layout)

RGB frames were extracted at 60 fps for ``PXX_YY`` (2018) videos and 50 fps for ``PXX_1YY``
(2020); flow is at half the RGB rate for 2018 videos and 1:1 for 2020 ones
(:func:`actdistill.data.sampling.epic_flow_index`). Splits: ``train``, ``validation``, ``test``
and the seeded 90/10 "EPIC*" split of train, ``train_star`` / ``val_star``; ``heldout`` reads an
``EPIC_100_heldout.csv`` in the validation format, which the official release lacks and the
synthetic set writes (its labelled held-out split). Action classes are
the (verb, noun) pairs seen in train, indexed in sorted order, so the index is the same
whichever split is loaded.
"""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actdistill.data.records import DataError, DatasetIndex, Problem, Segment, Source
from actdistill.data.sampling import is_epic_2018

COLUMNS = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
    "noun_class", "all_nouns", "all_noun_classes",
)  # fmt: skip
TEST_COLUMNS = COLUMNS[:8]
SPLIT_FILES = {
    "train": "EPIC_100_train.csv",
    "validation": "EPIC_100_validation.csv",
    "test": "EPIC_100_test_timestamps.csv",
    "heldout": "EPIC_100_heldout.csv",  # not in the official release: the synthetic set's labelled held-out split
    "train_star": "EPIC_100_train.csv",
    "val_star": "EPIC_100_train.csv",
}
SPLITS = tuple(SPLIT_FILES)
MODALITIES = ("rgb", "flow", "audio", "depth")
_VIDEO_ID = re.compile(r"^P\d{2,}_\d{2,3}$")
# participant_id names the folder media are looked up in (``root/<participant>/rgb_frames``), so a
# row must not be able to point it anywhere else (``../..``, an absolute path).
_PARTICIPANT_ID = re.compile(r"P\d{2,}")
_TIMESTAMP = re.compile(r"^\d{2}:\d{2}:\d{2}(\.\d+)?$")


class UnknownClassError(ValueError):
    """A row whose class id is outside the class list: reported as ``unknown_label``, while every
    other bad row (non-integer class ids included) is ``malformed``."""


@dataclass(frozen=True)
class EpicRow:
    line: int
    values: dict[str, str]


def find_annotations(root: Path, annotations: str | Path | None) -> Path:
    """The annotations folder: given, or ``root/annotations``, or ``root`` itself."""
    if annotations is not None:
        return Path(annotations)
    for cand in (root / "annotations", root / "epic-kitchens-100-annotations", root):
        if (cand / "EPIC_100_train.csv").exists() or (cand / "EPIC_100_validation.csv").exists():
            return cand
    return root / "annotations"


def read_csv_rows(path: Path, required: tuple[str, ...]) -> tuple[list[EpicRow], list[Problem]]:
    """Read a CSV with a header; rows with the wrong number of fields become problems."""
    if not path.is_file():
        raise DataError(path, "annotation file not found")
    problems: list[Problem] = []
    rows: list[EpicRow] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(path, "file is empty (no header row)") from None
            header = [h.strip().lstrip("\ufeff") for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(path, f"missing columns {missing}; header is {header}")
            for values in reader:
                line = reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    problems.append(
                        Problem(str(path), f"line {line}: {len(values)} fields, expected {len(header)}", "malformed")
                    )
                    continue
                rows.append(EpicRow(line, dict(zip(header, values))))
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise DataError(path, f"CSV syntax error: {err}") from None
    return rows, problems


def read_class_csv(path: Path) -> list[str]:
    """``id,key,instances,category`` -> class keys indexed by id (ids must be 0..n-1)."""
    rows, problems = read_csv_rows(path, ("id", "key"))
    if problems:
        raise DataError(path, problems[0].message)
    keys: dict[int, str] = {}
    for r in rows:
        try:
            keys[int(r.values["id"])] = r.values["key"]
        except ValueError:
            raise DataError(path, f"line {r.line}: id {r.values['id']!r} is not an integer") from None
    if sorted(keys) != list(range(len(keys))):
        raise DataError(path, "class ids are not 0..n-1")
    return [keys[i] for i in range(len(keys))]


def _read_id_column(path: Path, column: str) -> set[str]:
    if not path.is_file():
        return set()
    rows, _ = read_csv_rows(path, (column,))
    return {r.values[column].strip() for r in rows}


def parse_timestamp(text: str) -> float:
    """``HH:MM:SS.ff`` -> seconds."""
    if not _TIMESTAMP.match(text):
        raise ValueError(f"timestamp {text!r} is not HH:MM:SS.ff")
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def rgb_fps(video_id: str) -> float:
    """Extraction rate of the released RGB frames: 60 fps (2018 videos) or 50 fps (2020)."""
    return 60.0 if is_epic_2018(video_id) else 50.0


def star_split(num_rows: int, seed: int, val_fraction: float) -> np.ndarray:
    """Boolean mask of rows that go to ``val_star`` in the seeded EPIC* split of train."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_rows)
    n_val = round(num_rows * val_fraction)
    mask = np.zeros(num_rows, dtype=bool)
    mask[perm[:n_val]] = True
    return mask


class _VideoSources:
    """Finds and caches each video's sources (one filesystem look per video, not per segment)."""

    def __init__(self, root: Path, depth_dirname: str, frames: str) -> None:
        self.root = root
        self.depth_dirname = depth_dirname
        self.frames = frames
        # keyed by (participant, video): media live under root/<participant>/, so one row naming the
        # wrong participant must not decide where every other row of that video looks
        self._cache: dict[tuple[str, str], tuple[dict[str, Source], list[Problem], int | None]] = {}

    @staticmethod
    def _count(folder: Path, suffix: str) -> int:
        return sum(1 for e in folder.iterdir() if e.name.endswith(suffix))

    def get(self, participant: str, video_id: str, modalities: tuple[str, ...]) -> tuple[
        dict[str, Source], list[Problem], int | None
    ]:
        if (participant, video_id) in self._cache:
            return self._cache[participant, video_id]
        base = self.root / participant
        sources: dict[str, Source] = {}
        problems: list[Problem] = []
        n_rgb: int | None = None
        fps = rgb_fps(video_id)
        video = base / "videos" / f"{video_id}.MP4"
        if not video.exists() and (base / "videos" / f"{video_id}.mp4").exists():
            video = base / "videos" / f"{video_id}.mp4"
        if "rgb" in modalities:
            folder = base / "rgb_frames" / video_id
            tar = base / "rgb_frames" / f"{video_id}.tar"
            if self.frames in ("auto", "folder") and folder.is_dir():
                n_rgb = self._count(folder, ".jpg")
                sources["rgb"] = Source("frames", str(folder), num_frames=n_rgb, fps=fps)
            elif self.frames in ("auto", "tar") and tar.is_file():
                sources["rgb"] = Source("tar", str(tar), fps=fps)
            elif self.frames in ("auto", "video") and video.is_file():
                sources["rgb"] = Source("video", str(video), fps=fps)
            else:
                problems.append(Problem(str(folder), "RGB frames not found (folder, .tar or video)", "missing"))
        if "flow" in modalities:
            folder = base / "flow_frames" / video_id
            if (folder / "u").is_dir() and (folder / "v").is_dir():
                n_flow = self._count(folder / "u", ".jpg")
                half = is_epic_2018(video_id)
                sources["flow"] = Source(
                    "uv_frames",
                    str(folder),
                    index_map="epic_flow_half" if half else "epic_flow_full",
                    num_frames=n_flow,
                    fps=fps / 2 if half else fps,
                )
            else:
                problems.append(Problem(str(folder), "flow u/v frame folders not found", "missing"))
        if "audio" in modalities:
            if video.is_file():
                sources["audio"] = Source("video", str(video), fps=fps)
            else:
                problems.append(Problem(str(video), "video file (audio source) not found", "missing"))
        if "depth" in modalities:
            folder = base / self.depth_dirname / video_id
            if folder.is_dir():
                sources["depth"] = Source("png16", str(folder), template="frame_{:010d}.png", fps=fps,
                                          num_frames=self._count(folder, ".png"))
            else:
                problems.append(Problem(str(folder), "depth frames not found", "missing"))
        self._cache[participant, video_id] = (sources, problems, n_rgb)
        return self._cache[participant, video_id]


def load_epic_kitchens(
    root: str | Path,
    split: str = "train",
    annotations: str | Path | None = None,
    modalities: tuple[str, ...] | list[str] = ("rgb", "flow", "audio"),
    star_seed: int = 0,
    star_val_fraction: float = 0.1,
    frames: str = "auto",
    depth_dirname: str = "depth_frames",
    fps: float | None = None,
    check_media: bool = True,
) -> DatasetIndex:
    """Index one split of EPIC-KITCHENS-100.

    Bad rows (wrong field count, non-integer frames, inverted ranges, unknown class ids, bad
    timestamps) and missing media become problems naming the file and line; only a missing or
    headerless annotation file is a hard error. Segments with none of the requested modalities
    on disk are dropped (and reported), so no sample ever has zero modalities.

    ``check_media=False`` reads the annotations alone: every row gets the sources the official
    layout names, unverified and without frame counts. Why: ``actdistill karmma plan`` sizes a run
    before the media are downloaded (and without listing every frame folder of a 700 GB release);
    nothing may decode such an index.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown EPIC-KITCHENS-100 split {split!r}; choose from {SPLITS}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"EPIC-KITCHENS-100 has no modality {unknown}; available: {MODALITIES}")
    root = Path(root)
    ann = find_annotations(root, annotations)
    verbs = read_class_csv(ann / "EPIC_100_verb_classes.csv")
    nouns = read_class_csv(ann / "EPIC_100_noun_classes.csv")
    labelled = split != "test"
    path = ann / SPLIT_FILES[split]
    rows, problems = read_csv_rows(path, COLUMNS if labelled else TEST_COLUMNS)
    if split in ("train_star", "val_star"):
        mask = star_split(len(rows), star_seed, star_val_fraction)
        rows = [r for r, v in zip(rows, mask) if v == (split == "val_star")]
    rows_read = len(rows) + len(problems)  # the rows with a wrong field count are the only problems so far

    actions = action_vocabulary(ann, verbs, nouns)
    action_index = {pair: i for i, pair in enumerate(actions)}
    tail_verbs = {int(v) for v in _read_id_column(ann / "EPIC_100_tail_verbs.csv", "verb") if v.isdigit()}
    tail_nouns = {int(v) for v in _read_id_column(ann / "EPIC_100_tail_nouns.csv", "noun") if v.isdigit()}
    unseen_file = f"EPIC_100_unseen_participant_ids_{split}.csv" if split in ("test", "heldout") else (
        "EPIC_100_unseen_participant_ids_validation.csv"
    )
    unseen = _read_id_column(ann / unseen_file, "participant_id")

    media = _VideoSources(root, depth_dirname, frames)
    segments: list[Segment] = []
    reported: set[tuple[str, str]] = set()
    for row in rows:
        v = row.values
        where = f"{path}"
        try:
            seg = _row_to_segment(v, labelled, len(verbs), len(nouns), action_index, fps)
        except ValueError as err:
            kind = "unknown_label" if isinstance(err, UnknownClassError) else "malformed"
            problems.append(Problem(where, f"line {row.line}: {err}", kind))
            continue
        if not check_media:
            sources, media_problems, n_rgb = _declared_sources(root, v["participant_id"], v["video_id"],
                                                               tuple(modalities), depth_dirname), [], None
        else:
            sources, media_problems, n_rgb = media.get(v["participant_id"], v["video_id"], tuple(modalities))
        if (v["participant_id"], v["video_id"]) not in reported:
            problems.extend(media_problems)
            reported.add((v["participant_id"], v["video_id"]))
        if n_rgb is not None and seg.stop_frame > n_rgb:
            problems.append(Problem(where, f"line {row.line}: stop_frame {seg.stop_frame} beyond the "
                                    f"{n_rgb} RGB frames of {v['video_id']}; clamped", "malformed"))
            seg.stop_frame = max(seg.start_frame, n_rgb)
        seg.sources = dict(sources)
        if not seg.sources:
            problems.append(Problem(where, f"line {row.line}: {seg.uid} has none of {list(modalities)} on disk; "
                                    "dropped", "missing"))
            continue
        if labelled:
            seg.meta["tail_verb"] = seg.labels["verb"] in tail_verbs
            seg.meta["tail_noun"] = seg.labels["noun"] in tail_nouns
        seg.meta["unseen_participant"] = v["participant_id"] in unseen
        segments.append(seg)
    classes = {"verb": verbs, "noun": nouns, "action": [f"{verbs[a]} {nouns[b]}" for a, b in actions]}
    return DatasetIndex("epic_kitchens_100", split, segments, classes, problems, rows_read=rows_read)


def _declared_sources(root: Path, participant: str, video_id: str, modalities: tuple[str, ...],
                      depth_dirname: str) -> dict[str, Source]:
    """Where the official layout puts each modality of ``video_id`` (not checked on disk)."""
    base, fps = root / participant, rgb_fps(video_id)
    half = is_epic_2018(video_id)
    where = {
        "rgb": Source("frames", str(base / "rgb_frames" / video_id), fps=fps),
        "flow": Source("uv_frames", str(base / "flow_frames" / video_id),
                       index_map="epic_flow_half" if half else "epic_flow_full", fps=fps / 2 if half else fps),
        "audio": Source("video", str(base / "videos" / f"{video_id}.MP4"), fps=fps),
        "depth": Source("png16", str(base / depth_dirname / video_id), template="frame_{:010d}.png", fps=fps),
    }
    return {m: where[m] for m in modalities}


def _row_to_segment(
    v: dict[str, str], labelled: bool, n_verbs: int, n_nouns: int,
    action_index: dict[tuple[int, int], int], fps: float | None,
) -> Segment:
    vid = v["video_id"].strip()
    if not _VIDEO_ID.match(vid):
        raise ValueError(f"video_id {vid!r} is not of the form PXX_YY or PXX_1YY")
    if not _PARTICIPANT_ID.fullmatch(v["participant_id"]):
        raise ValueError(f"participant_id {v['participant_id']!r} is not of the form PXX")
    try:
        start, stop = int(v["start_frame"]), int(v["stop_frame"])
    except ValueError:
        raise ValueError(f"start_frame/stop_frame {v['start_frame']!r}/{v['stop_frame']!r} are not integers") from None
    if start < 1 or stop < start:
        raise ValueError(f"frame range [{start}, {stop}] is empty or starts before frame 1")
    start_s, stop_s = parse_timestamp(v["start_timestamp"]), parse_timestamp(v["stop_timestamp"])
    if v.get("narration_timestamp"):
        parse_timestamp(v["narration_timestamp"])
    labels: dict[str, int] = {}
    meta: dict[str, object] = {
        "participant_id": v["participant_id"],
        "start_timestamp": start_s,
        "stop_timestamp": stop_s,
    }
    if labelled:
        try:
            verb, noun = int(v["verb_class"]), int(v["noun_class"])
        except ValueError:
            raise ValueError(
                f"verb_class/noun_class {v['verb_class']!r}/{v['noun_class']!r} are not integers"
            ) from None
        if not 0 <= verb < n_verbs:
            raise UnknownClassError(f"verb_class {verb} outside the {n_verbs} verb classes")
        if not 0 <= noun < n_nouns:
            raise UnknownClassError(f"noun_class {noun} outside the {n_nouns} noun classes")
        labels = {"verb": verb, "noun": noun, "action": action_index.get((verb, noun), -1)}
        try:
            all_nouns = ast.literal_eval(v["all_nouns"])
            all_noun_classes = ast.literal_eval(v["all_noun_classes"])
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            # literal_eval never runs code, but hostile nesting ("-" * 10**5 + "1", "{[]: 1}") makes
            # CPython's parser raise RecursionError/MemoryError/TypeError: still just a bad row
            raise ValueError(
                f"all_nouns/all_noun_classes {v['all_nouns'][:80]!r} are not Python-literal lists"
            ) from None
        if not isinstance(all_noun_classes, list) or not all(isinstance(c, int) for c in all_noun_classes):
            raise ValueError(f"all_noun_classes {v['all_noun_classes']!r} is not a list of integers")
        meta.update(narration=v["narration"], all_nouns=all_nouns, all_noun_classes=all_noun_classes)
    return Segment(
        uid=v["narration_id"].strip(),
        video_id=vid,
        start_frame=start,
        stop_frame=stop,
        fps=fps or rgb_fps(vid),
        labels=labels,
        meta=meta,
    )


def action_vocabulary(ann: Path, verbs: list[str], nouns: list[str]) -> list[tuple[int, int]]:
    """Sorted (verb, noun) pairs of the train CSV: the action classes of an action head."""
    path = ann / "EPIC_100_train.csv"
    if not path.is_file():
        return []
    rows, _ = read_csv_rows(path, ("verb_class", "noun_class"))
    pairs: set[tuple[int, int]] = set()
    for r in rows:
        try:
            a, b = int(r.values["verb_class"]), int(r.values["noun_class"])
        except ValueError:
            continue
        if 0 <= a < len(verbs) and 0 <= b < len(nouns):
            pairs.add((a, b))
    return sorted(pairs)
