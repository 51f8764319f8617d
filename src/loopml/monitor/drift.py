"""Drift of live traffic against the reference statistics stored with the model, per window and overall.

:func:`load_live` reads the rows of one model version from the prediction
log's ``labelled`` view in one DuckDB query: the features straight from their
typed columns where the Parquet log has them, else parsed from their JSON text
with ``json_transform`` (numbers for the numeric reference columns, strings for
the categorical ones); rows are put in time order with numpy (a DuckDB
``ORDER BY`` would move all 50 columns through its sort). :func:`summarise_column` reduces each
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

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from loopml.features.transforms import CALENDAR_CYCLE_US
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
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.records import NUMBER_PREFIX, STRING_PREFIX, TYPED_MARKER, WIDE_PREDICTIONS
from loopml.spec.model import Monitoring, Spec
from loopml.train.reference import DEFAULT_EPSILON

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SCORE = "score"
#: the schema (JSON keys and types) is read from this many of the latest logged rows
SCHEMA_SAMPLE = 1000
#: DuckDB's JSON structure types of a numeric value (NULL: only nulls seen)
NUMBER_TYPES = frozenset({"DOUBLE", "UBIGINT", "BIGINT", "NULL"})


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


# -- reading the log -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveData:
    """The logged rows of one model version, oldest first, as columns."""

    ts_us: IntArray  # microseconds since the epoch (naive local time, as logged)
    score: FloatArray
    label: FloatArray  # NaN while no label arrived
    latency_ms: FloatArray
    numeric: dict[str, FloatArray]
    categorical: dict[str, pa.ChunkedArray]
    #: values of the wrong JSON type per column (a string where a number belongs), set to NULL
    type_errors: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.ts_us)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return con.sql(sql).to_arrow_table()


@dataclass(frozen=True)
class LoggedSchema:
    """The JSON keys of the features of the latest logged rows: DuckDB's type of each, and how many rows hold it."""

    rows: int
    types: dict[str, str]
    present: dict[str, int]


def logged_schema(con: duckdb.DuckDBPyConnection, sample: int = SCHEMA_SAMPLE) -> LoggedSchema | None:
    """:class:`LoggedSchema` of the latest ``sample`` rows of the connection's ``predictions``; None if there are none."""
    cut = con.execute(f"SELECT ts FROM predictions ORDER BY ts DESC LIMIT 1 OFFSET {max(sample - 1, 0)}").fetchall()
    where = "" if not cut else "WHERE ts >= $since"
    params = {} if not cut else {"since": cut[0][0]}
    found = con.execute(f"SELECT count(*), json_group_structure(features::JSON) FROM predictions {where}", params).fetchall()
    if not found or not found[0][0]:
        return None
    structure = json.loads(found[0][1]) if found[0][1] else {}
    keys = con.execute(
        f"SELECT k, count(*) FROM (SELECT unnest(json_keys(features)) AS k FROM predictions {where}) GROUP BY k", params
    ).fetchall()
    types = {str(k): str(v) for k, v in structure.items()} if isinstance(structure, dict) else {}
    return LoggedSchema(int(found[0][0]), types, {str(k): int(n) for k, n in keys})


def load_live(
    con: duckdb.DuckDBPyConnection, numeric: Sequence[str], categorical: Sequence[str], schema: LoggedSchema | None = None
) -> LiveData:
    """Rows of the connection's ``labelled`` view (already bounded by time/version), features as columns, oldest first.

    Rows from parts with typed feature columns (:mod:`loopml.predlog`) are read from those
    columns as they are: no JSON parsed. The JSON of the other rows (older parts, the PostgreSQL
    log, and the rare row whose typed value is not of the wanted type: a string logged for a numeric
    feature, a number for a categorical one) is parsed, numbers straight to DOUBLE. When the schema
    sample (:func:`logged_schema`) shows a numeric column holding anything else (text, booleans...),
    or DuckDB refuses a value, every JSON value is read as text instead and cast with ``TRY_CAST``,
    counting the ones that are not numbers (``type_errors``).
    """
    names = [*numeric, *categorical]
    stored = _columns(con, WIDE_PREDICTIONS)
    source = WIDE_PREDICTIONS if stored else "predictions"
    # the labels apart (a join would shuffle the rows, and sorting 50 columns back costs more than the lookup)
    labels = _fetch(con, "SELECT request_id, label FROM labelled WHERE label IS NOT NULL")
    base = "epoch_us(ts) AS ts_us, score, latency_ms" + (", request_id" if labels.num_rows else "")

    def fetch(sql: str) -> pa.Table:
        return _in_order(_with_labels(_fetch(con, sql), labels))

    if not names:
        return _live(fetch(f"SELECT {base} FROM {source}"), [], [], {})
    # result columns by position (n0.., c0..): a feature may be called like a base column
    aliases = {name: f"n{i}" for i, name in enumerate(numeric)} | {name: f"c{i}" for i, name in enumerate(categorical)}
    typed = _typed_columns(stored, numeric, categorical)
    if typed is not None and not _json_rows(con, typed[0]):  # every row typed: no JSON parsed at all
        selected = [f"{typed[1][name]} AS {aliases[name]}" for name in names]
        # the filter only drops untyped rows logged since the count (as if they had come a moment later)
        table = fetch(f"SELECT {base}, {', '.join(selected)} FROM {source} WHERE coalesce({typed[0]}, FALSE)")
        return _live(table, numeric, categorical, {name: table.column(aliases[name]) for name in names})

    def pick(name: str, from_json: str) -> str:
        """The column's value: typed where the row's typed columns are usable, else ``from_json``."""
        if typed is None:
            return from_json
        return f"CASE WHEN coalesce({typed[0]}, FALSE) THEN {typed[1][name]} ELSE {from_json} END"

    def parsed(spec: str) -> str:
        """The predictions with ``f``: the features parsed by ``spec`` (NULL in rows read from their typed columns)."""
        transform = f"json_transform(features, {spec})"
        if typed is not None:
            transform = f"CASE WHEN NOT coalesce({typed[0]}, FALSE) THEN {transform} END"
        return f"(SELECT *, {transform} AS f FROM {source})"

    wanted = {name: "DOUBLE" for name in numeric} | {name: "VARCHAR" for name in categorical}
    suspect = schema is not None and any(schema.types.get(name, "NULL") not in NUMBER_TYPES for name in numeric)
    if not suspect:
        try:
            parts = [base] + [f"{pick(name, f'struct_extract(f, {_sql_string(name)})')} AS {aliases[name]}" for name in names]
            table = fetch(f"SELECT {', '.join(parts)} FROM {parsed(_sql_string(json.dumps(wanted)))}")
            return _live(table, numeric, categorical, {name: table.column(aliases[name]) for name in names})
        except (duckdb.ConversionException, duckdb.InvalidInputException):
            pass  # a value of the wrong type somewhere: read everything as text, count and null the bad ones
    spec = _sql_string(json.dumps(dict.fromkeys(names, "VARCHAR")))
    parts = [base]
    for i, name in enumerate(numeric):
        field_sql = f"struct_extract(f, {_sql_string(name)})"
        parts.append(f"{pick(name, f'TRY_CAST({field_sql} AS DOUBLE)')} AS n{i}")
        # f is NULL in the typed rows: only parsed values are counted
        parts.append(f"count_if({field_sql} IS NOT NULL AND TRY_CAST({field_sql} AS DOUBLE) IS NULL) OVER () AS e{i}")
    for i, name in enumerate(categorical):
        parts.append(f"{pick(name, f'struct_extract(f, {_sql_string(name)})')} AS c{i}")
    table = fetch(f"SELECT {', '.join(parts)} FROM {parsed(spec)}")
    columns = {name: table.column(f"n{i}") for i, name in enumerate(numeric)}
    columns |= {name: table.column(f"c{i}") for i, name in enumerate(categorical)}
    errors = {}
    for i, name in enumerate(numeric):
        count = int(table.column(f"e{i}")[0].as_py() or 0) if table.num_rows else 0
        if count:
            errors[name] = count
    return _live(table, numeric, categorical, columns, errors)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> dict[str, str]:
    """The columns of a view of the connection (name -> DuckDB type); empty when there is no such view."""
    rows = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = $view", {"view": view}).fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _typed_columns(
    stored: dict[str, str], numeric: Sequence[str], categorical: Sequence[str]
) -> tuple[str, dict[str, str]] | None:
    """How to read the wanted columns from the typed ones: (when a row's typed columns are usable, name -> SQL value).

    None when the log has no typed columns at all. A row's typed columns are usable when its part has
    them (the marker is true) and none of its wanted columns holds a value of the other type (a
    string for a numeric feature or a number for a categorical one: those rows keep what the JSON
    gives). A feature without a typed column is NULL (every value missing) in the typed rows.
    """
    if TYPED_MARKER not in stored:
        return None
    values: dict[str, str] = {}
    usable = [TYPED_MARKER]
    for names, want, other, null in (
        (numeric, NUMBER_PREFIX, STRING_PREFIX, "NULL::DOUBLE"),
        (categorical, STRING_PREFIX, NUMBER_PREFIX, "NULL::VARCHAR"),
    ):
        for name in names:
            values[name] = _ident(want + name) if want + name in stored else null
            if other + name in stored:
                usable.append(f"{_ident(other + name)} IS NULL")
    return " AND ".join(usable), values


def _json_rows(con: duckdb.DuckDBPyConnection, usable: str) -> int:
    """How many selected rows need their JSON parsed (cheap: reads the marker and a few typed columns)."""
    rows = con.execute(f"SELECT count(*) FROM {WIDE_PREDICTIONS} WHERE NOT coalesce({usable}, FALSE)").fetchall()
    return int(rows[0][0])


def _with_labels(table: pa.Table, labels: pa.Table) -> pa.Table:
    """``table`` with a ``label`` column: the label of its ``request_id`` in ``labels`` (NULL while none arrived)."""
    if not labels.num_rows:
        return table.append_column("label", pa.nulls(table.num_rows, pa.float64()))
    found = pc.index_in(table.column("request_id"), value_set=labels.column("request_id").combine_chunks())
    return table.append_column("label", pc.take(labels.column("label").combine_chunks(), found))


def _in_order(table: pa.Table) -> pa.Table:
    """``table`` (with ``ts_us``) oldest first: sorted here, as the log gives it in write order almost always."""
    ts = np.asarray(table.column("ts_us").to_numpy(zero_copy_only=False))
    if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        table = table.take(pa.array(np.argsort(ts, kind="stable")))
    return table


def _floats(column: pa.Array | pa.ChunkedArray) -> FloatArray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _live(
    table: pa.Table,
    numeric: Sequence[str],
    categorical: Sequence[str],
    columns: dict[str, Any],
    errors: dict[str, int] | None = None,
) -> LiveData:
    return LiveData(
        ts_us=np.asarray(table.column("ts_us").to_numpy(zero_copy_only=False), dtype=np.int64),
        score=_floats(table.column("score")),
        label=_floats(table.column("label")),
        latency_ms=_floats(table.column("latency_ms")),
        numeric={name: _floats(columns[name]) for name in numeric},
        categorical={
            name: pa.chunked_array([columns[name]]) if isinstance(columns[name], pa.Array) else columns[name]
            for name in categorical
        },
        type_errors=errors or {},
    )


def current_values(
    log: PredictionLogBackend, version: int, since: datetime | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logged feature columns (every key of the first row) and scores of one model version, NaN for missing."""
    with log.connect(since=since, model_version=version) as con:
        rows = con.execute("SELECT features FROM predictions ORDER BY ts LIMIT 1").fetchall()
        first = rows[0] if rows else None
        names = [k for k, v in json.loads(first[0]).items() if not isinstance(v, str)] if first else []
        live = load_live(con, names, [])
    return live.numeric, live.score


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
