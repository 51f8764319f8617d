"""The SQL path of latest-value lookups: one DuckDB ``ASOF JOIN`` per column (see :mod:`loopml.features.asof`)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import duckdb

from loopml.features.asof.lookup import asof_view_table
from loopml.features.definitions import (
    has_indicator,
    indicator_name,
    missing_value,
    view_horizon,
    view_key,
    view_outputs,
)
from loopml.features.windows import last_event_column, literal_double, quote
from loopml.spec.model import Spec

_ONE_US = timedelta(microseconds=1)
_ORDER = 1 << 40  # positions < 2**40, as in windows.py
_names = itertools.count()


def is_asof_view(spec: Spec, view_name: str) -> bool:
    """Whether every output of the view is ``last`` (then this module computes it)."""
    outputs = view_outputs(spec, view_name)
    return bool(outputs) and all(o.function == "last" for o in outputs)


def asof_view_sql(
    spec: Spec,
    view_name: str,
    spine_rows: str,
    events: str,
    timestamp: str,
    row_id: str,
    in_span: str,
    last_event: bool,
    con: duckdb.DuckDBPyConnection | None = None,
) -> str:
    """A query of ``__srid`` and the view's outputs for every row of ``spine_rows``.

    ``spine_rows`` selects the entity key, ``__spine_ts`` (TIMESTAMP) and
    ``__srid``; ``events`` is the view's registered source (time column
    ``timestamp``, position ``row_id``); ``in_span`` is a SQL condition on
    the event rows that may skip events no spine row can see. With ``con``
    the rows are computed now by :func:`asof_view_table` (when it takes the
    keys) and the query reads them from an Arrow table registered in ``con``
    (one per call, kept as long as the connection: it holds the spine's rows,
    not the events); without it, the query is DuckDB ``ASOF JOIN`` SQL.
    """
    if con is not None:
        table = asof_view_table(con, spec, view_name, spine_rows, events, timestamp, row_id, last_event)
        if table is not None:
            name = f"__asof_{view_name}_{next(_names)}"
            con.register(name, table)
            return f"SELECT * FROM {quote(name)}"
    return _asof_sql(spec, view_name, spine_rows, events, timestamp, row_id, in_span, last_event)


# --------------------------------------------------------------------------- the numpy path


def _asof_sql(
    spec: Spec, view_name: str, spine_rows: str, events: str, timestamp: str, row_id: str, in_span: str, last_event: bool
) -> str:
    view = spec.features.views[view_name]
    key = quote(view_key(spec, view_name))
    delay_us = view.delay // _ONE_US
    shift = 1 if spec.features.inclusive else 0
    ts = f"CAST({quote(timestamp)} AS TIMESTAMP)"
    base = f"{key} IS NOT NULL AND {quote(timestamp)} IS NOT NULL AND {in_span}"
    spine = (
        f"SELECT *, epoch_us(__spine_ts) - {delay_us - shift} AS __vis, "
        f"(epoch_us(__spine_ts) - {delay_us - shift})::HUGEINT * {_ORDER} AS __visk FROM ({spine_rows})"
    )
    joins: list[str] = []
    columns = list(dict.fromkeys(o.column for o in view_outputs(spec, view_name)))
    for j, column in enumerate(columns):
        value = quote(column)
        joins.append(
            f"ASOF LEFT JOIN (SELECT {key}, epoch_us({ts})::HUGEINT * {_ORDER} + {quote(row_id)} AS __k, {ts} AS __e, "
            f"CAST({value} AS DOUBLE) AS __v FROM {quote(events)} WHERE {base} AND {value} IS NOT NULL) e{j} "
            f"ON s.{key} = e{j}.{key} AND s.__visk > e{j}.__k"
        )
    indicator = has_indicator(spec, view_name)
    need_latest = last_event or indicator or view.ttl is not None
    if need_latest:
        joins.append(
            f"ASOF LEFT JOIN (SELECT {key}, epoch_us({ts}) AS __eus, {ts} AS __e FROM {quote(events)} WHERE {base}) el "
            f"ON s.{key} = el.{key} AND s.__vis > el.__eus"
        )
    age = "epoch_us(s.__spine_ts) - epoch_us({})"
    invalid = f"s.{key} IS NULL OR s.__spine_ts IS NULL"
    expired = "" if view.ttl is None else f" OR {age.format('el.__e')} > {view.ttl // _ONE_US}"
    default = spec.features.default
    outer: list[str] = []
    for output in view_outputs(spec, view_name):
        j = columns.index(output.column)
        missing = literal_double(missing_value(output.function, default))
        gone = f"e{j}.__e IS NULL OR {age.format(f'e{j}.__e')} >= {(view.delay + output.window) // _ONE_US}"
        outer.append(
            f"CAST(CASE WHEN {invalid}{expired} OR {gone} THEN {missing} ELSE e{j}.__v END AS DOUBLE) AS {quote(output.name)}"
        )
    if indicator:
        horizon = view_horizon(view) // _ONE_US
        outer.append(
            f"CAST(CASE WHEN {invalid} OR el.__e IS NULL OR {age.format('el.__e')} >= {horizon}{expired} "
            f"THEN 1.0 ELSE 0.0 END AS DOUBLE) AS {quote(indicator_name(view_name))}"
        )
    if last_event:
        outer.append(f"CASE WHEN {invalid} THEN NULL ELSE el.__e END AS {quote(last_event_column(view_name))}")
    return f"SELECT s.__srid, {', '.join(outer)} FROM ({spine}) s {' '.join(joins)}"
