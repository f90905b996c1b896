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

from actdistill.config import from_dict, to_dict
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


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("method", ["clip_m2df", "trx"])
def test_killed_at_random_steps_resumes_to_the_same_weights(tiny_root: Path, tmp_path: Path, method: str) -> None:
    """Killed twice at random optimizer steps (``stop_after_steps``) and resumed from the trainer's
    step checkpoints: the final weights equal an uninterrupted run's bit for bit (dropout and PPS
    sampling stay on), and the metrics log keeps one row per step."""
    import csv
    import random

    cfg = tiny_config(tiny_root, tmp_path, [method], episodes=22, log_every=1)  # 6 steps, the last short
    full = FewShotPipeline(cfg, tmp_path / "full")
    full.load_data()
    ref = full.train_method(method)

    first = random.Random(f"{method}-kill").randint(1, 4)
    second = random.Random(f"{method}-kill-2").randint(first + 1, 5)
    run = tmp_path / "killed"
    for stop in (first, second):
        part = FewShotPipeline(cfg, run)
        part.load_data()
        part.train_method(method, stop_after_steps=stop)
        assert (run / "checkpoints" / method).is_dir() and not part.weights_path(method).exists()
    resumed = FewShotPipeline(cfg, run)
    resumed.load_data()
    net = resumed.train_method(method)
    _same_weights(ref, net)
    rows = list(csv.DictReader((run / "logs" / method / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r["kind"] == "step"] == list(range(1, 7)), (first, second)
    # A finished method is not retrained: its final weights are loaded.
    again = FewShotPipeline(cfg, run)
    again.load_data()
    _same_weights(again.train_method(method), net)


def test_checkpoint_of_the_old_episodic_loop_resumes(tiny_root: Path, tmp_path: Path) -> None:
    """A ``checkpoints/<method>/epoch_<steps>`` folder as the few-shot loop wrote it before the shared
    trainer (model + Adam state, ``epoch`` = steps done, no loop state) resumes exactly."""
    from actdistill.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    cfg = tiny_config(tiny_root, tmp_path, ["otam"], episodes=12)
    full = FewShotPipeline(cfg, tmp_path / "full")
    full.load_data()
    ref = full.train_method("otam")
    part = FewShotPipeline(cfg, tmp_path / "new")
    part.load_data()
    net = part.train_method("otam", stop_after_steps=2)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.train.lr)
    load_checkpoint(latest_checkpoint(tmp_path / "new", "checkpoints/otam"), net, opt, restore_rng=False)
    save_checkpoint(tmp_path / "old", 2, net, opt, extra={"method": "otam"}, name="checkpoints/otam")
    old = FewShotPipeline(cfg, tmp_path / "old")
    old.load_data()
    _same_weights(ref, old.train_method("otam"))


def test_rank_episodes_split_each_step_and_refuse_uneven_accumulation() -> None:
    """Ranks together take exactly each step's episodes, the same count each on full steps; a short
    last step gives an idle rank a zero-weight episode (it must join the all-reduce); an
    accumulation the ranks cannot share evenly is refused before anything runs."""
    from actdistill.engine.fewshot import rank_episodes

    episodes, acc, world = 21, 8, 4  # 3 steps: 8, 8, 5 episodes
    per_rank = [rank_episodes(episodes, acc, world, r) for r in range(world)]
    assert all(len(ids) == 2 + 2 + 2 for ids in per_rank[:1]) and [len(ids) for ids in per_rank] == [6, 5, 5, 5]
    real = sorted(i for ids in per_rank for i, w in ids if w == 1.0)
    assert real == list(range(episodes))
    for r, ids in enumerate(per_rank):
        assert [i for i, _ in ids[:4]] == [r, r + 4, 8 + r, 12 + r]  # round robin within each step
    tail = rank_episodes(17, 8, 4, 3)  # last step: episode 16 only -> rank 3 idles with weight 0
    assert tail[-1] == (16, 0.0) and len(tail) == 5
    assert rank_episodes(8, 4, 1, 0) == [(i, 1.0) for i in range(8)]
    with pytest.raises(ValueError, match="multiple of the 3 ranks"):
        rank_episodes(16, 16, 3, 0)


def test_custom_registered_head_trains_and_evaluates(tiny_root: Path, tmp_path: Path) -> None:
    """A head registered from outside the package (here: in this test) goes through the pipeline
    exactly as the built-ins do: the registry is the only list of methods."""
    import torch.nn.functional as F

    from actdistill.models import MODELS
    from actdistill.models.fewshot import FEWSHOT_HEADS, EpisodicHead, class_means, episode_way, register_head

    @register_head("test_cosine_proto")
    class CosineProto(EpisodicHead):
        """Cosine similarity to mean-pooled class prototypes, with a learned temperature."""

        def __init__(self, dim: int, scale: float = 5.0) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(float(scale)))
            self.mix = torch.nn.Linear(dim, dim)

        def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                    query_labels: torch.Tensor | None = None, *, support_real_labels: torch.Tensor | None = None,
                    query_real_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
            way = episode_way(support_labels)
            protos = class_means(self.mix(support).mean(1), support_labels, way)
            logits = self.scale * F.normalize(self.mix(query).mean(1), dim=-1) @ F.normalize(protos, dim=-1).T
            out = {"logits": logits}
            if query_labels is not None:
                out["loss_ce"] = F.cross_entropy(logits, query_labels)
                out["loss"] = out["loss_ce"]
            return out

    try:
        cfg = tiny_config(tiny_root, tmp_path, ["test_cosine_proto", "protonet"],
                          episodes=8, log_every=1)
        cfg.heads.options = {"test_cosine_proto": {"scale": 3.0}}
        summary = run_fewshot(cfg, tmp_path / "run")
        assert set(summary) == {"test_cosine_proto", "protonet"}
        assert 0 <= summary["test_cosine_proto"]["3way1shot"]["acc"] <= 100
        assert (tmp_path / "run" / "models" / "test_cosine_proto.safetensors").is_file()
        assert "loss_ce" in (tmp_path / "run" / "logs" / "test_cosine_proto" / "metrics.csv").read_text()
        with pytest.raises(ValueError, match="unknown few-shot method 'nope'"):
            FewShotPipeline(cfg, tmp_path / "x").build_net("nope")
    finally:
        FEWSHOT_HEADS._items.pop("test_cosine_proto", None)
        MODELS._items.pop("test_cosine_proto", None)


def test_sharded_encoding_equals_one_process_and_reads_lazily(tiny_root: Path, tmp_path: Path) -> None:
    """Two shards writing their chunks under their own cache writers give bit-identical features to
    one process, and a cache above ``cache_in_memory_mb`` is read per request (nothing preloaded)
    with the same evaluation as the in-memory path."""
    from actdistill.engine.clips import Shard
    from actdistill.engine.fewshot import encode_shard, open_features, weights_hash

    cfg = tiny_config(tiny_root, tmp_path, ["trx"])
    pipe = FewShotPipeline(cfg, tmp_path / "run")
    pipe.load_data()
    enc = pipe.shared_backbone()
    frames = pipe.frames(cfg.data.test_split, False)
    uids = [s.uid for s in pipe.test_index.segments]
    key = {"kind": "test", "weights": weights_hash(enc)}
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert encode_shard(enc, frames, one, "f", key, uids, 1, Shard(0, 1)) == len(uids)
    written = [encode_shard(enc, frames, two, "f", key, uids, 1, Shard(i, 2)) for i in (1, 0)]
    assert sum(written) == len(uids) and min(written) > 0
    assert encode_shard(enc, frames, two, "f", key, uids, 1, Shard(0, 2)) == 0  # done: nothing redone
    a = open_features(one, "f", key, uids, 1, 1024.0)
    b = open_features(two, "f", key, uids, 1, 0.0)
    assert a.in_memory and not b.in_memory and not b.cache._loaded
    assert sorted(p.name for p in b.cache.dir.glob("index-*.jsonl")) == ["index-shard0of2.jsonl",
                                                                         "index-shard1of2.jsonl"]
    for u in uids:
        assert torch.equal(a.get(u), b.get(u)), u
    with pytest.raises(Exception, match="missing"):
        open_features(str(tmp_path / "none"), "f", key, uids, 1, 0.0)

    net = pipe.train_method("trx")
    in_memory = pipe.evaluate(net, "3way1shot", episodes=12)
    cfg.cache_in_memory_mb = 0.0
    lazy_pipe = FewShotPipeline(cfg, tmp_path / "run")
    lazy_pipe.load_data()
    lazy_net = lazy_pipe.train_method("trx")
    lazy = lazy_pipe.evaluate(lazy_net, "3way1shot", episodes=12)
    assert not lazy_pipe.test_features(lazy_net).in_memory
    assert np.array_equal(in_memory["episode_acc"], lazy["episode_acc"])


def test_evaluation_shards_add_up_to_one_process(tiny_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank ``r`` of ``W`` evaluates episodes ``i % W == r``; the ranks' per-episode results add up
    to exactly one process's (what the all-reduce in ``evaluate`` sums)."""
    import actdistill.engine.fewshot as fs

    cfg = tiny_config(tiny_root, tmp_path, ["otam"])
    pipe = FewShotPipeline(cfg, tmp_path / "run")
    pipe.load_data()
    net = pipe.train_method("otam")
    whole = pipe.evaluate(net, "3way1shot", episodes=13)
    parts = []
    for r in range(3):
        monkeypatch.setattr(fs, "rank", lambda r=r: r)
        monkeypatch.setattr(fs, "world_size", lambda: 3)
        parts.append(pipe.evaluate(net, "3way1shot", episodes=13)["episode_acc"])
    assert all(np.count_nonzero(p[[i for i in range(13) if i % 3 != r]]) == 0 for r, p in enumerate(parts))
    assert np.array_equal(sum(parts), whole["episode_acc"])


def test_precision_option_trains_under_autocast(tiny_root: Path, tmp_path: Path) -> None:
    """``train.precision=bf16-mixed`` runs each episode's forward under bfloat16 autocast (CPU here),
    gives finite weights that differ from float32 training; an unknown precision is refused."""
    cfg = tiny_config(tiny_root, tmp_path, ["clip_m2df"], episodes=4)
    full = FewShotPipeline(cfg, tmp_path / "fp32")
    full.load_data()
    a = full.train_method("clip_m2df")
    cfg.train.precision = "bf16-mixed"
    half = FewShotPipeline(cfg, tmp_path / "bf16")
    half.load_data()
    b = half.train_method("clip_m2df")
    assert all(torch.isfinite(v).all() for v in b.state_dict().values())
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    cfg.train.precision = "fp8"
    with pytest.raises(ValueError, match=r"train\.precision"):
        half.train_method("protonet")


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

    # Evaluate the trained run again, with more episodes: same weights, results in a new eval-<time>/
    # folder; the training run's own summary and report stay as they were.
    trained = (run / "summary.json").read_text(), (run / "report.md").read_text()
    assert main(["fewshot", "eval", str(run), "--episodes", "20", "heads.methods=[otam]"]) == 0
    (evald,) = run.glob("eval-*")
    assert f"evaluation directory: {evald}" in capsys.readouterr().out
    again = json.loads((evald / "summary.json").read_text())
    assert again["otam"]["3way1shot"]["episodes"] == 20 and list(again) == ["otam"]
    assert again["otam"]["3way1shot"]["acc"] == again["otam"]["3way1shot"]["acc"]  # not NaN
    assert (evald / "report.md").is_file() and "heads" in (evald / "config.yaml").read_text()
    assert ((run / "summary.json").read_text(), (run / "report.md").read_text()) == trained
    assert main(["fewshot", "eval", str(run), "--episodes", "20", "heads.methods=[otam]"]) == 0
    assert len(list(run.glob("eval-*"))) == 2  # a second evaluation never replaces the first
    # --overwrite rewrites the run's own results
    assert main(["fewshot", "eval", str(run), "--episodes", "14", "heads.methods=[otam]", "--overwrite"]) == 0
    assert json.loads((run / "summary.json").read_text())["otam"]["3way1shot"]["episodes"] == 14
    assert main(["fewshot", "eval", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_run_fewshot_is_deterministic(tiny_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_root, tmp_path, ["protonet"])
    a = run_fewshot(cfg, tmp_path / "a")
    b = run_fewshot(cfg, tmp_path / "b")
    assert a == b


def test_finetuned_backbone_trains_and_evaluates(tiny_root: Path, tmp_path: Path) -> None:
    """``backbone.finetune``: the backbone is the method's own, episodes are decoded by a DataLoader
    (``data.num_workers`` workers give the same weights as none), and its trained weights (a new
    hash) get their own test-feature cache."""
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

    # Episodes decoded ahead by DataLoader workers (each clip's draws keyed by its uid and episode):
    # the same weights as decoding in the main process.
    cfg.data.num_workers = 2
    workers = FewShotPipeline(cfg, tmp_path / "ft_workers")
    workers.load_data()
    _same_weights(net, workers.train_method("protonet"))


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
    """Two gloo ranks encode their shares of the feature caches, split each step's episodes and sum
    gradients, and split the test episodes: the weights match one process, the report is equal."""
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
    ddp_cache = tmp_path / "ddp_cache"  # empty: both ranks encode their shares of the videos
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "actdistill.cli", "fewshot", "train", str(exp), "run.name=ddp", f"cache_root={ddp_cache}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").glob("ddp*"))
    for split in ("train", "test"):
        logs = sorted(p.name for p in ddp_cache.glob(f"fewshot-{split}-*/index-*.jsonl"))
        assert logs == ["index-shard0of2.jsonl", "index-shard1of2.jsonl"], logs
    assert (run / "logs" / "clip_m2df" / "metrics.csv").is_file()
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
