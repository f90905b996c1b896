"""On-disk feature cache: run frozen extractors once per sample and view, reuse forever.

A cache lives in ``<root>/<name>-<hash>/`` where the hash covers everything that changes the
stored tensors (extractor name, options and weights identity, sampling, crop, modality, views).
Change any of it and a new cache folder is used; nothing stale is ever read. Tensors go into
safetensors shards; ``index.json`` maps ``uid#view`` to (shard, row). Shards and the index are
written atomically (temporary file + rename) and the index only after its shard, so a killed
job leaves a consistent cache that the next run resumes from, skipping what is done.

The same cache stores decoded input clips (extractor ``None``: identity) so that several models
trained on the same fixed views decode the videos once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from actdistill.data.records import DataError
from actdistill.rundir import atomic_write_text

INDEX = "index.json"


def cache_key_hash(key: Mapping[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_id(uid: str, view: int) -> str:
    return f"{uid}#{view}"


class FeatureCache:
    """Sharded safetensors store of per-sample tensor dicts, keyed by ``(uid, view)``."""

    def __init__(self, root: str | Path, name: str, key: Mapping[str, Any], shard_size: int = 256,
                 dtype: torch.dtype | None = torch.float16, max_open_shards: int = 8) -> None:
        self.key = dict(key)
        self.dir = Path(root) / f"{name}-{cache_key_hash(self.key)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps(self.key, indent=2, sort_keys=True, default=str))
        self.shard_size = shard_size
        self.dtype = dtype
        self.max_open_shards = max_open_shards
        self._entries: dict[str, list[Any]] = {}
        self._meta: dict[str, Any] = {}
        self._shards: list[str] = []
        self._pending: list[tuple[str, dict[str, torch.Tensor]]] = []
        self._open: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._load_index()

    # ----------------------------------------------------------------- index
    def _load_index(self) -> None:
        path = self.dir / INDEX
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            self._entries = dict(data["entries"])
            self._shards = [str(s) for s in data["shards"]]
            self._meta = dict(data.get("meta", {}))
            # every entry must be [shard, row, names]: checked here, so a damaged index is reported
            # once as corrupt instead of failing with a TypeError at some later get()
            for eid, entry in self._entries.items():
                if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                        and isinstance(entry[1], int) and isinstance(entry[2], list)):
                    raise TypeError(f"entry {eid!r} is {entry!r}, expected [shard, row, names]")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(path, f"cache index is corrupt ({err}); delete {self.dir} to rebuild it") from None
        # shards named by the index must exist; entries pointing elsewhere are dropped (rebuilt later)
        present = {s for s in self._shards if (self.dir / s).exists()}
        self._entries = {k: v for k, v in self._entries.items() if v[0] in present}
        self._shards = [s for s in self._shards if s in present]

    def _write_index(self) -> None:
        data = {"entries": self._entries, "shards": self._shards, "meta": self._meta}
        atomic_write_text(self.dir / INDEX, json.dumps(data))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: tuple[str, int]) -> bool:
        return entry_id(*item) in self._entries

    def missing(self, uids: Iterable[str], views: int) -> list[tuple[str, int]]:
        return [(u, v) for v in range(views) for u in uids if entry_id(u, v) not in self._entries]

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def set_meta(self, **meta: Any) -> None:
        self._meta.update(meta)
        self._write_index()

    # ----------------------------------------------------------------- write
    def add(self, uid: str, view: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Queue one entry; shards are flushed every ``shard_size`` entries (call :meth:`flush` at the end).

        NaN/Inf are refused here, after the conversion to the storage dtype (a finite float32 above
        65504 becomes Inf in float16): written to disk they would only fail at a later :meth:`get`,
        in every later run, until the cache folder is deleted.
        """
        stored = {}
        for name, t in tensors.items():
            t = t.detach().cpu()
            if self.dtype is not None and t.is_floating_point():
                t = t.to(self.dtype)
            if t.is_floating_point() and not torch.isfinite(t).all():
                overflow = bool(torch.isfinite(tensors[name]).all())
                what = f"values beyond the range of {t.dtype} (Inf once stored)" if overflow else "NaN or Inf"
                raise DataError(self.dir, f"refusing to cache {entry_id(uid, view)}/{name}: it holds {what}")
            stored[name] = t.contiguous()
        self._pending.append((entry_id(uid, view), stored))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        shard = self._new_shard_name()
        flat: dict[str, torch.Tensor] = {}
        rows: dict[str, list[Any]] = {}
        for row, (eid, tensors) in enumerate(self._pending):
            for name, t in tensors.items():
                flat[f"{row}/{name}"] = t
            rows[eid] = [shard, row, sorted(tensors)]
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".shard.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(flat, tmp)
            os.replace(tmp, self.dir / shard)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._shards.append(shard)
        self._entries.update(rows)
        self._pending.clear()
        self._write_index()

    def _new_shard_name(self) -> str:
        """A shard name no file has. Numbering by ``len(self._shards)`` alone would reuse the name
        of a later shard once an earlier one was dropped as missing, and ``os.replace`` would then
        silently put other entries' tensors under that shard's index rows."""
        n = len(self._shards)
        while True:
            name = f"shard_{n:06d}_{os.getpid()}.safetensors"
            if name not in self._shards and not (self.dir / name).exists():
                return name
            n += 1

    # ------------------------------------------------------------------ read
    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        path = self.dir / name
        try:
            data = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise DataError(path, f"cache shard unreadable ({err}); delete {self.dir} to rebuild it") from None
        self._open[name] = data
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return data

    def get(self, uid: str, view: int) -> dict[str, torch.Tensor]:
        eid = entry_id(uid, view)
        try:
            shard, row, names = self._entries[eid]
        except KeyError:
            raise KeyError(f"{eid} is not in cache {self.dir}") from None
        data = self._shard(shard)
        out = {}
        for name in names:
            t = data.get(f"{row}/{name}")
            if t is None:  # the index and the shard disagree: report the cache, not a bare KeyError
                raise DataError(self.dir / shard, f"cache shard has no tensor {row}/{name} for {eid}; "
                                                  f"delete {self.dir} to rebuild it")
            if not torch.isfinite(t.float()).all():
                raise DataError(self.dir / shard, f"cached tensor {eid}/{name} holds NaN or Inf")
            out[name] = t.float() if t.is_floating_point() else t
        return out

    def preload(self) -> None:
        """Keep every shard in memory (small datasets: one disk read per shard, total)."""
        self.max_open_shards = max(self.max_open_shards, len(self._shards))
        for s in self._shards:
            self._shard(s)
