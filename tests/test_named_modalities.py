"""Named modalities of one kind (``imu:acc``, ``imu:gyro``), channels from the data, IMU clocks.

A watch's accelerometer and gyroscope must be two modalities: each its own manifest column,
reader options, encoder, presence and place in the subsets, so that robust multimodal
distillation can treat one sensor dropping out on its own. Everything here runs on a tiny
generic dataset written by the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actdistill.config import build_config, parse_override
from actdistill.data.batch import collate
from actdistill.data.builder import build_dataset, build_readers
from actdistill.data.datasets.generic import load_generic, manifest_layout
from actdistill.data.modalities import IMUReader, write_imu_csv
from actdistill.data.modalities.base import modality_kind, options_for, selects
from actdistill.data.records import DataError, Segment, Source
from actdistill.data.summary import summarize
from actdistill.engine.checkpoint import load_weights, save_weights
from actdistill.engine.karmma import KarmmaConfig, build_row, build_teacher, validate
from actdistill.evaluation.protocols import modality_subsets
from actdistill.models.encoders.base import with_data_channels

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "karmma" / "generic_imu.yaml"
MODS = ("imu:acc", "imu:gyro")
FPS, FRAMES, RATE = 10, 40, 50.0  # segments of 4 s at 10 fps; IMUs at 50 Hz


def write_watch(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """A generic dataset of two classes seen by a 3-axis accelerometer and a 3-axis gyroscope.

    ``shake`` is a 4 Hz motion on both sensors, ``still`` a 1 Hz one of a fifth the size; train
    rows are marked ``train``, the rest ``val`` (the alias of ``validation``). One train row has
    no gyroscope, one validation row no accelerometer: each sensor's presence is its own.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(0, FRAMES / FPS + 1.0, 1 / RATE)
    rows = ["uid,split,label,fps,start_frame,stop_frame,imu:acc,imu:gyro"]
    k = 0
    for split in ("train", "val"):
        for label, hz, amp in (("still", 1.0, 0.2), ("shake", 4.0, 1.0)):
            for _ in range(per_class):
                uid = f"s{k:03d}"
                k += 1
                phase = rng.uniform(0, 2 * np.pi, 3)
                acc = amp * np.sin(2 * np.pi * hz * t[:, None] + phase) + 0.05 * rng.standard_normal((t.size, 3))
                gyro = amp * np.cos(2 * np.pi * hz * t[:, None] + phase) + 0.05 * rng.standard_normal((t.size, 3))
                write_imu_csv(root / "acc" / f"{uid}.csv", t, acc, ["ax", "ay", "az"])
                write_imu_csv(root / "gyro" / f"{uid}.csv", t, gyro, ["gx", "gy", "gz"])
                acc_cell = "" if (split, k) == ("val", 2 * per_class + 1) else f"acc/{uid}.csv"
                gyro_cell = "" if k == 1 else f"gyro/{uid}.csv"
                rows.append(f"{uid},{split},{label},{FPS},1,{FRAMES},{acc_cell},{gyro_cell}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


TINY = [
    "data.sampling.num_frames=4", "data.batch_size=4", "cache.train_views=1", "run.progress=false",
    "data.readers.imu={window_sec: 1.0, samples: 16, normalize: true}",
    "teacher.model.encoders.imu={name: imu, size: tiny}", "teacher.model.fusion={dim: 16, depth: 1, num_heads: 2}",
    "student.model.encoders.imu={name: imu, size: tiny}",
    "student.model.fusion={dim: 16, depth: 1, num_heads: 2, missing: tokens}",
    "teacher.unimodal_optim={epochs: 3, lr: 0.01, batch_size: 4}",
    "teacher.optim={epochs: 3, lr: 0.005, batch_size: 4}",
    "student.optim={epochs: 3, lr: 0.005, batch_size: 4}", "eval.drop_rates=[0.0,0.5]", "eval.drop_repeats=1",
    "eval.efficiency=false", "eval.batch_size=8",
]


def watch_config(root: Path, tmp_path: Path, *overrides: str) -> KarmmaConfig:
    return build_config(KarmmaConfig, CONFIG, [f"data.root={root}", f"cache.root={tmp_path / 'cache'}",
                                               f"run.out_dir={tmp_path / 'runs'}", *TINY, *overrides])


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_watch(tmp_path_factory.mktemp("watch"))


# --------------------------------------------------------------------------------------- names
def test_modality_kind_and_settings_by_kind() -> None:
    assert modality_kind("imu:acc") == "imu" and modality_kind("rgb") == "rgb"
    for bad in ("imu:", ":acc"):
        with pytest.raises(ValueError, match="<kind>:<name>"):
            modality_kind(bad)
    table = {"imu": {"samples": 8}, "imu:gyro": {"samples": 4}}
    assert options_for(table, "imu:acc") == {"samples": 8}  # falls back to the kind's entry
    assert options_for(table, "imu:gyro") == {"samples": 4}  # its own entry, whole
    assert options_for(table, "audio:mic2") == {}
    assert selects(["flow", "imu"], "imu:acc") and not selects(["flow"], "imu:acc") and selects(["imu:acc"], "imu:acc")
    # the dotted override parser and YAML keep the ':' (no quoting needed)
    assert parse_override("student.model.encoders.imu:acc.in_channels=3") == (
        ["student", "model", "encoders", "imu:acc", "in_channels"], 3)


def test_the_example_config_validates_and_names_both_sensors(watch: Path, tmp_path: Path) -> None:
    cfg = watch_config(watch, tmp_path)
    validate(cfg)
    assert tuple(cfg.data.modalities) == MODS and cfg.data.dataset == "generic"
    with pytest.raises(ValueError, match=r"no reader for \['sonar:x', 'imu:'\]"):
        validate(watch_config(watch, tmp_path, "data.modalities=[imu:acc,sonar:x,'imu:']"))


# ---------------------------------------------------------------------------------- generic data
def test_generic_indexes_named_columns_and_val_is_validation(watch: Path) -> None:
    train = load_generic(watch, "train")
    assert len(train.segments) == 8 and train.classes == {"label": ["shake", "still"]}  # not tasks imu:acc/gyro
    first = train.segments[0]
    assert set(first.sources) == {"imu:acc"} and first.sources["imu:acc"].kind == "imu_csv"
    assert set(train.segments[1].sources) == set(MODS) and not train.segments[1].meta
    val = load_generic(watch, "validation", modalities=MODS)
    assert [s.uid for s in val.segments] == [s.uid for s in load_generic(watch, "val").segments]
    assert len(val.segments) == 8 and set(val.segments[0].sources) == {"imu:gyro"}
    assert load_generic(watch, "train", modalities=("imu:gyro",)).segments[1].sources.keys() == {"imu:gyro"}
    with pytest.raises(ValueError, match=r"unsupported modalities \['sonar:x'\]"):
        load_generic(watch, "train", modalities=("imu:acc", "sonar:x"))
    assert manifest_layout(watch) == (["train", "validation"], list(MODS))


def test_data_summary_shows_the_manifests_splits_and_named_modalities(watch: Path) -> None:
    out = summarize("generic", watch)
    assert list(out["splits"]) == ["train", "validation"]  # the `val` rows are not hidden
    assert out["modalities_requested"] == list(MODS)
    assert out["splits"]["train"]["modalities"] == {"imu:acc": 8, "imu:gyro": 7}
    assert out["splits"]["validation"]["modalities"] == {"imu:acc": 7, "imu:gyro": 8}
    assert out["num_problems"] == 0


def test_reading_forward_and_subsets_with_one_encoder_per_sensor(watch: Path, tmp_path: Path) -> None:
    cfg = watch_config(watch, tmp_path, 'data.readers.imu:gyro={window_sec: 1.0, samples: 16, channels: [gz, gx]}')
    readers = build_readers(cfg.data)
    assert readers["imu:gyro"].channels == ("gz", "gx") and readers["imu:acc"].channels is None
    ds = build_dataset(cfg.data, "train", train=False)
    batch = collate([ds.get(i, 0) for i in range(3)], MODS)
    assert batch["imu:acc"].shape == (3, 1, 4, 3, 16) and batch["imu:gyro"].shape == (3, 1, 4, 2, 16)
    assert batch["present"].tolist() == [[True, False], [True, True], [True, True]]
    shapes = {m: tuple(batch[m].shape[2:]) for m in MODS}  # per-sample [T, C, L], as model.json has them
    heads = {"label": 2}
    model = build_row(cfg, MODS, heads, "student", shapes)
    acc, gyro = model.encoders["imu:acc"], model.encoders["imu:gyro"]
    assert acc is not gyro and (acc.in_channels, gyro.in_channels) == (3, 2)  # both from the data
    out = model({m: batch[m][:, 0] for m in MODS}, batch["present"])
    assert out["logits"]["label"].shape == (3, 2)
    assert modality_subsets(MODS) == [("imu:acc",), ("imu:gyro",), ("imu:acc", "imu:gyro")]
    teacher = build_teacher(cfg, MODS, heads, 4, shapes)
    assert teacher.encoders["imu:gyro"].in_channels == 2
    # ':' survives state-dict and safetensors keys (nn.ModuleDict only rejects '.')
    assert any(k.startswith("encoders.imu:acc.") for k in model.state_dict())
    save_weights(model, tmp_path / "row.safetensors")
    again = build_row(cfg, MODS, heads, "student", shapes)
    load_weights(again, tmp_path / "row.safetensors")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_own_encoder_entry_beats_the_kinds_and_in_channels_mismatch_is_one_error(watch: Path,
                                                                                 tmp_path: Path) -> None:
    shapes = {"imu:acc": (4, 3, 16), "imu:gyro": (4, 3, 16)}
    cfg = watch_config(watch, tmp_path, "student.model.encoders.imu:gyro={name: imu, widths: [8, 12]}")
    model = build_row(cfg, MODS, {"label": 2}, "student", shapes)
    assert model.encoders["imu:gyro"].out_dim == 12 and model.encoders["imu:acc"].out_dim != 12
    bad = watch_config(watch, tmp_path, "student.model.encoders.imu:acc={name: imu, in_channels: 6}")
    with pytest.raises(ValueError, match=r"student\.model\.encoders\.imu:acc: in_channels is 6 but the data's "
                                         r"imu:acc input has 3 channels"):
        build_row(bad, MODS, {"label": 2}, "student", shapes)
    # added only where the data differs from the default, so working configs keep their cache keys
    assert with_data_channels("compact", "rgb", {}, (4, 3, 8, 8)) == {}
    assert with_data_channels("compact", "depth:ir", {}, (4, 2, 8, 8)) == {"in_channels": 2}
    assert with_data_channels("compact", "boxes", {}, (4, 5, 6)) == {}
    with pytest.raises(ValueError, match=r"flow: stack 2 \(= 4 channels\) is 4 but the data's flow input has 2"):
        with_data_channels("flow", "flow", {"stack": 2}, (4, 2, 8, 8))


@pytest.mark.slow
def test_karmma_trains_and_scores_each_sensor_and_both(watch: Path, tmp_path: Path) -> None:
    """The whole pipeline on the example config: fits per sensor, teacher, rows, subsets, drop curve."""
    from actdistill.engine.karmma import prepare_run, run_karmma

    cfg = watch_config(watch, tmp_path, "rows=[baseline,student]")
    run_dir = prepare_run(cfg)
    run_karmma(cfg, run_dir)
    info = json.loads((run_dir / "model.json").read_text())
    assert info["modalities"] == list(MODS)
    assert info["input_shapes"] == {"imu:acc": [4, 3, 16], "imu:gyro": [4, 3, 16]}
    assert len(list((tmp_path / "cache" / "unimodal").glob("imu:*.safetensors"))) == 2  # fit_unimodal: [imu]
    report = (run_dir / "report.md").read_text()
    for subset in ("imu:acc", "imu:gyro", "imu:acc+imu:gyro"):
        assert subset in report


# ---------------------------------------------------------------------------------- IMU reader
def seg(stop: int = FRAMES, fps: float = FPS) -> Segment:
    return Segment(uid="s0", video_id="s0", start_frame=1, stop_frame=stop, fps=fps)


def _csv(path: Path, header: str, times: np.ndarray, bom: bool = False) -> Path:
    """Two channels whose values depend on the row only, so files differing in their clock alone
    must read the same once the clock's unit is right."""
    lines = [header] + [f"{float(t)!r},{float(np.sin(0.1 * i))!r},1.0" for i, t in enumerate(times)]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_imu_time_units_declared_or_caught(tmp_path: Path) -> None:
    seconds = np.arange(0, 5, 0.02)
    frames = np.array([1, 20, 40])
    ref = IMUReader(samples=8).read(Source("imu_csv", str(_csv(tmp_path / "s.csv", "timestamp,x,y", seconds))),
                                    frames, seg())
    ms = _csv(tmp_path / "ms.csv", "timestamp,x,y", seconds * 1000)
    with pytest.raises(DataError, match=r"0\.05 Hz, which no IMU has.*in ms it would be 50 Hz") as e:
        IMUReader(samples=8).read(Source("imu_csv", str(ms)), frames, seg())
    assert e.value.path == str(ms)
    got = IMUReader(samples=8, time_unit="ms").read(Source("imu_csv", str(ms)), frames, seg())
    torch.testing.assert_close(got, ref)
    declared = _csv(tmp_path / "declared.csv", "timestamp_ms,x,y", seconds * 1000)
    torch.testing.assert_close(IMUReader(samples=8).read(Source("imu_csv", str(declared)), frames, seg()), ref)
    with pytest.raises(DataError, match=r"header says the timestamps are in ms \(.timestamp_ms.\) but time_unit is us"):
        IMUReader(time_unit="us").read(Source("imu_csv", str(declared)), frames, seg())
    with pytest.raises(ValueError, match="time_unit must be auto or one of s, ms, us, ns"):
        IMUReader(time_unit="sec")
    # a declared unit skips the rate check, but a segment outside the recording is still an error
    late = _csv(tmp_path / "late.csv", "timestamp_s,x,y", seconds + 100)
    with pytest.raises(DataError, match=r"segment s0 spans -0\.5\.\.4\.4 s .* holds 0 of the file's 250 samples"):
        IMUReader(window_sec=1.0).read(Source("imu_csv", str(late)), frames, seg())
    ok = IMUReader(window_sec=1.0).read(Source("imu_csv", str(late), options={"time_offset": 100.0}), frames, seg())
    assert ok.shape == (3, 2, 64)


def test_imu_csv_with_a_byte_order_mark_reads_like_without(tmp_path: Path) -> None:
    t = np.arange(0, 5, 0.02)
    plain = IMUReader(samples=4).read(Source("imu_csv", str(_csv(tmp_path / "a.csv", "timestamp,x,y", t))),
                                      np.array([5]), seg())
    bom = IMUReader(samples=4).read(Source("imu_csv", str(_csv(tmp_path / "b.csv", "timestamp,x,y", t, bom=True))),
                                    np.array([5]), seg())
    torch.testing.assert_close(plain, bom)


def test_imu_channel_count_mismatch_names_both_files_and_channels_pick_columns(tmp_path: Path) -> None:
    t = np.arange(0, 5, 0.02)
    six = write_imu_csv(tmp_path / "six.csv", t, np.ones((t.size, 6)), ["ax", "ay", "az", "gx", "gy", "gz"])
    three = write_imu_csv(tmp_path / "three.csv", t, np.ones((t.size, 3)), ["ax", "ay", "az"])
    reader = IMUReader(samples=4)
    assert reader.read(Source("imu_csv", str(six)), np.array([1]), seg()).shape == (1, 6, 4)
    with pytest.raises(DataError, match=rf"3 IMU channel\(s\), but {six} has 6") as e:
        reader.read(Source("imu_csv", str(three)), np.array([1]), seg())
    assert e.value.path == str(three)
    pick = IMUReader(samples=4, channels=["az", "ax"])
    data = np.arange(t.size * 3, dtype=float).reshape(t.size, 3)
    src = Source("imu_csv", str(write_imu_csv(tmp_path / "p.csv", t, data, ["ax", "ay", "az"])))
    x = pick.read(src, np.array([1]), seg())
    torch.testing.assert_close(x[0, :, 0], torch.tensor([data[0, 2], data[0, 0]], dtype=torch.float32))
    with pytest.raises(DataError, match=r"no column \['gz'\] for the reader option channels"):
        IMUReader(channels=["gz"]).read(src, np.array([1]), seg())


def test_layout_without_a_split_column_and_the_plan_takes_channels_from_a_csv_header(watch: Path,
                                                                                      tmp_path: Path) -> None:
    from actdistill.plan import plan_karmma

    bare = tmp_path / "bare"
    (bare / "acc").mkdir(parents=True)
    write_imu_csv(bare / "acc" / "a.csv", [0.0, 0.02, 0.04], np.zeros((3, 9)), [f"c{i}" for i in range(9)])
    (bare / "manifest.csv").write_text("uid,label,fps,stop_frame,imu:acc\na,x,10,1,acc/a.csv\n")
    assert manifest_layout(bare) == (["all"], ["imu:acc"])
    plan = plan_karmma(watch_config(watch, tmp_path))
    assert plan["sample_shapes"] == {"imu:acc": [4, 3, 16], "imu:gyro": [4, 3, 16]}
    assert set(plan["tokens"]) == set(MODS)
