"""Few-shot action recognition splits in the TRX ``splits/`` layout (also CLIP-FSAR, CLIP-MDMF).

Files ``trainlist0N.txt``, ``vallist0N.txt``, ``testlist0N.txt`` hold one ``<class>/<video-id>``
per line (blank lines ignored, CRLF tolerated, a trailing integer column some mirrors add is
ignored). Videos are ``<root>/<class_folder>/<video_folder>/`` frame folders (natural-sorted,
any image extension) or ``<root>/<class_folder>/<video>.<ext>`` files; for SSv2-Full, whose lines
use class tokens (``train8/78687``) that are usually not folders on disk, a flat
``<root>/<video-id>/`` or ``<root>/<video-id>.webm`` is found too.

Labels follow the few-shot reference: the split's classes are its unique class folders, sorted,
and a video's "real" label is the index of its class in that list (it selects the text prompt).
Text prompts need words, not tokens: :func:`prompt_names` gives one name per class, from a
``class_names`` mapping (required in practice for SSv2-Full) or derived from the folder names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from actdistill.data.datasets.video_folder import (
    VIDEO_EXTS,
    Media,
    describe_media,
    problem_kind,
    read_json,
    read_video_list,
    readable_class_name,
    resolve_video,
    with_fps,
)
from actdistill.data.records import DataError, DatasetIndex, Problem, Segment, Source

BENCHMARKS = ("ssv2_full", "ssv2_small", "kinetics100", "ucf101", "hmdb51", "custom")
SPLITS = ("train", "val", "test")

#: Number of classes per split (train, val, test) of each published benchmark.
EXPECTED_CLASSES: dict[str, tuple[int, int, int]] = {
    "ssv2_full": (64, 12, 24),
    "ssv2_small": (64, 12, 24),
    "kinetics100": (64, 12, 24),
    "hmdb51": (31, 10, 10),
    "ucf101": (70, 10, 21),
}

_DEFAULT_FPS = {"ssv2_full": 12.0, "ssv2_small": 12.0}
_TOKEN = re.compile(r"^(train|val|test)(\d+)$")

ClassNames = Mapping[str, str] | Mapping[int, str] | Sequence[str] | str | Path | None


def read_split_file(path: str | Path, problems: list[Problem] | None = None) -> list[tuple[str, str]]:
    """``(class_folder, video_id)`` for each line of a TRX-style split file.

    Malformed lines are appended to ``problems`` when a list is given and raise
    :class:`DataError` (naming file and line) otherwise; a missing file always raises.
    """
    return read_video_list(path, problems)


def split_file_path(split_dir: str | Path, split: str, split_id: int = 1) -> Path:
    """``<split_dir>/{train,val,test}list0N.txt``."""
    if split not in SPLITS:
        raise ValueError(f"few-shot split must be one of {SPLITS}, got {split!r}")
    return Path(split_dir) / f"{split}list{split_id:02d}.txt"


def load_class_names(class_names: ClassNames, split: str) -> dict[str, str] | list[str] | None:
    """Normalise a ``class_names`` argument into a dict (folder/token/index -> name) or a list.

    A path may be a JSON file (an object ``{"train8": "...", ...}``, an object keyed by split
    ``{"train": [...], "val": [...], "test": [...]}``, or a list) or a text file with one name per
    line in the order of the split's ``trainK``/``testK`` numbering. A missing or malformed file
    raises :class:`DataError`: the user asked for it explicitly.
    """
    if class_names is None:
        return None
    if isinstance(class_names, str | Path):
        p = Path(class_names)
        if p.suffix.lower() == ".json":
            data: Any = read_json(p)
        else:
            try:
                data = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines()]
            except FileNotFoundError:
                raise DataError(p, "class names file not found") from None
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(p, f"cannot read class names: {e}") from None
            while data and not data[-1]:
                data.pop()
        source: str | Path = p
    else:
        data, source = class_names, "class_names"
    if isinstance(data, Mapping) and data and all(isinstance(v, list) for v in data.values()):
        if split not in data:
            raise DataError(source, f"class names keyed by split have no entry for {split!r}")
        data = data[split]
    if isinstance(data, Mapping):
        out: dict[str, str] = {}
        for k, v in data.items():
            if not isinstance(v, str):
                raise DataError(source, f"field {k!r}: class name must be a string, got {type(v).__name__}")
            out[str(k)] = v
        return out
    if isinstance(data, Sequence) and not isinstance(data, str):
        names = list(data)
        for i, v in enumerate(names):
            if not isinstance(v, str):
                raise DataError(source, f"item {i}: class name must be a string, got {type(v).__name__}")
        return names
    raise DataError(source, f"class names must be a mapping or a list, got {type(data).__name__}")


def class_prompt_name(folder: str, position: int, names: dict[str, str] | list[str] | None) -> tuple[str, str | None]:
    """The prompt name for one class folder, and an error message if the mapping had no entry.

    Lookup order: the folder itself, then the ``K`` of a ``trainK``/``valK``/``testK`` token (as a
    dict key or a list index); a list with non-token folders is taken in the split's sorted class
    order (``position``). Without a mapping the name is derived from the folder.
    """
    if names is None:
        return readable_class_name(folder), None
    m = _TOKEN.match(folder)
    if isinstance(names, dict):
        if folder in names:
            return names[folder], None
        if m is not None and m.group(2) in names:
            return names[m.group(2)], None
        return readable_class_name(folder), f"class_names has no entry for {folder!r}"
    k = int(m.group(2)) if m is not None else position
    if 0 <= k < len(names) and names[k]:
        return names[k], None
    return readable_class_name(folder), f"class_names has no entry {k} (for {folder!r}); it has {len(names)} names"


def _resolve(root: Path, cls: str, video: str) -> Path | None:
    """Class-folder layout first, then a flat ``<root>/<video>`` (SSv2 tokens are not folders)."""
    found = resolve_video(root, cls, video)
    if found is not None:
        return found
    flat = root / video
    if flat.is_dir():
        return flat
    for ext in VIDEO_EXTS:
        cand = root / f"{video}{ext}"
        if cand.is_file():
            return cand
    return None


def load_fewshot_split(
    root: str | Path,
    split_dir: str | Path | None = None,
    split: str = "train",
    split_id: int = 1,
    benchmark: str = "custom",
    class_names: ClassNames = None,
    frame_template: str | None = None,
    *,
    min_frames: int = 8,
    fps: float | None = None,
    workers: int = 8,
    check_media: bool = True,
) -> DatasetIndex:
    """Index one split of a few-shot benchmark: one RGB :class:`Segment` per listed video.

    ``classes["class"]`` is the split's sorted class folders; each segment carries
    ``labels["class"]`` (its index there) and ``meta["class_name"]`` (the prompt name).
    Counts that differ from the benchmark's published 64/12/24, 31/10/10 or 70/10/21 are
    reported as a ``malformed`` problem, not raised: subsets are legitimate. Videos with fewer
    than ``min_frames`` frames are dropped as ``empty``, as the reference does.

    ``check_media=False`` reads the split file alone: every listed video is kept, its source is
    the class-folder path, unverified, with ``min_frames`` frames assumed. Why: ``actdistill
    fewshot plan`` sizes a run before the videos are on disk; nothing may decode such an index.
    ``split_dir`` (``data.annotations``): the folder of split files; default ``<root>/splits``,
    where the synthetic generator writes them, so that moving ``data.root`` moves the splits too.
    """
    if split_dir is None:
        split_dir = Path(root) / "splits"
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if split == "validation":
        split = "val"
    path = split_file_path(split_dir, split, split_id)
    root_p = Path(root)
    if check_media and not root_p.is_dir():
        raise DataError(root_p, "dataset root not found")
    problems: list[Problem] = []
    entries = read_split_file(path, problems)
    rows_read = len(entries) + len(problems)  # the unparseable lines are the only problems so far
    if not entries:
        raise DataError(path, "split file lists no videos")

    classes = sorted({c for c, _ in entries})
    class_idx = {c: i for i, c in enumerate(classes)}
    expected = EXPECTED_CLASSES.get(benchmark)
    if expected is not None:
        want = expected[SPLITS.index(split)]
        if len(classes) != want:
            problems.append(
                Problem(
                    str(path),
                    f"{benchmark} {split} should have {want} classes, found {len(classes)}",
                    "malformed",
                )
            )

    names = load_class_names(class_names, split)
    prompt: dict[str, str] = {}
    for i, c in enumerate(classes):
        prompt[c], err = class_prompt_name(c, i, names)
        if err is not None:
            problems.append(Problem(str(path), err, "unknown_label"))
    if names is None and any(_TOKEN.match(c) for c in classes):
        problems.append(
            Problem(
                str(path),
                "class tokens like 'train8' need class_names for text prompts; using the tokens",
                "missing",
            )
        )

    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str, Path]] = []
    for cls, video in entries:
        if (cls, video) in seen:
            problems.append(Problem(str(path), f"{cls}/{video} listed twice; keeping the first", "malformed"))
            continue
        seen.add((cls, video))
        found = _resolve(root_p, cls, video) if check_media else root_p / cls / video
        if found is None:
            problems.append(
                Problem(str(root_p / cls / video), "video not found (no frame folder or video file)", "missing")
            )
            continue
        todo.append((cls, video, found))

    rate_default = _DEFAULT_FPS.get(benchmark, 30.0)
    segments: list[Segment] = []
    described = (describe_media([t[2] for t in todo], frame_template, workers) if check_media
                 else [_declared_media(t[2], min_frames) for t in todo])
    for (cls, video, found), media in zip(todo, described):
        if isinstance(media, DataError):
            problems.append(Problem.from_error(media, problem_kind(media)))
            continue
        if media.num_frames < min_frames:
            problems.append(Problem(str(found), f"{media.num_frames} frames < min_frames={min_frames}", "empty"))
            continue
        rate = float(fps or media.fps or rate_default)
        segments.append(
            Segment(
                uid=f"{cls}/{video}",
                video_id=video,
                start_frame=1,
                stop_frame=media.num_frames,
                fps=rate,
                labels={"class": class_idx[cls]},
                sources={"rgb": with_fps(media.source, rate)},
                meta={"class_name": prompt[cls], "class_folder": cls, "benchmark": benchmark},
            )
        )
    kept = {s.meta["class_folder"] for s in segments}
    for c in classes:
        if c not in kept:
            problems.append(Problem(str(path), f"class {c!r} has no usable video left", "empty"))
    return DatasetIndex(
        name=f"fewshot_{benchmark}",
        split=split,
        segments=segments,
        classes={"class": classes},
        problems=problems,
        rows_read=rows_read,
    )


def _declared_media(path: Path, num_frames: int) -> Media:
    """A frame folder at ``path`` with ``num_frames`` frames, as ``check_media=False`` assumes it."""
    return Media(Source("frames", str(path), num_frames=num_frames), num_frames, None, None, False)


def prompt_names(index: DatasetIndex, class_names: ClassNames = None) -> list[str]:
    """One text-prompt name per entry of ``index.classes["class"]``, in the same order.

    Names come from the segments' ``meta["class_name"]`` (set by :func:`load_fewshot_split` from
    ``class_names``); a class with no segment left falls back to ``class_names`` if given here,
    else to a name derived from its folder.
    """
    classes = index.classes.get("class", [])
    by_folder: dict[str, str] = {}
    for seg in index.segments:
        folder, name = seg.meta.get("class_folder"), seg.meta.get("class_name")
        if isinstance(folder, str) and isinstance(name, str):
            by_folder.setdefault(folder, name)
    names = load_class_names(class_names, index.split) if class_names is not None else None
    return [by_folder.get(c) or class_prompt_name(c, i, names)[0] for i, c in enumerate(classes)]
