"""The decision threshold, chosen on the validation split (``model.threshold``).

A row is flagged when its score is ``>= threshold``. Objectives:

* ``f1`` (default): the threshold maximising F1;
* ``precision`` with ``target``: the lowest threshold whose precision reaches
  the target (the most recall at that precision); when no threshold reaches
  it, the threshold of the highest precision, with a warning;
* ``recall`` with ``target``: among thresholds whose recall reaches the
  target, the one with the highest precision (ties: the highest threshold);
* ``cost`` with ``cost_fp``/``cost_fn``: the threshold minimising
  ``cost_fp * FP + cost_fn * FN``; flagging nothing is a candidate, written
  as a threshold just above the highest validation score.

Candidates are the distinct validation scores (scikit-learn's
``precision_recall_curve`` / ``roc_curve`` give the counts). A validation
split with one class falls back to 0.5 with a warning. The chosen threshold
is stored in the version's metrics (``threshold``) and used for precision,
recall, F1 and the confusion matrix on every split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import precision_recall_curve, roc_curve

from loopml.spec.model import Threshold
from loopml.tasks.metrics import DEFAULT_THRESHOLD, choose_threshold

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold, the objective it served and its value on the validation split."""

    threshold: float
    objective: str
    value: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "objective": self.objective, "value": self.value, "note": self.note}


def select_threshold(y: npt.ArrayLike, scores: npt.ArrayLike, setting: Threshold | None = None) -> ThresholdChoice:
    """Apply ``model.threshold`` to validation labels (0/1) and scores."""
    setting = setting or Threshold()
    labels = np.asarray(y, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    objective = setting.objective
    if len(np.unique(labels)) < 2:
        note = f"threshold: the validation split has a single class; using {DEFAULT_THRESHOLD}"
        return ThresholdChoice(DEFAULT_THRESHOLD, objective, None, note)
    if objective == "f1":
        threshold, _ = choose_threshold(labels, s)
        flagged = s >= threshold
        tp = float(np.sum(flagged & (labels == 1)))
        return ThresholdChoice(threshold, objective, 2 * tp / (float(flagged.sum()) + float(labels.sum())))
    if objective == "cost":
        return _by_cost(labels, s, setting.cost_fp, setting.cost_fn)
    precision, recall, thresholds = precision_recall_curve(labels, s)
    precision, recall = precision[:-1], recall[:-1]  # aligned with thresholds (increasing)
    target = float(setting.target if setting.target is not None else 1.0)
    if objective == "precision":
        reached = np.flatnonzero(precision >= target)
        if len(reached) == 0:
            best = int(np.argmax(precision))
            note = (
                f"model.threshold: no threshold reaches precision {target:g} on the validation split; "
                f"using the highest precision {precision[best]:.4g}"
            )
            return ThresholdChoice(float(thresholds[best]), objective, float(precision[best]), note)
        i = int(reached[0])
        return ThresholdChoice(float(thresholds[i]), objective, float(precision[i]))
    reached = np.flatnonzero(recall >= target)  # never empty: the lowest threshold has recall 1
    best_precision = precision[reached].max()
    i = int(reached[precision[reached] == best_precision][-1])
    return ThresholdChoice(float(thresholds[i]), objective, float(recall[i]))


def _by_cost(y: npt.NDArray[np.int64], s: FloatArray, cost_fp: float, cost_fn: float) -> ThresholdChoice:
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    positives, negatives = float(y.sum()), float(len(y) - y.sum())
    cost = cost_fp * fpr * negatives + cost_fn * (1.0 - tpr) * positives
    i = int(np.argmin(cost))
    threshold = float(thresholds[i])
    if not np.isfinite(threshold):  # roc_curve's first point flags nothing
        threshold = float(np.nextafter(s.max(), np.inf))
    return ThresholdChoice(threshold, "cost", float(cost[i]))
