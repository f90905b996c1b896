"""The multi-head MLP classifier shared by the CLS token and every modality embedding."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


class MultiHeadMLP(nn.Module):
    """A shared MLP trunk + one linear layer per task (verb, noun, action, ...).

    KARMMA applies the *same* head to ``z_cls`` and to each ``z_m`` and averages the logits, so
    the modality embeddings are pushed into one common, classifiable space. ``hidden=0`` gives
    plain linear heads; ``hidden=None`` uses ``in_dim``.
    """

    def __init__(
        self,
        in_dim: int,
        heads: Mapping[str, int],
        hidden: int | None = None,
        dropout: float = 0.0,
        norm: bool = True,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("heads must name at least one task and its number of classes")
        hidden = in_dim if hidden is None else hidden
        trunk: list[nn.Module] = [nn.LayerNorm(in_dim)] if norm else []
        if hidden:
            trunk += [nn.Linear(in_dim, hidden), nn.GELU()]
        trunk.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*trunk)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden or in_dim, int(c)) for t, c in heads.items()})
        self.num_classes = {t: int(c) for t, c in heads.items()}

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        h = self.trunk(z)
        return {t: head(h) for t, head in self.heads.items()}
