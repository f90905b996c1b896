"""KARMMA models and distillation pieces: encoders, fusion, missing modalities, dropout, losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import actdistill  # noqa: F401  (installs the torchvision shim before any backbone import)
from actdistill.distill import ce_loss, kd_loss, mask_inputs, modality_dropout
from actdistill.models import (
    ENCODERS,
    MISSING_MODES,
    MODELS,
    FrozenExtractor,
    KARMMAFusion,
    LateFusion,
    MultimodalRecognizer,
    build_encoder,
    build_karmma,
    freeze,
    load_state_dict_file,
    select_present,
)

ALL = ("rgb", "flow", "audio", "depth", "boxes", "imu")
HEADS = {"verb": 5, "noun": 7}
B, T = 3, 2


def make_inputs(b: int = B, t: int = T, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(b, t, 4, 6, generator=g)
    boxes[..., 4] = torch.randint(0, 3, (b, t, 4), generator=g).float()
    boxes[..., 5] = (torch.rand(b, t, 4, generator=g) > 0.3).float()
    return {
        "rgb": torch.rand(b, t, 3, 32, 32, generator=g),
        "flow": torch.rand(b, t, 2, 32, 32, generator=g) * 2 - 1,
        "audio": torch.randn(b, t, 1, 32, 24, generator=g),
        "depth": torch.rand(b, t, 1, 32, 32, generator=g),
        "boxes": boxes,
        "imu": torch.randn(b, t, 6, 16, generator=g),
    }


PRESENT = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)


def tiny_model(missing: str = "tokens", modalities: tuple[str, ...] = ALL, **kw: object) -> MultimodalRecognizer:
    torch.manual_seed(0)
    return build_karmma(modalities, HEADS, size="tiny", missing=missing, dropout=0.0, **kw)


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    ("name", "modality", "opts"),
    [
        ("frames", "rgb", {}),
        ("frames", "rgb", {"grid": 2}),
        ("frames", "rgb", {"pool": "max"}),
        ("frames", "depth", {"pool": "avgmax", "grid": 2}),
        ("frames", "depth", {}),
        ("flow", "flow", {}),
        ("spectrogram", "audio", {}),
        ("boxes", "boxes", {}),
        ("boxes", "boxes", {"pool": "max", "out_dim": 12}),
        ("imu", "imu", {}),
        ("compact", "rgb", {}),
        ("compact", "audio", {"temporal_layers": 0}),
        ("compact", "imu", {"widths": (4, 8, 8)}),
    ],
)
def test_builtin_encoder_shapes(name: str, modality: str, opts: dict) -> None:
    enc = build_encoder(name, modality=modality, size="tiny", **opts)
    x = make_inputs()[modality]
    out = enc(x)
    assert enc.modality == modality
    assert out.shape == (B, enc.num_tokens(T), enc.out_dim)
    assert torch.isfinite(out).all()


def test_max_pooling_keeps_a_small_object_that_averaging_dilutes() -> None:
    """Why ``pool: max`` exists: one hot cell in a big map is averaged away, not maxed away."""
    from actdistill.models.encoders.base import grid_tokens

    feat = torch.zeros(2, 3, 8, 8)
    feat[1, 0, 5, 2] = 1.0  # frame 1 holds a small "object" in channel 0
    assert grid_tokens(feat, 1, "avg")[1, 0, 0].item() == pytest.approx(1 / 64)
    assert grid_tokens(feat, 1, "max")[1, 0, 0].item() == 1.0
    assert grid_tokens(feat, 1, "avgmax")[1, 0, 0].item() == pytest.approx(1 + 1 / 64)
    assert grid_tokens(feat, 2, "max")[1, 2].tolist() == [1.0, 0.0, 0.0]  # bottom-left cell of 2x2
    with pytest.raises(ValueError, match="unknown pool"):
        build_encoder("frames", modality="rgb", size="tiny", pool="median")


def test_grid_tokens_equal_adaptive_pooling_on_divisible_and_odd_maps() -> None:
    """A divisible map takes the fixed-kernel path (exportable to ONNX), an odd one the adaptive
    path; both must give adaptive pooling's cells."""
    from torch.nn import functional as F

    from actdistill.models.encoders.base import grid_tokens

    for h, w in ((4, 6), (5, 7)):
        feat = torch.randn(3, 5, h, w)
        for g in (1, 2):
            avg, mx = F.adaptive_avg_pool2d(feat, g), F.adaptive_max_pool2d(feat, g)
            for pool, want in (("avg", avg), ("max", mx), ("avgmax", avg + mx)):
                torch.testing.assert_close(grid_tokens(feat, g, pool), want.flatten(2).transpose(1, 2))


def test_spatial_softmax_keypoints_say_where_the_object_is() -> None:
    """Global pooling forgets position; the keypoints appended by ``keypoints: K`` keep it."""
    import math

    from actdistill.models.encoders.base import SpatialSoftmax, grid_tokens

    kp = SpatialSoftmax(1, 1)
    with torch.no_grad():
        kp.maps.weight.fill_(1.0)
        kp.maps.bias.zero_()
        kp.log_temperature.fill_(math.log(0.01))  # sharp: the expectation lands on the hot cell
    feat = torch.zeros(2, 1, 8, 8)
    feat[0, 0, 1, 6] = 1.0  # top right
    feat[1, 0, 6, 1] = 1.0  # bottom left: same max-pooled value, other place
    assert torch.equal(grid_tokens(feat, 1, "max")[0], grid_tokens(feat, 1, "max")[1])
    g = torch.linspace(-1, 1, 8)
    torch.testing.assert_close(kp(feat), torch.tensor([[g[6], g[1]], [g[1], g[6]]]), atol=1e-4, rtol=0)
    enc = build_encoder("frames", modality="rgb", size="tiny", pool="max", keypoints=4)
    assert enc.out_dim == 16 + 2 * 4
    assert enc(torch.rand(2, 3, 3, 32, 32)).shape == (2, 3, enc.out_dim)
    with pytest.raises(ValueError, match="grid=1"):
        build_encoder("frames", modality="rgb", size="tiny", keypoints=4, grid=2)


def test_frame_standardize_makes_a_small_depth_step_the_signal() -> None:
    """A 15 mm object on a 0.7 m counter is 0.2% of the raw value; standardised, it is order 1."""
    from actdistill.models.encoders.compact import frame_standardize

    x = torch.full((2, 1, 8, 8), 0.07)
    x[0, 0, 2:4, 2:4] -= 0.0015  # the object's top, closer to the camera
    x[1] = 0.0  # a frame with no measurement at all
    y = frame_standardize(x)
    assert torch.isfinite(y).all() and torch.equal(y[1], torch.zeros_like(y[1]))
    assert y[0].mean().abs() < 1e-4 and (y[0].std() - 1).abs() < 1e-2
    assert y[0, 0, 2, 2] < -1.5 < 0 < y[0, 0, 6, 6]
    z = torch.rand(3, 2, 7, 9, dtype=torch.float64)  # the hand-written std is Tensor.std's
    want = (z - z.mean(dim=(-2, -1), keepdim=True)) / (z.std(dim=(-2, -1), keepdim=True) + 1e-6)
    torch.testing.assert_close(frame_standardize(z), want, rtol=1e-12, atol=1e-12)
    enc = build_encoder("frames", modality="depth", size="tiny", input_norm="frame")
    assert torch.isfinite(enc(torch.zeros(2, 3, 1, 32, 32))).all()
    with pytest.raises(ValueError, match="input_norm"):
        build_encoder("frames", modality="depth", size="tiny", input_norm="batch")


def test_temporal_shift_moves_channels_one_frame_each_way() -> None:
    from actdistill.models.encoders.compact import temporal_shift

    b, t, c = 2, 4, 8
    x = torch.arange(b * t * c, dtype=torch.float32).view(b * t, c, 1, 1)
    y = temporal_shift(x, t, 0.125).view(b, t, c)
    v = x.view(b, t, c)
    assert torch.equal(y[:, :-1, 0], v[:, 1:, 0]) and (y[:, -1, 0] == 0).all()  # sees the next frame
    assert torch.equal(y[:, 1:, 1], v[:, :-1, 1]) and (y[:, 0, 1] == 0).all()  # sees the previous frame
    assert torch.equal(y[:, :, 2:], v[:, :, 2:])
    assert torch.equal(temporal_shift(x, t, 0.0), x) and torch.equal(temporal_shift(x, 1, 0.25), x)
    enc = build_encoder("frames", modality="rgb", size="tiny", shift=0.125)
    assert enc(torch.rand(2, 4, 3, 32, 32)).shape == (2, 4, enc.out_dim)
    with pytest.raises(ValueError, match="shift"):
        build_encoder("frames", modality="rgb", size="tiny", shift=0.75)


def test_flow_stack_channels_and_registry_names() -> None:
    enc = build_encoder("flow", modality="flow", size="tiny", stack=3)
    assert enc.in_channels == 6
    assert enc(torch.rand(2, 2, 6, 32, 32)).shape == (2, 2, enc.out_dim)
    with pytest.raises(ValueError, match="channels"):
        enc(torch.rand(2, 2, 2, 32, 32))
    compact = build_encoder("compact", modality="flow", size="tiny")  # 2 channels unless told
    with pytest.raises(ValueError, match=r"expects 2 channels, got 10 .*stack: k"):
        compact(torch.rand(2, 2, 10, 32, 32))
    for name in ("frames", "flow", "spectrogram", "boxes", "imu", "compact", "mobilenet_v2", "timm",
                 "torchvision_video", "open_clip"):  # fmt: skip
        assert name in ENCODERS


def test_sizes_grow_and_student_audio_is_tiny() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    flops = {}
    x = torch.randn(1, 1, 1, 128, 160)
    for size in ("tiny", "student", "teacher"):
        enc = build_encoder("spectrogram", modality="audio", size=size).eval()
        counts[size] = sum(p.numel() for p in enc.parameters())
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            enc(x)
        flops[size] = fc.get_total_flops()
    assert counts["tiny"] < counts["student"] < counts["teacher"]
    assert 0.003 < flops["student"] / flops["teacher"] < 0.03  # the paper: 4.7 / 568 ~ 0.8%


def test_boxes_ignore_invalid_slots() -> None:
    enc = build_encoder("boxes", modality="boxes", size="tiny").eval()
    x = make_inputs()["boxes"]
    x[0, 0, :, 5] = 0.0  # a frame with no valid object
    y = x.clone()
    invalid = y[..., 5] < 0.5
    y[..., :4][invalid] = torch.rand(int(invalid.sum()), 4)
    y[..., 4][invalid] = 2.0
    torch.testing.assert_close(enc(x), enc(y))
    bad = x.clone()
    bad[0, 1, 0, 4:] = torch.tensor([9.0, 1.0])
    with pytest.raises(ValueError, match="category"):
        enc(bad)


def test_mobilenet_v2_offline_weights_load() -> None:
    from actdistill.models.encoders import offline_mobilenet_v2_path

    raw = torch.load(offline_mobilenet_v2_path(), map_location="cpu", weights_only=True)
    enc = build_encoder("mobilenet_v2", modality="rgb", pretrained="imagenet-offline")
    torch.testing.assert_close(enc.features[0][0].weight, raw["features.0.0.weight"])
    torch.testing.assert_close(enc.features[18][0].weight, raw["features.18.0.weight"])
    out = enc.eval()(torch.rand(2, 2, 3, 32, 32))
    assert out.shape == (2, 2, 1280) and enc.out_dim == 1280 and enc.num_tokens(2) == 2
    rand = build_encoder("mobilenet_v2", modality="rgb", pretrained=None)
    assert not torch.equal(rand.features[0][0].weight, raw["features.0.0.weight"])


def test_mobilenet_v2_local_safetensors_and_flow_channels(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from actdistill.models.encoders import offline_mobilenet_v2_path

    raw = torch.load(offline_mobilenet_v2_path(), map_location="cpu", weights_only=True)
    path = tmp_path / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in raw.items()}, str(path))
    enc = build_encoder("mobilenet_v2", modality="flow", pretrained=str(path), in_channels=2, grid=2)
    expect = raw["features.0.0.weight"].mean(1, keepdim=True).expand(-1, 2, -1, -1)
    torch.testing.assert_close(enc.features[0][0].weight, expect)
    assert enc(torch.rand(1, 2, 2, 32, 32)).shape == (1, 8, 1280)


def test_load_state_dict_file_unwraps(tmp_path: Path) -> None:
    sd = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ck.pth")
    assert set(load_state_dict_file(tmp_path / "ck.pth")) == {"a.weight", "b"}
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "nope.pth")


def test_timm_adapter_pooled_grid_and_checkpoint(tmp_path: Path) -> None:
    enc = build_encoder("timm", modality="rgb", model_name="mobilenetv3_small_050").eval()
    x = torch.rand(2, 2, 3, 32, 32)
    out = enc(x)
    assert out.shape == (2, 2, enc.out_dim)
    grid = build_encoder("timm", modality="rgb", model_name="mobilenetv3_small_050", tokens="grid", grid=2)
    assert grid(torch.rand(1, 2, 3, 64, 64)).shape == (1, 8, grid.out_dim)
    # a checkpoint with a classifier (as saved by a training script) loads; the head is ignored
    import timm

    full = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    torch.save(full.state_dict(), tmp_path / "m.pth")
    loaded = build_encoder(
        "timm", modality="rgb", model_name="mobilenetv3_small_050", checkpoint=str(tmp_path / "m.pth"), freeze=True
    )
    torch.testing.assert_close(loaded.model.conv_stem.weight, full.conv_stem.weight)
    assert loaded.frozen and not loaded.training and not loaded(x).requires_grad


def test_torchvision_video_r3d18(tmp_path: Path) -> None:
    from torchvision.models.video import r3d_18

    ref = r3d_18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r3d.pth")
    enc = build_encoder("torchvision_video", modality="rgb", arch="r3d_18", checkpoint=str(tmp_path / "r3d.pth"))
    torch.testing.assert_close(enc.net.stem[0].weight, ref.stem[0].weight)
    x = torch.rand(2, 4, 3, 32, 32)
    assert enc.eval()(x).shape == (2, 1, 512) and enc.num_tokens(4) == 1
    timed = build_encoder("torchvision_video", modality="rgb", arch="mc3_18", tokens="time")
    assert timed(x).shape == (2, timed.num_tokens(4), 512) == (2, 4, 512)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "frames", "size"), [("r2plus1d_18", 10, 32), ("swin3d_t", 4, 64),
                                                       ("mvit_v2_s", 16, 224)])  # fmt: skip
def test_torchvision_video_time_tokens(arch: str, frames: int, size: int) -> None:
    enc = build_encoder("torchvision_video", modality="rgb", arch=arch, tokens="time", freeze=True)
    out = enc(torch.rand(1, frames, 3, size, size))
    assert out.shape == (1, enc.num_tokens(frames), enc.out_dim)


@pytest.mark.slow
def test_open_clip_visual_tower(tmp_path: Path) -> None:
    import open_clip

    model = open_clip.create_model("ViT-S-32", pretrained=None, force_image_size=64)
    torch.save(model.state_dict(), tmp_path / "clip.pth")
    enc = build_encoder("open_clip", modality="rgb", arch="ViT-S-32", image_size=64,
                        pretrained=str(tmp_path / "clip.pth"), freeze=True)  # fmt: skip
    torch.testing.assert_close(enc.visual.conv1.weight, model.visual.conv1.weight)
    assert enc(torch.rand(2, 2, 3, 64, 64)).shape == (2, 2, enc.out_dim)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_encoder("open_clip", modality="rgb", arch="ViT-S-32", pretrained="openai")


def test_freeze_and_frozen_extractor() -> None:
    enc = build_encoder("frames", modality="rgb", size="tiny")
    wrapped = FrozenExtractor(enc)
    wrapped.train()
    assert not wrapped.training and not enc.training
    assert all(not p.requires_grad for p in wrapped.parameters())
    assert wrapped.num_tokens(3) == 3 and wrapped.out_dim == enc.out_dim and wrapped.modality == "rgb"
    assert not wrapped(make_inputs()["rgb"]).requires_grad
    net = freeze(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    assert not net.training and not any(p.requires_grad for p in net.parameters())


# --------------------------------------------------------------------------- fusion


@pytest.mark.parametrize("missing", MISSING_MODES)
def test_fusion_shapes_every_missing_mode(missing: str) -> None:
    model = tiny_model(missing)
    out = model(make_inputs(), PRESENT)
    assert {t: v.shape for t, v in out["logits"].items()} == {"verb": (B, 5), "noun": (B, 7)}
    assert out["cls"].shape == (B, model.fusion.dim)
    assert set(out["per_modality_logits"]) == set(ALL)
    out["logits"]["verb"].sum().backward()


@pytest.mark.parametrize("missing", MISSING_MODES)
@pytest.mark.parametrize("train", [False, True])
def test_absent_modality_data_never_matters(missing: str, train: bool) -> None:
    model = tiny_model(missing).train(train)
    x = make_inputs()
    y = {m: v.clone() for m, v in x.items()}
    for j, m in enumerate(ALL):
        absent = ~PRESENT[:, j]
        y[m][absent] = torch.randn_like(y[m][absent]) * 5  # garbage where the modality is absent
    a, b = model(x, PRESENT), model(y, PRESENT)
    for t in HEADS:
        torch.testing.assert_close(a["logits"][t], b["logits"][t])


def test_encoders_only_see_present_rows() -> None:
    seen: dict[str, int] = {}
    model = tiny_model()
    for m, enc in model.encoders.items():
        enc.register_forward_pre_hook(lambda mod, args, m=m: seen.__setitem__(m, args[0].shape[0]))
    present = PRESENT.clone()
    present[:, ALL.index("imu")] = False
    out = model(make_inputs(), present)
    assert "imu" not in seen  # a modality no sample has is not encoded
    assert seen == {m: int(present[:, j].sum()) for j, m in enumerate(ALL) if m != "imu"}
    # leaving the absent modality out of the inputs changes nothing
    inputs = make_inputs()
    del inputs["imu"]
    torch.testing.assert_close(model(inputs, present)["logits"]["noun"], out["logits"]["noun"])


def test_logits_average_cls_and_present_heads_only() -> None:
    model = tiny_model().eval()
    out = model(make_inputs(), PRESENT)
    for t in HEADS:
        for i in range(B):
            parts = [out["cls_logits"][t][i]]
            parts += [out["per_modality_logits"][m][t][i] for j, m in enumerate(ALL) if PRESENT[i, j]]
            torch.testing.assert_close(out["logits"][t][i], torch.stack(parts).mean(0))
    cls_only = tiny_model(prediction="cls").eval()
    o = cls_only(make_inputs(), PRESENT)
    torch.testing.assert_close(o["logits"]["verb"], o["cls_logits"]["verb"])


def test_missing_modes_fill_slots_as_specified() -> None:
    fusion = KARMMAFusion(("rgb", "flow"), {"rgb": 4, "flow": 3}, HEADS, dim=8, depth=1, num_heads=2, max_tokens=4)
    rows = torch.tensor([True, False])
    x = torch.randn(2, 3, 3)
    emb = fusion._embed(1, "flow", x, rows, 3, 2)
    base = fusion.modality_tokens[1] + fusion.position_tokens[1, :3]
    torch.testing.assert_close(emb[1], base)  # tokens: modality + token-specific only
    torch.testing.assert_close(emb[0], fusion.proj["flow"](x[0]) + base)
    single = KARMMAFusion(("rgb", "flow"), {"rgb": 4, "flow": 3}, HEADS, dim=8, num_heads=2, missing="single_token")
    emb = single._embed(1, "flow", x, rows, 3, 2)
    torch.testing.assert_close(emb[1], single.missing_tokens[1].expand(3, 8))
    zeros = KARMMAFusion(("rgb", "flow"), {"rgb": 4, "flow": 3}, HEADS, dim=8, num_heads=2, missing="zeros")
    emb = zeros._embed(1, "flow", x, rows, 3, 2)
    base = zeros.modality_tokens[1] + zeros.position_tokens[1, :3]
    torch.testing.assert_close(emb[1], zeros.proj["flow"](torch.zeros(3, 3)) + base)
    with pytest.raises(ValueError, match="max_tokens"):
        fusion._embed(0, "rgb", torch.randn(2, 5, 4), rows, 5, 2)


def test_mask_mode_equals_leaving_the_modality_out() -> None:
    torch.manual_seed(0)
    kw = {"dim": 16, "depth": 1, "num_heads": 2, "dropout": 0.0, "missing": "mask"}
    fusion = KARMMAFusion(("rgb", "flow"), {"rgb": 4, "flow": 3}, HEADS, **kw).eval()
    tokens = {"rgb": torch.randn(2, 2, 4), "flow": torch.randn(2, 2, 3)}
    present = torch.tensor([[True, False], [True, False]])
    with_slots = fusion(tokens, present)
    without = fusion({"rgb": tokens["rgb"]}, present)
    torch.testing.assert_close(with_slots["logits"]["verb"], without["logits"]["verb"])
    with torch.no_grad():  # the inference fast path (used by the frozen teacher) agrees
        fast = fusion(tokens, present)
    torch.testing.assert_close(fast["logits"]["verb"], with_slots["logits"]["verb"])
    # while "tokens" mode does attend to the missing-modality slots
    fusion.missing = "tokens"
    assert not torch.allclose(fusion(tokens, present)["cls"], with_slots["cls"])


def test_late_fusion_averages_present_modalities() -> None:
    torch.manual_seed(0)
    model = MODELS.build("late_fusion", modalities=ALL, heads=HEADS, size="tiny")
    assert isinstance(model, LateFusion)
    model.eval()
    x = make_inputs()
    out = model(x, PRESENT)
    for i in range(B):
        parts = [out["per_modality_logits"][m]["noun"][i] for j, m in enumerate(ALL) if PRESENT[i, j]]
        torch.testing.assert_close(out["logits"]["noun"][i], torch.stack(parts).mean(0))
    y = {m: v.clone() for m, v in x.items()}
    y["rgb"][1] = 7.0  # sample 1 has no rgb
    torch.testing.assert_close(model(y, PRESENT)["logits"]["noun"], out["logits"]["noun"])


def test_models_registry_and_select_present() -> None:
    assert {"karmma", "late_fusion"} <= set(MODELS.names())
    batch_mods = ("rgb", "flow", "audio")
    present = torch.tensor([[True, False, True], [False, True, True]])
    sel = select_present(present, batch_mods, ("audio", "rgb", "depth"))
    assert sel.tolist() == [[True, True, False], [True, False, False]]
    model = MODELS.build("karmma", modalities=("rgb", "audio"), heads=HEADS, size="tiny")
    x = make_inputs(2)
    out = model({"rgb": x["rgb"], "audio": x["audio"]}, select_present(present, batch_mods, ("rgb", "audio")))
    assert out["logits"]["verb"].shape == (2, 5)


def test_teacher_config_with_frozen_pretrained_extractor() -> None:
    model = build_karmma(
        ("rgb", "audio"), HEADS, size="tiny", encoders={"rgb": {"name": "mobilenet_v2", "freeze": True}}
    )
    assert model.fusion.proj["rgb"].in_features == 1280
    model.train()
    assert not model.encoders["rgb"].training and model.encoders["audio"].training
    x = make_inputs()
    out = model({"rgb": x["rgb"], "audio": x["audio"]}, PRESENT[:, [0, 2]])
    out["logits"]["verb"].sum().backward()
    assert all(p.grad is None for p in model.encoders["rgb"].parameters())
    assert any(p.grad is not None for p in model.encoders["audio"].parameters())


# --------------------------------------------------------------------------- modality dropout


@st.composite
def presence(draw: st.DrawFn) -> Tensor:
    b = draw(st.integers(1, 8))
    m = draw(st.integers(1, 6))
    bits = draw(st.lists(st.booleans(), min_size=b * m, max_size=b * m))
    return torch.tensor(bits, dtype=torch.bool).view(b, m)


@settings(max_examples=60, deadline=None)
@given(
    present=presence(),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    on_empty=st.sampled_from(["resample", "keep_one"]),
)
def test_modality_dropout_properties(present: Tensor, p: float, seed: int, on_empty: str) -> None:
    g = torch.Generator().manual_seed(seed)
    out = modality_dropout(present, p, g, on_empty=on_empty)
    assert out.shape == present.shape and out.dtype == torch.bool
    assert not (out & ~present).any()  # never creates a modality
    assert torch.equal(out.any(1), present.any(1))  # non-empty stays non-empty, empty stays empty
    free = modality_dropout(present, p, torch.Generator().manual_seed(seed), keep_at_least_one=False)
    assert not (free & ~present).any()


def test_modality_dropout_extremes_and_reproducibility() -> None:
    present = torch.ones(50, 3, dtype=torch.bool)
    present[0] = torch.tensor([False, True, False])
    assert torch.equal(modality_dropout(present, 0.0), present)
    one = modality_dropout(present, 1.0, torch.Generator().manual_seed(0))
    assert (one.sum(1) == 1).all() and one[0].tolist() == [False, True, False]
    a = modality_dropout(present, 0.5, torch.Generator().manual_seed(3))
    b = modality_dropout(present, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, present)
    per_mod = modality_dropout(present, [0.0, 1.0, 1.0], torch.Generator().manual_seed(0))
    assert per_mod[1:, 0].all() and not per_mod[1:, 1:].any()
    inputs = mask_inputs({"rgb": torch.ones(50, 2, 3)}, a, ("rgb", "flow", "audio"))
    assert torch.equal(inputs["rgb"][:, 0, 0], a[:, 0].float())


# --------------------------------------------------------------------------- losses


def _logits(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"verb": torch.randn(4, 5, generator=g), "noun": torch.randn(4, 7, generator=g)}


LABELS = {"verb": torch.tensor([0, 4, -1, 2]), "noun": torch.tensor([6, -1, 1, 0])}


def _hand_kl(s: Tensor, t: Tensor, temp: float) -> Tensor:
    ps = torch.softmax(s / temp, -1)
    pt = torch.softmax(t / temp, -1)
    return (pt * (pt.log() - ps.log())).sum(-1).mean()


def _hand_ce(s: Tensor, y: Tensor) -> Tensor:
    keep = y >= 0
    logp = torch.log_softmax(s[keep], -1)
    return -logp[torch.arange(int(keep.sum())), y[keep]].mean()


@pytest.mark.parametrize(("alpha", "temp"), [(0.5, 1.0), (0.3, 2.0), (0.0, 3.0), (1.0, 4.0)])
def test_kd_loss_matches_hand_computation(alpha: float, temp: float) -> None:
    s, t = _logits(0), _logits(1)
    out = kd_loss(s, t, LABELS, alpha=alpha, T=temp)
    kl = torch.stack([_hand_kl(s[k], t[k], temp) for k in s]).mean()
    ce = torch.stack([_hand_ce(s[k], LABELS[k]) for k in s]).mean()
    torch.testing.assert_close(out["loss_kd"], kl)
    torch.testing.assert_close(out["loss_ce"], ce)
    torch.testing.assert_close(out["loss"], alpha * temp**2 * kl + (1 - alpha) * ce)  # T^2 applied
    if alpha == 0.0:
        torch.testing.assert_close(out["loss"], ce_loss(s, LABELS)["loss"])
    if alpha == 1.0:
        torch.testing.assert_close(out["loss"], temp**2 * kl)
    assert {"loss_kd/verb", "loss_ce/noun"} <= set(out)


def test_ce_ignores_unknown_labels_and_kd_does_not_train_teacher() -> None:
    s = {k: v.requires_grad_() for k, v in _logits(0).items()}
    t = {k: v.requires_grad_() for k, v in _logits(1).items()}
    out = ce_loss(s, {"verb": torch.full((4,), -1), "noun": LABELS["noun"]})
    assert set(out) == {"loss", "loss_ce", "loss_ce/noun"}
    none = ce_loss(s, {})
    assert none["loss"].item() == 0.0
    none["loss"].backward()
    loss = kd_loss(s, t, LABELS, alpha=0.7, T=2.0)["loss"]
    loss.backward()
    assert all(v.grad is None for v in t.values())


# --------------------------------------------------------------------------- training step


def test_one_step_reduces_distillation_loss() -> None:
    torch.manual_seed(0)
    teacher = freeze(tiny_model())
    torch.manual_seed(1)
    student = tiny_model()
    student.train()
    x = make_inputs(4, seed=1)
    present = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]).bool()
    labels = {"verb": torch.tensor([0, 1, 2, 3]), "noun": torch.tensor([1, 2, -1, 4])}
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    with torch.no_grad():
        target = teacher(x, present)["logits"]

    def loss() -> Tensor:
        return kd_loss(student(x, present)["logits"], target, labels, alpha=0.5, T=2.0)["loss"]

    before = loss()
    opt.zero_grad()
    before.backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()
