"""Few-shot episodes (the reference protocol, seeded per index) and the synthetic few-shot dataset
in the SSv2 layout, read back through the SSv2 and TRX-split adapters."""

from __future__ import annotations

import json
import time
import warnings
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import actdistill  # noqa: F401
from actdistill.data.datasets.fewshot_splits import load_fewshot_split, prompt_names
from actdistill.data.datasets.ssv2 import load_ssv2
from actdistill.data.datasets.synthetic_fewshot import (
    MOTIONS,
    OBJECTS,
    plan_synthetic_fewshot,
    render_clip,
    write_synthetic_fewshot,
)
from actdistill.data.episodes import QUERIES_PER_CLASS, Episode, EpisodeSampler, items_by_class
from actdistill.data.modalities.rgb import decode_video_frames


def groups(n_classes: int = 12, per_class: int = 12, small: dict[int, int] | None = None) -> dict[str, list[str]]:
    """Class names deliberately not in sorted order of creation, to test the real-label rule."""
    small = small or {}
    out: dict[str, list[str]] = {}
    for c in reversed(range(n_classes)):
        out[f"class{c:02d}"] = [f"c{c}_v{i}" for i in range(small.get(c, per_class))]
    return out


def check_episode(ep: Episode, data: dict[str, list[str]], way: int, shot: int, query: int) -> None:
    sorted_classes = sorted(data)
    assert ep.way == way and ep.shot == shot
    assert len(set(ep.classes)) == way
    assert len(ep.support) == way * shot and len(ep.query) == way * query
    assert len(set(ep.support) | set(ep.query)) == way * (shot + query)  # all videos distinct
    for items, labels, reals in (
        (ep.support, ep.support_labels, ep.support_real_labels),
        (ep.query, ep.query_labels, ep.query_real_labels),
    ):
        for item, label, real in zip(items, labels, reals, strict=True):
            cls = ep.classes[label]  # episode label = position in sampling order
            assert item in data[cls]
            assert real == sorted_classes.index(cls)  # real label = index in the sorted class list
    assert sorted(ep.support_labels) == sorted(list(range(way)) * shot)
    assert sorted(ep.query_labels) == sorted(list(range(way)) * query)


@pytest.mark.parametrize(("way", "shot", "query"), [(5, 1, 1), (5, 5, 5), (3, 2, 0), (12, 1, 7)])
def test_episode_properties(way: int, shot: int, query: int) -> None:
    data = groups()
    sampler = EpisodeSampler(data, way=way, shot=shot, query=query, seed=3)
    for i in range(30):
        check_episode(sampler.episode(i), data, way, shot, query)


def test_support_and_query_are_shuffled_and_classes_vary() -> None:
    sampler = EpisodeSampler(groups(), way=5, shot=2, query=2, seed=0, num_episodes=50)
    episodes = list(sampler)
    assert len(episodes) == 50
    assert any(list(e.support_labels) != sorted(e.support_labels) for e in episodes)
    assert any(list(e.query_labels) != sorted(e.query_labels) for e in episodes)
    assert len({e.classes for e in episodes}) > 40
    assert any(list(e.classes) != sorted(e.classes) for e in episodes)  # labels follow sampling order


def test_episodes_are_a_function_of_seed_and_index() -> None:
    data = groups()
    a = EpisodeSampler(data, way=5, shot=1, query=5, seed=7)
    b = EpisodeSampler(data, way=5, shot=1, query=5, seed=7)
    forward = [a.episode(i) for i in range(20)]
    backward = [b.episode(i) for i in reversed(range(20))][::-1]
    assert forward == backward
    assert a.episode(5) == a.episode(5) == a[5]
    c = EpisodeSampler(data, way=5, shot=1, query=5, seed=8)
    assert sum(c.episode(i) != forward[i] for i in range(20)) >= 18


def test_shards_partition_the_episodes() -> None:
    sampler = EpisodeSampler(groups(), seed=1, num_episodes=10)
    shards = [list(sampler.shard(r, 3)) for r in range(3)]
    assert sorted(chain.from_iterable(shards)) == list(range(10))
    assert [sampler[i] for i in shards[1]] == [sampler.episode(i) for i in (1, 4, 7)]
    with pytest.raises(ValueError):
        sampler.shard(3, 3)
    with pytest.raises(IndexError):
        sampler[10]


def test_small_classes_are_skipped_with_a_count() -> None:
    data = groups(small={1: 1, 4: 0, 7: 5})  # class 7 has exactly shot + query = 5 videos
    with pytest.warns(UserWarning, match="2 of 12 classes"):
        sampler = EpisodeSampler(data, way=5, shot=1, query=4, seed=0)
    assert sampler.skipped == {"class01": 1, "class04": 0}
    seen = {c for i in range(200) for c in sampler.episode(i).classes}
    assert "class07" in seen and not seen & {"class01", "class04"}
    check_episode(sampler.episode(0), data, 5, 1, 4)
    with pytest.raises(ValueError, match="5-way"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        EpisodeSampler(groups(6, small={0: 1, 1: 1}), way=5, shot=1, query=1)


def test_settings_and_validation() -> None:
    assert QUERIES_PER_CLASS == {"train": 5, "test": 1}
    train = EpisodeSampler.for_setting("train", groups(), shot=1, seed=0)
    test = EpisodeSampler.for_setting("test", groups(), shot=5, seed=0)
    assert len(train.episode(0).query) == 25 and len(test.episode(0).query) == 5
    with pytest.raises(ValueError):
        EpisodeSampler.for_setting("val", groups())
    for bad in ({"way": 0}, {"shot": 0}, {"seed": -1}, {"seed": 1.5}, {"num_episodes": -1}):
        with pytest.raises(ValueError):
            EpisodeSampler(groups(), **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EpisodeSampler(groups(), classes=["class00"])  # keys missing from classes
    with pytest.raises(TypeError):
        len(EpisodeSampler(groups()))


def test_explicit_class_list_keeps_real_labels_aligned() -> None:
    data = {0: ["a", "b"], 2: ["c", "d"], 3: ["e", "f"]}  # class 1 has no video left
    with pytest.warns(UserWarning):
        sampler = EpisodeSampler(data, way=3, shot=1, query=1, classes=[0, 1, 2, 3])
    ep = sampler.episode(0)
    for item, real in zip(ep.support, ep.support_real_labels, strict=True):
        assert item in data[real]
    tensors = ep.label_tensors()
    assert set(tensors) == {"support_labels", "query_labels", "support_real_labels", "query_real_labels"}
    assert all(t.dtype == torch.long for t in tensors.values())


# ------------------------------------------------------------------------ synthetic few-shot data


def test_plan_is_deterministic_and_novel_classes_are_new_combinations() -> None:
    a, b = plan_synthetic_fewshot(0, "small"), plan_synthetic_fewshot(0, "small")
    assert a == b and a != plan_synthetic_fewshot(1, "small")
    assert {k: len(v) for k, v in a.fewshot_split.items()} == {"train": 64, "val": 12, "test": 24}
    assert sorted(chain.from_iterable(a.fewshot_split.values())) == list(range(100))
    train_motions = {a.classes[i][0] for i in a.fewshot_split["train"]}
    train_objects = {a.classes[i][1] for i in a.fewshot_split["train"]}
    assert train_motions == set(MOTIONS) and train_objects == set(range(len(OBJECTS)))
    names = [a.class_name(i) for i in range(100)]
    assert names == sorted(names) and len(set(names)) == 100
    for i in a.fewshot_split["test"]:
        motion, obj = a.classes[i]
        assert OBJECTS[obj].name in a.class_name(i)  # the text names the (seen) object...
        assert a.template(i) == MOTIONS[motion].format(f"[{OBJECTS[obj].name}]")  # ...and the motion
    ids = [v.video_id for v in a.videos]
    assert len(set(ids)) == len(ids) and all(8 <= sum(v.class_index == c for v in a.videos) <= 10 for c in range(3))


def test_render_clip_is_seeded_and_shows_the_motion() -> None:
    clip = render_clip("push_right", 0, 16, np.random.default_rng(5))
    assert clip.shape == (16, 64, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip("push_right", 0, 16, np.random.default_rng(5)))
    red = (clip[..., 0].astype(int) - clip[..., 2].astype(int)) > 100  # the red cube
    xs = [np.nonzero(f.any(0))[0].mean() for f in red]
    assert xs[-1] - xs[0] > 20  # it moved right


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float]:
    root = tmp_path_factory.mktemp("synthetic_fewshot")
    t = time.perf_counter()
    meta = write_synthetic_fewshot(root, seed=0, size="tiny", progress=False)
    return root, meta, time.perf_counter() - t


def test_tiny_dataset_layout(tiny_root: tuple[Path, dict[str, Any], float]) -> None:
    root, meta, seconds = tiny_root
    print(f"\n[synthetic few-shot] tiny: {meta['num_videos']} videos in {seconds:.1f} s ({meta['codec']})")
    labels = json.loads((root / "something-something-v2-labels.json").read_text())
    assert len(labels) == 100 and sorted(int(v) for v in labels.values()) == list(range(100))
    rows = json.loads((root / "something-something-v2-train.json").read_text())
    rows += json.loads((root / "something-something-v2-validation.json").read_text())
    assert len(rows) == meta["num_videos"] == 200
    for row in rows[:20]:
        assert set(row) == {"id", "label", "template", "placeholders"}
        assert row["template"].replace("[", "").replace("]", "") in labels
        assert (root / f"{row['id']}.mp4").is_file()
    lines = (root / "splits" / "testlist01.txt").read_text().splitlines()
    cls, vid = lines[0].rsplit("/", 1)
    assert cls in labels and vid.isdigit()
    assert not list(root.glob("*.part")) and not (root / ".synth_fewshot_incomplete.json").exists()


def test_round_trip_through_the_fewshot_split_adapter(tiny_root: tuple[Path, dict[str, Any], float]) -> None:
    root, meta, _ = tiny_root
    seen: set[str] = set()
    for split, n_classes in (("train", 64), ("val", 12), ("test", 24)):
        index = load_fewshot_split(root, root / "splits", split, benchmark="ssv2_small")
        assert index.problems == []
        assert len(index.classes["class"]) == n_classes and len(index.segments) == 2 * n_classes
        assert prompt_names(index) == index.classes["class"] == meta["fewshot_classes"][split]
        assert not seen & set(index.classes["class"])
        seen |= set(index.classes["class"])
        sampler = EpisodeSampler.from_index(index, way=5, shot=1, query=1, seed=0)
        ep = sampler.episode(0)
        by_uid = {s.uid: s for s in index.segments}
        for uid, real in zip(ep.support + ep.query, ep.support_real_labels + ep.query_real_labels, strict=True):
            seg = by_uid[uid]
            assert seg.labels["class"] == real and seg.meta["class_name"] == index.classes["class"][real]
    frames = decode_video_frames(seg.sources["rgb"].path, np.arange(1, seg.num_frames + 1))
    assert frames.shape == (16, 64, 64, 3)


def test_round_trip_through_the_ssv2_adapter(tiny_root: tuple[Path, dict[str, Any], float]) -> None:
    root, meta, _ = tiny_root
    total = 0
    for split in ("train", "validation"):
        index = load_ssv2(root, split=split)
        assert [p.kind for p in index.problems] == ["malformed"]  # only: 100 classes, not SSv2's 174
        assert len(index.segments) == meta["videos_per_split"][split]
        total += len(index.segments)
        seg = index.segments[0]
        assert seg.stop_frame == 16 and seg.fps == 12.0 and seg.sources["rgb"].kind == "video"
        assert index.classes["class"][seg.labels["class"]] == seg.meta["class_name"]
        assert seg.meta["placeholders"][0] in seg.meta["class_name"]
    assert total == meta["num_videos"]
    assert items_by_class(index)  # labelled segments group by class


def test_generation_is_idempotent_and_guarded(tiny_root: tuple[Path, dict[str, Any], float], tmp_path: Path) -> None:
    root, meta, _ = tiny_root
    t = time.perf_counter()
    assert write_synthetic_fewshot(root, seed=0, size="tiny", progress=False) == meta
    assert time.perf_counter() - t < 1.0
    with pytest.raises(ValueError, match="different"):
        write_synthetic_fewshot(root, seed=1, size="tiny", progress=False)
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_synthetic_fewshot(tmp_path, seed=0, size="tiny", progress=False)
    with pytest.raises(ValueError):
        write_synthetic_fewshot(tmp_path / "new", size="huge", progress=False)


@pytest.mark.slow
def test_small_dataset_generates_within_a_minute(tmp_path: Path) -> None:
    t = time.perf_counter()
    meta = write_synthetic_fewshot(tmp_path / "small", seed=0, size="small", progress=False)
    assert time.perf_counter() - t < 60
    index = load_fewshot_split(tmp_path / "small", tmp_path / "small" / "splits", "train", benchmark="ssv2_small")
    assert index.problems == [] and len(index.segments) >= 64 * 8
    assert meta["num_videos"] == len(plan_synthetic_fewshot(0, "small").videos)
