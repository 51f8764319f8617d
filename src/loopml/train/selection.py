"""Which candidate is registered: the main model and the baseline are both real candidates.

``model.type`` (tuned when asked) and ``model.baseline`` are fitted, calibrated
and thresholded the same way on the same splits; the one with the better
headline metric on the **validation** split is the one registered, gated and
served (test stays untouched by the choice). A tie keeps ``model.type``; a
metric undefined on one side picks the other. Measured before this rule: on a
60-day fraud world the logistic baseline beat LightGBM on test average
precision by 0.084 [0.044, 0.118], and on scikit-learn's diabetes by 11.8 RMSE
[6.9, 17.0], yet LightGBM was registered and promoted.

The comparison printed and recorded with the run is the paired bootstrap of
the two on the test split (:func:`loopml.train.bootstrap.bootstrap_difference`):
the chosen candidate minus the other, with its 95 % interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loopml.tasks.metrics import Metrics, higher_is_better

MODEL, BASELINE = "model", "baseline"


@dataclass(frozen=True)
class Selection:
    """The choice between the main model and the baseline, and why."""

    chosen: str  # MODEL or BASELINE
    model_type: str  # the chosen candidate's model type
    metric: str
    valid: dict[str, float | None]  # model type -> the metric on the validation split
    reason: str
    comparison: dict[str, Any] | None = None  # chosen vs other on test (paired bootstrap), when computed

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "model_type": self.model_type,
            "metric": self.metric,
            "valid": dict(self.valid),
            "reason": self.reason,
            "comparison": self.comparison,
        }


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"


def select_candidate(
    metric: str,
    model_type: str,
    model_valid: Metrics,
    baseline_type: str | None,
    baseline_valid: Metrics | None,
    fixed: bool = False,
) -> Selection:
    """The better of the two on ``metric`` over the validation split (see the module docstring); ``fixed``: the model."""
    if baseline_type is None or baseline_valid is None:
        return Selection(MODEL, model_type, metric, {model_type: model_valid.get(metric)}, "no baseline configured")
    m, b = model_valid.get(metric), baseline_valid.get(metric)
    valid = {model_type: m, baseline_type: b} if baseline_type != model_type else {model_type: m}
    said = f"valid {metric}: {model_type} {_fmt(m)}, {baseline_type} (baseline) {_fmt(b)}"
    if fixed:
        return Selection(MODEL, model_type, metric, valid, f"{said}; model.select: model registers {model_type}")
    if b is None:
        return Selection(MODEL, model_type, metric, valid, f"{said}; the baseline's is undefined")
    if m is None:
        return Selection(BASELINE, baseline_type, metric, valid, f"{said}; the model's is undefined, the baseline is registered")
    better = b > m if higher_is_better(metric) else b < m
    if better:
        return Selection(BASELINE, baseline_type, metric, valid, f"{said}; the baseline is better and is registered")
    return Selection(MODEL, model_type, metric, valid, f"{said}; {model_type} is {'as good' if b == m else 'better'}")


def with_comparison(selection: Selection, comparison: dict[str, Any] | None) -> Selection:
    return Selection(selection.chosen, selection.model_type, selection.metric, selection.valid, selection.reason, comparison)
