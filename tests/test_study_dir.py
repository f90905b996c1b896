"""The study-directory guard shared by ``karmma study`` and ``fewshot study``: configs built in memory,
no training. The same study is accepted again, a neutral key (where files are, display, speed) may
change, a key that decides the results may not, and the message names it with both values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from actdistill.config import ConfigError, to_dict
from actdistill.engine.fewshot import FewShotConfig
from actdistill.engine.karmma import KarmmaConfig
from actdistill.engine.study_dir import RECORD, differences, read_record


def _karmma() -> KarmmaConfig:
    cfg = KarmmaConfig()
    cfg.data.root = "/data/a"
    cfg.rows = ["baseline", "student"]
    return cfg


def _fewshot() -> FewShotConfig:
    cfg = FewShotConfig()
    cfg.heads.methods = ["protonet", "otam"]
    cfg.heads.options = {"protonet": {"x": 1}, "trx": {"y": 2}}
    return cfg


def test_karmma_study_dir_same_neutral_and_meaningful(tmp_path: Path) -> None:
    from actdistill.engine.karmma_study import check_out as karmma_check_out

    out = tmp_path / "study"
    cfg = _karmma()
    karmma_check_out(cfg, out, "shared")
    job, study, config = read_record(out / RECORD)
    assert (job, study, config) == ("karmma", {"teacher": "shared"}, to_dict(cfg))
    written = (out / RECORD).read_text()
    karmma_check_out(copy.deepcopy(cfg), out, "shared")  # the same study: accepted

    moved = copy.deepcopy(cfg)  # what a user changes between invocations of the same study
    moved.run.progress, moved.run.threads, moved.data.num_workers = False, 4, 8
    moved.data.root, moved.cache.root, moved.cache.in_memory_mb = "/other/disk", "/scratch/cache", 0.0
    moved.run.out_dir, moved.run.name, moved.eval.efficiency, moved.train.log_every = "x", "y", False, 7
    karmma_check_out(moved, out, "shared")
    assert (out / RECORD).read_text() == written  # never rewritten

    alpha = copy.deepcopy(cfg)
    alpha.student.alpha = 0.9
    with pytest.raises(ConfigError) as err:
        karmma_check_out(alpha, out, "shared")
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "another configuration" in msg and "another --out" in msg
    assert "student.alpha was 0.5, now 0.9" in msg
    with pytest.raises(ConfigError, match=r"--teacher was \"shared\", now \"per-seed\""):
        karmma_check_out(cfg, out, "per-seed")
    rows = copy.deepcopy(cfg)
    rows.rows = ["baseline"]
    with pytest.raises(ConfigError, match=r"rows was \[\"baseline\", \"student\"\], now \[\"baseline\"\]"):
        karmma_check_out(rows, out, "shared")
    seed = copy.deepcopy(cfg)
    seed.run.seed = 10  # the base seed: another set of seeds
    with pytest.raises(ConfigError, match=r"run\.seed was 0, now 10"):
        karmma_check_out(seed, out, "shared")


def test_karmma_record_of_earlier_versions_is_still_read(tmp_path: Path) -> None:
    """The format-1 record (``{config, teacher}``, as the earlier ``_check_out`` wrote it), even one
    written before a key was added: the same study is accepted and the file left alone."""
    from actdistill.engine.karmma_study import check_out as karmma_check_out

    out = tmp_path / "study"
    out.mkdir()
    cfg = _karmma()
    old = to_dict(cfg)
    del old["student"]["single_pass_target"]  # a key added since: rebuilt at its default
    text = yaml.safe_dump({"config": old, "teacher": "per-seed"}, sort_keys=False)
    (out / RECORD).write_text(text)
    karmma_check_out(cfg, out, "per-seed")
    progress = copy.deepcopy(cfg)
    progress.run.progress = False
    karmma_check_out(progress, out, "per-seed")
    assert (out / RECORD).read_text() == text
    lr = copy.deepcopy(cfg)
    lr.teacher.optim.lr = 1e-2
    with pytest.raises(ConfigError, match=r"teacher\.optim\.lr was 0\.0005, now 0\.01"):
        karmma_check_out(lr, out, "per-seed")
    with pytest.raises(ConfigError, match="--teacher"):
        karmma_check_out(cfg, out, "shared")


def test_fewshot_study_dir_same_neutral_and_meaningful(tmp_path: Path) -> None:
    from actdistill.engine.fewshot_study import check_out
    from actdistill.engine.karmma_study import check_out as karmma_check_out

    out = tmp_path / "study"
    cfg = _fewshot()
    check_out(cfg, out)
    assert read_record(out / RECORD)[0] == "fewshot"
    check_out(copy.deepcopy(cfg), out)

    moved = copy.deepcopy(cfg)
    moved.run.progress, moved.cache_root, moved.cache_in_memory_mb = False, "/scratch", 0.0
    moved.data.root, moved.data.num_workers, moved.train.log_every = "/other/disk", 6, 3
    moved.heads.options = {"protonet": {"x": 1}, "trx": {"y": 3}}  # trx: not in this study
    check_out(moved, out)
    fewer = copy.deepcopy(cfg)
    fewer.heads.methods = ["protonet"]  # a study may shrink or grow by a method
    check_out(fewer, out)

    lr = copy.deepcopy(cfg)
    lr.train.lr = 0.01
    with pytest.raises(ConfigError) as err:
        check_out(lr, out)
    msg = str(err.value)
    assert "\n" not in msg and "another configuration" in msg and "train.lr was 1e-06, now 0.01" in msg
    options = copy.deepcopy(cfg)
    options.heads.options = {"protonet": {"x": 2}}
    with pytest.raises(ConfigError, match=r"heads\.options\.protonet\.x was 1, now 2"):
        check_out(options, out)
    # a few-shot study directory is not a KARMMA one
    with pytest.raises(ConfigError, match=r"job was \"fewshot\", now \"karmma\""):
        karmma_check_out(_karmma(), out, "shared")


def test_fewshot_directory_of_an_earlier_version_checks_its_seeds(tmp_path: Path) -> None:
    """No record yet but seed directories (an earlier version's study): a seed's config.yaml of
    another configuration refuses the study, and no record is written; matching ones are adopted."""
    from actdistill.engine.fewshot_study import check_out, config_differences, seed_config
    from actdistill.rundir import save_config

    out = tmp_path / "study"
    cfg = _fewshot()
    other = copy.deepcopy(cfg)
    other.eval.episodes = 50
    for k in (0, 1):
        (out / f"seed-{k}").mkdir(parents=True)
        save_config(out / f"seed-{k}", seed_config(other if k == 1 else cfg, k, out))
    assert config_differences(out / "seed-0", seed_config(cfg, 0, out), cfg.heads.methods) == []
    plain = to_dict(seed_config(cfg, 0, out))  # config.yaml of earlier versions: no job header
    (out / "seed-0" / "config.yaml").write_text(yaml.safe_dump(plain))
    assert config_differences(out / "seed-0", seed_config(cfg, 0, out), cfg.heads.methods) == []
    (out / "seed-0" / "config.yaml").write_text(yaml.safe_dump({"job": "karmma", **plain}))
    assert [d.key for d in config_differences(out / "seed-0", seed_config(cfg, 0, out), cfg.heads.methods)] == ["job"]
    save_config(out / "seed-0", seed_config(cfg, 0, out))
    with pytest.raises(ConfigError, match=r"seed-1: written with another configuration \(eval\.episodes was 50"):
        check_out(cfg, out)
    assert not (out / RECORD).exists()
    save_config(out / "seed-1", seed_config(cfg, 1, out))
    check_out(cfg, out)
    assert (out / RECORD).is_file()


def test_differences_order_and_unset() -> None:
    diffs = differences({"a": 1, "b": 2, "gone": 0}, {"b": 3, "a": 1, "new": 4})
    assert [tuple(d) for d in diffs] == [("b", 2, 3), ("new", "<unset>", 4), ("gone", 0, "<unset>")]
