"""Cross-reference checks that pydantic cannot express field by field.

Each problem is ``(key path, message)``; :mod:`loopml.spec.load` turns the
key path into a YAML line. Checks only read the spec, never the data.
"""

from __future__ import annotations

from loopml.spec.model import Spec

Loc = tuple[str | int, ...]
_NUMERIC = {"int", "float", "bool"}
_TIME_OPS = {"hour", "day_of_week", "is_weekend", "is_night"}
_ARITY = {"hour": 1, "day_of_week": 1, "is_weekend": 1, "is_night": 1, "log1p": 1, "ratio": 2}


def _source_problems(spec: Spec) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for name, source in spec.sources.items():
        if source.timestamp is not None:
            col = source.columns.get(source.timestamp)
            if col is None:
                problems.append((("sources", name, "timestamp"), f"column {source.timestamp!r} is not declared under columns"))
            elif col.type not in ("timestamp", "date"):
                problems.append(
                    (("sources", name, "timestamp"), f"column {source.timestamp!r} must have type timestamp, not {col.type}")
                )
        for key in source.table.duplicate_keys or []:
            if key not in source.columns:
                problems.append((("sources", name, "table", "duplicate_keys"), f"unknown column {key!r}"))
        for col_name, rule in source.columns.items():
            if rule.min is not None and rule.max is not None and rule.min > rule.max:
                problems.append((("sources", name, "columns", col_name, "min"), "min is greater than max"))
    return problems


def _label_problems(spec: Spec) -> list[tuple[Loc, str]]:
    label = spec.label
    if label.source not in spec.sources:
        return [(("label", "source"), f"unknown source {label.source!r} (known: {', '.join(spec.sources)})")]
    if label.column not in spec.sources[label.source].columns:
        return [(("label", "column"), f"column {label.column!r} is not declared in source {label.source!r}")]
    if label.delay.total_seconds() < 0:
        return [(("label", "delay"), "must not be negative")]
    return []


def _feature_problems(spec: Spec) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    known: dict[str, str] = {name: rf.type for name, rf in spec.features.request.items()}
    for vname, view in spec.features.views.items():
        loc: Loc = ("features", "views", vname)
        entity = spec.entities.get(view.entity)
        source = spec.sources.get(view.source)
        if entity is None:
            problems.append(((*loc, "entity"), f"unknown entity {view.entity!r} (known: {', '.join(spec.entities)})"))
        if source is None:
            problems.append(((*loc, "source"), f"unknown source {view.source!r} (known: {', '.join(spec.sources)})"))
            continue
        if source.timestamp is None:
            problems.append(((*loc, "source"), f"source {view.source!r} has no timestamp column"))
        if entity is not None and entity.key not in source.columns:
            problems.append(((*loc, "entity"), f"entity key {entity.key!r} is not a column of source {view.source!r}"))
        for i, agg in enumerate(view.aggregations):
            rule = source.columns.get(agg.column)
            if rule is None:
                problems.append(((*loc, "aggregations", i, "column"), f"unknown column {agg.column!r} in source {view.source!r}"))
            elif rule.type not in _NUMERIC and set(agg.functions) - {"count", "last"}:
                problems.append(
                    ((*loc, "aggregations", i, "functions"), f"column {agg.column!r} is {rule.type}; only count/last apply")
                )
            if not agg.windows:
                problems.append(((*loc, "aggregations", i, "windows"), "at least one window is needed"))
        for fname, *_ in view.outputs(vname):
            known[fname] = "float"
    for tname, transform in spec.features.transforms.items():
        loc = ("features", "transforms", tname)
        if len(transform.inputs) != _ARITY[transform.op]:
            problems.append(((*loc, "inputs"), f"{transform.op} takes {_ARITY[transform.op]} input(s)"))
        for inp in transform.inputs:
            if inp not in known:
                problems.append(
                    ((*loc, "inputs"), f"unknown feature {inp!r} (not a request feature, view output or earlier transform)")
                )
            elif transform.op in _TIME_OPS and known[inp] != "timestamp":
                problems.append(((*loc, "inputs"), f"{transform.op} needs a timestamp input; {inp!r} is {known[inp]}"))
        known[tname] = "float"
    for i, name in enumerate(spec.features.exclude):
        if name not in known:
            problems.append((("features", "exclude", i), f"unknown feature {name!r}"))
    return problems


def _split_problems(spec: Spec) -> list[tuple[Loc, str]]:
    group = spec.split.group
    if group is None:
        return []
    if spec.split.method != "random":
        return [(("split", "group"), "group applies to method: random (a time split keeps entities across splits by design)")]
    source = spec.sources.get(spec.label.source)
    if source is not None and group not in source.columns:
        return [(("split", "group"), f"column {group!r} is not declared in source {spec.label.source!r}")]
    return []


def cross_reference_problems(spec: Spec) -> list[tuple[Loc, str]]:
    """Every reference in the spec that points at nothing."""
    return _source_problems(spec) + _label_problems(spec) + _feature_problems(spec) + _split_problems(spec)
