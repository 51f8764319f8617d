"""Metrics per segment of a column, and the largest gap between segments (``evaluation.segments``).

A segment is a value of the column: strings and low-cardinality numbers
(at most ``MAX_DISTINCT`` distinct values) by value, the ``MAX_SEGMENTS - 1``
most frequent kept and the rest pooled as ``other``; other numeric columns
in ``QUANTILE_BINS`` quantile bins ``[low, high)`` (the last bin closed).
NULL is a segment of its own (``null``).

The gap is ``max - min`` of the headline metric over the segments that have
at least ``MIN_ROWS`` rows and where the metric is defined (binary ranking
metrics need both classes); segments left out are listed, never silently
dropped. This is the fairness view: a model can be good on average and bad
for one group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from loopml.tasks import task_of

FloatArray = npt.NDArray[np.float64]
MAX_DISTINCT = 20
MAX_SEGMENTS = 20
QUANTILE_BINS = 5
MIN_ROWS = 30


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def segment_labels(values: npt.ArrayLike) -> tuple[npt.NDArray[np.object_], list[str]]:
    """The segment of every row, as a string, and the segments in display order (bins by value, else by size)."""
    arr = np.asarray(values)
    series = pd.Series(arr)
    numeric = arr.dtype.kind in "fiub"
    if numeric and series.nunique(dropna=True) > MAX_DISTINCT:
        x = arr.astype(np.float64)
        present = x[~np.isnan(x)]
        edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, QUANTILE_BINS + 1)))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        names = [f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{']' if i == len(edges) - 2 else ')'}" for i in range(len(edges) - 1)]
        out = np.asarray([names[i] for i in which], dtype=object)
        out[np.isnan(x)] = "null"
        return out, [*names, *(["null"] if np.isnan(x).any() else [])]
    labels = series.map(lambda v: "null" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    counts = labels.value_counts()
    keep = set(counts.index[: MAX_SEGMENTS - 1]) if len(counts) > MAX_SEGMENTS else set(counts.index)
    out = np.asarray(labels.where(labels.isin(keep), "other"), dtype=object)
    return out, [str(v) for v in pd.Series(out).value_counts().index]


def segment_metrics(
    task: str,
    column: str,
    values: npt.ArrayLike,
    y: npt.ArrayLike,
    scores: FloatArray,
    threshold: float | None,
    metric: str,
) -> dict[str, Any]:
    """Per-segment metrics of one column and the gap of ``metric`` between its best and worst segment."""
    labels, order = segment_labels(values)
    yy = np.asarray(y)
    rows: list[dict[str, Any]] = []
    for label in order:
        mask = labels == label
        ev = task_of(task).evaluate(yy[mask], scores[mask], threshold, f"segment {column}={label}")
        entry: dict[str, Any] = {"value": label, "rows": int(mask.sum()), "metrics": ev.metrics}
        if task_of(task).classifier:
            entry["positives"] = int(yy[mask].sum())
        rows.append(entry)
    eligible = [r for r in rows if r["rows"] >= MIN_ROWS and r["metrics"].get(metric) is not None]
    left_out = [r["value"] for r in rows if r not in eligible]
    gap: dict[str, Any] | None = None
    if len(eligible) >= 2:
        best = max(eligible, key=lambda r: r["metrics"][metric])
        worst = min(eligible, key=lambda r: r["metrics"][metric])
        gap = {
            "metric": metric,
            "gap": best["metrics"][metric] - worst["metrics"][metric],
            "highest": {"value": best["value"], metric: best["metrics"][metric]},
            "lowest": {"value": worst["value"], metric: worst["metrics"][metric]},
        }
    return {"column": column, "metric": metric, "segments": rows, "gap": gap, "left_out": left_out, "min_rows": MIN_ROWS}
