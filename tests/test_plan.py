"""``actdistill karmma plan`` / ``fewshot plan``: counts, cache bytes, FLOPs and errors.

The plan's cache sizes are checked against what the data pipeline really produces for one
decoded sample, and its counts against the adapter's own index, so the estimate cannot drift
from the code it describes. The fixture writers below produce annotation files in the official
formats; run this module as a script to write full-size ones (the published row counts) for the
documentation: ``python -m tests.test_plan OUT_DIR``.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from actdistill.cli import main
from actdistill.config import build_config
from actdistill.data.builder import build_dataset, load_index
from actdistill.data.datasets.epic_kitchens import COLUMNS
from actdistill.data.datasets.ssv2 import ASSUMED_FRAMES, load_ssv2
from actdistill.data.records import DataError
from actdistill.engine.karmma import KarmmaConfig
from actdistill.plan import F16, format_plan, numel, plan_karmma, sample_shapes

EPIC_TRAIN, EPIC_VALIDATION, EPIC_VERBS, EPIC_NOUNS = 67217, 9668, 97, 300
SSV2_TRAIN, SSV2_VALIDATION, SSV2_TEST, SSV2_CLASSES = 168913, 24777, 27157, 174
SSV2_SMALL = {"train": 64, "val": 12, "test": 24}  # classes per split, 100 videos each (CMN's SSv2-Small)


# ------------------------------------------------------------------------------------ fixture writers
def _timestamp(seconds: float) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


def write_epic_annotations(folder: Path, n_train: int, n_validation: int, seed: int = 0) -> Path:
    """EPIC-KITCHENS-100 annotation CSVs (v1.1 columns and class files) with the given row counts.

    Rows are random but well-formed: ``PXX_YY`` (2018) and ``PXX_1YY`` (2020) video ids, frame
    ranges and ``HH:MM:SS.ff`` timestamps at the video's extraction rate, every verb and noun
    class used in train. Only the annotations are written: no media."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, n, key in (("EPIC_100_verb_classes.csv", EPIC_VERBS, "verb"), ("EPIC_100_noun_classes.csv",
                                                                             EPIC_NOUNS, "noun")):
        with (folder / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "key", "instances", "category"])
            for i in range(n):
                w.writerow([i, f"{key}{i}", f"['{key}{i}']", "misc"])

    def rows(n: int, split_seed: int) -> list[list[str]]:
        r = random.Random(split_seed)
        out, per_video = [], 40
        for i in range(n):
            participant = f"P{1 + (i // per_video) % 37:02d}"
            video = (f"{participant}_{1 + (i // (per_video * 37)) % 20:02d}" if i % 2 == 0
                     else f"{participant}_{101 + (i // (per_video * 37)) % 20}")
            fps = 60.0 if len(video.split("_")[-1]) == 2 else 50.0
            k = i % per_video
            start = 1 + k * 300 + r.randrange(50)
            stop = start + 30 + r.randrange(240)
            verb, noun = (i % EPIC_VERBS, (i * 7) % EPIC_NOUNS) if i < EPIC_NOUNS else (
                r.randrange(EPIC_VERBS), r.randrange(EPIC_NOUNS))
            out.append([f"{video}_{k}", participant, video, _timestamp(start / fps), _timestamp(start / fps),
                        _timestamp(stop / fps), str(start), str(stop), f"verb{verb} noun{noun}", f"verb{verb}",
                        str(verb), f"noun{noun}", str(noun), f"['noun{noun}']", f"[{noun}]"])
        return out

    for name, n, s in (("EPIC_100_train.csv", n_train, rng.random()), ("EPIC_100_validation.csv", n_validation,
                                                                       rng.random())):
        with (folder / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(rows(n, int(s * 1e9)))
    return folder


def write_ssv2_annotations(folder: Path, n_train: int, n_validation: int, n_test: int,
                           n_classes: int = SSV2_CLASSES, seed: int = 0) -> Path:
    """Something-Something v2 label JSONs as officially published (``something-something-v2-labels.json``:
    template without brackets -> index as a string; ``-train``/``-validation.json``: rows of
    ``id``, ``label``, ``template``, ``placeholders``; ``-test.json``: ``id`` only) with the given
    counts. Rows are random but well-formed: unique numeric ids, templates with one or two
    ``[something]`` slots, labels filled in from the placeholders, every class used in train.
    Only the annotations are written: no videos, flow or boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    objects = ["potato", "cup", "pen", "book", "phone", "remote", "spoon", "box", "bottle", "towel"]
    templates = [f"Doing action {c} to [something]" + (" with [something]" if c % 3 == 0 else "")
                 for c in range(n_classes)]
    labels = {t.replace("[", "").replace("]", ""): str(c) for c, t in enumerate(templates)}
    (folder / "something-something-v2-labels.json").write_text(json.dumps(labels, indent=1))
    ids = list(range(1, n_train + n_validation + n_test + 1))
    rng.shuffle(ids)

    def rows(vids: list[int], first_all_classes: bool) -> list[dict[str, object]]:
        out = []
        for i, vid in enumerate(vids):
            c = i if first_all_classes and i < n_classes else rng.randrange(n_classes)
            template = templates[c]
            placeholders = [rng.choice(objects) for _ in range(template.count("[something]"))]
            label = template
            for obj in placeholders:
                label = label.replace("[something]", obj, 1)
            out.append({"id": str(vid), "label": label[0].lower() + label[1:], "template": template,
                        "placeholders": placeholders})
        return out

    train, val, test = ids[:n_train], ids[n_train:n_train + n_validation], ids[n_train + n_validation:]
    (folder / "something-something-v2-train.json").write_text(json.dumps(rows(train, True)))
    (folder / "something-something-v2-validation.json").write_text(json.dumps(rows(val, False)))
    (folder / "something-something-v2-test.json").write_text(json.dumps([{"id": str(v)} for v in test]))
    return folder


def write_fewshot_splits(folder: Path, classes: dict[str, int], per_class: int) -> Path:
    """TRX-style ``{train,val,test}list01.txt`` with ``<class>/<video id>`` lines (SSv2-Small's
    form: class names are templates), ``classes[split]`` classes of ``per_class`` videos each."""
    folder.mkdir(parents=True, exist_ok=True)
    vid = 100000
    for split, n in classes.items():
        lines = []
        for c in range(n):
            for _ in range(per_class):
                lines.append(f"{split.capitalize()} template {c} of something/{vid}")
                vid += 1
        (folder / f"{split}list01.txt").write_text("\n".join(lines) + "\n")
    return folder


# -------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from actdistill.data.datasets.synthetic import write_synthetic_epic

    root = tmp_path_factory.mktemp("plan") / "synthetic"
    write_synthetic_epic(root, seed=0, size="tiny", progress=False)
    return root


def _synth_cfg(root: Path, *overrides: str) -> KarmmaConfig:
    return build_config(KarmmaConfig, "configs/karmma/synthetic.yaml",
                        [f"data.root={root}", "data.options.size=tiny", "data.options.generate=false", *overrides])


def test_plan_synthetic_counts_bytes_and_flops(tiny_synth: Path) -> None:
    """Counts equal the adapter's index; clip-cache bytes equal what one decoded sample really
    holds (float16) x samples x views; every FLOPs row is positive where it should be."""
    cfg = _synth_cfg(tiny_synth)
    plan = plan_karmma(cfg)
    train = load_index(cfg.data, cfg.data.train_split)
    test = load_index(cfg.data, cfg.data.test_split)
    assert plan["splits"]["train"]["samples"] == len(train.segments)
    assert plan["splits"]["test"]["samples"] == len(test.segments)

    sample = build_dataset(cfg.data, cfg.data.train_split, True, index=train)[0]["inputs"]
    real = {m: tuple(x.shape[1:]) for m, x in sample.items()}  # [V, T, ...] -> per-view [T, ...]
    assert real == sample_shapes(cfg.data)
    per_entry = sum(numel(s) * F16 for s in real.values())
    caches = {c["cache"]: c for c in plan["caches"]}
    assert caches["clips-train"]["bytes"] == per_entry * len(train.segments) * cfg.cache.train_views
    test_bytes = per_entry * len(test.segments) * cfg.data.sampling.test_views
    assert caches[f"clips-{cfg.data.test_split}"]["bytes"] == test_bytes

    per_token_entry = sum(v["tokens"] * v["dim"] * F16 for v in plan["tokens"].values())
    assert caches["tokens-train"]["bytes"] == per_token_entry * len(train.segments) * cfg.cache.train_views
    stages = {r["stage"]: r for r in plan["flops"]}
    for name in ("teacher tokens (train views)", "teacher fusion", "row student", "eval student"):
        assert stages[name]["flops_total"] > 0, name
    assert all(m["device_peak_bytes"] > 0 for m in plan["memory"])
    assert "| row student |" in format_plan(plan)


def test_plan_flops_scale_linearly_with_samples(tmp_path: Path) -> None:
    """Twice the annotation rows: the same per-sample FLOPs, twice the FLOPs and cache bytes."""
    small = write_epic_annotations(tmp_path / "a", 40, 10)
    large = write_epic_annotations(tmp_path / "b", 80, 20)
    plans = []
    for ann in (small, large):
        cfg = build_config(KarmmaConfig, "configs/karmma/epic_kitchens_100.yaml", [
            f"data.root={tmp_path / 'media'}", f"data.annotations={ann}", "rows=[student]"])
        plans.append(plan_karmma(cfg))
    a, b = ({r["stage"]: r for r in p["flops"]} for p in plans)
    for stage, row in a.items():
        assert b[stage]["gflops_per_sample"] == pytest.approx(row["gflops_per_sample"])
        assert b[stage]["flops_total"] == pytest.approx(2 * row["flops_total"])
    assert plans[1]["cache_bytes_total"] > 1.9 * plans[0]["cache_bytes_total"]


def test_plan_epic_fixture_without_media(tmp_path: Path) -> None:
    """An EPIC annotation folder and no video files: every row is counted (annotations only),
    while the adapter's media check would have dropped them all."""
    ann = write_epic_annotations(tmp_path / "ann", 12, 5)
    overrides = [f"data.root={tmp_path / 'no-media'}", f"data.annotations={ann}"]
    cfg = build_config(KarmmaConfig, "configs/karmma/epic_kitchens_100.yaml", overrides)
    plan = plan_karmma(cfg)
    assert plan["index"].startswith("annotations only")
    assert plan["splits"]["train"]["samples"] == 12 and plan["splits"]["test"]["samples"] == 5
    assert plan["classes"] == {"verb": EPIC_VERBS, "noun": EPIC_NOUNS}
    assert plan["sample_shapes"]["flow"] == [8, 10, 224, 224]  # stack 5 -> 10 channels, 224 crop
    with pytest.raises(DataError, match="no usable samples"):
        plan_karmma(cfg, check_media=True)


def test_plan_ssv2_fixture_without_media(tmp_path: Path) -> None:
    """SSv2 label JSONs and no videos, flow or boxes: with ``check_media=False`` every valid row is
    a segment (labels still validated: a row whose template is not in the labels file is a
    problem, not a sample), and the plan counts them; with the media check the adapter says the
    dataset root is missing, or, given an empty root, that no video file was found."""
    ann = write_ssv2_annotations(tmp_path / "labels", 10, 4, 3)
    val_file = ann / "something-something-v2-validation.json"
    rows = json.loads(val_file.read_text())
    rows.append({"id": "999999", "label": "no such thing", "template": "No such [something]",
                 "placeholders": ["thing"]})
    val_file.write_text(json.dumps(rows))
    media = {"root": tmp_path / "no-media", "annotations": ann, "modalities": ("rgb", "flow", "boxes"),
             "flow_root": tmp_path / "flow", "boxes_root": tmp_path / "boxes"}
    counts = {split: load_ssv2(split=split, check_media=False, **media) for split in ("train", "validation", "test")}
    assert {k: len(v.segments) for k, v in counts.items()} == {"train": 10, "validation": 4, "test": 3}
    assert [p.kind for p in counts["validation"].problems] == ["unknown_label"]
    assert len(counts["train"].classes["class"]) == SSV2_CLASSES
    assert {s.labels["class"] for s in counts["train"].segments} == set(range(10))  # first rows use classes 0..9
    seg = counts["train"].segments[0]
    assert seg.stop_frame == ASSUMED_FRAMES and seg.meta["num_frames_assumed"]
    assert seg.sources["rgb"].path == str(tmp_path / "no-media" / f"{seg.uid}.webm")
    assert seg.sources["flow"].path == str(tmp_path / "flow" / seg.uid)
    assert seg.sources["boxes"].path == str(tmp_path / "boxes" / f"{seg.uid}.json")
    assert counts["test"].segments[0].labels == {}

    with pytest.raises(DataError, match="dataset root not found"):
        load_ssv2(split="train", **media)
    (tmp_path / "no-media").mkdir()
    cfg = build_config(KarmmaConfig, "configs/karmma/ssv2.yaml", [
        f"data.root={tmp_path / 'no-media'}", f"data.annotations={ann}", "rows=[student]"])
    with pytest.raises(DataError, match=r"no usable samples.*video file not found"):
        load_index(cfg.data, "train")

    plan = plan_karmma(cfg)
    assert plan["index"].startswith("annotations only")
    assert plan["splits"]["train"]["samples"] == 10 and plan["splits"]["test"]["samples"] == 4
    assert plan["problems"] == {"train": 0, "validation": 1}
    assert plan["classes"] == {"class": SSV2_CLASSES}
    with pytest.raises(DataError, match="no usable samples"):
        plan_karmma(cfg, check_media=True)


def test_cli_plan_prints_tables_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = write_epic_annotations(tmp_path / "ann", 8, 4)
    args = ["karmma", "plan", "configs/karmma/epic_kitchens_100.yaml", f"data.root={tmp_path}",
            f"data.annotations={ann}", "rows=[baseline]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "On-disk caches:" in out and "| clips-train |" in out and "Estimated peak per process" in out
    assert main([*args, "--json", "--tflops", "100"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["splits"]["train"]["samples"] == 8 and plan["wall_clock_hint"]["assumed_tflops"] == 100


def test_cli_plan_missing_annotation_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = write_epic_annotations(tmp_path / "ann", 4, 2)
    (ann / "EPIC_100_validation.csv").unlink()
    code = main(["karmma", "plan", "configs/karmma/epic_kitchens_100.yaml", f"data.root={tmp_path}",
                 f"data.annotations={ann}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "EPIC_100_validation.csv" in err and "not found" in err


def test_cli_fewshot_plan_from_split_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Few-shot plan on split files alone (no videos): classes and videos per split, feature
    caches sized from the backbone's width."""
    splits = write_fewshot_splits(tmp_path / "splits", {"train": 6, "val": 2, "test": 5}, 3)
    args = ["fewshot", "plan", "configs/fewshot/synthetic.yaml", f"data.root={tmp_path / 'videos'}",
            f"data.annotations={splits}", "backbone.name=tiny", "heads.dim=32", "data.options.benchmark=custom",
            "heads.methods=[protonet,otam]", "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["splits"]["train"] == {"split": "train", "classes": 6, "videos": 18}
    assert plan["splits"]["test"]["videos"] == 15
    feat = {c["cache"]: c for c in plan["caches"]}["fewshot-test"]
    assert feat["bytes"] == 15 * 8 * plan["backbone"]["feature_dim"] * 4
    assert all(r["flops_total"] > 0 for r in plan["flops"])
    assert main(args[:-1]) == 0 and "| train otam |" in capsys.readouterr().out

    # a registered text encoder of another width: the plan builds the text head at that width
    from actdistill.engine.fewshot import TEXT_ENCODERS

    widths: list[int] = []

    @TEXT_ENCODERS.register("test_plan_text")
    def seven(names: list[str], cfg: object, dim: int) -> torch.Tensor:
        widths.append(dim)
        return torch.ones(len(names), 7)

    try:
        text_args = [a for a in args if not a.startswith("heads.methods")]
        assert main([*text_args[:-1], "heads.methods=[clip_fsar]", "text.encoder=test_plan_text"]) == 0
        assert "| train clip_fsar |" in capsys.readouterr().out and widths == [32]
    finally:
        TEXT_ENCODERS.unregister("test_plan_text")


if __name__ == "__main__":  # full-size fixtures for the documentation's plan outputs
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "plan-fixtures")
    write_epic_annotations(out / "epic-kitchens-100-annotations", EPIC_TRAIN, EPIC_VALIDATION)
    write_fewshot_splits(out / "ssv2_CMN", SSV2_SMALL, 100)
    write_ssv2_annotations(out / "ssv2-labels", SSV2_TRAIN, SSV2_VALIDATION, SSV2_TEST)
    torch.set_num_threads(1)
    print(f"wrote {out}/epic-kitchens-100-annotations, {out}/ssv2_CMN and {out}/ssv2-labels")
