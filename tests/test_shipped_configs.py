"""The configs shipped in the package: where they are found, which job each belongs to, and that
every one of them shows and builds (``actdistill config show``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from actdistill.config import ConfigError, build_config, to_dict
from actdistill.shipped import CONFIG_DIR, JOBS, infer_job, resolve_experiment, shipped_configs, show_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = shipped_configs()


def test_configs_ship_as_package_data() -> None:
    """Every file under the package's configs/ matches the package-data pattern (so a wheel carries
    it), and the repository's configs/ is that folder, not a copy."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["actdistill"]
    assert "configs/*/*.yaml" in patterns
    files = [p for p in CONFIG_DIR.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".yaml" and p.parent.parent == CONFIG_DIR for p in files)
    assert (REPO / "configs").resolve() == CONFIG_DIR
    assert {"karmma/synthetic", "fewshot/synthetic", "data/synthetic"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_shows_and_builds_for_its_job(name: str, tmp_path: Path) -> None:
    """``config show`` infers the job of the folder the config is in; the full output and the
    ``--diff`` output, saved as files, build the very config the job builds from the shipped one."""
    job = JOBS[name.split("/")[0]]
    assert infer_job(yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())) is job
    want = to_dict(build_config(job.cls, name, defaults=list(job.defaults)))
    for diff in (False, True):
        text = show_config(name, [], diff=diff)
        assert yaml.safe_load(text)["job"] == job.name
        saved = tmp_path / f"shown-{diff}.yaml"
        saved.write_text(text)
        assert to_dict(build_config(job.cls, saved, defaults=list(job.defaults))) == want


def test_resolve_experiment_prefers_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = CONFIG_DIR / "karmma" / "synthetic.yaml"
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped file
    for spelling in ("karmma/synthetic", "karmma/synthetic.yaml", "configs/karmma/synthetic.yaml"):
        assert resolve_experiment(spelling) == shipped
    own = tmp_path / "configs" / "karmma" / "synthetic.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("data: {root: /mine}\n")
    assert resolve_experiment("configs/karmma/synthetic.yaml") == Path("configs/karmma/synthetic.yaml")
    from actdistill.experiment import ExperimentConfig

    assert build_config(ExperimentConfig, "configs/karmma/synthetic.yaml").data.root == "/mine"
    with pytest.raises(ConfigError, match=r"karmma/nope: no such config file.*shipped: .*karmma/synthetic"):
        resolve_experiment("karmma/nope")


def test_job_key_is_checked_and_dropped(tmp_path: Path) -> None:
    from actdistill.engine.fewshot import FewShotConfig
    from actdistill.engine.karmma import KarmmaConfig

    exp = tmp_path / "exp.yaml"
    exp.write_text("job: karmma\nstudent: {alpha: 0.7}\n")
    assert build_config(KarmmaConfig, exp).student.alpha == 0.7
    with pytest.raises(ConfigError, match=r"exp\.yaml: a karmma config \(job: karmma\), not one for the fewshot job"):
        build_config(FewShotConfig, exp)
    exp.write_text("job: karma\n")
    with pytest.raises(ConfigError, match=r"unknown job 'karma'"):
        build_config(KarmmaConfig, exp)
    exp.write_text("job: fewshot\ndata: {root: /x}\n")  # the job key beats inference from the sections
    assert yaml.safe_load(show_config(str(exp), []))["job"] == "fewshot"


def test_demos_run_the_shipped_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both demos read the packaged YAML (no copy in code), whatever the working directory holds."""
    import actdistill.cli_fewshot as cli_fewshot
    from actdistill.cli import main
    from actdistill.demo import demo_config
    from actdistill.engine.karmma import KarmmaConfig

    monkeypatch.chdir(tmp_path)
    shipped = build_config(KarmmaConfig, CONFIG_DIR / "karmma" / "synthetic.yaml", ["run.name=demo"])
    assert to_dict(demo_config()) == to_dict(shipped)

    seen: dict[str, object] = {}

    def fake_setup(experiment: object, overrides: list[str], name: str) -> tuple[None, Path]:
        seen.update(experiment=experiment, overrides=overrides, name=name)
        return None, tmp_path

    monkeypatch.setattr(cli_fewshot, "_setup", fake_setup)
    monkeypatch.setattr(cli_fewshot, "_finish", lambda run_dir, t0: 0)
    monkeypatch.setattr("actdistill.engine.fewshot.run_fewshot", lambda cfg, run_dir: None)
    assert main(["fewshot", "demo", "eval.episodes=3"]) == 0
    assert seen == {"experiment": CONFIG_DIR / "fewshot" / "synthetic.yaml", "overrides": ["eval.episodes=3"],
                    "name": "fewshot-demo"}
    from actdistill.engine.fewshot import FewShotConfig

    cfg = build_config(FewShotConfig, seen["experiment"])
    assert cfg.data.test_split == "test" and cfg.train.accumulate == 16 and cfg.eval.query == 1
    assert set(cfg.heads.methods) == {"clip_m2df", "protonet", "otam", "trx", "clip_fsar"}
