"""Bootstrap confidence intervals for a metric on one split (percentile method, seeded).

A resample is a vector of counts (how often each row was drawn, ``n`` draws
with replacement), so a resampled metric is the metric with those counts as
sample weights. Every metric is written here once in weighted form and
evaluated for a whole block of resamples at a time with matrix operations:
ranking metrics sort the rows once and take cumulative sums of the weight
matrix at the ends of tied-score blocks (exactly scikit-learn's
``average_precision_score`` / ``roc_auc_score`` with ``sample_weight``, which
the tests check), the others are weighted means. scikit-learn would need one
call per resample (200 full re-sorts); this needs one sort.

``card_precision@K`` resamples **entities** (a cluster bootstrap: an entity
drawn twice counts twice in every day's ranking), because the rows of one
card are not independent; the other metrics resample rows.

Blocks are sized to keep the weight matrix under ~32 MB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from loopml.tasks import task_of
from loopml.tasks.metrics import card_k, card_precision_at_k, mape_problem

FloatArray = npt.NDArray[np.float64]
_BLOCK_CELLS = 4_000_000
_EPS = float(np.finfo(np.float64).eps)
SUPPORTED = ("roc_auc", "average_precision", "log_loss", "brier", "precision", "recall", "f1", "rmse", "mae", "r2", "mape")


@dataclass(frozen=True)
class Interval:
    """A metric's value on the split and its bootstrap percentile interval."""

    metric: str
    value: float | None
    low: float | None
    high: float | None
    level: float
    resamples: int
    unit: str  # what was resampled: rows or entities

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "resamples": self.resamples,
            "unit": self.unit,
        }


def count_blocks(n: int, resamples: int, rng: np.random.Generator) -> Iterator[FloatArray]:
    """Resample count matrices (``b x n``), ``resamples`` rows in all."""
    block = max(1, min(resamples, _BLOCK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        counts = np.empty((size, n), dtype=np.float64)
        for i in range(size):
            counts[i] = np.bincount(rng.integers(0, n, n), minlength=n)
        done += size
        yield counts


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    out: FloatArray = np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)
    return out


def _curve_metric(name: str, y: FloatArray, scores: FloatArray, W: FloatArray) -> FloatArray:
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    Wo = W[:, order]
    tp = np.cumsum(Wo * yy, axis=1)[:, ends]
    fp = np.cumsum(Wo * (1.0 - yy), axis=1)[:, ends]
    total_p, total_n = tp[:, -1:], fp[:, -1:]
    if name == "average_precision":
        precision = _ratio(tp, tp + fp)
        recall_step = np.diff(_ratio(tp, total_p), axis=1, prepend=0.0)
        ap = np.nansum(np.where(recall_step > 0, recall_step * precision, 0.0), axis=1)
        return np.asarray(np.where(total_p[:, 0] > 0, ap, np.nan), dtype=np.float64)
    tpr = np.hstack([np.zeros((len(W), 1)), _ratio(tp, total_p)])
    fpr = np.hstack([np.zeros((len(W), 1)), _ratio(fp, total_n)])
    return np.asarray(np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1), dtype=np.float64)


def weighted_metric(name: str, y: npt.ArrayLike, scores: npt.ArrayLike, threshold: float, W: FloatArray) -> FloatArray:
    """``name`` for every row of the weight matrix ``W`` (NaN where undefined)."""
    yy = np.asarray(y, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    total = W.sum(axis=1)
    if name in ("average_precision", "roc_auc"):
        return _curve_metric(name, yy, s, W)
    if name == "log_loss":
        p = np.clip(s, _EPS, 1.0 - _EPS)
        return _ratio(W @ -(yy * np.log(p) + (1.0 - yy) * np.log1p(-p)), total)
    if name == "brier":
        return _ratio(W @ (s - yy) ** 2, total)
    if name in ("precision", "recall", "f1"):
        flagged = (s >= threshold).astype(np.float64)
        tp, fp, fn = W @ (flagged * yy), W @ (flagged * (1.0 - yy)), W @ ((1.0 - flagged) * yy)
        if name == "precision":
            return _ratio(tp, tp + fp)
        if name == "recall":
            return _ratio(tp, tp + fn)
        return _ratio(2.0 * tp, 2.0 * tp + fp + fn)
    error = s - yy
    if name == "rmse":
        return np.asarray(np.sqrt(_ratio(W @ error**2, total)), dtype=np.float64)
    if name == "mae":
        return _ratio(W @ np.abs(error), total)
    if name == "mape":
        if mape_problem(yy) is not None:  # targets at or near zero: undefined, as in the point estimate
            return np.full(W.shape[0], np.nan)
        return _ratio(W @ (np.abs(error) / np.maximum(np.abs(yy), _EPS)), total)
    if name == "r2":
        mean = _ratio(W @ yy, total)
        ss_tot = np.sum(W * (yy[None, :] - mean[:, None]) ** 2, axis=1)
        return 1.0 - _ratio(W @ error**2, ss_tot)
    raise ValueError(f"no weighted form of {name!r}")


def _card_resamples(
    timestamps: npt.ArrayLike, entities: npt.ArrayLike, y: npt.ArrayLike, scores: npt.ArrayLike, k: int, resamples: int, seed: int
) -> FloatArray:
    frame = pd.DataFrame(
        {
            "day": np.asarray(timestamps).astype("datetime64[D]"),
            "entity": np.asarray(entities),
            "y": np.asarray(y, dtype=np.int64),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    items = frame.groupby(["day", "entity"], sort=True).agg(y=("y", "max"), score=("score", "max")).reset_index()
    items = items.sort_values(["day", "score", "entity"], ascending=[True, False, True], kind="stable")
    entity_code, uniques = pd.factorize(items["entity"], sort=True)  # codes independent of the scores: paired resamples
    rng = np.random.default_rng(seed)
    n_entities = len(uniques)
    counts = np.stack([np.bincount(rng.integers(0, n_entities, n_entities), minlength=n_entities) for _ in range(resamples)])
    counts = counts.astype(np.float64)
    day_values = items["day"].to_numpy()
    starts = np.flatnonzero(np.r_[True, day_values[1:] != day_values[:-1]])
    stops = np.r_[starts[1:], len(items)]
    positive = items["y"].to_numpy(dtype=np.float64)
    daily = np.full((resamples, len(starts)), np.nan)
    for d, (a, b) in enumerate(zip(starts, stops, strict=True)):
        m = counts[:, entity_code[a:b]]  # slots each of the day's entities takes in each resample
        cum = np.cumsum(m, axis=1)
        taken = np.clip(k - (cum - m), 0.0, m)
        daily[:, d] = _ratio(taken @ positive[a:b], np.minimum(k, cum[:, -1]))
    with np.errstate(all="ignore"):
        valid = ~np.isnan(daily)
        return np.asarray(np.where(valid.any(axis=1), np.nansum(daily, axis=1) / np.maximum(valid.sum(axis=1), 1), np.nan))


def _resampled(
    metric: str,
    task: str,
    y: npt.NDArray[Any],
    scores: FloatArray,
    threshold: float,
    resamples: int,
    seed: int,
    timestamps: npt.ArrayLike | None,
    entity_ids: npt.ArrayLike | None,
) -> tuple[float | None, FloatArray, str] | None:
    """The metric's value and its ``resamples`` resampled values (the same resamples for the same seed and rows)."""
    k = card_k(metric)
    if k is not None:
        if timestamps is None or entity_ids is None:
            return None
        value = card_precision_at_k(np.asarray(timestamps), np.asarray(entity_ids), y, scores, k)
        values = _card_resamples(timestamps, entity_ids, y, scores, k, resamples, seed) if len(y) else np.zeros(0)
        return value, values, "entities"
    if metric not in SUPPORTED:
        return None
    value = task_of(task).evaluate(y, scores, threshold, "bootstrap").metrics.get(metric)
    rng = np.random.default_rng(seed)
    values = np.concatenate([weighted_metric(metric, y, scores, threshold, W) for W in count_blocks(len(y), resamples, rng)])
    return value, values, "rows"


def _percentiles(values: FloatArray, level: float) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None, None
    low, high = np.percentile(finite, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)


def bootstrap_interval(
    metric: str,
    task: str,
    y: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float | None,
    resamples: int,
    seed: int,
    level: float = 0.95,
    timestamps: npt.ArrayLike | None = None,
    entity_ids: npt.ArrayLike | None = None,
) -> Interval | None:
    """The percentile interval of ``metric`` over ``resamples`` seeded resamples; None if it has no weighted form."""
    if resamples < 1:
        return None
    t = 0.5 if threshold is None else threshold
    got = _resampled(
        metric, task, np.asarray(y), np.asarray(scores, dtype=np.float64), t, resamples, seed, timestamps, entity_ids
    )
    if got is None:
        return None
    value, values, unit = got
    low, high = _percentiles(values, level) if value is not None else (None, None)
    return Interval(metric, value, low, high, level, resamples, unit)


def bootstrap_difference(
    metric: str,
    task: str,
    y: npt.ArrayLike,
    scores: npt.ArrayLike,
    other_scores: npt.ArrayLike,
    thresholds: tuple[float | None, float | None],
    resamples: int,
    seed: int,
    level: float = 0.95,
    timestamps: npt.ArrayLike | None = None,
    entity_ids: npt.ArrayLike | None = None,
) -> dict[str, Any] | None:
    """Paired comparison of two models on the same rows: both intervals and the interval of the difference.

    Both score vectors are evaluated on the *same* resamples (same seed, same
    rows or entities), so the difference's interval accounts for their
    correlation; ``difference_low > 0`` means the first model is better with
    95 % confidence (for a higher-is-better metric).
    """
    if resamples < 1:
        return None
    yy = np.asarray(y)
    a, b = (0.5 if t is None else t for t in thresholds)
    first = _resampled(metric, task, yy, np.asarray(scores, dtype=np.float64), a, resamples, seed, timestamps, entity_ids)
    second = _resampled(metric, task, yy, np.asarray(other_scores, dtype=np.float64), b, resamples, seed, timestamps, entity_ids)
    if first is None or second is None or first[0] is None or second[0] is None:
        return None
    low, high = _percentiles(first[1] - second[1], level)
    return {
        "metric": metric,
        "model": Interval(metric, first[0], *_percentiles(first[1], level), level, resamples, first[2]).to_json(),
        "baseline": Interval(metric, second[0], *_percentiles(second[1], level), level, resamples, second[2]).to_json(),
        "difference": first[0] - second[0],
        "difference_low": low,
        "difference_high": high,
        "level": level,
        "resamples": resamples,
        "unit": first[2],
    }
