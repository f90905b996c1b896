"""Fixed views of a split on disk, read one sample at a time: decoded once, reused by every stage.

KARMMA trains several models (unimodal extractors, the teacher fusion, three or more student
rows) on the same data. Decoding videos, flow and audio for each of them would dominate a CPU
run, so each split is decoded once into ``views`` fixed views per sample and written to a
:class:`~actdistill.engine.cache.FeatureCache`; the frozen teacher's tokens are computed from
exactly these views and cached beside them ("consistent teaching": view ``k`` of sample ``s`` is
a pure function of ``(data.seed, uid, k)``, see :meth:`MultimodalDataset.rng_for`).

Nothing here holds a split in memory. A :class:`CachedSplit` keeps only uids, labels and the
presence mask (bytes per sample) and reads a sample's tensors when a batch asks for them, through
a ``DataLoader`` (workers, pinned memory) whose batch sampler gives each rank its share
(:class:`EpochBatches`). Where a cache is provably small (``cache.in_memory_mb``) its shards are
held in memory instead: the same code path, without the disk reads.

Every rank works: decoding and extraction walk the samples in fixed chunks, and chunk ``c``
belongs to shard ``c % N`` (:class:`Shard`), which writes it as its own cache writer. Because a
chunk is the same batch whoever computes it, N shards produce bit-identical tensors to one
process, and a killed shard resumes by skipping the chunks it had written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from actdistill.config import to_dict
from actdistill.data.batch import Collate
from actdistill.data.builder import DataConfig, build_dataset
from actdistill.data.dataset import MultimodalDataset
from actdistill.data.records import DataError, DatasetIndex, Problem
from actdistill.distill.dropout import modality_dropout
from actdistill.engine.cache import FeatureCache, cache_key_hash
from actdistill.engine.distributed import barrier, is_main, rank, world_size
from actdistill.seeding import stable_seed

#: default decoding/extraction chunk (``cache.chunk``): fixed, so a chunk's batch is the same for every world size
CHUNK = 8


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` of a stage's work (a torchrun rank, or one job of a SLURM array)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` (0-based ``i``), as ``actdistill extract --shard`` takes it."""
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected i/N, e.g. 0/8") from None
        return cls(i, n)

    @classmethod
    def of_rank(cls) -> Shard:
        return cls(rank(), world_size())

    @property
    def writer(self) -> str:
        """Cache writer name: one file set per shard, so shards never write the same file."""
        return "main" if self.count == 1 else f"shard{self.index}of{self.count}"

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index


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
    key = {"kind": "clips", "data": d, "files": data_stamp(data), "split": split, "train": train,
           "view_seed": "uid"}
    if any(m.partition(":")[0] == "flow" for m in data.modalities):  # clips cached before flow was rescaled
        key["flow_units"] = "model_pixels"                             # with its resize hold other values
    return key


# ------------------------------------------------------------------------------------------- reading
class ClipStore(Protocol):
    """Where a split's per-sample tensors come from: a :class:`FeatureCache` (decoded once, read
    from disk) or :class:`OnlineClips` (decoded from the dataset's files on every read)."""

    def __contains__(self, item: tuple[str, int]) -> bool: ...

    def names(self, uid: str, view: int) -> tuple[str, ...]: ...

    def get(self, uid: str, view: int) -> dict[str, torch.Tensor]: ...


class OnlineClips:
    """Clips decoded from the dataset's own files whenever they are read (``cache.clips: online``).

    No clip cache: EPIC-KITCHENS-100's 4 training views are about 2.7 TB decoded. View ``k`` of a
    training sample is the dataset's draw in epoch ``k``, a pure function of ``(data.seed, uid, k)``
    (:meth:`MultimodalDataset.rng_for`), so the student's loader decodes exactly the frames and
    crops the frozen teacher's cached tokens came from. A test sample's views are the dataset's own
    multi-view sampling (``data.sampling.test_views``), decoded together. Presence comes from the
    index (the modalities a sample has files for); a modality that fails to read at training time
    is missing in that batch (``data.on_error: skip``) or an error naming the file."""

    def __init__(self, dataset: MultimodalDataset) -> None:
        self.ds = dataset
        self.pos = {s.uid: i for i, s in enumerate(dataset.segments)}

    def __contains__(self, item: tuple[str, int]) -> bool:
        return item[0] in self.pos

    def names(self, uid: str, view: int) -> tuple[str, ...]:
        sources = self.ds.segments[self.pos[uid]].sources
        return tuple(m for m in self.ds.modalities if m in sources)

    def get(self, uid: str, view: int) -> dict[str, torch.Tensor]:
        if self.ds.train:
            return _view(self.ds.get(self.pos[uid], view), 0)
        return _view(self.ds.get(self.pos[uid], 0), view)

    def get_views(self, uid: str, views: int) -> list[dict[str, torch.Tensor]]:
        """All ``views`` of a sample; a test sample's are decoded once, together."""
        if self.ds.train:
            return [self.get(uid, v) for v in range(views)]
        sample = self.ds.get(self.pos[uid], 0)
        return [_view(sample, v) for v in range(views)]

    def nbytes(self) -> int:
        return 0

    def preload(self) -> None:
        """Nothing to hold: online clips are decoded per read."""


def _view(sample: Mapping[str, Any], v: int) -> dict[str, torch.Tensor]:
    """View ``v`` of a dataset sample (``inputs[m]`` is ``[views, T, ...]``), float16 like the cache
    stores it, so online and cached clips are the same tensors."""
    return {m: x[v].to(torch.float16).float() for m, x in sample["inputs"].items()}


class CachedSplit:
    """The ``views`` views of one split's samples in a :class:`FeatureCache` (or any
    :class:`ClipStore`), read lazily.

    Holds uids, labels and presence (a few bytes per sample); tensors are read per sample. Only
    samples with every view cached are listed (a sample whose decoding was skipped is left out
    and counted in ``skipped``). ``present[i]`` is what view 0 of sample ``i`` holds; a batch's
    own presence comes from the entries it read (:class:`CollateViews`).

    ``positions[i]``: sample ``i``'s place in the dataset index (``positions`` given: the places of
    ``uids``), which fixes its work chunk (``position // CHUNK``) whichever samples are cached.

    ``skipped_uids`` names the samples left out; ``problems`` holds what reading found wrong
    (``data.on_error: skip``: the files and why; set by :func:`load_clips`), so a job can say which
    samples it lost and why instead of only how many."""

    def __init__(self, cache: ClipStore, uids: Sequence[str], labels: Mapping[str, Sequence[int]] | None,
                 modalities: Sequence[str], views: int, skipped: int = 0,
                 positions: Sequence[int] | None = None) -> None:
        self.cache = cache
        self.modalities = tuple(modalities)
        self.views = views
        keep = [i for i, u in enumerate(uids) if all((u, v) in cache for v in range(views))]
        kept = set(keep)
        self.uids = [uids[i] for i in keep]
        self.positions = [int(positions[i]) if positions is not None else i for i in keep]
        self.labels = {t: torch.tensor([int(y[i]) for i in keep], dtype=torch.long) for t, y in (labels or {}).items()}
        self.skipped = skipped + len(uids) - len(keep)
        self.skipped_uids = [u for i, u in enumerate(uids) if i not in kept]
        self.problems: list[Problem] = []
        self.present = torch.zeros(len(self.uids), len(self.modalities), dtype=torch.bool)
        for i, u in enumerate(self.uids):
            names = cache.names(u, 0)
            for j, m in enumerate(self.modalities):
                self.present[i, j] = m in names
        self.shapes: dict[str, tuple[int, ...]] = {}
        for j, m in enumerate(self.modalities):
            rows = self.present[:, j].nonzero()
            if len(rows):
                self.shapes[m] = tuple(cache.get(self.uids[int(rows[0])], 0)[m].shape)

    def __len__(self) -> int:
        return len(self.uids)

    def item(self, i: int, view: int) -> dict[str, torch.Tensor]:
        return self.cache.get(self.uids[i], view)

    def items(self, i: int) -> list[dict[str, torch.Tensor]]:
        """Every view of sample ``i`` (decoded together where the store decodes)."""
        get_views = getattr(self.cache, "get_views", None)
        if get_views is not None:
            return get_views(self.uids[i], self.views)
        return [self.item(i, v) for v in range(self.views)]

    def rows_with(self, modality: str) -> list[int]:
        return self.present[:, self.modalities.index(modality)].nonzero().squeeze(1).tolist()


def open_split(cache: FeatureCache | OnlineClips, index: DatasetIndex, modalities: Sequence[str], views: int,
               in_memory_mb: float) -> CachedSplit:
    """A :class:`CachedSplit` over ``index``'s samples; shards held in memory when the cache is at
    most ``in_memory_mb`` on disk (the fast path for small data, same code otherwise)."""
    tasks = sorted({t for s in index.segments for t in s.labels})
    labels = {t: [s.labels.get(t, -1) for s in index.segments] for t in tasks}
    split = CachedSplit(cache, [s.uid for s in index.segments], labels, modalities, views)
    if cache.nbytes() <= in_memory_mb * 2**20:
        cache.preload()
    return split


# ---------------------------------------------------------------------------------------- batching
@dataclass(frozen=True)
class Dropout:
    """Per-sample modality dropout with rate ``p``: sample ``i``'s mask in ``epoch`` is a pure
    function of ``(seed, epoch, uid)``, so it is the same whichever rank, batch or worker draws it
    (exact resume, and DDP equal to one process)."""

    p: float
    seed: int


class ViewDataset(Dataset):
    """Sample ``rows[k]`` of ``split`` in view ``view``, with the same view of ``extra`` splits
    (e.g. the frozen teacher's cached tokens or logits for exactly these frames)."""

    def __init__(self, split: CachedSplit, view: int, extra: Mapping[str, CachedSplit] | None = None,
                 rows: Sequence[int] | None = None, dropout: Dropout | None = None, epoch: int = 0) -> None:
        self.split = split
        self.view = view
        self.extra = dict(extra or {})
        self.rows = list(range(len(split))) if rows is None else list(rows)
        self.dropout = dropout
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = self.rows[k]
        item: dict[str, Any] = {"index": i, "uid": self.split.uids[i], "inputs": self.split.item(i, self.view),
                                "labels": {t: y[i] for t, y in self.split.labels.items()}}
        for name, other in self.extra.items():
            item[name] = other.item(i, self.view)
        if self.dropout is not None and self.dropout.p > 0:
            present = torch.tensor([[m in item["inputs"] for m in self.split.modalities]])
            gen = torch.Generator().manual_seed(stable_seed(self.dropout.seed, self.epoch, self.split.uids[i]))
            item["mask"] = modality_dropout(present, self.dropout.p, gen)[0]
        return item


def _stack(items: Sequence[Mapping[str, torch.Tensor]], modalities: Sequence[str],
           shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per modality ``[B, ...]`` float32 with zeros where absent, and the ``[B, M]`` presence."""
    present = torch.tensor([[m in it for m in modalities] for it in items], dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    for j, m in enumerate(modalities):
        if m not in shapes:
            continue
        if bool(present[:, j].all()):
            out[m] = torch.stack([it[m] for it in items]).float()
            continue
        x = torch.zeros((len(items), *shapes[m]), dtype=torch.float32)
        for i, it in enumerate(items):
            if m in it:
                x[i] = it[m]
        out[m] = x
    return out, present


class CollateViews:
    """Collate :class:`ViewDataset` items into the batch dict every stage reads: ``inputs``,
    ``present``, ``labels``, ``index`` (rows of the split), ``mask`` (after dropout, if drawn) and
    one dict per extra split (``teacher_tokens``, ``teacher_logits``). A picklable class, so
    DataLoader workers can use it."""

    def __init__(self, split: CachedSplit, extra: Mapping[str, CachedSplit] | None = None) -> None:
        self.modalities = split.modalities
        self.shapes = dict(split.shapes)
        self.extra_shapes = {k: dict(v.shapes) for k, v in (extra or {}).items()}
        self.extra_mods = {k: v.modalities for k, v in (extra or {}).items()}

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        inputs, present = _stack([it["inputs"] for it in items], self.modalities, self.shapes)
        batch: dict[str, Any] = {
            "inputs": inputs, "present": present,
            "labels": {t: torch.stack([torch.as_tensor(it["labels"][t]) for it in items]) for t in items[0]["labels"]},
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "uid": [it["uid"] for it in items],
        }
        if "mask" in items[0]:
            batch["mask"] = torch.stack([it["mask"] for it in items])
        for name, shapes in self.extra_shapes.items():
            batch[name], _ = _stack([it[name] for it in items], self.extra_mods[name], shapes)
        return batch


class AllViewsDataset(Dataset):
    """Every view of sample ``rows[k]`` (evaluation averages the logits of a sample's test views)."""

    def __init__(self, split: CachedSplit, rows: Sequence[int] | None = None) -> None:
        self.split = split
        self.rows = list(range(len(split))) if rows is None else list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> list[dict[str, Any]]:
        i = self.rows[k]
        labels = {t: y[i] for t, y in self.split.labels.items()}
        return [{"index": i, "uid": self.split.uids[i], "inputs": x, "labels": labels} for x in self.split.items(i)]


class CollateAllViews:
    """Collate :class:`AllViewsDataset` items: ``views`` (one input dict per view), and
    ``present``, ``labels``, ``index``, ``uid`` of view 0."""

    def __init__(self, split: CachedSplit) -> None:
        self.one = CollateViews(split)

    def __call__(self, items: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
        per = [self.one([it[v] for it in items]) for v in range(len(items[0]))]
        return {"views": [b["inputs"] for b in per], "present": per[0]["present"], "labels": per[0]["labels"],
                "index": per[0]["index"], "uid": per[0]["uid"]}


def eval_loader(split: CachedSplit, batch_size: int, workers: int = 0, rows: Sequence[int] | None = None) -> DataLoader:
    """``rows`` of ``split`` (default: all) in order, every view of a sample in one batch entry."""
    return DataLoader(AllViewsDataset(split, rows), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=CollateAllViews(split))


class EpochBatches(Sampler[list[int]]):
    """This rank's batches of one epoch, as lists of dataset positions.

    The epoch's order is a permutation seeded by ``(seed, epoch)``, cut into global batches of
    ``batch_size * world`` samples; rank ``r`` takes the ``r``-th contiguous slice of each, so
    ``W`` ranks at batch ``B`` see exactly the samples one process sees at batch ``W * B`` (the
    gradients DDP averages are that process's). A last, short global batch is split evenly
    (its remainder below ``W`` samples is left out, as every rank must take the same number of
    steps). ``start``: skip the first batches (exact resume inside an epoch).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, start: int = 0) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.epoch, self.rank, self.world, self.start = seed, epoch, rank, world, start

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(stable_seed(self.seed, "order", self.epoch))
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        step = self.batch_size * self.world
        out = []
        for s in range(0, self.n, step):
            chunk = order[s:s + step]
            per = len(chunk) // self.world
            if per == 0:
                break
            out.append(chunk[self.rank * per:(self.rank + 1) * per])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self._batches()) - self.start)


def steps_per_epoch(n: int, batch_size: int, world: int | None = None) -> int:
    """Optimizer steps each rank takes per epoch over ``n`` samples (what the LR schedule counts)."""
    return len(EpochBatches(n, batch_size, False, 0, 0, 0, world_size() if world is None else world))


def make_loader(dataset: ViewDataset, batch_size: int, shuffle: bool, seed: int, epoch: int, workers: int,
                start: int = 0, shard: bool = True) -> DataLoader:
    """A DataLoader over ``dataset`` for one epoch: this rank's :class:`EpochBatches`, collated
    by :class:`CollateViews`, read by ``workers`` processes with pinned memory on CUDA."""
    sampler = EpochBatches(len(dataset), batch_size, shuffle, seed, epoch,
                           rank() if shard else 0, world_size() if shard else 1, start)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=CollateViews(dataset.split, dataset.extra),
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=2 if workers > 0 else None)


# ----------------------------------------------------------------------------------- writing (sharded)
def _chunks(positions: Sequence[int], chunk: int) -> dict[int, list[int]]:
    """Rows grouped by work chunk (``position // chunk``), chunks in order."""
    out: dict[int, list[int]] = {}
    for i, pos in enumerate(positions):
        out.setdefault(pos // chunk, []).append(i)
    return out


READ_PROBLEMS = "read_problems"  # clip cache metadata key prefix: what reading found wrong, per writer


def read_problems(cache: FeatureCache) -> list[Problem]:
    """The read-time problems every writer of a clip cache recorded (:func:`decode_clips`), in
    writer order. Kept in the cache's metadata, so a resumed run or another shard's job still
    knows which files were skipped and why, although it decodes nothing again."""
    out: list[Problem] = []
    for key in sorted(k for k in cache.meta if k.startswith(READ_PROBLEMS)):
        for p in cache.meta[key]:
            out.append(Problem(str(p.get("path", "")), str(p.get("message", "")), str(p.get("kind", "unreadable"))))
    return out


def decode_clips(data: DataConfig, split: str, train: bool, views: int, index: DatasetIndex, cache_root: str,
                 shard: Shard, progress: bool = True, chunk: int = CHUNK,
                 problems: list[Problem] | None = None) -> int:
    """Decode this shard's missing chunks of ``views`` views of ``split`` into the clip cache.

    Returns how many (sample, view) entries this call decoded. Samples whose every modality
    failed to read (``data.on_error: skip``) are left out and stay missing. What reading found
    wrong (the file and why, also for a modality left out of a sample that was kept) is appended
    to ``problems`` and recorded in the cache's metadata (:func:`read_problems`)."""
    key = clip_cache_key(data, split, train)
    ds = build_dataset(data, split, train, index=index)
    place = {s.uid: p for p, s in enumerate(index.segments)}
    chunks = _chunks([place[s.uid] for s in ds.segments], chunk)
    done = 0
    # Training view k is the dataset's draw in epoch k; a test sample's views are the dataset's own
    # multi-view sampling (data.sampling.test_views) of epoch 0, decoded together.
    passes = [(v, v, [0]) for v in range(views)] if train else [(0, 0, list(range(views)))]
    found: list[Problem] = []
    with FeatureCache(cache_root, f"clips-{split}", key, writer=shard.writer) as cache:
        for epoch, first, kept in passes:
            ds.set_epoch(epoch)
            todo = [i for c, rows in chunks.items() if shard.owns(c)
                    for i in rows if any((ds.segments[i].uid, first + k) not in cache for k in range(len(kept)))]
            if not todo:
                continue
            done += len(todo) * len(kept)
            loader = DataLoader(Subset(ds, todo), batch_size=chunk, num_workers=data.num_workers,
                                collate_fn=Collate(ds.modalities))
            desc = f"decoding {split} view {epoch + 1}/{views}" if train else f"decoding {split} ({views} views)"
            bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not (progress and is_main()))
            for batch in bar:
                found.extend(batch["problems"])
                for i, uid in enumerate(batch["uid"]):
                    for k, v in enumerate(kept):
                        tensors = {m: batch[m][i, v] for j, m in enumerate(batch["modalities"])
                                   if m in batch and batch["present"][i, j]}
                        if (uid, first + k) not in cache:
                            cache.add(uid, first + k, tensors)
            cache.flush()
        found = list(dict.fromkeys(found))  # a test sample's views are read together: one problem per file
        if found:
            name = f"{READ_PROBLEMS}.{shard.writer}"
            known = [Problem(**p) for p in cache.meta.get(name, [])]
            cache.set_meta(**{name: [p.to_dict() for p in dict.fromkeys([*known, *found])]})
    if problems is not None:
        problems.extend(found)
    return done


def map_split(split: CachedSplit, fn: Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]],
              out: FeatureCache, shard: Shard, desc: str, progress: bool, workers: int = 0,
              chunk: int = CHUNK) -> int:
    """Write ``fn(inputs, present)`` (e.g. the frozen extractors' tokens) for every view of this
    shard's chunks of ``split`` into ``out``, skipping chunks already there. Chunks are the same
    fixed batches for every shard count, so the tensors do not depend on how the work was split.
    Returns how many entries were written."""
    written = 0
    mods = split.modalities
    for view in range(split.views):
        mine = [rows for c, rows in _chunks(split.positions, chunk).items() if shard.owns(c)
                and any((split.uids[i], view) not in out for i in rows)]
        if not mine:
            continue
        ds = ViewDataset(split, view)
        loader = DataLoader(ds, batch_sampler=mine, collate_fn=CollateViews(split), num_workers=workers)
        for b in tqdm(loader, desc=f"{desc} view {view + 1}/{split.views}", unit="batch", leave=False,
                      disable=not (progress and is_main())):
            with torch.no_grad():
                res = fn(b["inputs"], b["present"])
            for r, i in enumerate(b["index"].tolist()):
                uid = split.uids[i]
                if (uid, view) in out:
                    continue
                out.add(uid, view, {k: v[r] for k, v in res.items()  # a modality's output only where present
                                    if k not in mods or b["present"][r, mods.index(k)]})
                written += 1
        out.flush()
    return written


CLIP_MODES = ("disk", "online", "auto")


def load_clips(data: DataConfig, split: str, train: bool, views: int, cache_root: str, index: DatasetIndex,
               progress: bool = True, in_memory_mb: float = 0.0, shard: Shard | None = None,
               chunk: int = CHUNK, mode: str = "disk", max_disk_gb: float = float("inf")) -> CachedSplit:
    """Open ``views`` views of ``split``: decoded once into the clip cache (``mode="disk"``; every
    rank decodes its share, or only ``shard``'s), or decoded from the dataset's files on every read
    (``"online"``: no clip cache). ``"auto"``: online when the clip cache would exceed
    ``max_disk_gb`` (one sample decoded, times samples and views)."""
    if mode not in CLIP_MODES:
        raise ValueError(f"cache.clips must be one of {', '.join(CLIP_MODES)}, got {mode!r}")
    if train and views < 1:
        raise ValueError(f"cache.train_views must be at least 1, got {views}")
    online = OnlineClips(build_dataset(data, split, train, index=index))
    if mode == "auto" and len(online.ds):
        sample = online.get_views(online.ds.segments[0].uid, 1)[0]
        per_view = sum(x.numel() * 2 for x in sample.values())  # float16 in the cache
        mode = "online" if per_view * len(online.ds) * views > max_disk_gb * 2**30 else "disk"
    if mode == "online":
        out = open_split(online, index, data.modalities, views, 0.0)
        where: Path | str = data.root
    else:
        shard = shard or Shard.of_rank()
        decode_clips(data, split, train, views, index, cache_root, shard, progress, chunk)
        barrier()
        cache = FeatureCache(cache_root, f"clips-{split}", clip_cache_key(data, split, train))
        out = open_split(cache, index, data.modalities, views, in_memory_mb)
        out.problems = read_problems(cache)  # every shard's, this run's and earlier runs'
        where = cache.dir
    if not len(out):
        raise DataError(where, f"no sample of split {split!r} could be decoded "
                               f"({out.skipped} skipped); see `actdistill data summary`")
    return out
