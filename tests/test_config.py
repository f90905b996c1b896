from __future__ import annotations

from pathlib import Path

import pytest

from actdistill.config import ConfigError, build_config, to_dict
from actdistill.experiment import ExperimentConfig
from actdistill.rundir import create_run_dir, save_config


def test_defaults_yaml_and_overrides(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("data:\n  root: /from/yaml\n  sampling:\n    num_frames: 16\nrun:\n  seed: 3\n")
    cfg = build_config(ExperimentConfig, exp, ["data.root=/x", "run.seed=5", "data.modalities=rgb,flow",
                                               "data.spatial.scale_range=[1.0, 1.3]"])
    assert cfg.data.root == "/x"
    assert cfg.data.sampling.num_frames == 16  # from YAML
    assert cfg.run.seed == 5
    assert cfg.data.modalities == ["rgb", "flow"]
    assert cfg.data.spatial.scale_range == (1.0, 1.3)
    assert cfg.data.batch_size == 16  # typed default untouched


def test_unknown_key_names_key_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'data.sampling.num_frame'.*did you mean 'num_frames'"):
        build_config(ExperimentConfig, None, ["data.sampling.num_frame=3"])
    exp = tmp_path / "bad.yaml"
    exp.write_text("data:\n  rot: /x\n")
    with pytest.raises(ConfigError, match=r"'data.rot'.*did you mean 'root'"):
        build_config(ExperimentConfig, exp)


def test_bad_values_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected an integer"):
        build_config(ExperimentConfig, None, ["data.batch_size=lots"])
    with pytest.raises(ConfigError, match="not of the form"):
        build_config(ExperimentConfig, None, ["data.batch_size"])
    bad = tmp_path / "broken.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML"):
        build_config(ExperimentConfig, bad)


def test_partial_section_keeps_the_enclosing_default(tmp_path: Path) -> None:
    """``data: {root: x}`` in a few-shot config changes the root only: the splits, sampling and
    options stay the few-shot defaults (not ``DataConfig()``'s), and mappings are replaced whole."""
    from actdistill.engine.fewshot import FewShotConfig

    exp = tmp_path / "fs.yaml"
    exp.write_text("data:\n  root: /videos\n  sampling: {num_frames: 4}\n")
    cfg = build_config(FewShotConfig, exp, ["data.options={benchmark: kinetics100}"])
    default = FewShotConfig()
    assert cfg.data.root == "/videos" and cfg.data.test_split == default.data.test_split == "test"
    assert cfg.data.dataset == "fewshot" and cfg.data.sampling.mode == "uniform" and cfg.data.sampling.num_frames == 4
    assert cfg.data.options == {"benchmark": "kinetics100"}
    assert cfg.run.name == "fewshot" and default.data.root != "/videos"  # the default object is not mutated


def test_run_dir_never_overwrites(tmp_path: Path) -> None:
    a = create_run_dir(tmp_path, "exp", timestamp=False)
    b = create_run_dir(tmp_path, "exp", timestamp=False)
    assert a != b and a.is_dir() and b.is_dir()
    cfg = build_config(ExperimentConfig, None, ["run.seed=9"])
    path = save_config(a, cfg)
    again = build_config(ExperimentConfig, path)
    assert to_dict(again) == to_dict(cfg)


def test_an_override_sets_its_path_and_nothing_else(tmp_path: Path) -> None:
    """One rule for dotted overrides: a key inside a free-form mapping is set in the mapping in
    effect (the YAML's or the default's, whose other keys stay); a mapping value replaces the
    mapping whole (``data.options={}`` clears it), as the same mapping in a YAML does; a mapping
    for a dataclass section sets the keys it names."""
    from actdistill.engine.fewshot import FewShotConfig
    from actdistill.engine.karmma import KarmmaConfig

    fs = build_config(FewShotConfig, None, ["data.options.split_seed=3"])
    assert fs.data.options == {**FewShotConfig().data.options, "split_seed": 3}  # the default's key stays
    assert build_config(FewShotConfig, None, ["data.options={}"]).data.options == {}
    exp = tmp_path / "k.yaml"
    exp.write_text("data:\n  options: {seed: 0, size: small}\nstudent:\n  model:\n    fusion: {dim: 96, depth: 1}\n")
    assert build_config(KarmmaConfig, exp, ["data.options={}"]).data.options == {}
    assert build_config(KarmmaConfig, exp, ["data.options={size: tiny}"]).data.options == {"size": "tiny"}
    assert build_config(KarmmaConfig, exp, ["data.options.size=tiny"]).data.options == {"seed": 0, "size": "tiny"}
    assert build_config(KarmmaConfig, exp, ["student.model.fusion.dim=64"]).student.model.fusion == {
        "dim": 64, "depth": 1}
    default_fusion = KarmmaConfig().student.model.fusion
    assert len(default_fusion) > 1  # no YAML: the default's keys stay
    assert build_config(KarmmaConfig, None, ["student.model.fusion.dim=8"]).student.model.fusion == {
        **default_fusion, "dim": 8}
    assert build_config(KarmmaConfig, None, ["student.model.fusion={dim: 8}"]).student.model.fusion == {"dim": 8}
    section = build_config(KarmmaConfig, exp, ["data={root: /x}", "data.readers.audio.n_mels=32"])
    assert section.data.root == "/x" and section.data.options == {"seed": 0, "size": "small"}
    assert section.data.readers["audio"] == {"n_mels": 32}


def test_a_saved_run_config_names_its_job_and_builds_again(tmp_path: Path) -> None:
    from actdistill.deploy.recognizer import run_kind
    from actdistill.engine.fewshot import FewShotConfig
    from actdistill.engine.karmma import KarmmaConfig

    for cls, job in ((KarmmaConfig, "karmma"), (FewShotConfig, "fewshot"), (ExperimentConfig, "data")):
        run = tmp_path / job
        run.mkdir()
        cfg = build_config(cls, None, ["run.seed=7"])
        path = save_config(run, cfg)
        assert path.read_text().startswith(f"job: {job}\n")
        assert to_dict(build_config(cls, path)) == to_dict(cfg)
        if job != "data":
            assert run_kind(run) == job
    with pytest.raises(ConfigError, match="a karmma config"):
        build_config(FewShotConfig, tmp_path / "karmma" / "config.yaml")
