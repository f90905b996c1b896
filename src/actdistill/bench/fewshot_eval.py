"""Few-shot evaluation: episodes on cached backbone features against decoding + encoding per episode.

Methodology (fixed): the demo's configuration (``configs/fewshot/synthetic.yaml``: frozen
MobileNetV2 at 112 px, 8 frames, 256-d heads) on the synthetic few-shot dataset (generated if
absent), test split (24 novel classes), one method head (``--method``, untrained: speed does
not depend on the weights). The test features are cached first, into a fresh cache (that
one-off cost is reported; ``--warm-cache`` reuses the configured one). Then, per setting
(5-way 1-shot, 5-way 5-shot, 1 query per class), each path runs seeded episodes ``0, 1, 2,
...``: ``--warmup`` untimed, then ``--repeats-cached`` / ``--repeats-encode`` timed, one
episode per call; we report median / min / max milliseconds per episode and the ratio of
medians (encode / cached). Both paths are checked to predict the same classes on the timed
episodes. ``amortised_10k_s`` adds the cache build to 10,000 cached episodes, against 10,000
re-encoded ones: the cost of the evaluation protocol either way. The reference scale (CLIP
RN50 at 224 px, heads at 1024-d) is one override away: see ``docs/benchmarks.md``.

    .venv/bin/python actdistill bench fewshot --out benchmarks/results/fewshot_eval.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from actdistill.bench.common import machine, time_calls
from actdistill.config import build_config
from actdistill.data.episodes import EpisodeSampler
from actdistill.engine.fewshot import (
    FewShotConfig,
    FewShotPipeline,
    ensure_data,
    parse_setting,
    seed_episode,
    stack_stages,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fewshot/synthetic.yaml")
    ap.add_argument("--method", default="clip_m2df")
    ap.add_argument("--settings", default="5way1shot,5way5shot")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats-cached", type=int, default=200)
    ap.add_argument("--repeats-encode", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="reuse the configured feature cache (default: a fresh one, so its build time is measured)")
    ap.add_argument("--out", default="benchmarks/results/fewshot_eval.json")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = build_config(FewShotConfig, args.config, ["run.progress=false", *args.overrides])  # a file or shipped name
    ensure_data(cfg)
    tmp_cache = None if args.warm_cache else tempfile.TemporaryDirectory(prefix="fewshot-bench-cache-")
    if tmp_cache is not None:
        cfg.cache_root = tmp_cache.name
    pipe = FewShotPipeline(cfg, Path("/nonexistent-run-dir"))  # nothing is written to the run dir
    pipe.load_data()
    net = pipe.build_net(args.method).eval()
    t0 = time.perf_counter()
    stages = pipe.test_stages(net)  # backbone features cached on disk, then the head's per-video stage
    cache_s = time.perf_counter() - t0
    frames = pipe.frames(cfg.data.test_split, False)
    device = pipe.device
    results: dict[str, object] = {
        "benchmark": "fewshot_eval",
        "machine": machine(device),
        "settings": {"config": args.config, "method": args.method, "warmup": args.warmup,
                     "repeats_cached": args.repeats_cached, "repeats_encode": args.repeats_encode,
                     "backbone": cfg.backbone.name, "input_size": cfg.backbone.input_size,
                     "frames": cfg.data.sampling.num_frames, "test_videos": len(stages)},
        "cache_build_s": cache_s,
        "cases": {},
    }

    def encode_video(uid: str) -> dict[str, torch.Tensor]:  # decode, encode, stage one video
        return {k: v[0] for k, v in net.video_stage(frames.clip(uid)[None].to(device)).items()}

    for setting in args.settings.split(","):
        way, shot = parse_setting(setting)
        sampler = EpisodeSampler.from_index(pipe.test_index, way=way, shot=shot, query=1, seed=cfg.eval.seed)
        preds: dict[str, dict[int, torch.Tensor]] = {"cached": {}, "encode": {}}

        def make(path: str, sampler: EpisodeSampler = sampler, preds: dict = preds):  # one call = one episode
            counter = iter(range(10**9))  # the next episode index each call

            def run() -> None:
                i = next(counter)
                ep = sampler.episode(i)
                with torch.no_grad():
                    if path == "cached":
                        s = stack_stages([stages[u] for u in ep.support])
                        q = stack_stages([stages[u] for u in ep.query])
                    else:  # decode, encode and stage every video of the episode
                        s = stack_stages([encode_video(u) for u in ep.support])
                        q = stack_stages([encode_video(u) for u in ep.query])
                    labels = {k: t.to(device) for k, t in ep.label_tensors().items()}
                    seed_episode(cfg.eval.seed, i, 2)
                    preds[path][i] = net.episode_logits(s, q, labels).argmax(-1).cpu()

            return run

        cached = time_calls(make("cached"), device, args.warmup, args.repeats_cached)
        encode = time_calls(make("encode"), device, args.warmup, args.repeats_encode)
        common = sorted(set(preds["cached"]) & set(preds["encode"]))
        agree = all(torch.equal(preds["cached"][i], preds["encode"][i]) for i in common)
        speedup = encode["median_ms"] / cached["median_ms"]
        amortised = {"cached": cache_s + 1e4 * cached["median_ms"] / 1e3, "encode": 1e4 * encode["median_ms"] / 1e3}
        results["cases"][setting] = {  # type: ignore[index]
            "cached": cached, "encode": encode, "speedup": speedup, "predictions_agree": agree,
            "episodes_compared": len(common), "amortised_10k_s": amortised,
        }
        print(f"{setting}: cached {cached['median_ms']:.2f} ms/episode vs encode {encode['median_ms']:.1f} ms/episode "
              f"({speedup:.0f}x; predictions agree on {len(common)} episodes: {agree}); 10k episodes "
              f"{amortised['cached']:.0f} s (incl. {cache_s:.1f} s cache) vs {amortised['encode']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    if tmp_cache is not None:
        tmp_cache.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
