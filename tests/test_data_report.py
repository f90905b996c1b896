"""Nothing dropped without a word: the data report, problems.json, early config and data checks.

The tiny EPIC fixture of tests/conftest.py: train = 3 segments of P01_01 (half-rate flow),
validation = 3 segments of P02_101. Faults are injected into copies written per test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from actdistill.config import ConfigError, build_config
from actdistill.data.builder import DataConfig, load_index
from actdistill.data.records import DatasetIndex, Problem, Segment, Source
from actdistill.data.report import data_report, eval_only_labels, write_problems
from actdistill.demo import demo_config
from actdistill.engine.clips import load_clips
from actdistill.engine.karmma import KarmmaConfig, KarmmaPipeline, validate
from actdistill.evaluation.protocols import evaluate_missing_modalities
from tests.conftest import make_epic


def epic_data(root: Path, modalities: list[str], on_error: str = "raise") -> DataConfig:
    return DataConfig(dataset="epic_kitchens_100", root=str(root), modalities=modalities, train_split="train",
                      test_split="validation", on_error=on_error)


def edit_rows(path: Path, edits: dict[int, dict[str, str]]) -> None:
    """Change fields of data rows (0-based) of an EPIC annotation CSV."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, change in edits.items():
        rows[i].update(change)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------------------ report
def test_report_counts_rows_read_used_and_dropped_by_kind(tmp_path: Path) -> None:
    root = make_epic(tmp_path / "epic")
    edit_rows(root / "annotations" / "EPIC_100_train.csv", {0: {"verb_class": "999"}, 2: {"start_frame": "x"}})
    data = epic_data(root, ["rgb", "flow"])
    indexes = {"train": load_index(data, "train"), "test": load_index(data, "validation")}
    assert indexes["train"].rows_read == 3 and len(indexes["train"].segments) == 1
    text, record = data_report(indexes, modalities=["rgb", "flow"], tasks=["verb", "noun"])
    train = record["splits"]["train"]
    assert (train["rows_read"], train["used"], train["dropped"]) == (3, 1, 2)
    assert train["problems_by_kind"] == {"unknown_label": 1, "malformed": 1}
    assert record["splits"]["test"]["dropped"] == 0
    csv_path = str(root / "annotations" / "EPIC_100_train.csv")
    assert [p["path"] for p in record["problems"]] == [csv_path, csv_path]
    assert "train (split 'train' of epic_kitchens_100): 3 rows read, 1 used, 2 dropped" in text
    assert f"e.g. {csv_path}: line 2:" in text and "indexing found unknown_label 1, malformed 1" in text


def test_eval_only_labels_are_warned_with_task_and_class_names(tmp_path: Path) -> None:
    root = make_epic(tmp_path / "epic")  # validation nouns are cup, knife, door; train nouns plate, cup, knife
    data = epic_data(root, ["rgb"])
    train, test = load_index(data, "train"), load_index(data, "validation")
    assert eval_only_labels(train, test, ["verb", "noun"]) == {"noun": ["door"]}
    text, record = data_report({"train": train, "test": test}, tasks=["verb", "noun"])
    (warning,) = record["warnings"]
    assert (warning["kind"], warning["task"], warning["classes"], warning["split"]) == (
        "eval_only_label", "noun", ["door"], "test")
    assert "warning: noun class(es) 'door' occur in the test split but in no train sample" in text


def _segment(uid: str, mods: tuple[str, ...], label: int = 0) -> Segment:
    return Segment(uid, "v", 1, 8, 30.0, {"class": label}, {m: Source("frames", f"/d/{uid}/{m}") for m in mods})


def test_rows_without_a_job_modality_and_read_skips_are_counted_once() -> None:
    index = DatasetIndex("mine", "train", [_segment("a", ("rgb",)), _segment("b", ("audio",)), _segment("c", ("rgb",))],
                         {"class": ["x"]}, [Problem("/d/manifest.csv", "row 4: bad", "malformed")], rows_read=4)
    read = [Problem("/d/c/rgb/frame_1.jpg", "cannot decode image", "unreadable")]
    # a clip store lacks "b" (never decoded: no rgb) and "c" (its only modality failed to read)
    _, record = data_report({"train": index}, modalities=["rgb"], read_problems={"train": read},
                            skipped={"train": ["b", "c"]})
    s = record["splits"]["train"]
    assert (s["rows_read"], s["used"], s["dropped"], s["no_modality"], s["skipped_uids"]) == (4, 1, 3, 1, ["c"])
    kinds = sorted((p["stage"], p["kind"], p["path"]) for p in record["problems"])
    assert kinds == [("index", "malformed", "/d/manifest.csv"), ("index", "no_modality", "b"),
                     ("read", "skipped", "c"), ("read", "unreadable", "/d/c/rgb/frame_1.jpg")]


def _corrupt(folder: Path, first: int, last: int) -> list[Path]:
    out = []
    for i in range(first, last + 1):
        f = folder / f"frame_{i:010d}.jpg"
        f.write_bytes(b"not a jpeg")
        out.append(f)
    return out


def test_read_time_skips_keep_the_files_and_survive_a_resume(tmp_path: Path) -> None:
    root = make_epic(tmp_path / "epic")
    data = epic_data(root, ["rgb", "flow"], on_error="skip")
    index = load_index(data, "train")
    video = root / "P01"
    bad = _corrupt(video / "rgb_frames" / "P01_01", 1, 10)  # segment 0 spans RGB frames 1-10 ...
    for c in "uv":  # ... and flow frames 1-5 (half rate); segment 1 starts at flow frame 7
        bad += _corrupt(video / "flow_frames" / "P01_01" / c, 1, 6)
    cache = str(tmp_path / "cache")
    split = load_clips(data, "train", True, 1, cache, index, progress=False)
    assert split.skipped_uids == ["P01_01_0"] and len(split) == 2
    assert split.problems and all(Path(p.path) in bad or p.path == "P01_01_0" for p in split.problems)
    assert {p.kind for p in split.problems} == {"unreadable"}
    again = load_clips(data, "train", True, 1, cache, index, progress=False)  # resumed: nothing new to decode
    assert set(again.problems) >= {p for p in split.problems if p.path != "P01_01_0"}
    _, record = data_report({"train": index}, modalities=data.modalities, read_problems={"train": again.problems},
                            skipped={"train": again.skipped_uids})
    assert record["splits"]["train"]["skipped_at_read"] == 1 and record["splits"]["train"]["used"] == 2
    assert any(p["stage"] == "read" and Path(p["path"]) in bad for p in record["problems"])
    path = write_problems(tmp_path, record)
    assert json.loads(path.read_text()) == json.loads(json.dumps(record))


# ------------------------------------------------------------------------------------- data checks
def _pipeline_cfg(root: Path, tmp_path: Path, *extra: str) -> KarmmaConfig:
    return build_config(KarmmaConfig, None, [
        "data.dataset=epic_kitchens_100", f"data.root={root}", "data.test_split=validation",
        f"cache.root={tmp_path / 'cache'}", "run.progress=false", "student.init_unimodal=[]", *extra])


def test_a_modality_without_training_data_stops_before_decoding(tmp_path: Path) -> None:
    root = make_epic(tmp_path / "epic")  # no depth frames at all
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pipe = KarmmaPipeline(_pipeline_cfg(root, tmp_path, "data.modalities=[rgb,depth]"), run_dir)
    with pytest.raises(ConfigError, match=r"data.modalities: \['depth'\] have no data in the train split 'train'"):
        pipe.load_data()
    assert not (tmp_path / "cache").exists()  # nothing decoded
    problems = json.loads((run_dir / "problems.json").read_text())["problems"]
    assert any(p["kind"] == "missing" and "depth" in p["path"] for p in problems)


def test_a_modality_without_test_data_is_an_error_not_a_nan_table(tmp_path: Path) -> None:
    # the NaN this prevents: a subset whose modalities no test sample has scores NaN
    present = torch.tensor([[True, False], [True, False]])
    batch = {"present": present, "views": [{}], "labels": {"class": torch.tensor([0, 1])}, "index": torch.arange(2)}
    res = evaluate_missing_modalities(lambda b, p: {"class": torch.eye(2)}, [batch], ["rgb", "flow"], [0.0])
    assert res["subsets"]["flow"] != res["subsets"]["flow"]  # NaN

    root = make_epic(tmp_path / "epic")
    import shutil

    shutil.rmtree(root / "P02" / "flow_frames")  # the validation video loses its flow
    pipe = KarmmaPipeline(_pipeline_cfg(root, tmp_path, "data.modalities=[rgb,flow]"), None)
    with pytest.raises(ConfigError, match=r"no data in the test split 'validation'.*score NaN"):
        pipe.load_data()


def test_a_modality_lost_at_read_time_is_caught_after_decoding(tmp_path: Path) -> None:
    root = make_epic(tmp_path / "epic")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for c in "uv":  # every flow frame of the training video unreadable: indexing cannot see it
        _corrupt(root / "P01" / "flow_frames" / "P01_01" / c, 1, 20)
    pipe = KarmmaPipeline(_pipeline_cfg(root, tmp_path, "data.modalities=[rgb,flow]", "data.on_error=skip"), run_dir)
    with pytest.raises(ConfigError, match=r"\['flow'\] have no data in the train split"):
        pipe.load_data()
    record = json.loads((run_dir / "problems.json").read_text())
    assert record["splits"]["train"]["read_problems_by_kind"]["unreadable"] >= 1
    assert any(p["stage"] == "read" and "flow_frames" in p["path"] for p in record["problems"])


# ----------------------------------------------------------------------------------- config checks
def test_the_shipped_configs_validate() -> None:
    validate(KarmmaConfig())
    validate(demo_config())
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "karmma").glob("*.yaml")):
        validate(build_config(KarmmaConfig, path))


BAD = [
    ("rows=[baseline,studnet]", "rows: unknown row(s) ['studnet']"),
    ("rows=[baseline,baseline]", "rows: ['baseline'] listed twice"),
    ("teacher.optim.epochs=0", "teacher.optim.epochs: 0 is out of range"),
    ("teacher.unimodal_optim.batch_size=0", "teacher.unimodal_optim.batch_size: 0"),
    ("student.optim.batch_size=-1", "student.optim.batch_size: -1"),
    ("student.optim.lr=nan", "student.optim.lr: nan must be a positive number"),
    ("student.modality_dropout=1.0", "student.modality_dropout: 1.0 is out of range (at least 0, below 1)"),
    ("teacher.modality_dropout=-0.1", "teacher.modality_dropout: -0.1"),
    ("eval.drop_rates=[0.0,1.0]", "eval.drop_rates[1]: 1.0 is out of range"),
    ("eval.drop_rates=[]", "eval.drop_rates: is empty"),
    ("eval.drop_repeats=0", "eval.drop_repeats: 0"),
    ("data.batch_size=0", "data.batch_size: 0"),
    ("data.on_error=ignore", "data.on_error: 'ignore' is not one of raise, skip"),
    ("data.modalities=[rgb,rgb]", "data.modalities: ['rgb'] listed twice"),
    ("data.modalities=[rgb,sonar]", "data.modalities: no reader for ['sonar']"),
    ("data.dataset=epic", "data.dataset: unknown dataset 'epic'"),
    ("data.sampling.mode=random", "data.sampling.mode: 'random'"),
    ("cache.clips=ram", "cache.clips: 'ram'"),
    ("cache.train_views=0", "cache.train_views: 0"),
    ("train.precision=fp8", "train.precision: 'fp8'"),
    ("student.alpha=1.5", "student.alpha: 1.5 is out of range (at least 0, at most 1)"),
    ("student.teacher_input=none", "student.teacher_input: 'none'"),
    ("student.init_unimodal=[imu]", "student.init_unimodal: names ['imu']"),
    ("student.model.fusion.missing=token", "student.model.fusion.missing: 'token'"),
    ("student.model.name=karma", "student.model.name: unknown fusion model 'karma'; known: karmma, late_fusion"),
    ("teacher.model.name=late_fusion", "teacher.model.name: is 'late_fusion'; the teacher is karmma"),
    ("student.model.name=late_fusion rows=[baseline,mmt]",
     "rows: row 'mmt' sets the karmma fusion's missing mode 'single_token', but student.model.name is 'late_fusion'"),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_values_fail_at_start_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(build_config(KarmmaConfig, None, override.split(" ")))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_cli_refuses_a_bad_value_before_creating_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main

    argv = ["karmma", "train", f"run.out_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'synth'}",
            "teacher.optim.epochs=0"]
    assert main(argv) == 2
    assert "actdistill: error: teacher.optim.epochs: 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "synth").exists()  # nothing generated or opened


# ------------------------------------------------------------------------------------------ run.name
def test_run_name_from_yaml_is_used_and_an_override_still_wins(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("run: {name: my-study}\n")
    assert demo_config(str(exp)).run.name == "my-study"
    assert demo_config(str(exp), ["run.name=other"]).run.name == "other"
    assert demo_config().run.name == "demo"  # the job's own name when the file names none
    cfg = build_config(KarmmaConfig, {"run": {"seed": 3}}, [], defaults=["run.name=karmma"])
    assert (cfg.run.name, cfg.run.seed) == ("karmma", 3)
    with pytest.raises(ConfigError, match=r"unknown config key 'run\.nam'"):
        build_config(KarmmaConfig, None, [], defaults=["run.nam=x"])


# ------------------------------------------------------------------------------------- end to end
TINY_EPIC = [
    "data.modalities=[rgb,flow]", "data.sampling.num_frames=4", "data.spatial.short_side=32",
    "data.spatial.crop_size=28", "cache.train_views=1", "teacher.fit_unimodal=[]",
    "teacher.model.encoders={rgb: {name: compact, size: tiny}, flow: {name: compact, size: tiny}}",
    "teacher.model.fusion={dim: 16, depth: 1, num_heads: 2}", "teacher.optim.epochs=1",
    "student.model.encoders={rgb: {name: compact, size: tiny}, flow: {name: compact, size: tiny}}",
    "student.model.fusion={dim: 16, depth: 1, num_heads: 2, missing: tokens}", "student.optim.epochs=1",
    "rows=[baseline]", "eval.efficiency=false", "eval.drop_rates=[0.0,0.5]", "eval.drop_repeats=1",
]


def test_karmma_train_prints_the_data_report_and_saves_problems_json(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main

    root = make_epic(tmp_path / "epic")
    edit_rows(root / "annotations" / "EPIC_100_validation.csv", {0: {"noun_class": "999"}})
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"run: {{name: from-yaml, out_dir: {tmp_path / 'runs'}, progress: false}}\n"
                   f"data: {{dataset: epic_kitchens_100, root: {root}, test_split: validation}}\n"
                   f"cache: {{root: {tmp_path / 'cache'}}}\n")
    assert main(["karmma", "train", str(exp), *TINY_EPIC]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("from-yaml")  # the YAML's run.name, not the job's default "karmma"
    assert "test (split 'validation' of epic_kitchens_100): 3 rows read, 2 used, 1 dropped" in out
    assert out.index("data report") < out.index("baseline: trained")  # printed before training
    record = json.loads((run_dir / "problems.json").read_text())
    (dropped,) = [p for p in record["problems"] if p["split"] == "test"]
    assert dropped["kind"] == "unknown_label" and dropped["path"].endswith("EPIC_100_validation.csv")
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["test_clips"] == 2 and info["problems"] == len(record["problems"])
