"""The promotion gate: may a candidate model take over the champion alias?

A candidate passes when

* its single-row p99 latency is within ``serving.latency_budget_ms``, and
* there is no champion, or the candidate beats the champion on ``gate.metric``
  by at least ``gate.min_improvement``, both scored on the **candidate's test
  split** (the pipeline re-scores the champion there, so the comparison is on
  the same rows). An improvement of exactly zero never passes (unless
  ``min_improvement`` is negative): retraining on unchanged data reproduces the
  champion, and promoting its twin would only churn versions.

Anything that prevents a fair comparison (the champion cannot be loaded or
needs features the new training set lacks, a metric is undefined) fails the
gate: the safe answer is to keep the current champion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loopml.errors import LoopmlError

HIGHER_IS_BETTER = frozenset({"roc_auc", "average_precision", "precision", "recall", "f1", "r2"})
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae", "mape"})


def higher_is_better(metric: str) -> bool:
    """Direction of a metric; ``card_precision@K`` counts as higher-is-better."""
    if metric in HIGHER_IS_BETTER or metric.startswith("card_precision@"):
        return True
    if metric in LOWER_IS_BETTER:
        return False
    known = [*sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER), "card_precision@100"]
    raise LoopmlError(f"gate.metric: unknown metric {metric!r} (choices: {', '.join(known)})")


@dataclass(frozen=True)
class GateVerdict:
    """Whether the candidate passed, every reason (pass or fail), and the numbers compared."""

    passed: bool
    reasons: list[str]
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "numbers": dict(self.numbers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateVerdict:
        return cls(bool(data["passed"]), [str(r) for r in data.get("reasons", [])], dict(data.get("numbers", {})))


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"


def evaluate_gate(
    candidate_metrics: Mapping[str, float | None],
    champion_metrics: Mapping[str, float | None] | None,
    metric: str,
    min_improvement: float,
    latency_p99_ms: float,
    budget_ms: float,
    champion_version: int | None = None,
    champion_problem: str | None = None,
) -> GateVerdict:
    """Judge a candidate against the champion scored on the same holdout.

    ``champion_metrics`` is ``None`` when there is no champion, unless
    ``champion_problem`` says why an existing champion could not be scored
    (then the gate fails).
    """
    up = higher_is_better(metric)
    candidate = candidate_metrics.get(metric)
    numbers: dict[str, Any] = {
        "metric": metric,
        "candidate": candidate,
        "min_improvement": min_improvement,
        "latency_p99_ms": latency_p99_ms,
        "latency_budget_ms": budget_ms,
        "champion_version": champion_version,
        "champion": None,
    }
    reasons: list[str] = []
    passed = True

    if latency_p99_ms <= budget_ms:
        reasons.append(f"latency p99 {latency_p99_ms:.3g} ms is within the budget of {budget_ms:g} ms")
    else:
        passed = False
        reasons.append(f"latency p99 {latency_p99_ms:.3g} ms exceeds serving.latency_budget_ms {budget_ms:g} ms")

    champ_name = f"champion v{champion_version}" if champion_version is not None else "the champion"
    if champion_problem is not None:
        passed = False
        reasons.append(f"{champ_name} could not be re-scored on the candidate's test split: {champion_problem}; keeping it")
    elif champion_metrics is None:
        reasons.append("no champion yet: nothing to beat")
    else:
        champion = champion_metrics.get(metric)
        numbers["champion"] = champion
        if candidate is None or champion is None:
            passed = False
            who = "candidate" if candidate is None else champ_name
            reasons.append(f"{metric} of the {who} is undefined on the test split; cannot compare, keeping the champion")
        else:
            delta = candidate - champion if up else champion - candidate
            numbers["improvement"] = delta
            word = "higher" if up else "lower"
            same = math.isclose(candidate, champion, rel_tol=1e-9, abs_tol=1e-12)  # summation order aside, equal
            if same and min_improvement >= 0:  # the same model again (unchanged data): no new champion
                passed = False
                reasons.append(
                    f"{metric} {_fmt(candidate)} equals {champ_name}'s on the same test split: "
                    "no improvement, keeping the champion"
                )
            elif delta >= min_improvement:
                reasons.append(
                    f"{metric} {_fmt(candidate)} vs {champ_name} {_fmt(champion)} on the same test split: "
                    f"improvement {delta:+.4g} ({word} is better) meets gate.min_improvement {min_improvement:g}"
                )
            else:
                passed = False
                reasons.append(
                    f"{metric} {_fmt(candidate)} vs {champ_name} {_fmt(champion)} on the same test split: "
                    f"improvement {delta:+.4g} ({word} is better) is below gate.min_improvement {min_improvement:g}"
                )
    if champion_metrics is None and champion_problem is None and candidate is None:
        reasons.append(f"note: {metric} of the candidate is undefined on the test split")
    return GateVerdict(passed, reasons, numbers)
