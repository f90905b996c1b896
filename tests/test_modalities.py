"""Modality readers on tiny fixtures laid out exactly like the official releases."""

from __future__ import annotations

import json
import math
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from actdistill.data.modalities import (
    READERS,
    AudioReader,
    BoxesReader,
    DepthReader,
    FlowReader,
    IMUReader,
    RGBReader,
    compute_tvl1,
    extract_flow_folder,
    log_mel_spectrogram,
    mel_filterbank,
    write_imu_csv,
)
from actdistill.data.modalities._frames import jpeg_is_complete
from actdistill.data.records import DataError, Segment, Source

TEMPLATE = "frame_{:010d}.jpg"
FPS = 25
N_VIDEO = 40
SR = 24000
TONE_HZ = 3000.0


def seg(video_id: str = "P01_01", fps: float = FPS, stop: int = 100) -> Segment:
    return Segment(uid=f"{video_id}_0", video_id=video_id, start_frame=1, stop_frame=stop, fps=fps)


def colour(n: int) -> tuple[int, int, int]:
    """A distinct solid RGB colour per frame number."""
    return (10 * n % 256, 255 - 10 * n % 256, 60)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    path.write_bytes(buf.tobytes())


def write_gray_jpeg(path: Path, value: int, size: tuple[int, int] = (6, 8)) -> None:
    ok, buf = cv2.imencode(".jpg", np.full(size, value, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture
def frame_dir(tmp_path: Path) -> Path:
    d = tmp_path / "P01" / "rgb_frames" / "P01_01"
    d.mkdir(parents=True)
    for n in range(1, 9):
        write_jpeg(d / TEMPLATE.format(n), np.full((16, 24, 3), colour(n), np.uint8))
    return d


def texture(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 2.0) * 3 - 256, 0, 255).astype(np.uint8)


def write_mp4(
    path: Path, levels: list[int], audio: bool = True, codec: str = "mpeg4", size: tuple[int, int] = (64, 48)
) -> None:
    """Grey frames at the given levels (frame k has ``levels[k-1]``) and optionally an AAC tone."""
    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.bit_rate = 4_000_000
        vs.gop_size = 8  # several key frames, so seeking is exercised
        ast = c.add_stream("aac", rate=SR, layout="mono") if audio else None
        for k, lvl in enumerate(levels):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), lvl, np.uint8), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, FPS)
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if ast is not None:
            total = int(len(levels) / FPS * SR)
            t = np.arange(total) / SR
            wave = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
            for i in range(0, total - 1024 + 1, 1024):
                af = av.AudioFrame.from_ndarray(wave[None, i : i + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = SR, i, Fraction(1, SR)
                for p in ast.encode(af):
                    c.mux(p)
            for p in ast.encode():
                c.mux(p)


VIDEO_LEVELS = [20 + 5 * k for k in range(N_VIDEO)]  # frame n has grey level 15 + 5n


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    out = {
        "av": d / "P01_01.MP4",
        "silent": d / "P01_02.MP4",
        "empty": d / "P01_03.MP4",
        "junk": d / "P01_04.MP4",
    }
    write_mp4(out["av"], VIDEO_LEVELS, audio=True)
    write_mp4(out["silent"], VIDEO_LEVELS[:10], audio=False)
    out["empty"].write_bytes(b"")
    out["junk"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return out


# ---------------------------------------------------------------------------------------------
# registry


def test_all_readers_registered() -> None:
    assert set(READERS.names()) >= {"rgb", "flow", "audio", "depth", "boxes", "imu"}
    assert isinstance(READERS.build("rgb"), RGBReader)
    assert READERS.build("audio").spatial is False and READERS.build("flow").spatial is True


# ---------------------------------------------------------------------------------------------
# RGB


def test_rgb_frames_values_and_repeats(frame_dir: Path) -> None:
    src = Source("frames", str(frame_dir))
    frames = np.array([3, 1, 3, 8])
    x = RGBReader().read(src, frames, seg())
    assert x.shape == (4, 3, 16, 24) and x.dtype == torch.float32
    for i, n in enumerate(frames):
        expect = torch.tensor(colour(int(n)), dtype=torch.float32) / 255
        assert torch.allclose(x[i].mean(dim=(1, 2)), expect, atol=3 / 255), n
    assert torch.equal(x[0], x[2])


def test_rgb_clamps_to_num_frames(frame_dir: Path) -> None:
    src = Source("frames", str(frame_dir), num_frames=8)
    x = RGBReader().read(src, np.array([7, 12]), seg())
    assert torch.equal(x[1], RGBReader().read(src, np.array([8]), seg())[0])


def test_rgb_tar_with_dot_slash_and_plain_members(frame_dir: Path, tmp_path: Path) -> None:
    for prefix in ("./", ""):
        tar = tmp_path / f"P01_01{len(prefix)}.tar"
        with tarfile.open(tar, "w") as tf:
            for f in sorted(frame_dir.iterdir()):
                tf.add(f, arcname=prefix + f.name)
        x = RGBReader().read(Source("tar", str(tar)), np.array([2, 5, 5]), seg())
        ref = RGBReader().read(Source("frames", str(frame_dir)), np.array([2, 5, 5]), seg())
        assert torch.equal(x, ref)
        assert RGBReader().count(Source("tar", str(tar))) == 8
        assert RGBReader().check(Source("tar", str(tar))) is None


def test_rgb_tar_missing_member(frame_dir: Path, tmp_path: Path) -> None:
    tar = tmp_path / "P01_01.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(frame_dir / TEMPLATE.format(1), arcname=TEMPLATE.format(1))
    with pytest.raises(DataError, match=r"frame_0000000002\.jpg") as e:
        RGBReader().read(Source("tar", str(tar)), np.array([2]), seg())
    assert str(tar) in str(e.value)


def test_truncated_jpeg_is_an_error(frame_dir: Path) -> None:
    bad = frame_dir / TEMPLATE.format(4)
    data = bad.read_bytes()
    assert jpeg_is_complete(data) and jpeg_is_complete(data + b"\x00\x00")
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        RGBReader().read(Source("frames", str(frame_dir)), np.array([1, 4]), seg())
    assert e.value.path == str(bad)


def test_missing_frame_file_and_folder(frame_dir: Path) -> None:
    with pytest.raises(DataError) as e:
        RGBReader().read(Source("frames", str(frame_dir)), np.array([9]), seg())
    assert str(frame_dir / TEMPLATE.format(9)) in str(e.value)
    missing = frame_dir.parent / "P01_99"
    with pytest.raises(DataError, match="does not exist") as e:
        RGBReader().read(Source("frames", str(missing)), np.array([1]), seg())
    assert str(missing) in str(e.value)
    assert RGBReader().check(Source("frames", str(missing))).kind == "missing"
    (frame_dir.parent / "empty").mkdir()
    assert RGBReader().check(Source("frames", str(frame_dir.parent / "empty"))).kind == "empty"
    assert RGBReader().check(Source("frames", str(frame_dir))) is None


@pytest.mark.parametrize("seek", [True, False])
@pytest.mark.parametrize("frames", [[33, 1, 17, 17, 40, 9], [38, 35, 30, 30]])  # 2nd: seeks past 1 s
def test_rgb_video_frames_match_encoded(videos: dict[str, Path], seek: bool, frames: list[int]) -> None:
    src = Source("video", str(videos["av"]))
    x = RGBReader(seek=seek).read(src, np.array(frames), seg())
    assert x.shape == (len(frames), 3, 48, 64)
    levels = x.mean(dim=(1, 2, 3)).numpy() * 255
    expect = np.array([VIDEO_LEVELS[n - 1] for n in frames])
    assert np.all(np.abs(levels - expect) < 2.0), (levels, expect)
    assert torch.equal(x[2], x[3])


def test_rgb_video_past_end_and_corrupt(videos: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="no frame 41"):
        RGBReader().read(Source("video", str(videos["av"])), np.array([41]), seg())
    x = RGBReader().read(Source("video", str(videos["av"]), num_frames=N_VIDEO), np.array([41]), seg())
    assert abs(float(x.mean()) * 255 - VIDEO_LEVELS[-1]) < 2.0
    for key in ("empty", "junk"):
        with pytest.raises(DataError) as e:
            RGBReader().read(Source("video", str(videos[key])), np.array([1]), seg())
        assert str(videos[key]) in str(e.value)
        assert RGBReader().check(Source("video", str(videos[key]))) is not None


# ---------------------------------------------------------------------------------------------
# flow


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    """EPIC 2018 layout: 4 flow frames for 8 RGB frames; u = 128 + 10k, v = 128 - 10k."""
    d = tmp_path / "P01" / "flow_frames" / "P01_01"
    for sub in ("u", "v"):
        (d / sub).mkdir(parents=True)
    for k in range(1, 5):
        write_gray_jpeg(d / "u" / TEMPLATE.format(k), 128 + 10 * (k - 1))
        write_gray_jpeg(d / "v" / TEMPLATE.format(k), 128 - 10 * (k - 1))
    return d


def test_flow_uv_half_rate_mapping_and_sign(flow_dir: Path) -> None:
    src = Source("uv_frames", str(flow_dir), index_map="epic_flow_half")
    x = FlowReader().read(src, np.array([1, 2, 3, 4, 10]), seg())
    assert x.shape == (5, 2, 6, 8) and x.dtype == torch.float32
    k = np.array([1, 1, 2, 2, 4])  # (rgb - 1) // 2 + 1, clamped to the 4 flow files
    u = x[:, 0].mean(dim=(1, 2)).numpy()
    v = x[:, 1].mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(u, 10 * (k - 1) / 128, atol=1.5 / 128)
    np.testing.assert_allclose(v, -10 * (k - 1) / 128, atol=1.5 / 128)
    assert float(x[0].abs().max()) < 1.5 / 128  # pixel 128 = zero motion


def test_flow_stack_channels(flow_dir: Path) -> None:
    src = Source("uv_frames", str(flow_dir), index_map="epic_flow_full", num_frames=4)
    x = FlowReader(stack=3, scale=2.0).read(src, np.array([3]), seg())
    assert x.shape == (1, 6, 6, 8)
    means = x[0].mean(dim=(1, 2)).numpy()
    # u0, v0, u1, v1, u2, v2 for flow frames 3, 4, 4 (clamped)
    expect = np.array([20, -20, 30, -30, 30, -30]) / 128 * 2.0
    np.testing.assert_allclose(means, expect, atol=3 / 128)


def test_flow_missing_subfolder(flow_dir: Path) -> None:
    for f in (flow_dir / "v").iterdir():
        f.unlink()
    (flow_dir / "v").rmdir()
    with pytest.raises(DataError) as e:
        FlowReader().read(Source("uv_frames", str(flow_dir)), np.array([1]), seg())
    assert str(flow_dir / "v") in str(e.value)
    assert FlowReader().check(Source("uv_frames", str(flow_dir))).kind == "missing"


def test_tvl1_recovers_shift() -> None:
    img = texture()
    shifted = np.roll(img, 3, axis=1)  # content moves 3 px to the right
    flow = compute_tvl1(img, shifted, bound=20.0)
    assert flow.shape == (2, 64, 64) and flow.dtype == np.float32
    inner = flow[:, 12:-12, 12:-12]
    assert 2.0 < float(np.median(inner[0])) < 4.0
    assert abs(float(np.median(inner[1]))) < 0.5


def test_flow_from_rgb_and_extract_folder(tmp_path: Path) -> None:
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    base = texture(48, 48, seed=1)
    for n in range(1, 5):
        g = np.roll(base, 2 * (n - 1), axis=0)  # moves 2 px down per frame
        ok, buf = cv2.imencode(".png", cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
        assert ok
        (rgb_dir / f"img_{n:05d}.png").write_bytes(buf.tobytes())
    rgb_src = Source("frames", str(rgb_dir), template="img_{:05d}.png")
    src = Source("from_rgb", str(rgb_dir), options={"rgb_source": rgb_src})
    x = FlowReader(tvl1_bound=10.0).read(src, np.array([1, 4]), seg())
    assert x.shape == (2, 2, 48, 48)
    inner = x[:, :, 10:-10, 10:-10]
    assert abs(float(inner[:, 0].median())) < 0.05
    assert 0.1 < float(inner[:, 1].median()) < 0.3  # 2 px / bound 10

    out = tmp_path / "flow"
    n = extract_flow_folder(rgb_src, out, bound=10.0, progress=False)
    assert n == 3 and len(list((out / "u").iterdir())) == 3
    y = FlowReader().read(Source("uv_frames", str(out), index_map="epic_flow_full"), np.array([1, 4]), seg())
    assert y.shape == (2, 2, 48, 48)
    assert 0.1 < float(y[:, 1, 10:-10, 10:-10].median()) < 0.3


# ---------------------------------------------------------------------------------------------
# audio


def reference_fbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sr: int) -> np.ndarray:
    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m: float) -> float:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    lo, hi = mel(f_min), mel(f_max)
    pts = [hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for b in range(n_freqs):
        f = (sr // 2) * b / (n_freqs - 1)
        for i in range(n_mels):
            left, centre, right = pts[i], pts[i + 1], pts[i + 2]
            if left <= f <= centre:
                fb[b, i] = (f - left) / (centre - left)
            elif centre < f <= right:
                fb[b, i] = (right - f) / (right - centre)
    return fb


def test_mel_filterbank_matches_reference() -> None:
    fb = mel_filterbank(513, 0.0, 12000.0, 128, 24000)
    assert fb.shape == (513, 128) and fb.dtype == torch.float32
    np.testing.assert_allclose(fb.numpy(), reference_fbank(513, 0.0, 12000.0, 128, 24000), atol=1e-5)
    fb2 = mel_filterbank(201, 50.0, 7000.0, 40, 16000)
    np.testing.assert_allclose(fb2.numpy(), reference_fbank(201, 50.0, 7000.0, 40, 16000), atol=1e-5)


def mel_centres(n_mels: int = 128, sr: int = SR) -> np.ndarray:
    m_max = 2595.0 * math.log10(1.0 + (sr / 2) / 700.0)
    m = np.linspace(0, m_max, n_mels + 2)[1:-1]
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


def test_log_mel_of_tone_peaks_at_right_bin() -> None:
    t = torch.arange(26784) / SR
    waves = torch.stack([torch.sin(2 * math.pi * f * t) for f in (1000.0, 5000.0)])
    spec = log_mel_spectrogram(waves, SR, 1024, 160, 80, 128)
    assert spec.shape == (2, 128, 1 + 26784 // 80)
    for row, f in zip(spec, (1000.0, 5000.0)):
        peak = int(row.mean(dim=1).argmax())
        assert abs(peak - int(np.abs(mel_centres() - f).argmin())) <= 1


def test_audio_from_mp4(videos: dict[str, Path]) -> None:
    reader = AudioReader()
    src = Source("video", str(videos["av"]))
    x = reader.read(src, np.array([20, 1, 20]), seg())
    assert x.shape == (3, 1, 128, 335) and x.dtype == torch.float32
    assert torch.equal(x[0], x[2])
    peak = int(x[0, 0, :, 100:200].mean(dim=1).argmax())
    assert abs(peak - int(np.abs(mel_centres() - TONE_HZ).argmin())) <= 1
    # frame 1 is at t = 0: the first half of its window lies before the recording (zero padding)
    assert float(x[1, 0, :, :100].max()) == pytest.approx(math.log(1e-6), abs=1e-3)
    assert float(x[1, 0, :, 200:].max()) > 0


def test_audio_errors_name_the_file(videos: dict[str, Path], tmp_path: Path) -> None:
    for key, msg in (("silent", "no audio stream"), ("empty", "empty"), ("junk", "audio")):
        with pytest.raises(DataError, match=msg) as e:
            AudioReader().read(Source("video", str(videos[key])), np.array([1]), seg())
        assert str(videos[key]) in str(e.value)
    assert AudioReader().check(Source("video", str(videos["silent"]))).kind == "missing"
    assert AudioReader().check(Source("video", str(videos["av"]))) is None
    with pytest.raises(DataError, match="does not exist"):
        AudioReader().read(Source("wav", str(tmp_path / "nope.wav")), np.array([1]), seg())


# ---------------------------------------------------------------------------------------------
# depth


def test_depth_png16(tmp_path: Path) -> None:
    d = tmp_path / "depth" / "P01_01"
    d.mkdir(parents=True)
    tpl = "frame_{:010d}.png"
    cv2.imwrite(str(d / tpl.format(1)), np.full((10, 12), 1500, np.uint16))
    cv2.imwrite(str(d / tpl.format(2)), np.full((10, 12), 20000, np.uint16))
    x = DepthReader().read(Source("png16", str(d), template=tpl), np.array([1, 2, 1]), seg())
    assert x.shape == (3, 1, 10, 12) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((1, 10, 12), 0.15))
    assert torch.allclose(x[1], torch.ones(1, 10, 12))  # 20 m clipped to max_depth
    cv2.imwrite(str(d / tpl.format(3)), np.full((10, 12), 200, np.uint8))
    with pytest.raises(DataError, match="16-bit") as e:
        DepthReader().read(Source("png16", str(d), template=tpl), np.array([3]), seg())
    assert str(d / tpl.format(3)) in str(e.value)


# ---------------------------------------------------------------------------------------------
# boxes


def box(x1: float, y1: float, x2: float, y2: float, std: str) -> dict:
    return {"box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "category": "thing", "standard_category": std}


def boxes_frames(vid: str) -> list[dict]:
    return [
        {"name": f"{vid}/0001.jpg", "labels": [box(10, 5, 60, 25, "0000"), box(0, 0, 50, 50, "hand")]},
        {"name": f"{vid}/0002.jpg", "labels": []},
        {
            "name": f"{vid}/0003.jpg",
            "labels": [box(1, 1, 2, 2, s) for s in ("0003", "0002", "0001", "0000", "hand")],
        },
    ]


def test_boxes_list_and_dict_formats(tmp_path: Path) -> None:
    p = tmp_path / "78687.json"
    p.write_text(json.dumps(boxes_frames("78687")))
    reader = BoxesReader(image_size=(100, 50))
    x = reader.read(Source("boxes_json", str(p)), np.array([1, 2, 3, 3, 9]), seg("78687"))
    assert x.shape == (5, 4, 6) and x.dtype == torch.float32
    # hands first, then objects; coordinates normalised by (W, H) = (100, 50)
    assert x[0, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    assert x[0, 1].tolist() == pytest.approx([0.1, 0.1, 0.6, 0.5, 2.0, 1.0])
    assert float(x[0, 2:].abs().sum()) == 0.0
    assert float(x[1].abs().sum()) == 0.0  # no labels: no detection, not a failure
    assert x[2, :, 4].tolist() == [1.0, 2.0, 2.0, 2.0] and x[2, :, 5].tolist() == [1.0] * 4
    assert torch.equal(x[4], x[2])  # past the last annotated frame: clamped

    q = tmp_path / "part1.json"
    q.write_text(json.dumps({"1": boxes_frames("1")[:1], "78687": boxes_frames("78687")}))
    src = Source("boxes_json", str(q), options={"image_size": [100, 50]})
    y = BoxesReader().read(src, np.array([1, 2, 3, 3, 9]), seg("78687"))
    assert torch.equal(x, y)
    with pytest.raises(DataError, match="no entry for video"):
        BoxesReader().read(src, np.array([1]), seg("555"))


def test_boxes_malformed(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('[{"name": "1/0001.jpg", "labels": [}]')
    with pytest.raises(DataError, match="line 1 column") as e:
        BoxesReader(image_size=(10, 10)).read(Source("boxes_json", str(p)), np.array([1]), seg("1"))
    assert str(p) in str(e.value)
    frames = boxes_frames("7")
    frames[2]["labels"][1]["box2d"]["x1"] = "12"
    q = tmp_path / "types.json"
    q.write_text(json.dumps(frames))
    with pytest.raises(DataError, match=r"\[2\]\.labels\[1\]\.box2d\.x1") as e:
        BoxesReader(image_size=(10, 10)).read(Source("boxes_json", str(q)), np.array([1]), seg("7"))
    assert str(q) in str(e.value)
    r = tmp_path / "ok.json"
    r.write_text(json.dumps(boxes_frames("7")))
    with pytest.raises(DataError, match="image size"):
        BoxesReader().read(Source("boxes_json", str(r)), np.array([1]), seg("7"))


# ---------------------------------------------------------------------------------------------
# IMU


def test_imu_linear_interpolation_is_exact(tmp_path: Path) -> None:
    t = np.arange(0, 10, 0.01)
    p = write_imu_csv(tmp_path / "P01_01.csv", t, np.stack([2 * t + 1, -t], axis=1), ["accel_x", "gyro_z"])
    reader = IMUReader(window_sec=1.0, samples=11)
    frames = np.array([31, 61, 61])
    x = reader.read(Source("imu_csv", str(p)), frames, seg(fps=30))
    assert x.shape == (3, 2, 11) and x.dtype == torch.float32
    q = (frames[:, None] - 1) / 30 + np.linspace(-0.5, 0.5, 11)[None, :]
    np.testing.assert_allclose(x[:, 0].numpy(), 2 * q + 1, atol=1e-5)
    np.testing.assert_allclose(x[:, 1].numpy(), -q, atol=1e-5)
    z = IMUReader(normalize=True).read(Source("imu_csv", str(p)), np.array([150]), seg(fps=30))
    assert z.shape == (1, 2, 64) and abs(float(z[0, 0].mean())) < 0.2


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("timestamp,ax\n0.0,1\n0.1,abc\n", "line 3, column 'ax': non-numeric"),
        ("0.0,1\n0.1,2\n", "missing header"),
        ("timestamp,ax\n0.0,1\n0.2,2\n0.1,3\n", "line 4: timestamp"),
        ("timestamp,ax\n0.0,1\n0.1\n", "line 3: 1 cells"),
    ],
)
def test_imu_bad_csv(tmp_path: Path, text: str, msg: str) -> None:
    p = tmp_path / "imu.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=msg) as e:
        IMUReader().read(Source("imu_csv", str(p)), np.array([1]), seg())
    assert e.value.path == str(p)


def test_boxes_missing_frame_policies(tmp_path: Path) -> None:
    frames = boxes_frames("5")
    del frames[1]  # frame 2 not annotated at all (different from "annotated, no labels")
    p = tmp_path / "5.json"
    p.write_text(json.dumps(frames))
    src = Source("boxes_json", str(p))
    empty = BoxesReader(image_size=(100, 50)).read(src, np.array([2]), seg("5"))
    assert float(empty.abs().sum()) == 0.0
    near = BoxesReader(image_size=(100, 50), missing_frame="nearest").read(src, np.array([2, 1]), seg("5"))
    assert torch.equal(near[0], near[1])
    with pytest.raises(DataError, match="no annotation for frame 2"):
        BoxesReader(image_size=(100, 50), missing_frame="error").read(src, np.array([2]), seg("5"))
