"""Distillation pieces: modality dropout and the CE/KD losses over task heads."""

from actdistill.distill.dropout import mask_inputs, modality_dropout
from actdistill.distill.losses import ce_loss, kd_loss, kl_divergence

__all__ = ["ce_loss", "kd_loss", "kl_divergence", "mask_inputs", "modality_dropout"]
