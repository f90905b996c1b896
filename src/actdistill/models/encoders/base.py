"""Encoder contract, the ``ENCODERS`` registry, freezing, and safe weight loading.

An encoder turns one modality's ``[B, T, ...]`` input into a token sequence ``[B, n, d]``. The
fusion model only needs ``out_dim`` (``d``) and ``num_tokens(T)`` (``n``), so every backbone,
from a 30 k-parameter test CNN to a frozen video transformer, plugs in the same way. ``n`` must
be computable without running the encoder: the KARMMA embedding keeps slots for a modality that
no sample of the batch has, and needs to know how many.
"""

from __future__ import annotations

import importlib.util
import inspect
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from actdistill.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

DEFAULT_CHANNELS = {"rgb": 3, "depth": 1, "flow": 2, "audio": 1}
"""Channels of one frame per modality (flow: u/v for ``stack=1``; see the data layer)."""


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` everywhere; returns the module for chaining.

    Eval mode matters as much as the gradients: a frozen extractor's BatchNorm statistics and
    dropout must not change with the batches it sees, or cached features would go stale.
    """
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Encoder(nn.Module):
    """Base class: subclasses set ``modality``/``out_dim`` and implement ``encode`` and ``num_tokens``.

    ``forward`` runs ``encode`` without autograd when the encoder is frozen (saves the activation
    memory a frozen extractor never needs) and ``train()`` keeps a frozen encoder in eval mode.
    """

    modality: str
    out_dim: int
    frozen: bool = False

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def num_tokens(self, num_frames: int) -> int:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.encode(x)
        return self.encode(x)

    def freeze(self) -> Encoder:
        freeze(self)
        self.frozen = True
        return self

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False if self.frozen else mode)

    def _output(self, feat_dim: int, out_dim: int | None, temporal_layers: int, temporal_kernel: int) -> None:
        """The tail every encoder shares: an optional projection of its ``feat_dim`` features to
        ``out_dim`` (``proj``) and the temporal mixer over its tokens (``temporal``)."""
        self.proj: nn.Module = nn.Linear(feat_dim, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or feat_dim
        self.temporal = TemporalMixer(self.out_dim, temporal_layers, temporal_kernel)

    def _finish(self, frozen: bool) -> None:
        """Called at the end of every subclass ``__init__`` so ``freeze=True`` works uniformly."""
        if frozen:
            self.freeze()


def _takes_modality(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return True
    return "modality" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def encoder_contract(obj: Any) -> str | None:
    """What is wrong with registering ``obj`` as an encoder (``None``: nothing): an
    :class:`Encoder` subclass defining ``encode`` and ``num_tokens``, or a function returning one;
    either takes ``modality=`` (and the config entry's options) as keyword arguments."""
    if inspect.isclass(obj):
        if not issubclass(obj, Encoder):
            return f"{obj.__module__}.{obj.__qualname__} is not a subclass of actdistill.models.encoders.Encoder"
        missing = [m for m in ("encode", "num_tokens") if getattr(obj, m) is getattr(Encoder, m)]
        if missing:
            return f"{obj.__name__} does not define {' or '.join(missing)}"
    elif not callable(obj):
        return f"{obj!r} is neither an Encoder subclass nor a function returning one"
    if not _takes_modality(obj):
        return f"{getattr(obj, '__qualname__', obj)!r} takes no modality= keyword argument"
    return None


def built_encoder_problem(enc: Any) -> str | None:
    """What is wrong with ``enc``, the product of a registered encoder (``None``: nothing)."""
    if not isinstance(enc, Encoder):
        return f"a {type(enc).__qualname__}, not an actdistill.models.encoders.Encoder"
    out_dim = getattr(enc, "out_dim", None)
    if not isinstance(out_dim, numbers.Integral) or isinstance(out_dim, bool) or out_dim < 1:
        return f"an encoder whose out_dim is {out_dim!r}; set self.out_dim (the token width d) in __init__"
    return None


ENCODERS: Registry[Encoder] = Registry(
    "encoder", contract=encoder_contract, check_built=built_encoder_problem,
    what="an encoder is an Encoder subclass, or a function returning one, built with modality=<name> and "
    "the config entry's options: encode([B, T, ...]) -> tokens [B, n, d], num_tokens(T) -> n, and an "
    "integer out_dim = d; see docs/extending.md",
)


class FrozenExtractor(Encoder):
    """Wrap any encoder-like module as a frozen extractor (eval forever, no grad).

    Forwards ``modality``, ``out_dim`` and ``num_tokens`` of the wrapped module when it has them,
    so a frozen backbone is a drop-in replacement for a trainable one.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.modality = getattr(module, "modality", "")
        self.out_dim = int(getattr(module, "out_dim", 0))
        self.freeze()

    def encode(self, x: Tensor) -> Tensor:
        return self.module(x)

    def num_tokens(self, num_frames: int) -> int:
        fn = getattr(self.module, "num_tokens", None)
        if fn is None:
            raise AttributeError(f"{type(self.module).__name__} does not define num_tokens")
        return int(fn(num_frames))


def modality_kind(modality: str) -> str:
    """``"imu:acc"`` -> ``"imu"``: the kind whose encoder a named modality uses.

    The same rule as :func:`actdistill.data.modalities.base.modality_kind` (which also validates
    the name), repeated here so that building a model never imports the data readers.
    """
    return modality.partition(":")[0]


def encoder_entry(encoders: Mapping[str, Any], modality: str) -> Any:
    """The config entry for ``modality``'s encoder: its own (``encoders["imu:acc"]``), else its
    kind's (``encoders["imu"]``), else ``None``. Each named modality still gets its own encoder
    *instance*; the kind's entry only says how to build it, so two IMUs never share weights."""
    if modality in encoders:
        return encoders[modality]
    return encoders.get(modality_kind(modality))


TAKES_IN_CHANNELS = frozenset({"compact", "frames", "flow", "spectrogram", "imu", "mobilenet_v2", "timm"})
"""Built-in encoders with an ``in_channels`` option (``compact`` for every kind but boxes); a
registered encoder of a user's takes it when its factory has an ``in_channels`` parameter."""


def _factory_in_channels(name: str) -> tuple[bool, int | None]:
    """Whether registered encoder ``name``'s factory (class or function) has an ``in_channels``
    parameter, and its default when that is an integer."""
    if name not in ENCODERS:
        return False, None
    try:
        param = inspect.signature(ENCODERS.get(name)).parameters.get("in_channels")
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False, None
    if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        return False, None
    default = param.default
    return True, default if isinstance(default, int) and not isinstance(default, bool) else None


def takes_in_channels(name: str) -> bool:
    """Whether encoder ``name`` has an ``in_channels`` option the data can fill in."""
    return name in TAKES_IN_CHANNELS or _factory_in_channels(name)[0]
_CHANNEL_KINDS = ("rgb", "flow", "depth", "audio", "imu")  # per-sample shape [T, C, ...]


def data_channels(modality: str, shape: Sequence[int] | None) -> int | None:
    """Channels of ``modality``'s per-sample input ``[T, C, ...]`` (``None``: no channel axis, as
    for boxes ``[T, K, 6]``, or no shape known)."""
    if shape is None or modality_kind(modality) not in _CHANNEL_KINDS or len(shape) < 3:
        return None
    return int(shape[1])


def default_in_channels(name: str, modality: str, options: Mapping[str, Any]) -> int | None:
    """The ``in_channels`` encoder ``name`` uses for ``modality`` when not given (``None``: it has
    no default there, or no such option)."""
    kind = modality_kind(modality)
    if name == "compact":
        name = {"rgb": "frames", "depth": "frames", "flow": "flow", "audio": "spectrogram", "imu": "imu"}.get(kind, "")
    if name == "flow":
        return 2 * int(options.get("stack", 1))
    if name not in TAKES_IN_CHANNELS:
        return _factory_in_channels(name)[1]
    return {"frames": DEFAULT_CHANNELS.get(kind), "spectrogram": 1, "imu": 6, "mobilenet_v2": 3,
            "timm": 3}.get(name)


def with_data_channels(name: str, modality: str, options: Mapping[str, Any], shape: Sequence[int] | None,
                       where: str = "encoders") -> dict[str, Any]:
    """``options`` with ``in_channels`` taken from the data's per-sample ``shape`` when not given.

    Built-in encoders and any registered encoder whose factory has an ``in_channels`` parameter
    (:func:`takes_in_channels`) get it. Why: an IMU CSV may hold 3, 6 or 9 columns, and the
    encoder's width used to be a guess the user had to make (``imu`` defaulted to 6) with a shape
    error at the first forward as the only feedback. A given ``in_channels`` (or a flow ``stack``,
    which means ``2 * stack`` channels) that contradicts the data is one ValueError naming the
    modality and both numbers; ``where`` names the config section in it. The option is added only
    where the data differs from the encoder's default, so the options (and the cache keys built
    from them) of configs that already worked do not change.
    """
    out = dict(options)
    have = data_channels(modality, shape)
    if have is None or not takes_in_channels(name) or (name == "compact" and modality_kind(modality) == "boxes"):
        return out
    flow_like = name == "flow" or (name == "compact" and modality_kind(modality) == "flow")
    if "in_channels" in out:
        given, what = int(out["in_channels"]), "in_channels"
    elif flow_like and "stack" in out:
        given, what = 2 * int(out["stack"]), f"stack {out['stack']} (= {2 * int(out['stack'])} channels)"
    else:
        if have != default_in_channels(name, modality, out):
            out["in_channels"] = have
        return out
    if given != have:
        raise ValueError(f"{where}.{modality}: {what} is {given} but the data's {modality} input has {have} "
                         f"channels (per-sample shape {list(shape or ())}); drop in_channels to take it from "
                         "the data, or change the reader options")
    return out


def build_encoder(name: str, modality: str, freeze: bool = False, **options: Any) -> Encoder:
    """Build a registered encoder by name; ``freeze`` freezes it whatever its own options say.

    ``modality`` may be a named one (``imu:acc``): the encoder is built for its kind and keeps the
    full name as its ``modality`` (error messages then say which sensor)."""
    enc = ENCODERS.build(name, modality=modality, **options)
    if freeze and not enc.frozen:
        enc.freeze()
    return enc


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a foreign checkpoint without unpickling arbitrary objects.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``. Common wrappers (``state_dict``, ``model``, ``module``) and
    DDP's ``module.`` prefix are removed, so checkpoints saved by training scripts load directly.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(p), device="cpu")
    else:
        from actdistill.engine.checkpoint import torch_load_weights_only

        sd = torch_load_weights_only(p)
    for key in ("state_dict", "model", "module", "model_state"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping):
        raise ValueError(f"{p}: expected a state dict (mapping of tensors), got {type(sd).__name__}")
    out = {str(k): v for k, v in sd.items() if isinstance(v, Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def drop_prefixes(sd: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """State dict without the keys of removed heads (classifier weights the encoder does not have)."""
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package (no import side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder).joinpath(*parts)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{'/'.join(parts)} not found in package {package!r}")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a module, so the statistics move with ``.to(device)``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class TemporalMixer(nn.Module):
    """Light temporal mixing of per-frame tokens: residual depthwise 1D conv over time + MLP.

    Per-frame 2D encoders see no motion; a kernel-3 depthwise conv lets each token look at its
    neighbours in time at negligible cost. ``layers=0`` makes it the identity.
    """

    def __init__(self, dim: int, layers: int = 1, kernel: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm": nn.LayerNorm(dim),
                        "conv": nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim),
                        "mlp": nn.Sequential(nn.Linear(dim, dim), nn.GELU()),
                    }
                )
            )

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        """``x``: ``[B, T * S, d]`` (time-major, ``S`` tokens per frame) -> same shape."""
        if not self.blocks:
            return x
        b, n, d = x.shape
        s = n // num_frames
        for blk in self.blocks:
            h = blk["norm"](x).view(b, num_frames, s, d).permute(0, 2, 3, 1).reshape(b * s, d, num_frames)
            h = blk["conv"](h).view(b, s, d, num_frames).permute(0, 3, 1, 2).reshape(b, n, d)
            x = x + blk["mlp"](h)
        return x


_POOL_FNS = {
    "avg": nn.functional.adaptive_avg_pool2d,
    "max": nn.functional.adaptive_max_pool2d,
    "avgmax": lambda x, g: nn.functional.adaptive_avg_pool2d(x, g) + nn.functional.adaptive_max_pool2d(x, g),
}
# The same pools over fixed ``kernel`` windows (what adaptive pooling to a divisible grid uses).
_KERNEL_POOL_FNS = {
    "avg": nn.functional.avg_pool2d,
    "max": nn.functional.max_pool2d,
    "avgmax": lambda x, k: nn.functional.avg_pool2d(x, k) + nn.functional.max_pool2d(x, k),
}
POOLS = tuple(_POOL_FNS)


def check_pool(pool: str) -> str:
    """``pool`` if it is a known pooling name, else a ValueError listing the known ones."""
    if pool not in _POOL_FNS:
        raise ValueError(f"unknown pool {pool!r} (known: {', '.join(POOLS)})")
    return pool


def grid_tokens(feat: Tensor, grid: int, pool: str = "avg") -> Tensor:
    """``[N, C, h, w]`` feature maps -> ``[N, grid*grid, C]`` tokens by adaptive pooling.

    ``avg`` (the usual global average), ``max``, or ``avgmax`` (their sum). Why max: a small
    object in a cluttered frame covers a few cells of the last feature map, and averaging dilutes
    its response by the whole frame's area; a small from-scratch CNN learns such a scene far faster
    when the strongest response survives pooling.
    """
    pool = check_pool(pool)
    h, w = int(feat.shape[-2]), int(feat.shape[-1])
    if grid > 1 and h % grid == 0 and w % grid == 0:
        # The same windows as adaptive pooling, as a fixed-kernel pool: ONNX export has no adaptive
        # pooling to more than one cell when the input size is symbolic.
        pooled = _KERNEL_POOL_FNS[pool](feat, (h // grid, w // grid))
    else:
        pooled = _POOL_FNS[pool](feat, grid)
    return pooled.flatten(2).transpose(1, 2)


class SpatialSoftmax(nn.Module):
    """Where things are: ``K`` learned keypoints per feature map, as softmax-expected ``(x, y)``.

    A 1x1 conv turns ``[N, C, h, w]`` features into ``K`` maps; a softmax over each map's cells
    (with a learned temperature) gives a distribution whose expected coordinates in ``[-1, 1]``
    are the keypoint (the "spatial softmax" of Levine et al., 2016, JMLR 17(39)). Returns
    ``[N, 2K]`` as ``x_1..x_K, y_1..y_K``.

    Why: global pooling is translation-invariant, so a per-frame CNN pooled to one token per frame
    cannot tell *where* the object is, and a verb that is a path (push away, pull closer, lift up)
    is invisible to it. Appending keypoints to the pooled token gives the temporal layers the path
    at the cost of one 1x1 conv.
    """

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        if keypoints < 1:
            raise ValueError(f"keypoints must be at least 1, got {keypoints}")
        self.keypoints = keypoints
        self.maps = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, feat: Tensor) -> Tensor:
        n, _, h, w = feat.shape
        att = (self.maps(feat).flatten(2) / self.log_temperature.exp()).softmax(-1).view(n, self.keypoints, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=att.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=att.dtype)
        ex = (att.sum(2) * xs).sum(-1)
        ey = (att.sum(3) * ys).sum(-1)
        return torch.cat([ex, ey], dim=1)


def fold_frames(x: Tensor, trailing: int) -> tuple[Tensor, int, int]:
    """``[B, T, *trailing dims]`` -> ``[B*T, *trailing]``; returns it with B and T."""
    if x.dim() != trailing + 2:
        raise ValueError(f"expected [B, T, ...] with {trailing} trailing dims, got shape {tuple(x.shape)}")
    b, t = x.shape[:2]
    return x.reshape(b * t, *x.shape[2:]), b, t
