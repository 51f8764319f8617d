"""Evaluation metrics shared by the tasks: scikit-learn's, wrapped so a metric is a number or ``None``.

Binary: ``roc_auc, average_precision, log_loss, brier, precision, recall,
f1`` (the last three at the decision threshold chosen on the validation split,
:mod:`loopml.train.threshold`; ``choose_threshold`` here is its F1 rule).
Regression: ``rmse, mae, r2, mape``. A metric that cannot be computed (one
class in the labels, no predicted positive...) is reported as ``None`` with a
warning string, never as a silent NaN; a metric name the spec asks for that is
not one of these is an error naming the key (each task's ``check_metric``, :mod:`loopml.tasks`).

MAPE divides each error by its target, so one target at zero makes it explode
(scikit-learn divides by machine epsilon there: values like 1e14). It is
``None``, with a warning saying how many targets are to blame, when any
``|y|`` is below :data:`MAPE_FLOOR` times the mean ``|y|`` (so when a target is
zero, or all are) (:func:`mape_problem`); the rule is the same in training,
tuning, bootstrap intervals and monitoring.

``card_precision_at_k`` is the fraud-detection metric of the *Reproducible
Machine Learning for Credit Card Fraud Detection* handbook; scikit-learn has no
equivalent, so it is written here as one DuckDB query. Ranking metrics over
queries are in :mod:`loopml.train.ranking`, bootstrap intervals in
:mod:`loopml.train.bootstrap`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_recall_curve,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

FloatArray = npt.NDArray[np.float64]
Metrics = dict[str, float | None]

BINARY_METRICS = ("roc_auc", "average_precision", "log_loss", "brier", "precision", "recall", "f1")
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
DEFAULT_THRESHOLD = 0.5
CARD_PRECISION_K = 100
#: iterations of the logistic baseline's solver
LINEAR_MAX_ITER = 1000
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae", "mape"})
#: MAPE is undefined when a target's magnitude is below this fraction of the mean magnitude of the targets
MAPE_FLOOR = 1e-3


@dataclass
class Evaluation:
    """Metrics of one model on one split, and why any of them is missing."""

    metrics: Metrics
    warnings: list[str] = field(default_factory=list)


def _safe(name: str, where: str, fn: Callable[[], float], out: Metrics, notes: list[str]) -> None:
    """Store ``fn()`` as ``out[name]``, or ``None`` plus a note when it is undefined."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value: float | None = float(fn())
            problem = None
        except ValueError as exc:
            value, problem = None, str(exc).splitlines()[0]
    if value is not None and not np.isfinite(value):
        value = None
        problem = problem or (str(caught[0].message).splitlines()[0] if caught else "the value is not finite")
    out[name] = value
    if value is None:
        notes.append(f"{name} on {where} is undefined: {problem or 'no value'}")


def confusion_guard(y: FloatArray, predicted: FloatArray) -> dict[str, str]:
    """Why precision/recall/F1 are undefined, so that we never rely on a NaN from zero_division."""
    problems: dict[str, str] = {}
    if not predicted.any():
        problems["precision"] = "no row scored at or above the threshold"
    if not y.any():
        problems["recall"] = "no positive label"
    if not predicted.any() and not y.any():
        problems["f1"] = "no positive label and no positive prediction"
    return problems


def binary_metrics(y: npt.NDArray[Any], scores: FloatArray, threshold: float, where: str = "test") -> Evaluation:
    """The binary metric set; ``y`` is 0/1, ``scores`` the positive-class probability."""
    y = np.asarray(y, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    out: Metrics = {}
    notes: list[str] = []
    one_class = len(np.unique(y)) < 2
    ranking: dict[str, Callable[[], float]] = {
        "roc_auc": lambda: roc_auc_score(y, scores),
        "average_precision": lambda: average_precision_score(y, scores),
    }
    for name, fn in ranking.items():
        if one_class:
            out[name] = None
            notes.append(f"{name} on {where} is undefined: only label {int(y[0]) if len(y) else '-'} present")
        else:
            _safe(name, where, fn, out, notes)
    _safe("log_loss", where, lambda: log_loss(y, np.clip(scores, 0.0, 1.0), labels=[0, 1]), out, notes)
    _safe("brier", where, lambda: brier_score_loss(y, scores, labels=[0, 1]), out, notes)
    predicted = (scores >= threshold).astype(np.int64)
    guard = confusion_guard(y.astype(np.float64), predicted.astype(np.float64))
    threshold_metrics: dict[str, Callable[[], float]] = {
        "precision": lambda: precision_score(y, predicted, zero_division=np.nan),
        "recall": lambda: recall_score(y, predicted, zero_division=np.nan),
        "f1": lambda: f1_score(y, predicted, zero_division=np.nan),
    }
    for name, fn in threshold_metrics.items():
        if name in guard:
            out[name] = None
            notes.append(f"{name} on {where} is undefined: {guard[name]}")
        else:
            _safe(name, where, fn, out, notes)
    return Evaluation(out, notes)


def mape_problem(y: npt.ArrayLike) -> str | None:
    """Why MAPE is undefined for targets ``y`` (some at or near zero, see the module doc), else None."""
    size = np.abs(np.asarray(y, dtype=np.float64))
    if not len(size):
        return None
    floor = MAPE_FLOOR * float(size.mean())
    near = int(np.sum(size <= floor)) if floor == 0 else int(np.sum(size < floor))
    if not near:
        return None
    return (
        f"{near} target(s) are zero or near zero (|y| < {MAPE_FLOOR:g} x mean |y| = {floor:.3g}); "
        "MAPE divides by the target, report mae or rmse instead"
    )


def regression_metrics(y: npt.NDArray[Any], predictions: FloatArray, where: str = "test") -> Evaluation:
    """The regression metric set."""
    y = np.asarray(y, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    out: Metrics = {}
    notes: list[str] = []
    _safe("rmse", where, lambda: float(np.sqrt(mean_squared_error(y, predictions))), out, notes)
    _safe("mae", where, lambda: mean_absolute_error(y, predictions), out, notes)
    if len(y) < 2:
        out["r2"] = None
        notes.append(f"r2 on {where} is undefined: fewer than two rows")
    else:
        _safe("r2", where, lambda: r2_score(y, predictions), out, notes)
    problem = mape_problem(y)
    if problem is not None:
        out["mape"] = None
        notes.append(f"mape on {where} is undefined: {problem}")
    else:
        _safe("mape", where, lambda: mean_absolute_percentage_error(y, predictions), out, notes)
    return Evaluation(out, notes)


def choose_threshold(y: npt.NDArray[Any], scores: FloatArray) -> tuple[float, str | None]:
    """The score threshold maximising F1 on (validation) data, and a warning if it fell back to 0.5."""
    y = np.asarray(y, dtype=np.int64)
    if len(np.unique(y)) < 2:
        return DEFAULT_THRESHOLD, f"threshold: the validation split has a single class; using {DEFAULT_THRESHOLD}"
    precision, recall, thresholds = precision_recall_curve(y, scores)
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[int(np.argmax(f1))]), None


def confusion(y: npt.NDArray[Any], scores: FloatArray, threshold: float) -> dict[str, int]:
    """Confusion-matrix counts of flagging ``scores >= threshold``."""
    labels = np.asarray(y, dtype=np.int64) == 1
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    return {
        "tn": int(np.sum(~labels & ~flagged)),
        "fp": int(np.sum(~labels & flagged)),
        "fn": int(np.sum(labels & ~flagged)),
        "tp": int(np.sum(labels & flagged)),
    }


def card_precision_at_k(
    timestamps: npt.NDArray[np.datetime64],
    entity_ids: npt.NDArray[Any],
    y: npt.NDArray[Any],
    scores: FloatArray,
    k: int = CARD_PRECISION_K,
) -> float | None:
    """Daily precision of the ``k`` entities with the highest score, averaged over days.

    Per calendar day each entity gets its maximum score and is positive when
    it had at least one positive label that day; the ``k`` top-scored entities
    (ties broken by entity id) are checked, precision is the fraction of them
    that are positive (``min(k, entities that day)`` in the denominator), and
    the daily precisions are averaged. ``None`` when there is no row.
    """
    if len(y) == 0:
        return None
    table = pa.table(
        {
            "ts": pa.array(np.asarray(timestamps).astype("datetime64[us]")),
            "entity": pa.array(np.asarray(entity_ids)),
            "y": pa.array(np.asarray(y, dtype=np.int64)),
            "score": pa.array(np.asarray(scores, dtype=np.float64)),
        }
    )
    query = """
        WITH per_entity AS (
            SELECT CAST(ts AS DATE) AS day, entity, max(score) AS score, max(y) AS positive
            FROM rows GROUP BY ALL
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY day ORDER BY score DESC, entity) AS rank FROM per_entity
        ), daily AS (
            SELECT day, avg(positive) AS precision FROM ranked WHERE rank <= $k GROUP BY day
        )
        SELECT avg(precision) FROM daily
    """
    with duckdb.connect() as con:
        con.register("rows", table)
        row = con.execute(query, {"k": k}).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def higher_is_better(name: str) -> bool:
    """Direction of any metric a task accepts (the names do not clash across tasks)."""
    return name not in LOWER_IS_BETTER


def card_k(name: str) -> int | None:
    """The K of ``card_precision@K``, else None."""
    match = re.fullmatch(r"card_precision@([1-9][0-9]*)", name)
    return int(match.group(1)) if match else None
