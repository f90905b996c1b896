"""The episode contract every few-shot head shares, the few-shot registry, and ProtoNet.

**The contract** (:class:`EpisodicHead`). A head receives one episode: support clips with episode
labels ``0..N-1``, query clips, optionally the query episode labels (for the loss) and the "real"
labels (each clip's index in the split's sorted class list, which selects text prompts). Clips
are frame features ``[B, T, D]`` (or raw frames that a head's own backbone turns into them).

- ``forward(support, support_labels, query, query_labels=None, *, support_real_labels=None,
  query_real_labels=None) -> {"logits": [Q, N], ...}``; with ``query_labels`` also ``loss`` and
  its components ``loss_*``. The loss is computed here, in the method's module: a trainer only
  backpropagates ``loss``.
- ``loss_scaled``: whether ``loss`` is already divided by the episodes accumulated per optimizer
  step (CLIP-M²DF's is, as in its reference; the others are per-episode means or sums).
- ``video_stage(x) -> dict`` and ``episode_logits(support_stage, support_labels, query_stage, *,
  support_real_labels=None) -> {"logits": ...}``: the split of an evaluation episode into what
  depends on one video only (computed once per test video) and the rest. The defaults stage the
  features themselves and run ``forward``; heads with a costly per-video part override both.
- ``uses_text`` and ``set_text_tables(train, test)``: heads that read class-name embeddings get
  the train and test tables (rows indexed by real labels).
- ``for_episodes(dim, options, text_dim, accumulate)``: how the few-shot pipeline builds the head
  at width ``dim`` from its config options.

**The registry.** :func:`register_head` adds a head to :data:`FEWSHOT_HEADS` (the only list of
few-shot methods: the pipeline knows methods through it alone) and to ``MODELS``.

ProtoNet lives here because it is the simplest head: the contract and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actdistill.models.base import MODELS
from actdistill.registry import Registry

__all__ = ["FEWSHOT_HEADS", "EpisodicHead", "FewShotHead", "ProtoNet", "build_backbone", "class_means",
           "episode_way", "fewshot_methods", "register_head"]

H = TypeVar("H", bound=type)

#: every few-shot method by name (the pipeline's only list of methods)
FEWSHOT_HEADS: Registry[nn.Module] = Registry(
    "few-shot method", contract=lambda obj: head_problem(obj),
    what="a few-shot method is an EpisodicHead subclass whose forward(support, support_labels, query, "
    "query_labels=None, *, support_real_labels=None, query_real_labels=None) returns {'logits': [Q, N], "
    "'loss' with query_labels}; register it with @register_head(name)",
)


def register_head(name: str) -> Callable[[H], H]:
    """Register an :class:`EpisodicHead` subclass as few-shot method ``name`` (and in ``MODELS``, so
    configs and tests build it by name like any model)."""

    def deco(cls: H) -> H:
        FEWSHOT_HEADS.register(name)(cls)  # checked against the head contract (head_problem)
        MODELS.register(name)(cls)
        return cls

    return deco


def fewshot_methods() -> list[str]:
    """Names of the registered few-shot methods (sorted)."""
    import actdistill.models.fewshot  # noqa: F401  (registers the built-in heads)

    return FEWSHOT_HEADS.names()

LOSS_REDUCTIONS = ("mean", "sum")


def build_backbone(spec: Any) -> nn.Module | None:
    """``None`` (inputs are features), a module, an encoder name, or ``{"name": ..., **options}``.

    Names go through the ``ENCODERS`` registry (modality ``rgb`` unless the options say
    otherwise), so configs pick a backbone exactly as they do for the other models.
    """
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        name, opts = spec, {}
    elif isinstance(spec, Mapping):
        opts = dict(spec)
        if "name" not in opts:
            raise ValueError(f"backbone options need a 'name', got {sorted(opts)}")
        name = str(opts.pop("name"))
    else:
        raise TypeError(f"backbone must be None, an nn.Module, a name or a mapping, got {type(spec).__name__}")
    from actdistill.models.encoders import build_encoder

    return build_encoder(name, modality=opts.pop("modality", "rgb"), **opts)


def episode_way(labels: Tensor) -> int:
    """Number of classes of an episode whose support labels must be exactly ``0..N-1``.

    Checked because every head indexes prototypes by label: a gap would silently create an
    empty (NaN) prototype.
    """
    if labels.dim() != 1 or labels.numel() == 0 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"support labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0:
        raise ValueError(f"support labels must be 0..N-1, got {sorted(set(labels.tolist()))}")
    way = int(labels.max()) + 1
    if bool((torch.bincount(labels, minlength=way) == 0).any()):
        raise ValueError(f"support labels must cover 0..N-1 without gaps, got {sorted(set(labels.tolist()))}")
    return way


def class_means(x: Tensor, labels: Tensor, way: int) -> Tensor:
    """Mean of ``x`` ``[S, ...]`` over the rows of each class -> ``[way, ...]`` (one matmul, no loop)."""
    onehot = F.one_hot(labels, way).to(x.dtype)  # [S, way]
    weights = onehot / onehot.sum(0, keepdim=True)
    return torch.einsum("sc,s...->c...", weights, x)


class EpisodicHead(nn.Module):
    """The few-shot head contract (module docstring), with the defaults most heads want."""

    #: ``loss`` is already divided by the number of episodes accumulated per optimizer step
    loss_scaled: ClassVar[bool] = False
    #: the head reads class-name embeddings (``set_text_tables``)
    uses_text: ClassVar[bool] = False
    #: the pipeline may load a reference checkpoint (reference key names) into it (``heads.init``)
    loads_reference_checkpoints: ClassVar[bool] = False

    @classmethod
    def for_episodes(cls, dim: int, options: Mapping[str, Any], text_dim: int | None = None,
                     accumulate: int = 1) -> EpisodicHead:
        """The head at feature width ``dim`` with the config's ``options``; ``text_dim``: width of the
        text tables it will get (text heads), ``accumulate``: episodes per optimizer step."""
        return cls(dim=dim, **options)

    def set_text_tables(self, train: Tensor | None, test: Tensor | None) -> None:
        """Install frozen class-name embeddings ``[C, text_dim]`` of the train and test splits."""
        if self.uses_text:
            raise NotImplementedError(f"{type(self).__name__} uses text but does not take text tables")

    def video_stage(self, x: Tensor) -> dict[str, Tensor]:
        """What depends on one video only (eval mode), for ``[B, T, D]`` features."""
        return {"f": x}

    def episode_logits(self, support: Mapping[str, Tensor], support_labels: Tensor, query: Mapping[str, Tensor],
                       *, support_real_labels: Tensor | None = None) -> dict[str, Tensor]:
        """Episode logits from stacked :meth:`video_stage` outputs (no loss)."""
        return self(support["f"], support_labels, query["f"], support_real_labels=support_real_labels)


def head_problem(obj: Any) -> str | None:
    """What is wrong with registering ``obj`` as a few-shot method (``None``: nothing)."""
    if not (isinstance(obj, type) and issubclass(obj, EpisodicHead)):
        what = f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else repr(obj)
        return f"{what} is not a subclass of actdistill.models.fewshot.EpisodicHead"
    if obj.forward is nn.Module.forward:
        return f"{obj.__name__} does not define forward"
    return None


class FewShotHead(EpisodicHead):
    """Base of the episodic heads: backbone, label checks, cross-entropy and auxiliary losses.

    Subclasses implement :meth:`head` on embedded clips and may return unweighted auxiliary
    losses under ``loss_*`` keys; ``loss_weights`` says how each enters ``loss``. The loss is
    the episode's cross-entropy averaged over queries (``loss_reduction="sum"`` sums, as TRX
    does); dividing by the number of accumulated episodes is the trainer's job.
    """

    loss_weights: dict[str, float]

    def __init__(self, dim: int | None = None, backbone: Any = None, loss_reduction: str = "mean") -> None:
        super().__init__()
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        self.backbone = build_backbone(backbone)
        if dim is None and self.backbone is not None:
            dim = getattr(self.backbone, "out_dim", None)
        self.dim = dim
        self.loss_reduction = loss_reduction
        self.loss_weights = {}

    def _need_dim(self) -> int:
        if self.dim is None:
            raise ValueError(f"{type(self).__name__} needs dim (the feature size) or a backbone with out_dim")
        return int(self.dim)

    def embed(self, clips: Tensor) -> Tensor:
        """``[B, T, ...]`` -> ``[B, T, D]`` through the backbone (identity without one)."""
        feats = self.backbone(clips) if self.backbone is not None else clips
        if feats.dim() != 3:
            raise ValueError(f"few-shot heads need frame features [B, T, D], got {tuple(feats.shape)}")
        if self.dim is not None and feats.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} was built for dim={self.dim}, got features of {feats.shape[-1]}")
        return feats

    def head(self, support: Tensor, labels: Tensor, query: Tensor, way: int, **kwargs: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        query_labels: Tensor | None = None,
        *,
        support_real_labels: Tensor | None = None,
        query_real_labels: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Tensor]:
        """Logits ``[Q, way]`` for one episode, and the loss when ``query_labels`` is given.

        Extra keyword arguments go to :meth:`head` (e.g. CLIP-FSAR's ``text_features``).
        """
        way = episode_way(support_labels)
        if support.shape[0] != support_labels.shape[0]:
            raise ValueError(f"{support.shape[0]} support clips but {support_labels.shape[0]} support labels")
        s, q = self.embed(support), self.embed(query)
        if s.shape[1:] != q.shape[1:]:
            raise ValueError(f"support {tuple(s.shape)} and query {tuple(q.shape)} features differ in [T, D]")
        out = self.head(
            s,
            support_labels,
            q,
            way,
            support_real_labels=support_real_labels,
            query_real_labels=query_real_labels,
            **kwargs,
        )
        if query_labels is not None:
            if query_labels.shape != (q.shape[0],):
                raise ValueError(f"query labels must be [{q.shape[0]}], got {tuple(query_labels.shape)}")
            ce = F.cross_entropy(out["logits"], query_labels.long(), reduction=self.loss_reduction)
            loss = ce
            for key, weight in self.loss_weights.items():
                if weight and key in out:
                    loss = loss + weight * out[key]
            out["loss_ce"] = ce
            out["loss"] = loss
        return out


@register_head("protonet")
class ProtoNet(FewShotHead):
    """Prototypical network (Snell et al. 2017) on clips mean-pooled over time.

    Logits are negative squared Euclidean distances to the class means of the support
    embeddings. Pooling away time makes it the order-blind reference point the temporal heads
    (OTAM, TRX) must beat on direction-sensitive classes.
    """

    def head(self, support: Tensor, labels: Tensor, query: Tensor, way: int, **_: Any) -> dict[str, Tensor]:
        protos = class_means(support.mean(1), labels, way)  # [way, D]
        dist = (query.mean(1)[:, None, :] - protos[None]).pow(2).sum(-1)  # [Q, way]
        return {"logits": -dist, "distances": dist}
