"""``actdistill export onnx RUN_DIR``: one ONNX graph of the student that serves every modality subset.

Why one graph with a presence-mask input rather than one graph per subset: a robot or laptop
loses sensors at run time, and the student was trained for exactly that. Every modality is an
input (fill an absent one with zeros: its values are never used) and ``present: bool[B, M]``
says which ones are real; the graph replaces absent modalities by their learned
missing-modality tokens, as in training.

The eager model skips encoders of absent modalities (data-dependent control flow, not
exportable); the exported graph runs every encoder and selects with ``where``, which gives the
same outputs (checked here, for every subset, against ONNX Runtime) at the cost of computing
features that are thrown away. The export is validated subset by subset and a model card is
written next to the graph.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from actdistill.data.records import DataError
from actdistill.deploy.recognizer import Recognizer
from actdistill.evaluation.protocols import modality_subsets, subset_name
from actdistill.models.fusion import MultimodalRecognizer


class PresenceMaskGraph(nn.Module):
    """``(x_m1, ..., x_mM, present) -> logits per task``: a :class:`MultimodalRecognizer` without
    data-dependent branches (every encoder runs; the fusion's ``where`` drops absent rows)."""

    def __init__(self, model: MultimodalRecognizer, tasks: list[str]) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        *xs, present = args
        mods = self.model.modalities
        tokens = {m: self.model.encoders[m](x) for m, x in zip(mods, xs)}
        counts = {m: int(t.shape[1]) for m, t in tokens.items()}
        out = self.model.fusion(tokens, present, counts)
        return tuple(out["logits"][t] for t in self.tasks)


def random_inputs(shapes: dict[str, list[int]], modalities: tuple[str, ...], batch: int,
                  gen: torch.Generator) -> dict[str, Tensor]:
    """Seeded uniform [0, 1] inputs of the run's per-sample shapes (validation and benchmarks)."""
    return {m: torch.rand(batch, *shapes[m], generator=gen) for m in modalities}


def _preprocessing(cfg: Any) -> list[str]:
    d = cfg.data
    s, sp = d.sampling, d.spatial
    lines = [
        f"- Temporal sampling: `{s.mode}`, {s.num_frames} frames per clip, {s.test_views} test view(s); "
        "average the logits of the views.",
        f"- Spatial: resize the short side to {sp.short_side} px, centre-crop {sp.crop_size}x{sp.crop_size}; "
        f"values in [0, 1], normalisation `{sp.normalize}`.",
    ]
    from actdistill.data.modalities.base import modality_kind, options_for

    for m in d.modalities:
        kind, opts = modality_kind(m), options_for(d.readers, m)
        name = f"`{m}`" if m != kind else kind.capitalize()
        if kind == "flow":
            lines.append(f"- {name}: u/v channels, (pixel - 128) / 128 * {opts.get('scale', 1.0)} for EPIC-style "
                         f"JPEGs, or TV-L1 clipped to {opts.get('tvl1_bound', 20.0)} px and divided by it.")
        elif kind == "audio":
            a = {"sample_rate": 24000, "window_sec": 1.116, "n_fft": 1024, "win_length": 160, "hop_length": 80,
                 "n_mels": 128, **opts}
            lines.append(f"- {name}: log(mel power + 1e-6) (HTK mels, periodic Hann) of a {a['window_sec']} s window "
                         "centred on each "
                         f"sampled frame, {a['sample_rate']} Hz, n_fft {a['n_fft']}, window {a['win_length']}, "
                         f"hop {a['hop_length']}, {a['n_mels']} mels.")
        elif kind == "depth":
            md = opts.get("max_depth", 10.0)
            lines.append(f"- {name}: 16-bit PNG values * {opts.get('scale', 0.001)} = metres, clipped to {md} m and "
                         f"divided by {md}; 0 = no measurement.")
        elif kind == "imu":
            o = {"window_sec": 2.0, "samples": 64, **opts}
            lines.append(f"- {name}: a {o['window_sec']} s window of the CSV's channels centred on each sampled "
                         f"frame, linearly resampled to {o['samples']} points.")
    return lines


def supported_opsets() -> tuple[int, int]:
    """The ONNX opsets the installed torch's TorchScript exporter (the one used here) can write."""
    try:
        from torch.onnx import _constants as c

        return int(c.ONNX_MIN_OPSET), int(getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):  # private module moved: the range every torch >= 2.1 exports
        return 7, 17


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write before minutes of loading and tracing."""
    lo, hi = supported_opsets()
    if not lo <= opset <= hi:
        raise ValueError(f"--opset {opset}: not supported by the ONNX exporter of torch {torch.__version__} "
                         f"(it writes opsets {lo} to {hi}; the default, 17, works with ONNX Runtime >= 1.11)")


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` or refuse, naming it, when it is a file or not writable (before exporting)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "output folder (--out) is an existing file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(out_dir, "output folder (--out) cannot be created: a parent is a file") from None
    except PermissionError:
        raise DataError(out_dir, "output folder (--out) cannot be created: permission denied") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise DataError(out_dir, "output folder (--out) is not writable")


def export_onnx(run_dir: str | Path, out: str | Path | None = None, row: str = "student", opset: int = 17,
                batch: int = 3, seed: int = 0) -> dict[str, Any]:
    """Export ``row`` of ``run_dir`` to ONNX, validate it with ONNX Runtime on every modality subset,
    write ``labels.json`` and ``MODEL_CARD.md`` beside it; returns the validation report.

    The opset and the output folder are checked first, and a few-shot run is refused with what can
    be done with it instead (:meth:`Recognizer.from_run`), so no error comes after the slow part."""
    import onnxruntime as ort
    from torch.onnx.errors import OnnxExporterError

    check_opset(opset)
    rec = Recognizer.from_run(run_dir, row)
    model = rec.model
    if not isinstance(model, MultimodalRecognizer):
        raise ValueError(f"row {row!r} is a {type(model).__name__}; only fusion rows export to one graph")
    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir / "onnx"
    prepare_out_dir(out_dir)
    path = out_dir / f"{row}.onnx"
    mods = rec.modalities
    tasks = list(rec.heads)
    shapes = {m: list(v) for m, v in rec.info["input_shapes"].items()}
    graph = PresenceMaskGraph(model, tasks).eval()
    gen = torch.Generator().manual_seed(seed)
    example = random_inputs(shapes, mods, batch, gen)
    present = torch.ones(batch, len(mods), dtype=torch.bool)
    names = [*mods, "present"]
    t0 = time.perf_counter()
    tmp = path.with_suffix(".onnx.tmp")
    # Traced with autograd on and trainable parameters: in eval mode under no_grad, PyTorch routes
    # nn.TransformerEncoderLayer to a fused kernel (aten::_transformer_encoder_layer_fwd) that has
    # no ONNX translation; the unfused path is the same maths.
    for p in graph.parameters():
        p.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # int(shape): constants by design
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.onnx.export(graph, (*[example[m] for m in mods], present), str(tmp), input_names=names,
                              output_names=tasks, dynamic_axes={n: {0: "batch"} for n in names + tasks},
                              opset_version=opset, dynamo=False)
        except OnnxExporterError as e:  # an operator without a translation at this opset
            tmp.unlink(missing_ok=True)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--opset {opset}: the model cannot be exported at this opset ({first}); "
                             "try the default, 17") from None
    tmp.replace(path)
    export_s = time.perf_counter() - t0

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks: dict[str, dict[str, float]] = {}
    subsets = [*modality_subsets(mods), None]  # None: a batch mixing subsets row by row
    for subset in subsets:
        x = random_inputs(shapes, mods, batch, gen)
        if subset is None:
            pres = torch.zeros(batch, len(mods), dtype=torch.bool)
            for i in range(batch):
                pres[i, i % len(mods)] = True
            pres[:, 0] |= torch.arange(batch) % 2 == 0
            name = "mixed"
        else:
            pres = torch.tensor([[m in subset for m in mods]] * batch)
            name = subset_name(subset)
        for j, m in enumerate(mods):  # what a deployment passes for an absent modality
            x[m][~pres[:, j]] = 0.0
        with torch.no_grad():
            ref = model({m: x[m] for j, m in enumerate(mods) if bool(pres[:, j].any())}, pres)["logits"]
        got = sess.run(tasks, {**{m: x[m].numpy() for m in mods}, "present": pres.numpy()})
        diffs = {t: float((torch.from_numpy(g) - ref[t]).abs().max()) for t, g in zip(tasks, got)}
        checks[name] = {"max_abs_diff": max(diffs.values()), **{f"{t}_max_abs_diff": v for t, v in diffs.items()}}
    worst = max(c["max_abs_diff"] for c in checks.values())
    (out_dir / "labels.json").write_text(json.dumps(rec.classes, indent=1) + "\n")
    report = {"onnx": str(path), "row": row, "opset": opset, "inputs": {m: ["batch", *shapes[m]] for m in mods},
              "present": ["batch", len(mods)], "outputs": {t: ["batch", rec.heads[t]] for t in tasks},
              "export_seconds": round(export_s, 2), "bytes": path.stat().st_size, "validation": checks,
              "max_abs_diff": worst}
    (out_dir / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(model_card(rec, report, run_dir))
    return report


def _shape(dims: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def model_card(rec: Recognizer, report: dict[str, Any], run_dir: Path) -> str:
    """Markdown: inputs, preprocessing, outputs and labels, accuracy per subset, export validation."""
    mods = rec.modalities
    summary_path = run_dir / "summary.json"
    acc = {}
    if summary_path.exists():
        acc = json.loads(summary_path.read_text()).get(rec.row, {}).get("subsets", {})
    lines = [f"# Model card: `{rec.row}` of `{run_dir.name}`", "",
             f"KARMMA {rec.row} exported to ONNX (opset {report['opset']}, {report['bytes'] / 1e6:.2f} MB). "
             "One graph serves every modality subset: pass zeros for an absent modality and mark it "
             "`False` in `present`.", "", "## Inputs", "", "| name | shape | dtype | meaning |", "|---|---|---|---|"]
    meaning = {"rgb": "RGB frames", "flow": "optical flow u/v", "audio": "log-mel spectrogram per frame",
               "depth": "depth / max_depth, in [0, 1]", "boxes": "object boxes x1,y1,x2,y2,category,valid",
               "imu": "IMU window"}
    for m in mods:
        lines.append(f"| `{m}` | {_shape(report['inputs'][m])} | float32 | {meaning.get(m, m)} |")
    order = "`, `".join(mods)
    lines.append(f"| `present` | {_shape(report['present'])} | bool | column j: modality [`{order}`][j] is real |")
    lines += ["", "## Preprocessing", "", *_preprocessing(rec.cfg), "", "## Outputs", ""]
    for t in rec.heads:
        lines.append(f"- `{t}`: logits over {rec.heads[t]} classes (`labels.json[\"{t}\"]`).")
    if "action" not in rec.heads and {"verb", "noun"} <= set(rec.heads):
        lines.append("- action = (verb, noun); rank pairs by P(verb) P(noun) (EPIC-KITCHENS-100 convention).")
    if acc:
        lines += ["", "## Accuracy per modality subset (action top-1 %, from the run's `summary.json`)", "",
                  "| subset | top-1 |", "|---|---|"]
        lines += [f"| {s} | {v:.2f} |" for s, v in acc.items()]
    lines += ["", "## Export validation (ONNX Runtime vs PyTorch eager, random inputs, every subset)", "",
              "| subset | max abs diff (logits) |", "|---|---|"]
    lines += [f"| {s} | {c['max_abs_diff']:.2e} |" for s, c in report["validation"].items()]
    lines += ["", f"Reproduce: `actdistill export onnx {run_dir}`", ""]
    return "\n".join(lines)
