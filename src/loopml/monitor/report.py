"""The monitor report: drift, data quality, performance, system metrics and alerts over the prediction log.

:func:`build_report` is what ``loopml monitor`` (and the dashboard, the
retraining loop and the demo, through ``Project.monitor_report``) runs:

1. **period and windows**: predictions with ``since <= ts < until`` (default:
   the whole log), cut into windows of ``monitoring.window`` (default 1 day)
   aligned on multiples of the window since the epoch (so 1-day windows start
   at local midnight, as the log's local timestamps);
2. **system** (every model version): rows, latency p50/p95/p99 and throughput
   (rows per second of the part of the window inside the period and before
   now) per window and overall, from one aggregate query;
3. the **monitored version** (default: the ``rollout.alias`` holder, the
   champion) is read once (:func:`loopml.monitor.drift.load_live`) and each
   column is profiled against the version's stored reference statistics:
   **drift** per window and over the whole period, **quality** from the same
   profiles, **performance** from the labelled rows and CBPE estimates;
4. **alerts**: the rules of :mod:`loopml.monitor.rules` over the report, fired
   into / resolved in the alert store when one is given.

``drift`` (the contract list) is the **whole period**, so it agrees with the
alerts raised; ``windows`` holds the time series (per window: rows, drift per
column, quality, performance, latency, throughput) the dashboard draws. Narrow
the period with ``since``/``--since`` to look at recent traffic only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.monitor.drift import (
    ColumnSummary,
    DriftResult,
    calendar_cycles,
    column_references,
    decide,
    summarise,
    thresholds,
    window_spans,
)
from loopml.monitor.live_rows import SCORE, LiveData, LoggedSchema, load_live, logged_schema
from loopml.monitor.performance import ScoreCalibration, performance
from loopml.monitor.quality import column_quality, freshness, schema_issues
from loopml.monitor.rules import AlertSink, apply, evaluate
from loopml.monitor.stattests import CategoricalReference, ColumnReference, NumericReference
from loopml.predlog.base import PredictionLogBackend
from loopml.registry.base import Registry
from loopml.spec.model import Spec
from loopml.tasks import task_of

IntArray = npt.NDArray[np.int64]
#: at most this many windows in one report (a longer period needs a larger window)
MAX_WINDOWS = 1000
_US = 1_000_000


@dataclass(frozen=True)
class Period:
    since: datetime | None
    until: datetime | None
    window: timedelta
    now: datetime

    @property
    def window_us(self) -> int:
        return max(1, int(self.window.total_seconds() * _US))


def watched_metric(spec: Spec) -> str:
    """``monitoring.alerts.metric``, else ``gate.metric`` (the task's default metric when the gate leaves it unset)."""
    if spec.monitoring.alerts.metric:
        return spec.monitoring.alerts.metric
    if "metric" not in spec.gate.model_fields_set:
        return task_of(spec.task).default_metric
    return spec.gate.metric


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(microseconds=int(us))).isoformat()


def _system(log: PredictionLogBackend, period: Period) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Overall and per-bucket rows, labels, latency quantiles and time span (every model version)."""
    w = period.window_us
    with log.connect(since=period.since, until=period.until) as con:
        total = con.execute(
            """SELECT count(*), count(label), quantile_cont(latency_ms, [0.5, 0.95, 0.99]),
                      min(epoch_us(ts)), max(epoch_us(ts)) FROM labelled"""
        ).fetchone()
        buckets = con.execute(
            f"""SELECT epoch_us(ts) // {w} AS b, count(*), count(label), quantile_cont(latency_ms, [0.5, 0.95, 0.99]),
                       min(epoch_us(ts)) FROM labelled GROUP BY b ORDER BY b"""
        ).fetchall()
    n, labelled, q, first, last = total if total else (0, 0, None, None, None)
    overall = {
        "rows": int(n),
        "labelled": int(labelled),
        "latency_ms": _quantiles(q),
        "first": None if first is None else _iso(first),
        "last": None if last is None else _iso(last),
        "first_us": first,
    }
    per = {
        int(b): {"rows": int(c), "labelled": int(lab), "latency_ms": _quantiles(qs), "first_us": int(f)}
        for b, c, lab, qs, f in buckets
    }
    return overall, per


def _quantiles(q: Any) -> dict[str, float | None]:
    values = list(q) if q is not None else [None, None, None]
    return {"p50": values[0], "p95": values[1], "p99": values[2]}


def _covered_seconds(start_us: int, end_us: int, period: Period, first_us: int | None) -> float:
    lo = start_us
    if period.since is not None:
        lo = max(lo, int((period.since.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds() * _US))
    if first_us is not None:
        lo = max(lo, first_us)
    hi = min(end_us, int((period.now - datetime(1970, 1, 1)).total_seconds() * _US))
    if period.until is not None:
        hi = min(hi, int((period.until.replace(tzinfo=None) - datetime(1970, 1, 1)).total_seconds() * _US))
    return max(0.0, (hi - lo) / _US)


def build_report(
    spec: Spec,
    log: PredictionLogBackend,
    registry: Registry,
    *,
    version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    window: timedelta | None = None,
    materialized: Mapping[str, datetime | None] | None = None,
    alerts: AlertSink | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The monitor report of the module doc; fires and resolves alerts in ``alerts`` when given."""
    settings = spec.monitoring
    period = Period(since, until, window or settings.window, now or datetime.now())
    if period.window.total_seconds() <= 0:
        raise LoopmlError(f"monitor: the window must be positive, got {period.window}")
    if version is None:
        holder = registry.alias(spec.rollout.alias)
        version = None if holder is None else holder.version
    system_total, buckets = _system(log, period)

    live: LiveData | None = None
    references: dict[str, ColumnReference] = {}
    schema: LoggedSchema | None = None
    if version is not None:
        references = column_references(registry.reference_stats(version), settings.quality.range_tolerance)
        numeric = [n for n, r in references.items() if isinstance(r, NumericReference) and n != SCORE]
        categorical = [n for n, r in references.items() if isinstance(r, CategoricalReference)]
        with log.connect(since=period.since, until=period.until, model_version=version) as con:
            schema = logged_schema(con)
            live = load_live(con, numeric, categorical, schema)

    starts = sorted(buckets)
    if live is not None and live.rows:
        starts = sorted(set(starts) | set((live.ts_us // period.window_us).tolist()))
    first_bucket = starts[0] if starts else 0
    n_windows = starts[-1] - first_bucket + 1 if starts else 0
    if n_windows > MAX_WINDOWS:
        raise LoopmlError(
            f"monitor: a window of {period.window} cuts the period into {n_windows:,} windows (at most {MAX_WINDOWS:,}); "
            "use a larger --window or a later --since"
        )

    window_idx: IntArray = np.zeros(0, dtype=np.int64)
    summaries: list[ColumnSummary] = []
    decisions: list[list[DriftResult]] = []
    if live is not None:
        window_idx = np.asarray(live.ts_us // period.window_us - first_bucket, dtype=np.int64)
        summaries = summarise(references, live, window_idx, n_windows)
        decisions = decide(summaries, settings, window_spans(live.ts_us, window_idx, n_windows), calendar_cycles(spec))
    overall_drift = decisions[-1] if decisions else []

    quality: dict[str, Any] = {"columns": [], "issues": [], "schema": None, "freshness": []}
    quality_windows: list[list[dict[str, Any]]] = [[] for _ in range(n_windows)]
    if live is not None:
        columns, issues, quality_windows = column_quality(summaries, references, live, settings.quality)
        schema_summary, schema_found = schema_issues(schema, references, SCORE)
        quality |= {"columns": columns, "schema": schema_summary}
        issues += schema_found
        quality["issues"] = [i.to_json() for i in issues]
    fresh, fresh_issues = freshness(dict(materialized or {}), period.now, settings.quality)
    quality["freshness"] = fresh
    quality["issues"] = quality["issues"] + [i.to_json() for i in fresh_issues]

    perf: dict[str, Any] | None = None
    perf_windows: list[dict[str, Any]] = [{} for _ in range(n_windows)]
    if live is not None and version is not None:
        metrics = registry.get(version).metrics
        calibration, note = ScoreCalibration.choose(_score_entry(registry, version), metrics.get("calibration"))
        perf, perf_windows = performance(
            spec.task,
            live.score,
            live.label,
            window_idx,
            n_windows,
            dict(metrics.get("test") or {}),
            metrics.get("threshold"),
            settings.min_rows,
            calibration,
            note,
        )
        perf["metric"] = watched_metric(spec)

    model_rows = np.bincount(window_idx, minlength=n_windows) if live is not None else np.zeros(n_windows, dtype=np.int64)
    windows = []
    for w in range(n_windows):
        bucket = first_bucket + w
        start_us, end_us = bucket * period.window_us, (bucket + 1) * period.window_us
        sys = buckets.get(bucket, {"rows": 0, "labelled": 0, "latency_ms": _quantiles(None), "first_us": None})
        covered = _covered_seconds(start_us, end_us, period, system_total["first_us"] if w == 0 else None)
        windows.append(
            {
                "start": _iso(start_us),
                "end": _iso(end_us),
                "rows": sys["rows"],
                "labelled": sys["labelled"],
                "latency_ms": sys["latency_ms"],
                "throughput_per_s": sys["rows"] / covered if covered > 0 else None,
                "model_rows": int(model_rows[w]),
                "drift": {d.feature: _window_drift(d) for d in decisions[w]} if decisions else {},
                "quality": quality_windows[w] if quality_windows else [],
                "performance": perf_windows[w] if perf_windows else {},
            }
        )
    covered_all = sum(
        _covered_seconds(w0 * period.window_us, (w0 + 1) * period.window_us, period, system_total["first_us"]) for w0 in starts
    )
    system = {
        "rows": system_total["rows"],
        "latency_ms": system_total["latency_ms"],
        "throughput_per_s": system_total["rows"] / covered_all if covered_all > 0 else None,
        "windows": [{k: w[k] for k in ("start", "end", "rows", "latency_ms", "throughput_per_s")} for w in windows],
    }
    report: dict[str, Any] = {
        "model_version": version,
        "period": {
            "since": None if period.since is None else period.since.isoformat(),
            "until": None if period.until is None else period.until.isoformat(),
            "window_s": period.window.total_seconds(),
            "windows": n_windows,
            "first": system_total["first"],
            "last": system_total["last"],
        },
        "predictions": system_total["rows"],
        "labelled": system_total["labelled"],
        "rows": live.rows if live is not None else 0,
        "latency_ms": system_total["latency_ms"],
        "drift": [d.to_json() for d in overall_drift],
        "quality": quality,
        "performance": perf,
        "system": system,
        "windows": windows,
    }
    breaches, checked = evaluate(
        report, settings.alerts, thresholds(settings), watched_metric(spec), spec.serving.latency_budget_ms
    )
    if alerts is not None:
        report["alerts"], report["resolved_alerts"] = apply(alerts, breaches, checked)
    else:
        report["alerts"], report["resolved_alerts"] = [b.to_json() for b in breaches], []
    return report


def _score_entry(registry: Registry, version: int) -> dict[str, Any] | None:
    score = registry.reference_stats(version).get("score")
    return score if isinstance(score, dict) else None


def _window_drift(d: DriftResult) -> dict[str, Any]:
    return {
        "test": d.test,
        "statistic": d.statistic,
        "p_value": d.p_value,
        "drifted": d.drifted,
        "rows": d.rows,
        "status": d.status,
        "statistics": d.statistics,
    }


def drift_results(
    spec: Spec, log: PredictionLogBackend, registry: Registry, version: int | None = None, since: datetime | None = None
) -> tuple[int | None, list[DriftResult]]:
    """Drift of every column over the whole period only (no windows, quality or alerts): ``Project.drift``."""
    if version is None:
        holder = registry.alias(spec.rollout.alias)
        if holder is None:
            return None, []
        version = holder.version
    settings = spec.monitoring
    references = column_references(registry.reference_stats(version), settings.quality.range_tolerance)
    numeric = [n for n, r in references.items() if isinstance(r, NumericReference) and n != SCORE]
    categorical = [n for n, r in references.items() if isinstance(r, CategoricalReference)]
    with log.connect(since=since, model_version=version) as con:
        live = load_live(con, numeric, categorical)
    whole = np.zeros(live.rows, dtype=np.int64)
    summaries = summarise(references, live, whole, 1)
    decisions = decide(summaries, settings, window_spans(live.ts_us, whole, 1), calendar_cycles(spec))
    return version, decisions[-1] if decisions else []
