"""Distillation pieces: modality dropout, CE/KD losses, the frozen teacher wrapper."""

from actdistill.distill.dropout import ModalityDropout, mask_inputs, modality_dropout
from actdistill.distill.losses import LOSSES, CELoss, KDLoss, ce_loss, kd_loss, kl_divergence
from actdistill.distill.teacher import FrozenTeacher

__all__ = [
    "LOSSES",
    "CELoss",
    "FrozenTeacher",
    "KDLoss",
    "ModalityDropout",
    "ce_loss",
    "kd_loss",
    "kl_divergence",
    "mask_inputs",
    "modality_dropout",
]
