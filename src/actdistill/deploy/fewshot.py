"""Few-shot prediction: which class of a support folder does one video belong to?

``FewShotRecognizer.from_run(dir).predict(video, support)`` loads a trained method of a few-shot
run (CLIP-M²DF by default) and treats ``support/<class>/<video or frame folder>`` as the support
set of one episode with ``way`` = number of class folders and ``shot`` = videos per class (they
may differ per class for prototype methods). Class names are the folder names (underscores read
as spaces), which is also what the text prompt of CLIP-M²DF / CLIP-FSAR is built from, so any new
class works without retraining. Videos go through the run's readers, test-time sampling and crop.
Every class folder must hold at least one video: an empty one is refused, naming the folder,
rather than silently asking an (N-1)-way question.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from actdistill.data.records import DataError, DatasetIndex
from actdistill.deploy.recognizer import Prediction, check_top, top_k, video_segment


def _class_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


class FewShotRecognizer:
    """A trained few-shot method of a run directory; the support set is given per call."""

    def __init__(self, cfg: Any, method: str, run_dir: Path, device: str = "cpu") -> None:
        self.cfg = cfg
        self.method = method
        self.run_dir = Path(run_dir)
        self.device = device
        self._support_key: tuple[Any, ...] | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, method: str | None = None, device: str = "cpu") -> FewShotRecognizer:
        from actdistill.engine.fewshot import load_run_config

        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
        cfg = load_run_config(run_dir)
        trained = [m for m in cfg.heads.methods if (run_dir / "models" / f"{m}.safetensors").exists()]
        if not trained:
            raise FileNotFoundError(f"{run_dir / 'models'}: no trained few-shot method in this run directory")
        if method is None:
            method = "clip_m2df" if "clip_m2df" in trained else trained[0]
        elif method not in trained:
            raise ValueError(f"method {method!r} was not trained in {run_dir}; trained: {trained}")
        cfg.heads.init = {}  # the run's own weights are loaded below; reference checkpoints are not needed
        return cls(cfg, method, run_dir, device)

    def _dataset(self, index: DatasetIndex) -> Any:
        from actdistill.data.builder import build_dataset

        return build_dataset(self.cfg.data, index.split, False, index=index)

    def _net(self, names: list[str]) -> Any:
        """The method's net with text tables for ``names`` (rebuilt only when the classes change)."""
        from actdistill.engine.checkpoint import load_weights
        from actdistill.engine.fewshot import FewShotPipeline

        if self._support_key != tuple(names):
            pipe = FewShotPipeline(self.cfg, self.run_dir)
            pipe.train_names = pipe.test_names = list(names)
            net = pipe.build_net(self.method)
            load_weights(net, self.run_dir / "models" / f"{self.method}.safetensors")
            self._net_cache = net.eval()
            self._support_key = tuple(names)
        return self._net_cache

    def support_index(self, support: str | Path) -> DatasetIndex:
        from actdistill.data.datasets.video_folder import load_video_folder

        root = Path(support)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: support folder does not exist (expected <support>/<class>/<videos>)")
        index = load_video_folder(root, modalities=("rgb",), name="support", split="support",
                                  default_fps=30.0)
        if index.problems:
            first = index.problems[0]
            raise DataError(first.path, f"support set: {first.message} ({len(index.problems)} problem(s))")
        # A class folder without videos would silently turn an N-way question into an (N-1)-way one
        # (or leave a class no method can score): refuse, naming the folder.
        used = {int(s.labels["class"]) for s in index.segments}
        for c, folder in enumerate(index.classes.get("class", [])):
            if c not in used:
                raise DataError(root / folder, "support class folder has no videos or frame folders; add at "
                                               "least one or remove the folder")
        if len(index.classes.get("class", [])) < 2:
            raise DataError(root, "a support set needs at least two class folders with videos")
        return index

    @torch.no_grad()
    def predict(self, video: str | Path, support: str | Path, top: int = 5) -> Prediction:
        """Rank the support classes for ``video`` (scores: softmax of the method's episode logits)."""
        from actdistill.engine.fewshot import _one, seed_episode, stack_stages

        check_top(top)
        t0 = time.perf_counter()
        index = self.support_index(support)
        folders = index.classes["class"]
        names = [_class_name(c) for c in folders]
        query, _ = video_segment(video, uid=f"query:{Path(video).name}")
        both = DatasetIndex("predict", "support", [*index.segments, query], index.classes)
        ds = self._dataset(both)
        net = self._net(names)
        t1 = time.perf_counter()
        stages = [_one(net.video_stage(ds[i]["inputs"]["rgb"][0].float()[None].to(self.device)))
                  for i in range(len(both.segments))]
        labels = torch.tensor([int(s.labels["class"]) for s in index.segments])
        order = labels.argsort(stable=True)  # supports grouped by class, as an episode lays them out
        s = stack_stages([stages[i] for i in order.tolist()])
        q = stack_stages([stages[-1]])
        sl = labels[order]
        ep = {"support_labels": sl, "support_real_labels": sl, "query_labels": torch.zeros(1, dtype=torch.long),
              "query_real_labels": torch.zeros(1, dtype=torch.long)}
        seed_episode(self.cfg.eval.seed, 0, 2)
        logits = net.episode_logits(s, q, {k: v.to(self.device) for k, v in ep.items()})[0].cpu()
        t2 = time.perf_counter()
        shots = {names[c]: int((labels == c).sum()) for c in range(len(names))}
        return Prediction(str(video), self.method, ["rgb"], {}, {"class": top_k(logits.softmax(-1), names, top)},
                          {"load_and_decode": round(t1 - t0, 4), "model": round(t2 - t1, 4)},
                          {"support": str(support), "way": len(names), "shots": shots})
