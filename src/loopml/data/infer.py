"""Scaffolding a ``loopml.yaml`` from any CSV, Parquet or JSON Lines file (``loopml init --data``).

:mod:`loopml.data.profile` reads and types the file, this module decides what the project does with each column,
and :mod:`loopml.data.spec_text` writes the YAML. Every decision a user could not guess from the file comes back as
a note that ``loopml init`` prints:

- **rules**: ``nullable: false`` when the data has no nulls, ``allowed`` for text columns with at most 20 values and
  for a binary label, ``unique`` for an id-named column whose values are all distinct, a date ``format`` and
  ``severity: warn`` for number columns with stray cells (see the profile).
- **the task** when ``--task`` is not given: the first of :data:`TASK_RULES` that answers; a given task must fit the
  label (:data:`LABEL_FITS`). Adding a task is one function in each. The positive class, the timestamp column and
  the label's missing values (set aside at training) are inferred and reported.
- **features**: numbers and booleans as they are; text **categories** through an encoding (``onehot`` up to 20
  values, ``target`` beyond); **free text** (over 20 values, and a mean length over :data:`FREE_TEXT_LENGTH`
  characters or more than half the values distinct) is skipped, as are ids and constant columns.
- **entities**: with a timestamp, a history view whose windows fit the data's pace (the :data:`WINDOWS` longer than
  the median gap between an entity's events, up to the first one spanning the data, at most three; none when no
  entity has two events, so no window is always empty); without one, the key is a categorical feature and the
  group of the random split (all rows of an entity in one split).
- **time transforms**: ``hour`` and ``day_of_week`` of the timestamp, each only when it takes more than one value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from loopml.data.profile import MAX_VALUES, ColumnProfile, FileProfile, profile_file
from loopml.data.sources import ident, one
from loopml.data.spec_text import Plan, name_like, render
from loopml.data.validate import canonical_label
from loopml.errors import DataError

__all__ = ["LABEL_FITS", "TASK_RULES", "Inferred", "Task", "infer_project", "infer_spec"]

Task = Literal["binary", "regression"]
FREE_TEXT_LENGTH = 40
_DAY = 86400
#: Window lengths a scaffold chooses from (name, seconds).
WINDOWS: tuple[tuple[str, int], ...] = (("1h", 3600), ("1d", _DAY), ("7d", 7 * _DAY), ("30d", 30 * _DAY), ("90d", 90 * _DAY))
WINDOWS += (("365d", 365 * _DAY), ("730d", 730 * _DAY), ("1825d", 1825 * _DAY))
_ID_NAME = re.compile(r"(^|_)(id|uuid|key)$|[a-z]Id$", re.IGNORECASE)
_POSITIVE_WORDS = ("yes", "y", "t", "positive", "pos")
_NUMERIC = {"int", "float"}


@dataclass(frozen=True)
class Inferred:
    """A scaffolded ``loopml.yaml`` and the notes on what was decided for the user to read."""

    text: str
    notes: list[str]


# --------------------------------------------------------------------------- the task
def _shown(label: ColumnProfile) -> str:
    return ", ".join(str(v) for v in label.values) if label.values is not None else f"more than {MAX_VALUES}"


def _two_values_are_binary(label: ColumnProfile) -> Task | None:
    return "binary" if label.distinct == 2 else None


def _numbers_are_regression(label: ColumnProfile) -> Task | None:
    return "regression" if label.type in _NUMERIC else None


def _binary_problem(label: ColumnProfile) -> str | None:
    return (
        None if label.distinct == 2 else f"has {label.distinct} distinct values ({_shown(label)}); a binary task needs exactly 2"
    )


def _regression_problem(label: ColumnProfile) -> str | None:
    return None if label.type in _NUMERIC else f"is {label.type}; a regression task needs a numeric label"


#: How the task is inferred when ``--task`` is not given: the first rule with an answer wins.
TASK_RULES: list[Callable[[ColumnProfile], Task | None]] = [_two_values_are_binary, _numbers_are_regression]
#: What a task given with ``--task`` needs of the label: None when it fits, else what is wrong.
LABEL_FITS: dict[Task, Callable[[ColumnProfile], str | None]] = {"binary": _binary_problem, "regression": _regression_problem}


def _task(data: Path, label: ColumnProfile, task: Task | None) -> Task:
    if label.distinct < 2:
        what = f"{label.distinct} distinct value(s) ({_shown(label)})"
        raise DataError(f"{data}: label column {label.name!r} has {what}; a model needs at least 2")
    if task is not None:
        problem = LABEL_FITS[task](label)
        if problem is not None:
            raise DataError(f"{data}: label column {label.name!r} {problem}")
        return task
    for rule in TASK_RULES:
        found = rule(label)
        if found is not None:
            return found
    choices = " or ".join(f"--task {t}" for t in LABEL_FITS)
    raise DataError(
        f"{data}: cannot infer the task: label column {label.name!r} is {label.type} with {label.distinct} distinct values; "
        f"pass {choices}"
    )


def _positive(con: duckdb.DuckDBPyConnection, data: Path, label: ColumnProfile, positive: str | None) -> Any:
    values = label.values or []
    canon = {canonical_label(v): v for v in values}
    if positive is not None:
        if canonical_label(positive) not in canon:
            shown = ", ".join(str(v) for v in values)
            raise DataError(f"{data}: --positive {positive!r} is not a value of label column {label.name!r} (values: {shown})")
        return canon[canonical_label(positive)]
    if "1" in canon:
        return canon["1"]
    for word in _POSITIVE_WORDS:
        if word in canon:
            return canon[word]
    counts = con.execute(
        f"SELECT {ident(label.name)}, count(*) FROM data WHERE {ident(label.name)} IS NOT NULL GROUP BY 1 ORDER BY 2, 1 DESC"
    ).fetchall()
    return counts[0][0]  # the minority class


# --------------------------------------------------------------------------- time
def _timestamp(data: Path, columns: dict[str, ColumnProfile], timestamp: str | None, taken: set[str]) -> tuple[str | None, str]:
    if timestamp is not None:
        if timestamp not in columns:
            raise _found(data, "timestamp", timestamp, columns)
        if columns[timestamp].type not in {"timestamp", "date"}:
            read_as = columns[timestamp].type
            raise DataError(f"{data}: --timestamp column {timestamp!r} does not hold timestamps (read as {read_as})")
        return timestamp, "given with --timestamp"
    for kind in ("timestamp", "date"):
        found = [c.name for c in columns.values() if c.type == kind and c.name not in taken]
        if len(found) == 1:
            return found[0], "the only timestamp column"
        if len(found) > 1:
            return None, f"several {kind} columns ({', '.join(found)}): pass --timestamp to pick one"
    return None, "no timestamp column found"


def _span_days(con: duckdb.DuckDBPyConnection, timestamp: str) -> float:
    col = ident(timestamp)
    row = one(con, f"SELECT CAST(min({col}) AS TIMESTAMP), CAST(max({col}) AS TIMESTAMP) FROM data")
    if row is None or not isinstance(row[0], datetime) or not isinstance(row[1], datetime):
        return 0.0
    return (row[1] - row[0]).total_seconds() / 86400


def _windows(con: duckdb.DuckDBPyConnection, timestamp: str, entity: str) -> tuple[list[str], float | None]:
    """Windows that are not always empty for this data (see the module docstring), and the median gap in seconds."""
    at, key = f"epoch(CAST({ident(timestamp)} AS TIMESTAMP))", ident(entity)
    events = f"SELECT {at} AS t, {key} AS k FROM data WHERE {ident(timestamp)} IS NOT NULL AND {key} IS NOT NULL"
    gaps = f"SELECT t - lag(t) OVER (PARTITION BY k ORDER BY t) AS gap FROM ({events})"
    row = one(con, f"SELECT (SELECT median(gap) FROM ({gaps}) WHERE gap IS NOT NULL), (SELECT max(t) - min(t) FROM ({events}))")
    if row is None or row[0] is None:
        return [], None
    gap, span = float(row[0]), float(row[1] or 0.0)
    out: list[str] = []
    for name, seconds in WINDOWS:
        if seconds > gap and len(out) < 3:
            out.append(name)
            if seconds >= span:
                break
    return out, gap


def _time_transforms(con: duckdb.DuckDBPyConnection, plan: Plan, notes: list[str]) -> None:
    ts = plan.timestamp
    assert ts is not None
    at = f"CAST({ident(ts)} AS TIMESTAMP)"
    row = one(con, f"SELECT count(DISTINCT hour({at})), count(DISTINCT dayofweek({at})) FROM data")
    assert row is not None
    for op, distinct in (("hour", row[0]), ("day_of_week", row[1])):
        if distinct > 1:
            plan.transforms[_free(f"{ts}_{op}", plan.columns)] = (op, ts)
        else:
            notes.append(f"no {ts}_{op} feature: every {ts} has the same {op.replace('_', ' ')}")
    plan.request[ts] = "timestamp"
    plan.exclude.append(ts)


def _free(name: str, taken: dict[str, ColumnProfile]) -> str:
    """``name``, or ``name_2``, ``name_3``... if a column already has it."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


# --------------------------------------------------------------------------- features
def _encode(plan: Plan, column: ColumnProfile) -> str:
    """Make text column ``column`` a categorical feature; return the encoding's op."""
    op = "onehot" if column.distinct <= MAX_VALUES else "target"
    base = name_like(column.name, "column", r"[^A-Za-z0-9_.-]+")
    taken = {*plan.columns, *plan.request, *plan.encodings}
    name, k = f"{base}_{op}", 1
    while name in taken:
        k += 1
        name = f"{base}_{op}_{k}"
    plan.request[column.name] = "string"
    plan.encodings[name] = (column.name, op)
    return op


def _column_features(plan: Plan, notes: list[str]) -> None:
    """Request features and encodings from every column that is not the label, the timestamp, an entity or an id."""
    skipped: list[str] = []
    for col in plan.columns.values():
        if col.name in {plan.label, plan.timestamp, *plan.entities}:
            continue
        if col.name in plan.unique:
            skipped.append(f"{col.name} (an id)")
        elif col.distinct <= 1:
            skipped.append(f"{col.name} (constant)")
        elif col.type in ("int", "float", "bool"):
            plan.request[col.name] = col.type
        elif col.type in ("date", "timestamp"):
            skipped.append(f"{col.name} (another time column)")
        elif col.distinct > MAX_VALUES and (col.mean_length > FREE_TEXT_LENGTH or col.distinct > 0.5 * col.non_null):
            skipped.append(f"{col.name} (free text: {col.distinct} distinct values, {col.mean_length:.0f} characters on average)")
        else:
            op = _encode(plan, col)
            notes.append(f"column {col.name!r}: text with {col.distinct} distinct values, a categorical feature ({op} encoding)")
    if skipped:
        notes.append(f"not model inputs: {'; '.join(skipped)} (add them under features if they should be)")


def _whole_keys(con: duckdb.DuckDBPyConnection, plan: Plan, notes: list[str]) -> None:
    """Entity keys written as decimals (``1.0``, as pandas writes a column with gaps) are declared int when all whole."""
    for entity in plan.entities:
        column = plan.columns[entity]
        if column.type != "float":
            continue
        row = one(con, f"SELECT bool_and({ident(entity)} = round({ident(entity)})) FROM data")
        if row is not None and row[0]:
            plan.columns[entity] = replace(
                column, type="int", values=None if column.values is None else [int(v) for v in column.values]
            )
            notes.append(f"entity {entity!r}: keys written as decimals, all whole numbers: declared int")


def _entity_features(con: duckdb.DuckDBPyConnection, plan: Plan, notes: list[str]) -> None:
    numeric = [name for name, kind in plan.request.items() if kind in _NUMERIC]
    for entity in plan.entities:
        if plan.timestamp is None:
            column = plan.columns[entity]
            if column.type in ("string", "int"):
                kept = f"a categorical feature ({_encode(plan, column)} encoding)"
            elif column.type in ("float", "bool"):
                plan.request[entity] = column.type
                kept = f"a {column.type} feature"
            else:
                kept = "no feature (a time)"
            plan.group = plan.group or entity
            notes.append(
                f"entity {entity!r}: no timestamp, so no history views; kept as {kept}"
                f"{' and as the group of the random split' if plan.group == entity else ''}"
            )
            continue
        windows, gap = _windows(con, plan.timestamp, entity)
        if not windows:
            notes.append(f"entity {entity!r}: no {entity} has two events, so a history view would always be empty: none added")
            continue
        plan.views[entity] = (numeric[0] if numeric else None, windows)
        pace = f"{gap / _DAY:.3g} days" if gap is not None and gap >= _DAY else f"{(gap or 0) / 3600:.3g} hours"
        notes.append(f"entity {entity!r}: history windows {', '.join(windows)} (its events are a median {pace} apart)")


def _label_notes(plan: Plan, notes: list[str]) -> None:
    label = plan.columns[plan.label]
    missing = plan.rows - label.non_null
    if missing:
        notes.append(
            f"label {plan.label!r}: {missing} of {plan.rows} rows have no value (blank or NaN); ingest keeps them and "
            "training sets them aside"
        )
    if plan.task == "binary":
        notes.append(f"task binary: label {plan.label!r} is {_shown(label)}, positive class {plan.positive}")


def _found(data: Path, kind: str, name: str, columns: dict[str, ColumnProfile]) -> DataError:
    return DataError(f"{data}: {kind} column {name!r} is not a column of the file (found: {', '.join(columns)})")


def _check_names(data: Path, profile: FileProfile, label: str, timestamp: str | None, entities: list[str]) -> None:
    if label not in profile.columns:
        raise _found(data, "label", label, profile.columns)
    for entity in entities:
        if entity not in profile.columns:
            raise _found(data, "entity", entity, profile.columns)
    if label == timestamp or label in entities:
        raise DataError(f"{data}: label column {label!r} cannot also be the timestamp or an entity")


def infer_project(
    data: Path,
    label: str,
    positive: str | None,
    task: Task | None,
    timestamp: str | None,
    entities: list[str],
    project_dir: Path,
) -> Inferred:
    """The text of a ``loopml.yaml`` for ``data`` (accepted by :func:`loopml.spec.parse_spec`) and the notes on it."""
    with duckdb.connect() as con:
        profile = profile_file(con, data, keep_text={label})
        _check_names(data, profile, label, timestamp, entities)
        columns, rows = profile.columns, profile.rows
        ts, ts_note = _timestamp(data, columns, timestamp, {label, *entities})
        chosen = _task(data, columns[label], task)
        plan = Plan(
            data=data,
            project_dir=project_dir,
            format=profile.format,
            rows=rows,
            columns=columns,
            csv=profile.csv,
            task=chosen,
            label=label,
            positive=_positive(con, data, columns[label], positive) if chosen == "binary" else None,
            timestamp=ts,
            timestamp_note=ts_note,
            entities=list(entities),
            unique={c.name for c in columns.values() if _ID_NAME.search(c.name) and c.distinct == c.non_null == rows},
            span_days=_span_days(con, ts) if ts is not None else 0.0,
        )
        notes = list(profile.notes)
        _label_notes(plan, notes)
        _column_features(plan, notes)
        _whole_keys(con, plan, notes)
        _entity_features(con, plan, notes)
        if ts is not None:
            _time_transforms(con, plan, notes)
    return Inferred(render(plan), notes)


def infer_spec(
    data: Path,
    label: str,
    positive: str | None,
    task: Task | None,
    timestamp: str | None,
    entities: list[str],
    project_dir: Path,
) -> str:
    """The text of a ``loopml.yaml`` for ``data``, accepted by :func:`loopml.spec.parse_spec` (see :func:`infer_project`)."""
    return infer_project(data, label, positive, task, timestamp, entities, project_dir).text
