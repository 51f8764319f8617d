"""PNG plots of the evaluation report, drawn with matplotlib's Agg canvas.

Figures are built as :class:`matplotlib.figure.Figure` objects on a
``FigureCanvasAgg`` directly, never through ``pyplot``: no global figure
state, no GUI backend, safe from any thread. Each function takes plain
arrays or report JSON and writes one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

FloatArray = npt.NDArray[np.float64]
DPI = 90
MAX_POINTS = 400


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path.name


def _thin(*arrays: FloatArray) -> list[FloatArray]:
    n = len(arrays[0])
    if n <= MAX_POINTS:
        return list(arrays)
    pick = np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(np.int64))
    return [a[pick] for a in arrays]


def roc_pr(path: Path, y: npt.ArrayLike, curves: dict[str, FloatArray]) -> str:
    """ROC and precision-recall curves of each named score vector on the same labels."""
    fig = Figure(figsize=(9, 4))
    roc_ax, pr_ax = fig.subplots(1, 2)
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(y, scores)
        roc_ax.plot(*_thin(fpr, tpr), label=name)
        precision, recall, _ = precision_recall_curve(y, scores)
        pr_ax.plot(*_thin(recall, precision), label=name)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall (test)", ylim=(0, 1.02))
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="upper right")
    return _save(fig, path)


def calibration(path: Path, curves: dict[str, dict[str, list[float]]]) -> str:
    """Reliability diagram: observed positive rate against mean predicted score per bin."""
    fig = Figure(figsize=(4.8, 4.4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for name, curve in curves.items():
        ax.plot(curve["predicted"], curve["observed"], marker="o", markersize=3, label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="calibration (test)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def confusion(path: Path, counts: dict[str, int], threshold: float) -> str:
    """The 2x2 confusion matrix at the threshold."""
    fig = Figure(figsize=(3.8, 3.4))
    ax = fig.subplots()
    grid = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.float64)
    ax.imshow(np.log1p(grid), cmap="Blues")
    dark = np.log1p(grid) > np.log1p(grid).max() / 2
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{int(value):,}", ha="center", va="center", color="white" if dark[i, j] else "black")
    ax.set_xticks([0, 1], ["predicted 0", "predicted 1"])
    ax.set_yticks([0, 1], ["actual 0", "actual 1"])
    ax.set_title(f"test, threshold {threshold:.3g}")
    return _save(fig, path)


def importance(path: Path, rows: Sequence[dict[str, Any]], limit: int = 15) -> str:
    """Horizontal bars of the most important features."""
    top = list(rows[:limit])[::-1]
    key = "mean_abs_contribution" if top and top[0].get("mean_abs_contribution") is not None else "gain"
    fig = Figure(figsize=(6.5, 0.3 * len(top) + 1.2))
    ax = fig.subplots()
    ax.barh([r["feature"] for r in top], [r[key] or 0.0 for r in top], color="#4477aa")
    ax.set(xlabel="mean |contribution| (raw score)" if key == "mean_abs_contribution" else "gain", title="global importance")
    return _save(fig, path)


def partial_dependence(path: Path, curves: Sequence[dict[str, Any]]) -> str:
    """One small panel per feature: mean score against the feature's grid value."""
    n = max(len(curves), 1)
    fig = Figure(figsize=(3.0 * n, 2.8))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, curve in zip(axes, curves, strict=False):
        ax.plot(curve["grid"], curve["mean_score"], marker=".", color="#aa3377")
        ax.set(xlabel=curve["feature"], ylabel="mean score")
    fig.suptitle("partial dependence (test sample)")
    return _save(fig, path)


def segments(path: Path, section: dict[str, Any]) -> str:
    """The headline metric per segment of one column."""
    metric = section["metric"]
    rows = [r for r in section["segments"] if r["metrics"].get(metric) is not None]
    fig = Figure(figsize=(6.5, 0.3 * max(len(rows), 1) + 1.2))
    ax = fig.subplots()
    ax.barh([f"{r['value']} ({r['rows']:,})" for r in rows], [r["metrics"][metric] for r in rows], color="#228833")
    ax.set(xlabel=f"{metric} (test)", title=f"{metric} by {section['column']}")
    return _save(fig, path)


def regression(path: Path, y: FloatArray, predictions: FloatArray) -> str:
    """Predicted against actual values (a sample) and the residual histogram."""
    fig = Figure(figsize=(9, 4))
    scatter, hist = fig.subplots(1, 2)
    pick = np.random.default_rng(0).permutation(len(y))[:3000]
    scatter.scatter(y[pick], predictions[pick], s=4, alpha=0.4)
    low, high = float(np.min(y)), float(np.max(y))
    scatter.plot([low, high], [low, high], color="grey", linestyle=":")
    scatter.set(xlabel="actual", ylabel="predicted", title="predicted vs actual (test)")
    hist.hist(predictions - y, bins=50, color="#4477aa")
    hist.set(xlabel="residual (predicted - actual)", title="residuals (test)")
    return _save(fig, path)


def tuning(path: Path, trials: Sequence[dict[str, Any]], metric: str) -> str:
    """Each completed trial's validation value, in trial order."""
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.plot([t["number"] for t in done], [t["value"] for t in done], marker="o", linestyle="", color="#4477aa")
    ax.set(xlabel="trial", ylabel=f"{metric} (valid)", title=f"tuning: {len(done)} completed of {len(trials)} trials")
    return _save(fig, path)
