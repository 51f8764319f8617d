"""Scaffolding a ``loopml.yaml`` from any CSV, Parquet or JSON Lines file (``loopml init --data``).

Column types come from DuckDB's own sniffing (CSV dialect and types, Parquet
schema, JSON keys); one aggregate query over the file gives null counts and
distinct counts, from which the rules follow: ``nullable: false`` when the
data has no nulls, ``allowed`` for string columns with at most 20 values and
for a binary label, ``unique`` for an id-named column whose values are all
distinct. Task, positive class and timestamp are inferred when not given.
The YAML is written as text (not dumped from the model) so every block can
carry a short comment; it is checked with :func:`loopml.spec.parse_spec`
before it is returned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from loopml.data.sources import check_file, file_format, ident, one, read_error, scan_sql
from loopml.data.validate import canonical_label
from loopml.errors import DataError
from loopml.spec import parse_spec
from loopml.spec.model import ColumnType

__all__ = ["infer_spec"]

Task = Literal["binary", "regression"]
MAX_ALLOWED = 20
_ID_NAME = re.compile(r"(^|_)(id|uuid|key)$|[a-z]Id$", re.IGNORECASE)
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}
_POSITIVE_WORDS = ("yes", "y", "t", "positive", "pos")
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_WINDOWS = "[1d, 7d, 30d]"


@dataclass(frozen=True)
class _Column:
    name: str
    type: ColumnType
    non_null: int
    distinct: int
    values: list[Any] | None  # sorted distinct values, when there are few enough


def _column_type(sql_type: str) -> ColumnType:
    if sql_type in _INT_TYPES:
        return "int"
    if sql_type in {"FLOAT", "DOUBLE"} or sql_type.startswith("DECIMAL"):
        return "float"
    if sql_type == "BOOLEAN":
        return "bool"
    if sql_type.startswith("TIMESTAMP"):
        return "timestamp"
    if sql_type == "DATE":
        return "date"
    return "string"


def _y(value: Any) -> str:
    """A YAML scalar (key or value) that reads back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def _flow(items: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in items.items()) + "}"


def _profile(con: duckdb.DuckDBPyConnection, types: dict[str, str], data: Path) -> tuple[int, dict[str, _Column]]:
    parts = ["count(*)"]
    for i, name in enumerate(types):
        parts += [f"count({ident(name)}) AS n{i}", f"count(DISTINCT {ident(name)}) AS d{i}"]
    row = one(con, f"SELECT {', '.join(parts)} FROM data")
    assert row is not None
    if not row[0]:
        raise DataError(f"{data}: has no rows; a project needs data to infer from")
    columns: dict[str, _Column] = {}
    for i, (name, sql_type) in enumerate(types.items()):
        non_null, distinct = int(row[1 + 2 * i]), int(row[2 + 2 * i])
        values = None
        if distinct <= MAX_ALLOWED:
            got = con.execute(f"SELECT DISTINCT {ident(name)} FROM data WHERE {ident(name)} IS NOT NULL ORDER BY 1").fetchall()
            values = [r[0] for r in got]
        columns[name] = _Column(name, _column_type(sql_type), non_null, distinct, values)
    return int(row[0]), columns


def _found(data: Path, kind: str, name: str, columns: dict[str, _Column]) -> DataError:
    return DataError(f"{data}: {kind} column {name!r} is not a column of the file (found: {', '.join(columns)})")


def _task(data: Path, label: _Column, task: Task | None) -> Task:
    shown = ", ".join(str(v) for v in label.values or [])
    if label.distinct < 2:
        what = f"{label.distinct} distinct value(s) ({shown})"
        raise DataError(f"{data}: label column {label.name!r} has {what}; a model needs at least 2")
    numeric = label.type in {"int", "float"}
    if task == "binary" and label.distinct != 2:
        raise DataError(
            f"{data}: label column {label.name!r} has {label.distinct} distinct values "
            f"({shown or 'more than ' + str(MAX_ALLOWED)}); a binary task needs exactly 2"
        )
    if task == "regression" and not numeric:
        raise DataError(f"{data}: label column {label.name!r} is {label.type}; a regression task needs a numeric label")
    if task is not None:
        return task
    if label.distinct == 2:
        return "binary"
    if numeric:
        return "regression"
    raise DataError(
        f"{data}: cannot infer the task: label column {label.name!r} is {label.type} with {label.distinct} distinct values; "
        "pass --task binary or --task regression"
    )


def _positive(con: duckdb.DuckDBPyConnection, data: Path, label: _Column, positive: str | None) -> Any:
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


def _timestamp(data: Path, columns: dict[str, _Column], timestamp: str | None, taken: set[str]) -> tuple[str | None, str]:
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


def _column_line(col: _Column, rows: int, is_label: bool, task: Task, unique: bool) -> str:
    rule: dict[str, str] = {"type": col.type}
    if col.non_null == rows:
        rule["nullable"] = "false"
    if unique:
        rule["unique"] = "true"
    elif col.values is not None and ((is_label and task == "binary") or (col.type == "string" and not is_label)):
        rule["allowed"] = "[" + ", ".join(_y(v) for v in col.values) + "]"
    return f"      {_y(col.name)}: {_flow(rule)}"


def _span_days(con: duckdb.DuckDBPyConnection, timestamp: str) -> float:
    col = ident(timestamp)
    row = one(con, f"SELECT CAST(min({col}) AS TIMESTAMP), CAST(max({col}) AS TIMESTAMP) FROM data")
    if row is None or not isinstance(row[0], datetime) or not isinstance(row[1], datetime):
        return 0.0
    return (row[1] - row[0]).total_seconds() / 86400


def _name(text: str, fallback: str, pattern: str) -> str:
    cleaned = re.sub(pattern, "_", text).strip("_")
    return cleaned if cleaned and cleaned[0].isalpha() else fallback


def _source_path(data: Path, project_dir: Path) -> str:
    data, project_dir = data.resolve(), project_dir.resolve()
    return data.relative_to(project_dir).as_posix() if data.is_relative_to(project_dir) else str(data)


def infer_spec(
    data: Path,
    label: str,
    positive: str | None,
    task: Task | None,
    timestamp: str | None,
    entities: list[str],
    project_dir: Path,
) -> str:
    """The text of a ``loopml.yaml`` for ``data``, accepted by :func:`loopml.spec.parse_spec`."""
    check_file(data, " (--data)")
    fmt = file_format(None, data, "; convert it to CSV, Parquet or JSON Lines")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        try:
            con.execute(f"CREATE TEMP TABLE data AS SELECT * FROM {scan_sql(data, fmt, text=False)}")
            types = {str(r[0]): str(r[1]) for r in con.execute("DESCRIBE data").fetchall()}
        except duckdb.Error as exc:
            raise read_error(data, fmt, exc) from None
        rows, columns = _profile(con, types, data)
        if label not in columns:
            raise _found(data, "label", label, columns)
        for entity in entities:
            if entity not in columns:
                raise _found(data, "entity", entity, columns)
        if label == timestamp or label in entities:
            raise DataError(f"{data}: label column {label!r} cannot also be the timestamp or an entity")
        ts, ts_note = _timestamp(data, columns, timestamp, {label, *entities})
        task = _task(data, columns[label], task)
        positive_value = _positive(con, data, columns[label], positive) if task == "binary" else None
        span = _span_days(con, ts) if ts is not None else 0.0
    return _render(data, project_dir, fmt, rows, columns, label, task, positive_value, ts, ts_note, entities, span)


def _render(
    data: Path,
    project_dir: Path,
    fmt: str,
    rows: int,
    columns: dict[str, _Column],
    label: str,
    task: Task,
    positive: Any,
    ts: str | None,
    ts_note: str,
    entities: list[str],
    span: float,
) -> str:
    source = _name(data.stem, "events", r"[^A-Za-z0-9_]+")
    project = _name(project_dir.resolve().name, "project", r"[^A-Za-z0-9_.-]+")
    unique = {c.name for c in columns.values() if _ID_NAME.search(c.name) and c.distinct == c.non_null == rows}
    skip = {label, *entities, *([ts] if ts else []), *unique}
    request = [c for c in columns.values() if c.name not in skip and c.type in {"int", "float", "bool"}]
    out = [
        f"# loopml project scaffolded by 'loopml init' from {data.name} ({rows} rows).",
        "# Everything below was inferred from the data: read it and edit what does not fit.",
        f"project: {_y(project)}",
        f"task: {task}",
        "",
        "# The things predictions are about; views aggregate each entity's history.",
    ]
    if entities:
        out += ["entities:", *[f"  {_y(e)}: {{key: {_y(e)}}}" for e in entities]]
    else:
        out.append("entities: {}")
    out += [
        "",
        "# Where the data comes from and what each ingest checks; failing rows go to quarantine.",
        "sources:",
        f"  {_y(source)}:",
        f"    path: {_y(_source_path(data, project_dir))}",
        f"    format: {fmt}",
    ]
    if ts is not None:
        out.append(f"    timestamp: {_y(ts)}    # {ts_note}")
    else:
        out.append(f"    # timestamp: none ({ts_note})")
    out.append("    columns:")
    out += [_column_line(c, rows, c.name == label, task, c.name in unique) for c in columns.values()]
    out += ["    table:", "      min_rows: 1", ""]
    out += ["# What to predict.", "label:", f"  source: {_y(source)}", f"  column: {_y(label)}"]
    if task == "binary":
        out.append(f"  positive: {_y(positive)}")
    out += ["  delay: 0s    # how long after an event its label is known: set this for your data", ""]
    out += _features(source, request, ts, entities, columns)
    out += ["", "# How rows are split into train, validation and test."]
    if ts is not None:
        days = max(1, round(0.15 * span))
        out += ["split:", "  method: time", f"  valid_days: {days}", f"  test_days: {days}    # about 15% of the time span each"]
    else:
        out += ["split:", "  method: random", "  valid_fraction: 0.15", "  test_fraction: 0.15"]
    text = "\n".join(out) + "\n"
    parse_spec(text)
    return text


def _free(name: str, taken: dict[str, _Column]) -> str:
    """``name``, or ``name_2``, ``name_3``... if a column already has it."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _features(source: str, request: list[_Column], ts: str | None, entities: list[str], columns: dict[str, _Column]) -> list[str]:
    out = ["# Model inputs: request features arrive with each prediction; views aggregate past events per entity.", "features:"]
    lines = [f"    {_y(c.name)}: {{type: {c.type}}}" for c in request]
    if ts is not None:
        lines.append(f"    {_y(ts)}: {{type: timestamp}}")
    out += ["  request:", *lines] if lines else ["  request: {}"]
    if ts is not None and entities:
        numeric = [c for c in request if c.type in {"int", "float"}]
        out.append("  views:")
        for entity in entities:
            if numeric:
                agg = f"{{column: {_y(numeric[0].name)}, functions: [count, mean], windows: {_WINDOWS}}}"
            else:
                agg = f"{{column: {_y(entity)}, functions: [count], windows: {_WINDOWS}}}"
            out += [f"    {_y(entity)}:", f"      entity: {_y(entity)}", f"      source: {_y(source)}"]
            out += ["      aggregations:", f"        - {agg}"]
    if ts is not None:
        hour, dow = _free(f"{ts}_hour", columns), _free(f"{ts}_day_of_week", columns)
        out += [
            "  transforms:",
            f"    {_y(hour)}: {{op: hour, inputs: [{_y(ts)}]}}",
            f"    {_y(dow)}: {{op: day_of_week, inputs: [{_y(ts)}]}}",
            f"  exclude: [{_y(ts)}]    # the raw timestamp is not a model input; its transforms are",
        ]
    return out
