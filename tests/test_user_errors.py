"""Errors a user can fix are one line naming the path or option, exit status 2, never a traceback.

Each case runs the real CLI on a tiny run directory that holds only its ``config.yaml`` (nothing
is trained here), so the whole module takes about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actdistill.cli import main
from actdistill.config import to_dict
from actdistill.engine.fewshot import FewShotConfig
from actdistill.rundir import save_config
from tests.conftest import read_only_dir

DENIED = {"mode": "permission denied", "immutable": "operation not permitted"}  # EACCES, EPERM


def _fewshot_run(tmp_path: Path) -> Path:
    run = tmp_path / "fs-run"
    run.mkdir()
    save_config(run, FewShotConfig())
    return run


def _experiment(tmp_path: Path, **run: object) -> Path:
    cfg = to_dict(FewShotConfig())
    cfg["run"].update(run)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(cfg))
    return exp


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("actdistill: error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("argv", [
    ["fewshot", "eval", "RUN", "--episodes", "0"],
    ["fewshot", "eval", "RUN", "--episodes", "-3"],
    ["predict", "RUN", "clip.mp4", "--top-k", "0"],
    ["predict", "RUN", "clip.mp4", "--top-k", "-1"],
])
def test_zero_or_negative_counts_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "must be at least 1" in err and argv[-2] in err


def test_zero_episodes_as_an_override_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fewshot_run(tmp_path)
    assert main(["fewshot", "eval", str(run), "eval.episodes=0"]) == 2
    _one_line_error(capsys, "eval.episodes", "at least 1")
    assert not list(run.glob("eval-*")) and not (run / "summary.json").exists()


@pytest.mark.parametrize("opset", [6, 99])
def test_unsupported_opset_is_refused_before_exporting(opset: int, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.deploy.export import supported_opsets

    assert main(["export", "onnx", str(tmp_path / "any-run"), "--opset", str(opset)]) == 2
    lo, hi = supported_opsets()
    _one_line_error(capsys, f"--opset {opset}", f"{lo} to {hi}")


def test_export_of_a_fewshot_run_says_what_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fewshot_run(tmp_path)
    assert main(["export", "onnx", str(run)]) == 2
    err = _one_line_error(capsys, str(run), "few-shot run", "--support", "student")
    assert "cache_root" not in err


def test_predict_with_support_on_a_karmma_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.engine.karmma import KarmmaConfig

    run = tmp_path / "k-run"
    run.mkdir()
    save_config(run, KarmmaConfig())
    assert main(["predict", str(run), "clip.mp4", "--support", str(tmp_path)]) == 2
    _one_line_error(capsys, "KARMMA run", "--support")


def test_out_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "runs"
    target.write_text("not a folder")
    exp = _experiment(tmp_path, out_dir=str(target))
    assert main(["fewshot", "train", str(exp)]) == 2
    _one_line_error(capsys, str(target), "not a directory")
    assert main(["fewshot", "train", str(exp), f"run.out_dir={target}/sub"]) == 2
    _one_line_error(capsys, str(target), "is a file")


def test_read_only_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    with read_only_dir(out) as how:
        assert main(["fewshot", "train", str(_experiment(tmp_path, out_dir=str(out)))]) == 2
    _one_line_error(capsys, str(out), DENIED[how])


def test_read_only_run_dir_for_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fewshot_run(tmp_path)
    with read_only_dir(run) as how:
        assert main(["fewshot", "eval", str(run)]) == 2
    _one_line_error(capsys, str(run / "eval-"), DENIED[how])


def test_path_error_leaves_other_os_errors_alone() -> None:
    import errno

    from actdistill.cli import path_error

    assert path_error(OSError(errno.EIO, "Input/output error", "/x")) is None  # not the user's to fix
    assert path_error(PermissionError(errno.EACCES, "Permission denied")) is None  # no path to name
    assert path_error(PermissionError(errno.EACCES, "Permission denied", "/d/.summary.json.ab12.tmp")) == \
        "/d: permission denied (not writable by you)"


def test_unknown_reader_option_is_named_before_anything_runs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Path(__file__).resolve().parents[1] / "configs" / "karmma" / "synthetic.yaml"
    argv = ["karmma", "train", str(cfg), f"data.root={tmp_path / 'data'}", f"run.out_dir={tmp_path / 'runs'}",
            "data.readers.audio.fooo=1"]
    assert main(argv) == 2
    _one_line_error(capsys, "data.readers.audio.fooo", "unknown option of the audio reader", "n_mels")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # refused before any work
