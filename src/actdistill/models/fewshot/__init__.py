"""Few-shot episodic models; importing this package registers them in ``FEWSHOT_HEADS`` (and ``MODELS``).

Baselines: ``protonet`` (mean-pooled frames), ``otam`` (ordered temporal alignment), ``trx``
(tuple cross-transformers), ``clip_fsar`` (text-modulated prototypes + OTAM); ours: ``clip_m2df``
(CLIP-M²DF, ``specs/clip_m2df.md``). All share one contract
(:class:`~actdistill.models.fewshot.protonet.EpisodicHead`): frame features ``[B, T, D]`` and
one episode in, ``{"logits": [Q, way], "loss": ..., "loss_*": ...}`` out, plus the per-video
split used by cached evaluation. CLIP-M²DF's reference-checkpoint import (including the
reference's argument order, ``reference_forward``) is exported here too.
"""

from actdistill.models.fewshot.clip_fsar import CLIPFSAR, TemporalTransformer
from actdistill.models.fewshot.clip_m2df import CLIPM2DF, count_parameters
from actdistill.models.fewshot.otam import OTAM, frame_cosine_distance, otam_distance, otam_distance_loop
from actdistill.models.fewshot.protonet import (
    FEWSHOT_HEADS,
    EpisodicHead,
    FewShotHead,
    ProtoNet,
    build_backbone,
    class_means,
    episode_way,
    fewshot_methods,
    register_head,
)
from actdistill.models.fewshot.reference_import import (
    ImportReport,
    export_reference_state_dict,
    load_reference_state_dict,
    read_state_dict,
    reference_forward,
)
from actdistill.models.fewshot.trx import TRX, TemporalCrossTransformer

__all__ = [
    "CLIPFSAR",
    "CLIPM2DF",
    "FEWSHOT_HEADS",
    "OTAM",
    "TRX",
    "EpisodicHead",
    "FewShotHead",
    "ImportReport",
    "ProtoNet",
    "TemporalCrossTransformer",
    "TemporalTransformer",
    "build_backbone",
    "class_means",
    "count_parameters",
    "episode_way",
    "export_reference_state_dict",
    "fewshot_methods",
    "frame_cosine_distance",
    "load_reference_state_dict",
    "otam_distance",
    "otam_distance_loop",
    "read_state_dict",
    "reference_forward",
    "register_head",
]
