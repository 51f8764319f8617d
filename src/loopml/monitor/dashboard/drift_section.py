"""The dashboard's drift section: PSI per column over equal-count windows, and each column's verdict over the period.

The verdict is the one ``loopml monitor`` gives (:func:`loopml.monitor.drift.summarise`,
:func:`~loopml.monitor.drift.decide`, calendar features seasonal in windows shorter than
their cycle); the chart draws the ``DRIFT_SERIES`` columns with the highest peak PSI.
"""

from __future__ import annotations

from loopml.monitor.dashboard.blocks import Json, chart, no_model, number, table
from loopml.monitor.dashboard.logdata import Monitored, truncation_note
from loopml.monitor.dashboard.windows import window_ends_ms, windows_by_count
from loopml.monitor.drift import calendar_cycles, decide, summarise, window_spans
from loopml.spec.model import Spec

DRIFT_SERIES = 8  # columns drawn in the drift chart (the highest peak PSI); every column is in the table


def drift_section(spec: Spec, monitored: Monitored | None, max_points: int, max_rows: int) -> Json:
    settings = spec.monitoring
    threshold = [{"name": f"PSI threshold {settings.psi_threshold:g}", "y": settings.psi_threshold}]
    if monitored is None:
        return no_model("drift")
    live = monitored.live
    window, n = windows_by_count(live.rows, settings.min_rows, max_points)
    summaries = summarise(monitored.references, live, window, n) if live.rows else []
    spans = window_spans(live.ts_us, window, n)
    verdicts = decide(summaries, settings, spans, calendar_cycles(spec)) if summaries else []
    ends = window_ends_ms(live.ts_us, window, n)
    series = []
    rows = []
    for i, s in enumerate(summaries):
        psi = s.scores.get("psi")
        values = [number(psi.statistic[w]) if psi is not None and s.rows[w] >= settings.min_rows else None for w in range(n)]
        points = [[t, v] for t, v in zip(ends, values, strict=True)]
        peak = max((v for v in values if v is not None), default=None)
        series.append((peak if peak is not None else -1.0, {"name": s.name, "points": points}))
        overall = verdicts[-1][i]
        rows.append(
            [s.name, s.kind, overall.test, overall.statistic, overall.p_value, overall.status, values[-1], peak, overall.rows]
        )
    series.sort(key=lambda item: -item[0])
    drifted = sum(1 for r in rows if r[5] == "drift")
    empty = (
        "no predictions logged yet"
        if not live.rows
        else f"not enough data yet: {live.rows} rows, a window needs {settings.min_rows}"
    )
    return {
        "summary": [
            ["model version", monitored.version],
            ["rows analysed", live.rows],
            ["columns drifted over the period", f"{drifted} of {len(rows)}"],
        ],
        "note": truncation_note(monitored, max_rows),
        "charts": [
            chart(
                "drift",
                "line",
                f"PSI per column over time (the {min(DRIFT_SERIES, len(series))} highest peaks)",
                "time (as logged; end of each window)",
                "PSI vs the training reference",
                [s for _, s in series[:DRIFT_SERIES]],
                lines=threshold,
                empty=empty,
            )
        ],
        "tables": [
            table(
                "drift_columns",
                "Every column over the period (the test loopml monitor uses)",
                ["column", "kind", "test", "statistic", "p-value (corrected)", "status", "latest PSI", "peak PSI", "rows"],
                sorted(rows, key=lambda r: (r[5] != "drift", r[0])),
                "no predictions logged yet",
            )
        ],
    }
