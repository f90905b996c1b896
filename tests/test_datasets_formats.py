"""Dataset adapters against tiny fixtures written in the exact official formats.

SSv2 label/split JSON and .webm videos, UCF101/HMDB51 class folders and official split files,
TRX few-shot split files (OTAM ``trainK`` tokens and CMN template names), and the generic
manifest. Each bad input must become a counted problem (or, for an unreadable split file, a
:class:`DataError` naming the file), never a crash.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from actdistill.data.datasets.fewshot_splits import load_fewshot_split, prompt_names, read_split_file
from actdistill.data.datasets.generic import load_generic
from actdistill.data.datasets.ssv2 import load_ssv2
from actdistill.data.datasets.video_folder import (
    inspect_frame_folder,
    load_hmdb51,
    load_ucf101,
    load_video_folder,
    natural_key,
    read_hmdb51_splits,
    readable_class_name,
)
from actdistill.data.records import DataError, DatasetIndex


def _encoder(*names: str) -> str | None:
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    return None


VP9 = _encoder("libvpx-vp9", "libvpx")
MPEG4 = _encoder("mpeg4")


def write_video(path: Path, n: int, codec: str, rate: int = 12, size: tuple[int, int] = (32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            arr = np.full((size[1], size[0], 3), (i * 17) % 256, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def write_frames(folder: Path, n: int, template: str = "img_{:05d}.jpg", start: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (8, 6), (120, 30, 200))
    for k in range(start, start + n):
        img.save(folder / template.format(k))
    return folder


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def by_kind(index: DatasetIndex, kind: str) -> list[str]:
    return [f"{p.path}: {p.message}" for p in index.problems if p.kind == kind]


# --------------------------------------------------------------------------- SSv2

SSV2_LABELS = {
    "Approaching something with your camera": "0",
    "Holding something next to something": "2",
    "Pouring something into something": "1",
}
SSV2_TRAIN = [
    {
        "id": "78687",
        "label": "holding potato next to vicks vaporub bottle",
        "template": "Holding [something] next to [something]",
        "placeholders": ["potato", "vicks vaporub bottle"],
    },
    {
        "id": "42326",
        "label": "pouring water into a glass",
        "template": "Pouring [something] into [something]",
        "placeholders": ["water", "a glass"],
    },
    {
        "id": "100",
        "label": "approaching a cup with your camera",
        "template": "Approaching [something] with your camera",
        "placeholders": ["a cup"],
    },
    {"id": "555", "label": "juggling", "template": "Juggling [something]", "placeholders": ["balls"]},
    {
        "id": "999",
        "label": "pouring milk into a bowl",
        "template": "Pouring [something] into [something]",
        "placeholders": ["milk", "a bowl"],
    },
]
SSV2_VAL = [SSV2_TRAIN[1] | {"id": "7"}]


def ssv2_annotations(root: Path, labels_name: str = "something-something-v2-labels.json") -> None:
    write_json(root / labels_name, SSV2_LABELS)
    write_json(root / "something-something-v2-train.json", SSV2_TRAIN)
    write_json(root / "something-something-v2-validation.json", SSV2_VAL)
    write_json(root / "something-something-v2-test.json", [{"id": "31"}])


@pytest.mark.skipif(VP9 is None, reason="PyAV has no VP9 encoder (libvpx-vp9/libvpx) to write .webm fixtures")
def test_ssv2_webm_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "20bn-something-something-v2"
    ssv2_annotations(root)
    assert VP9 is not None
    for vid, n in (("78687", 10), ("42326", 14), ("100", 9), ("7", 11), ("31", 12)):
        write_video(root / f"{vid}.webm", n, VP9)
    # "999" has no video file; "555" has a template the labels file does not know.

    index = load_ssv2(root, split="train")
    assert index.classes["class"] == [
        "Approaching something with your camera",
        "Pouring something into something",
        "Holding something next to something",
    ]
    assert [s.uid for s in index.segments] == ["78687", "42326", "100"]
    assert [s.labels["class"] for s in index.segments] == [2, 1, 0]
    seg = index.segments[0]
    assert seg.sources["rgb"].kind == "video"
    assert seg.sources["rgb"].path == str(root / "78687.webm")
    assert (seg.start_frame, seg.stop_frame) == (1, 10)  # from the WebM header's duration * fps
    assert seg.fps == pytest.approx(12.0)
    assert seg.meta["template"] == "Holding [something] next to [something]"
    assert seg.meta["placeholders"] == ["potato", "vicks vaporub bottle"]
    assert seg.meta["label"] == "holding potato next to vicks vaporub bottle"
    assert index.segments[1].stop_frame == 14

    unknown = by_kind(index, "unknown_label")
    assert len(unknown) == 1 and "Juggling [something]" in unknown[0]
    missing = by_kind(index, "missing")
    assert missing == [f"{root / '999.webm'}: video file not found"]

    val = load_ssv2(root, split="validation")
    assert [(s.uid, s.labels) for s in val.segments] == [("7", {"class": 1})]
    test = load_ssv2(root, split="test")
    assert [(s.uid, s.labels, s.stop_frame) for s in test.segments] == [("31", {}, 12)]


def test_ssv2_frame_folders_labels_subfolder_and_mirror_name(tmp_path: Path) -> None:
    root = tmp_path / "ssv2"
    ssv2_annotations(root / "labels", labels_name="labels.json")
    write_frames(root / "78687", 9)
    write_frames(root / "42326", 5)
    write_frames(root / "100", 3, template="{:06d}.jpg")  # another extraction's naming
    index = load_ssv2(root, split="train", fps=12.0)
    segs = {s.uid: s for s in index.segments}
    assert set(segs) == {"78687", "42326", "100"}
    rgb = segs["78687"].sources["rgb"]
    assert (rgb.kind, rgb.template, rgb.num_frames) == ("frames", "img_{:05d}.jpg", 9)
    assert rgb.path == str(root / "78687")
    assert segs["78687"].stop_frame == 9 and segs["78687"].fps == 12.0
    assert segs["100"].sources["rgb"].template == "{:06d}.jpg"  # inferred when the default does not fit
    assert by_kind(index, "missing") == [f"{root / '999'}: frame folder not found"]


def test_ssv2_flow_and_something_else_boxes(tmp_path: Path) -> None:
    root = tmp_path / "ssv2"
    ssv2_annotations(root)
    for vid in ("78687", "42326", "100"):
        write_frames(root / vid, 8)
    flow = tmp_path / "flow"
    write_frames(flow / "78687" / "u", 8)
    write_frames(flow / "78687" / "v", 8)
    boxes = tmp_path / "boxes"
    frame_boxes = [
        {
            "name": "78687/0001.jpg",
            "labels": [
                {
                    "box2d": {"x1": 1, "y1": 2, "x2": 3, "y2": 4},
                    "category": "potato",
                    "standard_category": "0000",
                }
            ],
        }
    ]
    write_json(boxes / "78687.json", frame_boxes)
    index = load_ssv2(root, modalities=("rgb", "flow", "boxes"), flow_root=flow, boxes_root=boxes)
    segs = {s.uid: s for s in index.segments}
    assert segs["78687"].sources["flow"].kind == "uv_frames"
    assert segs["78687"].sources["flow"].num_frames == 8
    assert segs["78687"].sources["boxes"].path == str(boxes / "78687.json")
    assert segs["78687"].sources["boxes"].options["image_size"] == (8, 6)  # from the first frame
    assert "flow" not in segs["42326"].sources and "boxes" not in segs["42326"].sources
    assert any(str(boxes / "42326.json") in p for p in by_kind(index, "missing"))

    big = write_json(tmp_path / "bounding_box_smthsmth_part1.json", {"78687": frame_boxes})
    index = load_ssv2(root, modalities=("rgb", "boxes"), boxes_root=big)
    src = index.segments[0].sources["boxes"]
    assert (src.kind, src.path, src.options["key"]) == ("boxes_json", str(big), index.segments[0].uid)


def test_ssv2_malformed_and_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "ssv2"
    ssv2_annotations(root)
    bad = root / "something-something-v2-train.json"
    bad.write_text('[\n  {"id": "1", "template": "x"},\n  {"id": "2" "template": "y"}\n]\n')
    with pytest.raises(DataError) as err:
        load_ssv2(root, split="train")
    assert err.value.path == str(bad)
    assert "line 3, column 14" in str(err.value)

    write_json(bad, {"id": "1"})
    with pytest.raises(DataError, match="expected a JSON list"):
        load_ssv2(root, split="train")

    write_json(bad, [{"id": 5, "template": 3}, "x"])
    index = load_ssv2(root, split="train")
    msgs = by_kind(index, "malformed")
    assert any("item 0 (id 5): field 'template'" in m for m in msgs)
    assert any("item 1: expected an object" in m for m in msgs)

    write_json(root / "something-something-v2-labels.json", {"Holding something": "one"})
    with pytest.raises(DataError, match="field 'Holding something'"):
        load_ssv2(root, split="validation")
    (root / "something-something-v2-labels.json").unlink()
    with pytest.raises(DataError, match="labels file not found"):
        load_ssv2(root, split="validation")


# --------------------------------------------------------------------------- class folders


def test_natural_key_and_frame_numbering(tmp_path: Path) -> None:
    names = ["img_10.jpg", "img_2.jpg", "img_1.jpg", "IMG_3.jpg"]
    assert sorted(names, key=natural_key) == ["img_1.jpg", "img_2.jpg", "IMG_3.jpg", "img_10.jpg"]
    unpadded = write_frames(tmp_path / "a", 12, template="frame{:d}.png")
    ff = inspect_frame_folder(unpadded)
    assert (ff.template, ff.num_frames, ff.files) == ("frame{:d}.png", 12, None)
    zero_based = write_frames(tmp_path / "b", 3, template="{:05d}.jpg", start=0)
    ff = inspect_frame_folder(zero_based)
    assert ff.files == ("00000.jpg", "00001.jpg", "00002.jpg")
    assert ff.to_source().options["files"][0] == "00000.jpg"


def test_readable_class_names() -> None:
    assert readable_class_name("BlowingCandles") == "blowing candles"
    assert readable_class_name("ApplyEyeMakeup") == "apply eye makeup"
    assert readable_class_name("YoYo") == "yo yo"
    assert readable_class_name("brush_hair") == "brush hair"
    assert readable_class_name("blasting sand") == "blasting sand"
    assert readable_class_name("Pouring something into something") == "Pouring something into something"


@pytest.mark.skipif(MPEG4 is None, reason="PyAV has no mpeg4 encoder to write .avi/.mp4 fixtures")
def test_ucf101_class_folders_and_official_lists(tmp_path: Path) -> None:
    assert MPEG4 is not None
    root = tmp_path / "UCF-101"
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", 10, MPEG4, rate=25)
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi", 12, MPEG4, rate=25)
    write_video(root / "BlowingCandles" / "v_BlowingCandles_g01_c01.mp4", 9, MPEG4, rate=25)
    write_frames(root / "JumpingJack" / "v_JumpingJack_g01_c01", 7)
    write_frames(root / "JumpRope" / "v_JumpRope_g01_c01", 6)
    (root / "JumpRope" / "notes.txt").write_text("not a video")

    index = load_video_folder(root)
    assert index.classes["class"] == ["ApplyEyeMakeup", "BlowingCandles", "JumpRope", "JumpingJack"]
    segs = {s.uid: s for s in index.segments}
    assert len(segs) == 5 and not index.problems
    avi = segs["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"]
    assert (avi.sources["rgb"].kind, avi.stop_frame, avi.fps) == ("video", 12, pytest.approx(25.0))
    assert avi.meta["class_name"] == "apply eye makeup"
    frames = segs["JumpingJack/v_JumpingJack_g01_c01"]
    assert (frames.sources["rgb"].kind, frames.stop_frame, frames.labels["class"]) == ("frames", 7, 3)
    assert frames.fps == 30.0

    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text(
        "1 ApplyEyeMakeup\r\n2 BlowingCandles\r\n3 JumpingJack\r\n4 JumpRope\r\n", newline=""
    )
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "JumpingJack/v_JumpingJack_g01_c01.avi 3\n"
        "JumpRope/v_JumpRope_g09_c01.avi 4\n"
    )
    (splits / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nJumpRope/v_JumpRope_g01_c01.avi\n"
    )
    train = load_ucf101(root, splits, "train")
    assert train.classes["class"] == ["ApplyEyeMakeup", "BlowingCandles", "JumpingJack", "JumpRope"]
    assert [(s.uid, s.labels["class"]) for s in train.segments] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", 0),
        ("JumpingJack/v_JumpingJack_g01_c01", 2),  # a frame folder found from the listed .avi name
    ]
    assert by_kind(train, "missing") == [
        f"{root / 'JumpRope' / 'v_JumpRope_g09_c01.avi'}: video not found (no file or frame folder)"
    ]
    test = load_ucf101(root, splits, "test")
    assert [s.labels["class"] for s in test.segments] == [0, 3]


def test_hmdb51_official_split_files(tmp_path: Path) -> None:
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \n"
        "April_09_brush_hair_u_nm_np1_ba_goo_2.avi 0 \n"
    )
    (splits / "catch_test_split1.txt").write_text("Ballfangen_catch_u_cm_np1_fr_goo_0.avi 1 \nbroken line\n")
    (splits / "catch_test_split2.txt").write_text("Ballfangen_catch_u_cm_np1_fr_goo_0.avi 2 \n")
    problems: list = []
    roles = read_hmdb51_splits(splits, 1, problems)
    assert roles["train"] == [
        ("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"),
        ("catch", "Ballfangen_catch_u_cm_np1_fr_goo_0.avi"),
    ]
    assert roles["test"] == [("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_1.avi")]
    assert roles["unused"] == [("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_2.avi")]
    assert len(problems) == 1 and "line 2" in problems[0].message

    root = tmp_path / "hmdb51"
    write_frames(root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0", 8)
    write_frames(root / "catch" / "Ballfangen_catch_u_cm_np1_fr_goo_0", 8)
    index = load_hmdb51(root, splits, "train")
    assert index.classes["class"] == ["brush_hair", "catch"]
    assert [s.labels["class"] for s in index.segments] == [0, 1]
    assert index.segments[0].meta["class_name"] == "brush hair"
    assert len(by_kind(index, "malformed")) == 1


# --------------------------------------------------------------------------- few-shot splits


def test_fewshot_ssv2_full_tokens_with_class_names(tmp_path: Path) -> None:
    root, split_dir = tmp_path / "ssv2_frames", tmp_path / "splits" / "ssv2_OTAM"
    split_dir.mkdir(parents=True)
    (split_dir / "trainlist01.txt").write_text(
        "train8/78687\ntrain8/11\ntrain3/1234\ntrain10/42\ntrain3/77\ntrain10/404\n\n"
    )
    write_frames(root / "train8" / "78687", 12)
    write_frames(root / "train8" / "11", 9)
    write_frames(root / "train3" / "1234", 8)
    write_frames(root / "77", 20)  # flat SSv2 extraction: the token is not a folder on disk
    write_frames(root / "train10" / "42", 5)  # fewer than 8 frames: dropped, as the reference does
    # train10/404 has no folder at all
    names = tmp_path / "ssv2_full_train_classes.txt"
    names.write_text("\n".join(f"class number {k}" for k in range(11)) + "\n")

    index = load_fewshot_split(root, split_dir, "train", 1, benchmark="ssv2_full", class_names=names)
    assert index.classes["class"] == ["train10", "train3", "train8"]  # sorted, as the reference
    got = {s.uid: (s.labels["class"], s.stop_frame, s.meta["class_name"]) for s in index.segments}
    assert got == {
        "train8/78687": (2, 12, "class number 8"),
        "train8/11": (2, 9, "class number 8"),
        "train3/1234": (1, 8, "class number 3"),
        "train3/77": (1, 20, "class number 3"),
    }
    assert index.segments[0].sources["rgb"].path == str(root / "train8" / "78687")
    assert prompt_names(index) == ["train10", "class number 3", "class number 8"]
    assert prompt_names(index, class_names=names)[0] == "class number 10"
    assert by_kind(index, "empty")[0].startswith(f"{root / 'train10' / '42'}: 5 frames < min_frames=8")
    assert f"{root / 'train10' / '404'}: video not found (no frame folder or video file)" in by_kind(index, "missing")
    assert any("should have 64 classes, found 3" in m for m in by_kind(index, "malformed"))

    by_dict = load_fewshot_split(
        root, split_dir, "train", benchmark="ssv2_full", class_names={"train8": "Holding something", "3": "x"}
    )
    assert prompt_names(by_dict)[1:] == ["x", "Holding something"]
    no_names = load_fewshot_split(root, split_dir, "train", benchmark="ssv2_full")
    assert any("need class_names" in m for m in by_kind(no_names, "missing"))


def test_fewshot_cmn_names_crlf_and_trailing_labels(tmp_path: Path) -> None:
    root, split_dir = tmp_path / "smsm", tmp_path / "splits"
    split_dir.mkdir()
    (split_dir / "testlist01.txt").write_bytes(
        b"Pouring something into something/51958 3\r\n"
        b"\r\n"
        b"Pouring something into something/51959\r\n"
        b"Tearing something into two pieces/1005\t0\r\n"
    )
    write_frames(root / "Pouring something into something" / "51958", 8, template="{:05d}.png")
    write_frames(root / "Pouring something into something" / "51959", 10)
    write_frames(root / "Tearing something into two pieces" / "1005", 9)
    entries = read_split_file(split_dir / "testlist01.txt")
    assert entries == [
        ("Pouring something into something", "51958"),
        ("Pouring something into something", "51959"),
        ("Tearing something into two pieces", "1005"),
    ]
    index = load_fewshot_split(root, split_dir, "test", 1, benchmark="ssv2_small")
    assert [s.labels["class"] for s in index.segments] == [0, 0, 1]
    assert prompt_names(index) == ["Pouring something into something", "Tearing something into two pieces"]
    assert index.segments[0].sources["rgb"].template == "{:05d}.png"
    assert [p.message for p in index.problems] == ["ssv2_small test should have 24 classes, found 2"]

    (split_dir / "vallist01.txt").write_text("no slash here\nBlowingCandles/v_BlowingCandles_g01_c01\n")
    with pytest.raises(DataError, match="line 1"):
        read_split_file(split_dir / "vallist01.txt")
    write_frames(root / "BlowingCandles" / "v_BlowingCandles_g01_c01", 8)
    val = load_fewshot_split(root, split_dir, "val", benchmark="ucf101")
    assert [s.meta["class_name"] for s in val.segments] == ["blowing candles"]
    assert len(by_kind(val, "malformed")) == 2  # the bad line, and 1 class instead of 10
    with pytest.raises(DataError, match="split file not found"):
        load_fewshot_split(root, split_dir, "train")


# --------------------------------------------------------------------------- generic manifest


def test_generic_manifest(tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    write_frames(root / "rgb" / "v1", 30)
    write_frames(root / "rgb" / "v2", 20)
    write_frames(root / "flow" / "v1" / "u", 29)
    write_frames(root / "flow" / "v1" / "v", 29)
    depth = root / "depth" / "v1"
    depth.mkdir(parents=True)
    for k in range(1, 31):
        Image.fromarray(np.full((6, 8), 1000 + k, np.uint16)).save(depth / f"{k:05d}.png")
    (root / "audio").mkdir()
    with wave.open(str(root / "audio" / "v1.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(1600, np.int16).tobytes())
    write_json(root / "boxes" / "v1.json", {"1": []})
    (root / "imu").mkdir()
    (root / "imu" / "v1.csv").write_text("t,ax,ay,az\n0.0,0,0,1\n")
    (tmp_path / "secret.txt").write_text("outside the root")
    write_json(root / "classes.json", {"verb": ["take", "put"], "noun": ["cup", "plate"]})
    (root / "manifest.csv").write_text(
        "uid,video_id,start_frame,stop_frame,fps,split,verb,noun,"
        "rgb,flow,audio,depth,boxes,imu,width,height,narration\n"
        "s1,v1,1,15,30,train,take,cup,"
        "rgb/v1,flow/v1,audio/v1.wav,depth/v1,boxes/v1.json,imu/v1.csv,320,240,take cup\n"
        "s2,v1,16,30,,train,put,1,rgb/v1,,,,,,,,put plate\n"
        "s3,v2,,,,train,take,,rgb/v2,,,,,,,,\n"
        "s4,v2,1,5,,train,jump,cup,rgb/v2,,,,,,,,\n"
        "s5,v2,1,5,,train,take,cup,../secret.txt,,,,,,,,\n"
        f"s6,v2,1,5,,train,take,cup,{tmp_path / 'secret.txt'},,,,,,,,\n"
        "s7,v3,1,5,,train,take,cup,rgb/v3,,,,,,,,\n"
        "s8,v2,1,5,,test,take,cup,rgb/v2,,,,,,,,\n"
    )
    index = load_generic(root, "train")
    assert index.classes == {"verb": ["take", "put"], "noun": ["cup", "plate"]}
    segs = {s.uid: s for s in index.segments}
    assert list(segs) == ["s1", "s2", "s3"]
    s1 = segs["s1"]
    assert (s1.start_frame, s1.stop_frame, s1.fps, s1.labels) == (1, 15, 30.0, {"verb": 0, "noun": 0})
    assert {m: s.kind for m, s in s1.sources.items()} == {
        "rgb": "frames",
        "flow": "uv_frames",
        "audio": "wav",
        "depth": "png16",
        "boxes": "boxes_json",
        "imu": "imu_csv",
    }
    assert s1.sources["depth"].template == "{:05d}.png"
    assert s1.sources["boxes"].options["image_size"] == (320, 240)
    assert s1.meta == {"narration": "take cup"}
    assert segs["s2"].labels == {"verb": 1, "noun": 1} and segs["s2"].fps == 30.0
    assert (segs["s3"].start_frame, segs["s3"].stop_frame, segs["s3"].labels) == (1, 20, {"verb": 0})

    assert len(by_kind(index, "unknown_label")) == 1
    traversal = by_kind(index, "malformed")
    assert len(traversal) == 2
    assert "row 5 (uid s5): rgb path '../secret.txt' resolves outside" in traversal[0]
    assert "row 6 (uid s6)" in traversal[1]
    assert any(str(root / "rgb" / "v3") in m for m in by_kind(index, "missing"))
    assert [s.uid for s in load_generic(root, "test").segments] == ["s8"]
    only_rgb = load_generic(root, "train", modalities=("rgb",))
    assert set(only_rgb.segments[0].sources) == {"rgb"}


def test_generic_jsonl_without_classes_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_frames(root / "clips" / "a", 10)
    write_frames(root / "clips" / "b", 10)
    lines = [
        {"uid": "a", "split": "val", "label": "wave", "rgb": "clips/a", "meta_text": "someone waves"},
        {"uid": "b", "split": "train", "label": "clap", "rgb": "clips/b"},
        "not an object",
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    index = load_generic(root, "val")
    assert index.classes == {"label": ["clap", "wave"]}  # from all rows, so splits agree
    assert [(s.uid, s.labels, s.meta) for s in index.segments] == [("a", {"label": 1}, {"text": "someone waves"})]
    assert [p.message.split(":")[0] for p in index.problems] == ["row 3", "row 4"]
    (root / "classes.json").write_text('{"label": ["clap", "wave"],}')
    with pytest.raises(DataError) as err:
        load_generic(root, "val")
    assert err.value.path == str(root / "classes.json") and "line 1, column 28" in str(err.value)


def test_unreadable_files_and_unsafe_names_are_problems(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    (root / "Archery").mkdir(parents=True)
    (root / "Archery" / "v_Archery_g01_c01.avi").write_bytes(b"\x00not a video at all" * 10)
    write_frames(root / "Archery" / "v_Archery_g02_c01", 8)
    (root / "Archery" / "empty_clip").mkdir()
    index = load_video_folder(
        root,
        entries=[("Archery", n) for n in ("v_Archery_g01_c01.avi", "v_Archery_g02_c01", "empty_clip", "..")],
    )
    assert [s.uid for s in index.segments] == ["Archery/v_Archery_g02_c01"]
    assert index.segments[0].sources["rgb"].fps == 30.0
    assert [p.kind for p in index.problems] == ["malformed", "unreadable", "empty"]
    assert index.problems[1].path == str(root / "Archery" / "v_Archery_g01_c01.avi")

    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    (split_dir / "trainlist01.txt").write_text("Archery/..\nArchery/v_Archery_g02_c01\n")
    fewshot = load_fewshot_split(root, split_dir, "train")
    assert [s.uid for s in fewshot.segments] == ["Archery/v_Archery_g02_c01"]
    assert [p.kind for p in fewshot.problems] == ["malformed"]
