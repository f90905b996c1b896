from __future__ import annotations

import csv
from pathlib import Path

import pytest

from actdistill.data.datasets.epic_kitchens import load_epic_kitchens, parse_timestamp
from actdistill.data.records import DataError


def test_train_validation_test(epic_root: Path) -> None:
    train = load_epic_kitchens(epic_root, "train", modalities=("rgb", "flow"))
    assert [s.uid for s in train.segments] == ["P01_01_0", "P01_01_1", "P01_01_2"]
    seg = train.segments[1]
    assert (seg.start_frame, seg.stop_frame, seg.fps) == (13, 22, 60.0)
    assert seg.labels == {"verb": 1, "noun": 1, "action": 1}
    assert train.classes["verb"] == ["take", "put", "open"] and len(train.classes["noun"]) == 4
    assert train.classes["action"] == ["take plate", "put cup", "open knife"]
    assert seg.sources["rgb"].kind == "frames" and seg.sources["rgb"].num_frames == 40
    assert seg.sources["flow"].index_map == "epic_flow_half" and seg.sources["flow"].num_frames == 20
    assert seg.meta["all_noun_classes"] == [1] and seg.meta["tail_verb"] is False
    assert train.segments[2].meta["tail_verb"] is True
    val = load_epic_kitchens(epic_root, "validation", modalities=("rgb", "flow"))
    assert val.segments[0].fps == 50.0 and val.segments[0].sources["flow"].index_map == "epic_flow_full"
    assert val.segments[0].meta["unseen_participant"] is True
    assert val.segments[0].labels["action"] == -1  # (take, cup) never seen in train
    test = load_epic_kitchens(epic_root, "test", modalities=("rgb",))
    assert len(test.segments) == 2 and all(s.labels == {} for s in test.segments)
    assert not train.problems and not test.problems


def test_star_split_is_seeded_and_disjoint(epic_root: Path) -> None:
    a = load_epic_kitchens(epic_root, "train_star", modalities=("rgb",), star_val_fraction=0.34)
    b = load_epic_kitchens(epic_root, "val_star", modalities=("rgb",), star_val_fraction=0.34)
    again = load_epic_kitchens(epic_root, "val_star", modalities=("rgb",), star_val_fraction=0.34)
    ids_a, ids_b = {s.uid for s in a.segments}, {s.uid for s in b.segments}
    assert len(ids_b) == 1 and len(ids_a) == 2 and not ids_a & ids_b
    assert ids_b == {s.uid for s in again.segments}


def test_tar_frames_and_missing_modalities(epic_root: Path) -> None:
    import shutil
    import tarfile

    folder = epic_root / "P01" / "rgb_frames" / "P01_01"
    with tarfile.open(folder.with_suffix(".tar"), "w") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"./{f.name}")
    shutil.rmtree(folder)
    idx = load_epic_kitchens(epic_root, "train", modalities=("rgb", "audio"))
    assert idx.segments[0].sources["rgb"].kind == "tar"
    # no MP4 in the fixture: audio is missing, reported once per video, segments kept (they have rgb)
    assert "audio" not in idx.segments[0].sources
    assert [p.kind for p in idx.problems] == ["missing"] and "P01_01.MP4" in idx.problems[0].path
    shutil.rmtree(epic_root / "P01" / "flow_frames")
    idx = load_epic_kitchens(epic_root, "train", modalities=("flow",))
    assert idx.segments == [] and all(p.kind == "missing" for p in idx.problems)


def _append_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("a", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_malformed_rows_are_problems_naming_file_and_line(epic_root: Path) -> None:
    path = epic_root / "annotations" / "EPIC_100_train.csv"
    good = next(csv.reader(path.open()))  # header
    assert good[0] == "narration_id"
    _append_rows(path, [
        ["P01_01_9", "P01", "P01_01", "", "00:00:00.00", "00:00:00.10", "x", "5", "take plate", "take", "0",
         "plate", "0", "['plate']", "[0]"],
        ["P01_01_10", "P01", "P01_01", "", "00:00:00.00", "00:00:00.10", "1", "5", "take zz", "take", "0",
         "zz", "99", "['zz']", "[99]"],
        ["P01_01_11", "P01"],
        ["P01_01_12", "P01", "P01_01", "", "00:00:00.00", "00:00:00.10", "9", "5", "take plate", "take", "0",
         "plate", "0", "['plate']", "[0]"],
        ["P01_01_13", "P01", "P01_01", "", "0:0:0", "00:00:00.10", "1", "5", "take plate", "take", "0",
         "plate", "0", "['plate']", "[0]"],
    ])
    idx = load_epic_kitchens(epic_root, "train", modalities=("rgb",))
    assert len(idx.segments) == 3
    msgs = [(p.kind, p.message) for p in idx.problems]
    assert all(str(path) == p.path for p in idx.problems)
    assert ("malformed", "line 5: start_frame/stop_frame 'x'/'5' are not integers") in msgs
    assert any(k == "unknown_label" and "line 6" in m and "noun_class 99" in m for k, m in msgs)
    assert any(k == "malformed" and m.startswith("line 7: 2 fields") for k, m in msgs)
    assert any("line 8" in m and "empty" in m for _, m in msgs)
    assert any("line 9" in m and "HH:MM:SS" in m for _, m in msgs)


def test_hard_errors_name_the_file(tmp_path: Path, epic_root: Path) -> None:
    with pytest.raises(DataError, match=r"EPIC_100_verb_classes\.csv: annotation file not found"):
        load_epic_kitchens(tmp_path, "train")
    path = epic_root / "annotations" / "EPIC_100_train.csv"
    path.write_text("narration_id,video_id\nP01_01_0,P01_01\n")
    with pytest.raises(DataError, match=r"EPIC_100_train.csv: missing columns"):
        load_epic_kitchens(epic_root, "train")
    with pytest.raises(ValueError, match="unknown EPIC-KITCHENS-100 split"):
        load_epic_kitchens(epic_root, "dev")


def test_parse_timestamp() -> None:
    assert parse_timestamp("00:01:02.50") == pytest.approx(62.5)
    with pytest.raises(ValueError):
        parse_timestamp("1:2")
