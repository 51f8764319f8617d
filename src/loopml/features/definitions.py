"""What the spec's ``features`` section means: column lists, view outputs, missing values.

Everything here is a pure function of the :class:`~loopml.spec.model.Spec`:
the ordered list of model input columns, the outputs of each view (with
duplicate ``count`` outputs folded into one), the value a feature takes when
an entity has no visible history, the view's null indicator (shared by the
offline SQL, which mirrors :func:`history_missing`, and the online path, which
calls it), and the checks the spec model leaves to the feature stage (positive
windows, non-negative delays and ttls, no ``last`` over non-numeric columns
because every feature is a float).

The null indicator ``{view}_missing`` of a row at time ``t`` is 1.0 when the
entity has no event inside the view's longest window (``t - d - W < s`` and
``s < t - d``, or ``<=`` when inclusive), when the ttl has expired (the latest
visible event is older than ``t - ttl``), or when the row has no key or time;
else 0.0. Both conditions only need the latest visible event time, so an
online store that keeps the view's horizon (delay + longest window) of events
per entity has all it needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from loopml.errors import LoopmlError
from loopml.spec.model import AggFunction, FeatureView, Spec

__all__ = [
    "LAST_EVENT_KEY",
    "ViewOutput",
    "check_features",
    "feature_columns",
    "has_indicator",
    "history_missing",
    "indicator_name",
    "latest_visible",
    "missing_value",
    "numeric_request_features",
    "request_time_feature",
    "string_request_features",
    "view_horizon",
    "view_key",
    "view_outputs",
    "view_value_columns",
]

#: Reserved key under which the online store keeps an entity's latest visible
#: event time (epoch microseconds) next to its feature values, for the ttl.
LAST_EVENT_KEY = "__last_event_us"

_ONE_US = timedelta(microseconds=1)
_NUMERIC_TYPES = {"int", "float", "bool"}
_NON_FEATURE_REQUEST_TYPES = {"timestamp", "string"}


@dataclass(frozen=True)
class ViewOutput:
    """One feature column of a view: ``function`` of ``column`` over ``window``."""

    name: str
    column: str
    function: AggFunction
    window: timedelta


def view_outputs(spec: Spec, view_name: str) -> list[ViewOutput]:
    """The view's output columns in ``FeatureView.outputs`` order, each name once.

    Two aggregations that both ask for ``count`` over the same window give the
    same name (``count`` drops the column name); it is the same number of rows,
    so the first one is kept.
    """
    view = spec.features.views[view_name]
    seen: set[str] = set()
    out: list[ViewOutput] = []
    for name, agg, fn, window in view.outputs(view_name):
        if name not in seen:
            seen.add(name)
            out.append(ViewOutput(name=name, column=agg.column, function=fn, window=window))
    return out


def view_key(spec: Spec, view_name: str) -> str:
    """The entity key column of a view (``customer_id`` for the ``customer`` entity)."""
    return spec.entities[spec.features.views[view_name].entity].key


def view_value_columns(spec: Spec, view_name: str) -> list[str]:
    """Source columns a view aggregates (in first-use order), beyond key and timestamp."""
    columns: list[str] = []
    for output in view_outputs(spec, view_name):
        if output.function != "count" and output.column not in columns:
            columns.append(output.column)
    return columns


def string_request_features(spec: Spec) -> list[str]:
    """String-typed request features: carried as text columns in training sets, never model inputs themselves."""
    return [name for name, rf in spec.features.request.items() if rf.type == "string"]


def numeric_request_features(spec: Spec) -> list[str]:
    """Request features that are model inputs themselves (not timestamp or string)."""
    return [name for name, rf in spec.features.request.items() if rf.type not in _NON_FEATURE_REQUEST_TYPES]


def request_time_feature(spec: Spec) -> str | None:
    """The first timestamp-typed request feature: the event time of a request, if any."""
    for name, rf in spec.features.request.items():
        if rf.type == "timestamp":
            return name
    return None


def feature_columns(spec: Spec) -> list[str]:
    """The model's input columns in their fixed order.

    Every view output (views in spec order, then ``outputs()`` order, then the
    view's null indicator if it has one), then the numeric request features,
    then the transforms, minus ``features.exclude``.
    """
    names: list[str] = []
    for view_name in spec.features.views:
        names.extend(o.name for o in view_outputs(spec, view_name))
        if has_indicator(spec, view_name):
            names.append(indicator_name(view_name))
    names.extend(numeric_request_features(spec))
    names.extend(spec.features.transforms)
    excluded = set(spec.features.exclude)
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name not in excluded and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def missing_value(function: AggFunction, default: float) -> float:
    """What a feature is without visible history: counts and sums are 0, the rest ``default``."""
    return 0.0 if function in ("count", "sum") else default


def indicator_name(view_name: str) -> str:
    """The null-indicator column of a view: ``{view}_missing``."""
    return f"{view_name}_missing"


def has_indicator(spec: Spec, view_name: str) -> bool:
    """Whether the view adds :func:`indicator_name` (its ``indicator``, else ``features.null_indicators``)."""
    own = spec.features.views[view_name].indicator
    return spec.features.null_indicators if own is None else own


def view_horizon(view: FeatureView) -> timedelta:
    """How far back (delay + longest window) an event can still count at some time."""
    return view.delay + max((w for agg in view.aggregations for w in agg.windows), default=timedelta(0))


def latest_visible(spec: Spec, view_name: str, at_us: int, event_times_us: Iterable[int]) -> int | None:
    """The latest event time visible at ``at_us`` (``s < t - d``, or ``<=`` when inclusive), epoch µs."""
    cutoff = at_us - spec.features.views[view_name].delay // _ONE_US
    inclusive = spec.features.inclusive
    visible = [s for s in event_times_us if (s <= cutoff if inclusive else s < cutoff)]
    return max(visible, default=None)


def history_missing(spec: Spec, view_name: str, at_us: int | None, last_visible_us: int | None) -> bool:
    """True when the view has no visible history at ``at_us``: the null indicator's value.

    ``last_visible_us`` is the entity's latest event visible at ``at_us`` (see
    :func:`latest_visible`), None without one. Missing when there is no such
    event, when it is outside the longest window (``t - s >= d + W``), or when
    the ttl has expired (``t - s > ttl``); also when the row has no time.
    """
    if at_us is None or last_visible_us is None:
        return True
    view = spec.features.views[view_name]
    age = at_us - last_visible_us
    if age >= view_horizon(view) // _ONE_US:
        return True
    return view.ttl is not None and age > view.ttl // _ONE_US


def _view_problems(spec: Spec, view_name: str, view: FeatureView) -> list[str]:
    where = f"features.views.{view_name}"
    problems: list[str] = []
    if view.delay < timedelta(0):
        problems.append(f"{where}.delay: must not be negative")
    if view.ttl is not None and view.ttl <= timedelta(0):
        problems.append(f"{where}.ttl: must be positive")
    source = spec.sources[view.source]
    for i, agg in enumerate(view.aggregations):
        for window in agg.windows:
            if window <= timedelta(0):
                problems.append(f"{where}.aggregations.{i}.windows: windows must be positive")
        rule = source.columns.get(agg.column)
        if rule is not None and rule.type not in _NUMERIC_TYPES and set(agg.functions) - {"count"}:
            problems.append(
                f"{where}.aggregations.{i}.functions: column {agg.column!r} is {rule.type}; "
                "only count applies (features are numbers)"
            )
    return problems


def check_features(spec: Spec) -> None:
    """Raise :class:`LoopmlError` for feature definitions the feature stage cannot compute."""
    problems: list[str] = []
    for view_name, view in spec.features.views.items():
        problems.extend(_view_problems(spec, view_name, view))
    for name, transform in spec.features.transforms.items():
        edges = transform.edges or []
        if transform.op == "bucket" and (
            not edges or not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in itertools.pairwise(edges))
        ):
            problems.append(f"features.transforms.{name}.edges: bucket needs finite, strictly increasing edges")
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LoopmlError(f"{problems[0]}{more}")
