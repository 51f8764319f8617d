"""Cross-reference checks that pydantic cannot express field by field.

Each problem is ``(key path, message)``; :mod:`loopml.spec.load` turns the
key path into a YAML line. Checks only read the spec, never the data.
"""

from __future__ import annotations

import itertools
import math
import re

from loopml.spec.model import Spec, format_duration

Loc = tuple[str | int, ...]
_NUMERIC = {"int", "float", "bool"}
_TIME_OPS = {"hour", "day_of_week", "is_weekend", "is_night"}
_STRPTIME_FIELD = re.compile(r"%[a-zA-Z]")
_ARITY = {"hour": 1, "day_of_week": 1, "is_weekend": 1, "is_night": 1, "log": 1, "log1p": 1, "ratio": 2, "bucket": 1}


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
            if rule.format is not None:
                problems.extend(_format_problems(("sources", name, "columns", col_name, "format"), rule.type, rule.format))
        csv_set = source.csv.model_fields_set
        if csv_set and (source.format or _csv_suffix(source.path)) != "csv":
            problems.append((("sources", name, "csv"), "csv options apply to CSV sources only"))
    return problems


def _csv_suffix(path: str) -> str | None:
    return "csv" if path.lower().endswith(".csv") else None


def _format_problems(loc: Loc, column_type: str, fmt: str) -> list[tuple[Loc, str]]:
    if column_type not in ("date", "timestamp"):
        return [(loc, f"format applies to date and timestamp columns, not {column_type}")]
    if not _STRPTIME_FIELD.search(fmt):
        return [(loc, f"{fmt!r} is not a strptime format (it needs fields like %d, %m, %Y)")]
    return []


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
        if spec.features.null_indicators if view.indicator is None else view.indicator:
            known[f"{vname}_missing"] = "float"
    for tname, transform in spec.features.transforms.items():
        loc = ("features", "transforms", tname)
        if tname in known:
            problems.append((loc, f"{tname!r} is already the name of a request feature, view output or transform"))
        if len(transform.inputs) != _ARITY[transform.op]:
            problems.append(((*loc, "inputs"), f"{transform.op} takes {_ARITY[transform.op]} input(s)"))
        for inp in transform.inputs:
            if inp not in known:
                problems.append(
                    ((*loc, "inputs"), f"unknown feature {inp!r} (not a request feature, view output or earlier transform)")
                )
            elif transform.op in _TIME_OPS and known[inp] != "timestamp":
                problems.append(((*loc, "inputs"), f"{transform.op} needs a timestamp input; {inp!r} is {known[inp]}"))
            elif transform.op not in _TIME_OPS and known[inp] in ("timestamp", "string"):
                problems.append(((*loc, "inputs"), f"{transform.op} needs a number; {inp!r} is {known[inp]}"))
        problems.extend(_edges_problems(loc, transform.op, transform.edges))
        known[tname] = "float"
    for i, name in enumerate(spec.features.exclude):
        if name not in known:
            problems.append((("features", "exclude", i), f"unknown feature {name!r}"))
    return problems


def _edges_problems(loc: Loc, op: str, edges: list[float] | None) -> list[tuple[Loc, str]]:
    if op != "bucket":
        return [] if edges is None else [((*loc, "edges"), f"edges apply to op: bucket, not {op}")]
    if not edges:
        return [(loc, "bucket needs edges: [e0, e1, ...] (the right-open bucket bounds)")]
    if any(not math.isfinite(e) for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
        return [((*loc, "edges"), "edges must be finite and strictly increasing")]
    return []


def _leak_and_request_problems(spec: Spec) -> list[tuple[Loc, str]]:
    """Labels must not leak into features; request features must exist in the label source."""
    problems: list[tuple[Loc, str]] = []
    label = spec.label
    for vname, view in spec.features.views.items():
        loc: Loc = ("features", "views", vname)
        if view.delay.total_seconds() < 0:
            problems.append(((*loc, "delay"), "must not be negative"))
        if view.ttl is not None and view.ttl.total_seconds() <= 0:
            problems.append(((*loc, "ttl"), "must be positive"))
        for i, agg in enumerate(view.aggregations):
            if any(w.total_seconds() <= 0 for w in agg.windows):
                problems.append(((*loc, "aggregations", i, "windows"), "windows must be positive"))
        if view.source != label.source or view.delay >= label.delay:
            continue
        for agg in view.aggregations:
            if agg.column == label.column and set(agg.functions) - {"count"}:
                problems.append(
                    (
                        (*loc, "delay"),
                        f"aggregates the label column {label.column!r} with delay {format_duration(view.delay)} "
                        f"< label.delay {format_duration(label.delay)}: labels not yet known would leak (set delay: "
                        f"{format_duration(label.delay)} or more)",
                    )
                )
                break
    source = spec.sources.get(label.source)
    if source is not None:
        for name in spec.features.request:
            if name not in source.columns:
                problems.append(
                    (
                        ("features", "request", name),
                        f"{name!r} is not a column of the label source {label.source!r}; training needs its value for every row",
                    )
                )
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


_ENCODING_OPTIONS = {"smoothing": "target", "folds": "target", "min_frequency": "onehot", "max_categories": "onehot"}
_ENCODABLE = {"string", "int"}
_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _encoding_problems(spec: Spec) -> list[tuple[Loc, str]]:
    """An encoding reads a string request feature that the label source also holds (so training sees it)."""
    problems: list[tuple[Loc, str]] = []
    taken = set(spec.features.request) | set(spec.features.transforms)
    taken |= {name for vname, view in spec.features.views.items() for name, *_ in view.outputs(vname)}
    source = spec.sources.get(spec.label.source)
    for name, enc in spec.features.encodings.items():
        loc: Loc = ("features", "encodings", name)
        if not _FEATURE_NAME.match(name):
            problems.append((loc, "an encoding name must start with a letter or _ and use only letters, digits, '_', '.', '-'"))
        elif name in taken:
            problems.append((loc, f"{name!r} is already the name of another feature"))
        request = spec.features.request.get(enc.input)
        if request is None:
            problems.append(
                ((*loc, "input"), f"unknown request feature {enc.input!r} (declare it under features.request with type: string)")
            )
        elif request.type != "string":
            problems.append(((*loc, "input"), f"request feature {enc.input!r} is {request.type}; an encoding needs type: string"))
        if source is not None:
            rule = source.columns.get(enc.input)
            if rule is None:
                where = f"source {spec.label.source!r} (label.source)"
                problems.append(((*loc, "input"), f"column {enc.input!r} is not declared in {where}; training could not see it"))
            elif rule.type not in _ENCODABLE:
                what = f"column {enc.input!r} of source {spec.label.source!r}"
                problems.append(((*loc, "input"), f"{what} is {rule.type}; encodings take string or int columns"))
        for option in sorted(enc.model_fields_set & set(_ENCODING_OPTIONS)):
            if _ENCODING_OPTIONS[option] != enc.op:
                problems.append(((*loc, option), f"{option} applies to op: {_ENCODING_OPTIONS[option]}, not {enc.op}"))
        if enc.folds == 1:
            problems.append(((*loc, "folds"), "folds must be 0 (off) or at least 2"))
    return problems


def cross_reference_problems(spec: Spec) -> list[tuple[Loc, str]]:
    """Every reference in the spec that points at nothing."""
    return (
        _source_problems(spec)
        + _label_problems(spec)
        + _feature_problems(spec)
        + _leak_and_request_problems(spec)
        + _split_problems(spec)
        + _encoding_problems(spec)
    )
