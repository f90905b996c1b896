"""Audio as log-mel spectrogram windows centred on the sampled frames.

EPIC-KITCHENS audio exists only inside the released MP4s, so the reader decodes the container's
audio stream with PyAV (torchaudio/torchcodec are not usable here) and resamples it to mono.
The whole waveform of a file is cached per process, because the many segments of one long video
are read one after another. The spectrogram is computed in plain torch so it runs identically
on any install; its defaults follow the KARMMA spec (24 kHz, n_fft 1024, win 160, hop 80,
128 HTK mel bands, one 1.116 s window per sampled frame).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import av
import numpy as np
import torch

from actdistill.data.modalities._frames import as_frame_numbers
from actdistill.data.modalities.base import READERS, ModalityReader
from actdistill.data.records import DataError, Problem, Segment, Source

AUDIO_KINDS = ("video", "wav")
_AV_ERRORS = (av.FFmpegError, OSError)
TRUNCATION_TOLERANCE_SEC = 1.0  # codec priming/padding is milliseconds; a lost tail of a second is not


# ---------------------------------------------------------------------------------------------
# spectrogram maths (pure torch)


def hz_to_mel_htk(f: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz_htk(m: torch.Tensor | float) -> torch.Tensor:
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK mel filters ``[n_freqs, n_mels]`` (no area normalisation).

    Same semantics as ``torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")``:
    ``n_freqs`` bins spaced evenly on ``[0, sample_rate // 2]``, ``n_mels + 2`` corner points
    evenly spaced in mel between ``f_min`` and ``f_max``, filter ``i`` rising from corner ``i`` to
    ``i + 1`` and falling to ``i + 2``. Written out here so no torchaudio install is needed.
    With few FFT bins some low filters can be all zero, exactly as in torchaudio.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(
        float(hz_to_mel_htk(f_min)), float(hz_to_mel_htk(f_max)), n_mels + 2, dtype=torch.float64
    )
    f_pts = mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]  # [n_mels + 1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    return fb.to(torch.float32)


def log_mel_spectrogram(
    wave: torch.Tensor,
    sr: int = 24000,
    n_fft: int = 1024,
    win_length: int = 160,
    hop_length: int = 80,
    n_mels: int = 128,
    f_min: float = 0.0,
    f_max: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``log(mel power + eps)`` of ``wave [..., L]`` -> ``[..., n_mels, 1 + L // hop_length]``.

    One batched ``torch.stft`` over all windows: periodic Hann window of ``win_length`` zero-padded
    (centred) to ``n_fft``, centred frames with reflect padding, power 2 -- the defaults of
    torchaudio's ``MelSpectrogram``, so features match models trained with it.
    """
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1]).to(torch.float32)
    window = torch.hann_window(win_length, periodic=True, dtype=torch.float32, device=flat.device)
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # [B, n_fft // 2 + 1, T]
    fb = mel_filterbank(n_fft // 2 + 1, f_min, sr / 2 if f_max is None else f_max, n_mels, sr).to(flat.device)
    mel = torch.matmul(fb.T, power)  # [B, n_mels, T]
    return torch.log(mel + eps).reshape(*lead, n_mels, mel.shape[-1])


# ---------------------------------------------------------------------------------------------
# decoding with a per-process waveform cache

_CACHE: OrderedDict[tuple[str, int, int, int, int], tuple[np.ndarray, float]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def decode_audio(
    path: str | Path, sample_rate: int = 24000, stream_index: int = 0
) -> tuple[np.ndarray, float]:
    """Decode one audio stream to mono ``float32`` at ``sample_rate``.

    Returns ``(wave, t0)`` where ``t0`` is the container time in seconds of the first sample
    (usually 0), so windows line up with video frame times even if the audio starts late.
    A file without an audio stream, or whose audio stream decodes to nothing, is an error: a
    silent stand-in would teach the model that "no data" sounds like silence. For the same reason
    a truncated file (an incomplete download: FFmpeg decodes what is there without complaint, and
    the windows past the cut would be zero-filled) and NaN/Inf samples (float WAVs) are errors.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "audio source file does not exist")
    if p.stat().st_size == 0:
        raise DataError(p, "audio source file is empty (0 bytes)")
    wav_problem = wav_truncation(p)
    if wav_problem is not None:
        raise DataError(p, wav_problem)
    chunks: list[np.ndarray] = []
    t0: float | None = None
    declared: float | None = None
    try:
        with av.open(str(p)) as container:
            streams = container.streams.audio
            if not streams:
                raise DataError(p, "file has no audio stream")
            if stream_index >= len(streams):
                raise DataError(
                    p, f"file has {len(streams)} audio stream(s), stream {stream_index} requested"
                )
            stream = streams[stream_index]
            if stream.duration and stream.time_base:
                declared = float(stream.duration * stream.time_base)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                if t0 is None and frame.pts is not None and frame.time_base is not None:
                    t0 = float(frame.pts * frame.time_base)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except _AV_ERRORS as e:
        raise DataError(p, f"cannot decode audio: {e}") from None
    wave = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        raise DataError(p, "audio stream is empty (no samples decoded)")
    decoded = wave.size / sample_rate
    if declared is not None and declared - decoded > TRUNCATION_TOLERANCE_SEC:
        raise DataError(p, f"audio stream is truncated: the header declares {declared:.2f} s, only "
                           f"{decoded:.2f} s decode (incomplete download?)")
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    if bad:
        raise DataError(p, f"audio holds NaN or Inf samples ({bad} of {wave.size} after resampling)")
    return wave, (t0 or 0.0)


def wav_truncation(path: str | Path) -> str | None:
    """What is wrong with a RIFF/WAVE file whose data chunk is shorter than its header says.

    FFmpeg's WAV demuxer trusts the file size over the header, so it reports a cut file's shorter
    duration as if it were the whole recording; only the ``data`` chunk's declared size tells.
    Returns ``None`` for complete files, non-WAV files and streamed WAVs (size 0 or 0xFFFFFFFF).
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.fstat(fh.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            length = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                have = size - pos - 8
                if length in (0, 0xFFFFFFFF) or have >= length:
                    return None
                return f"truncated WAV: the data chunk declares {length} bytes, only {have} are present"
            pos += 8 + length + (length & 1)
    return None


def cached_audio(
    path: str | Path, sample_rate: int, stream_index: int = 0, cache_files: int = 4
) -> tuple[np.ndarray, float]:
    """:func:`decode_audio` behind a small per-process LRU keyed by path, size and mtime."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(p, "audio source file does not exist") from None
    key = (p, st.st_mtime_ns, st.st_size, sample_rate, stream_index)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    value = decode_audio(p, sample_rate, stream_index)
    if cache_files > 0:
        with _CACHE_LOCK:
            _CACHE[key] = value
            _CACHE.move_to_end(key)
            while len(_CACHE) > cache_files:
                _CACHE.popitem(last=False)
    return value


def cut_windows(wave: np.ndarray, centres: np.ndarray, length: int) -> np.ndarray:
    """``[N, length]`` windows of ``wave`` starting at ``centres - length // 2``, zero outside.

    Zero padding is only for windows that overhang the start or end of the recording (the first
    and last half second of a video), which is real silence-by-absence, not a missing stream.
    """
    starts = np.asarray(centres, dtype=np.int64) - length // 2
    idx = starts[:, None] + np.arange(length)[None, :]
    inside = (idx >= 0) & (idx < wave.size)
    out = np.zeros(idx.shape, dtype=np.float32)
    out[inside] = wave[idx[inside]]
    return out


@READERS.register("audio")
class AudioReader(ModalityReader):
    """Log-mel spectrograms ``float32 [N, 1, n_mels, 1 + window // hop_length]``.

    ``Source.kind``: ``video`` (the audio stream inside an MP4/webm/...) or ``wav`` (any audio
    file PyAV reads); uses ``source.path`` and ``source.options.get("stream_index", 0)``. Frame
    number n is at time ``(n - 1) / segment.fps`` s (the RGB numbering), the window of
    ``window_sec`` is centred there. ``cache_files`` decoded waveforms stay in memory per process.
    """

    modality = "audio"
    spatial = False

    def __init__(
        self,
        sample_rate: int = 24000,
        window_sec: float = 1.116,
        n_fft: int = 1024,
        win_length: int = 160,
        hop_length: int = 80,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        eps: float = 1e-6,
        cache_files: int = 4,
    ) -> None:
        if win_length > n_fft:
            raise ValueError("win_length must not exceed n_fft")
        self.sample_rate = sample_rate
        self.window_sec = window_sec
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.eps = eps
        self.cache_files = cache_files

    @property
    def window_samples(self) -> int:
        return round(self.window_sec * self.sample_rate)

    @property
    def n_steps(self) -> int:
        return 1 + self.window_samples // self.hop_length

    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        if source.kind not in AUDIO_KINDS:
            raise DataError(
                source.path, f"audio reader cannot read source kind {source.kind!r} (known: {AUDIO_KINDS})"
            )
        if not segment.fps or segment.fps <= 0:
            raise DataError(
                source.path, f"segment {segment.uid} has no fps; cannot place audio windows in time"
            )
        numbers = as_frame_numbers(frames)
        wave, t0 = cached_audio(
            source.path, self.sample_rate, int(source.options.get("stream_index", 0)), self.cache_files
        )
        times = (numbers - 1) / float(segment.fps) - t0
        centres = np.round(times * self.sample_rate).astype(np.int64)
        windows = torch.from_numpy(cut_windows(wave, centres, self.window_samples))
        spec = log_mel_spectrogram(
            windows,
            sr=self.sample_rate,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
            eps=self.eps,
        )
        return spec.unsqueeze(1).contiguous()

    def check(self, source: Source) -> Problem | None:
        """Opens the container header (cheap) to tell "no audio stream" from "fine"."""
        p = Path(source.path)
        if not p.exists():
            return Problem(str(p), "audio source not found", "missing")
        if not p.is_file():
            return Problem(str(p), "audio source is not a file", "malformed")
        if p.stat().st_size == 0:
            return Problem(str(p), "audio source file is empty (0 bytes)", "empty")
        try:
            with av.open(str(p)) as container:
                if not container.streams.audio:
                    return Problem(str(p), "file has no audio stream", "missing")
        except _AV_ERRORS as e:
            return Problem(str(p), f"cannot open container: {e}", "unreadable")
        return None
