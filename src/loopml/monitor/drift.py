"""Drift of live traffic against the reference statistics stored with the model, per window and overall.

:func:`~loopml.monitor.live_rows.load_live` reads a version's rows from the log;
:func:`summarise_column` reduces each
column to a profile (:mod:`loopml.monitor.stattests`) and scores every test on
every window and on the whole period; columns run on a small thread pool
(numpy releases the GIL while binning). :func:`decide` then picks the test that
decides each column, corrects the p-values across columns, and says "drift",
"ok", "not enough data" or "seasonal".

Default test (``monitoring.test: auto``), by column type and rows in the window:

* numeric (and the score): Kolmogorov-Smirnov below ``monitoring.large_sample``
  rows (1000), PSI from there on — with many rows every p-value test flags
  shifts too small to matter, while PSI is an effect size with a fixed scale;
* categorical: chi-square below ``large_sample`` rows, PSI on the category
  shares from there on.

``monitoring.tests`` overrides the test per column; a test that cannot score
a column (KS/Wasserstein on a categorical column or on an old reference without
a sketch) falls back to PSI. Thresholds: PSI > ``psi_threshold`` (0.2),
Jensen-Shannon > ``jensenshannon_threshold`` (0.1), normalised Wasserstein >
``wasserstein_threshold`` (0.1), and for KS and chi-square the p-value after
the ``correction`` across the columns of the window tested with a p-value
(Benjamini-Hochberg by default, Bonferroni or none) < ``p_value`` (0.001).
A window (or period) with fewer than ``monitoring.min_rows`` rows of a column
is "not enough data": no statistic, never drift.

Calendar features (transforms ``hour``, ``is_night``: a one-day cycle;
``day_of_week``, ``is_weekend``: one week) are compared with a reference that
mixes every hour and day, so a window covering less than their cycle differs
by design (a Saturday is all weekend): in such a window they are "seasonal",
with their statistic shown but never drift, and left out of the p-value
correction; over a window (or the whole period) whose rows span at least 95 %
of the cycle they are tested like any column.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from loopml.features.transforms import CALENDAR_CYCLE_US
from loopml.monitor.live_rows import SCORE, FloatArray, IntArray, LiveData
from loopml.monitor.stattests import (
    P_VALUE_TESTS,
    TEST_NAMES,
    CategoricalReference,
    ColumnReference,
    NumericReference,
    Scores,
    adjust_p_values,
    categorical_profile,
    finite_or_none,
    make_test,
    numeric_profile,
)
from loopml.spec.model import Monitoring, Spec
from loopml.train.reference import DEFAULT_EPSILON


@dataclass(frozen=True)
class DriftResult:
    """The drift verdict of one column over one window (or the whole period)."""

    feature: str
    test: str
    statistic: float | None
    drifted: bool
    rows: int
    status: str  # "ok" | "drift" | "not enough data" | "seasonal"
    p_value: float | None = None
    #: every test's statistic (``ks_p``/``chi2_p``: raw p-values) where it applies
    statistics: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "drifted": self.drifted,
            "rows": self.rows,
            "status": self.status,
            "statistics": dict(self.statistics),
        }


# -- references ----------------------------------------------------------------------------------


def column_references(reference: dict[str, Any], tolerance: float = 0.0) -> dict[str, ColumnReference]:
    """The stored reference of every monitored column: numeric features, categorical ones, then the score."""
    out: dict[str, ColumnReference] = {}
    for name, entry in reference.get("features", {}).items():
        out[name] = NumericReference.from_entry(name, entry, tolerance)
    for name, entry in reference.get("categorical", {}).items():
        out.setdefault(name, CategoricalReference.from_entry(name, entry))
    if reference.get("score") is not None:
        out[SCORE] = NumericReference.from_entry(SCORE, reference["score"], tolerance)
    return out


# -- per column ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSummary:
    """Everything the report needs of one column, per window with the whole period last (arrays of ``W + 1``)."""

    name: str
    kind: str  # "numeric" | "categorical"
    rows: IntArray
    nulls: IntArray
    out_of_range: IntArray | None  # numeric: values outside the reference range (with tolerance)
    other: IntArray | None  # categorical: values not among the reference categories
    scores: dict[str, Scores]


def summarise_column(
    ref: ColumnReference, values: FloatArray | pa.ChunkedArray, window: IntArray, n_windows: int, epsilon: float
) -> ColumnSummary:
    """Profile one column and score every applicable test on each window and on the whole period."""
    if isinstance(ref, NumericReference):
        profile = numeric_profile(ref, np.asarray(values, dtype=np.float64), window, n_windows).with_total()
        out_of_range = np.zeros(n_windows + 1, dtype=np.int64)
        if ref.low is not None and ref.high is not None and len(ref.points):
            j_low = int(np.searchsorted(ref.points, ref.low))
            j_high = int(np.searchsorted(ref.points, ref.high))
            out_of_range = profile.counts[:, : 2 * j_low + 1].sum(axis=1) + profile.counts[:, 2 * j_high + 2 : -1].sum(axis=1)
        other = None
    else:
        chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
        profile = categorical_profile(ref, chunked, window, n_windows).with_total()
        out_of_range = None
        other = np.asarray(profile.counts[:, len(ref.values)], dtype=np.int64)
    scores = {}
    for name in TEST_NAMES:
        test = make_test(name, epsilon)
        if test.applies_to(ref):
            scores[name] = test.fit(ref).score(profile)
    return ColumnSummary(ref.name, ref.kind, profile.rows, profile.nulls, out_of_range, other, scores)


def summarise(
    references: dict[str, ColumnReference], live: LiveData, window: IntArray, n_windows: int, epsilon: float = DEFAULT_EPSILON
) -> list[ColumnSummary]:
    """:func:`summarise_column` of every column with a reference, in parallel (the score last)."""

    def one(name: str) -> ColumnSummary | None:
        ref = references[name]
        if name == SCORE:
            values: Any = live.score
        elif isinstance(ref, NumericReference) and name in live.numeric:
            values = live.numeric[name]
        elif isinstance(ref, CategoricalReference) and name in live.categorical:
            values = live.categorical[name]
        else:
            return None
        return summarise_column(ref, values, window, n_windows, epsilon)

    workers = max(1, min(4, len(os.sched_getaffinity(0)), len(references)))
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, references))
    return [s for s in done if s is not None]


# -- decisions -----------------------------------------------------------------------------------


def chosen_test(summary: ColumnSummary, rows: int, settings: Monitoring) -> str:
    """The test that decides drift of this column for a window of ``rows`` rows (see the module doc)."""
    wanted: str = settings.tests.get(summary.name, settings.test)
    if wanted == "auto":
        p_test = "chi2" if summary.kind == "categorical" else "ks"
        wanted = p_test if rows < settings.large_sample else "psi"
    return wanted if wanted in summary.scores else "psi"


def thresholds(settings: Monitoring) -> dict[str, float]:
    """Each test's limit: a distance above it, or a corrected p-value below it (``ks``, ``chi2``), is drift."""
    return {
        "psi": settings.psi_threshold,
        "ks": settings.p_value,
        "chi2": settings.p_value,
        "jensenshannon": settings.jensenshannon_threshold,
        "wasserstein": settings.wasserstein_threshold,
    }


def _threshold(test: str, settings: Monitoring) -> float:
    return thresholds(settings).get(test, settings.p_value)


def calendar_cycles(spec: Spec) -> dict[str, int]:
    """The calendar features of a spec and the cycle (microseconds) each repeats over."""
    return {name: CALENDAR_CYCLE_US[t.op] for name, t in spec.features.transforms.items() if t.op in CALENDAR_CYCLE_US}


def window_spans(ts_us: IntArray, window: IntArray, n_windows: int) -> IntArray:
    """Microseconds between the first and the last row of each window, the whole period last (``W + 1``; 0 if empty)."""
    if len(ts_us) == 0:
        return np.zeros(n_windows + 1, dtype=np.int64)
    first = np.full(n_windows, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n_windows, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, window, ts_us)
    np.maximum.at(last, window, ts_us)
    spans = np.where(last >= first, last - first, 0)
    return np.append(spans, int(ts_us.max()) - int(ts_us.min())).astype(np.int64)


def decide(
    summaries: list[ColumnSummary],
    settings: Monitoring,
    spans: IntArray | None = None,
    cycles: dict[str, int] | None = None,
) -> list[list[DriftResult]]:
    """Per window (the whole period last): one :class:`DriftResult` per column, p-values corrected across columns.

    With ``spans`` (:func:`window_spans`) and ``cycles`` (:func:`calendar_cycles`), a calendar feature is
    "seasonal" in a window spanning less than 95 % of its cycle (see the module doc).
    """
    if not summaries:
        return []
    n_rows = len(summaries[0].rows)
    out: list[list[DriftResult]] = []
    for w in range(n_rows):
        tests = [chosen_test(s, int(s.rows[w]), settings) for s in summaries]
        seasonal = [_seasonal(s.name, w, spans, cycles) for s in summaries]
        enough = [int(s.rows[w]) >= settings.min_rows and not short for s, short in zip(summaries, seasonal, strict=True)]
        raw = np.array(
            [
                s.scores[t].p_value[w] if ok and t in P_VALUE_TESTS and s.scores[t].p_value is not None else np.nan  # type: ignore[index]
                for s, t, ok in zip(summaries, tests, enough, strict=True)
            ]
        )
        adjusted = adjust_p_values(raw, settings.correction)
        results = []
        for i, (s, test) in enumerate(zip(summaries, tests, strict=True)):
            rows = int(s.rows[w])
            if seasonal[i] and rows >= settings.min_rows:
                statistic = finite_or_none(float(s.scores[test].statistic[w]))
                results.append(DriftResult(s.name, test, statistic, False, rows, "seasonal", None, _statistics(s, w)))
                continue
            statistics = _statistics(s, w) if enough[i] else {}
            if not enough[i]:
                results.append(DriftResult(s.name, test, None, False, rows, "not enough data"))
                continue
            statistic = finite_or_none(float(s.scores[test].statistic[w]))
            p_value = finite_or_none(float(adjusted[i])) if test in P_VALUE_TESTS else None
            limit = _threshold(test, settings)
            if test in P_VALUE_TESTS:
                drifted = p_value is not None and p_value < limit
            else:
                drifted = statistic is not None and statistic > limit
            results.append(DriftResult(s.name, test, statistic, drifted, rows, "drift" if drifted else "ok", p_value, statistics))
        out.append(results)
    return out


def _seasonal(name: str, w: int, spans: IntArray | None, cycles: dict[str, int] | None) -> bool:
    cycle = (cycles or {}).get(name)
    return cycle is not None and spans is not None and int(spans[w]) < 0.95 * cycle


def _statistics(summary: ColumnSummary, w: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, scores in summary.scores.items():
        out[name] = finite_or_none(float(scores.statistic[w]))
        if scores.p_value is not None:
            out[f"{name}_p"] = finite_or_none(float(scores.p_value[w]))
    return out
