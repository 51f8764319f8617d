"""Batch scoring, file to file (``loopml predict --input FILE --output FILE [--model VERSION]``).

The input (Parquet or CSV) is read in chunks of ``chunk_rows`` rows
(``ParquetFile.iter_batches`` / ``pyarrow.csv.open_csv``), never whole. For
each chunk:

1. **Features, point in time.** The chunk's entity keys, time and request
   features become a spine in DuckDB and go through the general
   point-in-time join (:func:`loopml.features.join.pit_sql`, the code behind
   ``features build --spine``) over the project's latest snapshot: every view
   as of the row's time, from strictly earlier events (``features.inclusive``
   aside), exactly the offline training-set semantics. Transforms are
   :func:`~loopml.features.transforms.apply_transforms`, as offline and online.
2. **Model input.** :class:`~loopml.serve.service.ModelInput`, the class the
   online service uses: the model's column order and categorical encodings.
3. **Score** with the chosen model version (default: the version the
   champion alias, ``rollout.alias``, points at), and append the chunk, with
   ``score`` and ``model_version`` added to the input's columns, to the output
   (Parquet or CSV, by extension), rows in input order.

The output appears atomically: it is written to a temporary file next to it
and renamed at the end, so a failure leaves no output (and no temporary file).
Memory is bounded by the chunk size; the event history the join reads is the
snapshot, which DuckDB may spill to a scratch folder next to the output.

What a row means, so that a batch score equals the online service's score for
the same request: the row's time is the first timestamp request feature
(``tx_datetime`` in the fraud example; the label source's timestamp for a spec
without one); it is a timestamp or date column, ISO-8601 text (an offset is
converted to UTC, naive means UTC) or epoch seconds, as the online service
reads it. Entity keys are converted to the type of the key in the snapshot.
Request features are read like the online service reads them: numbers (or
numeric text), booleans (``true``/``false``/``1``/``0``/``yes``/``no``), text.

Bad input is a one-line :class:`~loopml.errors.DataError` naming the file,
the 1-based data row (header excluded) and the column: a missing time or entity
key column, a missing required request feature column, an empty or unparsable
time, a key that does not convert, an unparsable, empty (when required) or
non-finite request feature.

The point-in-time join and the type checks are DuckDB; the CSV/Parquet
streaming is pyarrow. The chunk loop is hand-written because it ties the
two to the model and to the atomic output, which no library does.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from loopml.data.sources import check_file
from loopml.errors import DataError, LoopmlError
from loopml.features.definitions import check_features, feature_columns, request_time_feature, view_key
from loopml.features.join import check_view_sources, column_types, connect, pit_sql, register_source, spine_span
from loopml.features.transforms import apply_transforms
from loopml.features.vector import AssembledBatch
from loopml.features.windows import quote
from loopml.registry.base import Registry
from loopml.serve.service import ModelInput, load_version
from loopml.spec.model import RequestFeature, Spec
from loopml.train.artifact import Predictor

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "BatchResult",
    "ChunkFeatures",
    "InputFile",
    "LoadedModel",
    "input_format",
    "load_model",
    "output_format",
    "predict_file",
]

Progress = Callable[[str, float], None]

#: Rows scored per chunk by default: ~100 MB of features at most for a wide model.
DEFAULT_CHUNK_ROWS = 100_000
#: Bytes of CSV parsed at a time (pyarrow's block; column types are inferred from the first one).
CSV_BLOCK_BYTES = 1 << 20
#: Columns the output adds to the input's.
OUTPUT_COLUMNS = ("score", "model_version")
_INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_ROW = "__row"
_TIME_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "DATE"}
_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
_NUMBER_TYPES = _INT_TYPES | {"FLOAT", "DOUBLE"}
_MIN_EPOCH_SECONDS, _MAX_EPOCH_SECONDS = -62_135_596_800, 253_402_300_799  # years 1-9999, the online parser's range
_CSV_ERROR = re.compile(r"In CSV column #(\d+): CSV conversion error to ([^:]+): invalid value '(.*)'", re.DOTALL)


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class LoadedModel:
    """One model version ready to score assembled feature batches, as the online service scores them."""

    version: int
    predictor: Predictor
    inputs: ModelInput

    def matrix(self, assembled: AssembledBatch) -> npt.NDArray[np.float64]:
        return self.inputs.matrix(assembled)

    def score(self, assembled: AssembledBatch, where: str = "") -> npt.NDArray[np.float64]:
        """Scores of the batch's rows; raises naming the version (and ``where``) if the model fails or gives NaN."""
        return self.score_matrix(self.inputs.matrix(assembled), where)

    def score_matrix(self, matrix: npt.NDArray[np.float64], where: str = "") -> npt.NDArray[np.float64]:
        """Scores of a model-input matrix (:meth:`matrix`), checked as :meth:`score` checks them."""
        try:
            scores = np.asarray(self.predictor.predict(matrix), dtype=np.float64)
        except LoopmlError:
            raise
        except Exception as exc:
            raise LoopmlError(f"model version {self.version} failed{where}: {type(exc).__name__}: {exc}") from None
        if scores.shape != (matrix.shape[0],) or not np.all(np.isfinite(scores)):
            raise LoopmlError(f"model version {self.version} returned a non-finite score{where}")
        return scores


def load_model(
    spec: Spec, registry: Registry, columns: list[str], version: int | None = None, alias: str | None = None
) -> LoadedModel:
    """Model ``version``, or the one ``alias`` (default ``rollout.alias``) points at, over assembled ``columns``.

    Same loading as :meth:`loopml.serve.service.PredictionService.reload`: the
    predictor (hash-checked by the registry) and the encodings fitted when the
    version was trained.
    """
    if version is None:
        name = alias or spec.rollout.alias
        record = registry.alias(name)
        if record is None:
            raise LoopmlError(f"registry: alias {name!r} points at no model version; train one or pass --model VERSION")
    else:
        record = registry.get(version)
    predictor, inputs = load_version(spec, registry, record.version, columns)
    return LoadedModel(version=record.version, predictor=predictor, inputs=inputs)


# --------------------------------------------------------------------------- reading the input
def input_format(path: Path) -> str:
    fmt = _INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r} (batch scoring reads .parquet or .csv)"
        )
    return fmt


def _csv_types(spec: Spec, time_column: str) -> dict[str, pa.DataType]:
    """CSV column types that do not depend on the file's first block: request features as the online service reads them.

    Times, booleans and text are read as text (parsed, with the row named on
    failure, like every other check); numbers as numbers.
    """
    types: dict[str, pa.DataType] = {time_column: pa.string()}
    for name, rule in spec.features.request.items():
        if name != time_column:
            types[name] = {"float": pa.float64(), "int": pa.int64()}.get(rule.type, pa.string())
    return types


class _Counting:
    """A binary file that remembers how far it was read (the CSV progress bar)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.position = 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.position += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _csv_failure(
    path: Path, exc: pa.ArrowInvalid, schema: pa.Schema, forced: Mapping[str, pa.DataType], rows_before: int
) -> DataError:
    """A CSV conversion error as one line naming the row and column (found by a second pass over that column)."""
    match = _CSV_ERROR.search(str(exc))
    if match is None or int(match.group(1)) >= len(schema.names):
        return DataError(f"{path}: cannot be read as CSV after data row {rows_before:,}: {_first_line(exc)}")
    column = schema.names[int(match.group(1))]
    wanted, value = match.group(2), match.group(3)
    row = None
    options = pcsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()}, strings_can_be_null=False)
    seen = 0
    for batch in pcsv.open_csv(path, convert_options=options):
        values = batch.column(0).to_pylist()
        for i in range(max(rows_before - seen, 0), len(values)):
            if values[i] == value:
                row = seen + i + 1
                break
        if row is not None:
            break
        seen += batch.num_rows
    where = f"row {row}" if row is not None else f"after data row {rows_before:,}"
    why = "a number" if column in forced else f"of type {wanted} like the column's first values"
    return DataError(f"{path}: {where}: column {column!r} value {value!r} is not {why}")


class InputFile:
    """The input, read in chunks: ``schema``, ``rows`` (known up front for Parquet), and an iterator of chunks.

    Iterating yields ``(chunk, fraction of the file read)``; :meth:`close` releases the file.
    """

    def __init__(self, path: Path, chunk_rows: int, csv_types: Mapping[str, pa.DataType] | None = None) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.format = input_format(path)
        check_file(path, " (--input)")
        self.rows: int | None = None
        self._parquet: pq.ParquetFile | None = None
        self._fh: IO[bytes] | None = None
        if self.format == "parquet":
            try:
                self._parquet = pq.ParquetFile(path)
                self.schema = self._parquet.schema_arrow
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
            self.rows = self._parquet.metadata.num_rows
            return
        try:
            names = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot be read as CSV: {_first_line(exc)}") from None
        self._forced = {name: t for name, t in (csv_types or {}).items() if name in names}
        self._size = max(path.stat().st_size, 1)
        self._fh = path.open("rb")
        self._counting = _Counting(self._fh)
        try:
            self._csv = pcsv.open_csv(
                self._counting,
                read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=pcsv.ConvertOptions(column_types=self._forced),
            )
        except pa.ArrowInvalid as exc:
            self.close()
            header = pa.schema([(n, pa.string()) for n in names])
            raise _csv_failure(path, exc, header, self._forced, 0) from None
        self.schema = self._csv.schema

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._fh is not None:
            self._fh.close()

    def _batches(self) -> Iterator[tuple[pa.RecordBatch, float]]:
        done = 0
        if self._parquet is not None:
            total = max(self.rows or 0, 1)
            try:
                for batch in self._parquet.iter_batches(batch_size=self.chunk_rows):
                    done += batch.num_rows
                    yield batch, done / total
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{self.path}: not a readable Parquet file after row {done:,} ({_first_line(exc)})") from None
            return
        while True:
            try:
                batch = self._csv.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _csv_failure(self.path, exc, self.schema, self._forced, done) from None
            done += batch.num_rows
            yield batch, min(self._counting.position / self._size, 1.0)

    def __iter__(self) -> Iterator[tuple[pa.RecordBatch, float]]:
        return _rechunk(self._batches(), self.chunk_rows)


def _rechunk(batches: Iterator[tuple[pa.RecordBatch, float]], rows: int) -> Iterator[tuple[pa.RecordBatch, float]]:
    """Batches of exactly ``rows`` rows (the last may be shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    count = 0
    fraction = 0.0
    for batch, fraction in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            head = table.slice(0, rows).combine_chunks().to_batches()
            yield (head[0] if head else pa.RecordBatch.from_pylist([], schema=table.schema)), fraction
            rest = table.slice(rows)
            pending = rest.combine_chunks().to_batches() if rest.num_rows else []
            count = rest.num_rows
    if count:
        table = pa.Table.from_batches(pending).combine_chunks()
        yield table.to_batches()[0], fraction


# --------------------------------------------------------------------------- features per chunk
def _parse_time(expr: str, duck_type: str) -> str | None:
    """SQL turning a column of ``duck_type`` into a TIMESTAMP (UTC) the way the online service reads times."""
    if duck_type in _TIME_TYPES:
        return f"CASE WHEN isfinite({expr}) THEN CAST({expr} AS TIMESTAMP) END"
    seconds = f"CAST({expr} AS DOUBLE)" if duck_type in _NUMBER_TYPES or duck_type.startswith("DECIMAL") else None
    if duck_type == "VARCHAR":
        text = f"NULLIF(trim({expr}), '')"
        seconds = f"TRY_CAST({text} AS DOUBLE)"
        parsed = f"TRY_CAST({text} AS TIMESTAMPTZ)"
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
        self.time_column = request_time_feature(spec) or spec.sources[spec.label.source].timestamp or ""
        if not self.time_column:
            raise LoopmlError("features.request: batch scoring needs a timestamp request feature (the time of each row)")
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
        if self.time_column not in found:
            raise DataError(f"{self.path}: column {self.time_column!r} is missing (the time of each row; found: {listed})")
        for key in self.key_types:
            if key not in found:
                raise DataError(f"{self.path}: column {key!r} is missing (an entity key of the features; found: {listed})")
        for name, rule in self.spec.features.request.items():
            if rule.required and name not in found:
                raise DataError(f"{self.path}: column {name!r} is missing (a required request feature; found: {listed})")

    def _make_plan(self, types: Mapping[str, str]) -> list[_Column]:
        plan: list[_Column] = []
        where = "{path}: row {row}: column {column!r}"
        time_sql = _parse_time(quote(self.time_column), types[self.time_column])
        if time_sql is None:
            raise DataError(
                f"{self.path}: column {self.time_column!r} has type {types[self.time_column]}; "
                "expected a timestamp, a date, ISO-8601 text or epoch seconds"
            )
        raw = quote(self.time_column)
        plan.append(
            _Column(
                self.time_column,
                time_sql,
                (
                    (f"{raw} IS NULL OR trim(CAST({raw} AS VARCHAR)) = ''", where + " is empty (every row needs its time)"),
                    (f"{time_sql} IS NULL", where + " value {value!r} is not a timestamp (ISO-8601 or epoch seconds)"),
                ),
            )
        )
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
                sql = _parse_time(col, types[name])
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
            c for c in dict.fromkeys([self.time_column, *self.key_types, *self.spec.features.request]) if c in chunk.schema.names
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
def output_format(path: Path) -> str:
    fmt = _INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LoopmlError(f"{path}: cannot tell the output format from the extension {path.suffix!r} (use .parquet or .csv)")
    return fmt


class _Writer:
    """Appends scored chunks to a temporary file; :meth:`commit` renames it to the output."""

    def __init__(self, path: Path, tmp: Path, schema: pa.Schema) -> None:
        self.path = path
        self.tmp = tmp
        self.schema = schema.append(pa.field("score", pa.float64())).append(pa.field("model_version", pa.int64()))
        self.writer: pq.ParquetWriter | pcsv.CSVWriter
        if output_format(path) == "parquet":
            self.writer = pq.ParquetWriter(tmp, self.schema)
        else:
            self.writer = pcsv.CSVWriter(tmp, self.schema)

    def write(self, chunk: pa.RecordBatch, scores: npt.NDArray[np.float64], version: int) -> None:
        arrays = [*chunk.columns, pa.array(scores, pa.float64()), pa.array(np.full(len(scores), version, dtype=np.int64))]
        self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class BatchResult:
    """A finished batch run; the seconds split the work (reading and writing are the rest of ``seconds``)."""

    input: Path
    output: Path
    rows: int
    chunks: int
    model_version: int
    seconds: float
    feature_seconds: float
    score_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "rows": self.rows,
            "chunks": self.chunks,
            "model_version": self.model_version,
            "seconds": round(self.seconds, 3),
            "feature_seconds": round(self.feature_seconds, 3),
            "score_seconds": round(self.score_seconds, 3),
        }


def predict_file(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    registry: Registry,
    input_path: Path,
    output_path: Path,
    version: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> BatchResult:
    """Score every row of ``input_path`` into ``output_path`` (see the module docstring)."""
    started = time.perf_counter()
    if chunk_rows < 1:
        raise LoopmlError(f"--chunk-rows: must be at least 1, got {chunk_rows}")
    output_format(output_path)
    if input_path.resolve() == output_path.resolve():
        raise LoopmlError(f"{output_path}: the output must not be the input file")
    model = load_model(spec, registry, feature_columns(spec), version)
    time_column = request_time_feature(spec) or spec.sources[spec.label.source].timestamp or ""
    source = InputFile(input_path, chunk_rows, _csv_types(spec, time_column))
    try:
        return _score_file(spec, snapshot_paths, source, output_path, model, progress, started)
    finally:
        source.close()


def _score_file(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    source: InputFile,
    output_path: Path,
    model: LoadedModel,
    progress: Progress | None,
    started: float,
) -> BatchResult:
    input_path = source.path
    output_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".loopml-predict-", dir=output_path.parent))
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    rows = n_chunks = 0
    feature_s = score_s = 0.0
    label = f"scoring {input_path.name}"
    try:
        features = ChunkFeatures(spec, snapshot_paths, input_path, source.schema, scratch)
        try:
            writer = _Writer(output_path, tmp, source.schema)
            try:
                if progress is not None:
                    progress(label, 0.0)
                for chunk, fraction in source:
                    t0 = time.perf_counter()
                    assembled = features.assemble(chunk, rows)
                    t1 = time.perf_counter()
                    scores = model.score(assembled, f" on rows {rows + 1:,}-{rows + chunk.num_rows:,} of {input_path}")
                    score_s += time.perf_counter() - t1
                    feature_s += t1 - t0
                    writer.write(chunk, scores, model.version)
                    rows += chunk.num_rows
                    n_chunks += 1
                    if progress is not None:
                        progress(label, fraction)
            finally:
                writer.close()
        finally:
            features.close()
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return BatchResult(
        input=input_path,
        output=output_path,
        rows=rows,
        chunks=n_chunks,
        model_version=model.version,
        seconds=time.perf_counter() - started,
        feature_seconds=feature_s,
        score_seconds=score_s,
    )
