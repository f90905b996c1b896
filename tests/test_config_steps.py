"""Every shipped config trains and evaluates one step, without its data or its weight files.

One parametrised test per shipped config (``actdistill/configs/<job>/<name>.yaml``):

- ``karmma/*``: the config is built with overrides that stub every pretrained weight or
  checkpoint path and shrink the inputs (2 frames, 32 px crops, a short audio window), keeping its
  modalities, encoders, fusion options, rows and (where known) its real class counts. The
  teacher's extractors + fusion and every row in ``rows`` are built as the pipeline builds them
  (:func:`build_teacher`, :func:`build_row`), fake inputs of the readers' per-sample shapes
  (:func:`actdistill.plan.sample_shapes`) go through one optimizer step of each stage's task
  module (the unimodal fits, the teacher fusion on its extractors' tokens, each row, with KD from
  that teacher), and each row runs one evaluation forward under a presence mask.
- ``fewshot/*``: every method's :class:`EpisodeNet` is built by :meth:`FewShotPipeline.build_net`
  (with the tiny frame CNN and bag-of-words text, so the default run stays fast) and runs one
  training episode (the config's way/shot/query, fake frames) and one evaluation episode.
  The configs' real backbone (random RN50 CLIP, CLIP text tower) is exercised by a ``slow`` test.
- ``data/*``: the config builds and validates, and its sampling + spatial transform run on a
  fake clip.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from actdistill.config import build_config
from actdistill.shipped import CONFIG_DIR, JOBS, shipped_configs

SHIPPED = shipped_configs()
KARMMA = [n for n in SHIPPED if n.startswith("karmma/")]
FEWSHOT = [n for n in SHIPPED if n.startswith("fewshot/")]
DATA = [n for n in SHIPPED if n.startswith("data/")]

FRAMES = 2
CROP = 32
BATCH = 2

#: head sizes of the real datasets (only the heads' widths: nothing is read)
HEADS = {
    "epic_kitchens_100": {"verb": 97, "noun": 300},
    "ssv2": {"class": 174},
    "synthetic": {"verb": 8, "noun": 12},
    "generic": {"label": 5},
}


@pytest.fixture(autouse=True)
def _one_thread(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Tiny tensors: intra-op threads only add overhead (and contend with a parallel CI job);
    the slow tests' full-size backbones keep them."""
    threads = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


def test_every_shipped_config_is_covered() -> None:
    assert set(SHIPPED) == set(KARMMA) | set(FEWSHOT) | set(DATA)
    assert KARMMA and FEWSHOT and DATA


# ------------------------------------------------------------------------------------------ KARMMA
def _stub_weights(data: dict[str, Any]) -> list[str]:
    """Overrides that null every pretrained/checkpoint option of the teacher's and student's encoders
    (and bring a MobileNetV2's own input resize down to the test's crop)."""
    out = []
    for side in ("teacher", "student"):
        encoders = ((data.get(side) or {}).get("model") or {}).get("encoders") or {}
        for m, opts in encoders.items():
            key = f'"{m}"' if ":" in m else m
            for opt in ("pretrained", "checkpoint"):
                if opt in (opts or {}):
                    out.append(f"{side}.model.encoders.{key}.{opt}=null")
            if (opts or {}).get("name") == "mobilenet_v2" and "input_size" in opts:
                out.append(f"{side}.model.encoders.{key}.input_size={CROP}")
    return out


def _small_inputs(data: dict[str, Any]) -> list[str]:
    out = [f"data.sampling.num_frames={FRAMES}", f"data.spatial.crop_size={CROP}", f"data.spatial.short_side={CROP}"]
    mods = data["data"]["modalities"]
    if "audio" in mods:  # a 0.1 s window of 32 mels: a few dozen spectrogram steps
        out += ["data.readers.audio.window_sec=0.1", "data.readers.audio.n_mels=32"]
    return out


def _fake(shape: tuple[int, ...], kind: str, gen: torch.Generator) -> torch.Tensor:
    x = torch.rand(BATCH, *shape, generator=gen)
    if kind == "audio":
        x = torch.randn(BATCH, *shape, generator=gen)
    if kind == "boxes":
        x[..., 5] = (x[..., 5] > 0.3).float()  # validity flag of each box slot
    if kind == "flow":
        x = x * 2 - 1
    return x


def _step(task: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    params = [p for p in task.parameters() if p.requires_grad]
    assert params, f"{type(task).__name__}: nothing to train"
    opt = torch.optim.AdamW(params, lr=1e-3)
    task.train()
    out = task(batch)
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss), out
    opt.zero_grad()
    loss.backward()
    assert any(p.grad is not None for p in params)
    opt.step()
    return out


@pytest.mark.parametrize("name", KARMMA)
def test_karmma_config_builds_trains_and_evaluates_one_step(name: str) -> None:
    from actdistill.data.modalities.base import modality_kind, selects
    from actdistill.engine.karmma import KarmmaConfig, _spec_opts, build_row, build_teacher, validate
    from actdistill.engine.tasks import RowTask, TeacherTask, UnimodalClassifier, UnimodalTask, row_spec
    from actdistill.models.base import encode_present
    from actdistill.models.encoders import build_encoder
    from actdistill.plan import sample_shapes

    job = JOBS["karmma"]
    data = _yaml(name)
    overrides = _stub_weights(data) + _small_inputs(data)
    cfg = build_config(KarmmaConfig, name, overrides, defaults=list(job.defaults))
    validate(cfg)
    mods = tuple(cfg.data.modalities)
    assert mods == tuple(data["data"]["modalities"])
    heads = HEADS[cfg.data.dataset]
    shapes = sample_shapes(cfg.data)
    assert set(shapes) == set(mods)
    gen = torch.Generator().manual_seed(0)
    inputs = {m: _fake(shapes[m], modality_kind(m), gen) for m in mods}
    labels = {t: torch.randint(0, n, (BATCH,), generator=gen) for t, n in heads.items()}
    present = torch.ones(BATCH, len(mods), dtype=torch.bool)
    mask = present.clone()
    if len(mods) > 1:
        mask[1, 0] = False  # the second sample misses its first modality (modality dropout)
    batch = {"inputs": inputs, "present": present, "mask": mask, "labels": labels, "index": torch.arange(BATCH)}

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = build_teacher(cfg, mods, heads, FRAMES, shapes)

    # stage 1: the teacher's unimodal fits (extractors without pretrained weights)
    for m in mods:
        _, opts = _spec_opts(cfg.teacher.model, m, shapes)
        if selects(cfg.teacher.fit_unimodal, m) and not opts.get("pretrained"):
            _step(UnimodalTask(UnimodalClassifier(teacher.encoders[m], heads), m), batch)
    # stage 1b: student.init_unimodal fits of the student's encoders
    for m in mods:
        if selects(cfg.student.init_unimodal, m):
            name_, opts = _spec_opts(cfg.student.model, m, shapes, "student.model.encoders")
            _step(UnimodalTask(UnimodalClassifier(build_encoder(name_, modality=m, **opts), heads), m), batch)

    # stage 2: the teacher's fusion on its frozen extractors' tokens
    for e in teacher.encoders.values():
        e.freeze()
    with torch.no_grad():
        tokens, _ = encode_present(dict(teacher.encoders), mods, inputs, present)
    counts = {m: int(e.num_tokens(FRAMES)) for m, e in teacher.encoders.items()}
    assert {m: t.shape[1] for m, t in tokens.items()} == counts
    _step(TeacherTask(teacher.fusion, counts, cfg.teacher.single_passes),
          {**batch, "inputs": tokens})
    teacher.eval()
    with torch.no_grad():
        t_logits = teacher.fusion(tokens, present, counts)["logits"]

    # stage 3: every row, then one evaluation forward under a presence mask
    s = cfg.student
    assert cfg.rows
    for kind in cfg.rows:
        spec = row_spec(kind)
        torch.manual_seed(0)
        model = build_row(cfg, mods, heads, kind, shapes)
        task = RowTask(model, spec, heads, mods, teacher=teacher if spec.distil else None, token_counts=counts,
                       alpha=s.alpha, temperature=s.temperature, unimodal_aux=s.unimodal_aux,
                       single_passes=s.single_passes, single_pass_target=s.single_pass_target)
        row_batch = dict(batch)
        if spec.distil:
            row_batch.update({"teacher_logits": t_logits} if s.teacher_input == "all" else {"teacher_tokens": tokens})
        if not spec.dropout:
            row_batch["mask"] = present
        out = _step(task, row_batch)
        assert ("loss_kd" in out) == spec.distil, kind
        model.eval()
        with torch.no_grad():
            logits = model(inputs, mask)["logits"]
        assert {t: tuple(v.shape) for t, v in logits.items()} == {t: (BATCH, n) for t, n in heads.items()}, kind
        assert all(torch.isfinite(v).all() for v in logits.values()), kind


# ---------------------------------------------------------------------------------------- few-shot
def _fewshot_cfg(name: str, extra: list[str]) -> Any:
    from actdistill.engine.fewshot import FewShotConfig

    return build_config(FewShotConfig, name, extra, defaults=list(JOBS["fewshot"].defaults))


def _fake_pipeline(cfg: Any, tmp_path: Path, n_train: int, n_test: int) -> Any:
    from actdistill.engine.fewshot import FewShotPipeline

    pipe = FewShotPipeline(cfg, tmp_path / "run")
    pipe.train_names = [f"train class {i}" for i in range(n_train)]
    pipe.test_names = [f"test class {i}" for i in range(n_test)]
    return pipe


def _episode(way: int, shot: int, query: int, n_classes: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    real = torch.randperm(n_classes, generator=gen)[:way]
    s = torch.arange(way).repeat_interleave(shot)
    q = torch.arange(way).repeat_interleave(query)
    return {"support_labels": s, "query_labels": q, "support_real_labels": real[s], "query_real_labels": real[q]}


def _fewshot_steps(cfg: Any, tmp_path: Path, frames: int, crop: int) -> None:
    from actdistill.engine.fewshot import parse_setting, stack_stages

    n_train, n_test = 8, 6
    pipe = _fake_pipeline(cfg, tmp_path, n_train, n_test)
    gen = torch.Generator().manual_seed(0)
    t = cfg.train
    assert cfg.heads.methods
    for method in cfg.heads.methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random CLIP weights warn
            net = pipe.build_net(method)
        # one training episode: one optimizer step over it
        labels = _episode(t.way, t.shot, t.query, n_train, gen)
        support = torch.rand(t.way * t.shot, frames, 3, crop, crop, generator=gen)
        query = torch.rand(t.way * t.query, frames, 3, crop, crop, generator=gen)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=t.lr)
        net.train()
        out = net(support, query, labels)
        loss = out["loss"] if net.loss_scaled else out["loss"] / t.accumulate
        assert loss.ndim == 0 and torch.isfinite(loss), method
        loss.backward()
        opt.step()
        # one evaluation episode per setting, as FewShotPipeline.evaluate runs it (per-video stages)
        net.eval()
        with torch.no_grad():
            for setting in cfg.eval.settings:
                way, shot = parse_setting(setting)
                labels = _episode(way, shot, cfg.eval.query, n_test, gen)
                vids = torch.rand(way * (shot + cfg.eval.query), 1, frames, 3, crop, crop, generator=gen)
                stages = [{k: v[0] for k, v in net.video_stage(v).items()} for v in vids]
                s, q = stack_stages(stages[:way * shot]), stack_stages(stages[way * shot:])
                logits = net.episode_logits(s, q, labels)
                assert logits.shape == (way * cfg.eval.query, way), (method, setting)
                assert torch.isfinite(logits).all(), (method, setting)


@pytest.mark.parametrize("name", FEWSHOT)
def test_fewshot_config_trains_and_evaluates_one_episode(name: str, tmp_path: Path) -> None:
    """Each method of the config with the tiny frame CNN (the config's heads, options, way/shot/query
    and eval settings; text by bag of words, as the CLIP text tower needs the CLIP backbone)."""
    cfg = _fewshot_cfg(name, ["backbone.name=tiny", "backbone.pretrained=null", "backbone.tiny_dim=32",
                              "text.encoder=bow"])
    assert cfg.heads.methods == _yaml(name)["heads"]["methods"]
    _fewshot_steps(cfg, tmp_path, cfg.data.sampling.num_frames, CROP)  # CLIP-M2DF's top-k needs the frames


@pytest.mark.slow
@pytest.mark.parametrize("name", FEWSHOT)
def test_fewshot_config_with_its_own_backbone(name: str, tmp_path: Path) -> None:
    """The config's own backbone and text encoder (pretrained stubbed: random weights) at its own
    input size (CLIP's attention pool fixes it), in the smallest episode: 2-way 1-shot, 1 query, 4
    frames (the fewest CLIP-M2DF's top-4 frame selection takes)."""
    data = _yaml(name)
    crop = int(data["data"]["spatial"]["crop_size"])
    overrides = ["backbone.pretrained=null", "train.way=2", "train.shot=1", "train.query=1",
                 "eval.settings=[2way1shot]"]
    if data["backbone"]["name"] == "mobilenet_v2":
        overrides.append(f"backbone.input_size={CROP}")
    cfg = _fewshot_cfg(name, overrides)
    _fewshot_steps(cfg, tmp_path, 4, crop)


# -------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("name", DATA)
def test_data_config_builds_and_transforms_a_fake_clip(name: str) -> None:
    from actdistill.data.builder import build_readers
    from actdistill.plan import sample_shapes

    job = JOBS["data"]
    cfg = build_config(job.cls, name, defaults=list(job.defaults))
    data = _yaml(name)
    assert list(cfg.data.modalities) == data["data"]["modalities"]
    assert set(build_readers(cfg.data)) == set(cfg.data.modalities)
    shapes = sample_shapes(cfg.data)
    assert all(s[0] == cfg.data.sampling.num_frames for s in shapes.values())
    _sample_and_transform(cfg.data)


def _sample_and_transform(d: Any) -> None:
    """The config's temporal sampler (as :func:`build_dataset` builds it) picks frames of a 40-frame
    segment, and its spatial transform brings a fake 48x64 clip of the spatial modalities to the
    shapes :func:`sample_shapes` plans."""
    import numpy as np

    from actdistill.data.modalities.base import modality_kind
    from actdistill.data.sampling import TemporalSampler
    from actdistill.data.transforms import SpatialTransform
    from actdistill.plan import sample_shapes

    s, sp = d.sampling, d.spatial
    sampler = TemporalSampler(s.mode, s.num_frames, s.stride, s.test_views, s.max_pad)
    shapes = sample_shapes(d)
    rng = np.random.default_rng(0)
    for train in (True, False):
        idx = sampler(1, 40, train, rng)
        assert idx.shape == (1 if train else s.test_views, s.num_frames)
        assert idx.min() >= 1 and idx.max() <= 40
        transform = SpatialTransform(sp.short_side, sp.crop_size, train, sp.flip, sp.scale_range, sp.normalize)
        params = transform.sample(rng)
        if train:  # the test view is the deterministic one
            params = type(params)(1.0, params.rel_y, params.rel_x, params.flip)
        for m in d.modalities:
            want = shapes[m]
            if modality_kind(m) not in ("rgb", "flow", "depth"):
                continue
            x = torch.rand(s.num_frames, want[1], 300, 400)
            y = transform.apply(modality_kind(m), x, params)
            assert tuple(y.shape) == tuple(want), m
