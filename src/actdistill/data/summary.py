"""``actdistill data summary``: what a dataset folder holds and what is wrong with it.

It never crashes on a bad file: an unreadable annotation file, a malformed row, a missing frame
folder or a corrupt video becomes an entry in ``problems`` naming the file. ``deep=True`` also
decodes one frame of every source (slow on a full dataset, thorough on a small one).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from actdistill.data.datasets import get_dataset
from actdistill.data.modalities.base import build_reader
from actdistill.data.records import DataError, Problem


def summarize(
    dataset: str,
    root: str | Path,
    annotations: str | Path | None = None,
    splits: list[str] | None = None,
    modalities: list[str] | None = None,
    deep: bool = False,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = get_dataset(dataset)
    found_splits, found_mods = _generic_layout(dataset, root, annotations, options)
    splits = splits or found_splits
    mods = tuple(modalities or found_mods or spec.modalities)
    readers = {m: build_reader(m) for m in mods}
    out: dict[str, Any] = {
        "dataset": dataset,
        "root": str(root),
        "modalities_requested": list(mods),
        "splits": {},
        "problems": [],
    }
    problems: list[Problem] = []
    checked: dict[tuple[str, str], bool] = {}  # (modality, source path) -> usable
    for split in splits or list(spec.splits):
        try:
            index = spec.load(root, split, annotations=annotations, modalities=mods, **(options or {}))
        except (DataError, OSError, ValueError) as err:
            path = getattr(err, "path", str(root))
            problems.append(Problem(path, f"split {split!r} could not be read: {getattr(err, 'problem', err)}",
                                    "unreadable"))
            out["splits"][split] = {"samples": 0, "readable": False}
            continue
        problems.extend(index.problems)
        counts = Counter()
        for seg in index.segments:
            for m, src in seg.sources.items():
                key = (m, src.path)
                if key not in checked:
                    problem = readers[m].check(src) if m in readers else None
                    if problem is None and deep:
                        problem = _decode_one(readers[m], src, seg)
                    if problem is not None:
                        problems.append(problem)
                    checked[key] = problem is None
                counts[m] += int(checked[key])
        label_counts = {
            task: len({s.labels[task] for s in index.segments if s.labels.get(task, -1) >= 0})
            for task in index.classes
        }
        out["splits"][split] = {
            "samples": len(index.segments),
            "readable": True,
            "classes": {task: len(names) for task, names in index.classes.items()},
            "classes_present": label_counts,
            "labelled": any(s.labels for s in index.segments),
            "modalities": {m: int(counts.get(m, 0)) for m in mods},
        }
    seen: set[tuple[str, str]] = set()
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out["problems"].append(p.to_dict())
    out["num_problems"] = len(out["problems"])
    out["problem_kinds"] = dict(Counter(p["kind"] for p in out["problems"]))
    return out


def _generic_layout(dataset: str, root: str | Path, annotations: str | Path | None,
                    options: dict[str, Any] | None) -> tuple[list[str] | None, list[str] | None]:
    """The splits and modality columns a generic manifest really has (``None, None`` for other
    adapters, or when the manifest cannot be read: the per-split loads then report why).

    Why: the adapter registers ``train``/``validation``/``test`` and the six modality kinds, so a
    manifest's ``holdout`` rows or ``imu:gyro`` column would otherwise be left out of the summary
    without a word, which is where a user looks first when training finds fewer samples.
    """
    if dataset != "generic":
        return None, None
    from actdistill.data.datasets.generic import manifest_layout

    manifest = annotations if annotations is not None else (options or {}).get("manifest")
    try:
        splits, mods = manifest_layout(root, manifest)
    except (DataError, OSError, ValueError):
        return None, None
    return splits, (mods or None)


def _decode_one(reader: Any, src: Any, seg: Any) -> Problem | None:
    try:
        reader.read(src, np.array([seg.start_frame]), seg)
    except DataError as err:
        return Problem.from_error(err)
    return None


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable rendering of :func:`summarize`'s output."""
    lines = [f"dataset {summary['dataset']} at {summary['root']}"]
    for split, info in summary["splits"].items():
        if not info.get("readable", True):
            lines.append(f"  {split:<12} unreadable")
            continue
        classes = ", ".join(f"{t}={n}" for t, n in info["classes"].items())
        mods = ", ".join(f"{m}={n}" for m, n in info["modalities"].items())
        lines.append(f"  {split:<12} {info['samples']:>7} samples | classes: {classes} | modalities: {mods}")
    lines.append(f"  problems: {summary['num_problems']} {summary['problem_kinds'] or ''}")
    for p in summary["problems"][:10]:
        lines.append(f"    - [{p['kind']}] {p['path']}: {p['message']}")
    if summary["num_problems"] > 10:
        lines.append(f"    ... {summary['num_problems'] - 10} more (use --json for all)")
    return "\n".join(lines)
