"""``actdistill demo``: the KARMMA main job on the built-in synthetic dataset.

Generates the synthetic dataset (EPIC-KITCHENS-100 layout) if absent, fits the unimodal teacher
extractors that have no pretrained weights here, caches the frozen teacher's tokens, trains the
teacher, the Baseline, Baseline w/ δ and KARMMA student rows, evaluates all of them on every
modality subset and on the drop-rate curve, measures efficiency, prints the tables and writes
the run directory. The settings are those of ``configs/karmma/synthetic.yaml`` (kept identical
by a test), sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

from actdistill.config import build_config
from actdistill.engine.distributed import is_main
from actdistill.engine.karmma import KarmmaConfig, prepare_run, run_karmma

DEMO_YAML = """
data:
  dataset: synthetic
  root: data/synthetic
  modalities: [rgb, flow, audio, depth]
  test_split: heldout  # reported on; settings were chosen on validation
  options: {seed: 0, size: small}
  sampling: {mode: tsn, num_frames: 8}
  spatial: {short_side: 64, crop_size: 56, flip: true, scale_range: [1.0, 1.0]}
  readers:
    audio: {n_mels: 64, hop_length: 320, win_length: 640, n_fft: 1024}
cache:
  root: .cache/actdistill
  train_views: 4
teacher:
  model:
    size: teacher
    encoders:
      rgb: {name: mobilenet_v2, pretrained: imagenet-offline, input_size: 112, grid: 2}
      flow: {name: compact, widths: [16, 32, 64], blocks: 1, pool: avgmax, input_norm: frame}
      audio: {name: compact, widths: [8, 16, 32], blocks: 1, pool: max}
      depth: {name: compact, widths: [16, 32, 64], blocks: 1, pool: avgmax, shift: 0.125, input_norm: frame}
    fusion: {dim: 256, depth: 2, num_heads: 4, dropout: 0.1}
  fit_unimodal: [flow, audio, depth]
  modality_dropout: 0.5
  unimodal_optim: {epochs: 30, lr: 0.003, batch_size: 16}
  optim: {epochs: 20, lr: 0.0005, batch_size: 16}
student:
  model:
    size: student
    encoders:
      rgb: {name: compact, widths: [16, 32, 64], blocks: 1, pool: max, shift: 0.125, keypoints: 8}
      flow: {name: compact, widths: [16, 32, 64], blocks: 1, pool: avgmax, input_norm: frame}
      audio: {name: compact, widths: [8, 16, 32], blocks: 1, pool: max}
      depth: {name: compact, widths: [16, 32, 64], blocks: 1, pool: avgmax, shift: 0.125, input_norm: frame}
    fusion: {dim: 96, depth: 1, num_heads: 4, missing: tokens}
  modality_dropout: 0.5
  alpha: 0.5
  temperature: 1.0
  teacher_input: all
  unimodal_aux: 3.0
  single_passes: 1.0
  init_unimodal: [rgb, flow, audio, depth]
  optim: {epochs: 40, lr: 0.003, batch_size: 16}
rows: [baseline, baseline_delta, student]
eval:
  efficiency: true
  warmup: 1
  repeats: 3
"""


def demo_config(experiment: str | None = None, overrides: list[str] | None = None) -> KarmmaConfig:
    """The demo's config: the built-in settings (or ``experiment``) + ``overrides``."""
    import yaml

    source = experiment if experiment is not None else yaml.safe_load(DEMO_YAML)
    return build_config(KarmmaConfig, source, overrides, defaults=["run.name=demo"])


def run_demo(experiment: str | None = None, overrides: list[str] | None = None) -> int:
    cfg = demo_config(experiment, overrides)
    run_dir = prepare_run(cfg)
    run_karmma(cfg, run_dir)
    if is_main():
        print((run_dir / "report.md").read_text())
        print(f"run directory: {run_dir}")
    return 0
