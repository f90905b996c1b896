"""actdistill: action recognition by knowledge distillation.

Importing the package makes torchvision (and so timm, open_clip) importable next to a CPU build
of torch; see :mod:`actdistill._compat`.
"""

from actdistill._compat import ensure_torchvision_ops

ensure_torchvision_ops()

__version__ = "0.1.0"

MODALITIES: tuple[str, ...] = ("rgb", "flow", "audio", "depth", "boxes", "imu")
"""Every modality the toolkit knows, in the fixed order used by presence masks."""

__all__ = ["MODALITIES", "__version__", "ensure_torchvision_ops"]
