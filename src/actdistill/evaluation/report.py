"""Run-directory reports: Markdown tables, per-sample predictions CSV, PNG plots.

Plots use matplotlib's non-interactive Agg backend so they render on a headless machine.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_predictions_csv(path: str | Path, uids: Sequence[str], logits: Mapping[str, torch.Tensor],
                          labels: Mapping[str, torch.Tensor], class_names: Mapping[str, Sequence[str]]) -> None:
    """One row per sample: for each task the true and predicted class (id and name) and confidence."""
    tasks = [t for t in logits if not (t == "action" and {"verb", "noun"} <= set(logits))]
    probs = {t: logits[t].float().softmax(-1) for t in tasks}
    header = ["uid"]
    for t in tasks:
        header += [f"{t}_true", f"{t}_pred", f"{t}_pred_name", f"{t}_confidence"]
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, uid in enumerate(uids):
            row: list[Any] = [uid]
            for t in tasks:
                conf, pred = probs[t][i].max(-1)
                names = class_names.get(t, [])
                p = int(pred)
                row += [int(labels[t][i]) if t in labels else "", p, names[p] if p < len(names) else "",
                        f"{float(conf):.4f}"]
            w.writerow(row)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_drop_curves(path: str | Path, curves: Mapping[str, Sequence[float]], rates: Sequence[float],
                     ylabel: str = "action top-1 (%)") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(rates, curve, marker="o", label=name)
    ax.set_xlabel("modality drop probability p")
    ax.set_ylabel(ylabel)
    ax.set_title("Dynamic missing modalities")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_subset_accuracy(path: str | Path, table: Mapping[str, Mapping[str, float]],
                         ylabel: str = "action top-1 (%)") -> None:
    """Grouped bars: one group per modality subset, one bar per model row."""
    plt = _plt()
    rows = list(table)
    subsets = list(next(iter(table.values())))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(subsets) * max(1, len(rows)) / 2), 4))
    for k, row in enumerate(rows):
        xs = [i + k * width for i in range(len(subsets))]
        ax.bar(xs, [table[row].get(s, 0.0) for s in subsets], width, label=row)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(subsets))])
    ax.set_xticklabels(subsets, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title("Accuracy per modality subset")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_gflops(path: str | Path, points: Mapping[str, Sequence[tuple[float, float, str]]],
                            ylabel: str = "action top-1 (%)") -> None:
    """Scatter of (GFLOPs, accuracy) per (row, subset); log-scale x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in points.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ax.scatter(xs, ys, label=name)
        for x, y, label in pts:
            if "+" not in label or label.count("+") == len(pts[0][2].split("+")) - 1:
                ax.annotate(label, (x, y), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per clip (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title("Accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(path: str | Path, calibration: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Reliability diagram, one panel per row: accuracy against mean confidence in each non-empty
    bin, one line per task, beside the diagonal a calibrated model would follow."""
    plt = _plt()
    rows = list(calibration)
    cols = min(3, max(1, len(rows)))
    nrows = -(-max(1, len(rows)) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.4 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
        for task, cal in calibration[row].items():
            pts = [(b["confidence"], b["accuracy"]) for b in cal["bins"] if b["count"]]
            ece = "n/a" if cal["ece"] is None else f"{cal['ece']:.3f}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{task} (ECE {ece})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(row, fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle("Reliability (all modalities)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_class(path: str | Path, per_class: Mapping[str, Sequence[Mapping[str, Any]]], k: int = 8,
                   task: str = "") -> None:
    """Per-class top-1 for one task, one panel per row: its ``k`` worst and ``k`` best tested
    classes (all of them when there are at most ``2k``), each labelled with its sample count."""
    from actdistill.evaluation.calibration import ranked_classes

    plt = _plt()
    rows = list(per_class)
    cols = min(3, max(1, len(rows)))
    nrows = -(-max(1, len(rows)) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, (0.22 * 2 * k + 1.2) * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows):
        tested = ranked_classes(per_class[row], len(per_class[row]))
        shown = tested if len(tested) <= 2 * k else [*tested[:k], *tested[-k:]]
        ys = list(range(len(shown)))
        ax.barh(ys, [c["top1"] for c in shown], color=["tab:red" if i < k and len(tested) > 2 * k else "tab:blue"
                                                         for i in ys])
        for y, c in zip(ys, shown):  # the value beside each bar, so a 0% class is not an empty row
            ax.text(c["top1"] + 1, y, f"{c['top1']:.0f}", va="center", fontsize=5)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{c['name']} ({c['samples']})" for c in shown], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("top-1 (%)", fontsize=8)
        ax.set_title(row + ("" if len(tested) <= 2 * k else f": {k} worst, {k} best"), fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"Per-class accuracy{f' ({task})' if task else ''}, all modalities (n = test samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_class_views(run_dir: str | Path, full: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]],
                      class_names: Mapping[str, Sequence[str]], bins: int = 15,
                      k: int = 8) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibration and per-class views of every row from its all-modalities ``logits`` and
    ``labels`` (``full[row]``): writes ``calibration.json``, ``per_class.json``,
    ``reliability.png`` and ``per_class_<task>.png`` into ``run_dir`` and returns the two dicts
    (``{row: {task: ...}}``, see :mod:`actdistill.evaluation.calibration`) for the report."""
    from actdistill.evaluation.calibration import per_class_accuracy, reliability_bins, view_tasks
    from actdistill.rundir import write_json

    run_dir = Path(run_dir)
    calibration: dict[str, Any] = {}
    per_class: dict[str, Any] = {}
    for row, res in full.items():
        logits, labels = res["logits"], res["labels"]
        tasks = view_tasks(logits, labels)
        calibration[row] = {t: reliability_bins(logits[t], labels[t], bins) for t in tasks}
        per_class[row] = {t: per_class_accuracy(logits[t], labels[t], class_names.get(t, ())) for t in tasks}
    write_json(run_dir / "calibration.json", calibration)
    write_json(run_dir / "per_class.json", per_class)
    if calibration:
        plot_reliability(run_dir / "reliability.png", calibration)
    tasks = list(dict.fromkeys(t for r in per_class.values() for t in r))
    for t in tasks:
        plot_per_class(run_dir / f"per_class_{t}.png", {r: v[t] for r, v in per_class.items() if t in v}, k, t)
    return calibration, per_class


def class_views_markdown(calibration: Mapping[str, Mapping[str, Mapping[str, Any]]],
                         per_class: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
                         focus: str | None = None, worst: int = 5) -> list[str]:
    """Report lines: ECE per row and task, then the ``worst`` classes of row ``focus`` (the
    student when there is one) per task, so a reader sees calibration and weak classes at once."""
    from actdistill.evaluation.calibration import ranked_classes, untested_classes

    rows = list(calibration)
    if not rows:
        return []
    tasks = list(dict.fromkeys(t for r in calibration.values() for t in r))
    lines = ["", "Calibration on all modalities (expected calibration error, equal-width confidence bins; "
             "0 is perfect; diagram in `reliability.png`, bins in `calibration.json`):", ""]
    lines.append(markdown_table(["row", *[f"{t} ECE" for t in tasks]],
                                [[r, *["n/a" if calibration[r].get(t, {}).get("ece") is None
                                       else f"{calibration[r][t]['ece']:.3f}" for t in tasks]] for r in rows]))
    focus = focus if focus in per_class else ("student" if "student" in per_class else rows[-1])
    for t, classes in per_class.get(focus, {}).items():
        bad = ranked_classes(classes, worst)
        missing = untested_classes(classes)
        lines += ["", f"The {len(bad)} worst {t} classes of `{focus}` (all modalities; every row and class in "
                  f"`per_class.json`, plot in `per_class_{t}.png`"
                  + (f"; {missing} of {len(classes)} classes have no test sample" if missing else "") + "):", ""]
        lines.append(markdown_table(["class", "test samples", "top-1 (%)"],
                                    [[c["name"], c["samples"], f"{c['top1']:.1f}"] for c in bad]))
    return lines
