"""Features of input chunks as of each row's time: the chunked point-in-time engine behind ``loopml predict``.

Each chunk's entity keys, time and request features become a spine in DuckDB and go through the general
point-in-time join (:func:`loopml.features.join.pit_sql`, the code behind ``features build --spine``) over the
project's snapshot: every view as of the row's time, from strictly earlier events (``features.inclusive`` aside),
exactly the offline training-set semantics; then the transforms (:func:`~loopml.features.transforms.apply_transforms`).

A row's time is the first timestamp request feature (the label source's timestamp for a spec without one; a spec
with neither a timestamp request feature nor a feature view needs no time, see :func:`row_time_column`): a
timestamp or date column, ISO-8601 text (an offset is converted to UTC, naive means UTC) or epoch seconds, as the
online service reads it. Entity keys are converted to the type of the key in the snapshot. Request features are
read like the online service reads them: numbers (or numeric text), booleans, text. Bad input is a one-line
:class:`~loopml.errors.DataError` naming the file, the 1-based data row and the column. The checks are DuckDB SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from loopml.data.sources import literal
from loopml.errors import DataError, LoopmlError
from loopml.features.definitions import check_features, feature_columns, request_time_feature, view_key
from loopml.features.join import check_view_sources, column_types, connect, pit_sql, register_source, spine_span
from loopml.features.transforms import apply_transforms
from loopml.features.vector import AssembledBatch
from loopml.features.windows import quote
from loopml.spec.model import RequestFeature, Spec

#: Columns the output adds to the input's.
OUTPUT_COLUMNS = ("score", "model_version")
_ROW = "__row"
_TIME_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "DATE"}
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
_NUMBER_TYPES = _INT_TYPES | {"FLOAT", "DOUBLE"}
_MIN_EPOCH_SECONDS, _MAX_EPOCH_SECONDS = -62_135_596_800, 253_402_300_799  # years 1-9999, the online parser's range


def row_time_column(spec: Spec) -> str | None:
    """The column holding each input row's time: the first timestamp request feature, else (for feature views) the label
    source's timestamp; None when nothing needs a time (no timestamp request feature and no view)."""
    found = request_time_feature(spec)
    if found is None and spec.features.views:
        found = spec.sources[spec.label.source].timestamp
        if found is None:
            raise LoopmlError(
                "features.request: batch scoring of feature views needs a timestamp request feature (the time of each row)"
            )
    return found


def csv_types(spec: Spec, time_column: str | None) -> dict[str, pa.DataType]:
    """CSV column types that do not depend on the file's first block: request features as the online service reads them.

    Times, booleans and text are read as text (parsed, with the row named on
    failure, like every other check); numbers as numbers.
    """
    types: dict[str, pa.DataType] = {time_column: pa.string()} if time_column else {}
    for name, rule in spec.features.request.items():
        if name != time_column:
            types[name] = {"float": pa.float64(), "int": pa.int64()}.get(rule.type, pa.string())
    return types


def _parse_time(expr: str, duck_type: str, fmt: str | None = None) -> str | None:
    """SQL turning a column of ``duck_type`` into a TIMESTAMP (UTC) the way the online service reads times; text in the
    ``format`` the label source declares for the column (``01.03.2017``) is read too, as ingest reads it."""
    if duck_type in _TIME_TYPES:
        return f"CASE WHEN isfinite({expr}) THEN CAST({expr} AS TIMESTAMP) END"
    seconds = f"CAST({expr} AS DOUBLE)" if duck_type in _NUMBER_TYPES or duck_type.startswith("DECIMAL") else None
    if duck_type == "VARCHAR":
        text = f"NULLIF(trim({expr}), '')"
        seconds = f"TRY_CAST({text} AS DOUBLE)"
        parsed = f"TRY_CAST({text} AS TIMESTAMPTZ)"
        if fmt is not None:
            parsed = f"coalesce(CAST(TRY_STRPTIME({text}, {literal(fmt)}) AS TIMESTAMPTZ), {parsed})"
        iso = f"CASE WHEN isfinite({parsed}) THEN CAST({parsed} AS TIMESTAMP) END"  # not 'infinity'
    elif seconds is None:
        return None
    else:
        iso = "NULL::TIMESTAMP"
    epoch = (
        f"CASE WHEN isfinite({seconds}) AND {seconds} BETWEEN {_MIN_EPOCH_SECONDS} AND {_MAX_EPOCH_SECONDS} "
        f"THEN make_timestamp(CAST(round({seconds} * 1000000) AS BIGINT)) END"
    )
    return f"coalesce({iso}, {epoch})"


def _number(expr: str, duck_type: str, rule: RequestFeature) -> str | None:
    """SQL turning a request feature into a DOUBLE the way the online service reads it (NULL: unparsable)."""
    if rule.type == "bool":
        if duck_type == "BOOLEAN":
            return f"CAST({expr} AS DOUBLE)"
        if duck_type in _NUMBER_TYPES:
            return f"CASE WHEN {expr} IN (0, 1) THEN CAST({expr} AS DOUBLE) END"
        if duck_type == "VARCHAR":
            low = f"lower(trim({expr}))"
            return f"CASE WHEN {low} IN ('true', '1', 'yes') THEN 1.0 WHEN {low} IN ('false', '0', 'no') THEN 0.0 END"
        return None
    if duck_type == "BOOLEAN":
        return None
    if duck_type in _NUMBER_TYPES or duck_type.startswith("DECIMAL"):
        value = f"CAST({expr} AS DOUBLE)"
    elif duck_type == "VARCHAR":
        value = f"TRY_CAST(trim({expr}) AS DOUBLE)"
    else:
        return None
    if rule.type == "int":
        return f"CASE WHEN {value} = round({value}) THEN {value} END"
    return value


def _key(expr: str, duck_type: str, target: str) -> str:
    """SQL converting an entity key to the snapshot's key type (NULL: does not convert)."""
    if duck_type == target:
        return expr
    if target in _INT_TYPES:
        as_text = f"trim(CAST({expr} AS VARCHAR))"
        return (
            f"CASE WHEN TRY_CAST({as_text} AS DOUBLE) = TRY_CAST({as_text} AS {target}) THEN TRY_CAST({as_text} AS {target}) END"
        )
    return f"TRY_CAST({expr} AS {target})"


@dataclass(frozen=True)
class _Column:
    """One spine column: its name, SQL from the input, and the check a bad value fails (SQL, message)."""

    name: str
    sql: str
    checks: tuple[tuple[str, str], ...] = ()


class ChunkFeatures:
    """Point-in-time features of input chunks, over a snapshot, as offline (one DuckDB connection for all chunks)."""

    def __init__(
        self, spec: Spec, snapshot_paths: Mapping[str, Path], input_path: Path, schema: pa.Schema, scratch: Path
    ) -> None:
        check_features(spec)
        self.spec = spec
        self.path = input_path
        self.columns = feature_columns(spec)
        self.time_column = row_time_column(spec)
        self.con = connect(scratch)
        self.views = list(spec.features.views)
        names = sorted({v.source for v in spec.features.views.values()})
        missing = [n for n in names if n not in snapshot_paths]
        if missing:
            raise DataError(f"source {missing[0]!r} has no snapshot (run 'loopml ingest' first)")
        paths = {n: snapshot_paths[n] for n in names}
        self.tables = {n: register_source(self.con, n, p) for n, p in paths.items()}
        check_view_sources(self.con, spec, self.views, self.tables, paths)
        self.key_types: dict[str, str] = {}
        for name, view in spec.features.views.items():
            key = view_key(spec, name)
            self.key_types.setdefault(key, column_types(self.con, self.tables[view.source])[key])
        self._check_schema(schema)
        self._plan: list[_Column] | None = None

    def close(self) -> None:
        self.con.close()

    def _check_schema(self, schema: pa.Schema) -> None:
        found = schema.names
        listed = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
        for column in OUTPUT_COLUMNS:
            if column in found:
                raise DataError(f"{self.path}: column {column!r} clashes with the column the output adds; rename it")
        if self.time_column is not None and self.time_column not in found:
            raise DataError(f"{self.path}: column {self.time_column!r} is missing (the time of each row; found: {listed})")
        for key in self.key_types:
            if key not in found:
                raise DataError(f"{self.path}: column {key!r} is missing (an entity key of the features; found: {listed})")
        for name, rule in self.spec.features.request.items():
            if rule.required and name not in found:
                raise DataError(f"{self.path}: column {name!r} is missing (a required request feature; found: {listed})")

    def _format(self, column: str) -> str | None:
        """The ``format`` the label source declares for ``column`` (dates written like ``01.03.2017``), if any."""
        rule = self.spec.sources[self.spec.label.source].columns.get(column)
        return rule.format if rule is not None else None

    def _time_plan(self, time_column: str, types: Mapping[str, str], where: str) -> _Column:
        time_sql = _parse_time(quote(time_column), types[time_column], self._format(time_column))
        if time_sql is None:
            raise DataError(
                f"{self.path}: column {time_column!r} has type {types[time_column]}; "
                "expected a timestamp, a date, ISO-8601 text or epoch seconds"
            )
        raw = quote(time_column)
        return _Column(
            time_column,
            time_sql,
            (
                (f"{raw} IS NULL OR trim(CAST({raw} AS VARCHAR)) = ''", where + " is empty (every row needs its time)"),
                (f"{time_sql} IS NULL", where + " value {value!r} is not a timestamp (ISO-8601 or epoch seconds)"),
            ),
        )

    def _make_plan(self, types: Mapping[str, str]) -> list[_Column]:
        where = "{path}: row {row}: column {column!r}"
        plan = [] if self.time_column is None else [self._time_plan(self.time_column, types, where)]
        for key, target in self.key_types.items():
            key_sql = _key(quote(key), types[key], target)
            bad = f"{quote(key)} IS NOT NULL AND {key_sql} IS NULL"
            message = where + f" value {{value!r}} is not a {target} like the key in the snapshot"
            plan.append(_Column(key, key_sql, ((bad, message),)))
        for name, rule in self.spec.features.request.items():
            if name == self.time_column or name in self.key_types:
                continue
            if name not in types:  # optional and absent: NULL, as offline and online
                null = {"string": "NULL::VARCHAR", "timestamp": "NULL::TIMESTAMP"}.get(rule.type, "NULL::DOUBLE")
                plan.append(_Column(name, null))
                continue
            col = quote(name)
            checks: list[tuple[str, str]] = []
            if rule.required:
                empty = f"{col} IS NULL" + (f" OR trim(CAST({col} AS VARCHAR)) = ''" if rule.type != "string" else "")
                checks.append((empty, where + " is empty (a required request feature)"))
            if rule.type == "string":
                plan.append(_Column(name, f"CAST({col} AS VARCHAR)", tuple(checks)))
                continue
            sql: str | None
            if rule.type == "timestamp":
                sql = _parse_time(col, types[name], self._format(name))
                what = "a timestamp (ISO-8601 or epoch seconds)"
            else:
                sql = _number(col, types[name], rule)
                what = {"bool": "true or false", "int": "an integer"}.get(rule.type, "a number")
            if sql is None:
                raise DataError(f"{self.path}: column {name!r} has type {types[name]}; expected {rule.type} values")
            present = f"{col} IS NOT NULL AND trim(CAST({col} AS VARCHAR)) <> ''"
            checks.append((f"{present} AND {sql} IS NULL", where + f" value {{value!r}} is not {what}"))
            if rule.type != "timestamp":
                checks.append((f"{sql} IS NOT NULL AND NOT isfinite({sql})", where + " value {value!r} is not a finite number"))
            plan.append(_Column(name, sql, tuple(checks)))
        return plan

    def _check(self, plan: list[_Column], first_row: int) -> None:
        """Raise naming the earliest bad row (and its column) of the chunk in table ``__batch_in``."""
        checks = [(column.name, sql, message) for column in plan for sql, message in column.checks]
        if not checks:
            return
        firsts = ", ".join(f"min(CASE WHEN {sql} THEN {_ROW} END)" for _, sql, _ in checks)
        found = self.con.execute(f"SELECT {firsts} FROM __batch_in").fetchall()[0]
        bad = [(row, i) for i, row in enumerate(found) if row is not None]
        if not bad:
            return
        row, i = min(bad)
        name, _, message = checks[i]
        value = self.con.execute(f"SELECT CAST({quote(name)} AS VARCHAR) FROM __batch_in WHERE {_ROW} = ?", [row]).fetchall()
        text = value[0][0] if value else None
        raise DataError(message.format(path=self.path, row=first_row + int(row) + 1, column=name, value=text))

    def assemble(self, chunk: pa.RecordBatch, first_row: int) -> AssembledBatch:
        """The features of ``chunk`` (rows ``first_row``... of the input, 0-based), rows in chunk order."""
        n = chunk.num_rows
        needed = [
            c
            for c in dict.fromkeys(
                [*([self.time_column] if self.time_column else []), *self.key_types, *self.spec.features.request]
            )
            if c in chunk.schema.names
        ]
        table = pa.Table.from_batches([chunk]).select(needed).append_column(_ROW, pa.array(np.arange(n, dtype=np.int64)))
        self.con.register("__batch_arrow", table)
        try:
            self.con.execute("CREATE OR REPLACE TEMP TABLE __batch_in AS SELECT * FROM __batch_arrow")
        finally:
            self.con.unregister("__batch_arrow")
        if self._plan is None:
            self._plan = self._make_plan(column_types(self.con, "__batch_in"))
        plan = self._plan
        self._check(plan, first_row)
        select = ", ".join([_ROW] + [f"{column.sql} AS {quote(column.name)}" for column in plan])
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE __batch_spine AS SELECT {select} FROM __batch_in")
        sql = f"SELECT * FROM __batch_spine ORDER BY {_ROW}"
        if self.views:
            assert self.time_column is not None  # row_time_column() raised otherwise
            span = spine_span(self.con, "__batch_spine", self.time_column)
            joined = pit_sql(self.spec, "__batch_spine", self.tables, self.time_column, _ROW, self.views, False, span)
            sql = (
                f"SELECT s.*, g.* EXCLUDE ({_ROW}) FROM __batch_spine s "
                f"JOIN ({joined}) g ON s.{_ROW} = g.{_ROW} ORDER BY s.{_ROW}"
            )
        return self._to_batch(self.con.sql(sql).to_arrow_table(), n)

    def _to_batch(self, result: pa.Table, n: int) -> AssembledBatch:
        requests = self.spec.features.request
        inputs: dict[str, npt.NDArray[np.generic]] = {}
        strings: dict[str, npt.NDArray[np.object_]] = {}
        for name in result.column_names:
            if name == _ROW or (name in self.key_types and name not in requests):
                continue
            column = result.column(name)
            rule = requests.get(name)
            if rule is not None and rule.type == "string":
                strings[name] = np.array(column.to_pylist(), dtype=object)
            elif pa.types.is_timestamp(column.type):
                inputs[name] = np.asarray(column.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False), dtype="datetime64[us]")
            else:
                inputs[name] = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        if self.spec.features.transforms:
            inputs.update(apply_transforms(self.spec, inputs))
        matrix = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            matrix[:, j] = inputs[name]
        return AssembledBatch(columns=self.columns, matrix=matrix, missing_entities=[[] for _ in range(n)], strings=strings)


# --------------------------------------------------------------------------- the output
