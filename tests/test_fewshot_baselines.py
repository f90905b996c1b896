"""Few-shot baselines: the OTAM recursion (vectorised vs loop vs the reference formula), and the
ProtoNet / OTAM / TRX / CLIP-FSAR heads (shapes, losses, training, options)."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import actdistill  # noqa: F401  (installs the torchvision shim before any backbone import)
from actdistill.models import MODELS
from actdistill.models.fewshot import (
    CLIPFSAR,
    OTAM,
    TRX,
    ProtoNet,
    TemporalTransformer,
    episode_way,
    frame_cosine_distance,
    otam_distance,
    otam_distance_loop,
)
from actdistill.models.fewshot.trx import TemporalCrossTransformer

DIM, FRAMES = 16, 8


def reference_otam(dists: Tensor, lbda: float) -> Tensor:
    """The reference ``OTAM_cum_dist_v2`` formula, transcribed literally (exp/log, in-place) for
    ``[Q, S, Lq, Ls]``; only safe for small values, so compared in float64."""
    dists = F.pad(dists, (1, 1), "constant", 0)
    cum = torch.zeros(dists.shape, dtype=dists.dtype)
    for m in range(1, dists.shape[3]):
        cum[:, :, 0, m] = dists[:, :, 0, m] + cum[:, :, 0, m - 1]
    for row in range(1, dists.shape[2]):
        cum[:, :, row, 1] = dists[:, :, row, 1] - lbda * torch.log(
            torch.exp(-cum[:, :, row - 1, 0] / lbda)
            + torch.exp(-cum[:, :, row - 1, 1] / lbda)
            + torch.exp(-cum[:, :, row, 0] / lbda)
        )
        for m in range(2, dists.shape[3] - 1):
            cum[:, :, row, m] = dists[:, :, row, m] - lbda * torch.log(
                torch.exp(-cum[:, :, row - 1, m - 1] / lbda) + torch.exp(-cum[:, :, row, m - 1] / lbda)
            )
        cum[:, :, row, -1] = dists[:, :, row, -1] - lbda * torch.log(
            torch.exp(-cum[:, :, row - 1, -2] / lbda)
            + torch.exp(-cum[:, :, row - 1, -1] / lbda)
            + torch.exp(-cum[:, :, row, -2] / lbda)
        )
    return cum[:, :, -1, -1]


# ------------------------------------------------------------------------------------------- OTAM


def test_loop_oracle_matches_the_reference_formula() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 4, 8, 8), (2, 5, 6, 9), (1, 1, 1, 1), (2, 2, 5, 1), (2, 3, 1, 4)]:
        d = torch.rand(shape, generator=g, dtype=torch.float64) * 2
        for lbda in (0.1, 0.5):
            ref = reference_otam(d, lbda) + reference_otam(d.transpose(-1, -2), lbda)
            torch.testing.assert_close(otam_distance_loop(d, lbda), ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(otam_distance(d, lbda), ref, rtol=1e-10, atol=1e-10)
            single = otam_distance(d, lbda, bidirectional=False)
            torch.testing.assert_close(single, reference_otam(d, lbda), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    lq=st.integers(1, 9),
    ls=st.integers(1, 9),
    lbda=st.sampled_from([0.1, 0.5, 1.0]),
    bidirectional=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_vectorised_otam_equals_the_loop(
    batch: list[int], lq: int, ls: int, lbda: float, bidirectional: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(*batch, lq, ls, generator=g) * 2).requires_grad_(True)
    fast = otam_distance(d, lbda, bidirectional)
    slow = otam_distance_loop(d, lbda, bidirectional)
    assert fast.shape == tuple(batch)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    weights = torch.rand(fast.shape, generator=g)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), d)
    (g_slow,) = torch.autograd.grad((slow * weights).sum(), d)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-5, atol=1e-5)


def test_otam_gradients_flow_and_pass_gradcheck() -> None:
    d = torch.rand(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: otam_distance(x, 0.5, True), (d,))
    assert torch.autograd.gradcheck(lambda x: otam_distance(x, 0.1, False), (d,))
    q = torch.randn(4, FRAMES, DIM, requires_grad=True)
    s = torch.randn(3, FRAMES, DIM, requires_grad=True)
    otam_distance(frame_cosine_distance(q[:, None], s[None])).sum().backward()
    assert q.grad is not None and s.grad is not None
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0 and s.grad.abs().sum() > 0


def test_otam_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        otam_distance(torch.rand(3))
    with pytest.raises(ValueError):
        otam_distance(torch.rand(2, 0, 3))
    with pytest.raises(ValueError):
        otam_distance(torch.rand(2, 3, 3), lbda=0.0)


def test_otam_prefers_the_aligned_order() -> None:
    """A query equal to the support scores lower than the same frames reversed."""
    s = torch.randn(1, FRAMES, DIM)
    q = torch.cat([s, s.flip(1)])
    dist = otam_distance(frame_cosine_distance(q[:, None], s[None]))[:, 0]
    assert dist[0] < dist[1]


def test_frame_cosine_distance_uses_the_reference_eps() -> None:
    a, b = torch.randn(2, 3, 5, DIM), torch.randn(2, 3, 4, DIM)
    d = frame_cosine_distance(a, b)
    assert d.shape == (2, 3, 5, 4)
    want = 1 - (a @ b.transpose(-1, -2)) / (a.norm(dim=-1)[..., None] * b.norm(dim=-1)[..., None, :] + 0.01)
    torch.testing.assert_close(d, want)
    assert frame_cosine_distance(a, a).diagonal(dim1=-2, dim2=-1).gt(0).all()  # eps: never exactly 0


# ------------------------------------------------------------------------------------------ heads


def episode(way: int, shot: int, query: int, dim: int = DIM, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    support_labels = torch.arange(way).repeat_interleave(shot)[torch.randperm(way * shot, generator=g)]
    query_labels = torch.arange(way).repeat_interleave(query)[torch.randperm(way * query, generator=g)]
    return {
        "support": torch.randn(way * shot, FRAMES, dim, generator=g),
        "support_labels": support_labels,
        "query": torch.randn(way * query, FRAMES, dim, generator=g),
        "query_labels": query_labels,
        "support_real_labels": support_labels * 2 + 1,  # any index into the 12-class text table
        "query_real_labels": query_labels * 2 + 1,
    }


def build(name: str, backbone: nn.Module | None = None) -> nn.Module:
    options: dict[str, object] = {
        "protonet": {},
        "otam": {},
        "trx": {"out_dim": 24},
        "clip_fsar": {"heads": 4, "mlp_dim": 32},
    }[name]
    model = MODELS.build(name, dim=DIM, backbone=backbone, **options)
    if isinstance(model, CLIPFSAR):
        model.set_text_features(torch.randn(12, DIM, generator=torch.Generator().manual_seed(1)))
    return model


NAMES = ["protonet", "otam", "trx", "clip_fsar"]


def test_registered_names() -> None:
    assert {"protonet", "otam", "trx", "clip_fsar"} <= set(MODELS.names())
    assert (MODELS.get("protonet"), MODELS.get("otam"), MODELS.get("trx")) == (ProtoNet, OTAM, TRX)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("shot", "query"), [(1, 1), (5, 5)])
def test_head_shapes_and_loss(name: str, shot: int, query: int) -> None:
    model = build(name).eval()
    ep = episode(5, shot, query)
    out = model(**ep)
    assert out["logits"].shape == (5 * query, 5)
    assert torch.isfinite(out["logits"]).all()
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss_ce"], F.cross_entropy(out["logits"], ep["query_labels"]))
    no_labels = model(ep["support"], ep["support_labels"], ep["query"], support_real_labels=ep["support_real_labels"])
    assert "loss" not in no_labels and no_labels["logits"].shape == (5 * query, 5)


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_reduce_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, backbone=nn.Linear(DIM, DIM))  # ProtoNet/OTAM have no parameters of their own
    ep = episode(5, 1, 2, seed=3)
    model.eval()
    before = model(**ep)["loss"].item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        model(**ep)["loss"].backward()
        opt.step()
    model.eval()
    assert model(**ep)["loss"].item() < before


def test_backbone_from_the_encoder_registry() -> None:
    model = MODELS.build("otam", backbone={"name": "frames", "size": "tiny", "temporal_layers": 0})
    assert model.dim == 16
    clips = torch.rand(5, FRAMES, 3, 32, 32)
    out = model(clips, torch.arange(5), clips[:3], torch.tensor([0, 1, 2]))
    assert out["logits"].shape == (3, 5) and out["loss"].requires_grad


def test_episode_label_checks() -> None:
    assert episode_way(torch.tensor([2, 0, 1, 1])) == 3
    for bad in (torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]])):
        with pytest.raises(ValueError):
            episode_way(bad)
    model = build("protonet")
    ep = episode(3, 1, 1)
    with pytest.raises(ValueError):
        model(ep["support"][:, :, :8], ep["support_labels"], ep["query"][:, :, :8])  # built for dim 16
    with pytest.raises(ValueError):
        model(ep["support"], ep["support_labels"], ep["query"], ep["query_labels"][:2])


def test_protonet_is_negative_squared_euclidean_to_class_means() -> None:
    ep = episode(3, 2, 1)
    out = ProtoNet()(ep["support"], ep["support_labels"], ep["query"])
    means = torch.stack([ep["support"][ep["support_labels"] == c].mean((0, 1)) for c in range(3)])
    want = -((ep["query"].mean(1)[:, None] - means[None]) ** 2).sum(-1)
    torch.testing.assert_close(out["logits"], want)


def test_otam_head_averages_per_video_distances_over_shots() -> None:
    ep = episode(3, 2, 2)
    out = OTAM(lbda=0.1)(ep["support"], ep["support_labels"], ep["query"])
    per_video = otam_distance(frame_cosine_distance(ep["query"][:, None], ep["support"][None]), 0.1)
    want = torch.stack([per_video[:, ep["support_labels"] == c].mean(1) for c in range(3)], dim=1)
    torch.testing.assert_close(out["logits"], -want)
    proto = OTAM(aggregate="prototype")(ep["support"], ep["support_labels"], ep["query"])
    assert proto["logits"].shape == (6, 3)


def reference_trx_distances(t: TemporalCrossTransformer, support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
    """The reference per-class loop of ``TemporalCrossTransformer.forward`` (eval mode)."""
    tuples = [torch.tensor(c) for c in combinations(range(support.shape[1]), t.cardinality)]
    pe = t._tuples_and_pe(support.shape[1], support)[1]

    def tokens(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + pe
        tok = torch.stack([x.index_select(-2, p).reshape(x.shape[0], -1) for p in tuples], dim=-2)
        return t.norm_k(t.k_linear(tok)), t.v_linear(tok)

    sk, sv = tokens(support)
    qk, qv = tokens(query)
    out = torch.zeros(query.shape[0], int(labels.max()) + 1)
    for c in torch.unique(labels):
        ck, cv = sk[labels == c], sv[labels == c]
        scores = torch.matmul(qk.unsqueeze(1), ck.transpose(-2, -1)) / math.sqrt(t.out_dim)
        scores = scores.permute(0, 2, 1, 3).reshape(query.shape[0], len(tuples), -1).softmax(-1)
        scores = scores.reshape(query.shape[0], len(tuples), -1, len(tuples)).permute(0, 2, 1, 3)
        proto = torch.matmul(scores, cv).sum(1)
        out[:, c] = torch.norm(qv - proto, dim=[-2, -1]) ** 2 / len(tuples)
    return out


def test_trx_matches_the_reference_per_class_loop() -> None:
    torch.manual_seed(0)
    model = TRX(dim=DIM, out_dim=12).eval()
    ep = episode(4, 3, 2)
    out = model(**ep)
    per_card = []
    for t in model.transformers:
        want = reference_trx_distances(t, ep["support"], ep["support_labels"], ep["query"])
        torch.testing.assert_close(out[f"distance_card{t.cardinality}"], want, rtol=1e-5, atol=1e-5)
        per_card.append(want)
    torch.testing.assert_close(out["logits"], -torch.stack(per_card, -1).norm(dim=-1), rtol=1e-5, atol=1e-5)
    # Unequal shots (a class with fewer supports) take the masked path: same distances as the loop.
    keep = torch.ones(len(ep["support_labels"]), dtype=torch.bool)
    keep[(ep["support_labels"] == 0).nonzero()[0]] = False
    support, labels = ep["support"][keep], ep["support_labels"][keep]
    for t in model.transformers:
        torch.testing.assert_close(t(support, labels, ep["query"], 4),
                                   reference_trx_distances(t, support, labels, ep["query"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cards", [(1,), (2,), (3,), (2, 3), (2, 3, 4)])
@pytest.mark.parametrize("combine", ["norm", "sum"])
def test_trx_cardinality_options(cards: tuple[int, ...], combine: str) -> None:
    model = TRX(dim=DIM, cardinalities=cards, out_dim=8, combine=combine).eval()
    out = model(**episode(5, 1, 1))
    assert out["logits"].shape == (5, 5)
    assert {f"distance_card{c}" for c in cards} <= set(out)
    total = torch.stack([out[f"distance_card{c}"] for c in cards], -1)
    want = -total.norm(dim=-1) if combine == "norm" else -total.sum(-1)
    torch.testing.assert_close(out["logits"], want)


def test_trx_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        TRX(dim=DIM, cardinalities=())
    with pytest.raises(ValueError):
        TRX(dim=DIM, cardinalities=(2, 2))
    with pytest.raises(ValueError):
        TRX(dim=DIM, combine="max")
    with pytest.raises(ValueError):
        TRX(cardinalities=(2,))  # no dim and no backbone
    with pytest.raises(ValueError):
        TRX(dim=DIM, cardinalities=(9,)).eval()(**episode(2, 1, 1))  # 9-tuples of 8 frames


def test_clip_fsar_text_handling() -> None:
    model = build("clip_fsar").eval()
    ep = episode(5, 1, 1)
    out = model(**ep)
    assert out["class_logits"].shape == (10, 12)  # supports then queries, against every class text
    want = F.cross_entropy(out["class_logits"], torch.cat([ep["support_real_labels"], ep["query_real_labels"]]))
    torch.testing.assert_close(out["loss_text"], want)
    torch.testing.assert_close(out["loss"], out["loss_ce"] + 1.0 * out["loss_text"])
    # Eval mode reads the test table, training mode the train table.
    model.set_text_features(torch.randn(12, DIM), torch.randn(12, DIM))
    assert not torch.allclose(model(**ep)["logits"], model.train()(**ep)["logits"])
    with pytest.raises(ValueError, match="support_real_labels"):
        model(ep["support"], ep["support_labels"], ep["query"])
    with pytest.raises(ValueError, match="text"):
        CLIPFSAR(dim=DIM, heads=4, mlp_dim=32)(**ep)
    given_table = CLIPFSAR(dim=DIM, heads=4, mlp_dim=32, text_dim=7).eval()
    assert given_table(**ep, text_features=torch.randn(12, 7))["logits"].shape == (5, 5)


def test_text_token_position_does_not_matter() -> None:
    """No positional encoding: appending (the reference) or prepending the text token gives the
    same frame tokens, so CLIP-FSAR's 'prepend' and the code's 'append' are the same model."""
    t = TemporalTransformer(DIM, heads=4, mlp_dim=32).eval()
    frames, text = torch.randn(3, FRAMES, DIM), torch.randn(3, 1, DIM)
    appended = t(torch.cat([frames, text], 1))[:, :FRAMES]
    prepended = t(torch.cat([text, frames], 1))[:, 1:]
    torch.testing.assert_close(appended, prepended, rtol=1e-5, atol=1e-5)


def test_clip_fsar_state_dict_uses_the_reference_names() -> None:
    keys = set(CLIPFSAR(dim=DIM, heads=4, mlp_dim=32).state_dict())
    assert {
        "scale",
        "context2.layers.0.0.norm.weight",
        "context2.layers.0.0.fn.to_q.weight",
        "context2.layers.0.0.fn.to_k.weight",
        "context2.layers.0.0.fn.to_v.weight",
        "context2.layers.0.0.fn.to_out.0.weight",
        "context2.layers.0.1.net.0.weight",
        "context2.layers.0.1.net.3.weight",
    } <= keys
    assert not any(k.startswith("text_") for k in keys)  # text tables are not weights


def test_trx_per_video_stages_give_the_same_logits() -> None:
    torch.manual_seed(0)
    model = TRX(dim=DIM, out_dim=12).eval()
    ep = episode(4, 3, 2)
    want = model(**ep)["logits"]
    with torch.no_grad():
        got = model.episode_logits(model.video_stage(ep["support"]), ep["support_labels"],
                                   model.video_stage(ep["query"]))["logits"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
