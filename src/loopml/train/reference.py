"""Reference statistics, computed once at training time, and the PSI against them.

For every feature (on the training split) and for the model score (on the
held-out test split, because served scores are out-of-sample and in-sample
training scores of a boosted model are sharper than anything seen live) we
store, as plain JSON:

* ``edges``: bin edges at the reference quantiles ``1/B .. (B-1)/B`` (``B`` is
  ``monitoring.psi_bins``), deduplicated, so a discrete feature simply has
  fewer bins. Bin ``i`` is ``(edges[i-1], edges[i]]`` with ``-inf``/``+inf``
  at the ends; ``np.searchsorted(edges, v, side="left")`` finds it.
* ``fractions``: the reference share of rows in each of those ``len(edges)+1``
  bins followed by one more entry, the share of NULL/NaN values (nulls are
  their own bin, so a rise in missing values shows up as drift);
* ``count, mean, std, min, max, null_rate``.

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

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
ReferenceEntry = dict[str, Any]
DEFAULT_EPSILON = 1e-4


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def bin_counts(edges: FloatArray, values: FloatArray) -> npt.NDArray[np.int64]:
    """Counts per bin (``len(edges) + 1`` value bins, then the NULL bin)."""
    values = np.asarray(values, dtype=np.float64)
    null = np.isnan(values)
    idx = np.searchsorted(edges, values[~null], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)
    return np.append(counts, np.int64(null.sum()))


def reference_entry(values: npt.NDArray[Any], bins: int, split: str = "train") -> ReferenceEntry:
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
    return {
        "split": split,
        "edges": [float(e) for e in edges],
        "fractions": [float(f) for f in fractions],
        "count": n,
        "null_rate": float(null.sum() / n) if n else 0.0,
        "mean": _finite(float(present.mean())) if len(present) else None,
        "std": _finite(float(present.std())) if len(present) else None,
        "min": _finite(float(present.min())) if len(present) else None,
        "max": _finite(float(present.max())) if len(present) else None,
    }


def reference_stats(
    X: FloatArray, feature_names: list[str], scores: FloatArray, bins: int, score_split: str = "test"
) -> dict[str, Any]:
    """Reference statistics for every feature column of ``X`` and for the model score."""
    return {
        "bins": bins,
        "epsilon": DEFAULT_EPSILON,
        "features": {name: reference_entry(X[:, j], bins) for j, name in enumerate(feature_names)},
        "score": reference_entry(scores, bins, split=score_split),
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
