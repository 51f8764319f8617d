"""Model performance over time: realised as labels arrive, estimated before they do.

**Realised**: per window (and over the whole period) the training report's
metrics (:mod:`loopml.tasks.metrics`: ``roc_auc, average_precision, log_loss,
brier, precision, recall, f1`` for binary models at the version's decision
threshold, ``rmse, mae, r2, mape`` for regression) on the rows whose label has
arrived, next to the training baseline (the version's test-split metrics). A
window with fewer than ``monitoring.min_rows`` labelled rows is "not enough
data".

**Estimated** (binary models, every row, labelled or not): confidence-based
performance estimation (CBPE, as NannyML). If the scores are calibrated
probabilities, a row with score ``p`` is a positive with probability ``p``, so
the expected confusion matrix at threshold ``t`` is ``TP = Σ_{p≥t} p``,
``FP = Σ_{p≥t} (1-p)``, ``FN = Σ_{p<t} p``, ``TN = Σ_{p<t} (1-p)``, giving
expected precision, recall and F1; expected ROC AUC and average precision
come from the same expected counts along the ranking (rows sorted by score,
ties grouped): the ROC curve through ``(ΣFP/N, ΣTP/P)`` and AP ``= Σ ΔTP/P ·
TP/(TP+FP)``; ``brier = mean p(1-p)`` and ``log_loss = mean H(p)`` are their
expectations. These are ratios of expectations (NannyML's choice too), close
to the expected metric when there are many rows.

Scores are calibrated first with the isotonic map fitted on the version's
test split at training time (``reference_stats["score"]["calibration"]``,
:mod:`loopml.train.reference`), which plays the role of NannyML's reference
period; without such a map the estimate is made only for a version trained
with ``model.calibration``, else it is skipped with the reason. The estimate
is only as good as the calibration: under concept drift (the relation between
features and label changes) calibrated-looking scores stop being right, which
only labels reveal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.tasks.metrics import DEFAULT_THRESHOLD, Metrics, binary_metrics, higher_is_better, regression_metrics

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ESTIMATED_METRICS = ("roc_auc", "average_precision", "precision", "recall", "f1", "brier", "log_loss")


@dataclass(frozen=True)
class ScoreCalibration:
    """Maps live scores to probabilities before CBPE; ``source`` says where the map came from."""

    x: FloatArray
    y: FloatArray
    source: str  # "reference" | "model"

    def apply(self, scores: FloatArray) -> FloatArray:
        if not len(self.x):
            return np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        return np.asarray(np.interp(scores, self.x, self.y), dtype=np.float64)

    @classmethod
    def choose(cls, score_reference: dict[str, Any] | None, model_calibration: str | None) -> tuple[ScoreCalibration | None, str]:
        """The map to use, or None and why CBPE is skipped."""
        stored = (score_reference or {}).get("calibration")
        if stored and stored.get("x"):
            return cls(np.asarray(stored["x"], dtype=float), np.asarray(stored["y"], dtype=float), "reference"), "reference"
        if model_calibration not in (None, "none"):
            return cls(np.zeros(0), np.zeros(0), "model"), "model"
        return None, "the model version is not calibrated and its reference has no calibration map (retrain to add one)"


def estimate_binary(probabilities: FloatArray, threshold: float) -> Metrics:
    """CBPE: the expected metrics of calibrated ``probabilities`` (see the module doc)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    out: Metrics = dict.fromkeys(ESTIMATED_METRICS)
    if not len(p):
        return out
    positives, negatives = float(p.sum()), float((1.0 - p).sum())
    flagged = p >= threshold
    tp, fp = float(p[flagged].sum()), float((1.0 - p[flagged]).sum())
    fn = positives - tp
    out["precision"] = tp / (tp + fp) if tp + fp > 0 else None
    out["recall"] = tp / positives if positives > 0 else None
    out["f1"] = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else None
    out["brier"] = float(np.mean(p * (1.0 - p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log(1 - p), 0.0))
    out["log_loss"] = float(np.mean(entropy))
    if positives <= 0 or negatives <= 0:
        return out
    order = np.argsort(-p, kind="stable")
    ranked = p[order]
    # group ties: the curves move once per distinct score
    last = np.r_[ranked[1:] != ranked[:-1], True]
    cum_tp = np.cumsum(ranked)[last]
    cum_fp = np.cumsum(1.0 - ranked)[last]
    tpr = np.r_[0.0, cum_tp / positives]
    fpr = np.r_[0.0, cum_fp / negatives]
    out["roc_auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    precision = cum_tp / (cum_tp + cum_fp)
    out["average_precision"] = float(np.sum(np.diff(tpr) * precision))
    return out


def _realised(task: str, y: FloatArray, scores: FloatArray, threshold: float, where: str) -> tuple[Metrics, list[str]]:
    if task == "binary":
        evaluation = binary_metrics(y.astype(np.int64), scores, threshold, where)
    else:
        evaluation = regression_metrics(y, scores, where)
    return evaluation.metrics, evaluation.warnings


def _drops(metrics: Metrics, baseline: Metrics) -> dict[str, float | None]:
    """Relative change towards worse per metric: (baseline - live) / |baseline| (reversed for lower-is-better)."""
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        base = baseline.get(name)
        if value is None or base is None or base == 0:
            out[name] = None
            continue
        out[name] = (base - value) / abs(base) if higher_is_better(name) else (value - base) / abs(base)
    return out


def performance(
    task: str,
    scores: FloatArray,
    labels: FloatArray,
    window: IntArray,
    n_windows: int,
    baseline: Metrics,
    threshold: float | None,
    min_rows: int,
    calibration: ScoreCalibration | None,
    calibration_note: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The performance section over the whole period, and one row per window (rows oldest first, ``window`` sorted)."""
    cut = DEFAULT_THRESHOLD if threshold is None else threshold
    labelled = np.isfinite(labels)
    if task == "binary":
        valid = labelled & np.isin(labels, (0.0, 1.0))
        invalid = int((labelled & ~valid).sum())
    else:
        valid, invalid = labelled, 0
    probabilities = calibration.apply(scores) if task == "binary" and calibration is not None else None

    def block(rows: slice, where: str) -> dict[str, Any]:
        have = valid[rows]
        y, s = labels[rows][have], scores[rows][have]
        n_rows, n_labelled = len(have), int(have.sum())
        entry: dict[str, Any] = {"rows": n_rows, "labelled": n_labelled}
        if n_labelled < min_rows:
            entry |= {"status": "not enough data", "metrics": None, "drop": None}
        else:
            metrics, notes = _realised(task, y, s, cut, where)
            entry |= {"status": "ok", "metrics": metrics, "drop": _drops(metrics, baseline), "notes": notes}
        if probabilities is not None:
            entry["estimated"] = estimate_binary(probabilities[rows], cut) if n_rows >= min_rows else None
        return entry

    overall = block(slice(None), "live traffic")
    overall |= {
        "baseline": baseline,
        "threshold": threshold,
        "invalid_labels": invalid,
        "estimation": {"method": "cbpe", "calibration": calibration.source}
        if calibration is not None and task == "binary"
        else None,
    }
    if task == "binary" and probabilities is None:
        overall["estimation_skipped"] = calibration_note
    edges = np.searchsorted(window, np.arange(n_windows + 1))  # rows are oldest first, so windows are slices
    windows = [block(slice(int(edges[w]), int(edges[w + 1])), f"window {w}") for w in range(n_windows)]
    return overall, windows
