"""Modality readers. Importing this package registers every reader in :data:`READERS`.

Readers are looked up by modality kind (``rgb``, ``flow``, ``audio``, ``depth``, ``boxes``,
``imu``) so configs pick them by name and datasets never branch on the modality; a named modality
(``imu:acc``) is read by its kind's reader (:func:`build_reader`, :func:`modality_kind`).
"""

from actdistill.data.modalities import audio, boxes, depth, flow, imu, rgb
from actdistill.data.modalities.audio import AudioReader, log_mel_spectrogram, mel_filterbank
from actdistill.data.modalities.base import READERS, ModalityReader, build_reader, modality_kind, options_for
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
    "build_reader",
    "compute_tvl1",
    "depth",
    "extract_flow_folder",
    "flow",
    "imu",
    "log_mel_spectrogram",
    "mel_filterbank",
    "modality_kind",
    "options_for",
    "rgb",
    "write_imu_csv",
]
