"""The streaming data layer of the KARMMA engine: lazy splits, rank batches, sharded decoding and
extraction, consistent teaching (a view is a pure function of seed, uid and view number)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actdistill.config import build_config
from actdistill.data.builder import build_dataset, load_index
from actdistill.data.datasets.synthetic import write_synthetic_epic
from actdistill.engine.cache import FeatureCache
from actdistill.engine.clips import (
    CachedSplit,
    CollateViews,
    Dropout,
    EpochBatches,
    OnlineClips,
    Shard,
    ViewDataset,
    clip_cache_key,
    decode_clips,
    load_clips,
    make_loader,
    map_split,
    steps_per_epoch,
)
from actdistill.engine.karmma import KarmmaConfig

DATA = ["data.options.size=tiny", "data.options.generate=false", "data.modalities=[rgb,flow,audio,depth]",
        "data.sampling.num_frames=4", "data.spatial.short_side=32", "data.spatial.crop_size=28"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    return root


def _data(root: Path):  # type: ignore[no-untyped-def]
    return build_config(KarmmaConfig, None, [f"data.root={root}", *DATA]).data


@pytest.mark.parametrize(("n", "batch", "world"), [(23, 4, 2), (40, 8, 2), (17, 3, 3), (9, 4, 1)])
def test_rank_batches_are_slices_of_one_process_batches(n: int, batch: int, world: int) -> None:
    """W ranks at batch B take, step by step, the W slices of the batch one process takes at
    batch W*B: same samples, same order, same number of steps on every rank."""
    single = list(EpochBatches(n, batch * world, True, seed=3, epoch=1))
    ranks = [list(EpochBatches(n, batch, True, seed=3, epoch=1, rank=r, world=world)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1
    assert len(ranks[0]) == steps_per_epoch(n, batch, world)
    for step, whole in enumerate(single):
        joined = [i for r in ranks for i in r[step]] if step < len(ranks[0]) else []
        if len(whole) % world == 0:
            assert joined == whole
        else:  # the short last global batch: split evenly, the remainder below W left out
            assert joined == whole[:len(whole) - len(whole) % world]
    # another epoch is another order; resuming at batch k yields the rest of the same epoch
    assert list(EpochBatches(n, batch, True, 3, 2)) != list(EpochBatches(n, batch, True, 3, 1))
    assert list(EpochBatches(n, batch, True, 3, 1, start=2)) == list(EpochBatches(n, batch, True, 3, 1))[2:]


def test_schedule_counts_the_steps_each_rank_takes() -> None:
    """The LR schedule must be sized by the steps a rank really takes: about half with 2 ranks."""
    assert steps_per_epoch(300, 16, 1) == 19
    assert steps_per_epoch(300, 16, 2) == 10
    assert len(EpochBatches(300, 16, True, 0, 0, rank=1, world=2)) == 10


def test_shards_decode_and_extract_bit_identical_to_one_process(tiny_root: Path, tmp_path: Path) -> None:
    """Two shards (as two ranks or two array jobs) writing their own cache files give exactly the
    tensors one process writes, for decoded clips and for extracted features; a rerun decodes
    nothing that is already there."""
    data = _data(tiny_root)
    index = load_index(data, "train")
    one, two = tmp_path / "one", tmp_path / "two"
    n1 = decode_clips(data, "train", True, 2, index, str(one), Shard(), chunk=2)
    n2 = [decode_clips(data, "train", True, 2, index, str(two), Shard(i, 2), chunk=2) for i in (1, 0)]
    assert n2[0] and n2[1], "both shards have work (3 chunks of 2 samples)"
    n2 = sum(n2)
    assert n1 == n2 == 2 * len(index.segments)
    assert decode_clips(data, "train", True, 2, index, str(two), Shard(0, 2), chunk=2) == 0  # nothing left
    key = clip_cache_key(data, "train", True)
    a, b = FeatureCache(one, "clips-train", key), FeatureCache(two, "clips-train", key)
    assert sorted(a.entries()) == sorted(b.entries())
    for uid, view in a.entries():
        x, y = a.get(uid, view), b.get(uid, view)
        assert x.keys() == y.keys() and all(torch.equal(x[m], y[m]) for m in x)

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3)

    def fn(inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        rgb = inputs["rgb"].flatten(0, 1)
        return {"rgb": net(rgb).mean((2, 3)).view(*inputs["rgb"].shape[:2], -1)}

    outs = []
    for root, shards in ((one, [Shard()]), (two, [Shard(0, 2), Shard(1, 2)])):
        split = CachedSplit(FeatureCache(root, "clips-train", key), [s.uid for s in index.segments], None,
                            data.modalities, 2)
        for shard in shards:
            with FeatureCache(root, "feats", {"k": 1}, writer=shard.writer) as out:
                map_split(split, fn, out, shard, "feats", progress=False, chunk=2)
        outs.append(FeatureCache(root, "feats", {"k": 1}))
    assert len(outs[0]) == len(outs[1]) == 2 * len(index.segments)
    for uid, view in outs[0].entries():
        assert torch.equal(outs[0].get(uid, view)["rgb"], outs[1].get(uid, view)["rgb"])


def test_a_view_is_a_pure_function_of_seed_uid_and_view(tiny_root: Path, tmp_path: Path) -> None:
    """Consistent teaching without storing clips: decoding sample ``uid`` in view ``k`` online, from
    any subset, order or worker, gives exactly the tensors cached for (uid, k), which are those the
    frozen extractor saw and the student's loader yields."""
    from torch.utils.data import Subset

    data = _data(tiny_root)
    index = load_index(data, "train")
    split = load_clips(data, "train", True, 3, str(tmp_path), index, progress=False)
    ds = build_dataset(data, "train", True, index=index)
    picks = [5, 0, 3]
    for view in (2, 0, 1):
        ds.set_epoch(view)
        online = Subset(ds, picks)  # another subset, another order
        loader = make_loader(ViewDataset(split, view), 4, False, 0, 0, 0, shard=False)
        streamed = {int(i): b for b in loader for i in b["index"]}
        for k in range(len(picks)):
            sample = online[k]
            row = split.uids.index(sample["uid"])
            cached = split.item(row, view)
            for m, x in sample["inputs"].items():
                assert torch.equal(x[0].to(torch.float16).float(), cached[m]), (sample["uid"], view, m)
            batch_rows = streamed[row]
            pos = batch_rows["index"].tolist().index(row)
            for m in cached:
                assert torch.equal(batch_rows["inputs"][m][pos], cached[m])


def test_modality_dropout_is_drawn_per_sample(tiny_root: Path, tmp_path: Path) -> None:
    """A sample's dropped modalities in an epoch do not depend on its batch or rank; they change
    with the epoch; a present modality is never invented and a sample keeps at least one."""
    data = _data(tiny_root)
    split = load_clips(data, "train", True, 1, str(tmp_path), load_index(data, "train"), progress=False)
    drop = Dropout(0.7, seed=5)
    ds = ViewDataset(split, 0, dropout=drop, epoch=3)
    alone = {i: ds[i]["mask"] for i in range(len(ds))}
    loader = make_loader(ds, 5, True, 1, 3, 0, shard=False)
    for b in loader:
        for r, i in enumerate(b["index"].tolist()):
            assert torch.equal(b["mask"][r], alone[i])
            assert bool(b["mask"][r].any()) and not bool((b["mask"][r] & ~b["present"][r]).any())
    other = ViewDataset(split, 0, dropout=drop, epoch=4)
    assert any(not torch.equal(other[i]["mask"], alone[i]) for i in range(len(ds)))


def test_collate_zero_fills_absent_modalities(tiny_root: Path, tmp_path: Path) -> None:
    data = _data(tiny_root)
    split = load_clips(data, "train", True, 1, str(tmp_path), load_index(data, "train"), progress=False)
    items = [ViewDataset(split, 0)[i] for i in range(3)]
    del items[1]["inputs"]["audio"]
    b = CollateViews(split)(items)
    j = split.modalities.index("audio")
    assert b["present"][:, j].tolist() == [True, False, True]
    assert b["inputs"]["audio"].dtype == torch.float32 and not bool(b["inputs"]["audio"][1].any())


def test_online_clips_equal_the_cached_ones(tiny_root: Path, tmp_path: Path) -> None:
    """``cache.clips: online`` decodes from the dataset's files on every read and yields the very
    tensors the clip cache holds: training views (epoch draws) and a test sample's views (its
    multi-view sampling, decoded together); ``auto`` goes online when the cache would be too big."""
    data = _data(tiny_root)
    data.sampling.test_views = 2
    for split, train, views in (("train", True, 3), ("validation", False, 2)):
        index = load_index(data, split)
        disk = load_clips(data, split, train, views, str(tmp_path), index, progress=False, mode="disk")
        online = load_clips(data, split, train, views, str(tmp_path), index, progress=False, mode="online")
        assert online.uids == disk.uids and torch.equal(online.present, disk.present)
        assert online.shapes == disk.shapes
        for i in range(len(disk)):
            for a, b in zip(disk.items(i), online.items(i)):
                assert a.keys() == b.keys() and all(torch.equal(a[m], b[m]) for m in a)
        if not train:  # two different temporal views, not one view twice
            first, second = disk.items(0)
            assert not torch.equal(first["rgb"], second["rgb"])
    auto = load_clips(data, "train", True, 3, str(tmp_path / "auto"), load_index(data, "train"), progress=False,
                      mode="auto", max_disk_gb=1e-6)
    assert isinstance(auto.cache, OnlineClips) and not (tmp_path / "auto").exists()
    with pytest.raises(ValueError, match=r"cache\.clips"):
        load_clips(data, "train", True, 1, str(tmp_path), load_index(data, "train"), mode="stream")


def test_a_run_on_online_clips_equals_a_run_on_the_clip_cache(tiny_root: Path, tmp_path: Path) -> None:
    """Teacher tokens, teacher and a row trained on clips decoded online give exactly the results of
    the same run on the clip cache."""
    from actdistill.demo import demo_config
    from actdistill.engine.karmma import run_karmma
    from tests.test_karmma_pipeline import TINY

    out = {}
    for mode in ("disk", "online"):
        cfg = demo_config(None, [f"data.root={tiny_root}", f"cache.root={tmp_path / mode}", *TINY,
                                 f"cache.clips={mode}", "rows=[baseline_delta]", "eval.efficiency=false",
                                 "student.init_unimodal=[]"])
        (tmp_path / f"run-{mode}").mkdir()
        out[mode] = run_karmma(cfg, tmp_path / f"run-{mode}")
    assert not any((tmp_path / "online").glob("clips-*")), "online mode writes no clip cache"
    assert any((tmp_path / "disk").glob("clips-*"))
    for row in ("teacher", "baseline_delta"):
        assert out["online"][row]["subsets"] == out["disk"][row]["subsets"], row
        assert out["online"][row]["drop_curve"] == out["disk"][row]["drop_curve"], row


def test_extract_command_shards_then_train_reuses_every_token(tiny_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``actdistill extract CONFIG --shard i/N`` as N independent jobs: each caches its share of
    the clips and teacher tokens; a pipeline afterwards finds every token cached and computes none.
    An extractor that needs a unimodal fit is reported, not fitted, by ``extract``."""
    import yaml

    import actdistill.engine.karmma as karmma
    from actdistill.cli import main
    from actdistill.config import to_dict
    from actdistill.demo import demo_config
    from tests.test_karmma_pipeline import TINY

    base = [f"data.root={tiny_root}", *TINY, "cache.clips=disk", "run.progress=false"]
    cfg = demo_config(None, [*base, f"cache.root={tmp_path / 'cache'}", "cache.chunk=2", "teacher.fit_unimodal=[]"])
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(cfg)))
    for i in range(3):
        assert main(["extract", str(exp), "--shard", f"{i}/3"]) == 0
    printed = capsys.readouterr().out
    assert "shard 2/3" in printed and "teacher tokens cached" in printed
    logs = {p.stem for p in (tmp_path / "cache").glob("tokens-train-*/index-*.jsonl")}
    assert logs == {f"index-shard{i}of3" for i in range(3)}
    (tmp_path / "run").mkdir()
    pipe = karmma.KarmmaPipeline(cfg, tmp_path / "run")
    pipe.load_data()
    written: list[int] = []
    real = karmma.map_split
    monkeypatch.setattr(karmma, "map_split", lambda *a, **k: written.append(real(*a, **k)) or written[-1])
    pipe.teacher_tokens(pipe.build_extractors())
    assert written == [0, 0], "every token was already cached by the extract jobs"
    # with a fit missing, extract caches the clips and says what to run
    cfg2 = demo_config(None, [*base, f"cache.root={tmp_path / 'cache2'}"])
    exp.write_text(yaml.safe_dump(to_dict(cfg2)))
    assert main(["extract", str(exp)]) == 0
    assert "unimodal fit" in capsys.readouterr().out
    assert list((tmp_path / "cache2").glob("clips-*")) and not list((tmp_path / "cache2").glob("tokens-*"))
