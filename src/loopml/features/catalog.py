"""The feature catalogue (``loopml features list``): each feature, its definition, owner and freshness.

A pure function of the spec plus two freshness facts gathered by the caller:
the latest event time of each source in the latest snapshot, and the time
each view was last materialized into the online store (when the store knows
it). Entries follow the order of
:func:`~loopml.features.definitions.feature_columns`, then the features that
are not model inputs (excluded ones, string request features). The JSON keys
are documented in ``docs/features.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from loopml.features.definitions import feature_columns, has_indicator, indicator_name, view_horizon, view_outputs
from loopml.spec.model import Spec, format_duration

__all__ = ["feature_catalog"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _duration(value: Any) -> str | None:
    return None if value is None else format_duration(value)


Entry = dict[str, Any]


def _entry(name: str, kind: str, owner: Mapping[str, str | None], definition: Entry, freshness: Entry) -> Entry:
    return {"name": name, "kind": kind, **owner, "definition": definition, "freshness": freshness}


def _view_entries(spec: Spec, latest: Mapping[str, datetime | None], materialized: Mapping[str, datetime | None]) -> list[Entry]:
    entries = []
    for vname, view in spec.features.views.items():
        owner = {"view": vname, "entity": view.entity, "source": view.source}
        freshness = {"latest_event": _iso(latest.get(view.source)), "materialized_at": _iso(materialized.get(vname))}
        timing = {"delay": format_duration(view.delay), "ttl": _duration(view.ttl)}
        for output in view_outputs(spec, vname):
            column = None if output.function == "count" else output.column
            definition = {"function": output.function, "column": column, "window": format_duration(output.window), **timing}
            entries.append(_entry(output.name, "aggregation", owner, definition, freshness))
        if has_indicator(spec, vname):
            longest = format_duration(view_horizon(view) - view.delay)
            definition = {"function": "missing", "column": None, "window": longest, **timing}
            entries.append(_entry(indicator_name(vname), "indicator", owner, definition, freshness))
    return entries


def feature_catalog(
    spec: Spec, latest_events: Mapping[str, datetime | None], materialized: Mapping[str, datetime | None]
) -> list[Entry]:
    """One entry per feature: ``name, kind, view, entity, source, definition, in_model, freshness``.

    ``kind`` is ``aggregation``, ``indicator`` (a view's null indicator),
    ``request`` or ``transform``. Request features and transforms have no
    owner view; their offline values come from the label source, whose
    latest event is their freshness.
    """
    label_source = spec.label.source
    label_fresh = {"latest_event": _iso(latest_events.get(label_source)), "materialized_at": None}
    no_view = {"view": None, "entity": None}
    entries = _view_entries(spec, latest_events, materialized)
    for name, rule in spec.features.request.items():
        request: Entry = {"type": rule.type, "required": rule.required}
        entries.append(_entry(name, "request", no_view | {"source": label_source}, request, label_fresh))
    for name, transform in spec.features.transforms.items():
        definition: Entry = {"op": transform.op, "inputs": list(transform.inputs)}
        if transform.edges is not None:
            definition["edges"] = list(transform.edges)
        entries.append(_entry(name, "transform", no_view | {"source": None}, definition, label_fresh))
    model = feature_columns(spec)
    position = {name: i for i, name in enumerate(model)}
    for entry in entries:
        entry["in_model"] = entry["name"] in position
    entries.sort(key=lambda e: position.get(e["name"], len(model)))
    return entries
