"""Know the cost before you start: ``actdistill karmma plan`` and ``actdistill fewshot plan``.

A KARMMA or few-shot run on a real dataset decodes terabytes of clips, caches tokens, trains
several models and evaluates thousands of masks or episodes. This module estimates, from the
config and the annotation files alone (no video decoding, no training), what such a run costs:

- samples (and few-shot classes) per split, from the dataset adapter's own index
  (:func:`actdistill.data.builder.load_index`); adapters that can (EPIC-KITCHENS-100, SSv2,
  synthetic, few-shot splits) are asked with ``check_media=False`` so nothing on disk but the annotations
  is needed, and counts are the annotation rows the adapter accepts;
- bytes of every on-disk cache: per-sample tensor shapes derived from the config exactly as the
  readers and the spatial transform produce them, times float16 (clips, tokens) or float32
  (few-shot features), times samples and views;
- FLOPs per stage, counted by ``torch.utils.flop_counter`` on one sample
  (:func:`actdistill.evaluation.efficiency.count_flops`): large encoders on the ``meta`` device
  (shapes only, instant), fusion blocks and heads on the CPU at batch 1;
- peak memory per process as an estimate: weights, gradients and AdamW state of what trains,
  frozen weights held alongside, the tensors one sample saves for backward times the batch size,
  the batch itself, and the data loader's prefetch (batch bytes x workers x prefetch factor 2).

Everything is an estimate of what the code does, with its assumptions stated in the output.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actdistill.data.builder import DataConfig, build_readers, load_index
from actdistill.data.modalities.base import modality_kind, selects
from actdistill.data.records import DatasetIndex
from actdistill.evaluation.efficiency import count_flops, count_parameters

F16, F32 = 2, 4
#: fp32 weight + gradient + the optimizer's two moments (AdamW in KARMMA, Adam in few-shot)
TRAIN_BYTES_PER_PARAM = 16
PREFETCH_FACTOR = 2  # the DataLoader default, and what engine.clips.make_loader uses
IMU_CHANNELS = 6  # IMU channels when no CSV header can be read: accelerometer + gyroscope assumed
ASPECT = 16 / 9  # width/height assumed when spatial.crop_size is 0 (uncropped frames)


# ------------------------------------------------------------------------------------------------ data
def _load(data: DataConfig, split: str, check_media: bool) -> tuple[DatasetIndex, bool]:
    """The adapter's index of ``split``; ``(index, media_checked)``.

    Without ``check_media`` the adapter is asked to read annotations alone when it can (its loader
    takes ``check_media``); the synthetic dataset is never generated here.
    """
    from actdistill.data.datasets import get_dataset

    spec = get_dataset(data.dataset)
    module, func = spec.loader.split(":")
    fn = getattr(__import__(module, fromlist=[func]), func)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = dict(data.options)
    if data.dataset == "synthetic":
        options["generate"] = False
    annotations_only = not check_media and ("check_media" in params or takes_any)
    if annotations_only:
        options["check_media"] = False
    return load_index(dataclasses.replace(data, options=options), split), not annotations_only


def _frame_hw(data: DataConfig) -> tuple[int, int]:
    """(H, W) of a spatial modality after the transform: the square crop, never larger than the
    resized short side (``SpatialTransform._geometry``); uncropped frames assume :data:`ASPECT`."""
    sp = data.spatial
    if sp.crop_size > 0:
        side = min(sp.crop_size, sp.short_side)
        return side, side
    return sp.short_side, round(sp.short_side * ASPECT)


def sample_shapes(data: DataConfig, index: DatasetIndex | None = None) -> dict[str, tuple[int, ...]]:
    """Per-sample, per-view tensor shape of each modality as the readers + transform produce it.

    Derived from the config and the readers' own options (flow stack, audio window and hop,
    boxes slots, IMU samples), so a change of reader defaults changes the plan too. A named
    modality (``imu:acc``) has its kind's rule. IMU channels: the reader's ``channels`` option, else
    the header of the first CSV in ``index`` (one line read), else :data:`IMU_CHANNELS`, so that
    the planned encoders get the ``in_channels`` the pipeline will take from the data.
    """
    readers = build_readers(data)
    t = data.sampling.num_frames
    h, w = _frame_hw(data)
    out: dict[str, tuple[int, ...]] = {}
    for m, r in readers.items():
        kind = modality_kind(m)
        if kind == "rgb":
            out[m] = (t, 3, h, w)
        elif kind == "flow":
            out[m] = (t, 2 * int(getattr(r, "stack", 1)), h, w)
        elif kind == "depth":
            out[m] = (t, 1, h, w)
        elif kind == "audio":
            out[m] = (t, 1, int(r.n_mels), int(r.n_steps))  # type: ignore[attr-defined]
        elif kind == "boxes":
            out[m] = (t, int(r.max_objects), 6)  # type: ignore[attr-defined]
        elif kind == "imu":
            out[m] = (t, _imu_channels(m, r, index), int(r.samples))  # type: ignore[attr-defined]
        else:
            raise ValueError(f"plan: no shape rule for modality {m!r}")
    return out


def _imu_channels(m: str, reader: Any, index: DatasetIndex | None) -> int:
    """IMU channels of modality ``m`` without decoding: see :func:`sample_shapes`."""
    chosen = getattr(reader, "channels", None)
    if chosen:
        return len(chosen)
    src = next((s.sources[m] for s in (index.segments if index else ()) if m in s.sources), None)
    if src is None:
        return IMU_CHANNELS
    try:
        with open(src.path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return IMU_CHANNELS  # the run reports the file; the plan only needs a width
    return max(len(header) - 1, 1) if header else IMU_CHANNELS


def numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _modality_counts(index: DatasetIndex, modalities: Sequence[str]) -> dict[str, int]:
    return {m: sum(1 for s in index.segments if m in s.sources) for m in modalities}


# ----------------------------------------------------------------------------------------- measuring
def saved_bytes(fn: Callable[[], Any], params: Sequence[nn.Parameter]) -> int:
    """Bytes of the tensors ``fn``'s forward saves for backward (weights excluded): the activation
    memory one training step holds until its backward. Works on ``meta`` tensors."""
    skip = {id(p) for p in params}
    kept: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(t) not in skip and id(base) not in skip:
            kept[id(base)] = (base, base.untyped_storage().nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(b for _, b in kept.values())


def measure(module: nn.Module, args: Sequence[Any], train: bool) -> dict[str, int]:
    """FLOPs of one forward of ``module(*args)`` and, when ``train``, the bytes saved for backward."""
    out = {"flops": count_flops(lambda: module(*args)), "saved_bytes": 0}
    if train:
        out["saved_bytes"] = saved_bytes(lambda: module(*args), [p for p in module.parameters() if p.requires_grad])
    return out


def measure_on_meta(module: nn.Module, shape: Sequence[int], train: bool) -> dict[str, int]:
    """:func:`measure` of a copy of ``module`` on the ``meta`` device with a batch-1 input of
    ``shape`` (shapes only: a Swin3D-B clip costs milliseconds); the CPU at batch 1 if some op has
    no meta kernel (a data-dependent one: the boxes encoder's validity mask indexing).

    A module that only exists on ``meta`` (the teacher's extractors are built there) is given
    zero-filled CPU storage for that fallback. Why zeros: ``to_empty`` leaves memory uninitialised,
    and FLOPs and saved-tensor shapes do not depend on the weights' values, while garbage could."""
    try:
        m = copy.deepcopy(module).to("meta")
        return measure(m, (torch.zeros((1, *shape), device="meta"),), train)
    except (RuntimeError, NotImplementedError):
        cpu = module
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            cpu = copy.deepcopy(module).to_empty(device="cpu")
            with torch.no_grad():
                for t in (*cpu.parameters(), *cpu.buffers()):
                    t.zero_()
        return measure(cpu, (torch.zeros((1, *shape)),), train)


class _TokenStub(nn.Module):
    """Stands in for an encoder: returns zero tokens of the encoder's shape, so the rest of a model
    (fusion, heads, training extras) can be counted on the CPU without running the encoder."""

    def __init__(self, num_tokens: int, out_dim: int) -> None:
        super().__init__()
        self.n, self.out_dim = num_tokens, out_dim

    def num_tokens(self, num_frames: int) -> int:
        return self.n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.n, self.out_dim, device=x.device)


def measure_model(model: nn.Module, wrapper: nn.Module, shapes: Mapping[str, Sequence[int]], num_frames: int,
                  train: bool) -> dict[str, Any]:
    """Per-sample FLOPs / saved bytes of ``wrapper(inputs, present)`` with every modality present,
    split into each encoder of ``model`` (counted on ``meta``) and the rest (fusion, heads,
    extras: counted on the CPU with the encoders replaced by :class:`_TokenStub`)."""
    encoders: nn.ModuleDict = model.encoders  # type: ignore[assignment]
    mods = tuple(encoders)
    enc = {m: measure_on_meta(e, shapes[m], train and any(p.requires_grad for p in e.parameters()))
           for m, e in encoders.items()}
    originals = dict(encoders.items())
    try:
        for m, e in originals.items():
            encoders[m] = _TokenStub(int(e.num_tokens(num_frames)), int(e.out_dim))
        inputs = {m: torch.zeros(1, num_frames, 1) for m in mods}
        head = measure(wrapper, (inputs, torch.ones(1, len(mods), dtype=torch.bool)), train)
    finally:
        for m, e in originals.items():
            encoders[m] = e
    return {"encoders": enc, "rest": head,
            "flops": sum(v["flops"] for v in enc.values()) + head["flops"],
            "saved_bytes": sum(v["saved_bytes"] for v in enc.values()) + head["saved_bytes"]}


def _plain_options(opts: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Encoder options without weight files: architecture only (nothing is read or downloaded)."""
    out = {k: v for k, v in opts.items() if k != "checkpoint"}
    if "pretrained" in out or name == "mobilenet_v2":
        out["pretrained"] = None
    return out


def _architecture_only(spec: Any) -> Any:
    """A ``ModelSpec`` copy whose encoders read no weight file (see :func:`_plain_options`)."""
    spec = copy.deepcopy(spec)
    spec.encoders = {m: _plain_options(o, str(o.get("name", "compact"))) for m, o in spec.encoders.items()}
    return spec


# ------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def stage_errors(stage: str) -> Iterator[None]:
    """Name the stage in a model's shape error. Why: a plan is where a config that cannot run (a
    flow stack the student encoder was not built for) should fail, in one line, before a real run
    spends hours decoding and extracting only to crash at that stage."""
    try:
        yield
    except (ValueError, RuntimeError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ValueError(f"plan: {stage} cannot run with this config: {msg}") from err


def stage_row(stage: str, gflops: float, samples: int, passes: int, epochs: int, note: str = "") -> dict[str, Any]:
    """One FLOPs row: forward GFLOPs per sample x samples per epoch x passes (3 = forward +
    backward, 1 = forward only) = FLOPs per epoch, x epochs = total."""
    per_epoch = gflops * 1e9 * samples * passes
    return {"stage": stage, "gflops_per_sample": gflops, "samples_per_epoch": samples, "passes": passes,
            "epochs": epochs, "flops_per_epoch": per_epoch, "flops_total": per_epoch * epochs, "note": note}


def memory_row(stage: str, trainable: int, frozen: int, saved_per_sample: int, batch: int, batch_bytes: int,
               workers: int) -> dict[str, Any]:
    """Estimated per-process peak for a training stage (device) and the loader's prefetch (host)."""
    weights = trainable * TRAIN_BYTES_PER_PARAM + frozen * F32
    act = saved_per_sample * batch
    return {"stage": stage, "batch_size": batch, "trainable_params": trainable, "frozen_params": frozen,
            "weights_grads_optimizer_bytes": trainable * TRAIN_BYTES_PER_PARAM, "frozen_bytes": frozen * F32,
            "activation_bytes": act, "batch_bytes": batch_bytes, "device_peak_bytes": weights + act + batch_bytes,
            "prefetch_bytes": batch_bytes * workers * PREFETCH_FACTOR, "workers": workers}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"


def human_flops(n: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def _wall_hint(plan: dict[str, Any], tflops: float | None) -> None:
    total = sum(r["flops_total"] for r in plan["flops"])
    plan["flops_total"] = total
    if tflops:
        plan["wall_clock_hint"] = {"assumed_tflops": tflops, "seconds": total / (tflops * 1e12),
                                   "note": "total FLOPs / an assumed sustained device throughput; ignores "
                                           "decoding, I/O and evaluation overheads"}


# ------------------------------------------------------------------------------------------- KARMMA
def plan_karmma(cfg: Any, check_media: bool = False, tflops: float | None = None) -> dict[str, Any]:
    """The cost plan of ``actdistill karmma train`` with ``cfg`` (a ``KarmmaConfig``)."""
    from actdistill.engine.karmma import build_row, build_teacher
    from actdistill.engine.tasks import FusionWithSingles, TrainingExtras, UnimodalClassifier, row_spec
    from actdistill.evaluation.protocols import modality_subsets
    from actdistill.models.encoders.base import build_encoder, encoder_entry, with_data_channels
    from actdistill.models.fusion import KARMMAFusion, MultimodalRecognizer

    data: DataConfig = cfg.data
    mods = tuple(data.modalities)
    train_index, checked = _load(data, data.train_split, check_media)
    test_index, _ = _load(data, data.test_split, check_media)
    heads = {t: len(v) for t, v in train_index.classes.items() if v and (t != "action" or cfg.action_head)}
    if not heads:
        raise ValueError("the dataset defines no class list to train on")
    n_train, n_test = len(train_index.segments), len(test_index.segments)
    tv, sv = cfg.cache.train_views, data.sampling.test_views
    t = data.sampling.num_frames
    shapes = sample_shapes(data, train_index)
    in_train, in_test = _modality_counts(train_index, mods), _modality_counts(test_index, mods)

    arch = copy.deepcopy(cfg)
    arch.teacher.model = _architecture_only(cfg.teacher.model)
    arch.student.model = _architecture_only(cfg.student.model)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = build_teacher(arch, mods, heads, t, shapes)
    extractors = teacher.encoders
    tokens = {m: (int(e.num_tokens(t)), int(e.out_dim)) for m, e in extractors.items()}
    fusion = KARMMAFusion(mods, {m: d for m, (_, d) in tokens.items()}, heads,
                          num_tokens={m: n for m, (n, _) in tokens.items()}, **cfg.teacher.model.fusion)

    plan: dict[str, Any] = {
        "kind": "karmma", "dataset": data.dataset, "modalities": list(mods),
        "index": "annotations and media on disk" if checked else "annotations only (media not checked)",
        "splits": {"train": {"split": data.train_split, "samples": n_train},
                   "test": {"split": data.test_split, "samples": n_test}},
        "classes": heads, "problems": {data.train_split: len(train_index.problems),
                                       data.test_split: len(test_index.problems)},
        "sample_shapes": {m: list(s) for m, s in shapes.items()},
        "tokens": {m: {"tokens": n, "dim": d} for m, (n, d) in tokens.items()},
        "views": {"train": tv, "test": sv},
    }

    # ---------------------------------------------------------------- caches
    clip_entry = {m: numel(s) * F16 for m, s in shapes.items()}
    token_entry = {m: n * d * F16 for m, (n, d) in tokens.items()}
    caches: list[dict[str, Any]] = []

    def cache_row(name: str, n: int, views: int, per: dict[str, int], have: dict[str, int], what: str) -> None:
        caches.append({"cache": name, "entries": n * views, "bytes": views * sum(have[m] * per[m] for m in mods),
                       "per_entry_bytes": sum(per.values()), "what": what})

    for split, n, views, have in ((data.train_split, n_train, tv, in_train), (data.test_split, n_test, sv, in_test)):
        cache_row(f"clips-{split}", n, views, clip_entry, have, "decoded clips, float16")
        # the pipeline decodes online instead of writing this cache (engine.clips.load_clips)
        c, mode = caches[-1], cfg.cache.clips
        if mode == "online" or (mode == "auto" and c["bytes"] > cfg.cache.clips_max_gb * 2**30):
            c["what"] = f"not written: decoded online (cache.clips={mode}; would be {human_bytes(c['bytes'])})"
            c["bytes"] = 0
    for split, n, views, have in ((data.train_split, n_train, tv, in_train), (data.test_split, n_test, sv, in_test)):
        cache_row(f"tokens-{split}", n, views, token_entry, have, "frozen teacher tokens, float16")
    kd_rows = [r for r in cfg.rows if row_spec(r).distil]
    if kd_rows and cfg.student.teacher_input == "all":
        per = sum(heads.values()) * F32
        caches.append({"cache": "teacher-logits", "entries": n_train * tv, "bytes": n_train * tv * per,
                       "per_entry_bytes": per, "what": "teacher logits on all modalities, float32"})

    # ---------------------------------------------------------------- unimodal fits
    flops: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    workers = data.num_workers
    uopt = cfg.teacher.unimodal_optim

    def fit_rows(spec: Any, wanted: Sequence[str], who: str, done: dict[str, Any]) -> None:
        for m in mods:
            if not selects(wanted, m):  # a kind (imu) covers its named modalities (imu:acc)
                continue
            opts = dict(encoder_entry(spec.encoders, m) or {})
            name = str(opts.pop("name", "compact"))
            if who == "teacher" and opts.get("pretrained"):
                continue  # pretrained extractors are used as they are (KarmmaPipeline.build_extractors)
            if name in ("compact", "frames", "flow", "spectrogram", "boxes", "imu"):
                opts.setdefault("size", spec.size)
            opts = with_data_channels(name, m, opts, shapes[m], f"{who}.model.encoders")
            key = (m, name, repr(sorted((k, v) for k, v in opts.items() if k != "size")))
            enc = build_encoder(name, modality=m, **_plain_options(opts, name))
            shared = key in done
            done.setdefault(key, who)
            model = UnimodalClassifier(enc, heads)
            with stage_errors(f"{who} unimodal fit {m}"):
                r = measure_on_meta(model, shapes[m], True)
            n = in_train[m]
            note = f"shares the {done[key]} fit (same encoder config): no cost" if shared else ""
            flops.append(stage_row(f"{who} unimodal fit {m}", 0.0 if shared else r["flops"] / 1e9, n, 3,
                                   uopt.epochs, note))
            caches.append({"cache": f"unimodal/{m} ({who})", "entries": 0 if shared else 1,
                           "bytes": 0 if shared else count_parameters(enc) * F32, "per_entry_bytes":
                           count_parameters(enc) * F32, "what": "fitted encoder weights, float32"})
            if not shared:
                memory.append(memory_row(f"{who} unimodal fit {m}", count_parameters(model), 0, r["saved_bytes"],
                                         uopt.batch_size, uopt.batch_size * numel(shapes[m]) * F32, workers))

    done: dict[Any, str] = {}
    fit_rows(cfg.teacher.model, cfg.teacher.fit_unimodal, "teacher", done)
    fit_rows(cfg.student.model, cfg.student.init_unimodal, "student", done)

    # ---------------------------------------------------------------- teacher tokens
    with stage_errors("teacher tokens"):
        ext = {m: measure_on_meta(e, shapes[m], True) for m, e in extractors.items()}
    ext_flops = sum(v["flops"] for v in ext.values())
    ext_params = sum(count_parameters(e) for e in extractors.values())
    flops.append(stage_row("teacher tokens (train views)", ext_flops / 1e9, n_train * tv, 1, 1,
                           "frozen extractors, once per sample and view"))
    flops.append(stage_row("teacher tokens (test views)", ext_flops / 1e9, n_test * sv, 1, 1, ""))
    clip_bytes32 = sum(numel(s) for s in shapes.values()) * F32
    # a no-grad forward holds at most what a training forward saves: an upper bound
    chunk = cfg.cache.chunk  # decoding and extraction batches
    memory.append(memory_row("teacher tokens (activations: upper bound)", 0, ext_params,
                             sum(v["saved_bytes"] for v in ext.values()), chunk, chunk * clip_bytes32, workers))

    # ---------------------------------------------------------------- teacher fusion
    topt = cfg.teacher.optim
    tfusion: nn.Module = FusionWithSingles(fusion) if cfg.teacher.single_passes > 0 else fusion
    tok_in = {m: torch.zeros(1, n, d) for m, (n, d) in tokens.items()}
    counts = {m: n for m, (n, _) in tokens.items()}
    present = torch.ones(1, len(mods), dtype=torch.bool)
    with stage_errors("teacher fusion"):
        tf = measure(tfusion, (tok_in, present, counts), True)
    tf_eval = count_flops(lambda: fusion(tok_in, present, counts))
    flops.append(stage_row("teacher fusion", tf["flops"] / 1e9, n_train, 3, topt.epochs,
                           "on cached tokens; one training view per epoch"))
    token_bytes32 = sum(n * d for n, d in tokens.values()) * F32
    memory.append(memory_row("teacher fusion", count_parameters(fusion), ext_params, tf["saved_bytes"],
                             topt.batch_size, topt.batch_size * token_bytes32, workers))

    # ---------------------------------------------------------------- rows
    masks = len(modality_subsets(mods)) + len(cfg.eval.drop_rates) * cfg.eval.drop_repeats
    teacher_params = ext_params + count_parameters(fusion)
    eval_rows = [stage_row("eval teacher", tf_eval * masks / 1e9, n_test * sv, 1, 1,
                           f"fusion on cached tokens x {masks} masks (subsets + drop draws)")]
    scfg, sopt = cfg.student, cfg.student.optim
    measured: dict[str, dict[str, Any]] = {}
    for kind in cfg.rows:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_row(arch, mods, heads, kind, shapes)
        fused = isinstance(model, MultimodalRecognizer)
        aux_w = scfg.unimodal_aux if fused else 0.0
        single_w = scfg.single_passes if fused and row_spec(kind).single_passes else 0.0
        wrapper = (TrainingExtras(model, heads, aux=aux_w > 0, singles=single_w > 0)
                   if aux_w > 0 or single_w > 0 else model)
        with stage_errors(f"row {kind}"):
            r = measure_model(model, wrapper, shapes, t, True)
        kd = kind in kd_rows
        per_sample = r["flops"] * 3 + (tf_eval if kd and scfg.teacher_input == "dropped" else 0)
        note = "all modalities present (dropout skips dropped encoders: an upper bound)"
        if kd:
            note += "; + teacher fusion forward per sample" if scfg.teacher_input == "dropped" else ""
        row = stage_row(f"row {kind}", r["flops"] / 1e9, n_train, 3, sopt.epochs, note)
        row["flops_per_epoch"] = per_sample * n_train
        row["flops_total"] = row["flops_per_epoch"] * sopt.epochs
        flops.append(row)
        if kd and scfg.teacher_input == "all" and "teacher logits" not in measured:
            measured["teacher logits"] = {}
            flops.append(stage_row("teacher logits (all modalities)", tf_eval / 1e9, n_train * tv, 1, 1, ""))
        memory.append(memory_row(f"row {kind}", count_parameters(wrapper), teacher_params, r["saved_bytes"],
                                 sopt.batch_size, sopt.batch_size * (clip_bytes32 + (token_bytes32 if kd else 0)),
                                 workers))
        model.eval()
        bare = measure_model(model, model, shapes, t, False)
        enc_flops = sum(v["flops"] for v in bare["encoders"].values())
        if fused:
            per = enc_flops + bare["rest"]["flops"] * masks
            how = f"encoders once per test view + fusion x {masks} masks"
        else:
            per = bare["flops"] * masks
            how = f"whole model x {masks} masks"
        eval_rows.append(stage_row(f"eval {kind}", per / 1e9, n_test * sv, 1, 1, how))
    flops.extend(eval_rows)

    plan["caches"] = caches
    plan["cache_bytes_total"] = sum(c["bytes"] for c in caches)
    in_mem = cfg.cache.in_memory_mb
    plan["host_memory"] = {"in_memory_mb": in_mem, "held_in_memory": [
        c["cache"] for c in caches
        if c["cache"].startswith(("clips", "tokens", "teacher-logits")) and 0 < c["bytes"] <= in_mem * 2**20]}
    plan["flops"] = flops
    plan["memory"] = memory
    plan["peak_device_bytes"] = max(m["device_peak_bytes"] for m in memory)
    _wall_hint(plan, tflops)
    return plan


# ----------------------------------------------------------------------------------------- few-shot
def plan_fewshot(cfg: Any, check_media: bool = False, tflops: float | None = None) -> dict[str, Any]:
    """The cost plan of ``actdistill fewshot train`` with ``cfg`` (a ``FewShotConfig``)."""
    from actdistill.engine.fewshot import EpisodeNet, bow_embedding, build_frame_backbone, parse_setting

    data: DataConfig = cfg.data
    splits = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    indexes: dict[str, DatasetIndex] = {}
    checked = True
    for role, split in splits.items():
        indexes[role], checked = _load(data, split, check_media)
    counts = {role: {"split": s, "classes": len(indexes[role].classes.get("class", [])),
                     "videos": len(indexes[role].segments)} for role, s in splits.items()}
    n_train, n_test = counts["train"]["videos"], counts["test"]["videos"]
    t = data.sampling.num_frames
    h, w = _frame_hw(data)
    clip_shape = (t, 3, h, w)

    bcfg = copy.deepcopy(cfg.backbone)
    bcfg.pretrained = None  # architecture only: no checkpoint is read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_frame_backbone(bcfg)
    feat_dim = int(backbone.out_dim)
    width = cfg.heads.dim or feat_dim
    finetune = bool(cfg.backbone.finetune)
    bb = measure_on_meta(backbone, clip_shape, finetune)
    bb_params = count_parameters(backbone)
    tcfg, ecfg = cfg.train, cfg.eval
    n_sup, n_q = tcfg.way * tcfg.shot, tcfg.way * tcfg.query
    clips_per_ep = n_sup + n_q

    def labels(way: int, shot: int, query: int) -> dict[str, torch.Tensor]:
        s = torch.arange(way).repeat_interleave(shot)
        q = torch.arange(way).repeat_interleave(query)
        return {"support_labels": s, "support_real_labels": s, "query_labels": q, "query_real_labels": q}

    names_train = [f"class {i}" for i in range(max(1, counts["train"]["classes"]))]
    names_test = [f"class {i}" for i in range(max(1, counts["test"]["classes"]))]
    flops: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    caches: list[dict[str, Any]] = []
    feat_entry = t * feat_dim * F32
    if not finetune:
        flops.append(stage_row("backbone features (train views)", bb["flops"] / 1e9, n_train * tcfg.train_views, 1, 1,
                               "frozen shared backbone, once per video and view"))
        flops.append(stage_row("backbone features (test)", bb["flops"] / 1e9, n_test, 1, 1, ""))
        caches.append({"cache": f"fewshot-{data.train_split}", "entries": n_train * tcfg.train_views,
                       "bytes": n_train * tcfg.train_views * feat_entry, "per_entry_bytes": feat_entry,
                       "what": "backbone features, float32"})
        caches.append({"cache": f"fewshot-{data.test_split}", "entries": n_test, "bytes": n_test * feat_entry,
                       "per_entry_bytes": feat_entry, "what": "backbone features, float32"})
    text_dim = {"minilm": 384, "bow": width, "clip": width}.get(cfg.text.encoder)
    if text_dim is None:  # a registered encoder of the user's: its width from one placeholder name
        from actdistill.engine.fewshot import TEXT_ENCODERS

        text_dim = int(TEXT_ENCODERS.build(cfg.text.encoder, names_train[:1], cfg, width).shape[1])
    for method in cfg.heads.methods:
        torch.manual_seed(0)
        tables = (bow_embedding(names_train, text_dim), bow_embedding(names_test, text_dim))
        net = EpisodeNet(method, feat_dim, cfg.heads.dim, cfg.heads.options.get(method, {}), None, None,
                         *tables, accumulate=tcfg.accumulate)
        net.train()
        s, q = torch.zeros(n_sup, t, feat_dim), torch.zeros(n_q, t, feat_dim)
        head = measure(net, (s, q, labels(tcfg.way, tcfg.shot, tcfg.query)), True)
        per_ep = head["flops"] + (bb["flops"] * clips_per_ep if finetune else 0)
        row = stage_row(f"train {method}", per_ep / 1e9, tcfg.episodes, 3, 1,
                        f"per episode ({tcfg.way}-way {tcfg.shot}-shot, {tcfg.query} queries/class)"
                        + ("; backbone fine-tuned" if finetune else "; on cached features"))
        flops.append(row)
        trainable = count_parameters(net) + (bb_params if finetune else 0)
        act = head["saved_bytes"] + (bb["saved_bytes"] * clips_per_ep if finetune else 0)
        in_bytes = clips_per_ep * (numel(clip_shape) if finetune else t * feat_dim) * F32
        memory.append(memory_row(f"train {method}", trainable, 0 if finetune else bb_params, act, 1, in_bytes, 0)
                      | {"note": "one episode per backward (gradients accumulate over episodes)"})
        if finetune:
            flops.append(stage_row(f"test features {method}", bb["flops"] / 1e9, n_test, 1, 1,
                                   "fine-tuned backbone: each method encodes the test set"))
            caches.append({"cache": f"fewshot-{data.test_split} ({method})", "entries": n_test,
                           "bytes": n_test * feat_entry, "per_entry_bytes": feat_entry,
                           "what": "backbone features, float32"})
        net.eval()
        for setting in ecfg.settings:
            way, shot = parse_setting(setting)
            s, q = torch.zeros(way * shot, t, feat_dim), torch.zeros(way * ecfg.query, t, feat_dim)
            lab = labels(way, shot, ecfg.query)
            f = count_flops(lambda net=net, s=s, q=q, lab=lab: net(s, q, lab, with_loss=False))
            flops.append(stage_row(f"eval {method} {setting}", f / 1e9, ecfg.episodes, 1, 1,
                                   "per episode, on cached test features"))
    plan: dict[str, Any] = {
        "kind": "fewshot", "dataset": data.dataset, "benchmark": data.options.get("benchmark"),
        "index": "split files and media on disk" if checked else "split files only (media not checked)",
        "splits": counts, "sample_shapes": {"rgb": list(clip_shape)},
        "backbone": {"name": cfg.backbone.name, "feature_dim": feat_dim, "params": bb_params, "finetune": finetune},
        "caches": caches, "cache_bytes_total": sum(c["bytes"] for c in caches),
        "flops": flops, "memory": memory, "peak_device_bytes": max(m["device_peak_bytes"] for m in memory),
    }
    _wall_hint(plan, tflops)
    return plan


# ------------------------------------------------------------------------------------------- output
def format_plan(plan: Mapping[str, Any]) -> str:
    """The plan as Markdown tables (what the CLI prints without ``--json``)."""
    from actdistill.evaluation.report import markdown_table

    what = plan["dataset"] + (f" ({plan['benchmark']})" if plan.get("benchmark") else "")
    lines = [f"# Cost plan: {plan['kind']} on {what}", "", f"Index: {plan['index']}.", ""]
    if plan["kind"] == "karmma":
        lines.append(markdown_table(["split", "name", "samples", "views", "problems"], [
            [role, s["split"], s["samples"], plan["views"][role], plan["problems"].get(s["split"], 0)]
            for role, s in plan["splits"].items()]))
        lines += ["", "Classes: " + ", ".join(f"{k} {v}" for k, v in plan["classes"].items()), "",
                  markdown_table(["modality", "per-sample shape (after preprocessing)", "float16 bytes",
                                  "teacher tokens x dim"],
                                 [[m, "x".join(map(str, s)), human_bytes(numel(s) * F16),
                                   f"{plan['tokens'][m]['tokens']} x {plan['tokens'][m]['dim']}"]
                                  for m, s in plan["sample_shapes"].items()])]
    else:
        lines.append(markdown_table(["split", "name", "classes", "videos"], [
            [role, s["split"], s["classes"], s["videos"]] for role, s in plan["splits"].items()]))
        b = plan["backbone"]
        lines += ["", f"Clip: {'x'.join(map(str, plan['sample_shapes']['rgb']))}; backbone {b['name']} "
                  f"({b['params'] / 1e6:.1f} M params, {b['feature_dim']}-d features, "
                  f"{'fine-tuned' if b['finetune'] else 'frozen'})."]
    lines += ["", "On-disk caches:", "", markdown_table(["cache", "entries", "per entry", "total", "holds"], [
        [c["cache"], c["entries"], human_bytes(c["per_entry_bytes"]), human_bytes(c["bytes"]), c["what"]]
        for c in plan["caches"]]), "", f"Total on disk: {human_bytes(plan['cache_bytes_total'])}."]
    hm = plan.get("host_memory")
    if hm:
        held = ", ".join(hm["held_in_memory"]) or "none"
        lines.append(f"Caches held in host memory (at most cache.in_memory_mb = {hm['in_memory_mb']:g} MiB each): "
                     f"{held}; the others are read from disk per batch.")
    lines += ["", "Compute (FLOPs counted by torch.utils.flop_counter on one sample; x3 = forward + backward):", "",
              markdown_table(["stage", "GFLOPs/sample", "samples/epoch", "x", "epochs", "per epoch", "total", "note"], [
                  [r["stage"], round(r["gflops_per_sample"], 3), r["samples_per_epoch"], r["passes"], r["epochs"],
                   human_flops(r["flops_per_epoch"]), human_flops(r["flops_total"]), r["note"]]
                  for r in plan["flops"]]), "", f"Total compute: {human_flops(plan['flops_total'])}."]
    lines += ["", "Peak memory per process (estimate: fp32 weights + grads + 2 optimizer moments of what trains, "
              "frozen fp32 weights, tensors saved for backward per sample x batch, the batch; host prefetch = "
              "batch x workers x 2):", "",
              markdown_table(["stage", "batch", "trainable (M)", "frozen (M)", "weights+grads+opt", "frozen",
                              "activations", "batch", "device total", "host prefetch"], [
                  [m["stage"], m["batch_size"], round(m["trainable_params"] / 1e6, 2),
                   round(m["frozen_params"] / 1e6, 2), human_bytes(m["weights_grads_optimizer_bytes"]),
                   human_bytes(m["frozen_bytes"]), human_bytes(m["activation_bytes"]), human_bytes(m["batch_bytes"]),
                   human_bytes(m["device_peak_bytes"]), human_bytes(m["prefetch_bytes"])] for m in plan["memory"]]),
              "", f"Estimated peak per process: {human_bytes(plan['peak_device_bytes'])}."]
    hint = plan.get("wall_clock_hint")
    if hint:
        lines += ["", f"Wall-clock hint: {hint['seconds'] / 3600:.1f} h at an assumed sustained "
                  f"{hint['assumed_tflops']:g} TFLOP/s ({hint['note']})."]
    return "\n".join(lines) + "\n"
