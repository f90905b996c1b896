"""Load CLIP-MDMF (reference) checkpoints into :class:`CLIPM2DF`, and write ours in their layout.

Reference key -> our module (``specs/clip_m2df.md``, "Checkpoint compatibility"):

==========================================================  =============================================
reference                                                   ours
==========================================================  =============================================
``backbone.*`` (OpenAI CLIP ``visual.*``; ``backbone.       ``backbone.*`` (open_clip's visual tower uses
module.*`` under DataParallel)                              OpenAI's names for RN50 and ViT)
``scale``                                                   ``scale``
``context2.layers.i.0.norm.*``                              ``fusion_local.layers.i.norm.*``
``context2.layers.i.0.fn.to_{q,k,v}.weight``                ``fusion_local.layers.i.to_{q,k,v}.weight``
``context2.layers.i.0.fn.to_out.0.*``                       ``fusion_local.layers.i.to_out.*``
``context2.layers.i.1.net.{0,3}.*``                         ``fusion_local.layers.i.ffn.{0,3}.*``
``context_local.*`` (same layout)                           ``fusion_global.*``
``context_conv1.*`` / ``context_conv2.*``                   ``ltce.conv1.*`` / ``ltce.conv2.*``
``context_conv11.*`` / ``context_conv22.*``                 never used by the reference: ignored
``tcn.network.i.conv{1,2}.weight_g`` / ``weight_v``         ``gtce.network.i.conv{1,2}.parametrizations.
                                                            weight.original0`` / ``original1``
``tcn.network.i.conv{1,2}.bias``                            ``gtce.network.i.conv{1,2}.bias``
``tcn.network.i.net.{0,4}.*``                               the same tensors as ``conv1``/``conv2`` (the
                                                            TCN registers each conv twice): checked, ignored
``tcn.network.i.downsample.*``                              ``gtce.network.i.downsample.*``
==========================================================  =============================================

The names are the reference's, and "context2" is the *local* view's encoder (LTCE branch, the
reference's ``branch == 0``), "context_local" the *global* view's (TCN branch), a naming quirk of
theirs. Foreign files are read with safetensors or ``torch.load(weights_only=True)`` only
(OpenAI's TorchScript ``.pt`` archives through ``torch.jit.load``, which runs no Python pickles).
"""

from __future__ import annotations

import collections
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch import nn

UNUSED_REFERENCE_PREFIXES = ("context_conv11.", "context_conv22.")
_VIEWS = {"context2": "fusion_local", "context_local": "fusion_global"}
_WN = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
_WRAPPERS = ("model_state_dict", "state_dict", "model", "module")


@dataclass
class ImportReport:
    """What :func:`load_reference_state_dict` did with every key."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "mismatched", "ignored"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name} ({len(keys)}): {show(keys)}")
        return "; ".join(lines)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a foreign checkpoint without unpickling arbitrary objects.

    ``.safetensors`` through safetensors; TorchScript archives (OpenAI's CLIP downloads) through
    ``torch.jit.load``; anything else through ``torch.load(weights_only=True)``, with
    ``collections.Counter`` allowed because the reference's training checkpoints carry a
    ``MultiStepLR`` state (its milestones are a Counter). Wrappers (``model_state_dict``,
    ``state_dict``, ...) and DDP/DataParallel's ``module.`` prefix are removed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    obj: Any
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(p), device="cpu")
    elif _is_torchscript(p):
        try:
            obj = torch.jit.load(str(p), map_location="cpu").state_dict()
        except Exception as err:  # TorchScript raises RuntimeError / pickle errors of its own
            from actdistill.data.records import DataError

            first = str(err).splitlines()[0] if str(err) else repr(err)
            raise DataError(p, f"not a loadable TorchScript archive ({first})") from None
    else:
        from actdistill.engine.checkpoint import torch_load_weights_only

        obj = torch_load_weights_only(p, [collections.Counter])
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as zf:
        return any(n.endswith("/constants.pkl") for n in zf.namelist())


def reference_key_to_ours(key: str) -> str | None:
    """Our state-dict key for one reference key; ``None`` for keys with no counterpart."""
    if key.startswith("backbone.module."):
        return "backbone." + key[len("backbone.module.") :]
    if key.startswith("backbone.") or key == "scale":
        return key
    m = re.fullmatch(r"(context2|context_local)\.layers\.(\d+)\.(0|1)\.(.+)", key)
    if m:
        view, i, part, rest = _VIEWS[m.group(1)], m.group(2), m.group(3), m.group(4)
        base = f"{view}.layers.{i}."
        if part == "0":
            if rest.startswith("norm."):
                return base + rest
            mm = re.fullmatch(r"fn\.(to_[qkv]\.weight)", rest) or re.fullmatch(r"fn\.to_out\.0\.(weight|bias)", rest)
            if mm:
                return base + (mm.group(1) if mm.group(1).startswith("to_") else "to_out." + mm.group(1))
            return None
        mm = re.fullmatch(r"net\.(0|3)\.(weight|bias)", rest)
        return base + f"ffn.{mm.group(1)}.{mm.group(2)}" if mm else None
    m = re.fullmatch(r"context_conv([12])\.(weight|bias)", key)
    if m:
        return f"ltce.conv{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"tcn\.network\.(\d+)\.(conv[12]|downsample)\.(.+)", key)
    if m:
        i, conv, rest = m.groups()
        return f"gtce.network.{i}.{conv}.{_WN.get(rest, rest)}"
    return None


def _duplicate_of(key: str) -> str | None:
    """``tcn.network.i.net.{0,4}.x`` -> the primary ``tcn.network.i.conv{1,2}.x`` it duplicates."""
    m = re.fullmatch(r"tcn\.network\.(\d+)\.net\.([04])\.(.+)", key)
    if not m:
        return None
    return f"tcn.network.{m.group(1)}.conv{1 if m.group(2) == '0' else 2}.{m.group(3)}"


def load_reference_state_dict(
    model: nn.Module, state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike[str], strict: bool = True
) -> ImportReport:
    """Load a reference (CLIP-MDMF ``MDMF_CLIPFSAR``) state dict or checkpoint file into ``model``.

    Keys already in our own layout are accepted as they are. Reference keys that the model
    cannot hold are reported, not guessed: ``backbone.*`` when the model has no backbone weights
    (``backbone="features"``) is *ignored* (the features came from it), the unused
    ``context_conv11/22`` and the duplicated TCN ``net.{0,4}`` entries are *ignored* (after
    checking that the duplicates equal their primaries). With ``strict`` any missing, unexpected
    or shape-mismatched key raises ``ValueError`` naming them, before anything is copied.
    """
    sd = (
        read_state_dict(state_dict_or_path)
        if isinstance(state_dict_or_path, (str, os.PathLike))
        else state_dict_or_path
    )
    ours = model.state_dict()
    has_backbone = any(k.startswith("backbone.") for k in ours)
    report = ImportReport()
    new: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith(UNUSED_REFERENCE_PREFIXES):
            report.ignored.append(key)
            continue
        primary = _duplicate_of(key)
        if primary is not None:
            if primary in sd:
                if sd[primary].shape != value.shape or not torch.equal(sd[primary], value):
                    raise ValueError(f"{key} differs from {primary}; the reference stores the same tensor under both")
                report.ignored.append(key)
                continue
            key = primary  # only the duplicate is present: use it
        target = key if key in ours else reference_key_to_ours(key)
        if target is not None and target.startswith("backbone.") and not has_backbone:
            report.ignored.append(key)
            continue
        if target is None or target not in ours:
            report.unexpected.append(key)
            continue
        if tuple(ours[target].shape) != tuple(value.shape):
            report.mismatched.append(f"{key}: {tuple(value.shape)} vs {target}: {tuple(ours[target].shape)}")
            continue
        new[target] = value
    report.missing = [k for k in ours if k not in new]
    report.loaded = sorted(new)
    if strict and not report.ok:
        raise ValueError(f"reference state dict does not fit {type(model).__name__}: {report}")
    model.load_state_dict(new, strict=False)
    return report


def our_key_to_reference(key: str) -> str | None:
    """Inverse of :func:`reference_key_to_ours`; ``None`` for keys the reference has no place for."""
    if key.startswith("backbone.") or key == "scale":
        return key
    m = re.fullmatch(r"(fusion_local|fusion_global)\.layers\.(\d+)\.(.+)", key)
    if m:
        view = "context2" if m.group(1) == "fusion_local" else "context_local"
        base, rest = f"{view}.layers.{m.group(2)}.", m.group(3)
        if rest.startswith("norm."):
            return base + "0." + rest
        if rest.startswith(("to_q.", "to_k.", "to_v.")):
            return base + "0.fn." + rest
        if rest.startswith("to_out."):
            return base + "0.fn.to_out.0." + rest[len("to_out.") :]
        mm = re.fullmatch(r"ffn\.(0|3)\.(weight|bias)", rest)
        return base + f"1.net.{mm.group(1)}.{mm.group(2)}" if mm else None
    m = re.fullmatch(r"ltce\.conv([12])\.(weight|bias)", key)
    if m:
        return f"context_conv{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"gtce\.network\.(\d+)\.(conv[12]|downsample)\.(.+)", key)
    if m:
        i, conv, rest = m.groups()
        inverse = {v: k for k, v in _WN.items()}
        return f"tcn.network.{i}.{conv}.{inverse.get(rest, rest)}"
    return None


def export_reference_state_dict(model: nn.Module, include_unused: bool = False) -> dict[str, Tensor]:
    """Our weights under the reference's key names (old weight-norm keys, duplicated TCN entries).

    ``include_unused`` adds zero ``context_conv11/22`` tensors so that the result also loads with
    ``strict=True`` into the reference module itself (they never influence its output). Keys with
    no reference counterpart (the MiniLM ``text_proj``) are left out.
    """
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        ref = our_key_to_reference(key)
        if ref is None:
            continue
        out[ref] = value.detach().clone()
        m = re.fullmatch(r"tcn\.network\.(\d+)\.conv([12])\.(.+)", ref)
        if m:
            out[f"tcn.network.{m.group(1)}.net.{0 if m.group(2) == '1' else 4}.{m.group(3)}"] = value.detach().clone()
    if include_unused:
        for conv in ("context_conv11", "context_conv22"):
            for p in ("weight", "bias"):
                out[f"{conv}.{p}"] = torch.zeros_like(out[f"context_conv1.{p}"])
    return out


def reference_forward(
    model: nn.Module,
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    support_real_labels: Tensor,
    query_real_labels: Tensor | None = None,
    query_labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """Run one episode through ``model`` with the reference's argument order.

    The reference model takes the support clips, their episode labels, the query ("target")
    clips, then the supports' real classes (its prompts) and the queries' real classes; our heads
    share the few-shot contract ``(support, support_labels, query, query_labels, *,
    support_real_labels, query_real_labels)``. Code ported from the reference, and the reference
    equality tests, call through here so the two orders never get mixed up.
    """
    return model(support, support_labels, query, query_labels, support_real_labels=support_real_labels,
                 query_real_labels=query_real_labels)


__all__ = [
    "ImportReport",
    "export_reference_state_dict",
    "load_reference_state_dict",
    "our_key_to_reference",
    "read_state_dict",
    "reference_forward",
    "reference_key_to_ours",
]
