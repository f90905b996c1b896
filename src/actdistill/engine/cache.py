"""On-disk feature cache: run frozen extractors once per sample and view, reuse forever.

A cache lives in ``<root>/<name>-<hash>/`` where the hash covers everything that changes the
stored tensors (extractor name, options and weights identity, sampling, crop, modality, views)
and the on-disk format version (:data:`CACHE_FORMAT`). Change any of it and a new cache folder is
used; nothing stale is ever read. Folders written by format 1 (one ``index.json`` rewritten on every
flush) therefore hash to other names and are never opened: they can simply be deleted.

Layout of a folder (format 2)::

    key.json                      what the hash covers (for people; never read back)
    meta.json                     small metadata dict, replaced atomically, merged across writers
    shard-<writer>-<n>.safetensors  tensors of up to ``shard_size`` entries, as ``<row>/<name>``
    index-<writer>.jsonl          one JSON line per shard: {"shard": ..., "entries": [[eid, row, names]]}
    index-<writer>.lock           flock held by the live process writing as <writer> (host/pid inside)

Why this shape, for EPIC-KITCHENS-100 scale (67k samples x 4 views) written by many ranks:

* **Append-only index.** A flush writes its shard (temporary file + rename), then appends one
  line naming it to the writer's own log. A flush costs O(entries flushed), never O(cache size),
  and a line only ever names a complete shard. A process killed mid-append leaves a torn final
  line without its newline: readers ignore it and the next writer with that name truncates it.
  A damaged line *before* the end cannot come from a kill, so it is reported as corruption.
* **One writer per log, many writers per cache.** Every writer name has its own shards and log, and
  an exclusive ``flock`` on its lock file, taken at the first write, so two processes can never
  append to one log; the OS drops the lock when the process dies. Instances in one process that
  share a writer name share the lock and serialise their flushes.
* **Readable while being extended.** Readers take no lock. Every instance reads every writer's log;
  :meth:`FeatureCache.refresh` continues each log from the byte offset it had reached. When two
  writers stored the same ``(uid, view)``, the entry from the writer whose name sorts first wins
  (then the earlier line), whatever order the lines were read in, so all processes agree.
* **Lazy reads.** :meth:`FeatureCache.get` reads only the requested entry's bytes (``pread`` at the
  offsets the safetensors header gives) through a small LRU of open shards, so memory does not
  grow with the cache. Not ``safe_open``: it memory-maps the shard, and every page a read touched
  stays in the process's resident set while the handle is open (8 open clip shards of 256
  entries are over a gigabyte). :meth:`FeatureCache.preload` is the explicit fast path for small
  caches that fit in memory.

The same cache stores decoded input clips (extractor ``None``: identity) so that several models
trained on the same fixed views decode the videos once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from actdistill.data.records import DataError
from actdistill.rundir import LockHeld, ProcessLock, atomic_write_text

CACHE_FORMAT = 2
"""On-disk layout version; part of the folder hash so a reader never opens another format's folder."""

META = "meta.json"
_WRITER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_LOG_PREFIX, _LOG_SUFFIX = "index-", ".jsonl"


def cache_key_hash(key: Mapping[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_id(uid: str, view: int) -> str:
    return f"{uid}#{view}"


def _split_id(eid: str) -> tuple[str, int]:
    uid, view = eid.rsplit("#", 1)
    return uid, int(view)


class _Entry(NamedTuple):
    """Where one entry's tensors are, and which log line said so (its precedence among writers)."""

    shard: str
    row: int
    names: tuple[str, ...]
    writer: str
    offset: int  # byte offset of the log line: earlier lines of one writer win

    def precedes(self, other: _Entry) -> bool:
        return (self.writer, self.offset) < (other.writer, other.offset)


class _LogCursor:
    """How far one writer's log has been read by one instance (complete lines only)."""

    __slots__ = ("lines", "offset", "shards")

    def __init__(self) -> None:
        self.offset = 0
        self.lines = 0
        self.shards: set[str] = set()


class _WriterLock:
    """The exclusive right of this process to append to one writer's log, shared by its instances.

    A :class:`~actdistill.rundir.ProcessLock` (the same host/pid ``flock`` that guards run
    directories): the OS releases it when the last instance drops this object or the process dies.
    """

    def __init__(self, lock_path: Path, log_path: Path, writer: str) -> None:
        try:
            self._lock = ProcessLock(lock_path)
        except LockHeld as err:
            raise DataError(lock_path, f"another process writes this cache as writer {writer!r} ({err.holder}); "
                                       "give each process its own writer name (e.g. rank0, rank1) or wait "
                                       "for it to finish") from None
        self.pid = self._lock.pid
        self.mutex = threading.Lock()
        _repair_torn_tail(log_path)


def _repair_torn_tail(log: Path) -> None:
    """Cut an unterminated final line (a writer killed mid-append) so the next line starts clean."""
    try:
        fh = open(log, "r+b")  # noqa: SIM115 - closed below, truncated in place
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep != end:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())


# lock file path -> the live _WriterLock of this process (shared by instances with one writer name)
_HELD: weakref.WeakValueDictionary[str, _WriterLock] = weakref.WeakValueDictionary()
_HELD_MUTEX = threading.Lock()


def _writer_lock(lock_path: Path, log_path: Path, writer: str) -> _WriterLock:
    key = os.path.realpath(lock_path)
    with _HELD_MUTEX:
        held = _HELD.get(key)
        if held is None or held.pid != os.getpid():  # a forked child must take its own lock
            held = _WriterLock(lock_path, log_path, writer)
            _HELD[key] = held
        return held


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class ShardReader:
    """Reads single tensors of a safetensors file with ``pread``: the header once, then only the
    bytes of the tensors asked for, into memory the caller owns (no memory map)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd = -1
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(self.fd).st_size
            raw = os.pread(self.fd, 8, 0)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            n = int.from_bytes(raw, "little")
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(os.pread(self.fd, n, 8))
            header.pop("__metadata__", None)
            self.base = 8 + n
            self.index: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
            for name, info in header.items():
                begin, end = info["data_offsets"]
                if info["dtype"] not in _DTYPES or not 0 <= begin <= end <= size - self.base:
                    raise ValueError(f"tensor {name!r}: unsupported dtype or offsets out of the file")
                self.index[name] = (_DTYPES[info["dtype"]], list(info["shape"]), begin, end)
        except BaseException:
            self.close()
            raise

    def keys(self) -> list[str]:
        return list(self.index)

    def get_tensor(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self.index[name]
        buf = bytearray(end - begin)
        got = os.preadv(self.fd, [buf], self.base + begin) if buf else 0
        if got != len(buf):
            raise ValueError(f"tensor {name!r} truncated ({got} of {len(buf)} bytes)")
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        """Close the file once (a second call, or ``__del__`` after it, must not close a descriptor
        number the process has since reused for another file)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def open_shard(path: str | Path) -> ShardReader:
    return ShardReader(path)


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FeatureCache:
    """Sharded safetensors store of per-sample tensor dicts, keyed by ``(uid, view)``.

    ``writer`` names this instance's shards, log and lock; give every concurrently writing process
    its own (``"rank0"``, ``"shard3of8"``). Reading needs no particular name. Entries written by
    other processes after construction become visible with :meth:`refresh`.
    """

    def __init__(self, root: str | Path, name: str, key: Mapping[str, Any], shard_size: int = 256,
                 dtype: torch.dtype | None = torch.float16, max_open_shards: int = 8,
                 writer: str = "main") -> None:
        if not _WRITER_NAME.fullmatch(writer):
            raise ValueError(f"writer name {writer!r} must be 1-64 letters, digits, '_', '.' or '-' "
                             "(it becomes part of file names)")
        self.key = dict(key)
        self.writer = writer
        self.dir = Path(root) / f"{name}-{cache_key_hash({'cache_format': CACHE_FORMAT, 'key': self.key})}"
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps({"cache_format": CACHE_FORMAT, "key": self.key},
                                                   indent=2, sort_keys=True, default=str))
        self.shard_size = shard_size
        self.dtype = dtype
        self.max_open_shards = max_open_shards
        self._entries: dict[str, _Entry] = {}
        self._logs: dict[str, _LogCursor] = {}
        self._shard_bytes: dict[str, int] = {}
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per distinct name list
        self._meta: dict[str, Any] = {}
        self._pending: list[tuple[str, dict[str, torch.Tensor]]] = []
        self._open: OrderedDict[str, tuple[Any, frozenset[str]]] = OrderedDict()
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}
        self._lock: _WriterLock | None = None
        self.refresh()

    # ----------------------------------------------------------------- index
    def _log_path(self, writer: str) -> Path:
        return self.dir / f"{_LOG_PREFIX}{writer}{_LOG_SUFFIX}"

    def refresh(self) -> int:
        """Read what every writer appended since the last call (and new writers' logs); re-read
        the metadata. Costs O(new lines), not O(cache size). Returns the number of new entries."""
        writers = set(self._logs)
        for path in self.dir.glob(f"{_LOG_PREFIX}*{_LOG_SUFFIX}"):
            writer = path.name[len(_LOG_PREFIX):-len(_LOG_SUFFIX)]
            if _WRITER_NAME.fullmatch(writer):
                writers.add(writer)
        added = sum(self._read_log(w) for w in sorted(writers))
        self._meta = self._read_meta()
        return added

    def _corrupt(self, path: Path, problem: str) -> DataError:
        return DataError(path, f"cache index is corrupt ({problem}); delete {self.dir} to rebuild it")

    def _read_log(self, writer: str) -> int:
        """Continue one writer's log from where this instance stopped; complete lines only, so a
        line being appended right now (or torn by a kill) is picked up later or never."""
        path = self._log_path(writer)
        cursor = self._logs.setdefault(writer, _LogCursor())
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return 0
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size < cursor.offset:
                raise self._corrupt(path, f"it shrank to {size} bytes below the {cursor.offset} already read")
            fh.seek(cursor.offset)
            data = fh.read(size - cursor.offset)
        complete = data.rfind(b"\n") + 1
        added, pos = 0, 0
        while pos < complete:
            end = data.index(b"\n", pos)
            added += self._apply_line(path, writer, cursor.offset + pos, data[pos:end])
            cursor.lines += 1
            pos = end + 1
        cursor.offset += complete
        return added

    def _apply_line(self, path: Path, writer: str, offset: int, raw: bytes) -> int:
        try:
            line = json.loads(raw)
            shard = line["shard"]
            rows = line["entries"]
            if not (isinstance(shard, str) and shard.endswith(".safetensors") and Path(shard).name == shard
                    and not shard.startswith(".")):
                raise TypeError(f"shard {shard!r} is not a shard file name")
            if not isinstance(rows, list):
                raise TypeError(f"entries is {type(rows).__name__}, expected a list")
            # every entry must be [eid, row, names]: checked here, so a damaged log is reported once as
            # corrupt instead of failing with a TypeError at some later get()
            for e in rows:
                if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and "#" in e[0]
                        and type(e[1]) is int and e[1] >= 0 and isinstance(e[2], list)
                        and all(isinstance(n, str) for n in e[2])):
                    raise TypeError(f"entry {e!r}, expected [eid, row, names]")
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            raise self._corrupt(path, f"line at byte {offset}: {err}") from None
        self._logs[writer].shards.add(shard)
        try:  # a shard deleted since (disk cleanup, damage): its entries count as missing and are redone
            self._shard_bytes[shard] = os.stat(self.dir / shard).st_size
        except FileNotFoundError:
            return 0
        added = 0
        for eid, row, names in rows:
            names_t = tuple(names)
            entry = _Entry(shard, row, self._names.setdefault(names_t, names_t), writer, offset)
            old = self._entries.get(eid)
            if old is None:
                added += 1
            if old is None or entry.precedes(old):
                self._entries[eid] = entry
        return added

    def _read_meta(self) -> dict[str, Any]:
        path = self.dir / META
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, RecursionError) as err:
            raise DataError(path, f"cache metadata is corrupt ({err}); delete {self.dir} to rebuild it") from None
        if not isinstance(meta, dict):
            raise DataError(path, f"cache metadata is {type(meta).__name__}, expected an object; "
                                  f"delete {self.dir} to rebuild it")
        return meta

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: tuple[str, int]) -> bool:
        return entry_id(*item) in self._entries

    def missing(self, uids: Iterable[str], views: int) -> list[tuple[str, int]]:
        uids = list(uids)
        return [(u, v) for v in range(views) for u in uids if entry_id(u, v) not in self._entries]

    def names(self, uid: str, view: int) -> tuple[str, ...]:
        """The tensor names stored for an entry (e.g. which modalities were present), from the log
        alone: no shard is opened."""
        try:
            return self._entries[entry_id(uid, view)].names
        except KeyError:
            raise KeyError(f"{entry_id(uid, view)} is not in cache {self.dir}") from None

    def entries(self) -> Iterator[tuple[str, int]]:
        """Every stored ``(uid, view)``, sorted, so all processes iterate in the same order."""
        return iter(sorted(_split_id(eid) for eid in self._entries))

    def nbytes(self) -> int:
        """Bytes on disk of the shards named by the logs read so far (present ones)."""
        return sum(self._shard_bytes.values())

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def set_meta(self, **meta: Any) -> None:
        """Merge ``meta`` into ``meta.json``: read, update and atomically replace it under a short
        lock, so keys set by other writers are kept rather than overwritten by a stale copy."""
        fd = os.open(self.dir / "meta.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            merged = {**self._read_meta(), **meta}
            atomic_write_text(self.dir / META, json.dumps(merged, default=str))
        finally:
            os.close(fd)
        self._meta = merged

    # ----------------------------------------------------------------- write
    def _acquire(self) -> _WriterLock:
        if self._lock is None or self._lock.pid != os.getpid():
            self._lock = _writer_lock(self.dir / f"{_LOG_PREFIX}{self.writer}.lock",
                                      self._log_path(self.writer), self.writer)
        return self._lock

    def add(self, uid: str, view: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Queue one entry; shards are flushed every ``shard_size`` entries (call :meth:`flush` at the end).

        The first call takes this writer's lock, so a second process using the same writer name
        fails here, before it writes anything. NaN/Inf are refused, after the conversion to the
        storage dtype (a finite float32 above 65504 becomes Inf in float16): written to disk they
        would only fail at a later :meth:`get`, in every later run, until the folder is deleted.
        """
        self._acquire()
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
        """Write the queued entries as one new shard, then append its log line.

        The shard is complete on disk (synced, renamed into place) before the line naming it
        exists, so a kill at any point leaves only whole shards listed. Nothing else is rewritten.
        """
        if not self._pending:
            return
        lock = self._acquire()
        with lock.mutex:
            self._read_log(self.writer)  # another instance of this process may have appended
            shard = self._new_shard_name()
            flat: dict[str, torch.Tensor] = {}
            rows: list[list[Any]] = []
            for row, (eid, tensors) in enumerate(self._pending):
                for name, t in tensors.items():
                    flat[f"{row}/{name}"] = t
                rows.append([eid, row, sorted(tensors)])
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".shard.", suffix=".tmp")
            os.close(fd)
            try:
                save_file(flat, tmp)
                _fsync_path(tmp)
                os.replace(tmp, self.dir / shard)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            line = json.dumps({"shard": shard, "entries": rows}, separators=(",", ":")).encode() + b"\n"
            fd = os.open(self._log_path(self.writer), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._pending.clear()
            self._read_log(self.writer)  # picks up the line just written: one code path for all entries

    def _new_shard_name(self) -> str:
        """A shard name no file and no log line of this writer has. A name once listed is never
        reused, even when its file was deleted: the old line would then point at new tensors."""
        cursor = self._logs.setdefault(self.writer, _LogCursor())
        n = cursor.lines
        while True:
            name = f"shard-{self.writer}-{n:06d}.safetensors"
            if name not in cursor.shards and not (self.dir / name).exists():
                return name
            n += 1

    def close(self) -> None:
        """Flush queued entries and give up the writer lock and open shard handles. The instance
        stays readable; a later :meth:`add` takes the lock again."""
        try:
            self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        self._lock = None  # the last instance holding it closes the lock file: flock released
        self._open.clear()
        self._loaded.clear()

    def __getstate__(self) -> dict[str, Any]:
        """A pickled copy (e.g. sent to a spawned DataLoader worker) is a reader: it carries neither
        this instance's lock nor its unflushed entries, and reopens shard handles on demand."""
        state = dict(self.__dict__)
        state.update(_lock=None, _pending=[], _open=OrderedDict())
        return state

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:  # the failure may be the flush itself: do not raise a second error over the first
            self._release()

    # ------------------------------------------------------------------ read
    def _handle(self, shard: str) -> tuple[Any, frozenset[str]]:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self.dir / shard
        try:
            handle = open_shard(path)
            opened = (handle, frozenset(handle.keys()))
        except (OSError, ValueError) as err:
            raise DataError(path, f"cache shard unreadable ({err}); delete {self.dir} to rebuild it") from None
        self._open[shard] = opened
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)[1][0].close()
        return opened

    def get(self, uid: str, view: int) -> dict[str, torch.Tensor]:
        """The entry's tensors (floats as float32). Reads only this entry's tensors from disk."""
        eid = entry_id(uid, view)
        try:
            entry = self._entries[eid]
        except KeyError:
            raise KeyError(f"{eid} is not in cache {self.dir}") from None
        path = self.dir / entry.shard
        loaded = self._loaded.get(entry.shard)
        if loaded is not None:  # held in memory: checked for NaN/Inf once, when it was loaded
            out = {}
            for name in entry.names:
                t = loaded.get(f"{entry.row}/{name}")
                if t is None:  # the log and the shard disagree: report the cache, not a bare KeyError
                    raise DataError(path, f"cache shard has no tensor {entry.row}/{name} for {eid}; "
                                          f"delete {self.dir} to rebuild it")
                out[name] = t.float() if t.is_floating_point() else t
            return out
        handle, keys = self._handle(entry.shard)
        out = {}
        for name in entry.names:
            tname = f"{entry.row}/{name}"
            if tname not in keys:  # the log and the shard disagree: report the cache, not a bare KeyError
                raise DataError(path, f"cache shard has no tensor {tname} for {eid}; "
                                      f"delete {self.dir} to rebuild it")
            try:
                t = handle.get_tensor(tname)
            except Exception as err:
                raise DataError(path, f"cache shard unreadable ({err}); "
                                      f"delete {self.dir} to rebuild it") from None
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise DataError(path, f"cached tensor {eid}/{name} holds NaN or Inf")
            out[name] = t.float() if t.is_floating_point() else t
        return out

    def preload(self) -> None:
        """Load every shard holding an entry fully into memory (small caches: one read per shard,
        total). Large caches should not call this: :meth:`get` alone reads lazily."""
        for shard in sorted({e.shard for e in self._entries.values()} - set(self._loaded)):
            path = self.dir / shard
            try:
                data = load_file(str(path))
            except Exception as err:  # safetensors raises its own error types
                raise DataError(path, f"cache shard unreadable ({err}); delete {self.dir} to rebuild it") from None
            for tname, t in data.items():  # once here, instead of on every read of a held shard
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise DataError(path, f"cached tensor {tname} holds NaN or Inf")
            self._loaded[shard] = data
            self._open.pop(shard, None)
