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
