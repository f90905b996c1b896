"""What a job did with its data: rows read, used and dropped per split, and why; printed and saved.

Adapters drop rows they cannot use (wrong types, unknown labels, missing media, paths outside the
data root) and readers skip files they cannot decode (``data.on_error: skip``). Each such decision
is a :class:`~actdistill.data.records.Problem`; without a report the only trace of them would be a
smaller clip count (a 40-clip test set silently becoming 30). :func:`data_report` turns the
indexes of a job (and what reading found) into one short paragraph to print before training and
the full list for ``problems.json`` in the run directory. Both pipelines (KARMMA and few-shot)
call it with their own splits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from actdistill.data.records import DatasetIndex, Problem

PROBLEMS_FILE = "problems.json"
EXAMPLES = 3  # problems named per split in the printed paragraph (problems.json has them all)


def _no_modality(index: DatasetIndex, modalities: Sequence[str]) -> list[Problem]:
    """Segments with none of the job's modalities: the dataset leaves them out (no sample may have
    zero modalities), so they are dropped rows too."""
    wanted = list(modalities)
    return [Problem(s.uid, f"has none of data.modalities {wanted} (it has {list(s.sources)}); dropped", "no_modality")
            for s in index.segments if not any(m in s.sources for m in wanted)]


def eval_only_labels(train: DatasetIndex, other: DatasetIndex, tasks: Sequence[str] | None = None
                     ) -> dict[str, list[str]]:
    """Per task, the class names that label some sample of ``other`` but no sample of ``train``.

    Why it matters: such a class gets an output but no training sample, so the model never learns
    to predict it and every evaluation sample of it counts as an error."""
    out: dict[str, list[str]] = {}
    for task in tasks if tasks is not None else sorted(train.classes):
        seen = {s.labels[task] for s in train.segments if task in s.labels}
        only = sorted({s.labels[task] for s in other.segments if task in s.labels and s.labels[task] >= 0} - seen)
        if only:
            names = other.classes.get(task) or train.classes.get(task) or []
            out[task] = [names[c] if 0 <= c < len(names) else str(c) for c in only]
    return out


def _quote(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def data_report(
    indexes: Mapping[str, DatasetIndex],
    *,
    modalities: Sequence[str] | None = None,
    read_problems: Mapping[str, Sequence[Problem]] | None = None,
    skipped: Mapping[str, Sequence[str]] | None = None,
    train: str | None = "train",
    tasks: Sequence[str] | None = None,
    examples: int = EXAMPLES,
) -> tuple[str, dict[str, Any]]:
    """The data report of a job: ``(text, record)``.

    ``indexes``: role (``train``, ``test``, ``val``...) -> the adapter's index of that split.
    ``modalities``: the job's modalities (segments with none of them are counted as dropped).
    ``read_problems`` / ``skipped``: per role, what decoding found wrong and the uids of the
    samples it left out (``data.on_error: skip``). ``train``: the role whose labels a model learns
    from; a class that labels samples of another role but none of it is a warning (``tasks``: the
    tasks to check, default all). ``text`` is one paragraph to print; ``record`` is what
    ``problems.json`` holds: per role the counts, every problem (``stage`` ``index`` or ``read``)
    and the warnings.
    """
    lines = ["data report (every problem: problems.json):"]
    record: dict[str, Any] = {"splits": {}, "problems": [], "warnings": []}
    for role, index in indexes.items():
        dropped_extra = _no_modality(index, modalities) if modalities is not None else []
        found = list(index.problems) + dropped_extra
        reading = list((read_problems or {}).get(role, []))
        gone = {p.path for p in dropped_extra}  # never decoded, so also among the uids a clip store lacks
        lost = [u for u in (skipped or {}).get(role, []) if u not in gone]
        used = len(index.segments) - len(dropped_extra) - len(lost)
        read = index.rows_read
        dropped = None if read is None else read - used
        kinds = Counter(p.kind for p in found)
        read_kinds = Counter(p.kind for p in reading)
        record["splits"][role] = {
            "dataset": index.name, "split": index.split, "rows_read": read, "used": used, "dropped": dropped,
            "problems_by_kind": dict(kinds), "no_modality": len(dropped_extra),
            "skipped_at_read": len(lost), "skipped_uids": lost, "read_problems_by_kind": dict(read_kinds),
        }
        record["problems"] += [{"split": role, "stage": "index", **p.to_dict()} for p in found]
        record["problems"] += [{"split": role, "stage": "read", **p.to_dict()} for p in reading]
        named = {p.path for p in reading}
        record["problems"] += [{"split": role, "stage": "read", "path": u, "kind": "skipped",
                                "message": "no modality could be read; sample skipped"} for u in lost if u not in named]
        head = f"{read} rows read, " if read is not None else ""
        text = f"  {role} (split {index.split!r} of {index.name}): {head}{used} used"
        if dropped is not None:
            text += f", {dropped} dropped"
        if found:
            text += "; indexing found " + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
        if reading or lost:
            text += f"; reading skipped {len(lost)} sample(s)"
            if reading:
                text += " and found " + ", ".join(f"{k} {n}" for k, n in read_kinds.most_common())
        lines.append(text)
        for p in (found + reading)[:examples]:
            lines.append(f"    e.g. {p.path}: {p.message}")
        if lost and len(found + reading) < examples:
            lines.append(f"    skipped: {', '.join(lost[:examples])}")
    if train is not None and train in indexes:
        for role, index in indexes.items():
            if role == train or index is indexes[train]:
                continue
            for task, names in eval_only_labels(indexes[train], index, tasks).items():
                msg = (f"{task} class(es) {_quote(names)} occur in the {role} split but in no {train} sample: "
                       f"never learned, so their {role} samples count as errors")
                record["warnings"].append({"kind": "eval_only_label", "split": role, "task": task,
                                           "classes": names, "message": msg})
                lines.append(f"  warning: {msg}")
    return "\n".join(lines), record


def write_problems(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (from :func:`data_report`) as ``problems.json`` in ``run_dir``."""
    from actdistill.rundir import write_json

    path = Path(run_dir) / PROBLEMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(record))
    return path
