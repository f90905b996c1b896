"""The top-level experiment configuration: one typed tree that every job reads.

Sections are added as capabilities land (data, run, then model/train/eval). Experiment YAML
files in ``configs/`` override parts of it and the command line overrides those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actdistill.data.builder import DataConfig


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str = "run"
    seed: int = 0
    resume: str | None = None  # an existing run directory to continue
    progress: bool = True
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    dist_timeout_min: float = 30.0  # torchrun: how long a rank may wait at a barrier or all-reduce


@dataclass
class ExperimentConfig:
    # Modules (dotted names, or .py files next to the YAML) imported before the config is built,
    # so the encoders and datasets they register can be named here: see docs/extending.md.
    custom_imports: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
