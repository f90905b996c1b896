"""The synthetic dataset: exact EPIC-KITCHENS-100 layout, determinism, safety, informativeness.

Everything runs on the ``tiny`` size (5 videos, 15 actions), generated once per module.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from actdistill.data.datasets import synthetic as syn
from actdistill.data.sampling import epic_flow_index, is_epic_2018
from tests.conftest import EPIC_HEADER  # the official 15 columns, written out independently of the generator

SIZE = "tiny"


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _rows(root: Path, name: str) -> list[dict[str, str]]:
    return _read(root / "annotations" / name)[1]


def _video_info(root: Path) -> dict[str, dict[str, str]]:
    return {r["video_id"]: r for r in _rows(root, "EPIC_100_video_info.csv")}


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("frame_*"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("synth") / "epic"
    meta = syn.write_synthetic_epic(root, seed=0, size=SIZE, progress=False, workers=1)
    return root, meta


# -- layout -----------------------------------------------------------------------------------------


def test_annotation_files_and_columns(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    ann = root / "annotations"
    for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv"):
        header, rows = _read(ann / name)
        assert header == EPIC_HEADER, name
        assert rows
    header, rows = _read(ann / "EPIC_100_test_timestamps.csv")
    assert header == EPIC_HEADER[:8]
    assert rows
    expected = {
        "EPIC_100_verb_classes.csv": ["id", "key", "instances", "category"],
        "EPIC_100_noun_classes.csv": ["id", "key", "instances", "category"],
        "EPIC_100_video_info.csv": ["video_id", "duration", "fps", "resolution"],
        "EPIC_100_tail_verbs.csv": ["verb"],
        "EPIC_100_tail_nouns.csv": ["noun"],
        "EPIC_100_unseen_participant_ids_validation.csv": ["participant_id"],
        "EPIC_100_unseen_participant_ids_test.csv": ["participant_id"],
    }
    for name, cols in expected.items():
        header, rows = _read(ann / name)
        assert header == cols, name
        assert rows, name
    assert (root / syn.META_FILE).is_file()
    assert not (root / syn.MARKER_FILE).exists()


def test_rows_are_consistent(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, meta = dataset
    verbs = _rows(root, "EPIC_100_verb_classes.csv")
    nouns = _rows(root, "EPIC_100_noun_classes.csv")
    assert [v["key"] for v in verbs] == meta["verbs"]
    info = _video_info(root)
    for row in info.values():
        w, h = (int(x) for x in row["resolution"].split("x"))
        assert (w, h) == (syn.FRAME_W, syn.FRAME_H)
        assert float(row["fps"]) == pytest.approx(59.94 if is_epic_2018(row["video_id"]) else 50.0, abs=0.01)
    for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv"):
        last: dict[str, int] = {}
        for r in _rows(root, name):
            vid = r["video_id"]
            assert r["participant_id"] == vid.split("_")[0]
            assert r["narration_id"].rsplit("_", 1)[0] == vid
            fps = 60 if is_epic_2018(vid) else 50
            start, stop = int(r["start_frame"]), int(r["stop_frame"])
            n_rgb = _count(root / r["participant_id"] / "rgb_frames" / vid)
            assert 1 <= start <= stop <= n_rgb
            assert start > last.get(vid, 0), "segments are sequential, separated by background"
            last[vid] = stop
            # timestamps are the segment's edges at the extraction rate
            assert round(syn.parse_timestamp(r["start_timestamp"]) * fps) + 1 == start
            assert round(syn.parse_timestamp(r["stop_timestamp"]) * fps) == stop
            assert 0.7 <= (stop - start + 1) / fps <= 1.7
            nouns_list = ast.literal_eval(r["all_nouns"])
            classes = ast.literal_eval(r["all_noun_classes"])
            assert nouns_list[0] == r["noun"] and classes[0] == int(r["noun_class"])
            assert len(nouns_list) == len(classes)
            verb_syn = ast.literal_eval(verbs[int(r["verb_class"])]["instances"])
            noun_syn = ast.literal_eval(nouns[int(r["noun_class"])]["instances"])
            assert r["verb"] in verb_syn and r["noun"] in noun_syn
            assert r["narration"].startswith(r["verb"].replace("-", " "))


def test_splits_and_participants(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, meta = dataset
    train = {r["participant_id"] for r in _rows(root, "EPIC_100_train.csv")}
    val = {r["participant_id"] for r in _rows(root, "EPIC_100_validation.csv")}
    test = {r["participant_id"] for r in _rows(root, "EPIC_100_test_timestamps.csv")}
    unseen_val = {r["participant_id"] for r in _rows(root, "EPIC_100_unseen_participant_ids_validation.csv")}
    unseen_test = {r["participant_id"] for r in _rows(root, "EPIC_100_unseen_participant_ids_test.csv")}
    assert unseen_val <= val and not unseen_val & train
    assert val & train, "validation also holds training participants"
    assert unseen_test <= test and not unseen_test & train
    n_rows = {
        s: len(_rows(root, f))
        for s, f in [("train", "EPIC_100_train.csv"), ("validation", "EPIC_100_validation.csv")]
    }
    assert n_rows["train"] == meta["counts"]["train"]["segments"]
    assert n_rows["validation"] == meta["counts"]["validation"]["segments"]
    tails = [int(r["verb"]) for r in _rows(root, "EPIC_100_tail_verbs.csv")]
    assert tails == meta["tail_verbs"] and all(0 <= t < len(meta["verbs"]) for t in tails)


def test_frames_exist_for_every_segment(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv"):
        for r in _rows(root, name):
            pid, vid = r["participant_id"], r["video_id"]
            frames = np.arange(int(r["start_frame"]), int(r["stop_frame"]) + 1)
            n_flow = _count(root / pid / "flow_frames" / vid / "u")
            for f in frames:
                assert (root / pid / "rgb_frames" / vid / f"frame_{f:010d}.jpg").is_file()
                assert (root / pid / "depth_frames" / vid / f"frame_{f:010d}.png").is_file()
            for k in np.unique(epic_flow_index(frames, is_epic_2018(vid), n_flow)):
                for c in ("u", "v"):
                    assert (root / pid / "flow_frames" / vid / c / f"frame_{k:010d}.jpg").is_file()


def test_flow_frame_counts_follow_the_epic_rule(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, meta = dataset
    years = set()
    for vid, row in _video_info(root).items():
        pid = vid.split("_")[0]
        n_rgb = _count(root / pid / "rgb_frames" / vid)
        assert n_rgb == round(float(row["duration"]) * (60 if is_epic_2018(vid) else 50))
        assert _count(root / pid / "depth_frames" / vid) == n_rgb
        want = math.ceil(n_rgb / 2) if is_epic_2018(vid) else n_rgb - 1
        assert _count(root / pid / "flow_frames" / vid / "u") == want, vid
        assert _count(root / pid / "flow_frames" / vid / "v") == want, vid
        years.add(is_epic_2018(vid))
        assert (vid in meta["videos_2018"]) == is_epic_2018(vid)
    assert years == {True, False}, "both 2018-style and 2020-style videos"


def test_image_formats(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, meta = dataset
    vid = meta["videos_2020"][0]
    pid = vid.split("_")[0]
    rgb = cv2.imread(str(root / pid / "rgb_frames" / vid / "frame_0000000001.jpg"), cv2.IMREAD_UNCHANGED)
    assert rgb.shape == (syn.FRAME_H, syn.FRAME_W, 3) and rgb.dtype == np.uint8
    u = cv2.imread(str(root / pid / "flow_frames" / vid / "u" / "frame_0000000001.jpg"), cv2.IMREAD_UNCHANGED)
    assert u.shape == (syn.FRAME_H, syn.FRAME_W) and u.dtype == np.uint8
    for path in sorted((root / pid / "depth_frames" / vid).glob("*.png"))[::40]:
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert d.dtype == np.uint16 and d.shape == (syn.FRAME_H, syn.FRAME_W)
        valid = d[d != syn.DEPTH_MISSING]
        assert 300 < np.median(valid) < 1000, "depth in millimetres"
    from PIL import Image

    with Image.open(root / pid / "depth_frames" / vid / "frame_0000000001.png") as im:
        assert im.mode in ("I;16", "I;16B", "I")
        assert np.array_equal(
            np.asarray(im).astype(np.uint16), cv2.imread(str(im.filename), cv2.IMREAD_UNCHANGED)
        )
    assert meta["flow_scale"] == syn.FLOW_SCALE and meta["depth_units"] == "mm"


def test_mp4_has_the_rgb_frames_and_audio(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, meta = dataset
    for vid in (meta["videos_2018"][0], meta["videos_2020"][0]):
        pid = vid.split("_")[0]
        fps = 60 if is_epic_2018(vid) else 50
        n_rgb = _count(root / pid / "rgb_frames" / vid)
        with av.open(str(root / pid / "videos" / f"{vid}.MP4")) as c:
            assert c.streams.video[0].average_rate == fps
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        with av.open(str(root / pid / "videos" / f"{vid}.MP4")) as c:
            a = c.streams.audio[0]
            assert a.codec_context.name == "aac" and a.sample_rate == syn.AUDIO_RATE and a.channels == 1
            samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        assert abs(len(frames) - n_rgb) <= 1
        assert abs(len(samples) / syn.AUDIO_RATE - n_rgb / fps) < 0.1
        assert np.abs(samples).max() > 0.05, "the actions are audible"
        jpg = cv2.imread(str(root / pid / "rgb_frames" / vid / "frame_0000000010.jpg"))[:, :, ::-1]
        assert np.abs(frames[9].astype(float) - jpg).mean() < 8, "MP4 frame i is rgb frame i"


# -- determinism, idempotence, safety ---------------------------------------------------------------


def _first_pixels(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for vid in _video_info(root):
        pid = vid.split("_")[0]
        for rel in ("rgb_frames/{v}/frame_0000000040.jpg", "flow_frames/{v}/u/frame_0000000030.jpg"):
            p = root / pid / rel.format(v=vid)
            out[str(p.relative_to(root))] = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        p = root / pid / "depth_frames" / vid / "frame_0000000040.png"
        out[str(p.relative_to(root))] = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    return out


def _csv_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "annotations").glob("*.csv"))}


def test_deterministic_whatever_the_worker_count(
    dataset: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, meta = dataset
    again = tmp_path / "again"
    meta2 = syn.write_synthetic_epic(again, seed=0, size=SIZE, progress=False, workers=2)
    assert meta2 == meta
    assert _csv_bytes(again) == _csv_bytes(root)
    a, b = _first_pixels(root), _first_pixels(again)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    other = tmp_path / "other"
    syn.write_synthetic_epic(other, seed=1, size=SIZE, progress=False, workers=1)
    assert _csv_bytes(other)["EPIC_100_train.csv"] != _csv_bytes(root)["EPIC_100_train.csv"]
    c = _first_pixels(other)
    assert any(k in c and not np.array_equal(a[k], c[k]) for k in a)


def test_idempotent(dataset: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, meta = dataset

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("must not regenerate")

    monkeypatch.setattr(syn, "render_video", fail)
    assert syn.write_synthetic_epic(root, seed=0, size=SIZE, progress=False) == meta
    assert json.loads((root / syn.META_FILE).read_text()) == meta


def test_refuses_foreign_or_different_folders(dataset: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = dataset
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="mine"):
        syn.write_synthetic_epic(foreign, size=SIZE, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # A real EPIC download looks like our output but has no marker: never touch it.
    real = tmp_path / "real_epic"
    (real / "P01" / "rgb_frames").mkdir(parents=True)
    (real / "annotations").mkdir()
    with pytest.raises(ValueError, match="real_epic"):
        syn.write_synthetic_epic(real, size=SIZE, progress=False)
    assert (real / "P01" / "rgb_frames").is_dir()
    with pytest.raises(ValueError, match="seed=0"):
        syn.write_synthetic_epic(root, seed=5, size=SIZE, progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        syn.write_synthetic_epic(a_file, size=SIZE, progress=False)
    with pytest.raises(ValueError, match="unknown synthetic size"):
        syn.write_synthetic_epic(tmp_path / "new", size="huge", progress=False)


def test_older_generator_version_is_regenerated_keeping_user_files(
    dataset: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, meta = dataset
    out = tmp_path / "old"
    (out / "P01" / "rgb_frames").mkdir(parents=True)
    (out / "annotations").mkdir()
    (out / "annotations" / "stale.csv").write_text("old")
    (out / "notes.txt").write_text("not ours")
    old_meta = {**meta, "version": syn.GENERATOR_VERSION - 1}
    (out / syn.META_FILE).write_text(json.dumps(old_meta))
    with pytest.raises(ValueError, match="seed=0"):  # an older version of *another* seed: refused
        syn.write_synthetic_epic(out, seed=1, size=SIZE, progress=False)
    assert syn.write_synthetic_epic(out, seed=0, size=SIZE, progress=False, workers=1) == meta
    assert not (out / "annotations" / "stale.csv").exists()
    assert (out / "notes.txt").read_text() == "not ours"
    assert _csv_bytes(out) == _csv_bytes(root)
    # a newer version than this generator knows is never overwritten
    (out / syn.META_FILE).write_text(json.dumps({**meta, "version": syn.GENERATOR_VERSION + 1}))
    with pytest.raises(ValueError, match="different"):
        syn.write_synthetic_epic(out, seed=0, size=SIZE, progress=False)


def test_killed_generation_is_detected_and_redone(
    dataset: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, meta = dataset
    out = tmp_path / "killed"
    real_render = syn.render_video
    calls = []

    def dies_after_one(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(syn, "render_video", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        syn.write_synthetic_epic(out, seed=0, size=SIZE, progress=False, workers=1)
    assert not (out / syn.META_FILE).exists() and (out / syn.MARKER_FILE).exists()
    (out / "keep.txt").write_text("not ours")
    monkeypatch.setattr(syn, "render_video", real_render)
    with pytest.raises(ValueError, match="incomplete"):
        syn.write_synthetic_epic(out, seed=3, size=SIZE, progress=False)
    assert syn.write_synthetic_epic(out, seed=0, size=SIZE, progress=False, workers=1) == meta
    assert (out / "keep.txt").read_text() == "not ours"
    assert not (out / syn.MARKER_FILE).exists()
    assert _csv_bytes(out) == _csv_bytes(root)
    for vid in _video_info(root):
        pid = vid.split("_")[0]
        assert _count(out / pid / "rgb_frames" / vid) == _count(root / pid / "rgb_frames" / vid)


# -- each modality informative, none sufficient -------------------------------------------------------


def _centroid(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    return float((power * np.fft.rfftfreq(len(x), 1.0 / syn.AUDIO_RATE)).sum() / power.sum())


def _bursts(x: np.ndarray) -> int:
    """Number of separate loud stretches (impacts) in 5 ms windows."""
    win = syn.AUDIO_RATE // 200
    env = np.sqrt((x[: len(x) // win * win].reshape(-1, win) ** 2).mean(1))
    loud = env > 0.35 * env.max()
    return int(loud[0] + np.sum(loud[1:] & ~loud[:-1]))


def test_flow_and_depth_carry_the_verb_shape_and_size_not_colour_or_material(monkeypatch) -> None:
    plate = syn.render_segment("push", "plate", seed=4)  # circle, white, glass, large
    pan = syn.render_segment("push", "pan", seed=4)  # circle, grey, metal, small
    knife = syn.render_segment("push", "knife", seed=4)  # bar, grey, metal, large
    pull = syn.render_segment("pull", "plate", seed=4)
    lift = syn.render_segment("lift", "plate", seed=4)
    attrs = {n.key: (n.shape, n.scale) for n in syn.NOUNS}
    assert (attrs["plate"], attrs["pan"], attrs["knife"]) == (("circle", 1.2), ("circle", 0.8), ("bar", 1.2))
    # RGB tells all three apart ...
    assert np.abs(plate["rgb"].astype(float) - pan["rgb"]).max() > 40  # white glass vs grey metal
    # ... flow and depth see the outline: another shape or another size -> different maps ...
    for m in ("flow", "depth"):
        for other in (knife, pan):
            changed = np.abs(plate[m].astype(float) - other[m]) > 0
            assert changed.sum() > 2000 and changed.any(axis=(-2, -1)).mean() > 0.2, m  # whenever it moves
    # ... but not colour or material: a pan of the plate's size and height draws its maps exactly.
    nouns = tuple(dataclasses.replace(n, scale=1.2, height=15) if n.key == "pan" else n for n in syn.NOUNS)
    monkeypatch.setattr(syn, "NOUNS", nouns)
    big_pan = syn.render_segment("push", "pan", seed=4)
    assert np.abs(big_pan["rgb"].astype(float) - plate["rgb"]).max() > 40
    for m in ("flow", "depth"):
        assert np.abs(plate[m].astype(float) - big_pan[m]).mean() < 0.05, m

    # Flow tells push (away, up the image) from pull (towards the camera): total vertical motion
    # relative to the camera's (the per-frame median).
    def vertical(flow: np.ndarray) -> float:
        v = flow[:, 1].astype(float) - 128
        return float((v - np.median(v, axis=(1, 2), keepdims=True)).sum())

    assert vertical(plate["flow"]) < -5e3 and vertical(pull["flow"]) > 2e4
    # Depth shows lifting: the object comes much closer to the camera than when pushed.
    centre = (slice(None), slice(10, 50), slice(20, 76))
    assert lift["depth"][centre].min() + 60 < plate["depth"][centre].min() or (
        np.percentile(lift["depth"][centre], 1) + 60 < np.percentile(plate["depth"][centre], 1)
    )


def test_audio_carries_material_and_rhythm() -> None:
    cent = {
        n: _centroid(syn.render_segment("put", n, seed=2)["audio"]) for n in ("board:chopping", "box", "pan")
    }
    assert cent["board:chopping"] * 2 < cent["box"] < cent["pan"], cent  # wood < plastic < metal
    put = syn.render_segment("put", "pan", seed=2)["audio"]
    shake = syn.render_segment("shake", "pan", seed=2)["audio"]
    assert _bursts(put) <= 2 < 4 <= _bursts(shake)
    # Size sets the pitch within a material: the large plate rings lower than the small jar (glass).
    assert _centroid(syn.render_segment("put", "plate", seed=2)["audio"]) < _centroid(
        syn.render_segment("put", "jar", seed=2)["audio"]
    )
    # Push and pull scrape in the same material (same timbre), but a pushed object slides away from
    # the head-mounted mic and fades while a pulled one comes closer and grows louder (generator v6).
    push = syn.render_segment("push", "pan", seed=2)["audio"]
    pull = syn.render_segment("pull", "pan", seed=2)["audio"]
    assert abs(_centroid(push) - _centroid(pull)) < 0.2 * _centroid(push)  # louder scrape: brighter mix

    def loudness(audio: np.ndarray) -> np.ndarray:  # RMS of ten equal parts of the segment
        return np.array([np.sqrt(np.mean(c**2)) for c in np.array_split(audio.astype(float).ravel(), 10)])

    lp, ll = loudness(push), loudness(pull)
    assert ll.max() > 1.5 * lp.max() and int(ll.argmax()) > int(lp.argmax())


def test_nuisances_hurt_their_modality() -> None:
    clean = syn.render_segment("take", "cup", seed=1)
    dark = syn.render_segment("take", "cup", seed=1, nuisances=("rgb_low_light", "depth_holes", "audio_mute"))
    assert dark["rgb"].mean() < 0.5 * clean["rgb"].mean()
    assert (dark["depth"] == syn.DEPTH_MISSING).mean() > 0.05 > (clean["depth"] == syn.DEPTH_MISSING).mean()
    assert np.abs(dark["audio"]).max() < 0.5 * np.abs(clean["audio"]).max()
    assert np.array_equal(dark["flow"], clean["flow"]), "other modalities untouched"
    with pytest.raises(ValueError, match="unknown nuisances"):
        syn.render_segment("take", "cup", nuisances=("fog",))


def test_sizes_and_plan() -> None:
    assert {"tiny", "small", "medium"} <= set(syn.SIZES)
    small = syn.plan_synthetic_epic(0, "small")
    medium = syn.plan_synthetic_epic(0, "medium")
    n_small = sum(len(p.segments) for p in small)
    assert n_small == 740  # 300 train + 200 validation + 200 held-out + 40 test
    assert {s: sum(len(p.segments) for p in small if p.split == s) for s in ("train", "validation", "heldout")} == \
        {"train": 300, "validation": 200, "heldout": 200}
    # the held-out videos are their own: no video (hence no recording) shared with validation or train
    by_split = {s: {p.video_id for p in small if p.split == s} for s in ("train", "validation", "heldout", "test")}
    assert not by_split["heldout"] & (by_split["train"] | by_split["validation"] | by_split["test"])
    assert 3 <= sum(len(p.segments) for p in medium) / n_small <= 10
    # the plan is per-video deterministic: one video's plan does not depend on the others
    one = syn.plan_video(
        small[3].video_id, small[3].participant_id, small[3].split, small[3].year, 0, "small"
    )
    assert one == small[3]
