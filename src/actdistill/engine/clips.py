"""Fixed views of a split held as tensors: decoded once (cached on disk), reused by every stage.

KARMMA trains several models (unimodal extractors, the teacher fusion, four or more student
rows) on the same data. Decoding videos, flow and audio for each of them would dominate the run
on a CPU, so each split is decoded once into ``views`` fixed views per sample (training views
keep their random crops/flips, drawn with the dataset's per-sample seeds, so view ``k`` of a
sample is reproducible) and stored in a :class:`~actdistill.engine.cache.FeatureCache`. The
frozen teacher's tokens are computed from exactly these views, so teacher and student always see
the same frames and crops ("consistent teaching").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from actdistill.config import to_dict
from actdistill.data.batch import Collate
from actdistill.data.builder import DataConfig, build_dataset
from actdistill.data.records import DatasetIndex
from actdistill.engine.cache import FeatureCache, cache_key_hash
from actdistill.engine.distributed import is_main, rank, world_size


@dataclass
class ClipTensors:
    """One view of a split: per-modality tensors ``[N, ...]``, presence ``[N, M]``, labels, uids."""

    modalities: tuple[str, ...]
    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    labels: dict[str, torch.Tensor]
    uids: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.uids)

    def batch(self, idx: torch.Tensor) -> dict[str, Any]:
        return {
            "inputs": {m: x.index_select(0, idx).float() for m, x in self.inputs.items()},
            "present": self.present.index_select(0, idx),
            "labels": {t: y.index_select(0, idx) for t, y in self.labels.items()},
            "index": idx,
        }

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                shard: bool = True) -> Iterator[dict[str, Any]]:
        """Mini-batches; under DDP each rank takes its own slice of the (shared-seed) permutation."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if shard and world_size() > 1:
            w = world_size()
            order = order[: len(order) - len(order) % w][rank()::w]  # equal step counts on every rank
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size])


def data_stamp(data: DataConfig) -> str:
    """Identity of the dataset's files: name, size and mtime of the regular files at the top of
    ``root`` and of ``annotations`` (annotation CSVs/JSONs, the synthetic generator's metadata).

    Why: the config alone does not say *which* data sits at ``root``; regenerating the synthetic
    set or editing an annotation file must not read tensors cached from the old files. Only the
    top-level files are stamped, so the cost is a few ``stat`` calls whatever the dataset's size;
    re-extracting frames in place without touching any annotation file is not detected (delete
    the cache folder then)."""
    rows = []
    for folder in {Path(data.root), *([Path(data.annotations)] if data.annotations else [])}:
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file():
                st = f.stat()
                rows.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return cache_key_hash({"files": sorted(rows)})


def clip_cache_key(data: DataConfig, split: str, train: bool) -> dict[str, Any]:
    """Everything that changes the decoded clips (not batch size or worker count)."""
    d = to_dict(data)
    for k in ("batch_size", "num_workers", "train_split", "val_split", "test_split"):
        d.pop(k, None)
    d["options"] = {k: v for k, v in d.get("options", {}).items() if k != "generate"}  # whether to write, not what
    return {"kind": "clips", "data": d, "files": data_stamp(data), "split": split, "train": train}


def _fill(cache: FeatureCache, data: DataConfig, split: str, train: bool, views: int, index: DatasetIndex,
          progress: bool) -> int:
    ds = build_dataset(data, split, train, index=index)
    todo_total = 0
    for view in range(views):
        todo = [i for i, seg in enumerate(ds.segments) if (seg.uid, view) not in cache]
        if not todo:
            continue
        todo_total += len(todo)
        ds.set_epoch(view)
        loader = DataLoader(Subset(ds, todo), batch_size=8, num_workers=data.num_workers,
                            collate_fn=Collate(ds.modalities))
        bar = tqdm(loader, desc=f"decoding {split} view {view + 1}/{views}", unit="batch", leave=False,
                   disable=not (progress and is_main()))
        for batch in bar:
            for i, uid in enumerate(batch["uid"]):
                tensors = {m: batch[m][i, 0] for j, m in enumerate(batch["modalities"])
                           if m in batch and batch["present"][i, j]}
                cache.add(uid, view, tensors)
        cache.flush()
    return todo_total


def load_clips(data: DataConfig, split: str, train: bool, views: int, cache_root: str, index: DatasetIndex,
               progress: bool = True) -> list[ClipTensors]:
    """Decode (or read from cache) ``views`` views of every sample of ``split``; one ClipTensors per view."""
    cache = FeatureCache(cache_root, f"clips-{split}", clip_cache_key(data, split, train))
    if is_main():
        _fill(cache, data, split, train, views, index, progress)
    cache = FeatureCache(cache_root, f"clips-{split}", clip_cache_key(data, split, train))
    cache.preload()
    tasks = sorted({t for s in index.segments for t in s.labels})
    out = []
    for view in range(views):
        segs = [s for s in index.segments if (s.uid, view) in cache]
        entries = [cache.get(s.uid, view) for s in segs]
        out.append(stack_entries(tuple(data.modalities), entries, segs, tasks,
                                 extra={"skipped": len(index.segments) - len(segs)}))
    return out


def stack_entries(modalities: tuple[str, ...], entries: Sequence[Mapping[str, torch.Tensor]], segs: Sequence[Any],
                  tasks: Sequence[str], extra: dict[str, Any] | None = None,
                  storage: torch.dtype = torch.float16) -> ClipTensors:
    n = len(entries)
    present = torch.zeros(n, len(modalities), dtype=torch.bool)
    inputs: dict[str, torch.Tensor] = {}
    for j, m in enumerate(modalities):
        ref = next((e[m] for e in entries if m in e), None)
        if ref is None:
            continue
        x = torch.zeros((n, *ref.shape), dtype=storage)
        for i, e in enumerate(entries):
            if m in e:
                x[i] = e[m].to(storage)
                present[i, j] = True
        inputs[m] = x
    labels = {t: torch.tensor([s.labels.get(t, -1) for s in segs], dtype=torch.long) for t in tasks}
    return ClipTensors(modalities, inputs, present, labels, [s.uid for s in segs], extra or {})


def map_clips(clips: ClipTensors, fn: Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]],
              batch_size: int, desc: str, progress: bool, dtype: torch.dtype = torch.float16) -> ClipTensors:
    """Apply ``fn(inputs, present) -> tokens`` over all rows (e.g. frozen extractors), keeping row order.

    Outputs are stored as ``dtype``: half precision for the on-disk feature caches, ``float32``
    where the tokens are consumed at once and must match the unmapped model exactly.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    order = torch.arange(len(clips))
    steps = range(0, len(clips), batch_size)
    for i in tqdm(steps, desc=desc, unit="batch", leave=False, disable=not (progress and is_main())):
        b = clips.batch(order[i:i + batch_size])
        with torch.no_grad():
            out = fn(b["inputs"], b["present"])
        for m, t in out.items():
            parts.setdefault(m, []).append(t.to(dtype))
    inputs = {m: torch.cat(v) for m, v in parts.items()}
    return ClipTensors(clips.modalities, inputs, clips.present.clone(), clips.labels, clips.uids, dict(clips.extra))
