"""What the spec's ``features`` section means: column lists, view outputs, missing values.

Everything here is a pure function of the :class:`~loopml.spec.model.Spec`:
the ordered list of model input columns, the outputs of each view (with
duplicate ``count`` outputs folded into one), the value a feature takes when
an entity has no visible history, and the checks the spec model leaves to the
feature stage (positive windows, non-negative delays and ttls, no ``last`` over
non-numeric columns because every feature is a float).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from loopml.errors import LoopmlError
from loopml.spec.model import AggFunction, FeatureView, Spec

__all__ = [
    "LAST_EVENT_KEY",
    "ViewOutput",
    "check_features",
    "feature_columns",
    "missing_value",
    "numeric_request_features",
    "request_time_feature",
    "view_key",
    "view_outputs",
    "view_value_columns",
]

#: Reserved key under which the online store keeps an entity's latest visible
#: event time (epoch microseconds) next to its feature values, for the ttl.
LAST_EVENT_KEY = "__last_event_us"

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

    Every view output (views in spec order, then ``outputs()`` order), then the
    numeric request features, then the transforms, minus ``features.exclude``.
    """
    names: list[str] = []
    for view_name in spec.features.views:
        names.extend(o.name for o in view_outputs(spec, view_name))
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
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LoopmlError(f"{problems[0]}{more}")
