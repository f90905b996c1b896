from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from actdistill.data.records import DataError
from actdistill.engine.cache import FeatureCache
from actdistill.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_foreign_state_dict,
    save_checkpoint,
)
from actdistill.engine.trainer import OptimConfig, fit
from actdistill.evaluation.metrics import action_hits, expected_calibration_error, score
from actdistill.evaluation.protocols import drop_modalities, evaluate_missing_modalities, modality_subsets


def test_cache_roundtrip_resume_and_key(tmp_path: Path) -> None:
    key = {"extractor": "x", "views": 1}
    c = FeatureCache(tmp_path, "feat", key, shard_size=2)
    for i in range(3):
        c.add(f"u{i}", 0, {"rgb": torch.full((2, 3), float(i)), "flow": torch.ones(1)})
    c.flush()
    again = FeatureCache(tmp_path, "feat", key)  # a new process: reads the index
    assert len(again) == 3 and ("u1", 0) in again
    assert again.missing(["u0", "u9"], 1) == [("u9", 0)]
    assert torch.equal(again.get("u2", 0)["rgb"], torch.full((2, 3), 2.0))
    other = FeatureCache(tmp_path, "feat", {**key, "views": 2})
    assert len(other) == 0 and other.dir != c.dir
    # a half-written shard (killed job) is never read: the index only names complete shards
    (c.dir / ".shard.abc.tmp").write_bytes(b"garbage")
    assert len(FeatureCache(tmp_path, "feat", key)) == 3


def test_clip_cache_key_follows_the_data_files(tmp_path: Path) -> None:
    """Regenerated data or an edited annotation file must not read clips cached from the old files."""
    import os

    from actdistill.data.builder import DataConfig
    from actdistill.engine.clips import clip_cache_key

    ann = tmp_path / "annotations"
    ann.mkdir()
    (tmp_path / "synth_meta.json").write_text('{"version": 2}')
    (ann / "EPIC_100_train.csv").write_text("a,b\n")
    cfg = DataConfig(root=str(tmp_path), annotations=str(ann))
    key = clip_cache_key(cfg, "train", True)
    assert clip_cache_key(cfg, "train", True) == key
    cfg.options["generate"] = False  # whether the adapter may write the data, not what it reads
    assert clip_cache_key(cfg, "train", True) == key
    (tmp_path / "P01").mkdir()  # folders (frames, videos) are not stamped: stat calls stay few
    assert clip_cache_key(cfg, "train", True) == key
    (ann / "EPIC_100_train.csv").write_text("a,b\n1,2\n")
    edited = clip_cache_key(cfg, "train", True)
    assert edited != key
    st = (tmp_path / "synth_meta.json").stat()
    os.utime(tmp_path / "synth_meta.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert clip_cache_key(cfg, "train", True) != edited


def test_cache_rejects_nan_and_corrupt_index(tmp_path: Path) -> None:
    c = FeatureCache(tmp_path, "feat", {"k": 1}, shard_size=1, dtype=None)
    with pytest.raises(DataError, match="NaN or Inf"):  # refused when written (read-side: test_reliability)
        c.add("bad", 0, {"rgb": torch.tensor([float("nan")])})
    c.add("good", 0, {"rgb": torch.tensor([1.0])})
    log = c.dir / "index-main.jsonl"  # a damaged line before the last one (a torn last line is ignored)
    log.write_bytes(b"{not json\n" + log.read_bytes())
    with pytest.raises(DataError, match="cache index is corrupt"):
        FeatureCache(tmp_path, "feat", {"k": 1})


def test_checkpoint_roundtrip_and_foreign_loading(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 1, model, opt, extra={"note": "x"})
    assert latest_checkpoint(tmp_path) == path
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    state = load_checkpoint(path, model2, opt2)
    assert state["epoch"] == 1 and state["extra"]["note"] == "x"
    assert torch.equal(model.weight, model2.weight)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    # foreign: plain state dict is fine, a pickled object payload is refused with a clear message
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    assert set(load_foreign_state_dict(tmp_path / "w.pth")) == {"weight", "bias"}

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"weight": Evil()}))
    with pytest.raises(DataError, match="refused"):
        load_foreign_state_dict(tmp_path / "evil.pth")


class Killed(Exception):
    pass


def _toy_run(run_dir: Path, epochs: int, kill_at: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    calls = [0]
    model = torch.nn.Linear(4, 3)
    x = torch.randn(32, 4)
    y = torch.randint(0, 3, (32,))

    def batches(epoch: int):
        perm = torch.randperm(32)  # global RNG: restored on resume
        for i in range(0, 32, 8):
            yield {"x": x[perm[i:i + 8]], "y": y[perm[i:i + 8]]}

    def step(b):
        calls[0] += 1
        if calls[0] == kill_at:
            raise Killed
        return {"loss": torch.nn.functional.cross_entropy(model(b["x"]), b["y"])}

    fit(model, step, batches, 4, OptimConfig(epochs=epochs, lr=0.05), run_dir, "toy", progress=False)
    return model


def test_resume_gives_identical_weights(tmp_path: Path) -> None:
    full = _toy_run(tmp_path / "a", 4)
    with pytest.raises(Killed):
        _toy_run(tmp_path / "b", 4, kill_at=11)  # killed in the middle of epoch 3
    resumed = _toy_run(tmp_path / "b", 4)
    assert torch.equal(full.weight, resumed.weight)
    hist = json.loads((latest_checkpoint(tmp_path / "b", "checkpoints/toy") / "state.json").read_text())
    assert len(hist["extra"]["history"]) == 4


def test_metrics() -> None:
    v = torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])
    n = torch.tensor([[0, 5.0], [5.0, 0]])
    assert action_hits(v, n, torch.tensor([0, 1]), torch.tensor([1, 0]), 1).tolist() == [True, True]
    assert action_hits(v, n, torch.tensor([0, 0]), torch.tensor([1, 0]), 1).tolist() == [True, False]
    assert action_hits(v, n, torch.tensor([0, 0]), torch.tensor([1, 0]), 5).tolist() == [True, True]
    m = score({"verb": v, "noun": n}, {"verb": torch.tensor([0, -1]), "noun": torch.tensor([1, 0])})
    assert m["verb_top1"] == 100.0 and m["action_top1"] == 100.0 and m["noun_top1"] == 100.0
    confident_right = torch.tensor([[10.0, -10.0]] * 4)
    assert expected_calibration_error(confident_right, torch.zeros(4, dtype=torch.long)) < 1e-3
    assert expected_calibration_error(confident_right, torch.ones(4, dtype=torch.long)) > 0.99


def test_drop_and_subset_protocols() -> None:
    g = torch.Generator().manual_seed(0)
    present = torch.tensor([[True, True, False]] * 200 + [[True, False, False]] * 50)
    for p in (0.0, 0.5, 0.9, 1.0):
        kept = drop_modalities(present, p, g)
        assert (kept <= present).all() and kept.any(1).all()
    assert len(modality_subsets(["a", "b", "c", "d"])) == 15
    # a model that is right only when modality 0 is present
    labels = torch.arange(4) % 2

    def predict(batch, present):
        good = torch.nn.functional.one_hot(batch["labels"]["class"], 2).float()
        return {"class": torch.where(present[:, :1], good, 1 - good)}

    batches = [{"present": torch.ones(4, 2, dtype=torch.bool), "labels": {"class": labels}}]
    res = evaluate_missing_modalities(predict, batches, ["a", "b"], drop_rates=(0.0, 0.5))
    assert res["subsets"] == {"a": 100.0, "b": 0.0, "a+b": 100.0}
    assert res["worst_subset"] == {"subset": "b", "accuracy": 0.0}
    assert res["drop_curve"][0] == 100.0 and 0 <= res["auc"] <= 100


def test_drop_repeats_average_seeded_draws() -> None:
    """A model right only when modality ``a`` is present: at p = 0.5 ``a`` is kept with probability
    0.5, plus 0.25 x 0.5 when both were dropped and it is the one restored: the mean over draws
    approaches 62.5%."""
    labels = torch.arange(40) % 2

    def predict(batch, present):
        good = torch.nn.functional.one_hot(batch["labels"]["class"], 2).float()
        return {"class": torch.where(present[:, :1], good, 1 - good)}

    batches = [{"present": torch.ones(40, 2, dtype=torch.bool), "labels": {"class": labels}}]
    one = evaluate_missing_modalities(predict, batches, ["a", "b"], drop_rates=(0.5,))
    again = evaluate_missing_modalities(predict, batches, ["a", "b"], drop_rates=(0.5,), drop_repeats=1)
    many = evaluate_missing_modalities(predict, batches, ["a", "b"], drop_rates=(0.5,), drop_repeats=50)
    assert one["drop_curve"] == again["drop_curve"]  # draw 0 is the single-draw protocol's draw
    assert many["drop_metrics"][0]["draws"] == 50
    assert abs(many["drop_curve"][0] - 62.5) < 3.0  # 50 draws x 40 clips: sd of the mean ~1.1
    assert many["drop_curve"] == evaluate_missing_modalities(
        predict, batches, ["a", "b"], drop_rates=(0.5,), drop_repeats=50)["drop_curve"]  # seeded
    with pytest.raises(ValueError, match="drop_repeats"):
        evaluate_missing_modalities(predict, batches, ["a", "b"], drop_rates=(0.5,), drop_repeats=0)


def test_drop_draws_do_not_depend_on_batching_or_sharing_out() -> None:
    """Drop draws are keyed per sample: the protocol gives the same numbers whatever the batch
    size, and when the samples are shared out to two processes whose results are merged."""
    from actdistill.evaluation.protocols import Collected

    gen = torch.Generator().manual_seed(1)
    n = 30
    present = torch.rand(n, 3, generator=gen) < 0.8
    present[:, 0] = True
    labels = torch.randint(0, 3, (n,), generator=gen)
    weights = torch.randn(3, 3, generator=gen)

    def predict(batch, present):
        return {"class": present.float() @ weights + torch.nn.functional.one_hot(batch["labels"]["class"], 3)}

    def batches(rows, size):
        for i in range(0, len(rows), size):
            idx = torch.tensor(rows[i:i + size])
            yield {"present": present[idx], "labels": {"class": labels[idx]}, "index": idx,
                   "uid": [f"clip{j}" for j in idx.tolist()]}

    def run(shares, size):
        parts = []
        res = None
        for share in shares:
            res = evaluate_missing_modalities(predict, batches(share, size), ["a", "b", "c"], drop_rates=(0.5, 0.9),
                                              drop_repeats=3, gather=lambda c: parts.append(c) or c)
        if len(shares) == 1:
            return res
        merged = Collected.merge(parts)
        return evaluate_missing_modalities(predict, [], ["a", "b", "c"], drop_rates=(0.5, 0.9), drop_repeats=3,
                                           gather=lambda _c: merged)

    whole = run([list(range(n))], 7)
    for other in (run([list(range(n))], 30), run([list(range(0, n, 2)), list(range(1, n, 2))], 4)):
        assert other["subsets"] == whole["subsets"] and other["drop_curve"] == whole["drop_curve"]
        torch.testing.assert_close(other["full"]["logits"]["class"], whole["full"]["logits"]["class"])


def test_wilson_interval_known_values_and_edges() -> None:
    from actdistill.evaluation.protocols import wilson_interval

    assert wilson_interval(50.0, 100) == [40.38, 59.62]  # textbook value for 50/100
    lo, hi = wilson_interval(26.25, 80)  # 21 of 80 clips: the demo student's scale
    assert 17.0 < lo < 19.0 and 36.0 < hi < 38.0
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(100.0, 10)[1] == 100.0
    assert all(x != x for x in wilson_interval(50.0, 0))  # no samples: NaN, not a fake interval


def test_process_group_timeout_comes_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.dist_timeout_min`` reaches ``init_process_group`` (a rank waits that long at a barrier);
    the default is 30 minutes."""
    from datetime import timedelta

    import torch.distributed as dist

    from actdistill.engine import distributed

    seen: list[dict] = []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "is_distributed", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.append(kw))
    distributed.init_from_env(5.0)
    distributed.init_from_env()
    assert [kw["timeout"] for kw in seen] == [timedelta(minutes=5), timedelta(minutes=30)]
