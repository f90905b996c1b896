"""Statistics of seed studies: intervals over seeds and paired bootstrap differences.

A study runs the same configuration over several training seeds on fixed data. Two kinds of
interval answer two questions:

* :func:`seed_interval`: how much a row's accuracy moves with the training seed (Student-t 95%
  interval of the mean over seeds). It ignores which test clips were hard.
* :func:`paired_bootstrap`: whether row A beats row B. Both rows are scored on the same test units
  (clips, or few-shot episodes) under the same drop draws, so the difference is taken per unit
  and per seed, and the interval comes from resampling seeds and units together (a two-way
  bootstrap: seeds and units drawn with replacement, independently). Pairing removes the
  between-clip variance the two rows share, which is most of it; resampling seeds keeps the
  training noise in. Why not a t-test over seeds: with 5 seeds it ignores the test-set noise,
  and a Wilson interval per row ignores that the rows are correlated. The two-way ("pigeonhole")
  bootstrap is conservative for crossed designs (Owen 2007, Ann. Appl. Stat.: it counts the
  seed x unit interaction up to three times where the mean's variance has it once), so an
  interval that excludes 0 is a claim one can lean on; one that includes 0 may be too wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Student-t 0.975 quantiles by degrees of freedom (exact to 3 decimals); larger df interpolate in 1/df.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (1.96 as df grows)."""
    if df < 1:
        return float("nan")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        lo, hi, qlo, qhi = keys[-1], math.inf, _T975[keys[-1]], 1.959964
    else:
        lo = max(k for k in keys if k < df)
        hi = min(k for k in keys if k > df)
        qlo, qhi = _T975[lo], _T975[hi]
    x = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
    return qlo + x * (qhi - qlo)


def seed_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation and Student-t 95% interval of the mean over seeds (NaN seeds left out)."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": float("nan"), "sd": float("nan"), "ci95": [float("nan"), float("nan")], "seeds": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "sd": float("nan"), "ci95": [float("nan"), float("nan")], "seeds": 1}
    sd = float(v.std(ddof=1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "seeds": n}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0,
                     chunk: int = 250) -> dict[str, Any]:
    """Mean of ``a - b`` and its two-way bootstrap 95% interval.

    ``a``, ``b``: ``[seeds, units]`` per-unit scores of two rows (e.g. 100 x correct, or a clip's
    accuracy averaged over drop draws), the same units in the same order for both; NaN where a
    unit was not scored (e.g. a clip without any of a subset's modalities), left out of both.
    Each resample draws seeds and units with replacement; its statistic is the mean difference
    over the drawn (seed, unit) cells, counted with multiplicity. Computed from multinomial
    weights (``w_s^T D w_u / w_s^T M w_u``), so memory is O(chunk x units) however many units.

    Returns ``mean``, ``ci95`` (percentile interval), ``p_a_better`` (share of resamples with a
    positive difference), ``seeds`` and ``units``.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired scores must be two [seeds, units] arrays of one shape, got {a.shape} and {b.shape}")
    d = a - b
    valid = ~np.isnan(d)
    s, n = d.shape
    out: dict[str, Any] = {"seeds": int(valid.any(1).sum()), "units": int(valid.any(0).sum())}
    if not valid.any():
        return {**out, "mean": float("nan"), "ci95": [float("nan"), float("nan")], "p_a_better": float("nan")}
    dm = np.where(valid, d, 0.0)
    m = valid.astype(float)
    out["mean"] = float(dm.sum() / m.sum())
    rng = np.random.default_rng(seed)
    stats: list[np.ndarray] = []
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        ws = rng.multinomial(s, np.full(s, 1.0 / s), size=k).astype(float)  # [k, seeds]
        wu = rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(float)  # [k, units]
        num = ((ws @ dm) * wu).sum(1)
        den = ((ws @ m) * wu).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append(num / den)
    boot = np.concatenate(stats)
    boot = boot[~np.isnan(boot)]
    out["ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    out["p_a_better"] = float((boot > 0).mean())
    return out


def verdict(diff: dict[str, Any]) -> str:
    """A few words for a paired difference: which row is ahead, or that the interval includes 0."""
    lo, hi = diff["ci95"]
    if lo != lo:
        return "n/a"
    if lo > 0:
        return "A ahead"
    if hi < 0:
        return "B ahead"
    return "within noise"


def format_interval(stat: dict[str, Any], digits: int = 1) -> str:
    """``mean [lo, hi]`` for a table cell."""
    lo, hi = stat["ci95"]
    if lo != lo:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def plot_paired_differences(path: Any, series: dict[str, list[tuple[float, dict[str, Any]]]], xlabel: str,
                            ylabel: str = "difference (points)", title: str = "") -> None:
    """One line per pair (``"A - B"``): the mean paired difference at each x with its 95% interval
    as an error bar, and a zero line, so "within noise" is visible where a bar crosses it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.axhline(0.0, color="0.5", lw=0.8)
    for i, (label, points) in enumerate(series.items()):
        if not points:
            continue
        shift = (i - (len(series) - 1) / 2) * 0.006 * (max(x for x, _ in points) - min(x for x, _ in points) or 1)
        xs = np.asarray([x for x, _ in points]) + shift
        mean = np.asarray([d["mean"] for _, d in points])
        lo = np.asarray([d["ci95"][0] for _, d in points])
        hi = np.asarray([d["ci95"][1] for _, d in points])
        ax.errorbar(xs, mean, yerr=[mean - lo, hi - mean], marker="o", ms=4, capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
