"""A view's features as of any time, computed from an entity's events: the online window arithmetic.

The one implementation every online backend uses (the stores keep events, see
:mod:`loopml.features.online.base`; the assembler and ``loopml features get`` call
:meth:`ViewWindows.values`). It mirrors the offline SQL of
:mod:`loopml.features.windows` exactly:

- a feature at time ``t`` of a view with delay ``d`` and window ``w``
  aggregates the events with ``t - d - w < s < t - d`` (``s <= t - d`` when
  ``features.inclusive``), all in integer microseconds;
- ``count`` counts events (NULL values included); ``sum``, ``mean``, ``std``
  (sample), ``min``, ``max`` and ``last`` skip NULLs; ``last`` is the value of
  the latest non-NULL event by ``(time, id)``; ``std`` of fewer than two
  values is missing; NaN and infinities behave as in DuckDB (NaN propagates
  through ``sum``/``mean``/``std`` and sorts above every number, so ``max``
  is NaN and ``min`` skips it; any infinity makes ``std`` NaN);
- missing history (no value in the window) gives
  :func:`~loopml.features.definitions.missing_value`; the ttl makes every
  output missing when the latest visible event is older than ``t - ttl``;
- the null indicator is :func:`~loopml.features.definitions.history_missing`.

Written by hand in plain Python rather than numpy: an entity holds 10-200
events and a view has a handful of outputs, so numpy's fixed cost per call
(several microseconds per slice, reduction and NULL mask) exceeds the work;
``bisect`` finds each window in the sorted times and a slice of a tuple plus
``math.fsum`` (exactly rounded, so as close to DuckDB's sum as a double
allows) does the rest. Measured on the 2-core development machine: the
example's customer view (count and mean over 1d, 7d, 30d) over 120 events
takes about 15 µs here against about 48 µs with the numpy equivalent
(``searchsorted``, slices, a NaN mask and ``mean`` per window).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from loopml.features.definitions import (
    has_indicator,
    history_missing,
    indicator_name,
    missing_value,
    view_horizon,
    view_outputs,
    view_value_columns,
)
from loopml.features.online.base import EventLog
from loopml.spec.model import AggFunction, Spec

__all__ = ["ViewWindows", "aggregate"]

_ONE_US = timedelta(microseconds=1)
Values = Sequence[float | None]


def _present(values: Values) -> list[float]:
    return [v for v in values if v is not None]


def _sum(values: list[float]) -> float:
    try:
        return math.fsum(values)
    except OverflowError:  # a finite overflow: the plain sum is +-inf like DuckDB's
        return sum(values)
    except ValueError:  # inf + -inf
        return math.nan


def _agg_sum(values: Values) -> float | None:
    present = _present(values)
    return _sum(present) if present else None


def _agg_mean(values: Values) -> float | None:
    present = _present(values)
    return _sum(present) / len(present) if present else None


def _agg_std(values: Values) -> float | None:
    present = _present(values)
    n = len(present)
    if n < 2:
        return None
    if not all(math.isfinite(v) for v in present):
        return math.nan
    try:
        mean = math.fsum(present) / n
        return math.sqrt(math.fsum((v - mean) * (v - mean) for v in present) / (n - 1))
    except OverflowError:
        return math.inf


def _agg_min(values: Values) -> float | None:
    present = _present(values)
    if not present:
        return None
    numbers = [v for v in present if not math.isnan(v)]
    return min(numbers) if numbers else math.nan


def _agg_max(values: Values) -> float | None:
    present = _present(values)
    if not present:
        return None
    return math.nan if any(math.isnan(v) for v in present) else max(present)


def _agg_last(values: Values) -> float | None:
    for value in reversed(values):
        if value is not None:
            return value
    return None


_AGGREGATES: dict[str, Callable[[Values], float | None]] = {
    "sum": _agg_sum,
    "mean": _agg_mean,
    "std": _agg_std,
    "min": _agg_min,
    "max": _agg_max,
    "last": _agg_last,
}


def aggregate(function: AggFunction, values: Values) -> float | None:
    """One aggregate over a window's values in ``(time, id)`` order; ``None`` when SQL would give NULL.

    ``count`` is the number of values, NULLs included.
    """
    if function == "count":
        return float(len(values))
    return _AGGREGATES[function](values)


@dataclass(frozen=True)
class _Output:
    name: str
    function: AggFunction
    column: int  # index into the view's value columns, -1 for count
    window_us: int
    missing: float


@dataclass(frozen=True)
class ViewWindows:
    """The compiled window plan of one view: :meth:`values` computes all its features at a time."""

    view: str
    columns: tuple[str, ...]
    outputs: tuple[_Output, ...]
    delay_us: int
    ttl_us: int | None
    inclusive: bool
    horizon_us: int
    indicator: str | None
    #: kept to call the shared definition of the null indicator
    spec: Spec = field(repr=False, compare=False)

    @classmethod
    def from_spec(cls, spec: Spec, view_name: str) -> ViewWindows:
        view = spec.features.views[view_name]
        columns = view_value_columns(spec, view_name)
        default = spec.features.default
        outputs = tuple(
            _Output(
                name=o.name,
                function=o.function,
                column=-1 if o.function == "count" else columns.index(o.column),
                window_us=o.window // _ONE_US,
                missing=missing_value(o.function, default),
            )
            for o in view_outputs(spec, view_name)
        )
        return cls(
            view=view_name,
            columns=tuple(columns),
            outputs=outputs,
            delay_us=view.delay // _ONE_US,
            ttl_us=None if view.ttl is None else view.ttl // _ONE_US,
            inclusive=spec.features.inclusive,
            horizon_us=view_horizon(view) // _ONE_US,
            indicator=indicator_name(view_name) if has_indicator(spec, view_name) else None,
            spec=spec,
        )

    @property
    def names(self) -> list[str]:
        """The feature names :meth:`values` returns, in order (outputs, then the indicator if any)."""
        return [o.name for o in self.outputs] + ([self.indicator] if self.indicator else [])

    def missing(self) -> list[float]:
        """The values of an entity without visible history (an unknown entity)."""
        return [o.missing for o in self.outputs] + ([1.0] if self.indicator else [])

    def values(self, log: EventLog | None, at_us: int) -> list[float]:
        """Every feature of the view as of ``at_us`` (epoch µs) from one entity's events, in :attr:`names` order."""
        if log is None or not log.ts or len(log.values) != len(self.columns):
            return self.missing()
        ts = log.ts
        upper = at_us - self.delay_us
        hi = bisect_right(ts, upper) if self.inclusive else bisect_left(ts, upper)
        last_visible = ts[hi - 1] if hi else None
        if hi == 0 or (self.ttl_us is not None and at_us - ts[hi - 1] > self.ttl_us):
            return self.missing()
        starts: dict[int, int] = {}
        out: list[float] = []
        for o in self.outputs:
            lo = starts.get(o.window_us)
            if lo is None:
                lo = starts[o.window_us] = bisect_right(ts, upper - o.window_us, 0, hi)
            if o.function == "count":
                out.append(float(hi - lo))
                continue
            value = aggregate(o.function, log.values[o.column][lo:hi]) if lo < hi else None
            out.append(o.missing if value is None else value)
        if self.indicator:
            out.append(1.0 if history_missing(self.spec, self.view, at_us, last_visible) else 0.0)
        return out
