"""Modality readers. Importing this package registers every reader in :data:`READERS`.

Readers are looked up by modality name (``rgb``, ``flow``, ``audio``, ``depth``, ``boxes``,
``imu``) so configs pick them by name and datasets never branch on the modality.
"""

from actdistill.data.modalities import audio, boxes, depth, flow, imu, rgb
from actdistill.data.modalities.audio import AudioReader, log_mel_spectrogram, mel_filterbank
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.modalities.boxes import BoxesReader
from actdistill.data.modalities.depth import DepthReader
from actdistill.data.modalities.flow import FlowReader, compute_tvl1, extract_flow_folder
from actdistill.data.modalities.imu import IMUReader, write_imu_csv
from actdistill.data.modalities.rgb import RGBReader

__all__ = [
    "READERS",
    "AudioReader",
    "BoxesReader",
    "DepthReader",
    "FlowReader",
    "IMUReader",
    "ModalityReader",
    "RGBReader",
    "audio",
    "boxes",
    "compute_tvl1",
    "depth",
    "extract_flow_folder",
    "flow",
    "imu",
    "log_mel_spectrogram",
    "mel_filterbank",
    "rgb",
    "write_imu_csv",
]
