"""FeatureCache at scale: append-only per-writer logs, lazy reads, many writers, readers that refresh."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from actdistill.data.records import DataError
from actdistill.engine import cache as cm
from actdistill.engine.cache import FeatureCache, cache_key_hash

KEY = {"extractor": "x", "views": 2}


def _tensors(i: int, view: int) -> dict[str, torch.Tensor]:
    """Deterministic, varied entries: float (stored as float16 by default), int, and a ragged shape."""
    g = torch.Generator().manual_seed(1000 * view + i)
    return {"rgb": torch.randn(3, 4, generator=g), "n": torch.arange(i % 5 + 1),
            "flow": torch.rand(i % 3 + 1, 2, generator=g)}


def _log(c: FeatureCache, writer: str = "main") -> Path:
    return c.dir / f"index-{writer}.jsonl"


def _fill(c: FeatureCache, items: list[tuple[int, int]]) -> None:
    for i, v in items:
        c.add(f"u{i:03d}", v, _tensors(i, v))
    c.flush()


def test_flush_only_appends_to_the_log_and_touches_no_other_shard(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=2)
    previous = b""
    shards: dict[str, tuple[int, int, int]] = {}
    for step in range(12):
        c.add(f"u{step:03d}", 0, _tensors(step, 0))
        c.flush()
        log = _log(c).read_bytes()
        assert log.startswith(previous) and log.count(b"\n") == step + 1  # grew by one line, head untouched
        previous = log
        for name, before in shards.items():  # earlier shards are neither rewritten nor replaced
            st = (c.dir / name).stat()
            assert (st.st_ino, st.st_size, st.st_mtime_ns) == before
        new = {p.name for p in c.dir.glob("shard-*.safetensors")} - set(shards)
        assert len(new) == 1  # exactly one file written per flush
        name = new.pop()
        st = (c.dir / name).stat()
        shards[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    assert len(c) == 12 and not (c.dir / "index.json").exists()
    assert c.nbytes() == sum((c.dir / s).stat().st_size for s in shards)
    lines = [json.loads(line) for line in _log(c).read_bytes().splitlines()]
    assert [len(line["entries"]) for line in lines] == [1] * 12 and {line["shard"] for line in lines} == set(shards)


def test_torn_last_line_is_ignored_then_repaired_by_the_next_writer(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=2)
    _fill(c, [(i, 0) for i in range(4)])
    c.close()
    intact = _log(c).read_bytes()
    torn = b'{"shard":"shard-main-000002.safetensors","entries":[["u004#0",0,'  # a kill mid-append
    _log(c).write_bytes(intact + torn)
    reader = FeatureCache(tmp_path, "feat", KEY)
    assert len(reader) == 4 and reader.missing([f"u{i:03d}" for i in range(5)], 1) == [("u004", 0)]
    writer = FeatureCache(tmp_path, "feat", KEY, shard_size=2)
    _fill(writer, [(4, 0)])
    log = _log(c).read_bytes()
    assert log.startswith(intact) and log.count(b"\n") == 3 and log.endswith(b"]]]}\n")
    assert all(json.loads(line) for line in log.splitlines())
    assert reader.refresh() == 1 and torch.equal(reader.get("u004", 0)["n"], torch.arange(5))


def test_corrupt_middle_line_is_a_data_error_naming_the_log(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=1)
    _fill(c, [(0, 0), (1, 0)])
    first, rest = _log(c).read_bytes().split(b"\n", 1)
    _log(c).write_bytes(first[:-5] + b"\n" + rest)
    with pytest.raises(DataError, match="cache index is corrupt") as err:
        FeatureCache(tmp_path, "feat", KEY)
    assert err.value.path == str(_log(c)) and f"delete {c.dir}" in err.value.problem
    _log(c).write_bytes(first + b'\n{"shard": "../../etc/passwd.safetensors", "entries": []}\n' + rest)
    with pytest.raises(DataError, match="not a shard file name"):  # a log never names files elsewhere
        FeatureCache(tmp_path, "feat", KEY)


class _SpyHandle:
    def __init__(self, inner: Any, reads: list[str]) -> None:
        self.inner, self.reads = inner, reads

    def keys(self) -> list[str]:
        return self.inner.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        self.reads.append(name)
        return self.inner.get_tensor(name)

    def close(self) -> None:
        self.inner.close()


def test_get_reads_only_the_requested_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=4)
    _fill(c, [(i, 0) for i in range(12)])
    opened: list[str] = []
    reads: list[str] = []
    real_open, real_load = cm.open_shard, cm.load_file

    def spy_open(path: str) -> _SpyHandle:
        opened.append(Path(path).name)
        return _SpyHandle(real_open(path), reads)

    def no_full_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("get() must not load a whole shard")

    monkeypatch.setattr(cm, "open_shard", spy_open)
    monkeypatch.setattr(cm, "load_file", no_full_load)
    reader = FeatureCache(tmp_path, "feat", KEY)
    got = reader.get("u005", 0)
    assert opened == [reader._entries["u005#0"].shard] and sorted(reads) == ["1/flow", "1/n", "1/rgb"]
    assert torch.equal(got["n"], torch.arange(1)) and got["rgb"].dtype == torch.float32
    reader.get("u006", 0)  # same shard: the open handle is reused
    assert len(opened) == 1 and len(reads) == 6
    monkeypatch.setattr(cm, "load_file", real_load)
    reader.preload()  # the explicit in-memory path: later gets read no file
    reads.clear()
    assert torch.equal(reader.get("u011", 0)["n"], torch.arange(2)) and reads == [] and len(opened) == 1


def test_shard_reader_reads_what_safetensors_wrote(tmp_path: Path) -> None:
    """The pread reader returns, tensor by tensor, exactly what safetensors stored (every dtype the
    cache writes, empty and scalar tensors), and a truncated shard is a clear error."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 4, generator=gen).half(), "b": torch.arange(5), "c": torch.randn(2, generator=gen),
               "d": torch.zeros(0, 3), "e": torch.tensor(7, dtype=torch.int32), "f": torch.tensor([True, False]),
               "g": torch.randn(2, 2, generator=gen).bfloat16()}
    path = tmp_path / "s.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    reader = cm.open_shard(path)
    assert sorted(reader.keys()) == sorted(tensors)
    for name, t in tensors.items():
        got = reader.get_tensor(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name
    reader.close()
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"out of the file|truncated"):
        cm.open_shard(path).get_tensor("g")


def test_refresh_sees_entries_another_instance_appended(tmp_path: Path) -> None:
    reader = FeatureCache(tmp_path, "feat", KEY)
    writer = FeatureCache(tmp_path, "feat", KEY, shard_size=2, writer="rank1")
    _fill(writer, [(0, 0), (1, 0), (2, 0)])
    assert len(reader) == 0 and ("u000", 0) not in reader  # a snapshot until refreshed
    assert reader.refresh() == 3 and reader.missing(["u000", "u001", "u002", "u003"], 1) == [("u003", 0)]
    applied: list[int] = []
    real_apply = reader._apply_line
    reader._apply_line = lambda *a: applied.append(a[2]) or real_apply(*a)  # type: ignore[method-assign]
    _fill(writer, [(3, 0)])
    assert reader.refresh() == 1 and len(applied) == 1  # only the new line was parsed, not the whole log
    assert applied[0] == _log(writer, "rank1").read_bytes().rindex(b"\n", 0, -1) + 1
    assert reader.refresh() == 0 and len(applied) == 1
    assert torch.equal(reader.get("u003", 0)["n"], torch.arange(4))


def test_disjoint_writers_merge_bit_identical_to_one_writer(tmp_path: Path) -> None:
    items = [(i, v) for v in range(2) for i in range(23)]
    one = FeatureCache(tmp_path / "one", "feat", KEY, shard_size=5)
    _fill(one, items)
    for r in range(3):  # interleaved shares, different shard boundaries
        with FeatureCache(tmp_path / "many", "feat", KEY, shard_size=4, writer=f"rank{r}") as w:
            _fill(w, items[r::3])
    merged = FeatureCache(tmp_path / "many", "feat", KEY)
    assert len(list((merged.dir).glob("index-rank*.jsonl"))) == 3
    assert list(merged.entries()) == list(one.entries()) == sorted((f"u{i:03d}", v) for i, v in items)
    for uid, view in one.entries():
        a, b = one.get(uid, view), merged.get(uid, view)
        assert a.keys() == b.keys()
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_duplicate_entries_resolve_by_sorted_writer_name(tmp_path: Path) -> None:
    def write(writer: str, value: float) -> None:
        with FeatureCache(tmp_path, "feat", KEY, dtype=None, writer=writer) as w:
            w.add("u", 0, {"x": torch.tensor([value])})

    write("b", 2.0)
    early = FeatureCache(tmp_path, "feat", KEY)  # has read b's line only
    write("a", 1.0)
    early.refresh()
    late = FeatureCache(tmp_path, "feat", KEY)
    assert float(early.get("u", 0)["x"]) == float(late.get("u", 0)["x"]) == 1.0 and len(late) == 1


CHILD = """
import sys
import torch
from actdistill.engine.cache import FeatureCache
c = FeatureCache(sys.argv[1], "feat", {"extractor": "x", "views": 2}, writer="rank0")
c.add("child", 0, {"x": torch.ones(2)})
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the parent closes our stdin
c.close()
"""


def test_second_live_writer_with_the_same_name_is_refused(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n", proc.stderr.read()
        clash = FeatureCache(tmp_path, "feat", KEY, writer="rank0")  # reading is fine
        with pytest.raises(DataError, match="another process writes this cache as writer 'rank0'") as err:
            clash.add("parent", 0, {"x": torch.zeros(2)})
        assert f"pid {proc.pid}" in err.value.problem and err.value.path.endswith("index-rank0.lock")
        with FeatureCache(tmp_path, "feat", KEY, writer="rank1") as other:  # another name proceeds meanwhile
            other.add("parent", 1, {"x": torch.zeros(2)})
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    with FeatureCache(tmp_path, "feat", KEY, writer="rank0") as again:  # the lock died with its process
        again.add("parent", 0, {"x": torch.zeros(2)})
    done = FeatureCache(tmp_path, "feat", KEY)
    assert list(done.entries()) == [("child", 0), ("parent", 0), ("parent", 1)]


def _lock_is_free(c: FeatureCache) -> bool:
    fd = os.open(c.dir / f"index-{c.writer}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_lock_taken_at_first_write_shared_in_process_released_on_close(tmp_path: Path) -> None:
    a = FeatureCache(tmp_path, "feat", KEY, dtype=None)
    b = FeatureCache(tmp_path, "feat", KEY, dtype=None)  # same writer, same process: shares the lock
    a.add("a", 0, {"x": torch.ones(1)})
    b.add("b", 0, {"x": torch.zeros(1)})
    assert not _lock_is_free(a)
    a.flush()
    b.flush()  # numbers its shard after a's, never over it
    assert len({e.shard for e in FeatureCache(tmp_path, "feat", KEY)._entries.values()}) == 2
    a.close()
    assert not _lock_is_free(b)
    b.close()
    assert _lock_is_free(b)
    assert len(b) == 2 and float(b.get("a", 0)["x"]) == 1.0  # b caught up with a at its flush; readable after close
    with pytest.raises(ValueError, match="writer name"):
        FeatureCache(tmp_path, "feat", KEY, writer="../x")


def test_deleted_shard_is_recomputed_under_a_new_name(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=2)
    _fill(c, [(i, 0) for i in range(4)])
    gone = c._entries["u000#0"].shard
    (c.dir / gone).unlink()
    again = FeatureCache(tmp_path, "feat", KEY, shard_size=2)
    todo = again.missing([f"u{i:03d}" for i in range(4)], 1)
    assert todo == [("u000", 0), ("u001", 0)]
    _fill(again, [(int(u[1:]), v) for u, v in todo])
    assert again._entries["u000#0"].shard != gone
    final = FeatureCache(tmp_path, "feat", KEY)
    assert all(torch.equal(final.get(f"u{i:03d}", 0)["n"], torch.arange(i % 5 + 1)) for i in range(4))


def test_meta_is_merged_across_writers(tmp_path: Path) -> None:
    a = FeatureCache(tmp_path, "feat", KEY, writer="rank0")
    b = FeatureCache(tmp_path, "feat", KEY, writer="rank1")  # opened before a's metadata existed
    a.set_meta(token_counts={"rgb": 8})
    b.set_meta(fps=30)
    assert FeatureCache(tmp_path, "feat", KEY).meta == {"token_counts": {"rgb": 8}, "fps": 30}
    assert a.refresh() == 0 and a.meta["fps"] == 30


def test_old_format_folders_are_never_read(tmp_path: Path) -> None:
    old = tmp_path / f"feat-{cache_key_hash(KEY)}"  # format 1: index.json, hashed over the key only
    old.mkdir()
    (old / "index.json").write_text('{"entries": {"u#0": ["s", 0, ["x"]]}, "shards": ["s"], "meta": {}}')
    c = FeatureCache(tmp_path, "feat", KEY)
    assert c.dir != old and len(c) == 0 and json.loads((c.dir / "key.json").read_text())["cache_format"] == 2


def test_nan_refused_at_write_and_on_read(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=1, dtype=None)
    with pytest.raises(DataError, match="NaN or Inf"):
        c.add("bad", 0, {"x": torch.tensor([1.0, float("nan")])})
    with pytest.raises(DataError, match=r"beyond the range of torch\.float16"):
        FeatureCache(tmp_path, "feat", KEY).add("big", 0, {"x": torch.tensor([70000.0])})
    assert len(c) == 0 and not list(c.dir.glob("shard*")) and not _log(c).exists()
    c.add("ok", 0, {"x": torch.ones(2)})
    shard = c.dir / c._entries["ok#0"].shard
    from safetensors.torch import save_file

    save_file({"0/x": torch.tensor([float("inf"), 0.0])}, str(shard))  # damaged on disk afterwards
    with pytest.raises(DataError, match="holds NaN or Inf") as err:
        FeatureCache(tmp_path, "feat", KEY).get("ok", 0)
    assert err.value.path == str(shard)


def test_names_and_pickled_reader(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", KEY, shard_size=2)
    _fill(c, [(0, 0), (1, 0), (2, 0)])
    c.add("pending", 0, {"x": torch.ones(1)})
    c.get("u000", 0)  # opens a shard handle, which cannot be pickled
    assert c.names("u001", 0) == ("flow", "n", "rgb")
    with pytest.raises(KeyError, match="u009#0 is not in cache"):
        c.names("u009", 0)
    copy = pickle.loads(pickle.dumps(c))  # e.g. a spawned DataLoader worker's copy
    assert list(copy.entries()) == list(c.entries()) and copy._pending == [] and copy._lock is None
    assert all(torch.equal(copy.get("u002", 0)[k], c.get("u002", 0)[k]) for k in ("flow", "n", "rgb"))
