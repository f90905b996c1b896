"""Few-shot pipeline: cached evaluation equals re-encoding, resume is exact, the run directory and CLI.

Everything runs on the ``tiny`` synthetic few-shot dataset (100 classes x 2 videos, SSv2 layout +
TRX split files) with the tiny frame CNN, so the whole module takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from actdistill.config import build_config, from_dict, to_dict
from actdistill.data.datasets.synthetic_fewshot import write_synthetic_fewshot
from actdistill.engine.fewshot import (
    FewShotConfig,
    FewShotPipeline,
    bow_embedding,
    parse_setting,
    run_fewshot,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fewshot_data")
    write_synthetic_fewshot(root, seed=0, size="tiny", progress=False)
    return root


def tiny_config(root: Path, tmp: Path, methods: list[str], **train: object) -> FewShotConfig:
    data = {
        "root": str(root),
        "annotations": str(root / "splits"),
        "sampling": {"num_frames": 4},
        "spatial": {"short_side": 32, "crop_size": 32, "flip": False, "normalize": "none"},
    }
    cfg = {
        "data": data,
        "cache_root": str(root.parent / f"{root.name}_cache"),  # shared: encode each video once per module
        "run": {"out_dir": str(tmp / "runs"), "progress": False, "seed": 0},
        "backbone": {"name": "tiny", "tiny_dim": 24},
        "heads": {"dim": 16, "methods": methods,
                  "options": {"clip_m2df": {"mlp_dim": 32, "heads": 2}, "clip_fsar": {"mlp_dim": 32, "heads": 2},
                              "trx": {"out_dim": 16}}},
        "train": {"episodes": 8, "accumulate": 4, "lr": 1e-3, "way": 3, "shot": 1, "query": 1,
                  "train_views": 2, "checkpoint_every": 1, "log_every": 100, **train},
        "eval": {"episodes": 12, "settings": ["3way1shot"], "query": 1},
    }
    return from_dict(FewShotConfig, cfg)


def test_parse_setting_and_bow_text() -> None:
    assert parse_setting("5way1shot") == (5, 1) and parse_setting("10way5shot") == (10, 5)
    with pytest.raises(ValueError, match="5way1shot"):
        parse_setting("five-way")
    names = ["Pushing a red cube from left to right", "Pushing a blue ball from left to right", "Lifting a red cube"]
    a, b = bow_embedding(names, 64), bow_embedding(names, 64)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=1), torch.ones(3))
    sim = a @ a.T
    assert sim[0, 1] > 0.5 and sim[0, 2] > 0.3  # shared words -> similar embeddings
    assert not torch.equal(bow_embedding(names, 64, seed=1), a)


def test_cached_evaluation_equals_reencoding(tiny_root: Path, tmp_path: Path) -> None:
    """The feature-cache path and decoding + encoding every video of every episode give the same accuracy."""
    cfg = tiny_config(tiny_root, tmp_path, ["clip_m2df"])
    pipe = FewShotPipeline(cfg, tmp_path / "run")
    pipe.load_data()
    assert len(pipe.test_names) == 24 and len(pipe.train_names) == 64
    net = pipe.train_method("clip_m2df")
    cached = pipe.evaluate(net, "3way1shot", episodes=12)
    again = pipe.evaluate(net, "3way1shot", episodes=12)
    fresh = pipe.evaluate(net, "3way1shot", episodes=12, reencode=True)
    assert np.array_equal(cached["episode_acc"], fresh["episode_acc"]) and cached["acc"] == fresh["acc"]
    assert np.array_equal(cached["episode_acc"], again["episode_acc"])
    assert cached["per_class"] == fresh["per_class"] and set(cached["per_class"]) <= set(pipe.test_names)


def test_killed_training_resumes_to_the_same_weights(tiny_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_root, tmp_path, ["clip_m2df"], episodes=12)
    full = FewShotPipeline(cfg, tmp_path / "full")
    full.load_data()
    ref = full.train_method("clip_m2df")

    run = tmp_path / "killed"
    part = FewShotPipeline(cfg, run)
    part.load_data()
    part.train_method("clip_m2df", stop_after_steps=1)  # "killed" after 1 of 3 steps
    assert (run / "checkpoints" / "clip_m2df").is_dir() and not part.weights_path("clip_m2df").exists()
    resumed = FewShotPipeline(cfg, run)
    resumed.load_data()
    net = resumed.train_method("clip_m2df")
    a, b = ref.state_dict(), net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # A finished method is not retrained: its final weights are loaded.
    again = FewShotPipeline(cfg, run)
    again.load_data()
    c = again.train_method("clip_m2df").state_dict()
    assert all(torch.equal(c[k], b[k]) for k in b)


def test_run_directory_and_cli(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from actdistill.cli import main

    cfg = tiny_config(tiny_root, tmp_path, ["protonet", "otam", "trx", "clip_fsar"])
    cfg.eval.settings = ["3way1shot", "5way1shot"]  # tiny: 2 videos per class
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["fewshot", "train", str(exp), "run.name=cli"]) == 0
    out = capsys.readouterr().out
    assert "| protonet |" in out and "5way1shot" in out
    run = next((tmp_path / "runs").glob("cli*"))
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"protonet", "otam", "trx", "clip_fsar"}
    for res in summary.values():
        assert set(res) == {"3way1shot", "5way1shot"}
        for r in res.values():
            assert set(r) == {"acc", "ci95", "episodes"} and r["episodes"] == 12 and 0 <= r["acc"] <= 100
    per_class = json.loads((run / "per_class.json").read_text())
    assert set(per_class["otam"]["3way1shot"]) <= set(json.loads((tiny_root / "something-something-v2-labels.json")
                                                                   .read_text()))
    assert (run / "accuracy.png").stat().st_size > 1000 and (run / "report.md").is_file()
    assert all((run / "models" / f"{m}.safetensors").is_file() for m in summary)

    # Evaluate the trained run again, with more episodes: same weights, new summary.
    assert main(["fewshot", "eval", str(run), "--episodes", "20", "heads.methods=[otam]"]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert again["otam"]["3way1shot"]["episodes"] == 20 and list(again) == ["otam"]
    assert main(["fewshot", "eval", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_run_fewshot_is_deterministic(tiny_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_root, tmp_path, ["protonet"])
    a = run_fewshot(cfg, tmp_path / "a")
    b = run_fewshot(cfg, tmp_path / "b")
    assert a == b


def test_demo_yaml_matches_the_shipped_config() -> None:
    from actdistill.cli_fewshot import DEMO_CONFIG, DEMO_YAML

    assert yaml.safe_load((REPO / DEMO_CONFIG).read_text()) == yaml.safe_load(DEMO_YAML)
    cfg = build_config(FewShotConfig, REPO / DEMO_CONFIG)
    assert cfg.data.test_split == "test" and cfg.train.accumulate == 16 and cfg.eval.query == 1
    assert set(cfg.heads.methods) == {"clip_m2df", "protonet", "otam", "trx", "clip_fsar"}


def test_finetuned_backbone_trains_and_evaluates(tiny_root: Path, tmp_path: Path) -> None:
    """``backbone.finetune``: the backbone is the method's own, decoded frames per episode, and its
    trained weights (a new hash) get their own test-feature cache."""
    cfg = tiny_config(tiny_root, tmp_path, ["protonet"], episodes=4)
    cfg.backbone.finetune = True
    pipe = FewShotPipeline(cfg, tmp_path / "ft")
    pipe.load_data()
    fresh = pipe.build_net("protonet")
    net = pipe.train_method("protonet")
    assert net.backbone is not None and any(
        not torch.equal(a, b) for a, b in zip(fresh.backbone.parameters(), net.backbone.parameters())  # type: ignore[union-attr]
    )
    cached = pipe.evaluate(net, "3way1shot", episodes=6)
    fresh_eval = pipe.evaluate(net, "3way1shot", episodes=6, reencode=True)
    assert np.array_equal(cached["episode_acc"], fresh_eval["episode_acc"])


def test_init_from_a_reference_checkpoint(tiny_root: Path, tmp_path: Path) -> None:
    """A CLIP-MDMF checkpoint (fine-tuned ``backbone.*`` + head in the reference's names) loads
    into the pipeline's net and reproduces its logits; a safetensors of ours loads too."""
    from actdistill.engine.checkpoint import save_weights
    from actdistill.models.fewshot.reference_import import export_reference_state_dict

    cfg = tiny_config(tiny_root, tmp_path, ["clip_m2df"])
    cfg.backbone.finetune, cfg.heads.dim = True, 0
    pipe = FewShotPipeline(cfg, tmp_path / "src")
    pipe.load_data()
    src = pipe.build_net("clip_m2df")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # differ from the seeded init
    sd = {f"backbone.{k}": v for k, v in src.backbone.tower.state_dict().items()}  # type: ignore[union-attr]
    sd.update(export_reference_state_dict(src.head))
    ckpt = tmp_path / "mdmf.pth"
    torch.save({"model_state_dict": sd}, ckpt)
    cfg.heads.init = {"clip_m2df": str(ckpt)}
    dst = pipe.build_net("clip_m2df")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    ours = tmp_path / "ours.safetensors"
    save_weights(src, ours)
    cfg.heads.init = {"clip_m2df": str(ours)}
    assert all(torch.equal(v, pipe.build_net("clip_m2df").state_dict()[k]) for k, v in src.state_dict().items())
    cfg.heads.init = {"clip_m2df": str(tmp_path / "missing.pth")}
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        pipe.build_net("clip_m2df")
    cfg.backbone.finetune, cfg.heads.init = False, {"clip_m2df": str(ckpt)}
    with pytest.raises(ValueError, match=r"heads\.dim=0|backbone\.finetune=true"):
        pipe.build_net("clip_m2df")


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(tiny_root: Path, tmp_path: Path) -> None:
    """Two gloo ranks split each step's episodes and sum gradients: the weights match one process."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    cfg = tiny_config(tiny_root, tmp_path, ["protonet", "clip_m2df"])
    # Dropout and PPS sampling stay on: episode i is seeded from (seed, i) whichever rank runs it.
    # Weights agree to float-reduction noise (gloo sums gradients in another order; Adam's
    # normalisation magnifies that noise on near-zero gradients), hence atol 1e-4.
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(to_dict(cfg)))
    run_fewshot(cfg, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "actdistill.cli", "fewshot", "train", str(exp), "run.name=ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").glob("ddp*"))
    for method in ("protonet", "clip_m2df"):
        a = load_file(str(tmp_path / "single" / "models" / f"{method}.safetensors"))
        b = load_file(str(run / "models" / f"{method}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3, msg=lambda m, k=k: f"{k}: {m}")
    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert json.loads((run / "summary.json").read_text()) == single


def test_minilm_text_tables_go_through_a_learned_projection(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``text.encoder=minilm``: 384-d sentence embeddings (stubbed here; the real encoder is an
    optional package) feed CLIP-M²DF through its learned projection and CLIP-FSAR through its own."""
    import actdistill.models.fewshot.clip_m2df as m2df

    seen: list[str] = []

    def fake(prompts: list[str]) -> torch.Tensor:
        seen.extend(prompts)
        return torch.randn(len(prompts), 384, generator=torch.Generator().manual_seed(len(prompts)))

    monkeypatch.setattr(m2df, "encode_minilm", fake)
    cfg = tiny_config(tiny_root, tmp_path, ["clip_m2df", "clip_fsar"], episodes=4)
    cfg.text.encoder = "minilm"
    pipe = FewShotPipeline(cfg, tmp_path / "minilm")
    pipe.load_data()
    for method in ("clip_m2df", "clip_fsar"):
        net = pipe.train_method(method)
        assert pipe.evaluate(net, "3way1shot", episodes=4)["episodes"] == 4
    assert len(seen) == 64 + 24 and seen[0].startswith("a photo of ")
    head = pipe.build_net("clip_m2df").head
    assert isinstance(head.text_proj, torch.nn.Linear) and head.text_proj.in_features == 384
