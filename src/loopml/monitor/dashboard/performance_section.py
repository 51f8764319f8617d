"""The dashboard's performance section: the training report's metrics on labelled live traffic over time.

Realised metrics per equal-count window of labelled rows (:func:`~loopml.monitor.dashboard.windows.window_metrics`)
next to the training baseline (the version's test metrics); for binary models with a
calibration map, the CBPE estimate (:func:`loopml.monitor.performance.estimate_binary`)
per equal-count window over every row, labelled or not. Two metrics are drawn: the
promotion gate's and the task's usual one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loopml.monitor.dashboard.blocks import Json, Point, chart, no_model, number
from loopml.monitor.dashboard.logdata import Monitored, truncation_note
from loopml.monitor.dashboard.windows import window_ends_ms, window_metrics, windows_by_count
from loopml.monitor.performance import ScoreCalibration, estimate_binary
from loopml.spec.model import Spec
from loopml.tasks import task_of
from loopml.tasks.metrics import DEFAULT_THRESHOLD

_PLOTTED = {"binary": ("average_precision", "roc_auc"), "regression": ("rmse", "mae")}


def performance_section(spec: Spec, monitored: Monitored | None, max_points: int, max_rows: int) -> Json:
    settings = spec.monitoring
    if monitored is None:
        return no_model("performance")
    live = monitored.live
    task = spec.task if spec.task in _PLOTTED else "binary"
    labelled = np.isfinite(live.label)
    if task == "binary":
        labelled &= np.isin(live.label, (0.0, 1.0))
    idx = np.flatnonzero(labelled)
    window, n = windows_by_count(len(idx), settings.min_rows, max_points)
    ends = window_ends_ms(live.ts_us[idx], window, n)
    threshold = monitored.metrics.get("threshold")
    cut = float(threshold) if isinstance(threshold, (int, float)) else DEFAULT_THRESHOLD
    known = task_of(task).metrics
    plotted = [m for m in dict.fromkeys([spec.gate.metric, *_PLOTTED[task]]) if m in known][:2]
    realised: list[dict[str, float | None]] = []
    for w in range(n):
        rows = idx[window == w]
        enough = len(rows) >= settings.min_rows
        realised.append(window_metrics(task, plotted, live.label[rows], live.score[rows], cut) if enough else {})
    baseline = monitored.metrics.get("test") or {}
    estimated = estimates(monitored, cut, settings.min_rows, max_points) if task == "binary" else ({}, None)
    charts = []
    empty = (
        "no labels yet: labels arrive through POST /v1/feedback"
        if not len(idx)
        else f"not enough labels yet: {len(idx)}, a window needs {settings.min_rows}"
    )
    for metric in plotted:
        series = [
            {
                "name": f"{metric} (labelled traffic)",
                "points": [[t, number(r.get(metric))] for t, r in zip(ends, realised, strict=True)],
            }
        ]
        if metric in estimated[0]:
            series.append({"name": f"{metric} (estimated, CBPE)", "points": estimated[0][metric], "style": "dotted"})
        base = number(baseline.get(metric))
        lines = [{"name": f"training baseline {base:.3g}", "y": base}] if base is not None else []
        charts.append(
            chart(
                f"performance_{metric}",
                "line",
                f"{metric} over time",
                "time (as logged; end of each window)",
                metric,
                series,
                lines=lines,
                empty=empty,
            )
        )
    summary: list[list[Any]] = [
        ["model version", monitored.version],
        ["labelled rows", len(idx)],
        ["decision threshold", cut],
    ]
    if estimated[1]:
        summary.append(["estimate", estimated[1]])
    return {"summary": summary, "note": truncation_note(monitored, max_rows), "charts": charts}


def estimates(monitored: Monitored, cut: float, min_rows: int, max_points: int) -> tuple[dict[str, list[Point]], str | None]:
    """CBPE per equal-count window over every row (labelled or not), or why it is not shown."""
    calibration, note = ScoreCalibration.choose(monitored.reference.get("score"), monitored.metrics.get("calibration"))
    if calibration is None:
        return {}, f"no CBPE estimate: {note}"
    live = monitored.live
    window, n = windows_by_count(live.rows, min_rows, max_points)
    ends = window_ends_ms(live.ts_us, window, n)
    out: dict[str, list[Point]] = {}
    probabilities = calibration.apply(live.score)
    for w, t in enumerate(ends):
        rows = window == w
        values = estimate_binary(probabilities[rows], cut) if rows.sum() >= min_rows else {}
        for metric, value in values.items():
            out.setdefault(metric, []).append([t, number(value)])
    return out, f"CBPE with the {calibration.source} calibration map"
