"""Point-in-time-correct feature tables, computed offline in DuckDB.

Semantics (the online path, :mod:`loopml.features.materialize` and
:mod:`loopml.features.vector`, uses the same SQL and transforms, so they match):

- A *spine row* is an entity value ``k`` at a time ``t``. For a view with
  availability delay ``d`` and a window ``w``, the features of the spine row
  aggregate the rows of the view's source with entity key ``k`` and timestamp
  ``s`` where ``t - d - w < s < t - d`` (the default), or
  ``t - d - w < s <= t - d`` when ``features.inclusive`` is true. So by default
  an event never sees itself nor any event at exactly its own timestamp (ties
  are defined, not left to row order).
- Timestamps are compared in exact microseconds (``TIMESTAMP``; timezone-aware
  columns are read in UTC, dates as midnight).
- Functions: ``count`` is the number of rows in the window (NULL values
  included); ``sum``, ``mean``, ``std`` (sample standard deviation), ``min``,
  ``max`` and ``last`` (the value of the latest row, ties broken by position in
  the source file) ignore NULL values, like SQL aggregates.
- Missing history: ``count`` and ``sum`` are 0; every other function, and
  ``std`` over fewer than two values, is ``features.default``. Every feature is
  a float and never NULL. A spine row without an entity key or a time has
  missing history.
- ``ttl``: when the entity's latest visible event (``s < t - d``, or ``<=``)
  is older than the ttl (``t - s > ttl``), all the view's features take the
  missing-history values.
- Transforms are applied after the aggregates by
  :func:`loopml.features.transforms.apply_transforms`, on Arrow batches; their
  inputs are view outputs and the spine's columns of the request features.

How: the spine of a training set is the label source itself, one output row
per source row in file order (a row id from the Parquet file row number).
Views over that same source are computed with window functions over the
source (one ``RANGE BETWEEN ... PRECEDING AND ... PRECEDING`` frame per window;
see :mod:`loopml.features.windows`). Views over another source, and any other
spine of (entity, time) rows, go through :func:`point_in_time_join`, which
unions the spine into the event stream and windows over the union. Nothing is
merged and then filtered, so memory grows with the table, not with
entity x time pairs (the Feast pitfall). The result is streamed batch by batch
into a Parquet file that appears atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import DataError, LoopmlError
from loopml.features.definitions import check_features, feature_columns, view_key, view_outputs, view_value_columns
from loopml.features.transforms import apply_transforms
from loopml.features.windows import quote, view_sql
from loopml.spec.model import Spec

__all__ = ["BuildResult", "Progress", "build_training_set", "connect", "point_in_time_join", "register_source"]

Progress = Callable[[str, float], None]

#: Rows per Arrow batch while streaming the result into Parquet.
BATCH_ROWS = 262_144
ROW_ID = "__rid"
#: DuckDB types a time column may have (snapshots hold TIMESTAMP or DATE); all are cast to TIMESTAMP.
TIME_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE", "DATE"})


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int
    features: list[str]
    seconds: float


def connect(temp_directory: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection set up for feature work (UTC, all cores)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    if temp_directory is not None:
        con.execute(f"SET temp_directory = '{_sql_string(str(temp_directory))}'")
    return con


def _sql_string(value: str) -> str:
    return value.replace("'", "''")


def _parquet_files(name: str, path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if files:
            return files
    elif path.is_file():
        return [path]
    raise DataError(f"{path}: no Parquet snapshot of source {name!r} here")


def register_source(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> str:
    """Create a view over a source snapshot (a Parquet file or a folder of them).

    The view has the file's columns plus ``__rid``, the row's position in the
    snapshot (files in name order), which orders ties. Returns the view name.
    """
    parts = []
    offset = 0
    for file in _parquet_files(name, path):
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
        parts.append(
            f"SELECT * EXCLUDE (file_row_number), file_row_number + {offset} AS {ROW_ID} "
            f"FROM read_parquet('{_sql_string(str(file))}', file_row_number = true)"
        )
        offset += rows
    view = f"__src_{name}"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {quote(view)} AS {' UNION ALL BY NAME '.join(parts)}")
    return view


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Column name -> DuckDB type, in order."""
    return {str(row[0]): str(row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {quote(relation)}").fetchall()}


def _require_time(columns: Mapping[str, str], column: str, where: str) -> None:
    if column in columns and columns[column] not in TIME_TYPES:
        raise DataError(f"{where}: column {column!r} is {columns[column]}, not a timestamp (expected one of TIMESTAMP, DATE)")


def _require(columns: Sequence[str], needed: Sequence[str], where: str, why: str) -> None:
    for column in needed:
        if column not in columns:
            raise DataError(f"{where}: column {column!r} is missing (needed by {why})")


def _union_sql(
    spec: Spec, view_names: Sequence[str], events: str, spine_rows: str, span: tuple[datetime, datetime] | None
) -> str:
    """The base rows of the general path: the events, then the spine rows with NULL values.

    Events outside the time span the spine can see (the longest delay plus
    window before its earliest row, up to its latest row) are skipped: they
    fall in no frame. The latest-event column therefore only looks that far
    back, which changes nothing, since without an event in the window every
    feature has its missing value whatever the ttl says.
    """
    views = [spec.features.views[v] for v in view_names]
    key = quote(view_key(spec, view_names[0]))
    ts = quote(spec.sources[views[0].source].timestamp or "")
    lookback = max(v.delay + w for v in views for agg in v.aggregations for w in agg.windows)
    nearest = min(v.delay for v in views)
    values = list(dict.fromkeys(c for v in view_names for c in view_value_columns(spec, v)))
    event_values = "".join(f", CAST({quote(c)} AS DOUBLE) AS {quote(c)}" for c in values)
    spine_values = "".join(f", NULL::DOUBLE AS {quote(c)}" for c in values)
    in_span = "FALSE"  # no spine row has a time: no event is visible, but every spine row is kept
    if span is not None:
        in_span = f"CAST({ts} AS TIMESTAMP) BETWEEN {_timestamp(span[0], lookback)} AND {_timestamp(span[1], nearest)}"
    return (
        f"SELECT {key}, CAST({ts} AS TIMESTAMP) AS __ts, 1 AS __ev, CAST({ts} AS TIMESTAMP) AS __ets, {ROW_ID} AS __ord"
        f"{event_values}, NULL::BIGINT AS __srid FROM {quote(events)} WHERE {key} IS NOT NULL AND {in_span} "
        f"UNION ALL SELECT {key}, __spine_ts AS __ts, NULL::INTEGER AS __ev, NULL::TIMESTAMP AS __ets, NULL::BIGINT AS __ord"
        f"{spine_values}, __srid FROM ({spine_rows})"
    )


def _timestamp(value: datetime, minus: timedelta) -> str:
    try:
        return f"TIMESTAMP '{(value - minus).isoformat(sep=' ')}'"
    except OverflowError:
        return f"TIMESTAMP '{datetime.min.isoformat(sep=' ')}'"


def _span(con: duckdb.DuckDBPyConnection, spine: str, timestamp: str) -> tuple[datetime, datetime] | None:
    """Earliest and latest time of a spine, None when it has no timed row."""
    ts = f"CAST({quote(timestamp)} AS TIMESTAMP)"
    first, last = con.execute(f"SELECT min({ts}), max({ts}) FROM {quote(spine)}").fetchall()[0]
    if isinstance(first, datetime) and isinstance(last, datetime):
        return first, last
    return None


def _group_views(spec: Spec, views: Sequence[str]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for name in views:
        groups.setdefault((spec.features.views[name].source, view_key(spec, name)), []).append(name)
    return groups


def _pit_sql(
    spec: Spec,
    spine: str,
    sources: Mapping[str, str],
    timestamp: str,
    row_id: str,
    views: Sequence[str],
    last_event: bool,
    span: tuple[datetime, datetime] | None,
) -> str:
    parts = []
    for g, ((source, key), names) in enumerate(_group_views(spec, views).items()):
        spine_rows = (
            f"SELECT {quote(key)}, CAST({quote(timestamp)} AS TIMESTAMP) AS __spine_ts, {quote(row_id)} AS __srid "
            f"FROM {quote(spine)}"
        )
        union = _union_sql(spec, names, sources[source], spine_rows, span)
        pieces = [view_sql(spec, name, f"__g{g}v{i}", last_event) for i, name in enumerate(names)]
        inner = ", ".join(e for p in pieces for e in p.inner)
        outer = ", ".join(e for p in pieces for e in p.outer)
        windows = ", ".join(w for p in pieces for w in p.windows)
        parts.append(
            f"(SELECT __srid, {outer} FROM (SELECT *, {inner} FROM ({union}) WINDOW {windows}) WHERE __srid IS NOT NULL) g{g}"
        )
    select = ", ".join([f"g0.__srid AS {quote(row_id)}"] + [f"g{g}.* EXCLUDE (__srid)" for g in range(len(parts))])
    joins = "".join(f" JOIN {part} ON g0.__srid = g{g + 1}.__srid" for g, part in enumerate(parts[1:]))
    return f"SELECT {select} FROM {parts[0]}{joins}"


def point_in_time_join(
    con: duckdb.DuckDBPyConnection,
    spine: str | duckdb.DuckDBPyRelation,
    spec: Spec,
    *,
    sources: Mapping[str, str],
    timestamp: str,
    row_id: str = ROW_ID,
    views: Sequence[str] | None = None,
    last_event: bool = False,
) -> duckdb.DuckDBPyRelation:
    """Features of arbitrary (entity, time) spine rows, as of each row's time.

    ``spine`` is a table, view or relation with a unique integer ``row_id``
    column, the time column ``timestamp`` and the entity key column of every
    view asked for (``views``, default all). ``sources`` maps each view's
    source name to a view made by :func:`register_source`. Returns a relation
    of ``row_id`` and every output of those views (plus the latest visible event
    time of each view with ``last_event``), one row per spine row, unordered.
    """
    names = list(spec.features.views) if views is None else list(views)
    if not names:
        raise LoopmlError("point_in_time_join: no feature views to join")
    if isinstance(spine, duckdb.DuckDBPyRelation):
        spine_name = "__spine"
        spine.create_view(spine_name, replace=True)
    else:
        spine_name = spine
    spine_columns = _columns(con, spine_name)
    needed = [row_id, timestamp] + [view_key(spec, n) for n in names]
    _require(list(spine_columns), needed, "spine", "the point-in-time join")
    _require_time(spine_columns, timestamp, "spine")
    for name in names:
        source = spec.features.views[name].source
        if source not in sources:
            raise LoopmlError(f"features.views.{name}.source: source {source!r} is not registered")
    span = _span(con, spine_name, timestamp)
    return con.sql(_pit_sql(spec, spine_name, sources, timestamp, row_id, names, last_event, span))


def _check_source_columns(
    con: duckdb.DuckDBPyConnection, spec: Spec, tables: Mapping[str, str], paths: Mapping[str, Path]
) -> None:
    for name, view in spec.features.views.items():
        columns = _columns(con, tables[view.source])
        timestamp = spec.sources[view.source].timestamp or ""
        needed = [view_key(spec, name), timestamp, *view_value_columns(spec, name)]
        _require(list(columns), needed, str(paths[view.source]), f"features.views.{name}")
        _require_time(columns, timestamp, str(paths[view.source]))


def _fast_path_sql(spec: Spec, table: str, spine_columns: Sequence[str], general: str | None) -> str:
    timestamp = quote(spec.sources[spec.label.source].timestamp or "")
    fast = [v for v, view in spec.features.views.items() if view.source == spec.label.source]
    pieces = [view_sql(spec, name, f"__f{i}") for i, name in enumerate(fast)]
    inner = f"SELECT * FROM {quote(table)}"
    if pieces:
        base = (
            f"SELECT *, CAST({timestamp} AS TIMESTAMP) AS __ts, 1 AS __ev, CAST({timestamp} AS TIMESTAMP) AS __ets, "
            f"{ROW_ID} AS __ord FROM {quote(table)}"
        )
        inner_exprs = ", ".join(e for p in pieces for e in p.inner)
        inner = f"SELECT *, {inner_exprs} FROM ({base}) WINDOW {', '.join(w for p in pieces for w in p.windows)}"
    select = [f"agg.{quote(c)}" for c in spine_columns] + [e for p in pieces for e in p.outer]
    sql = f"SELECT {', '.join(select)}"
    if general is not None:
        sql += ", g.* EXCLUDE (__rid)"
    sql += f" FROM ({inner}) agg"
    if general is not None:
        sql += f" JOIN ({general}) g ON agg.{ROW_ID} = g.{ROW_ID}"
    return sql + f" ORDER BY agg.{ROW_ID}"


def _numpy_column(column: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.generic]:
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        return np.asarray(column.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False), dtype="datetime64[us]")
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _write(
    reader: pa.RecordBatchReader, spec: Spec, spine_columns: list[str], tmp: Path, total: int, progress: Progress | None
) -> int:
    features = feature_columns(spec)
    new = [f for f in features if f not in spine_columns]
    transform_inputs = {i for t in spec.features.transforms.values() for i in t.inputs} - set(spec.features.transforms)
    schema = pa.schema([reader.schema.field(c) for c in spine_columns] + [pa.field(f, pa.float64()) for f in new])
    rows = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in reader:
            inputs = {name: _numpy_column(batch.column(name)) for name in transform_inputs}
            transformed = apply_transforms(spec, inputs)
            arrays = [batch.column(c) for c in spine_columns]
            arrays += [pa.array(transformed[f]) if f in transformed else batch.column(f) for f in new]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += batch.num_rows
            if progress is not None:
                progress("features: writing", rows / max(total, 1))
    return rows


def _check_spine(spec: Spec, spine_columns: list[str], spine_path: Path) -> None:
    outputs = [o.name for v in spec.features.views for o in view_outputs(spec, v)] + list(spec.features.transforms)
    for name in outputs:
        if name in spine_columns:
            raise DataError(f"{spine_path}: column {name!r} clashes with the feature of the same name")
    requests = {i for t in spec.features.transforms.values() for i in t.inputs} & set(spec.features.request)
    requests |= set(feature_columns(spec)) & set(spec.features.request)
    _require(spine_columns, sorted(requests), str(spine_path), "features.request")
    if spec.features.views and spec.sources[spec.label.source].timestamp is None:
        raise LoopmlError(f"sources.{spec.label.source}.timestamp: the label source needs a timestamp for point-in-time features")
    for name in spec.features.views:
        _require(spine_columns, [view_key(spec, name)], str(spine_path), f"features.views.{name} (entity key)")


def _snapshot(snapshot_paths: Mapping[str, Path], name: str) -> Path:
    if name not in snapshot_paths:
        raise DataError(f"source {name!r} has no snapshot (run 'loopml ingest' first)")
    return snapshot_paths[name]


def build_training_set(
    spec: Spec, snapshot_paths: Mapping[str, Path], out_path: Path, progress: Progress | None = None
) -> BuildResult:
    """Write the label source's rows with their point-in-time features to ``out_path``.

    One row per source row in source order: every source column, then the
    feature columns of :func:`~loopml.features.definitions.feature_columns`
    that are not source columns already (numeric request features are the
    source's own columns).
    """
    started = time.perf_counter()
    check_features(spec)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".duckdb-", dir=out_path.parent))
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        con = connect(scratch)
        try:
            spine_source = spec.label.source
            names = {spine_source} | {v.source for v in spec.features.views.values()}
            paths = {n: _snapshot(snapshot_paths, n) for n in sorted(names)}
            tables = {n: register_source(con, n, p) for n, p in paths.items()}
            spine_columns = [c for c in _columns(con, tables[spine_source]) if c != ROW_ID]
            _check_spine(spec, spine_columns, paths[spine_source])
            _check_source_columns(con, spec, tables, paths)
            other = [v for v, view in spec.features.views.items() if view.source != spine_source]
            general = None
            if other:
                ts = spec.sources[spine_source].timestamp or ""
                span = _span(con, tables[spine_source], ts)
                general = _pit_sql(spec, tables[spine_source], tables, ts, ROW_ID, other, False, span)
            total = int(con.execute(f"SELECT count(*) FROM {quote(tables[spine_source])}").fetchall()[0][0])
            if progress is not None:
                progress("features: computing windows", 0.0)
            reader = con.sql(_fast_path_sql(spec, tables[spine_source], spine_columns, general)).to_arrow_reader(BATCH_ROWS)
            rows = _write(reader, spec, spine_columns, tmp, total, progress)
        finally:
            con.close()
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return BuildResult(path=out_path, rows=rows, features=feature_columns(spec), seconds=time.perf_counter() - started)
