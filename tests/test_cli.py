from __future__ import annotations

import json
from pathlib import Path

import pytest

from actdistill.cli import main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "config", "demo"):
        assert cmd in out


def test_config_show_and_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "configs/data/synthetic.yaml", "data.sampling.num_frames=16"]) == 0
    assert "num_frames: 16" in capsys.readouterr().out
    assert main(["config", "show", "data.sampling.num_frmes=16"]) == 2
    err = capsys.readouterr().err
    assert "data.sampling.num_frmes" in err and "num_frames" in err


def test_config_show_builds_each_job_and_diffs(capsys: pytest.CaptureFixture[str]) -> None:
    """`config show` builds KARMMA and few-shot configs with their own classes (README's override
    examples included), `--diff` prints only what differs from the job's defaults, and the job is
    inferred from overrides alone too."""
    import yaml

    assert main(["config", "show", "configs/karmma/synthetic.yaml", "student.optim.epochs=3"]) == 0
    full = yaml.safe_load(capsys.readouterr().out)
    assert full["job"] == "karmma" and full["student"]["optim"]["epochs"] == 3 and full["run"]["name"] == "karmma"
    assert full["train"] and full["cache"]["root"]  # the defaults are printed too
    assert main(["config", "show", "fewshot/synthetic", "train.episodes=320", "--diff"]) == 0
    diff = yaml.safe_load(capsys.readouterr().out)
    assert diff["job"] == "fewshot" and diff["train"]["episodes"] == 320 and diff["run"] == {"name": "fewshot-demo"}
    assert "accumulate" not in diff["train"] and "cache_root" not in diff  # equal to the defaults
    assert main(["config", "show", "student.alpha=0.7", "--diff"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"job": "karmma", "student": {"alpha": 0.7}}
    assert main(["config", "show", "configs/karmma/synthetic.yaml", "--job", "fewshot"]) == 2
    assert "unknown config key 'cache'" in capsys.readouterr().err  # the error, now only for a wrong job
    assert main(["config", "show", "karmma/nope"]) == 2
    assert "nor a shipped config (shipped: data/epic_kitchens_100" in capsys.readouterr().err


def test_summary_json_reports_counts_and_problems(epic_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (epic_root / "P01" / "rgb_frames" / "P01_01" / "frame_0000000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 trunc")
    import shutil

    shutil.rmtree(epic_root / "P02" / "flow_frames")
    code = main(["data", "summary", "epic_kitchens_100", "--root", str(epic_root), "--modalities", "rgb,flow",
                 "--json", "--deep"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    train, val, test = (summary["splits"][s] for s in ("train", "validation", "test"))
    assert train["samples"] == 3 and train["classes"] == {"verb": 3, "noun": 4, "action": 3}
    assert val["samples"] == 3 and val["modalities"] == {"rgb": 3, "flow": 0}
    assert test["samples"] == 2 and test["labelled"] is False
    paths = [p["path"] for p in summary["problems"]]
    assert any(p.endswith("P02/flow_frames/P02_101") for p in paths)
    assert summary["problem_kinds"]["missing"] >= 1


def test_summary_bad_root_is_reported_not_crashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "summary", "epic_kitchens_100", "--root", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["readable"] is False
    assert "annotation file not found" in summary["problems"][0]["message"]
