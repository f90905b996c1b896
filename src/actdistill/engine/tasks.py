"""KARMMA training objectives as task modules, and the registry of rows.

A task module is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": ..., <components>}``
(``loss_ce``, ``loss_kd``, ``loss_unimodal``, ``loss_single``), as timm's distillation task does:
the trainer (:func:`actdistill.engine.trainer.fit`) wraps it (DDP, autocast) and calls it, the
pipeline only orchestrates stages and caches, and a researcher can reuse, subclass or swap an
objective without touching either. The trained network is ``task.model``; training-only parts
(auxiliary heads) live beside it in the task and are not saved with the row. A frozen teacher is
held outside the module tree: it is neither trained, wrapped in DDP nor written into checkpoints.

A batch is what :class:`actdistill.engine.clips.CollateViews` yields: ``inputs`` (per modality,
or the teacher's cached tokens), ``present``, ``mask`` (after modality dropout, when drawn),
``labels``, ``index``, and ``teacher_tokens`` / ``teacher_logits`` for distillation.

Rows (:data:`ROWS`): the paper's Baseline, Baseline w/ δ and KARMMA student, the single Missing
Modality Token variant and a late-fusion ensemble differ only in how the student architecture is
trained, which a :class:`RowSpec` states; ``actdistill karmma train`` builds every row named in
``rows`` from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actdistill.distill.losses import ce_loss, kd_loss
from actdistill.models.encoders.base import Encoder
from actdistill.models.fusion import KARMMAFusion, MultimodalRecognizer
from actdistill.models.heads import MultiHeadMLP
from actdistill.registry import Registry, spec_factory_problem

Batch = Mapping[str, Any]
Losses = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowSpec:
    """How a row trains the student architecture.

    ``dropout``: modality dropout at ``student.modality_dropout`` (the Baseline row trains on
    complete input). ``distil``: KD from the frozen teacher (``student.alpha``, ``temperature``,
    ``teacher_input``). ``missing``: the fusion's missing-modality mode, overriding
    ``student.model.fusion.missing`` (MMT: one shared token). ``model``: the registered fusion
    model (:data:`~actdistill.models.base.FUSION`) this row trains instead of the student's
    ``student.model.name`` (``late_fusion``: per-modality classifiers averaged, no fusion block).
    ``single_passes``: whether ``student.single_passes`` applies (not to a row that never sees
    missing modalities)."""

    name: str
    description: str
    dropout: bool = True
    distil: bool = False
    missing: str | None = None
    model: str | None = None
    single_passes: bool = True

    @property
    def late_fusion(self) -> bool:
        return self.model == "late_fusion"

    @property
    def architecture(self) -> str:
        """Rows with the same architecture run the same network (profiled once)."""
        return f"{self.model or 'student'}:{self.missing or 'default'}"


def _row_contract(factory: Any) -> str | None:
    return spec_factory_problem(factory, RowSpec, "register_row")


ROWS: Registry[RowSpec] = Registry(
    "row", contract=_row_contract,
    what="register_row(RowSpec(name, description, dropout=..., distil=..., missing=..., model=...))",
)


def register_row(spec: RowSpec) -> RowSpec:
    """Add ``spec`` to :data:`ROWS` under ``spec.name`` (a taken name is a ``KeyError``)."""
    name = spec.name if isinstance(spec, RowSpec) else repr(spec)
    description = spec.description if isinstance(spec, RowSpec) else None
    ROWS.register(name, description=description)(lambda: spec)
    return spec


register_row(RowSpec("baseline", "student architecture, cross-entropy on complete input (no dropout)",
                     dropout=False, single_passes=False))
register_row(RowSpec("baseline_delta", "Baseline w/ δ: modality dropout + missing-modality tokens, cross-entropy"))
register_row(RowSpec("student", "KARMMA student: Baseline w/ δ + distillation from the frozen teacher", distil=True))
register_row(RowSpec("mmt", "the student trained with one shared Missing Modality Token", distil=True,
                     missing="single_token"))
register_row(RowSpec("late_fusion", "one classifier per modality, logits averaged over present ones",
                     model="late_fusion", single_passes=False))


def row_spec(kind: str) -> RowSpec:
    """The registered :class:`RowSpec` of ``kind`` (an unknown name says the closest known one)."""
    return ROWS.build(kind)


# ------------------------------------------------------------------------------- building blocks
class UnimodalClassifier(nn.Module):
    """Encoder + mean over tokens + multi-head MLP: how a teacher extractor is fitted when no
    pretrained weights exist for its modality."""

    def __init__(self, encoder: Encoder, heads: dict[str, int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = MultiHeadMLP(encoder.out_dim, heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.encoder(x).mean(1))


class TrainingExtras(nn.Module):
    """A row plus the training-only extras of :class:`StudentConfig`; ``train_row`` saves just
    ``model``, so a saved row is the plain architecture.

    ``aux`` (``unimodal_aux``): one classifier per modality on that modality's own encoder tokens
    (mean-pooled). Why: trained jointly, the encoders of a fusion model learn only what the
    easiest modality does not already give the fusion ("modality competition"; Wang et al., CVPR
    2020, "What makes training multi-modal classification networks hard?"). A noun that RGB shows
    plainly is then never learnt from depth's outline or flow's moving silhouette, and accuracy
    collapses when RGB is missing. A cross-entropy on each encoder alone keeps every modality
    learning the whole task, at the cost of a linear head per modality (no extra encoder passes).

    ``singles`` (``single_passes``): the fusion block run once more per modality with only that
    modality present, on the tokens the encoders already produced. Why: with a drop rate of 0.5
    and four modalities a training sample has a single modality a quarter of the time, one given
    modality alone 7% of the time, and the fusion path for a lone modality stays undertrained:
    on the synthetic demo data the aux heads above read 65% action top-1 from the student's depth
    tokens alone while the fused model, given depth alone, got 31%. The extra fusion passes cost a
    fraction of the encoders' compute.
    """

    def __init__(self, model: MultimodalRecognizer, heads: dict[str, int], aux: bool = True,
                 singles: bool = False) -> None:
        super().__init__()
        self.model = model
        self.aux = (nn.ModuleDict({m: MultiHeadMLP(e.out_dim, heads, hidden=0) for m, e in model.encoders.items()})
                    if aux else None)
        self.singles = singles

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, Any]:
        tokens, counts = self.model.encode(inputs, present)
        out = self.model.fusion(tokens, present, counts)
        if self.aux is not None:
            out["unimodal_logits"] = {m: self.aux[m](t.mean(1)) for m, t in tokens.items()}
        if self.singles:
            out["single_logits"] = single_pass_logits(self.model.fusion, tokens, present, counts)
        return out


def single_pass_logits(fusion: KARMMAFusion, tokens: dict[str, torch.Tensor], present: torch.Tensor,
                       counts: dict[str, int]) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``m -> (rows, logits)``: ``fusion``'s logits for the ``rows`` where ``m`` is present,
    given ``m`` alone. One fusion call over all (row, modality) pairs, not one per modality."""
    mods = fusion.modalities
    picks = [(j, present[:, j].nonzero().squeeze(1)) for j, m in enumerate(mods) if m in tokens]
    picks = [(j, r) for j, r in picks if r.numel()]
    if not picks:
        return {}
    rows = torch.cat([r for _, r in picks])
    only = torch.zeros(len(rows), len(mods), dtype=torch.bool, device=present.device)
    start = 0
    for j, r in picks:
        only[start:start + len(r), j] = True
        start += len(r)
    logits = fusion({m: t.index_select(0, rows) for m, t in tokens.items()}, only, counts)["logits"]
    out, start = {}, 0
    for j, r in picks:
        out[mods[j]] = (r, {t: v[start:start + len(r)] for t, v in logits.items()})
        start += len(r)
    return out


class FusionWithSingles(nn.Module):
    """A teacher's fusion block (trained on cached tokens) that also returns its single-modality
    passes (``teacher.single_passes``)."""

    def __init__(self, fusion: KARMMAFusion) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, tokens: dict[str, torch.Tensor], present: torch.Tensor,
                counts: dict[str, int]) -> dict[str, Any]:
        out = self.fusion(tokens, present, counts)
        out["single_logits"] = single_pass_logits(self.fusion, tokens, present, counts)
        return out


def single_pass_ce(out: dict[str, Any], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over modalities of the cross-entropy of ``out["single_logits"]`` on their rows."""
    terms = [ce_loss(lg, {t: y[rows] for t, y in labels.items()})["loss"] for rows, lg in out["single_logits"].values()]
    return torch.stack(terms).mean() if terms else torch.zeros((), device=next(iter(labels.values())).device)


def unimodal_aux_loss(out: dict[str, Any], mask: torch.Tensor, labels: dict[str, torch.Tensor],
                      modalities: tuple[str, ...]) -> torch.Tensor:
    """Mean over modalities of the cross-entropy of ``out["unimodal_logits"]`` on the rows where
    each modality is present (``mask``); zero when no modality is present anywhere."""
    terms = []
    for m, logits in out["unimodal_logits"].items():
        rows = mask[:, modalities.index(m)].to(next(iter(logits.values())).device)
        if bool(rows.any()):
            terms.append(ce_loss({t: v[rows] for t, v in logits.items()},
                                 {t: y[rows] for t, y in labels.items()})["loss"])
    if not terms:
        return torch.zeros((), device=mask.device)
    return torch.stack(terms).mean()


# ------------------------------------------------------------------------------------ tasks
def _to(x: Any, device: torch.device) -> Any:
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x


class Task(nn.Module):
    """Base of the task modules: ``model`` is the network being trained (what is saved)."""

    model: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def mask(self, batch: Batch) -> torch.Tensor:
        """The modalities the step sees: after modality dropout when the loader drew it."""
        return _to(batch.get("mask", batch["present"]), self.device)


class UnimodalTask(Task):
    """Fit modality ``modality``'s encoder alone: cross-entropy of :class:`UnimodalClassifier`."""

    def __init__(self, model: UnimodalClassifier, modality: str) -> None:
        super().__init__()
        self.model = model
        self.modality = modality

    def forward(self, batch: Batch) -> Losses:
        logits = self.model(_to(batch["inputs"][self.modality], self.device))
        return ce_loss(logits, _to(batch["labels"], self.device))


class TeacherTask(Task):
    """The teacher's fusion block on cached extractor tokens, with modality dropout (drawn by the
    loader); ``single_passes > 0`` adds its cross-entropy on single-modality passes."""

    def __init__(self, fusion: KARMMAFusion, token_counts: Mapping[str, int], single_passes: float = 0.0) -> None:
        super().__init__()
        self.model = fusion
        self.net = FusionWithSingles(fusion) if single_passes > 0 else fusion
        self.counts = dict(token_counts)
        self.single_passes = single_passes

    def forward(self, batch: Batch) -> Losses:
        mask, labels = self.mask(batch), _to(batch["labels"], self.device)
        out = self.net(_to(batch["inputs"], self.device), mask, self.counts)
        losses = ce_loss(out["logits"], labels)
        if self.single_passes > 0:
            losses["loss_single"] = single_pass_ce(out, labels)
            losses["loss"] = losses["loss"] + self.single_passes * losses["loss_single"]
        return losses


class RowTask(Task):
    """One row (:class:`RowSpec`): the student architecture's loss on the loader's (dropped) input.

    Cross-entropy, or with ``spec.distil`` the KD loss against the frozen ``teacher``'s logits on
    the same input (``teacher_input: dropped``: from its cached tokens under the same mask) or on
    all modalities (``all``: precomputed, ``batch["teacher_logits"]``); plus the training-only
    extras of ``student.unimodal_aux`` and ``student.single_passes`` (:class:`TrainingExtras`)."""

    def __init__(self, model: nn.Module, spec: RowSpec, heads: Mapping[str, int], modalities: tuple[str, ...], *,
                 teacher: MultimodalRecognizer | None = None, token_counts: Mapping[str, int] | None = None,
                 alpha: float = 0.5, temperature: float = 1.0, unimodal_aux: float = 0.0,
                 single_passes: float = 0.0, single_pass_target: str = "labels") -> None:
        super().__init__()
        fused = isinstance(model, MultimodalRecognizer)
        self.aux_w = unimodal_aux if fused else 0.0
        self.single_w = single_passes if fused and spec.single_passes else 0.0
        self.model = model
        self.net = (TrainingExtras(model, dict(heads), aux=self.aux_w > 0, singles=self.single_w > 0)
                    if self.aux_w > 0 or self.single_w > 0 else model)
        self.spec = spec
        self.modalities = modalities
        if spec.distil and teacher is None:
            raise ValueError(f"row {spec.name!r} distils from the teacher: give it one")
        object.__setattr__(self, "teacher", teacher)  # frozen: not a submodule (no DDP, no checkpoint)
        self.counts = dict(token_counts or {})
        self.alpha, self.temperature = alpha, temperature
        self.single_pass_target = single_pass_target

    def teacher_logits(self, tokens: Mapping[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen teacher's logits on cached ``tokens`` with the modalities in ``mask``."""
        assert self.teacher is not None
        with torch.no_grad():
            return self.teacher.fusion(_to(tokens, self.device), mask, self.counts)["logits"]

    def forward(self, batch: Batch) -> Losses:
        mask, labels = self.mask(batch), _to(batch["labels"], self.device)
        out = self.net(_to(batch["inputs"], self.device), mask)
        if not self.spec.distil:
            losses = ce_loss(out["logits"], labels)
        else:
            t_logits = (_to(batch["teacher_logits"], self.device) if "teacher_logits" in batch
                        else self.teacher_logits(batch["teacher_tokens"], mask))
            losses = kd_loss(out["logits"], t_logits, labels, self.alpha, self.temperature)
        if self.aux_w > 0:
            losses["loss_unimodal"] = unimodal_aux_loss(out, mask, labels, self.modalities)
            losses["loss"] = losses["loss"] + self.aux_w * losses["loss_unimodal"]
        if self.single_w > 0:
            distil = self.spec.distil and self.single_pass_target == "teacher"
            losses["loss_single"] = self.single_pass_loss(out, mask, labels, batch, distil)
            losses["loss"] = losses["loss"] + self.single_w * losses["loss_single"]
        return losses

    def single_pass_loss(self, out: dict[str, Any], mask: torch.Tensor, labels: dict[str, torch.Tensor],
                         batch: Batch, distil: bool) -> torch.Tensor:
        """Mean over modalities of the row's loss on its single-modality fusion passes
        (``out["single_logits"]``): cross-entropy unless ``distil``, else the KD loss against the
        teacher's logits for the same input (all modalities with ``teacher_input: all``, else the
        modality the pass saw: the teacher's own single passes, one batched call).

        Why cross-entropy is the default for KD rows too (``single_pass_target: labels``): on the
        synthetic demo, with rows started from unimodal fits, distilling the single passes left
        the student 2 points behind Baseline w/ δ at p = 0.9 on average over 3 row seeds, and
        cross-entropy put it level on average, ahead at 2 of the 3 (CHANGELOG, stop 15).
        With ``teacher_input: all`` the target of a lone-modality pass is the all-modality
        teacher's answer, no better than the label when the teacher is less accurate than the rows;
        with ``dropped`` it is the teacher's own lone-modality answer, which is weaker still.
        """
        if not distil:
            return single_pass_ce(out, labels)
        singles = out["single_logits"]
        if "teacher_logits" in batch:
            t_all = _to(batch["teacher_logits"], self.device)
            t_single = {m: {t: v[rows] for t, v in t_all.items()} for m, (rows, _) in singles.items()}
        else:
            assert self.teacher is not None
            with torch.no_grad():
                passes = single_pass_logits(self.teacher.fusion, _to(batch["teacher_tokens"], self.device), mask,
                                            self.counts)
            t_single = {m: lg for m, (_, lg) in passes.items()}
        terms = [kd_loss(logits, t_single[m], {t: y[rows] for t, y in labels.items()}, self.alpha,
                         self.temperature)["loss"] for m, (rows, logits) in singles.items()]
        return torch.stack(terms).mean() if terms else torch.zeros((), device=mask.device)
