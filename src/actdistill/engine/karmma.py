"""The KARMMA pipeline: unimodal fit -> cached teacher tokens -> teacher -> student rows -> evaluation.

Stages (each resumable, each skipped when its result is already on disk):

1. **Clips.** Decode ``cache.train_views`` fixed training views and the test views of every
   sample once (:mod:`actdistill.engine.clips`).
2. **Unimodal fit.** Modalities whose teacher extractor has no pretrained weights here get one
   trained first (a compact encoder + linear heads, cross-entropy), then frozen. Fitted weights
   are cached by configuration, so a second run reuses them.
3. **Teacher tokens.** The frozen extractors run once per sample and view; tokens are cached.
4. **Teacher.** The fusion block (embedding + CLS + transformer + multi-head MLP) is trained on
   cached tokens with modality dropout.
5. **Rows.** The student architecture is trained as the paper's rows: Baseline (CE, no
   dropout), Baseline w/ δ (dropout + missing-modality tokens, CE), KARMMA student (δ + KD from
   the teacher on the same dropped input), plus comparison rows: the single Missing Modality
   Token variant and a late-fusion ensemble.
6. **Evaluation.** Every non-empty modality subset, the drop-rate curve, AUC, worst subset,
   calibration, and efficiency (params, GFLOPs, peak memory, latency, throughput) per subset.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from actdistill.config import ConfigError, to_dict
from actdistill.data.builder import DataConfig, load_index
from actdistill.data.modalities.base import selects
from actdistill.data.records import DataError
from actdistill.engine.cache import FeatureCache, cache_key_hash
from actdistill.engine.checkpoint import load_weights, save_weights
from actdistill.engine.clips import (
    CachedSplit,
    CollateViews,
    Dropout,
    Shard,
    ViewDataset,
    clip_cache_key,
    eval_loader,
    load_clips,
    make_loader,
    map_split,
    steps_per_epoch,
)
from actdistill.engine.distributed import barrier, gather_objects, init_from_env, is_main
from actdistill.engine.tasks import (  # noqa: F401  (re-exported: the training blocks used to live here)
    ROWS,
    FusionWithSingles,
    RowTask,
    TeacherTask,
    TrainingExtras,
    UnimodalClassifier,
    UnimodalTask,
    row_spec,
    single_pass_ce,
    single_pass_logits,
    unimodal_aux_loss,
)
from actdistill.engine.trainer import OptimConfig, fit
from actdistill.evaluation.efficiency import count_parameters, profile_forward, time_fn
from actdistill.evaluation.protocols import (
    DROP_RATES,
    Collected,
    evaluate_missing_modalities,
    modality_subsets,
    subset_name,
)
from actdistill.experiment import RunConfig
from actdistill.models.base import FUSION
from actdistill.models.encoders.base import Encoder, build_encoder, encoder_entry, with_data_channels
from actdistill.models.fusion import KARMMAFusion, MultimodalRecognizer
from actdistill.seeding import stable_seed

ROW_KINDS = tuple(ROWS.names())  # the registered rows (engine.tasks.ROWS); kept for callers of the tuple


@dataclass
class ModelSpec:
    """Encoders per modality (``{name, **options}``; default: built-in compact of ``size``) + fusion options.

    ``name``: the registered fusion model (``actdistill list fusion``) the student rows train;
    the teacher is always ``karmma`` (its fusion block trains on cached extractor tokens)."""

    name: str = "karmma"
    size: str = "student"
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        size="teacher",
        encoders={"rgb": {"name": "mobilenet_v2", "pretrained": "imagenet-offline"}},
        fusion={"dim": 256, "depth": 2, "num_heads": 4},
    ))
    fit_unimodal: list[str] = field(default_factory=lambda: ["flow", "audio", "depth", "boxes", "imu"])
    modality_dropout: float = 0.5
    # Weight of the cross-entropy on single-modality fusion passes (see StudentConfig.single_passes):
    # a teacher that answers well from one modality matters when the student distils it on the
    # dropped input (teacher_input: dropped, the library default). 0: off, the paper.
    single_passes: float = 0.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=15, lr=5e-4, batch_size=32))
    unimodal_optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=6, lr=2e-3, batch_size=32))
    # Seed of everything on the teacher's side: its extractors' unimodal fits and random inits (so
    # the token cache), and the fusion's training. None: run.seed. A seed study that shares one
    # teacher fixes it, so only the rows change with run.seed.
    seed: int | None = None
    # A trained teacher (``teacher.safetensors`` of a run with the same data, modalities, teacher
    # config and teacher seed) to load instead of training one. Its extractors must equal the ones
    # this run builds (they made the cached tokens); a mismatch is an error, not a silent mix.
    weights: str = ""


@dataclass
class StudentConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        size="student", fusion={"dim": 128, "depth": 1, "num_heads": 4, "missing": "tokens"}))
    modality_dropout: float = 0.5
    # Epochs over which the student rows' dropout rate rises linearly from 0 to modality_dropout
    # (0: constant, the paper). A from-scratch student barely fits under p = 0.5 from the start.
    dropout_ramp_epochs: int = 0
    alpha: float = 0.5
    temperature: float = 1.0
    teacher_input: str = "dropped"  # dropped (paper v3: the teacher sees the student's input) | all (v1)
    # Weight of an auxiliary cross-entropy on each present modality's own encoder tokens (0: off,
    # the paper). Training only: see TrainingExtras for why; applies to every row but late_fusion.
    unimodal_aux: float = 0.0
    # Weight of a loss on single-modality passes through the fusion block: for each present
    # modality, the row's prediction from that modality alone (0: off, the paper). Training only,
    # no extra encoder passes; see TrainingExtras for why.
    single_passes: float = 0.0
    # What a KD row's single passes learn from: ``labels`` (cross-entropy, as for every other row;
    # KD stays on the row's prediction for its input, where the paper puts it) or ``teacher`` (the
    # KD loss against the teacher's logits for the same input). Why labels: see _single_pass_loss.
    single_pass_target: str = "labels"
    # Modalities whose student encoder is first fitted alone (``teacher.unimodal_optim``, cached
    # like the teacher's fits) and then starts every fused row (baseline, baseline_delta, student,
    # mmt) from those weights. Empty: from scratch, as the paper's rows share one initialisation.
    # Why: see ``KarmmaPipeline.unimodal_init``.
    init_unimodal: list[str] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=15, lr=1e-3, batch_size=32))


@dataclass
class CacheConfig:
    root: str = ".cache/actdistill"
    train_views: int = 2
    # A cache at most this size on disk is held in memory (the fast path for small data: no disk
    # reads per batch); larger ones are read per sample. 0: always stream from disk.
    in_memory_mb: float = 1024.0
    # Samples per decoding/extraction batch, and the unit of work shared out to ranks and shards.
    # Part of the token cache key: the extractors' numerics may depend on the batch they run in.
    chunk: int = 8
    # Decoded clips: ``disk`` (decoded once into the clip cache, read by every stage), ``online``
    # (decoded from the dataset's files whenever a stage reads them: no clip cache) or ``auto``
    # (online when the clip cache would exceed clips_max_gb, e.g. EPIC-KITCHENS-100's ~2.7 TB).
    clips: str = "auto"
    clips_max_gb: float = 100.0


@dataclass
class TrainConfig:
    """How every training stage runs (the optimiser settings are per stage: ``*.optim``)."""

    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (CUDA): autocast of every stage's forward
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    log_every: int = 50  # a logs/<stage>/metrics.csv row every N optimizer steps (and one per epoch)


@dataclass
class KarmmaEvalConfig:
    drop_rates: list[float] = field(default_factory=lambda: list(DROP_RATES))
    seed: int = 0
    drop_repeats: int = 5  # seeded drop draws per rate, averaged (1 = a single draw per rate)
    batch_size: int = 64
    efficiency: bool = True
    latency_batch: int = 1
    throughput_batch: int = 16
    warmup: int = 2
    repeats: int = 5  # timed batches for throughput (each one is throughput_batch clips)
    latency_repeats: int = 25  # timed batch-1 calls: cheap, and 5 left the median noisy (+-50%)


@dataclass
class KarmmaConfig:
    # Modules (dotted names, or .py files next to the YAML) imported before the config is built,
    # so the encoders and datasets they register can be named here: see docs/extending.md.
    custom_imports: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    rows: list[str] = field(default_factory=lambda: ["baseline", "baseline_delta", "student"])
    action_head: bool = False  # EPIC: action = verb and noun both correct (False) or a separate head
    eval: KarmmaEvalConfig = field(default_factory=KarmmaEvalConfig)


# ------------------------------------------------------------------------------------------ validation
def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _in_range(value: float, key: str, lo: float, hi: float | None = None, hi_open: bool = True) -> None:
    """``lo <= value < hi`` (``hi_open``) or ``<= hi``; a NaN or infinite value is refused too."""
    ok = math.isfinite(value) and value >= lo and (hi is None or (value < hi if hi_open else value <= hi))
    bound = "" if hi is None else (f", below {hi}" if hi_open else f", at most {hi}")
    _require(ok, key, f"{value!r} is out of range (at least {lo}{bound})")


def _one_of(value: str, key: str, known: Sequence[str]) -> None:
    _require(value in known, key, f"{value!r} is not one of {', '.join(known)}")


def validate(cfg: KarmmaConfig) -> None:
    """Check every config value that can be checked without data, before anything heavy runs.

    Why: a bad value found by a stage (an unknown row after the teacher's hour of training, a
    zero-epoch stage that saves untrained weights, a drop rate of 1.0 that the protocol cannot
    honour) wastes the run or produces NaN tables. Raises :class:`ConfigError`: one line naming
    the config key."""
    import actdistill.data.modalities  # noqa: F401  (registers the readers)
    from actdistill.data.dataset import ON_ERROR
    from actdistill.data.datasets import DATASETS
    from actdistill.data.modalities.base import READERS, check_reader_options
    from actdistill.data.sampling import SAMPLING_MODES
    from actdistill.engine.clips import CLIP_MODES
    from actdistill.engine.trainer import PRECISIONS
    from actdistill.models.fusion import MISSING_MODES

    d = cfg.data
    mods = list(d.modalities)
    _require(bool(mods), "data.modalities", "is empty; name at least one modality")
    dup = sorted({m for m in mods if mods.count(m) > 1})
    _require(not dup, "data.modalities", f"{dup} listed twice")
    unknown = [m for m in mods if m.partition(":")[0] not in READERS or m.endswith(":")]
    _require(not unknown, "data.modalities", f"no reader for {unknown}; known: {', '.join(READERS.names())}, "
             "or a named modality <kind>:<name> of one of them (imu:acc)")
    for m, opts in d.readers.items():  # an option the reader does not take: named now, not at decode time
        if m.partition(":")[0] in READERS:
            check_reader_options(m, opts)
    _require(d.dataset in DATASETS, "data.dataset",
             f"unknown dataset {d.dataset!r}; known: {', '.join(DATASETS.names())}")
    _one_of(d.on_error, "data.on_error", ON_ERROR)
    _in_range(d.batch_size, "data.batch_size", 1)
    _in_range(d.num_workers, "data.num_workers", 0)
    _one_of(d.sampling.mode, "data.sampling.mode", SAMPLING_MODES)
    for key in ("num_frames", "stride", "test_views"):
        _in_range(getattr(d.sampling, key), f"data.sampling.{key}", 1)
    _in_range(d.sampling.max_pad, "data.sampling.max_pad", 0)
    _in_range(d.spatial.crop_size, "data.spatial.crop_size", 1)
    _in_range(d.spatial.short_side, "data.spatial.short_side", 1)
    lo, hi = d.spatial.scale_range
    _require(0 < lo <= hi and math.isfinite(hi), "data.spatial.scale_range", f"{[lo, hi]} must be 0 < min <= max")
    _one_of(d.spatial.normalize, "data.spatial.normalize", ("none", "imagenet", "clip"))

    c = cfg.cache
    _in_range(c.train_views, "cache.train_views", 1)
    _in_range(c.chunk, "cache.chunk", 1)
    _one_of(c.clips, "cache.clips", CLIP_MODES)
    _in_range(c.in_memory_mb, "cache.in_memory_mb", 0)
    _require(c.clips_max_gb > 0, "cache.clips_max_gb", f"{c.clips_max_gb!r} must be positive")

    t = cfg.train
    _one_of(t.precision, "train.precision", [k for k in PRECISIONS if k != "32-true"])
    _in_range(t.checkpoint_every, "train.checkpoint_every", 0)
    _in_range(t.log_every, "train.log_every", 1)

    for key, ocfg in (("teacher.optim", cfg.teacher.optim), ("teacher.unimodal_optim", cfg.teacher.unimodal_optim),
                      ("student.optim", cfg.student.optim)):
        _in_range(ocfg.epochs, f"{key}.epochs", 1)
        _in_range(ocfg.batch_size, f"{key}.batch_size", 1)
        _require(math.isfinite(ocfg.lr) and ocfg.lr > 0, f"{key}.lr", f"{ocfg.lr!r} must be a positive number")
        for sub in ("weight_decay", "warmup_epochs", "grad_clip"):
            _in_range(getattr(ocfg, sub), f"{key}.{sub}", 0)

    for who in ("teacher", "student"):
        section = getattr(cfg, who)
        _in_range(section.modality_dropout, f"{who}.modality_dropout", 0, 1)
        _in_range(section.single_passes, f"{who}.single_passes", 0)
        missing = section.model.fusion.get("missing")
        if missing is not None and section.model.name == "karmma":
            _one_of(str(missing), f"{who}.model.fusion.missing", MISSING_MODES)
    _require(cfg.teacher.model.name == "karmma", "teacher.model.name",
             f"is {cfg.teacher.model.name!r}; the teacher is karmma (its fusion block trains on cached "
             "extractor tokens); student.model.name picks the rows' model")
    _require(cfg.student.model.name in FUSION, "student.model.name",
             f"unknown fusion model {cfg.student.model.name!r}; known: {', '.join(FUSION.names())} "
             "(register your own with actdistill.models.register_fusion, see docs/extending.md)")
    s = cfg.student
    _in_range(s.alpha, "student.alpha", 0, 1, hi_open=False)
    _require(math.isfinite(s.temperature) and s.temperature > 0, "student.temperature",
             f"{s.temperature!r} must be a positive number")
    _in_range(s.dropout_ramp_epochs, "student.dropout_ramp_epochs", 0)
    _in_range(s.unimodal_aux, "student.unimodal_aux", 0)
    _one_of(s.teacher_input, "student.teacher_input", ("dropped", "all"))
    _one_of(s.single_pass_target, "student.single_pass_target", ("labels", "teacher"))
    stray = [m for m in s.init_unimodal if m not in mods]
    _require(not stray, "student.init_unimodal", f"names {stray}, not among data.modalities {mods}")

    known_rows = ROWS.names()
    unknown = [r for r in cfg.rows if r not in known_rows]
    _require(not unknown, "rows", f"unknown row(s) {unknown}; known: {', '.join(known_rows)}")
    dup = sorted({r for r in cfg.rows if cfg.rows.count(r) > 1})
    _require(not dup, "rows", f"{dup} listed twice")
    for r in cfg.rows:  # a row's own model, and a missing-modality mode only a karmma model has
        spec = row_spec(r)
        model = spec.model or cfg.student.model.name
        _require(model in FUSION, "rows", f"row {r!r} trains fusion model {model!r}, which is not registered; "
                 f"known: {', '.join(FUSION.names())}")
        _require(spec.missing is None or model == "karmma", "rows",
                 f"row {r!r} sets the karmma fusion's missing mode {spec.missing!r}, but student.model.name is "
                 f"{model!r}")

    e = cfg.eval
    _require(bool(e.drop_rates), "eval.drop_rates", "is empty; give at least one rate, e.g. [0.0, 0.5]")
    for i, rate in enumerate(e.drop_rates):
        _in_range(rate, f"eval.drop_rates[{i}]", 0, 1)
    for key in ("drop_repeats", "batch_size", "latency_batch", "throughput_batch", "repeats", "latency_repeats"):
        _in_range(getattr(e, key), f"eval.{key}", 1)
    _in_range(e.warmup, "eval.warmup", 0)

    if cfg.teacher.weights:
        _require(Path(cfg.teacher.weights).is_file(), "teacher.weights", f"{cfg.teacher.weights}: no such file")
    _in_range(cfg.run.threads, "run.threads", 0)
    _require(cfg.run.dist_timeout_min > 0, "run.dist_timeout_min", f"{cfg.run.dist_timeout_min!r} must be positive")
    _require(bool(cfg.run.name.strip()), "run.name", "is empty")


# --------------------------------------------------------------------------------------------- helpers
def _heads(classes: dict[str, list[str]], action_head: bool) -> dict[str, int]:
    heads = {t: len(v) for t, v in classes.items() if v and (t != "action" or action_head)}
    if not heads:
        raise ValueError("the dataset defines no class list to train on")
    return heads


def _spec_opts(spec: ModelSpec, m: str, shapes: Mapping[str, Sequence[int]] | None = None,
               where: str = "model.encoders") -> tuple[str, dict[str, Any]]:
    """Encoder name and options of modality ``m``: its own entry, else its kind's (``imu:acc`` ->
    ``imu``); given the data's per-sample ``shapes``, ``in_channels`` comes from the data."""
    opts = dict(encoder_entry(spec.encoders, m) or {})
    name = str(opts.pop("name", "compact"))
    if name in ("compact", "frames", "flow", "spectrogram", "boxes", "imu"):
        opts.setdefault("size", spec.size)
    if shapes is not None:
        opts = with_data_channels(name, m, opts, shapes.get(m), where)
    return name, opts


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _log(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


MODEL_INFO = "model.json"


def write_model_info(run_dir: Path, modalities: tuple[str, ...], heads: dict[str, int],
                     classes: dict[str, list[str]], action_head: bool, input_shapes: dict[str, list[int]]) -> None:
    """What a deployed model needs besides its weights: modality order, heads, class names and the
    per-sample input shape of every modality (``[T, ...]`` after preprocessing). Written with the
    run so that ``Recognizer.from_run`` and ``export onnx`` never need the training data again."""
    from actdistill.rundir import write_json

    write_json(Path(run_dir) / MODEL_INFO, {
        "modalities": list(modalities), "heads": heads, "action_head": action_head,
        "classes": {t: list(v) for t, v in classes.items() if t in heads or t in ("verb", "noun")},
        "input_shapes": input_shapes})


def row_architecture(kind: str) -> str:
    """Which network a row (or ``teacher``) runs. ``baseline``, ``baseline_delta`` and ``student``
    differ only in how they are trained, so their parameters, FLOPs, memory and latency are one
    network's, and the pipeline profiles that network once (timing it three times only adds noise)."""
    return kind if kind not in ROWS else row_spec(kind).architecture


def build_row(cfg: KarmmaConfig, modalities: tuple[str, ...], heads: dict[str, int], kind: str,
              shapes: Mapping[str, Sequence[int]] | None = None) -> nn.Module:
    """An untrained model of row ``kind`` (the student architecture as its :class:`RowSpec` says);
    ``shapes``: per-sample input shapes (``model.json``'s ``input_shapes``), for ``in_channels``."""
    row = _row_spec(kind)
    spec = cfg.student.model
    enc = {m: {"name": n, **o} for m in modalities for n, o in [_spec_opts(spec, m, shapes, "student.model.encoders")]}
    name = row.model or spec.name
    # student.model.fusion configures the student's model; a row naming another model builds it
    # with its defaults (late_fusion has no fusion block to configure)
    options = dict(spec.fusion) if name == spec.name else {}
    if row.missing is not None:
        options["missing"] = row.missing
    try:
        return FUSION.build(name, modalities, heads, spec.size, enc, **options)
    except KeyError as err:
        raise ValueError(f"row {kind!r}: {err.args[0]}") from None


def _row_spec(kind: str) -> Any:
    """:func:`row_spec`, with an unknown row a ValueError naming the registered ones."""
    try:
        return row_spec(kind)
    except KeyError as err:
        raise ValueError(f"{err.args[0]}; rows are registered in actdistill.engine.tasks.ROWS") from None


def build_teacher(cfg: KarmmaConfig, modalities: tuple[str, ...], heads: dict[str, int],
                  num_frames: int, shapes: Mapping[str, Sequence[int]] | None = None) -> MultimodalRecognizer:
    """The teacher's architecture (extractors + fusion) without fitting or pretrained downloads:
    ``teacher.safetensors`` of a run holds every weight, extractors included. ``shapes``: as for
    :func:`build_row`."""
    spec = cfg.teacher.model
    encs = {}
    for m in modalities:
        name, opts = _spec_opts(spec, m, shapes, "teacher.model.encoders")
        if "pretrained" in opts or name == "mobilenet_v2":  # the run's file has the weights
            opts["pretrained"] = None
        encs[m] = build_encoder(name, modality=m, **opts)
    fusion = KARMMAFusion(modalities, {m: e.out_dim for m, e in encs.items()}, heads,
                          num_tokens={m: int(e.num_tokens(num_frames)) for m, e in encs.items()}, **spec.fusion)
    return MultimodalRecognizer(encs, fusion)


# ------------------------------------------------------------------------------------------- pipeline
class KarmmaPipeline:
    def __init__(self, cfg: KarmmaConfig, run_dir: Path | None, shard: Shard | None = None) -> None:
        """``run_dir`` None: the caching stages only (``actdistill extract``), no run directory.
        ``shard``: the share of decoding and extraction this process does (default: its rank's)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = init_from_env()
        self.shard = shard or Shard.of_rank()
        self.progress = cfg.run.progress
        self.modalities = tuple(cfg.data.modalities)
        self.input_shapes: dict[str, tuple[int, ...]] | None = None  # per-sample [T, ...], after load_data
        self.timings: dict[str, float] = {}
        self._init_paths: dict[str, Path] | None = None  # student.init_unimodal fits, once per pipeline
        self.teacher_seed = cfg.run.seed if cfg.teacher.seed is None else cfg.teacher.seed

    # ----------------------------------------------------------------------------------- data
    def load_data(self) -> None:
        """Index both splits and decode their fixed views into the clip caches (every rank its
        share of the chunks); the splits are then read per sample (:class:`CachedSplit`)."""
        t0 = time.perf_counter()
        data = self.cfg.data
        self.train_index = load_index(data, data.train_split)
        self.test_index = load_index(data, data.test_split)
        self.heads = _heads(self.train_index.classes, self.cfg.action_head)
        self.classes = self.train_index.classes
        # from the indexes alone first: a modality with no files anywhere stops the run before decoding
        self._check_modalities({"train": self.train_index.modality_counts(), "test": self.test_index.modality_counts()},
                               {"train": len(self.train_index.segments), "test": len(self.test_index.segments)})
        root, mem = self.cfg.cache.root, self.cfg.cache.in_memory_mb
        c = self.cfg.cache
        self.train_split = load_clips(data, data.train_split, True, c.train_views, root, self.train_index,
                                      self.progress, mem, self.shard, c.chunk, c.clips, c.clips_max_gb)
        self.test_split = load_clips(data, data.test_split, False, data.sampling.test_views, root, self.test_index,
                                     self.progress, mem, self.shard, c.chunk, c.clips, c.clips_max_gb)
        self.input_shapes = {**self.train_split.shapes, **self.test_split.shapes}  # encoders' in_channels
        labels = self.test_split.labels
        unlabelled = [t for t in self.heads if t not in labels or not bool((labels[t] >= 0).any())]
        if unlabelled:
            raise ValueError(
                f"data.test_split={data.test_split!r} of {data.dataset!r} has no {'/'.join(unlabelled)} labels "
                "(EPIC-KITCHENS-100's test split is unlabelled: its results go to the challenge server); "
                "evaluate on a labelled split, e.g. data.test_split=validation")
        self.data_report()
        present = {"train": self.train_split.present.sum(0), "test": self.test_split.present.sum(0)}
        self._check_modalities({r: {m: int(n[j]) for j, m in enumerate(self.modalities)} for r, n in present.items()},
                               {"train": len(self.train_split), "test": len(self.test_split)})
        self.timings["data"] = time.perf_counter() - t0
        if is_main() and self.run_dir is not None:
            write_model_info(self.run_dir, self.modalities, self.heads, self.classes, self.cfg.action_head,
                             {m: list(shape) for m, shape in self.input_shapes.items()})
        _log(f"data: {len(self.train_split)} train clips x {self.train_split.views} views, "
             f"{len(self.test_split)} test clips, tasks {self.heads} ({self.timings['data']:.1f}s)")

    def data_report(self) -> dict[str, Any]:
        """Print what the job does with its data (rows read, used, dropped and why, samples skipped
        at read time, classes seen only in evaluation) and write every problem to ``problems.json``
        in the run directory (:mod:`actdistill.data.report`). Called before any training."""
        from actdistill.data.report import data_report, write_problems

        indexes = {"train": self.train_index, "test": self.test_index}
        splits = {r: s for r, s in (("train", getattr(self, "train_split", None)),
                                    ("test", getattr(self, "test_split", None))) if s is not None}
        text, record = data_report(indexes, modalities=self.modalities,
                                   read_problems={r: s.problems for r, s in splits.items()},
                                   skipped={r: s.skipped_uids for r, s in splits.items()},
                                   train="train", tasks=list(self.heads))
        if is_main():
            print(text, flush=True)
            if self.run_dir is not None:
                write_problems(self.run_dir, record)
        self.data_record = record
        return record

    def _check_modalities(self, counts: dict[str, dict[str, int]], sizes: dict[str, int]) -> None:
        """Every modality of ``data.modalities`` must have data in both splits (``counts``: role ->
        modality -> samples that have it). Why: a modality the training split lacks trains an
        encoder on nothing, and one the test split lacks gives its modality subsets zero samples,
        i.e. NaN accuracies in summary.json. The data report is printed (and saved) first, so the
        files that went missing are named."""
        data = self.cfg.data
        names = {"train": data.train_split, "test": data.test_split}
        for role in ("train", "test"):
            absent = [m for m in self.modalities if counts[role].get(m, 0) == 0]
            if not absent:
                continue
            if not hasattr(self, "data_record"):
                self.data_report()
            effect = ("nothing to train its encoder on" if role == "train"
                      else "its modality subsets would have no test sample and score NaN")
            raise ConfigError(
                f"data.modalities: {absent} have no data in the {role} split {names[role]!r} of {data.dataset!r} "
                f"(0 of {sizes[role]} samples; {effect}); provide the files or remove them from data.modalities"
                + ("; every problem is in problems.json" if self.run_dir is not None else ""))

    def loader(self, split: CachedSplit, stage: str, epoch: int, start: int, batch_size: int,
               extra: dict[str, CachedSplit] | None = None, rows: list[int] | None = None,
               dropout: float = 0.0, seed: int | None = None) -> Any:
        """This rank's batches of training epoch ``epoch`` of ``stage`` from batch ``start`` on:
        view ``epoch % views`` of ``split`` (and of ``extra``), in an order seeded by (``seed``,
        default run.seed; stage, epoch), modality dropout ``dropout`` drawn per sample (see :class:`Dropout`)."""
        base = self.cfg.run.seed if seed is None else seed
        drop = Dropout(dropout, stable_seed(base, stage, "dropout")) if dropout > 0 else None
        seed = stable_seed(base, stage)
        ds = ViewDataset(split, epoch % split.views, extra, rows=rows, dropout=drop, epoch=epoch)
        return make_loader(ds, batch_size, True, seed, epoch, self.cfg.data.num_workers, start)

    # ---------------------------------------------------------------------------- unimodal fit
    def _encoder_opts(self, spec: ModelSpec, m: str) -> tuple[str, dict[str, Any]]:
        """:func:`_spec_opts` with the data's shapes (``in_channels``) once :meth:`load_data` ran."""
        where = "teacher.model.encoders" if spec is self.cfg.teacher.model else "student.model.encoders"
        return _spec_opts(spec, m, self.input_shapes, where)

    def _fit_seed(self, spec: ModelSpec) -> int:
        """The teacher's extractors' fits follow ``teacher.seed``; the student's follow run.seed."""
        return self.teacher_seed if spec is self.cfg.teacher.model else self.cfg.run.seed

    def _unimodal_key(self, m: str, spec: ModelSpec) -> dict[str, Any]:
        """What a fit depends on. ``size`` only picks presets: it is replaced by the built encoder's
        parameter shapes, so a student encoder with the teacher's explicit widths shares its fit."""
        name, opts = self._encoder_opts(spec, m)
        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
            shapes = [[k, list(v.shape)] for k, v in build_encoder(name, modality=m, **opts).state_dict().items()]
        opts = {k: v for k, v in opts.items() if k != "size"}
        return {"kind": "unimodal", "modality": m, "encoder": name, "options": opts, "shapes": shapes,
                "heads": self.heads,
                "optim": to_dict(self.cfg.teacher.unimodal_optim), "seed": self._fit_seed(spec),
                "views": self.cfg.cache.train_views,
                "clips": clip_cache_key(self.cfg.data, self.cfg.data.train_split, True)}

    def unimodal_file(self, m: str, spec: ModelSpec) -> tuple[Path, dict[str, Any]]:
        """Where the fit of modality ``m``'s encoder of ``spec`` is cached, and its key."""
        key = self._unimodal_key(m, spec)
        return Path(self.cfg.cache.root) / "unimodal" / f"{m}-{cache_key_hash(key)}.safetensors", key

    def fit_unimodal(self, m: str, spec: ModelSpec | None = None, label: str = "unimodal") -> Path:
        """Train modality ``m``'s encoder of ``spec`` (default: the teacher's) alone, with a
        classifier on its mean token (or reuse a cached fit); returns the encoder's weights file.

        The cache key is the encoder's config, the data and ``teacher.unimodal_optim``, not who
        asked: a student encoder configured like the teacher's extractor reuses the teacher's fit.
        ``label`` names the fit in logs and timings (``{label}_{m}``)."""
        spec = spec if spec is not None else self.cfg.teacher.model
        out, key = self.unimodal_file(m, spec)
        if out.exists():
            _log(f"{label} {m}: reusing {out}")
            return out
        name, opts = self._encoder_opts(spec, m)
        seed = self._fit_seed(spec)
        torch.manual_seed(seed)
        net = UnimodalClassifier(build_encoder(name, modality=m, **opts), self.heads).to(self.device)
        rows = self.train_split.rows_with(m)
        ocfg = self.cfg.teacher.unimodal_optim
        # The stage name carries the key: a student fit must not resume from the teacher's checkpoints.
        stage = f"unimodal_{m}_{cache_key_hash(key)[:8]}"
        draws = f"unimodal_{m}"  # the draws must not depend on the key (which holds e.g. data.root)

        def batches(epoch: int, start: int = 0):
            return self.loader(self.train_split, draws, epoch, start, ocfg.batch_size, rows=rows, seed=seed)

        t0 = time.perf_counter()
        hist = self.fit(UnimodalTask(net, m), batches, len(rows), ocfg, stage, draws, seed=seed)["history"]
        took = self.timings[f"{label}_{m}"] = time.perf_counter() - t0
        acc = self._unimodal_accuracy(net, m)
        _log(f"{label} {m}: loss {hist[-1]['loss']:.3f}, test top-1 {acc} ({took:.1f}s)")
        if is_main():
            out.parent.mkdir(parents=True, exist_ok=True)
            save_weights(net.encoder, out, metadata={"modality": m, "key": json.dumps(key, default=str)})
        barrier()  # every rank loads the fit next
        return out

    def _unimodal_accuracy(self, model: UnimodalClassifier, m: str) -> dict[str, float]:
        from actdistill.evaluation.metrics import score

        model.eval()
        rows = self.test_split.rows_with(m)
        ds = ViewDataset(self.test_split, 0, rows=rows)
        loader = make_loader(ds, self.cfg.eval.batch_size, False, 0, 0, self.cfg.data.num_workers, shard=False)
        logits: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for b in loader:
                for t, v in model(b["inputs"][m].to(self.device)).items():
                    logits.setdefault(t, []).append(v.cpu())
        s = score({t: torch.cat(v) for t, v in logits.items()}, {t: y[rows] for t, y in self.test_split.labels.items()})
        return {k: round(v, 1) for k, v in s.items() if k.endswith("top1")}

    # -------------------------------------------------------------------------- teacher tokens
    def build_extractors(self, fit: bool = True) -> dict[str, Encoder]:
        """The teacher's frozen extractors; those without pretrained weights are fitted first
        (``fit=False``: a missing fit is a :class:`DataError` naming the command that makes it)."""
        ext: dict[str, Encoder] = {}
        self.extractor_ids: dict[str, Any] = {}
        for m in self.modalities:
            name, opts = self._encoder_opts(self.cfg.teacher.model, m)
            if selects(self.cfg.teacher.fit_unimodal, m) and not opts.get("pretrained"):
                path, _ = self.unimodal_file(m, self.cfg.teacher.model)
                if not fit and not path.exists():
                    raise DataError(path, f"the teacher's {m} extractor is not fitted yet; run `actdistill "
                                          "unimodal fit` with this config once every clip shard is decoded")
                path = self.fit_unimodal(m)  # every rank trains its share (DDP); all load the file
                enc = build_encoder(name, modality=m, **opts)
                load_weights(enc, path)
                self.extractor_ids[m] = {"encoder": name, "options": opts, "weights": _file_hash(path)}
            else:
                # Seeded per modality: an extractor without pretrained weights computes random
                # features, the same ones in every process and run of this seed (its token cache is
                # keyed by that seed).
                seed = stable_seed(self.teacher_seed, "extractor", m)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    enc = build_encoder(name, modality=m, **opts)
                self.extractor_ids[m] = {"encoder": name, "options": opts,
                                         **({} if opts.get("pretrained") else {"init_seed": seed})}
            ext[m] = enc.freeze().to(self.device)
        return ext

    def teacher_tokens(self, extractors: dict[str, Encoder]) -> None:
        """Run the frozen extractors once per sample and view and cache the tokens: every rank
        its share of the chunks (:func:`map_split`), or only what ``actdistill extract`` left."""
        from actdistill.models.base import encode_present

        t0 = time.perf_counter()
        frames = next(iter(self.train_split.shapes.values()))[0]
        self.token_counts = {m: int(e.num_tokens(self.train_split.shapes.get(m, (frames,))[0]))
                             for m, e in extractors.items()}

        def fn(inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            tokens, _ = encode_present(extractors, self.modalities, inputs, present.to(self.device))
            return {k: v.cpu() for k, v in tokens.items()}

        shard = self.shard
        out = []
        d = self.cfg.data
        for split, clips in ((d.train_split, self.train_split), (d.test_split, self.test_split)):
            train = split == self.cfg.data.train_split
            key = {"kind": "teacher_tokens", "extractors": self.extractor_ids, "chunk": self.cfg.cache.chunk,
                   "clips": clip_cache_key(self.cfg.data, split, train)}
            with FeatureCache(self.cfg.cache.root, f"tokens-{split}", key, writer=shard.writer) as cache:
                map_split(clips, fn, cache, shard, f"teacher tokens {split}", self.progress, self.cfg.data.num_workers,
                          self.cfg.cache.chunk)
            barrier()
            reader = FeatureCache(self.cfg.cache.root, f"tokens-{split}", key)
            tokens = CachedSplit(reader, clips.uids, clips.labels, self.modalities, clips.views,
                                 positions=clips.positions)
            if reader.nbytes() <= self.cfg.cache.in_memory_mb * 2**20:
                reader.preload()
            out.append(tokens)
        self.train_tokens, self.test_tokens = out
        self.timings["teacher_tokens"] = time.perf_counter() - t0
        _log(f"teacher tokens cached ({self.timings['teacher_tokens']:.1f}s): {self.train_tokens.shapes}")

    # --------------------------------------------------------------------------------- teacher
    def train_teacher(self, extractors: dict[str, Encoder]) -> MultimodalRecognizer:
        """Train the fusion teacher on the cached tokens (seeded by ``teacher.seed``), or load
        ``teacher.weights``; saved as ``teacher.safetensors`` in the run directory either way."""
        t0 = time.perf_counter()
        spec = self.cfg.teacher.model
        seed = self.teacher_seed
        torch.manual_seed(seed)
        in_dims = {m: extractors[m].out_dim for m in self.modalities}
        fusion = KARMMAFusion(self.modalities, in_dims, self.heads, num_tokens=self.token_counts,
                              **spec.fusion).to(self.device)
        if self.cfg.teacher.weights:
            return self._load_teacher(extractors, fusion, t0)
        ocfg = self.cfg.teacher.optim
        p = self.cfg.teacher.modality_dropout
        task = TeacherTask(fusion, self.token_counts, self.cfg.teacher.single_passes)

        def batches(epoch: int, start: int = 0):
            return self.loader(self.train_tokens, "teacher", epoch, start, ocfg.batch_size, dropout=p, seed=seed)

        self.fit(task, batches, len(self.train_tokens), ocfg, "teacher", seed=seed)
        self.timings["teacher"] = time.perf_counter() - t0
        teacher = MultimodalRecognizer(extractors, fusion).eval()
        if is_main():
            save_weights(teacher, self.run_dir / "teacher.safetensors")
        return teacher

    def _load_teacher(self, extractors: dict[str, Encoder], fusion: nn.Module, t0: float) -> MultimodalRecognizer:
        """``teacher.weights``: the fusion from the file; its extractors must be this run's."""
        from actdistill.engine.fewshot import weights_hash

        path = Path(self.cfg.teacher.weights)
        built = {m: weights_hash(e) for m, e in extractors.items()}
        teacher = MultimodalRecognizer(extractors, fusion)
        load_weights(teacher, path)
        changed = [m for m, e in extractors.items() if weights_hash(e) != built[m]]
        if changed:
            raise ConfigError(f"teacher.weights: {path} was trained on other {changed} extractors than this run "
                              "builds (different teacher.seed, unimodal fits or pretrained weights), so its fusion "
                              "does not match the cached tokens; set teacher.seed to the seed it was trained with")
        self.timings["teacher"] = time.perf_counter() - t0
        _log(f"teacher: loaded from {path}")
        teacher.eval()
        if is_main():
            save_weights(teacher, self.run_dir / "teacher.safetensors")
        return teacher

    # ------------------------------------------------------------------------------------ rows
    def build_row(self, kind: str) -> nn.Module:
        return build_row(self.cfg, self.modalities, self.heads, kind, self.input_shapes)

    def train_row(self, kind: str, teacher: MultimodalRecognizer | None) -> nn.Module:
        """Train row ``kind`` (:data:`ROWS`) and save ``<kind>.safetensors``; ``teacher`` is the
        frozen teacher a distilling row learns from."""
        row = _row_spec(kind)
        for key, value, known in (("teacher_input", self.cfg.student.teacher_input, ("dropped", "all")),
                                  ("single_pass_target", self.cfg.student.single_pass_target, ("labels", "teacher"))):
            if value not in known:
                raise ValueError(f"student.{key} must be one of {', '.join(known)}, got {value!r}")
        init = self.unimodal_init()  # fitted once, before the first row's clock starts
        t0 = time.perf_counter()
        scfg = self.cfg.student
        torch.manual_seed(self.cfg.run.seed)
        model = self.build_row(kind).to(self.device)
        if isinstance(model, MultimodalRecognizer):
            for m, path in init.items():
                load_weights(model.encoders[m], path)
        task = RowTask(model, row, self.heads, self.modalities, teacher=teacher if row.distil else None,
                       token_counts=getattr(self, "token_counts", None), alpha=scfg.alpha,
                       temperature=scfg.temperature, unimodal_aux=scfg.unimodal_aux,
                       single_passes=scfg.single_passes, single_pass_target=scfg.single_pass_target).to(self.device)
        p_final = scfg.modality_dropout if row.dropout else 0.0
        ocfg = scfg.optim
        # Seeing all modalities, the frozen teacher answers each training view the same way in every
        # epoch, whatever the student's drop: its logits are computed once (cached on disk) instead
        # of once per step.
        extra: dict[str, CachedSplit] = {}
        if row.distil and scfg.teacher_input == "all":
            extra["teacher_logits"] = self.teacher_logits_all(task)
        elif row.distil:
            extra["teacher_tokens"] = self.train_tokens

        def batches(epoch: int, start: int = 0):
            ramp = scfg.dropout_ramp_epochs
            rate = p_final * min(1.0, (epoch + 1) / ramp) if ramp > 0 else p_final
            return self.loader(self.train_split, kind, epoch, start, ocfg.batch_size, extra, dropout=rate)

        self.fit(task, batches, len(self.train_split), ocfg, kind)
        self.timings[kind] = time.perf_counter() - t0
        model.eval()
        if is_main():
            save_weights(model, self.run_dir / f"{kind}.safetensors")
        _log(f"{kind}: trained in {self.timings[kind]:.1f}s")
        return model

    def fit(self, task: nn.Module, batches: Any, samples: int, ocfg: OptimConfig, stage: str,
            draws: str | None = None, seed: int | None = None) -> dict[str, Any]:
        """Train ``task`` (a task module: ``forward(batch) -> losses``) with the one trainer: this
        rank's steps over ``samples`` training samples, ``train.*`` (precision, step checkpoints,
        log interval), per-step seeds from ``seed`` (default run.seed) and ``draws`` (default: the stage name)."""
        tcfg = self.cfg.train
        draws = draws or stage
        seed = self.cfg.run.seed if seed is None else seed
        return fit(task, lambda batch, module: module(batch), batches, steps_per_epoch(samples, ocfg.batch_size),
                   ocfg, self.run_dir, stage, self.progress, precision=tcfg.precision,
                   checkpoint_every=tcfg.checkpoint_every, seed=stable_seed(seed, draws),
                   log_every=tcfg.log_every, seed_name=draws)

    def unimodal_init(self) -> dict[str, Path]:
        """``student.init_unimodal``: modality -> weights of its student encoder fitted alone.

        Why: trained jointly from scratch, each encoder learns less than it could alone, as the
        fusion leans on whichever modality is easiest ("modality competition"; Du et al., ICML 2023,
        "On uni-modal feature learning in supervised multi-modal learning", who start multimodal
        models from unimodally trained encoders for this reason). A row that must answer from one
        modality pays for that directly: on the synthetic demo the student given depth alone scored
        43% action top-1 where the same depth encoder fitted alone scored 65%. Every fused row
        starts from these weights, so the rows still differ only in how they are trained.
        """
        wanted = list(self.cfg.student.init_unimodal)
        unknown = [m for m in wanted if m not in self.modalities]
        if unknown:
            raise ValueError(f"student.init_unimodal names {unknown}, "
                             f"not among data.modalities {list(self.modalities)}")
        if self._init_paths is None:
            paths = {}
            for m in wanted:
                paths[m] = self.fit_unimodal(m, self.cfg.student.model, "student_unimodal")
            self._init_paths = paths
        return self._init_paths

    def teacher_logits_all(self, task: RowTask) -> CachedSplit:
        """Per training sample and view, the teacher's logits with all of its modalities
        (``student.teacher_input: all``), cached on disk in the run directory (float32) by the
        teacher's weights: every rank computes its share once, every KD row reads them."""
        teacher = task.teacher
        assert teacher is not None
        tasks = tuple(self.heads)
        from actdistill.engine.fewshot import weights_hash

        key = {"kind": "teacher_logits", "teacher": weights_hash(teacher.fusion), "tokens": self.train_tokens.cache.key}
        shard = self.shard

        def fn(tokens: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
            return {t: v.cpu() for t, v in task.teacher_logits(tokens, present.to(self.device)).items()}

        root = self.run_dir / "cache"
        with FeatureCache(root, "teacher-logits", key, dtype=None, writer=shard.writer) as cache:
            map_split(self.train_tokens, fn, cache, shard, "teacher logits", self.progress, chunk=self.cfg.cache.chunk)
        barrier()
        cache = FeatureCache(root, "teacher-logits", key, dtype=None)
        if cache.nbytes() <= self.cfg.cache.in_memory_mb * 2**20:
            cache.preload()
        return CachedSplit(cache, self.train_tokens.uids, None, tasks, self.train_tokens.views,
                           positions=self.train_tokens.positions)

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, name: str, predict_one: Any, split: CachedSplit,
                 encode: Any = None) -> dict[str, Any]:
        """Both protocols on ``split`` (test clips or test tokens), read batch by batch; a
        sample's logits are the mean over its test views. ``encode(inputs, present)``, if given,
        maps each view of a batch once before ``predict_one`` runs for every mask on it."""
        def predict(batch: dict[str, Any], present: torch.Tensor) -> dict[str, torch.Tensor]:
            outs = [predict_one({m: x.to(self.device) for m, x in inp.items()}, present.to(self.device))
                    for inp in batch["views"]]
            return {t: torch.stack([o[t] for o in outs]).mean(0).cpu() for t in outs[0]}

        shard = Shard.of_rank()  # every rank scores its share of the test samples; the shares are gathered

        def batches() -> Any:
            rows = [i for i in range(len(split)) if i % shard.count == shard.index]
            loader = eval_loader(split, self.cfg.eval.batch_size, self.cfg.data.num_workers, rows)
            for b in tqdm(loader, desc=f"evaluate {name}", unit="batch", leave=False,
                          disable=not (self.progress and is_main())):
                if encode is not None:
                    with torch.no_grad():
                        b["views"] = [encode(v, b["present"]) for v in b["views"]]
                yield b

        t0 = time.perf_counter()
        res = evaluate_missing_modalities(predict, batches(), self.modalities, self.cfg.eval.drop_rates,
                                          self.cfg.eval.seed, drop_repeats=self.cfg.eval.drop_repeats,
                                          gather=lambda part: Collected.merge(gather_objects(part)))
        self.timings[f"eval_{name}"] = time.perf_counter() - t0
        return res

    def evaluate_teacher(self, teacher: MultimodalRecognizer) -> dict[str, Any]:
        """:meth:`evaluate` of the frozen teacher on the cached test tokens, kept in
        ``<cache.root>/teacher-eval/`` by everything it depends on (the fusion's weights, the test
        tokens' cache key, the evaluation settings, the world size): the seeds of a study with a
        shared teacher, and a rerun of the same run, read seed 0's result instead of scoring the
        same teacher on the same clips again (tens of seconds in the demo). ``torch.load`` with
        ``weights_only``: the file holds tensors, numbers and strings only."""
        from actdistill.engine.distributed import from_main, world_size
        from actdistill.engine.fewshot import weights_hash

        e = self.cfg.eval
        key = {"kind": "teacher_eval", "teacher": weights_hash(teacher.fusion), "tokens": self.test_tokens.cache.key,
               "modalities": list(self.modalities), "heads": dict(self.heads), "drop_rates": list(e.drop_rates),
               "seed": e.seed, "drop_repeats": e.drop_repeats, "batch_size": e.batch_size, "world": world_size(),
               "device": self.device.type}
        path = Path(self.cfg.cache.root) / "teacher-eval" / f"{cache_key_hash(key)}.pt"
        t0 = time.perf_counter()
        res: dict[str, Any] | None = None
        if from_main(path.is_file):
            try:
                res = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # unreadable (truncated, foreign): score it again
                _log(f"teacher: cannot read {path} ({err}); evaluating again")
        if all(gather_objects(res is not None)):  # every rank takes the same branch: evaluate gathers
            self.timings["eval_teacher"] = time.perf_counter() - t0
            _log(f"teacher: evaluation read from {path}")
            return res  # type: ignore[return-value]
        res = self.evaluate("teacher", lambda tok, pr: teacher.fusion(tok, pr, self.token_counts)["logits"],
                            self.test_tokens)
        if is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(res, tmp)
            os.replace(tmp, path)
        return res

    def evaluate_row(self, name: str, model: nn.Module) -> dict[str, Any]:
        """:meth:`evaluate` for a trained row. A :class:`MultimodalRecognizer`'s encoders see one
        modality each and never the mask, so each test view of a batch is encoded once and only the
        fusion runs for each of the ~65 masks (subsets and drop draws): the same logits (eval mode),
        about 8x faster in the demo. Other models (late fusion) run whole for every mask."""
        model.eval()
        if not isinstance(model, MultimodalRecognizer):
            return self.evaluate(name, lambda inp, pr: model(inp, pr)["logits"], self.test_split)
        counts: dict[str, int] = {}

        def encode(inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
            tokens, c = model.encode({m: x.to(self.device) for m, x in inputs.items()}, present.to(self.device))
            counts.update(c)
            return tokens

        return self.evaluate(name, lambda tok, pr: model.fusion(tok, pr, counts)["logits"], self.test_split, encode)

    def efficiency(self, model: nn.Module, kind: str) -> dict[str, dict[str, float]]:
        """Per subset: params used, GFLOPs/clip, peak activation memory, latency (batch 1), throughput."""
        ecfg = self.cfg.eval
        split = self.test_split
        out: dict[str, dict[str, float]] = {}
        model = model.eval().to(self.device)
        for subset in modality_subsets(self.modalities):
            sel = torch.tensor([m in subset for m in self.modalities])
            rows = (split.present & sel).any(1).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            inputs, present = self._subset_batch(rows, subset, ecfg.latency_batch)
            prof = profile_forward(lambda i=inputs, p=present: model(i, p), ecfg.latency_batch,
                                   self._params(model, subset), ecfg.warmup, ecfg.latency_repeats, self.device)
            res: dict[str, float] = {k: prof[k] for k in ("params", "gflops", "peak_mem_mb", "latency_ms",
                                                         "latency_min_ms", "latency_max_ms")}
            # throughput is only timed: FLOPs and memory per clip were counted above
            inputs, present = self._subset_batch(rows, subset, ecfg.throughput_batch)
            timing = time_fn(lambda i=inputs, p=present: model(i, p), ecfg.warmup, ecfg.repeats, self.device)
            res["throughput"] = ecfg.throughput_batch / (timing["median_ms"] / 1000.0)
            res["throughput_batch"] = ecfg.throughput_batch
            out[subset_name(subset)] = res
        return out

    def _subset_batch(self, rows: torch.Tensor, subset: tuple[str, ...],
                      bs: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``bs`` of the test clips ``rows`` (cycled, view 0), with only ``subset``'s inputs marked present."""
        ds = ViewDataset(self.test_split, 0)
        b = CollateViews(self.test_split)([ds[int(rows[k % len(rows)])] for k in range(bs)])
        sel = torch.tensor([m in subset for m in self.modalities])
        return ({m: x.to(self.device) for m, x in b["inputs"].items() if m in subset},
                (b["present"] & sel).to(self.device))

    @staticmethod
    def _params(model: nn.Module, subset: tuple[str, ...]) -> int:
        """Parameters that take part in a forward on ``subset`` (encoders of absent modalities idle)."""
        encoders = getattr(model, "encoders", None)
        total = count_parameters(model)
        if encoders is None:
            return total
        return total - sum(count_parameters(e) for m, e in encoders.items() if m not in subset)


# ------------------------------------------------------------------------------------------ run + report
def extract(cfg: KarmmaConfig, shard: Shard | None = None) -> list[str]:
    """``actdistill extract``: decode ``shard``'s share of both splits' clips and, when every
    teacher extractor is available (pretrained, or its unimodal fit cached), cache their tokens.
    No run directory is written; returns the lines to print."""
    from actdistill.data.datasets.synthetic_loader import ensure_synthetic

    validate(cfg)
    if cfg.data.dataset == "synthetic" and (shard is None or shard.count == 1):
        ensure_synthetic(cfg.data.root, int(cfg.data.options.get("seed", 0)),
                         str(cfg.data.options.get("size", "small")), cfg.run.progress)
        cfg.data.options["generate"] = False
    init_from_env(cfg.run.dist_timeout_min)
    pipe = KarmmaPipeline(cfg, None, shard)
    pipe.load_data()
    lines = [f"shard {pipe.shard.index}/{pipe.shard.count}: clips of {len(pipe.train_split)} train and "
             f"{len(pipe.test_split)} test samples cached under {cfg.cache.root}"]
    try:
        extractors = pipe.build_extractors(fit=False)
    except DataError as err:
        return [*lines, f"teacher tokens not extracted: {err}"]
    pipe.teacher_tokens(extractors)
    return [*lines, f"teacher tokens cached for {len(pipe.train_tokens)} train and {len(pipe.test_tokens)} "
                    f"test samples ({pipe.timings['teacher_tokens']:.1f}s)"]



def prepare_run(cfg: KarmmaConfig) -> Path:
    """Generate the synthetic dataset if it is the one asked for and absent, open the run directory
    and write the merged config into it: once, on rank 0 under ``torchrun`` (every rank gets the path)."""
    from actdistill.data.datasets.synthetic_loader import ensure_synthetic
    from actdistill.engine.distributed import from_main
    from actdistill.rundir import open_run_dir, save_config

    validate(cfg)  # every rank: a bad value stops all of them, before the dataset is generated

    def setup() -> Path:
        if cfg.data.dataset == "synthetic":
            opts = cfg.data.options
            ensure_synthetic(cfg.data.root, int(opts.get("seed", 0)), str(opts.get("size", "small")), cfg.run.progress)
        run_dir = open_run_dir(cfg.run.out_dir, cfg.run.name, cfg.run.resume)
        save_config(run_dir, cfg)
        print(f"run directory: {run_dir}", flush=True)
        return run_dir

    run_dir = from_main(setup, cfg.run.dist_timeout_min)
    if cfg.data.dataset == "synthetic":
        cfg.data.options["generate"] = False  # generated above: the adapter only reads it
    return run_dir


def run_karmma(cfg: KarmmaConfig, run_dir: Path) -> dict[str, Any]:
    """The whole pipeline; writes summary.json, report.md, predictions CSVs and plots into ``run_dir``."""
    from actdistill.evaluation.report import (
        plot_accuracy_vs_gflops,
        plot_drop_curves,
        plot_subset_accuracy,
        write_class_views,
        write_predictions_csv,
    )
    from actdistill.rundir import write_json

    validate(cfg)
    t_start = time.perf_counter()
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    pipe = KarmmaPipeline(cfg, run_dir)
    pipe.load_data()
    extractors = pipe.build_extractors()
    pipe.teacher_tokens(extractors)
    teacher = pipe.train_teacher(extractors)
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {"teacher": teacher}
    results["teacher"] = pipe.evaluate_teacher(teacher)
    _log(f"teacher: full {results['teacher']['subsets'][subset_name(pipe.modalities)]:.1f}, "
         f"auc {results['teacher']['auc']:.1f}")
    for kind in cfg.rows:
        model = pipe.train_row(kind, teacher if _row_spec(kind).distil else None)  # any registered distilling row
        models[kind] = model
        results[kind] = pipe.evaluate_row(kind, model)
        full = results[kind]["subsets"][subset_name(pipe.modalities)]
        _log(f"{kind}: full {full:.1f}, auc {results[kind]['auc']:.1f}")
    if not is_main():
        return {}
    summary: dict[str, Any] = {}
    profiled: dict[str, tuple[str, dict[str, dict[str, float]]]] = {}  # architecture -> (row, efficiency)
    t_eff = time.perf_counter()
    for name, res in results.items():
        eff: dict[str, dict[str, float]] = {}
        measured_on = None
        if cfg.eval.efficiency:
            arch = row_architecture(name)
            if arch not in profiled:
                profiled[arch] = (name, pipe.efficiency(models[name], name))
            measured_on, eff = profiled[arch]
        summary[name] = {
            "subsets": res["subsets"],
            "drop_curve": res["drop_curve"],
            "auc": res["auc"],
            "worst_subset": res["worst_subset"],
            "efficiency": eff,
            "efficiency_measured_on": measured_on,
            "metrics": {"subsets": res["subset_metrics"], "drop": res["drop_metrics"]},
        }
        full = res["full"]
        write_predictions_csv(run_dir / f"predictions_{name}.csv", pipe.test_split.uids, full["logits"],
                              full["labels"], pipe.classes)
    if cfg.eval.efficiency:
        pipe.timings["efficiency"] = time.perf_counter() - t_eff
    write_per_clip(run_dir / "per_clip.safetensors", results, pipe.test_split.uids, cfg.eval.drop_rates)
    write_json(run_dir / "summary.json", summary)
    rates = cfg.eval.drop_rates
    plot_drop_curves(run_dir / "drop_curve.png", {n: s["drop_curve"] for n, s in summary.items()}, rates)
    plot_subset_accuracy(run_dir / "subset_accuracy.png", {n: s["subsets"] for n, s in summary.items()})
    if cfg.eval.efficiency:
        pts = {n: [(s["efficiency"][k]["gflops"], s["subsets"][k], k) for k in s["subsets"] if k in s["efficiency"]]
               for n, s in summary.items()}
        plot_accuracy_vs_gflops(run_dir / "accuracy_vs_gflops.png", pts)
    views = write_class_views(run_dir, {n: r["full"] for n, r in results.items() if "full" in r}, pipe.classes)
    pipe.timings["total"] = time.perf_counter() - t_start
    ratios = efficiency_ratios(summary, pipe.modalities)
    write_json(run_dir / "run_info.json", {"timings_s": pipe.timings, "efficiency_ratios": ratios, "heads": pipe.heads,
                                           "train_clips": len(pipe.train_split),
                                           "test_clips": len(pipe.test_split),
                                           "skipped": pipe.train_split.skipped,
                                           "skipped_test": pipe.test_split.skipped,
                                           "problems": len(pipe.data_record["problems"])})
    where = f"split `{cfg.data.test_split}` of {cfg.data.dataset} ({len(pipe.test_split)} clips)"
    (run_dir / "report.md").write_text(render_report(summary, pipe.modalities, rates, ratios, pipe.timings, views,
                                                     where))
    return summary


def write_per_clip(path: Path, results: Mapping[str, Mapping[str, Any]], uids: Sequence[str],
                   drop_rates: Sequence[float]) -> None:
    """Every row's per-test-clip scores (100/0 on the headline top-1, NaN where not scored): one
    ``[N]`` tensor per row and subset (``<row>/subset/<subset>``) and ``[P, N]`` per row for the drop
    rates (``<row>/drop``, mean over draws). Why: two rows evaluated on the same clips under the
    same drop draws can then be compared clip by clip (paired), which is what a seed study does
    (:mod:`actdistill.engine.karmma_study`); summary.json holds only the means."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    order: list[str] | None = None
    for row, res in results.items():
        ps = res["per_sample"]
        row_uids = [uids[int(i)] for i in ps["index"]]
        if order is None:
            order = row_uids
        elif row_uids != order:
            raise RuntimeError(f"{row}: evaluated on other clips than {next(iter(results))}")
        for name, v in ps["subsets"].items():
            tensors[f"{row}/subset/{name}"] = v.float().contiguous()
        tensors[f"{row}/drop"] = ps["drop"].float().contiguous()
    meta = {"uids": json.dumps(order or []), "drop_rates": json.dumps(list(drop_rates)),
            "rows": json.dumps(list(results)), "score": "100 x correct on the headline top-1; NaN: not scored"}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_per_clip(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`write_per_clip`'s tensors and its metadata (uids, drop_rates, rows) decoded."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            meta = {k: json.loads(v) if k != "score" else v for k, v in (fh.metadata() or {}).items()}
    except Exception as err:
        raise DataError(path, f"not a readable per-clip file ({err})") from None
    return tensors, meta


def efficiency_ratios(summary: dict[str, Any], modalities: tuple[str, ...]) -> dict[str, Any]:
    """Each row's cost against the teacher's on the full input, as measurements: GFLOPs, parameter
    and activation-memory ratios, and the latency speedup (teacher latency / row latency).

    Why no pass/fail: a run reports what it measured; thresholds chosen for one dataset (the
    demo's former "targets") do not grade a run on another, and accuracy comparisons between rows
    need their intervals (docs/karmma.md), not a boolean."""
    full = subset_name(modalities)
    teacher = summary.get("teacher", {}).get("efficiency", {}).get(full)
    if not teacher:
        return {}
    out: dict[str, Any] = {}
    for name, res in summary.items():
        row = res.get("efficiency", {}).get(full)
        if name == "teacher" or not row:
            continue
        out[name] = {"gflops_ratio": row["gflops"] / teacher["gflops"],
                     "params_ratio": row["params"] / teacher["params"],
                     "peak_mem_ratio": row["peak_mem_mb"] / teacher["peak_mem_mb"] if teacher["peak_mem_mb"] else None,
                     "latency_speedup": teacher["latency_ms"] / row["latency_ms"]}
    return out


def render_report(summary: dict[str, Any], modalities: tuple[str, ...], rates: list[float],
                  ratios: dict[str, Any], timings: dict[str, float],
                  views: tuple[dict[str, Any], dict[str, Any]] | None = None, where: str | None = None) -> str:
    """report.md. ``ratios``: :func:`efficiency_ratios`. ``where``: the evaluated split, named at the
    top so that no number is read without the split it comes from. ``views``: (calibration, per-class) from
    :func:`~actdistill.evaluation.report.write_class_views`, summarised so a reader sees ECE and the
    student's weakest classes before trusting it."""
    from actdistill.evaluation.report import class_views_markdown, markdown_table

    rows = list(summary)
    subsets = list(next(iter(summary.values()))["subsets"])
    lines = ["# KARMMA run report", ""]
    if where:
        lines += [f"Every accuracy below is measured on {where}.", ""]
    lines += ["Action top-1 (%) on every modality subset:", ""]
    lines.append(markdown_table(["subset", *rows], [[s, *[summary[r]["subsets"][s] for r in rows]] for s in subsets]))
    lines += ["", "Dynamic drop-rate curve (action top-1 %, each modality dropped with probability p, "
              "at least one kept):", ""]
    lines.append(markdown_table(["p", *rows], [[p, *[summary[r]["drop_curve"][i] for r in rows]]
                                              for i, p in enumerate(rates)]))
    ci = [[r, summary[r]["metrics"]["subsets"][subset_name(modalities)].get("ci95"),
           summary[r]["metrics"]["drop"][-1].get("ci95")] for r in rows if "metrics" in summary[r]]
    if ci and all(c[1] and c[2] for c in ci):
        lines += ["", "95% Wilson intervals of action top-1 (how far apart two rows must be to differ):", "",
                  markdown_table(["row", "all modalities", f"p = {rates[-1]}"],
                                 [[r, f"[{a[0]:.1f}, {a[1]:.1f}]", f"[{b[0]:.1f}, {b[1]:.1f}]"] for r, a, b in ci])]
    lines += ["", markdown_table(["row", "AUC (drop curve)", "worst subset", "worst acc"],
                                 [[r, summary[r]["auc"], summary[r]["worst_subset"]["subset"],
                                   summary[r]["worst_subset"]["accuracy"]] for r in rows])]
    full = subset_name(modalities)
    if all(summary[r]["efficiency"] for r in rows):
        lines += ["", f"Efficiency on this machine (full input `{full}`; GFLOPs = floating-point operations "
                  "per clip, not MACs; latency at batch 1, throughput at batch 16; rows that run the same "
                  "network share one measurement):", ""]
        lines.append(markdown_table(
            ["row", "params (M)", "GFLOPs", "peak act. mem (MB)", "latency (ms)", "throughput (clips/s)"],
            [[r, summary[r]["efficiency"][full]["params"] / 1e6, summary[r]["efficiency"][full]["gflops"],
              summary[r]["efficiency"][full]["peak_mem_mb"], summary[r]["efficiency"][full]["latency_ms"],
              summary[r]["efficiency"][full]["throughput"]] for r in rows]))
    if ratios:
        lines += ["", f"Cost against the teacher (full input `{full}`, measured on this machine; ratios, not "
                  "pass/fail):", ""]
        lines.append(markdown_table(["row", "GFLOPs ratio", "params ratio", "peak act. mem ratio", "latency speedup"],
                                    [[r, v["gflops_ratio"], v["params_ratio"], v["peak_mem_ratio"],
                                      v["latency_speedup"]] for r, v in ratios.items()]))
    if views is not None:
        lines += class_views_markdown(*views)
    lines += ["", "Stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), ""]
    return "\n".join(lines)
