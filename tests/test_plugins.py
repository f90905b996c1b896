"""Plugins: ``custom_imports``, entry points, registry contracts, ``actdistill list``, and
docs/extending.md done end to end.

The end-to-end test reads the files and commands of docs/extending.md (fenced blocks with a
``title="<file>"`` and the ``$ `` lines of its ``console`` blocks), writes the files into a
temporary directory outside the package and runs the commands there in this process, so the
document cannot drift from what works.
"""

from __future__ import annotations

import glob
import json
import re
import runpy
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from actdistill.cli import main
from actdistill.config import ConfigError, build_config
from actdistill.data.datasets import DATASETS, DatasetSpec, register_dataset
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.engine.karmma import KarmmaConfig
from actdistill.engine.tasks import ROWS, RowSpec, register_row
from actdistill.models.base import FUSION, MODELS, register_fusion
from actdistill.models.encoders import ENCODERS, Encoder
from actdistill.models.fewshot import FEWSHOT_HEADS, register_head
from actdistill.registry import Registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.M | re.S)
REGISTRIES = (ENCODERS, DATASETS, READERS, ROWS, FEWSHOT_HEADS, MODELS, FUSION)


def doc_files_and_commands() -> tuple[dict[str, str], list[str]]:
    """docs/extending.md's titled code blocks (file name -> text) and its shell commands, in order."""
    files: dict[str, str] = {}
    commands: list[str] = []
    for lang, info, body in FENCE.findall(DOC.read_text()):
        title = re.search(r'title="([^"]+)"', info)
        if title:
            files[title.group(1)] = body
        if lang == "console":
            commands += [line[2:] for line in body.splitlines() if line.startswith("$ ")]
    return files, commands


@pytest.fixture
def clean_registries(tmp_path: Path) -> Iterator[None]:
    """Whatever a test registers, and the modules it imports from ``tmp_path``, are gone after it."""
    before = {id(r): set(r.names()) for r in REGISTRIES}
    yield
    for r in REGISTRIES:
        for name in set(r.names()) - before[id(r)]:
            r.unregister(name)
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def forget(module: str, *encoders: str) -> None:
    """As in a new process: the module is not imported and its encoders are not registered."""
    sys.modules.pop(module, None)
    for name in encoders:
        ENCODERS.unregister(name)


# ----------------------------------------------------------------------------------- the document
def test_extending_doc_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], clean_registries: None) -> None:
    """What docs/extending.md shows, in a directory of the user's: toy data in the generic format,
    their encoder listed and trained from the CLI, the run predicting after importing it again from
    its config.yaml, then their dataset adapter listed and planned."""
    files, commands = doc_files_and_commands()
    assert {"make_data.py", "my_sensor.py", "my_folders.py", "armband.yaml", "my_fusion.py"} <= set(files)
    assert not str(tmp_path).startswith(str(Path(__file__).resolve().parents[1]))  # outside the package
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    out: dict[str, str] = {}
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "python":
            runpy.run_path(argv[1], run_name="__main__")
        else:
            assert argv[0] == "actdistill", line
            argv = [m for a in argv[1:] for m in (sorted(glob.glob(a)) if "*" in a else [a])]
            if argv[0] == "predict":  # a later process: only the run's config.yaml says what to import
                forget("my_sensor", "emg_cnn")
                if "mean_fusion" in FUSION:
                    forget("my_fusion")
                    FUSION.unregister("mean_fusion")
                    MODELS.unregister("mean_fusion")
            assert main(argv) == 0, line
        key = {"python": argv[-1], "predict": f"predict {argv[1][:9]}"}.get(argv[0], " ".join(argv[:2]))
        if argv[:2] == ["karmma", "train"]:
            key = f"train {'mean' if 'run.name=mean' in argv else 'armband'}"
        out[key] = capsys.readouterr().out
    assert [c.split()[:3] for c in commands] == [
        ["python", "make_data.py"], ["actdistill", "list", "encoders"], ["actdistill", "karmma", "train"],
        ["actdistill", "predict", "runs/armband-*/"], ["actdistill", "list", "datasets"],
        ["actdistill", "data", "summary"], ["actdistill", "karmma", "plan"], ["actdistill", "list", "fusion"],
        ["actdistill", "karmma", "train"], ["actdistill", "predict", "runs/mean-*/"]]

    assert "24 recordings in data/armband" in out["make_data.py"]
    listed = dict(re.split(r"\s{2,}", row, maxsplit=1) for row in out["list encoders"].splitlines())
    assert listed["emg_cnn"] == "1D CNN over EMG windows [B, T, C, L] -> one token per sampled frame."
    assert {"imu", "compact", "frames"} <= set(listed)

    (run,) = (tmp_path / "runs").glob("armband-*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["custom_imports"] == [str((tmp_path / "my_sensor.py").resolve())]  # recorded absolute
    assert config["student"]["model"]["encoders"]["imu:emg"]["name"] == "emg_cnn"
    from safetensors import safe_open

    with safe_open(str(run / "student.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "encoders.imu:emg.net.0.weight" in keys and "encoders.imu:emg.proj.weight" in keys  # the user's CNN
    assert not any(k.startswith("encoders.imu:acc.net.") for k in keys)  # the built-in imu encoder there
    info = json.loads((run / "model.json").read_text())
    assert info["modalities"] == ["imu:emg", "imu:acc"] and info["input_shapes"]["imu:emg"] == [4, 8, 32]
    report = (run / "report.md").read_text()
    assert "imu:emg" in report and "imu:acc" in report

    assert "emg_cnn" in ENCODERS and "my_sensor" in sys.modules  # predict imported it again
    predicted = out["predict runs/armb"]
    assert "manifest.csv#validation-grip-0" in predicted and re.search(r"label\s+(grip|rest) ", predicted)

    datasets = dict(re.split(r"\s{2,}", row, maxsplit=1) for row in out["list datasets"].splitlines())
    assert datasets["armband_folders"].startswith("my armband's folders")
    assert "generic" in datasets
    index = DATASETS.build("armband_folders").load(tmp_path / "data" / "armband", "train")
    assert len(index.segments) == 16 and index.classes == {"label": ["grip", "rest"]}
    assert index.segments[0].stop_frame == 39 and set(index.segments[0].sources) == {"imu:emg", "imu:acc"}
    summary_text = out["data summary"]  # the adapter read by --import, every split counted
    assert "armband_folders" in summary_text and re.search(r"train\s+16 samples .*imu:emg=16, imu:acc=16", summary_text)
    assert re.search(r"validation\s+8 samples", summary_text) and "problems: 0" in summary_text
    plan = out["karmma plan"]  # samples counted through the adapter, costs with the user's encoder
    assert "karmma on armband_folders" in plan and re.search(r"\| train \| train \| 16 \|", plan)
    assert re.search(r"\| imu:emg \| 4x8x32 \| .* \| 4 x 64 \|", plan)

    fusions = dict(re.split(r"\s{2,}", row, maxsplit=1) for row in out["list fusion"].splitlines())
    assert fusions["mean_fusion"].startswith("Early fusion") and {"karmma", "late_fusion"} <= set(fusions)
    (mean,) = (tmp_path / "runs").glob("mean-*")  # the student rows trained the user's fusion model
    with safe_open(str(mean / "student.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"proj.imu:emg.weight", "heads.label.weight", "encoders.imu:emg.net.0.weight"} <= keys
    assert not any(k.startswith("fusion.") for k in keys)
    assert yaml.safe_load((mean / "config.yaml").read_text())["student"]["model"]["fusion"] == {"dim": 16}
    assert "student" in json.loads((mean / "summary.json").read_text())
    assert "baseline" in (mean / "report.md").read_text()
    assert "mean_fusion" in FUSION  # predict imported my_fusion.py again from the run's config
    assert "manifest.csv#validation-rest-1" in out["predict runs/mean"]


# ------------------------------------------------------------------------------------- contracts
def test_registrations_that_break_the_contract_are_refused_with_the_reason(clean_registries: None) -> None:
    import torch
    from torch import nn

    class NotAnEncoder(nn.Module):
        out_dim = 4

    class NoTokens(Encoder):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def no_modality(size: int = 1) -> Encoder:
        raise AssertionError

    for obj, why in ((NotAnEncoder, r"NotAnEncoder is not a subclass of actdistill\.models\.encoders\.Encoder"),
                     (NoTokens, "NoTokens does not define num_tokens"), (no_modality, "takes no modality= keyword"),
                     (42, "neither an Encoder subclass nor a function")):
        with pytest.raises(TypeError, match=rf"cannot register encoder 'bad': .*{why}.*\(an encoder is an Encoder"):
            ENCODERS.register("bad")(obj)
    assert "bad" not in ENCODERS

    class NoOutDim(Encoder):
        """Forgets to set out_dim."""

        def __init__(self, modality: str) -> None:
            super().__init__()

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def num_tokens(self, num_frames: int) -> int:
            return num_frames

    ENCODERS.register("test_no_out_dim")(NoOutDim)
    ENCODERS.register("test_linear", description="a plain nn.Linear")(lambda modality: nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"encoder 'test_no_out_dim' .* built an encoder whose out_dim is None"):
        ENCODERS.build("test_no_out_dim", modality="imu")
    with pytest.raises(TypeError, match=r"encoder 'test_linear' .* built a Linear, not an actdistill"):
        ENCODERS.build("test_linear", modality="imu")
    assert ENCODERS.describe("test_no_out_dim") == "Forgets to set out_dim."
    assert ENCODERS.describe("test_linear") == "a plain nn.Linear"
    with pytest.raises(KeyError, match=r"encoder 'test_linear' is already registered \(by "):
        ENCODERS.register("test_linear")(NoOutDim)

    with pytest.raises(TypeError, match=r"cannot register dataset 'x': loader must be 'module:function'"):
        register_dataset(DatasetSpec("x", "no_colon", ("train",), ("imu",), "d"))
    with pytest.raises(TypeError, match=r"dataset 'x': loader '.*:loader_without_split' takes no split argument"):
        register_dataset(DatasetSpec("x", f"{__name__}:loader_without_split", ("train",), ("imu",), "d"))
    with pytest.raises(TypeError, match=r"dataset 'x': splits must be a non-empty tuple"):
        register_dataset(DatasetSpec("x", f"{__name__}:loader_without_split", (), ("imu",), "d"))
    with pytest.raises(TypeError, match=r"register a DatasetSpec with register_dataset"):
        DATASETS.register("x")(DatasetSpec("x", "a:b", ("train",), ("imu",), "d"))
    assert "x" not in DATASETS

    class Abstract(ModalityReader):
        pass

    with pytest.raises(TypeError, match=r"modality reader 'x': .* is not a subclass of .*ModalityReader"):
        READERS.register("x")(object)
    with pytest.raises(TypeError, match=r"modality reader 'x': Abstract does not define read"):
        READERS.register("x")(Abstract)
    with pytest.raises(TypeError, match=r"few-shot method 'x': .* is not a subclass of .*EpisodicHead"):
        register_head("x")(nn.Linear)
    with pytest.raises(TypeError, match=r"row .*expected a RowSpec, got dict"):
        register_row({"name": "x"})  # type: ignore[arg-type]
    assert "x" not in READERS and "x" not in FEWSHOT_HEADS and "x" not in MODELS

    def no_heads(modalities: Any) -> nn.Module:
        raise AssertionError

    with pytest.raises(TypeError, match=r"cannot register fusion model 'x': cannot be called as "
                       r"f\(modalities, heads, size, encoders\).*register it with @register_fusion"):
        register_fusion("x")(no_heads)
    with pytest.raises(KeyError, match=r"model 'trx' is already registered"):
        register_fusion("trx")(lambda modalities, heads, size, encoders: nn.Linear(1, 1))
    assert "x" not in FUSION and "x" not in MODELS and "trx" not in FUSION
    register_fusion("test_linear_fusion")(lambda modalities, heads, size, encoders: nn.Linear(1, 1))
    with pytest.raises(TypeError, match=r"fusion model 'test_linear_fusion' .* built a model without a modalities"):
        FUSION.build("test_linear_fusion", ("rgb",), {"action": 2}, "tiny", {})

    plain = Registry[Any]("thing")
    with pytest.raises(TypeError, match="cannot register thing 'y': 3 is not callable"):
        plain.register("y")(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a thing name must be a non-empty string"):
        plain.register("")


def loader_without_split(root: str) -> None:
    """A dataset loader missing the ``split`` argument (for the test above)."""


def test_a_user_encoder_with_in_channels_gets_it_from_the_data(clean_registries: None) -> None:
    """As the built-in encoders do: filled in when absent and different from the factory's
    default, checked when given; an encoder without the parameter is left alone."""
    from actdistill.models.encoders.base import takes_in_channels, with_data_channels

    class Needs(Encoder):
        def __init__(self, modality: str, in_channels: int, out_dim: int = 4) -> None:
            super().__init__()
            self.modality, self.out_dim, self.in_channels = modality, out_dim, in_channels

        def encode(self, x: Any) -> Any:
            return x

        def num_tokens(self, num_frames: int) -> int:
            return num_frames

    class Defaults(Needs):
        def __init__(self, modality: str, in_channels: int = 8) -> None:
            super().__init__(modality, in_channels)

    class Without(Needs):
        def __init__(self, modality: str, width: int = 3) -> None:
            super().__init__(modality, 1)

    for name, cls in (("test_needs", Needs), ("test_defaults", Defaults), ("test_without", Without)):
        ENCODERS.register(name)(cls)
    shape = (4, 8, 32)  # [T, C, L]: 8 channels
    assert takes_in_channels("test_needs") and not takes_in_channels("test_without")
    assert with_data_channels("test_needs", "imu:emg", {}, shape) == {"in_channels": 8}
    assert with_data_channels("test_defaults", "imu:emg", {}, shape) == {}  # the default is right: unchanged
    assert with_data_channels("test_defaults", "imu:emg", {}, (4, 3, 32)) == {"in_channels": 3}
    assert with_data_channels("test_without", "imu:emg", {}, shape) == {}
    with pytest.raises(ValueError, match=r"in_channels is 6 but the data's imu:emg input has 8 channels"):
        with_data_channels("test_needs", "imu:emg", {"in_channels": 6}, shape, "student.model.encoders")


def test_every_built_in_entry_has_a_description() -> None:
    from actdistill.cli_list import KINDS, catalogue

    for kind in KINDS:
        entries = catalogue(kind)
        assert entries, kind
        assert all(desc and "\n" not in desc for _, desc in entries), (kind, entries)


# --------------------------------------------------------------------------------- custom imports
def row_plugin_beside_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, row: str) -> Path:
    """``tmp_path/exp/`` holding ``<module>.py`` (registers row ``row``) and ``my.yaml`` naming it in
    custom_imports and rows; the working directory is moved elsewhere, so a relative lookup from it
    would fail. Returns the folder."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / f"{module}.py").write_text(
        "from actdistill.engine.tasks import RowSpec, register_row\n"
        f"register_row(RowSpec({row!r}, 'a row from a plugin'))\n")
    (exp / "my.yaml").write_text(f"custom_imports: [{module}.py]\nrows: [baseline, {row}]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the YAML's folder, not the working directory
    return exp


def test_custom_imports_resolve_next_to_the_yaml_record_absolute_and_reimport(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registries: None) -> None:
    exp = row_plugin_beside_yaml(tmp_path, monkeypatch, "plug_enc", "test_plugin_row")
    cfg = build_config(KarmmaConfig, exp / "my.yaml")
    path = str((exp / "plug_enc.py").resolve())
    assert cfg.custom_imports == [path] and "test_plugin_row" in ROWS
    assert ROWS.describe("test_plugin_row") == "a row from a plugin"
    # idempotent: the same file (also as a plain module name next to the YAML) is not run twice
    assert build_config(KarmmaConfig, exp / "my.yaml").custom_imports == [path]
    (exp / "plain.yaml").write_text("custom_imports: [plug_enc]\n")
    assert build_config(KarmmaConfig, exp / "plain.yaml").custom_imports == [path]
    # a saved run config imports it again in a fresh process, from anywhere
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"custom_imports": cfg.custom_imports, "rows": cfg.rows}))
    sys.modules.pop("plug_enc")
    ROWS.unregister("test_plugin_row")
    assert build_config(KarmmaConfig, run / "config.yaml").rows == ["baseline", "test_plugin_row"]
    assert "test_plugin_row" in ROWS
    # the key exists in every job's config; an override (comma list) is relative to the working directory
    from actdistill.engine.fewshot import FewShotConfig
    from actdistill.experiment import ExperimentConfig

    monkeypatch.chdir(exp)
    assert build_config(FewShotConfig, None, ["custom_imports=plug_enc.py"]).custom_imports == [path]
    assert build_config(ExperimentConfig, {"custom_imports": ["json"]}).custom_imports == ["json"]


def test_config_show_imports_custom_files_next_to_the_yaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registries: None) -> None:
    """``config show`` builds the config as the job would: a relative custom_imports file is
    found beside the YAML, not in the working directory."""
    from actdistill.shipped import show_config

    exp = row_plugin_beside_yaml(tmp_path, monkeypatch, "show_plug", "test_show_row")
    shown = yaml.safe_load(show_config(str(exp / "my.yaml"), [], diff=True))
    assert shown["job"] == "karmma" and shown["rows"] == ["baseline", "test_show_row"]
    assert shown["custom_imports"] == [str((exp / "show_plug.py").resolve())]


def test_a_failing_custom_import_is_one_line_naming_module_and_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        clean_registries: None) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "syntax.py").write_text("x = 1\ndef broken(:\n")
    (tmp_path / "needs.py").write_text("import numpy\nimport not_a_real_module_xyz\n")
    (tmp_path / "bad_enc.py").write_text(
        "from torch import nn\nfrom actdistill.models.encoders import ENCODERS\n\n\n"
        "@ENCODERS.register('test_bad_enc')\nclass Bad(nn.Module):\n    pass\n")
    cases = {
        "syntax.py": r"custom_imports: cannot import 'syntax.py': SyntaxError: .* \(syntax.py, line 2\)",
        "needs.py": r"cannot import 'needs.py': ModuleNotFoundError: No module named 'not_a_real_module_xyz' "
                    r"\(needs.py, line 2\)",
        "bad_enc.py": r"cannot import 'bad_enc.py': TypeError: cannot register encoder 'test_bad_enc': "
                      r"bad_enc.Bad is not a subclass of actdistill.models.encoders.Encoder .*\(bad_enc.py, line \d\)",
        "missing.py": r"custom_imports: missing.py: no such file \(looked in ",
        "no_such_mod": r"custom_imports: no module named 'no_such_mod' \(not installed, not on PYTHONPATH, and no "
                       r"no_such_mod.py in ",
    }
    for entry, message in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            build_config(KarmmaConfig, {"custom_imports": [entry]})
        assert "\n" not in str(err.value), entry
    assert "test_bad_enc" not in ENCODERS and "syntax" not in sys.modules
    # through the CLI: exit 2 and the one line
    (tmp_path / "my.yaml").write_text("custom_imports: [needs.py]\n")
    assert main(["list", "encoders", "--config", "my.yaml"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1
    assert err_lines[0].startswith("actdistill: error: custom_imports: cannot import 'needs.py'")


# ---------------------------------------------------------------------------------- entry points
class FakeEntryPoint:
    def __init__(self, name: str, value: str, target: Any) -> None:
        self.name, self.value, self.group = name, value, "actdistill.plugins"
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_point_plugins_load_once_and_a_broken_one_only_warns(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_registries: None) -> None:
    import importlib.metadata

    from actdistill import plugins

    calls: list[str] = []

    def register() -> None:
        calls.append("register")
        register_row(RowSpec("test_ep_row", "a row from an installed package"))

    groups: list[str] = []

    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        groups.append(group)
        return [FakeEntryPoint("broken", "broken_pkg.mod", ImportError("boom")),
                FakeEntryPoint("mine", "my_pkg.plugin:register", register)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    monkeypatch.setattr(plugins, "_plugin_errors", {})
    with pytest.warns(plugins.PluginWarning, match=r"plugin 'broken = broken_pkg.mod' .* failed to load and is "
                                                   r"skipped: ImportError: boom"):
        assert main(["list", "rows"]) == 0
    assert groups == ["actdistill.plugins"] and calls == ["register"]
    assert re.search(r"^test_ep_row\s+a row from an installed package$", capsys.readouterr().out, re.M)
    errors = plugins.load_plugins()  # once per process: nothing is loaded again
    assert list(errors) == ["broken"] and errors["broken"].startswith("ImportError: boom")
    assert main(["data", "list"]) == 0 and calls == ["register"]
    assert "generic" in capsys.readouterr().out
