"""The DuckDB SQL of a feature view's window aggregations (see :mod:`loopml.features.offline`).

One builder for both ways of computing features: over the source table itself
(the fast path, every row is an event and a spine row) and over the union of a
spine with the event stream (the general point-in-time join of spine files;
the tests also use it as the offline reference the online store must equal).
Both hand it a relation with these columns:

- the entity key, under its own name (``customer_id``);
- ``__ts``: the row's time as ``TIMESTAMP`` (microseconds);
- ``__ev``: 1 for an event row, NULL for a spine-only row;
- ``__ets``: the event time for an event row, NULL for a spine-only row;
- ``__ord``: the event's position in its source (ties of ``last``), NULL otherwise;
- the aggregated value columns, NULL on spine-only rows.

Window frames are ``RANGE`` frames over ``__ts`` in exact microseconds. A
``RANGE ... INTERVAL x PRECEDING`` bound is inclusive, so the exclusive bounds
of the semantics are one microsecond further in: ``t - d - w < s`` becomes
``s >= t - (d + w - 1us)`` and ``s < t - d`` becomes ``s <= t - (d + 1us)``.
A frame whose start lies after its end is empty.

The null indicator (``{view}_missing``, see
:func:`loopml.features.definitions.history_missing`) is computed from the
latest visible event time, ``max(__ets)`` over ``UNBOUNDED PRECEDING`` up to
the upper bound, the same column the ttl uses; a view without a ttl needs no
such frame: its indicator is "no event in the longest window", a count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from loopml.features.definitions import (
    has_indicator,
    indicator_name,
    missing_value,
    view_horizon,
    view_key,
    view_outputs,
)
from loopml.spec.model import AggFunction, Spec

__all__ = ["ViewSql", "last_event_column", "literal_double", "quote", "view_sql"]

_ONE_US = timedelta(microseconds=1)
_ORDER_BITS = 1 << 40  # __ord < 2**40 rows, so (time, ord) packs into one HUGEINT


def quote(identifier: str) -> str:
    """A DuckDB identifier in double quotes."""
    return '"' + identifier.replace('"', '""') + '"'


def last_event_column(view_name: str) -> str:
    """Name of the column holding a view's latest visible event time (for the ttl)."""
    return f"__last_event__{view_name}"


def _us(value: timedelta) -> int:
    return value // _ONE_US


def _interval(value: timedelta) -> str:
    return f"INTERVAL ({_us(value)}) MICROSECONDS PRECEDING"


def literal_double(value: float) -> str:
    """A DOUBLE literal, NaN and infinities included."""
    if math.isnan(value):
        return "CAST('NaN' AS DOUBLE)"
    if math.isinf(value):
        return "CAST('Infinity' AS DOUBLE)" if value > 0 else "CAST('-Infinity' AS DOUBLE)"
    return f"CAST({value!r} AS DOUBLE)"


def _upper(delay: timedelta, inclusive: bool) -> timedelta:
    return delay if inclusive else delay + _ONE_US


def _aggregate(function: AggFunction, column: str) -> str:
    value = f"CAST({quote(column)} AS DOUBLE)"
    if function == "count":
        return "count(__ev)"
    if function == "last":
        order = f"CASE WHEN {quote(column)} IS NOT NULL THEN epoch_us(__ets)::HUGEINT * {_ORDER_BITS} + __ord END"
        return f"arg_max({value}, {order})"
    sql_name = {"sum": "sum", "mean": "avg", "std": "stddev_samp", "min": "min", "max": "max"}[function]
    return f"{sql_name}({value})"


@dataclass(frozen=True)
class ViewSql:
    """The pieces of one view's query.

    ``inner`` are window aggregates selected over the base relation (raw, may be
    NULL), ``windows`` the named ``WINDOW`` definitions they use and ``outer``
    the final feature expressions over the inner result: missing history and
    the ttl resolved, every feature a DOUBLE named as in the spec.
    """

    inner: list[str]
    windows: list[str]
    outer: list[str]


def view_sql(spec: Spec, view_name: str, prefix: str, last_event: bool = False) -> ViewSql:
    """SQL pieces computing every output of ``view_name`` (aliases start with ``prefix``).

    With ``last_event``, ``outer`` also yields :func:`last_event_column` (the
    latest event time visible at the row's time, NULL without one).
    """
    view = spec.features.views[view_name]
    key = quote(view_key(spec, view_name))
    inclusive = spec.features.inclusive
    upper = _interval(_upper(view.delay, inclusive))
    partition = f"PARTITION BY {key} ORDER BY __ts"
    windows: dict[timedelta, str] = {}
    inner: list[str] = []
    outer: list[str] = []
    last = f"{prefix}_last"
    indicator = has_indicator(spec, view_name)
    # without a ttl the indicator is "no event in the longest window": a count, no extra unbounded frame
    need_last = last_event or view.ttl is not None
    window_defs: list[str] = []
    if need_last:
        name = f"{prefix}_wl"
        window_defs.append(f"{name} AS ({partition} RANGE BETWEEN UNBOUNDED PRECEDING AND {upper})")
        inner.append(f"max(__ets) OVER {name} AS {last}")
    invalid = f"{key} IS NULL OR __ts IS NULL"
    expired = "" if view.ttl is None else f" OR epoch_us(__ts) - epoch_us({last}) > {_us(view.ttl)}"
    invalid += expired
    default = spec.features.default
    counts: dict[timedelta, str] = {}  # window -> raw alias of a count over it
    for i, output in enumerate(view_outputs(spec, view_name)):
        if output.window not in windows:
            name = f"{prefix}_w{len(windows)}"
            windows[output.window] = name
            lower = _interval(view.delay + output.window - _ONE_US)
            window_defs.append(f"{name} AS ({partition} RANGE BETWEEN {lower} AND {upper})")
        raw = f"{prefix}_{i}"
        inner.append(f"{_aggregate(output.function, output.column)} OVER {windows[output.window]} AS {raw}")
        if output.function == "count":
            counts[output.window] = raw
        missing = literal_double(missing_value(output.function, default))
        outer.append(
            f"CAST(CASE WHEN {invalid} THEN {missing} ELSE coalesce(CAST({raw} AS DOUBLE), {missing}) END AS DOUBLE)"
            f" AS {quote(output.name)}"
        )
    if indicator:
        if need_last:
            no_history = f"{last} IS NULL OR epoch_us(__ts) - epoch_us({last}) >= {_us(view_horizon(view))}"
        else:
            longest = max(windows)
            if longest not in counts:
                counts[longest] = f"{prefix}_n"
                inner.append(f"count(__ev) OVER {windows[longest]} AS {counts[longest]}")
            no_history = f"{counts[longest]} = 0"
        outer.append(
            f"CAST(CASE WHEN {key} IS NULL OR __ts IS NULL OR {no_history}{expired} THEN 1.0 ELSE 0.0 END AS DOUBLE)"
            f" AS {quote(indicator_name(view_name))}"
        )
    if last_event:
        alias = quote(last_event_column(view_name))
        outer.append(f"CASE WHEN {key} IS NULL OR __ts IS NULL THEN NULL ELSE {last} END AS {alias}")
    return ViewSql(inner=inner, windows=window_defs, outer=outer)
