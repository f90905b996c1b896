"""Models: unimodal encoders, the KARMMA fusion recognizer, the late-fusion ensemble.

Build by name from config with ``FUSION.build("karmma", modalities, heads, size, encoders)``
or compose :class:`MultimodalRecognizer` from ``ENCODERS`` and :class:`KARMMAFusion` directly.
"""

from actdistill.models.base import FUSION, MODELS, average_logits, encode_present, register_fusion, select_present
from actdistill.models.encoders import (
    ENCODERS,
    Encoder,
    FrozenExtractor,
    build_encoder,
    freeze,
    load_state_dict_file,
)
from actdistill.models.fusion import (
    FUSION_PRESETS,
    MISSING_MODES,
    KARMMAFusion,
    MultimodalRecognizer,
    build_encoders,
    build_karmma,
)
from actdistill.models.heads import MultiHeadMLP
from actdistill.models.late_fusion import LateFusion, build_late_fusion

__all__ = [
    "ENCODERS",
    "FUSION",
    "FUSION_PRESETS",
    "MISSING_MODES",
    "MODELS",
    "Encoder",
    "FrozenExtractor",
    "KARMMAFusion",
    "LateFusion",
    "MultiHeadMLP",
    "MultimodalRecognizer",
    "average_logits",
    "build_encoder",
    "build_encoders",
    "build_karmma",
    "build_late_fusion",
    "encode_present",
    "freeze",
    "load_state_dict_file",
    "register_fusion",
    "select_present",
]
