"""Reference statistics, computed once at training time, and the PSI against them.

For every numeric feature and for the model score, on the held-out test split
(training passes ``feature_split="test"``: the most recent rows, whose time
windows are fully warmed up as live traffic's are, while the first training
rows' 30-day windows are still filling up; and served scores are
out-of-sample, while in-sample training scores of a boosted model are sharper
than anything seen live) we store, as plain JSON:

* ``edges``: bin edges at the reference quantiles ``1/B .. (B-1)/B`` (``B`` is
  ``monitoring.psi_bins``), deduplicated, so a discrete feature simply has
  fewer bins. Bin ``i`` is ``(edges[i-1], edges[i]]`` with ``-inf``/``+inf``
  at the ends; ``np.searchsorted(edges, v, side="left")`` finds it.
* ``fractions``: the reference share of rows in each of those ``len(edges)+1``
  bins followed by one more entry, the share of NULL/NaN values (nulls are
  their own bin, so a rise in missing values shows up as drift);
* ``count, mean, std, min, max, null_rate`` (``min``/``max`` are the value
  range the out-of-range check uses) and ``non_null``;
* ``sketch``: the reference CDF at ``SKETCH_SIZE + 1`` quantiles (``values``:
  the distinct quantiles ``0, 1/Q, .., 1`` of the finite values, each an
  observed value (``inverted_cdf``), plus the PSI edges; ``cdf``: the exact share of finite values ``<=`` each, ``cdf_below``:
  the share ``<`` each). The Kolmogorov-Smirnov and Wasserstein tests of
  :mod:`loopml.monitor.stattests` run against it without the training data.
  Between two sketch points the reference CDF moves by at most ``1/Q`` (plus the
  mass of a repeated value, which the two CDF columns hold exactly), which
  bounds the KS error (see that module). A column with at most ``Q + 1``
  distinct values keeps them all, so its sketch is exact.

String columns of the training set (raw categorical request features) are
kept under ``categorical``: the ``MAX_CATEGORIES`` most frequent ``values``
with their ``fractions``, ``other`` (the share of the rarer ones), ``null_rate``,
``count`` and ``distinct``.

For binary models trained with test labels, ``score["calibration"]`` is an
isotonic map (``x`` scores -> ``y`` observed positive rate) fitted on the
test split: confidence-based performance estimation
(:mod:`loopml.monitor.performance`) calibrates live scores with it, as
NannyML's CBPE calibrates on its reference period.

Old references (without ``sketch``/``categorical``/``non_null``) stay
readable: the monitor falls back to what they hold.

The PSI is hand-written (a dozen numpy lines) rather than taken from a drift
library, because those bin on the combined reference+current data (Evidently)
and so cannot use statistics stored at training time::

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)

with ``r_i``/``c_i`` the reference/current fractions per bin (NULL bin
included) and every fraction below ``epsilon`` (default ``1e-4``) raised to
``epsilon`` so empty bins contribute a finite amount. Rule of thumb: < 0.1
stable, 0.1-0.2 moderate shift, > 0.2 significant shift.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.isotonic import IsotonicRegression

FloatArray = npt.NDArray[np.float64]
ReferenceEntry = dict[str, Any]
DEFAULT_EPSILON = 1e-4
#: quantiles in the CDF sketch of each numeric column (the KS error bound is 1/SKETCH_SIZE)
SKETCH_SIZE = 1000
#: categories kept per string column (the rest are summed into ``other``)
MAX_CATEGORIES = 1000
#: at most this many breakpoints in the score calibration map
_MAX_CALIBRATION_POINTS = 400


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def bin_counts(edges: FloatArray, values: FloatArray) -> npt.NDArray[np.int64]:
    """Counts per bin (``len(edges) + 1`` value bins, then the NULL bin)."""
    values = np.asarray(values, dtype=np.float64)
    null = np.isnan(values)
    idx = np.searchsorted(edges, values[~null], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)
    return np.append(counts, np.int64(null.sum()))


def _sketch(finite: FloatArray, edges: FloatArray, size: int) -> dict[str, list[float]]:
    """Exact reference CDF at the quantiles ``0, 1/size, .., 1`` of ``finite`` and at the PSI edges."""
    if not len(finite):
        return {"values": [], "cdf": [], "cdf_below": []}
    ordered = np.sort(finite)
    distinct = np.unique(ordered)
    if len(distinct) > size + 1:
        distinct = np.quantile(ordered, np.linspace(0.0, 1.0, size + 1), method="inverted_cdf")
    points = np.unique(np.concatenate([distinct, edges]))
    m = len(ordered)
    le = np.searchsorted(ordered, points, side="right") / m
    lt = np.searchsorted(ordered, points, side="left") / m
    return {"values": [float(v) for v in points], "cdf": [float(v) for v in le], "cdf_below": [float(v) for v in lt]}


def reference_entry(values: npt.NDArray[Any], bins: int, split: str = "train", sketch_size: int = SKETCH_SIZE) -> ReferenceEntry:
    """Reference statistics of one numeric column (NaN means NULL)."""
    values = np.asarray(values, dtype=np.float64)
    null = np.isnan(values)
    present = values[np.isfinite(values)]  # +-inf fall in the outer bins but stay out of the moments
    n = len(values)
    if len(present):
        quantiles = np.quantile(present, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        edges = np.unique(quantiles)
    else:
        edges = np.array([], dtype=np.float64)
    counts = bin_counts(edges, values)
    fractions = counts / n if n else np.zeros(len(counts))
    with np.errstate(over="ignore", invalid="ignore"):  # values near the float limits: an infinite std is stored as None
        mean = _finite(float(present.mean())) if len(present) else None
        std = _finite(float(present.std())) if len(present) else None
    return {
        "split": split,
        "edges": [float(e) for e in edges],
        "fractions": [float(f) for f in fractions],
        "count": n,
        "non_null": int(n - null.sum()),
        "null_rate": float(null.sum() / n) if n else 0.0,
        "mean": mean,
        "std": std,
        "min": _finite(float(present.min())) if len(present) else None,
        "max": _finite(float(present.max())) if len(present) else None,
        "sketch": _sketch(present, edges, sketch_size),
    }


def categorical_entry(values: npt.NDArray[Any], split: str = "train", max_categories: int = MAX_CATEGORIES) -> ReferenceEntry:
    """Reference frequencies of one string column (``None`` means NULL); values are compared as strings."""
    items = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    n = len(items)
    counts = Counter(v for v in items if v is not None)
    nulls = n - sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
    kept = sum(c for _, c in top)
    return {
        "split": split,
        "values": [k for k, _ in top],
        "fractions": [c / n for _, c in top] if n else [],
        "other": (sum(counts.values()) - kept) / n if n else 0.0,
        "null_rate": nulls / n if n else 0.0,
        "count": n,
        "distinct": len(counts),
    }


def score_calibration(scores: FloatArray, labels: npt.NDArray[Any]) -> dict[str, list[float]] | None:
    """Isotonic map from score to observed positive rate on labelled (test) rows; None when it cannot be fitted."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(scores) & np.isfinite(y)
    scores, y = scores[keep], y[keep]
    if len(scores) < 2 or not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) < 2:
        return None
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y)
    x, fitted = np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
    if len(x) > _MAX_CALIBRATION_POINTS:  # a long staircase: keep evenly spaced breakpoints (and both ends)
        pick = np.unique(np.linspace(0, len(x) - 1, _MAX_CALIBRATION_POINTS).round().astype(np.int64))
        x, fitted = x[pick], fitted[pick]
    return {"x": [float(v) for v in x], "y": [float(v) for v in fitted]}


def reference_stats(
    X: FloatArray,
    feature_names: list[str],
    scores: FloatArray,
    bins: int,
    score_split: str = "test",
    strings: dict[str, npt.NDArray[Any]] | None = None,
    labels: npt.NDArray[Any] | None = None,
    feature_split: str = "train",
) -> dict[str, Any]:
    """Reference statistics for every feature column of ``X``, the string columns and the model score.

    ``strings``: raw string columns of the training split; ``labels``: the labels of the rows ``scores``
    were computed on (for the score calibration map of binary models).
    """
    score = reference_entry(scores, bins, split=score_split)
    if labels is not None:
        calibration = score_calibration(scores, labels)
        if calibration is not None:
            score["calibration"] = calibration
    return {
        "bins": bins,
        "epsilon": DEFAULT_EPSILON,
        "sketch_size": SKETCH_SIZE,
        "features": {name: reference_entry(X[:, j], bins, split=feature_split) for j, name in enumerate(feature_names)},
        "categorical": {name: categorical_entry(values) for name, values in (strings or {}).items() if name not in feature_names},
        "score": score,
    }


def psi(reference: ReferenceEntry, values: npt.NDArray[Any], epsilon: float = DEFAULT_EPSILON) -> float:
    """Population stability index of ``values`` against a stored reference entry."""
    edges = np.asarray(reference["edges"], dtype=np.float64)
    ref = np.asarray(reference["fractions"], dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return 0.0
    cur = bin_counts(edges, values) / len(values)
    ref = np.maximum(ref, epsilon)
    cur = np.maximum(cur, epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))
