"""Alert rules: which conditions of a monitor report are problems, and raising or clearing their alerts.

Each rule is a pure function of the report's sections returning the breaches
it finds and the ``(rule, subject)`` pairs it could check; :func:`apply` then
fires every breach through the alert store (deduplicated there while the
condition persists) and resolves the open alerts of checked pairs that are no
longer breached. A column with "not enough data" is not checked: its alert
(if any) neither fires again nor resolves.

Rules and defaults (``monitoring.alerts`` in ``loopml.yaml``; the thresholds
are the usual ones in the literature):

* ``psi`` / ``ks`` / ``chi2`` / ``jensenshannon`` / ``wasserstein`` (``drift``):
  a column (or the score) drifted over the period by the test that decides it
  (PSI > 0.2, corrected KS/chi-square p < 0.001, ...); subject: the column;
* ``metric_drop``: the watched metric (``alerts.metric``, default
  ``gate.metric``) on labelled live traffic is worse than the training
  baseline (the version's test split) by more than 5 % (relative); subject:
  the metric;
* ``latency_p99``: p99 latency over ``serving.latency_budget_ms``; subject ``p99``;
* ``throughput_drop``: the latest window's throughput is more than 20 % below
  the median of the earlier windows; subject ``throughput``;
* data quality (``quality``): ``null_rate``, ``out_of_range``,
  ``unseen_categories``, ``schema``, ``freshness``; subject: the column or view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from loopml.monitor.stattests import TEST_NAMES
from loopml.spec.model import AlertRules

QUALITY_CHECKS = ("null_rate", "out_of_range", "unseen_categories", "schema", "freshness")
_TEST_LABEL = {
    "psi": "PSI",
    "ks": "KS p-value",
    "chi2": "chi-square p-value",
    "jensenshannon": "Jensen-Shannon",
    "wasserstein": "Wasserstein",
}


@dataclass(frozen=True)
class Breach:
    rule: str
    subject: str
    message: str
    value: float | None = None
    threshold: float | None = None
    severity: str = "warning"

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "subject": self.subject,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "severity": self.severity,
        }


Checked = set[tuple[str, str]]


def drift_rule(drift: list[dict[str, Any]], thresholds: dict[str, float]) -> tuple[list[Breach], Checked]:
    """One breach per drifted column, named after the test that decided it."""
    breaches, checked = [], set()
    for d in drift:
        if d["status"] not in ("ok", "drift"):
            continue
        checked |= {(test, d["feature"]) for test in TEST_NAMES}
        if not d["drifted"]:
            continue
        test = d["test"]
        p_test = d.get("p_value") is not None
        value = d["p_value"] if p_test else d["statistic"]
        sign = "<" if p_test else ">"
        breaches.append(
            Breach(
                test,
                d["feature"],
                f"{d['feature']}: {_TEST_LABEL.get(test, test)} {value:.3g} {sign} {thresholds[test]:g} over {d['rows']:,} rows",
                value,
                thresholds[test],
            )
        )
    return breaches, checked


def metric_drop_rule(performance: dict[str, Any], metric: str, max_drop: float) -> tuple[list[Breach], Checked]:
    """The watched metric worse than the training baseline by more than ``max_drop`` (relative)."""
    if performance.get("status") != "ok" or not performance.get("drop"):
        return [], set()
    drop = performance["drop"].get(metric)
    if drop is None:
        return [], set()
    checked = {("metric_drop", metric)}
    if drop <= max_drop:
        return [], checked
    live, base = performance["metrics"][metric], performance["baseline"][metric]
    message = (
        f"{metric} on {performance['labelled']:,} labelled rows is {live:.4g}, {drop:.1%} worse than the training {base:.4g}"
    )
    return [Breach("metric_drop", metric, message, drop, max_drop, "critical")], checked


def latency_rule(system: dict[str, Any], budget_ms: float) -> tuple[list[Breach], Checked]:
    p99 = (system.get("latency_ms") or {}).get("p99")
    if p99 is None:
        return [], set()
    checked = {("latency_p99", "p99")}
    if p99 <= budget_ms:
        return [], checked
    return [Breach("latency_p99", "p99", f"p99 latency {p99:.3g} ms over the {budget_ms:g} ms budget", p99, budget_ms)], checked


def throughput_rule(windows: list[dict[str, Any]], max_drop: float) -> tuple[list[Breach], Checked]:
    """The latest window's requests per second against the median of the earlier windows."""
    rates = [w["throughput_per_s"] for w in windows]
    if len(rates) < 2 or rates[-1] is None:
        return [], set()
    earlier = sorted(r for r in rates[:-1] if r is not None)
    if not earlier:
        return [], set()
    median = earlier[len(earlier) // 2] if len(earlier) % 2 else (earlier[len(earlier) // 2 - 1] + earlier[len(earlier) // 2]) / 2
    if median <= 0:
        return [], set()
    drop = (median - rates[-1]) / median
    checked = {("throughput_drop", "throughput")}
    if drop <= max_drop:
        return [], checked
    message = f"throughput {rates[-1]:.3g}/s in the latest window, {drop:.0%} below the earlier median {median:.3g}/s"
    return [Breach("throughput_drop", "throughput", message, drop, max_drop)], checked


def quality_rule(quality: dict[str, Any]) -> tuple[list[Breach], Checked]:
    """Every flagged data-quality issue; every checked column and view for the others."""
    breaches = [Breach(i["check"], i["subject"], i["message"], i["value"], i["threshold"]) for i in quality.get("issues", [])]
    checked: Checked = set()
    for column in quality.get("columns", []):
        checked |= {(check, column["feature"]) for check in QUALITY_CHECKS if check != "freshness"}
    schema = quality.get("schema") or {}
    checked |= {("schema", name) for name in schema.get("types", {})}
    checked |= {("freshness", row["view"]) for row in quality.get("freshness", [])}
    return breaches, checked | {(b.rule, b.subject) for b in breaches}


def evaluate(
    report: dict[str, Any], settings: AlertRules, thresholds: dict[str, float], metric: str, budget_ms: float
) -> tuple[list[Breach], Checked]:
    """All enabled rules over a monitor report (see the module doc)."""
    found: list[tuple[list[Breach], Checked]] = []
    if settings.drift:
        found.append(drift_rule(report.get("drift", []), thresholds))
    if settings.metric_drop is not None:
        found.append(metric_drop_rule(report.get("performance") or {}, metric, settings.metric_drop))
    if settings.latency:
        found.append(latency_rule(report.get("system") or {}, budget_ms))
    if settings.throughput_drop is not None:
        found.append(throughput_rule((report.get("system") or {}).get("windows", []), settings.throughput_drop))
    if settings.quality:
        found.append(quality_rule(report.get("quality") or {}))
    breaches = [b for part, _ in found for b in part]
    checked = set().union(*(c for _, c in found)) if found else set()
    return breaches, checked


class AlertSink(Protocol):
    """What :func:`apply` needs of :class:`loopml.monitor.alerts.AlertStore`."""

    def fire(
        self,
        rule: str,
        subject: str,
        message: str,
        value: float | None = None,
        threshold: float | None = None,
        severity: str = "warning",
    ) -> tuple[Any, bool]: ...

    def resolve(self, rule: str, subject: str) -> bool: ...

    def active(self) -> list[Any]: ...


def apply(store: AlertSink, breaches: list[Breach], checked: Checked) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Fire every breach, resolve the open alerts of checked pairs no longer breached; (alerts, resolved)."""
    fired = []
    for b in breaches:
        alert, is_new = store.fire(b.rule, b.subject, b.message, b.value, b.threshold, b.severity)
        fired.append(
            {**b.to_json(), "id": alert.id, "new": is_new, "first_seen": alert.first_seen.isoformat(), "count": alert.count}
        )
    breached = {(b.rule, b.subject) for b in breaches}
    resolved = []
    for alert in store.active():
        key = (alert.rule, alert.subject)
        if key in checked and key not in breached and store.resolve(*key):
            resolved.append({"rule": alert.rule, "subject": alert.subject})
    return fired, resolved
