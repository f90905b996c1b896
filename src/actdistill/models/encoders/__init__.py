"""Unimodal encoders ``[B, T, ...] -> [B, n, d]``, built by name from ``ENCODERS``.

Importing this package registers every encoder; third-party backbones (timm, open_clip,
torchvision video) are imported only when one of them is built.

Registered names: ``frames`` (rgb/depth CNN), ``flow``, ``spectrogram`` (audio), ``boxes``,
``imu``, ``compact`` (the built-in one for the given modality), ``mobilenet_v2``, ``timm``,
``torchvision_video``, ``open_clip``.
"""

from actdistill.models.encoders import clip, compact, mobilenet, timm_adapter, video
from actdistill.models.encoders.base import (
    ENCODERS,
    Encoder,
    FrozenExtractor,
    TemporalMixer,
    build_encoder,
    freeze,
    load_state_dict_file,
)
from actdistill.models.encoders.clip import OpenCLIPEncoder
from actdistill.models.encoders.compact import (
    COMPACT_FOR_MODALITY,
    SIZES,
    BoxesEncoder,
    FrameCNN,
    IMUEncoder,
)
from actdistill.models.encoders.mobilenet import MobileNetV2Encoder, offline_mobilenet_v2_path
from actdistill.models.encoders.timm_adapter import TimmEncoder
from actdistill.models.encoders.video import VIDEO_ARCHS, TorchvisionVideoEncoder

__all__ = [
    "COMPACT_FOR_MODALITY",
    "ENCODERS",
    "SIZES",
    "VIDEO_ARCHS",
    "BoxesEncoder",
    "Encoder",
    "FrameCNN",
    "FrozenExtractor",
    "IMUEncoder",
    "MobileNetV2Encoder",
    "OpenCLIPEncoder",
    "TemporalMixer",
    "TimmEncoder",
    "TorchvisionVideoEncoder",
    "build_encoder",
    "clip",
    "compact",
    "freeze",
    "load_state_dict_file",
    "mobilenet",
    "offline_mobilenet_v2_path",
    "timm_adapter",
    "video",
]
