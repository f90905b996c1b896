"""``actdistill demo``: the KARMMA main job on the built-in synthetic dataset.

Generates the synthetic dataset (EPIC-KITCHENS-100 layout) if absent, fits the unimodal teacher
extractors that have no pretrained weights here, caches the frozen teacher's tokens, trains the
teacher, the Baseline, Baseline w/ δ and KARMMA student rows, evaluates all of them on every
modality subset and on the drop-rate curve, measures efficiency, prints the tables and writes
the run directory. The settings are those of the shipped ``configs/karmma/synthetic.yaml``
(read from the package), sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

from actdistill.config import build_config
from actdistill.engine.distributed import is_main
from actdistill.engine.karmma import KarmmaConfig, prepare_run, run_karmma
from actdistill.shipped import shipped_path

DEMO_EXPERIMENT = "karmma/synthetic"  # the shipped config the demo runs


def demo_config(experiment: str | None = None, overrides: list[str] | None = None) -> KarmmaConfig:
    """The demo's config: the shipped ``karmma/synthetic.yaml`` (or ``experiment``) + ``overrides``,
    named ``demo`` unless the file or an override names the run."""
    source = experiment if experiment is not None else shipped_path(DEMO_EXPERIMENT)
    return build_config(KarmmaConfig, source, overrides, defaults=["run.name=demo"])


def run_demo(experiment: str | None = None, overrides: list[str] | None = None) -> int:
    cfg = demo_config(experiment, overrides)
    run_dir = prepare_run(cfg)
    run_karmma(cfg, run_dir)
    if is_main():
        print((run_dir / "report.md").read_text())
        print(f"run directory: {run_dir}")
    return 0
