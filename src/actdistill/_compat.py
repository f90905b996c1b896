"""Small compatibility shims that keep third-party imports working on CPU-only installs.

The only shim today concerns torchvision. PyPI's torchvision wheels for recent releases are CUDA
builds; next to a CPU build of torch their C++ extension (``torchvision/_C.so``) fails to load,
and ``import torchvision`` then dies with ``operator torchvision::nms does not exist`` because
``torchvision/_meta_registrations.py`` registers a fake kernel for an op nobody defined. That
also breaks timm, open_clip and everything else that imports torchvision.

:func:`ensure_torchvision_ops` runs before torchvision is imported. It first tries to load
torchvision's own extension exactly as torchvision would; if that works (every correctly matched
install) it does nothing else. Only when the extension cannot load does it define the two op
schemas the import needs (``nms`` and ``qnms``) with a small pure-torch CPU implementation of
``nms``. Other torchvision C++ ops (``roi_align``, ``deform_conv2d``, ...) stay unavailable, as
they would be without the shim; actdistill does not use them.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_DONE = False
_LIB: torch.library.Library | None = None  # keep a reference so the definitions stay alive


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; same contract as ``torchvision.ops.nms``."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _qnms_unsupported(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    raise NotImplementedError("torchvision::qnms needs torchvision's C++ extension, which did not load")


def _extension_loads() -> bool:
    """Try to load torchvision's compiled ops the way torchvision itself does."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to fix
    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C.") and name.endswith((".so", ".pyd", ".dylib")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def _op_defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_ops() -> None:
    """Make ``import torchvision`` work next to a CPU torch; a no-op wherever it already works."""
    global _DONE, _LIB
    if _DONE or "torchvision" in sys.modules:
        _DONE = True
        return
    _DONE = True
    if _extension_loads() or _op_defined("nms"):
        return
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", _nms_cpu, "CPU")
    _LIB.impl("qnms", _qnms_unsupported, "CPU")
