"""Shared pieces of the multimodal models: the ``FUSION`` and ``MODELS`` registries and
presence-mask helpers.

Every multimodal model takes ``present: bool[B, M]`` over a ``modalities`` tuple fixed at
construction. The data layer's mask is over ``batch["modalities"]``, which may list more (or
other) modalities than a model uses; :func:`select_present` maps one onto the other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from actdistill.registry import Registry

#: every model by name, multimodal and few-shot (``MODELS.build("karmma", ...)``, ``MODELS.build("trx")``)
MODELS: Registry[nn.Module] = Registry("model")

F = TypeVar("F", bound=Callable[..., Any])


def _fusion_contract(obj: Any) -> str | None:
    """A fusion model's factory must be callable as ``f(modalities, heads, size, encoders, **options)``."""
    if not callable(obj):
        return f"{obj!r} is not callable"
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # no signature to check (a builtin): the call will tell
        return None
    try:
        sig.bind(("rgb",), {"action": 2}, "student", {})
    except TypeError as err:
        return f"cannot be called as f(modalities, heads, size, encoders) ({err})"
    return None


def _fusion_built(model: Any) -> str | None:
    if not isinstance(model, nn.Module):
        return f"a {type(model).__qualname__}, not an nn.Module"
    mods = getattr(model, "modalities", None)
    if not isinstance(mods, tuple | list) or not all(isinstance(m, str) for m in mods):
        return "a model without a modalities tuple (the order of the present mask's columns)"
    return None


#: the multimodal models the KARMMA rows train (``student.model.name``; a row's ``RowSpec.model``)
FUSION: Registry[nn.Module] = Registry(
    "fusion model", contract=_fusion_contract, check_built=_fusion_built,
    what="a fusion model is a function f(modalities, heads, size, encoders, **options) returning an nn.Module "
    "with a modalities tuple whose forward(inputs, present) returns {'logits': {task: [B, classes]}}; "
    "register it with @register_fusion(name)",
)


def register_fusion(name: str, description: str | None = None) -> Callable[[F], F]:
    """Register a multimodal model factory as ``name`` in :data:`FUSION` (checked against its
    contract) and in :data:`MODELS`, so a config's ``student.model.name`` or a row's
    ``RowSpec.model`` builds it. ``encoders`` is the per-modality config mapping
    (:func:`~actdistill.models.fusion.build_encoders` builds it); ``options`` are
    ``student.model.fusion``."""

    def deco(factory: F) -> F:
        if name in MODELS and name not in FUSION:  # a few-shot method's name: refuse before registering anywhere
            MODELS.register(name)(factory)  # raises the registry's KeyError naming the holder
        FUSION.register(name, description)(factory)
        MODELS.register(name, description)(factory)
        return factory

    return deco


def select_present(present: Tensor, batch_modalities: Sequence[str], modalities: Sequence[str]) -> Tensor:
    """Columns of ``present`` (over ``batch_modalities``) for ``modalities``; unknown ones are False."""
    cols = []
    for m in modalities:
        if m in batch_modalities:
            cols.append(present[:, list(batch_modalities).index(m)])
        else:
            cols.append(torch.zeros(present.shape[0], dtype=torch.bool, device=present.device))
    return torch.stack(cols, dim=1) if cols else present[:, :0]


def check_present(present: Tensor, modalities: Sequence[str]) -> Tensor:
    if present.dim() != 2 or present.shape[1] != len(modalities):
        raise ValueError(
            f"present must be bool [B, {len(modalities)}] over {tuple(modalities)}, got {tuple(present.shape)}"
        )
    return present.bool()


def encode_present(
    encoders: Mapping[str, nn.Module],
    modalities: Sequence[str],
    inputs: Mapping[str, Tensor],
    present: Tensor,
    precomputed: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Run each encoder on the rows where its modality is present; zeros elsewhere.

    Only present rows reach an encoder, so the zero-filled slots of absent samples neither cost
    compute nor influence anything (BatchNorm statistics included), and a modality no sample has
    is not encoded at all. ``precomputed`` token tensors (e.g. cached frozen features) bypass their
    encoders. Returns the token dict (only modalities with at least one present row) and the
    token count of every modality, so the fusion can lay out slots for the missing ones.
    """
    present = check_present(present, modalities)
    b = present.shape[0]
    frames = next((int(inputs[m].shape[1]) for m in modalities if m in inputs), None)
    tokens: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for j, m in enumerate(modalities):
        if precomputed is not None and m in precomputed:
            tokens[m] = precomputed[m]
            counts[m] = int(precomputed[m].shape[1])
            continue
        enc = encoders[m]
        t = int(inputs[m].shape[1]) if m in inputs else frames
        if t is not None:
            counts[m] = int(enc.num_tokens(t))
        rows = present[:, j]
        if not bool(rows.any()):
            continue
        if m not in inputs:
            raise KeyError(f"modality {m!r} is marked present but has no input tensor")
        x = inputs[m]
        if bool(rows.all()):
            tokens[m] = enc(x)
            continue
        idx = rows.nonzero().squeeze(1)
        sub = enc(x.index_select(0, idx))
        tokens[m] = sub.new_zeros((b, *sub.shape[1:])).index_copy(0, idx, sub)
    return tokens, counts


def average_logits(parts: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    """Per-sample mean of ``parts`` (each ``[B, C]``) over the entries whose weight row is True.

    Uses ``where`` rather than multiplication so a non-finite value in an excluded part cannot
    leak in as ``nan * 0``; a sample with no included part gets zeros.
    """
    total = torch.zeros_like(parts[0])
    count = torch.zeros(parts[0].shape[0], 1, device=parts[0].device, dtype=parts[0].dtype)
    for p, w in zip(parts, weights):
        w = w.view(-1, 1)
        total = total + torch.where(w, p, torch.zeros_like(p))
        count = count + w.to(count.dtype)
    return total / count.clamp(min=1)
