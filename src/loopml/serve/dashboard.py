"""The dashboard: ``GET /ui`` (a static page) and ``GET /v1/dashboard`` (its data as JSON).

The page (``dashboard.html`` with ``dashboard.js`` inlined, package data next to
this module) fetches ``/v1/dashboard`` and draws every chart itself as SVG. The
chart renderer is a small hand-written vanilla-JS line/bar renderer rather than
a charting library because the server and its users may have no network: a CDN
script would not load, and vendoring a library (hundreds of KB) for a few line
and bar charts is not worth it. Every chart has a title, axis labels and an
explicit "no data yet" state.

:class:`Dashboard` assembles the JSON, one section at a time:

* **overview**: the live version, the policy, predictions logged and labelled;
* **rollout**: champion/challenger with their versions, the live traffic split
  (``service.models()``), the observed requests per variant over time, the
  canary's step and guardrail statistics (``service.rollout.state()``) and the
  rollout events (promotions, rollbacks, policy changes);
* **drift**: PSI per feature (and the score) over time, with the threshold,
  and each column's verdict over the period by the test ``loopml monitor``
  uses (:func:`loopml.monitor.drift.summarise` / :func:`~loopml.monitor.drift.decide`);
* **performance**: the training report's metrics on labelled live traffic over
  time next to the training baseline (the version's test metrics), and the
  CBPE estimate (:mod:`loopml.monitor.performance`) for calibrated binary models;
* **system**: latency p50/p95/p99 and throughput over time, with the latency budget;
* **alerts**: the active alerts (:meth:`AlertStore.active`);
* **versions** and **runs**: the registry and the run store.

Time axes: drift and performance use equal-count windows over the rows (so
each point rests on the same number of rows, at least ``monitoring.min_rows``,
and no point is "not enough data" by construction); latency and throughput use
equal-width time buckets (a throughput needs a duration), aggregated in DuckDB
in one pass. Both are capped at ``max_points`` points. Drift and performance
read the champion's most recent ``max_rows`` predictions (a note says so when
the log holds more), so the page stays fast on a big log. Times are the log's
``ts`` (the request's event time when it carries one, else the server's clock
at the request; naive local time), sent as milliseconds and shown as they are.

It never fails as a whole: a section whose data cannot be loaded carries
``error`` (the reason, one line) and the page shows it in that section. The
result is cached for ``cache_seconds`` and computed by one thread at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import numpy.typing as npt
from scipy import stats

from loopml.monitor.drift import (
    SCORE,
    LiveData,
    calendar_cycles,
    column_references,
    decide,
    load_live,
    summarise,
    window_spans,
)
from loopml.monitor.performance import ScoreCalibration, estimate_binary
from loopml.monitor.stattests import ColumnReference
from loopml.predlog.base import PredictionLogBackend
from loopml.train.metrics import DEFAULT_THRESHOLD, binary_metrics, metric_names, regression_metrics

if TYPE_CHECKING:
    from loopml.monitor.alerts import AlertStore
    from loopml.serve.service import PredictionService
    from loopml.train.tracking import RunStore

MAX_POINTS = 48  # points per time series
MAX_ROWS = 100_000  # latest predictions the drift and performance sections read (1.4-3 s with 18 columns here)
DRIFT_SERIES = 8  # columns drawn in the drift chart (the highest peak PSI); every column is in the table
TABLE_ROWS = 20
_PLOTTED = {"binary": ("average_precision", "roc_auc"), "regression": ("rmse", "mae")}
#: bucket widths for latency and throughput, in microseconds
_WIDTHS_US = [
    int(s * 1_000_000)
    for s in (
        *(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
        *(60, 120, 300, 600, 900, 1800),
        *(3600, 7200, 10800, 21600, 43200),
        *(86400, 172800, 604800, 1209600, 2592000),
    )
]

Json = dict[str, Any]
FloatArray = npt.NDArray[np.float64]
Point = list[Any]  # [x, y]: x in epoch milliseconds (or a category name), y a number or None


# -- page -----------------------------------------------------------------------------------------


def render_page() -> str:
    """``GET /ui``: the page shell with its script inlined (no other request but ``/v1/dashboard``)."""
    here = resources.files("loopml.serve")
    page = here.joinpath("dashboard.html").read_text(encoding="utf-8")
    script = here.joinpath("dashboard.js").read_text(encoding="utf-8")
    return page.replace("/*DASHBOARD_JS*/", script.replace("</script", "<\\/script"))


# -- JSON building blocks -------------------------------------------------------------------------


def chart(
    chart_id: str,
    kind: str,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Json],
    *,
    x_type: str = "time",
    lines: Sequence[Json] = (),
    empty: str = "no data yet",
    bar_width: float | None = None,
) -> Json:
    """A chart the page draws: ``series`` are ``{"name", "points": [[x, y], ...], "style"?}``.

    ``lines`` are horizontal references ``{"name", "y", "fit"?}``; with ``"fit": false`` a line does not
    stretch the y axis (the page then lists it in the legend as "above the chart" instead of drawing it).
    """
    out: Json = {
        "id": chart_id,
        "kind": kind,
        "title": title,
        "x_label": x_label,
        "y_label": y_label,
        "x_type": x_type,
        "series": list(series),
        "lines": list(lines),
        "empty": empty,
    }
    if bar_width is not None:
        out["bar_width"] = bar_width
    return out


def table(table_id: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> Json:
    return {"id": table_id, "title": title, "columns": list(columns), "rows": [list(r) for r in rows], "empty": empty}


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    number = float(value)
    return number if np.isfinite(number) else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def windows_by_count(rows: int, min_rows: int, max_points: int) -> tuple[npt.NDArray[np.int64], int]:
    """Equal-count windows over ``rows`` ordered rows: (window of each row, number of windows).

    As many windows as hold ``min_rows`` rows each (at least one, at most ``max_points``; none without rows).
    """
    if rows == 0:
        return np.zeros(0, dtype=np.int64), 0
    n = int(min(max(rows // max(min_rows, 1), 1), max_points))
    return (np.arange(rows, dtype=np.int64) * n) // rows, n


def bucket_width_us(span_us: int, max_points: int) -> int:
    """The smallest round bucket width giving at most ``max_points`` buckets over ``span_us``."""
    wanted = span_us / max(max_points - 1, 1)
    for width in _WIDTHS_US:
        if width >= wanted:
            return width
    return int(np.ceil(wanted / _WIDTHS_US[-1])) * _WIDTHS_US[-1]


# -- metrics per window -----------------------------------------------------------------------------


def window_metrics(
    task: str, names: Sequence[str], y: FloatArray, scores: FloatArray, threshold: float
) -> dict[str, float | None]:
    """``names`` of the training report's metrics on one window's labelled rows (None where undefined).

    ROC AUC, average precision, log loss, Brier, RMSE and MAE are computed here in numpy, with
    scikit-learn's definitions (ROC AUC as the Mann-Whitney statistic with tied ranks averaged, equal to
    the trapezoidal area; AP as the step sum over distinct thresholds) because scikit-learn's input
    checks cost ~10 ms a call, times every metric of every window of every page load; the others
    go through :mod:`loopml.train.metrics`. ``tests/test_dashboard.py`` checks both agree.
    """
    out: dict[str, float | None] = {}
    slow = []
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = float(y.sum())
    one_class = positives == 0 or positives == len(y)
    for name in names:
        if not len(y):
            out[name] = None
        elif task == "binary" and name == "roc_auc":
            ranks = stats.rankdata(scores)
            negatives = len(y) - positives
            out[name] = (
                None if one_class else float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
            )
        elif task == "binary" and name == "average_precision":
            if one_class:
                out[name] = None
                continue
            order = np.argsort(-scores, kind="mergesort")
            ranked, hits = scores[order], y[order]
            last = np.r_[ranked[1:] != ranked[:-1], True]  # one step per distinct score
            tp, seen = np.cumsum(hits)[last], (np.arange(len(y)) + 1.0)[last]
            out[name] = float(np.sum(np.diff(np.r_[0.0, tp / positives]) * (tp / seen)))
        elif task == "binary" and name == "brier":
            out[name] = float(np.mean((scores - y) ** 2))
        elif task == "binary" and name == "log_loss":
            p = np.clip(scores, 1e-15, 1 - 1e-15)
            out[name] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        elif task != "binary" and name == "rmse":
            out[name] = float(np.sqrt(np.mean((scores - y) ** 2)))
        elif task != "binary" and name == "mae":
            out[name] = float(np.mean(np.abs(scores - y)))
        else:
            slow.append(name)
    if slow and len(y):
        evaluation = (
            binary_metrics(y, scores, threshold, "window") if task == "binary" else regression_metrics(y, scores, "window")
        )
        out |= {name: _number(evaluation.metrics.get(name)) for name in slow}
    return out


# -- data read from the log --------------------------------------------------------------------------


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...] | None:
    """The first row of a query, with the result fully consumed (DuckDB refuses new work on an open result)."""
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


@dataclass(frozen=True)
class Traffic:
    """Latency and throughput per time bucket (all versions), from one DuckDB aggregation."""

    width_us: int
    starts_ms: list[int]
    requests: list[int]
    p50: list[float | None]
    p95: list[float | None]
    p99: list[float | None]
    by_variant: dict[str, list[int]]
    total: int
    overall: dict[str, float | None]


def read_traffic(log: PredictionLogBackend, max_points: int) -> Traffic:
    with log.connect() as con:
        span = _one(
            con,
            "SELECT min(epoch_us(ts)), max(epoch_us(ts)), count(*),"
            " quantile_cont(latency_ms, [0.5, 0.95, 0.99]) FROM predictions",
        )
        if span is None or not span[2]:
            return Traffic(1_000_000, [], [], [], [], [], {}, 0, {"p50": None, "p95": None, "p99": None})
        lo, hi, total, quantiles = int(span[0]), int(span[1]), int(span[2]), span[3] or [None] * 3
        width = bucket_width_us(hi - lo + 1, max_points)
        first = lo // width
        rows = con.execute(
            f"""SELECT epoch_us(ts) // {width} - {first} AS b, count(*),
                       quantile_cont(latency_ms, [0.5, 0.95, 0.99])
                FROM predictions GROUP BY b ORDER BY b"""
        ).fetchall()
        variants = con.execute(
            f"SELECT epoch_us(ts) // {width} - {first} AS b, variant, count(*) FROM predictions GROUP BY b, variant"
        ).fetchall()
    n = hi // width - first + 1
    requests = [0] * n
    p50: list[float | None] = [None] * n
    p95: list[float | None] = [None] * n
    p99: list[float | None] = [None] * n
    for b, count, q in rows:
        requests[b], p50[b], p95[b], p99[b] = int(count), _number(q[0]), _number(q[1]), _number(q[2])
    by_variant: dict[str, list[int]] = {}
    for b, variant, count in variants:
        by_variant.setdefault(str(variant), [0] * n)[b] = int(count)
    starts = [(first + i) * width // 1000 for i in range(n)]
    overall = {"p50": _number(quantiles[0]), "p95": _number(quantiles[1]), "p99": _number(quantiles[2])}
    return Traffic(width, starts, requests, p50, p95, p99, dict(sorted(by_variant.items())), total, overall)


@dataclass(frozen=True)
class Monitored:
    """The champion's recent logged rows, with its reference statistics and training metrics."""

    version: int
    references: dict[str, ColumnReference]
    reference: Json
    metrics: Json
    live: LiveData
    total: int  # rows of this version in the log (``live`` holds the latest ``max_rows``)


def read_monitored(service: PredictionService, log: PredictionLogBackend, max_rows: int) -> Monitored | None:
    """The live version's latest ``max_rows`` logged rows as columns; None while no model is loaded."""
    champion = service.live
    if champion is None:
        return None
    version = champion.version
    reference = service.registry.reference_stats(version)
    metrics = service.registry.get(version).metrics
    references = column_references(reference)
    numeric = [n for n, r in references.items() if r.kind == "numeric" and n != SCORE]
    categorical = [n for n, r in references.items() if r.kind == "categorical"]
    with log.connect(model_version=version) as con:
        row = _one(con, "SELECT count(*) FROM predictions")
        total = int(row[0]) if row else 0
        since: datetime | None = None
        if total > max_rows:
            found = _one(con, f"SELECT ts FROM predictions ORDER BY ts DESC LIMIT 1 OFFSET {int(max_rows) - 1}")
            since = found[0] if found else None
        if since is None:
            live = load_live(con, numeric, categorical)
    if since is not None:
        with log.connect(since=since, model_version=version) as con:
            live = load_live(con, numeric, categorical)
    return Monitored(version, references, reference, metrics, live, total)


def _window_ends_ms(ts_us: npt.NDArray[np.int64], window: npt.NDArray[np.int64], n: int) -> list[int]:
    """The time of the last row of each (equal-count, ordered) window."""
    if not len(ts_us):
        return []
    last = np.searchsorted(window, np.arange(n), side="right") - 1
    return [int(ts_us[i]) // 1000 for i in last]


# -- the dashboard -----------------------------------------------------------------------------------


class Dashboard:
    """Assembles the dashboard's JSON from the live service, the prediction log and the project's stores."""

    def __init__(
        self,
        service: PredictionService,
        log: PredictionLogBackend,
        alerts: AlertStore | None = None,
        runs: RunStore | None = None,
        *,
        max_rows: int = MAX_ROWS,
        max_points: int = MAX_POINTS,
        cache_seconds: float = 15.0,
    ) -> None:
        self.service = service
        self.log = log
        self.alerts = alerts
        self.runs = runs
        self.max_rows = max_rows
        self.max_points = max_points
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, Json] | None = None

    def data(self) -> Json:
        """The dashboard JSON; recomputed at most every ``cache_seconds``, by one thread at a time."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            result = self.collect()
            self._cached = (time.monotonic(), result)
            return result

    def collect(self) -> Json:
        started = time.perf_counter()
        spec = self.service.spec
        models = _Lazy(self.service.models)
        traffic = _Lazy(lambda: read_traffic(self.log, self.max_points))
        monitored = _Lazy(lambda: read_monitored(self.service, self.log, self.max_rows))
        sections = [
            _section("overview", "Overview", lambda: self._overview(models.get(), traffic.get())),
            _section("rollout", "Champion, challenger and traffic", lambda: self._rollout(models.get(), traffic.get())),
            _section("drift", "Drift per feature over time", lambda: self._drift(monitored.get())),
            _section("performance", "Performance over time", lambda: self._performance(monitored.get())),
            _section("system", "Latency and throughput", lambda: self._system(traffic.get())),
            _section("alerts", "Active alerts", self._alerts),
            _section("versions", "Model versions", lambda: self._versions(models.get())),
            _section("runs", "Training runs", self._runs),
        ]
        out = {
            "project": spec.project,
            "generated_at": datetime.now().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
            "sections": sections,
        }
        return _plain(out)  # type: ignore[no-any-return]

    # -- sections ------------------------------------------------------------------------------------
    def _overview(self, models: Json, traffic: Traffic) -> Json:
        with self.log.connect() as con:
            row = _one(con, "SELECT count(label) FROM labelled")
        labelled = int(row[0]) if row else 0
        return {
            "summary": [
                ["live version", models.get("live_version")],
                ["policy", models.get("policy")],
                ["predictions logged", traffic.total],
                ["labelled", labelled],
                ["latency p99 (ms)", traffic.overall["p99"]],
            ]
        }

    def _rollout(self, models: Json, traffic: Traffic) -> Json:
        state = self.service.rollout.state()
        split = models.get("traffic") or {}
        bars = [[f"{name} (v{entry['version']})", 100.0 * float(entry["weight"])] for name, entry in split.items()]
        seconds = traffic.width_us / 1e6
        observed = [
            {"name": name, "points": [[t, c / seconds] for t, c in zip(traffic.starts_ms, counts, strict=True)]}
            for name, counts in traffic.by_variant.items()
        ]
        stats = state.get("stats", {})
        aliases = state.get("variants", {})
        variants = [
            [
                name,
                aliases.get(name),
                entry["version"],
                float(entry["weight"]),
                stats.get(name, {}).get("requests"),
                stats.get(name, {}).get("errors"),
                stats.get(name, {}).get("p99_ms"),
                stats.get(name, {}).get("labelled"),
            ]
            for name, entry in split.items()
        ]
        summary: list[list[Any]] = [["policy", state.get("policy")], ["live version", models.get("live_version")]]
        if state.get("policy") == "canary":
            steps = state.get("steps") or []
            step = int(state.get("step", 0))
            share = steps[step] if step < len(steps) else None
            summary.append(["canary step", f"{step + 1} of {len(steps)} ({share:.0%} of traffic)" if share is not None else step])
        events = [
            [e.get("at"), e.get("action"), e.get("version"), e.get("reason") or e.get("policy")]
            for e in reversed(self.service.events()[-TABLE_ROWS:])
        ]
        return {
            "summary": summary,
            "charts": [
                chart(
                    "traffic",
                    "bar",
                    "Live traffic split",
                    "variant (model version)",
                    "share of traffic (%)",
                    [{"name": "share", "points": bars}],
                    x_type="category",
                    empty="no model loaded",
                ),
                chart(
                    "traffic_observed",
                    "line",
                    "Requests per variant over time",
                    "time (as logged)",
                    "requests / s",
                    observed,
                    empty="no predictions logged yet",
                ),
            ],
            "tables": [
                table(
                    "variants",
                    "Variants (the canary's guardrail statistics of the current step)",
                    ["variant", "alias", "version", "weight", "requests", "errors", "p99 ms", "labels"],
                    variants,
                    "no model loaded",
                ),
                table("rollout_events", "Rollout events", ["at", "action", "version", "reason"], events, "no rollout events yet"),
            ],
        }

    def _drift(self, monitored: Monitored | None) -> Json:
        settings = self.service.spec.monitoring
        threshold = [{"name": f"PSI threshold {settings.psi_threshold:g}", "y": settings.psi_threshold}]
        if monitored is None:
            return _no_model("drift")
        live = monitored.live
        window, n = windows_by_count(live.rows, settings.min_rows, self.max_points)
        summaries = summarise(monitored.references, live, window, n) if live.rows else []
        spans = window_spans(live.ts_us, window, n)
        verdicts = decide(summaries, settings, spans, calendar_cycles(self.service.spec)) if summaries else []
        ends = _window_ends_ms(live.ts_us, window, n)
        series = []
        rows = []
        for i, s in enumerate(summaries):
            psi = s.scores.get("psi")
            values = [_number(psi.statistic[w]) if psi is not None and s.rows[w] >= settings.min_rows else None for w in range(n)]
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
            "note": _truncation_note(monitored, self.max_rows),
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

    def _performance(self, monitored: Monitored | None) -> Json:
        spec = self.service.spec
        settings = spec.monitoring
        if monitored is None:
            return _no_model("performance")
        live = monitored.live
        task = spec.task if spec.task in _PLOTTED else "binary"
        labelled = np.isfinite(live.label)
        if task == "binary":
            labelled &= np.isin(live.label, (0.0, 1.0))
        idx = np.flatnonzero(labelled)
        window, n = windows_by_count(len(idx), settings.min_rows, self.max_points)
        ends = _window_ends_ms(live.ts_us[idx], window, n)
        threshold = monitored.metrics.get("threshold")
        cut = float(threshold) if isinstance(threshold, (int, float)) else DEFAULT_THRESHOLD
        known = metric_names(task)
        plotted = [m for m in dict.fromkeys([spec.gate.metric, *_PLOTTED[task]]) if m in known][:2]
        realised: list[dict[str, float | None]] = []
        for w in range(n):
            rows = idx[window == w]
            enough = len(rows) >= settings.min_rows
            realised.append(window_metrics(task, plotted, live.label[rows], live.score[rows], cut) if enough else {})
        baseline = monitored.metrics.get("test") or {}
        estimated = self._estimates(monitored, cut) if task == "binary" else ({}, None)
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
                    "points": [[t, _number(r.get(metric))] for t, r in zip(ends, realised, strict=True)],
                }
            ]
            if metric in estimated[0]:
                series.append({"name": f"{metric} (estimated, CBPE)", "points": estimated[0][metric], "style": "dotted"})
            base = _number(baseline.get(metric))
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
        return {"summary": summary, "note": _truncation_note(monitored, self.max_rows), "charts": charts}

    def _estimates(self, monitored: Monitored, cut: float) -> tuple[dict[str, list[Point]], str | None]:
        """CBPE per equal-count window over every row (labelled or not), or why it is not shown."""
        calibration, note = ScoreCalibration.choose(monitored.reference.get("score"), monitored.metrics.get("calibration"))
        if calibration is None:
            return {}, f"no CBPE estimate: {note}"
        live = monitored.live
        min_rows = self.service.spec.monitoring.min_rows
        window, n = windows_by_count(live.rows, min_rows, self.max_points)
        ends = _window_ends_ms(live.ts_us, window, n)
        out: dict[str, list[Point]] = {}
        probabilities = calibration.apply(live.score)
        for w, t in enumerate(ends):
            rows = window == w
            values = estimate_binary(probabilities[rows], cut) if rows.sum() >= min_rows else {}
            for metric, value in values.items():
                out.setdefault(metric, []).append([t, _number(value)])
        return out, f"CBPE with the {calibration.source} calibration map"

    def _system(self, traffic: Traffic) -> Json:
        budget = self.service.spec.serving.latency_budget_ms
        seconds = traffic.width_us / 1e6
        latency = [
            {"name": name, "points": [[t, v] for t, v in zip(traffic.starts_ms, values, strict=True)]}
            for name, values in (("p50", traffic.p50), ("p95", traffic.p95), ("p99", traffic.p99))
        ]
        throughput = [
            {
                "name": "all variants",
                "points": [[t, c / seconds] for t, c in zip(traffic.starts_ms, traffic.requests, strict=True)],
            }
        ]
        summary: list[list[Any]] = [
            ["predictions logged", traffic.total],
            ["latency p50 / p95 / p99 (ms)", " / ".join("-" if v is None else f"{v:.2f}" for v in traffic.overall.values())],
            ["latency budget (ms)", budget],
            ["bucket", f"{seconds:g} s"],
        ]
        logger = self.service.logger
        if logger is not None:
            summary.append(["log records dropped", getattr(logger, "dropped", None)])
        return {
            "summary": summary,
            "charts": [
                chart(
                    "latency",
                    "line",
                    "Latency over time (logged predictions)",
                    "time (as logged)",
                    "latency (ms)",
                    latency,
                    lines=[{"name": f"budget {budget:g} ms", "y": budget, "fit": False}],
                    empty="no predictions logged yet",
                ),
                chart(
                    "throughput",
                    "bar",
                    "Throughput over time",
                    "time (as logged)",
                    "requests / s",
                    throughput,
                    bar_width=traffic.width_us / 1000,
                    empty="no predictions logged yet",
                ),
            ],
            "note": "the last bucket may still be filling" if traffic.total else None,
        }

    def _alerts(self) -> Json:
        if self.alerts is None:
            return {"note": "this server has no alert store"}
        active = [a.to_json() for a in self.alerts.active()]
        rows = [
            [
                a["id"],
                a["severity"],
                a["rule"],
                a["subject"],
                a["message"],
                a["value"],
                a["threshold"],
                a["first_seen"],
                a["last_seen"],
                a["count"],
            ]
            for a in active
        ]
        return {
            "summary": [["active alerts", len(rows)], ["critical", sum(1 for a in active if a["severity"] == "critical")]],
            "tables": [
                table(
                    "alerts",
                    "Active alerts (critical first)",
                    ["id", "severity", "rule", "subject", "message", "value", "threshold", "first seen", "last seen", "count"],
                    rows,
                    "no active alerts",
                )
            ],
        }

    def _versions(self, models: Json) -> Json:
        metric = self.service.spec.gate.metric
        rows = []
        for v in sorted(models.get("versions", []), key=lambda v: -int(v["version"]))[:TABLE_ROWS]:
            test = (v.get("metrics") or {}).get("test") or {}
            gate = v.get("gate") or {}
            rows.append(
                [
                    v["version"],
                    v.get("aliases", []),
                    v.get("created_at"),
                    v.get("kind"),
                    gate.get("passed"),
                    test.get(metric),
                    v.get("run_id"),
                ]
            )
        return {
            "tables": [
                table(
                    "versions",
                    "Registered versions (newest first)",
                    ["version", "aliases", "created", "kind", "gate passed", f"test {metric}", "run"],
                    rows,
                    "no model registered yet: run loopml train",
                )
            ]
        }

    def _runs(self) -> Json:
        if self.runs is None:
            return {"note": "this server has no run store"}
        runs = [r.to_json() for r in self.runs.list(limit=TABLE_ROWS)]
        rows = [
            [
                r["run_id"],
                r["started_at"],
                r["status"],
                r["model_type"],
                r["model_version"],
                r["promoted"],
                r["metric"],
                r["value"],
                r["duration_s"],
            ]
            for r in runs
        ]
        return {
            "tables": [
                table(
                    "runs",
                    "Training runs (newest first)",
                    ["run", "started", "status", "model", "version", "promoted", "metric", "test value", "seconds"],
                    rows,
                    "no training run yet",
                )
            ]
        }


class _Lazy:
    """A value computed on first use and shared by the sections (an error is re-raised to each)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def get(self) -> Any:
        if not self._done:
            self._done = True
            try:
                self._value = self._make()
            except Exception as exc:  # kept and re-raised to every section that needs it
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value


def _plain(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/infinity to None (a strict JSON encoder refuses them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _number(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _section(section_id: str, title: str, build: Callable[[], Json]) -> Json:
    """One section; any failure becomes its ``error`` (the dashboard must never answer 500)."""
    try:
        body = build()
    except Exception as exc:  # a broken source (log, registry, store) must not take the whole page down
        return {"id": section_id, "title": title, "error": _one_line(exc)}
    return {"id": section_id, "title": title, **{k: v for k, v in body.items() if v is not None}}


def _no_model(what: str) -> Json:
    return {"note": f"no model is loaded, so there is no {what} to show"}


def _truncation_note(monitored: Monitored, max_rows: int) -> str | None:
    if monitored.total <= monitored.live.rows:
        return None
    return (
        f"the latest {monitored.live.rows:,} of {monitored.total:,} predictions of version {monitored.version} (cap {max_rows:,})"
    )
