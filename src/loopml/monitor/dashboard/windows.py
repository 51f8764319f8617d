"""The dashboard's time axes and the metrics of one window.

Drift and performance use equal-count windows over the ordered rows
(:func:`windows_by_count`), each point placed at the time of its window's last
row; latency and throughput use equal-width time buckets of a round width
(:func:`bucket_width_us`).

:func:`window_metrics` computes the training report's metrics on one window
with :func:`loopml.train.bootstrap.weighted_metric` (every weight 1): numpy
forms equal to scikit-learn's, one sort per window, where scikit-learn's input
checks cost ~10 ms a call, times every metric of every window of every page load.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from loopml.tasks import task_of
from loopml.train.bootstrap import weighted_metric

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_RANKING = ("roc_auc", "average_precision")
#: bucket widths for latency and throughput, in microseconds
_WIDTHS_US = [
    int(s * 1_000_000)
    for s in (
        *(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
        *(60, 120, 300, 600, 900, 1800),
        *(3600, 7200, 10800, 21600, 43200),
        *(86400, 172800, 604800, 1209600, 2592000),
    )
]


def windows_by_count(rows: int, min_rows: int, max_points: int) -> tuple[IntArray, int]:
    """Equal-count windows over ``rows`` ordered rows: (window of each row, number of windows).

    As many windows as hold ``min_rows`` rows each (at least one, at most ``max_points``; none without rows).
    """
    if rows == 0:
        return np.zeros(0, dtype=np.int64), 0
    n = int(min(max(rows // max(min_rows, 1), 1), max_points))
    return (np.arange(rows, dtype=np.int64) * n) // rows, n


def window_ends_ms(ts_us: IntArray, window: IntArray, n: int) -> list[int]:
    """The time of the last row of each (equal-count, ordered) window."""
    if not len(ts_us):
        return []
    last = np.searchsorted(window, np.arange(n), side="right") - 1
    return [int(ts_us[i]) // 1000 for i in last]


def bucket_width_us(span_us: int, max_points: int) -> int:
    """The smallest round bucket width giving at most ``max_points`` buckets over ``span_us``."""
    wanted = span_us / max(max_points - 1, 1)
    for width in _WIDTHS_US:
        if width >= wanted:
            return width
    return int(np.ceil(wanted / _WIDTHS_US[-1])) * _WIDTHS_US[-1]


def window_metrics(
    task: str, names: Sequence[str], y: FloatArray, scores: FloatArray, threshold: float
) -> dict[str, float | None]:
    """``names`` of the training report's metrics on one window's labelled rows (None where undefined).

    As in :func:`loopml.tasks.metrics.binary_metrics`, ROC AUC and average precision are undefined
    (None) on a window holding one class; a name that is not one of the task's metrics is None.
    """
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    known = task_of(task).metrics
    positives = float(y.sum())
    one_class = positives == 0 or positives == len(y)
    weights = np.ones((1, len(y)), dtype=np.float64)
    out: dict[str, float | None] = {}
    for name in names:
        if not len(y) or name not in known or (task == "binary" and name in _RANKING and one_class):
            out[name] = None
            continue
        value = float(weighted_metric(name, y, scores, threshold, weights)[0])
        out[name] = value if np.isfinite(value) else None
    return out
