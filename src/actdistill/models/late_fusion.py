"""Late-fusion ensemble: one unimodal classifier per modality, logits averaged over present ones.

The comparison model for KARMMA (and the shape of Radevski et al.'s unimodal-ensemble teacher):
each modality is classified on its own (encoder -> mean over tokens -> multi-head MLP), so a
missing modality simply drops out of the average; no fusion block learns cross-modal cues.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from actdistill.models.base import average_logits, check_present, encode_present, register_fusion
from actdistill.models.encoders.base import Encoder
from actdistill.models.fusion import build_encoders
from actdistill.models.heads import MultiHeadMLP


class LateFusion(nn.Module):
    """Per-modality encoder + own head; ``logits`` = mean over each sample's present modalities.

    A sample with none of this model's modalities gets zero logits (uniform prediction).
    Output keys match :class:`~actdistill.models.fusion.KARMMAFusion`'s where they apply.
    """

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        heads: Mapping[str, int],
        modalities: Sequence[str] | None = None,
        head_hidden: int | None = None,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities or encoders)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.heads = nn.ModuleDict(
            {
                m: MultiHeadMLP(self.encoders[m].out_dim, heads, hidden=head_hidden, dropout=head_dropout)
                for m in self.modalities
            }
        )
        self.tasks = tuple(heads)

    def forward(
        self, inputs: Mapping[str, Tensor], present: Tensor, precomputed: Mapping[str, Tensor] | None = None
    ) -> dict[str, Any]:
        present = check_present(present, self.modalities)
        tokens, _ = encode_present(self.encoders, self.modalities, inputs, present, precomputed)
        z = {m: x.mean(1) for m, x in tokens.items()}
        per_mod = {m: self.heads[m](zm) for m, zm in z.items()}
        order = [m for m in self.modalities if m in per_mod]
        if not order:
            raise ValueError("no modality of this model is present in the batch")
        weights = [present[:, self.modalities.index(m)] for m in order]
        logits = {t: average_logits([per_mod[m][t] for m in order], weights) for t in self.tasks}
        return {"logits": logits, "modality_embeddings": z, "per_modality_logits": per_mod, "present": present}


@register_fusion("late_fusion", "one classifier per modality, logits averaged over the present ones (no fusion block)")
def build_late_fusion(
    modalities: Sequence[str],
    heads: Mapping[str, int],
    size: str = "student",
    encoders: Mapping[str, Any] | None = None,
    head_hidden: int | None = None,
    head_dropout: float = 0.0,
) -> LateFusion:
    """Late-fusion ensemble from plain config values (same encoder options as ``karmma``)."""
    return LateFusion(build_encoders(modalities, size, encoders), heads, modalities, head_hidden, head_dropout)
