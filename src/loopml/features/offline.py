"""Point-in-time-correct feature tables, computed offline in DuckDB.

Semantics (``docs/features.md`` has them with an executed example; the online
path, :mod:`loopml.features.online.windows`, computes the same windows from
each entity's events, and ``tests/test_online_skew.py`` holds the two equal):

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
- Null indicator (``indicator: true`` on a view, or ``features.null_indicators``):
  ``{view}_missing`` is 1.0 when the entity has no visible event in the view's
  longest window or the ttl has expired (or the row has no key or time), else
  0.0 (:func:`loopml.features.definitions.history_missing`).
- Transforms are applied after the aggregates by
  :func:`loopml.features.transforms.apply_transforms`, on Arrow batches; their
  inputs are view outputs and the spine's columns of the request features.
- String request features are carried as text columns (for categorical
  encodings), never as model inputs.

How: the spine of a training set is the label source itself, one output row
per source row in file order (a row id from the Parquet file row number), or
any file of (entity keys, time) rows (:func:`build_spine_training_set`, one
output row per file row in file order, through the general join).
Views over that same source are computed with window functions over the
source (one ``RANGE BETWEEN ... PRECEDING AND ... PRECEDING`` frame per window;
see :mod:`loopml.features.windows`). Views over another source, and any other
spine of (entity, time) rows, go through :func:`loopml.features.join.point_in_time_join`,
which unions the spine into the event stream and windows over the union.
Nothing is merged and then filtered, so memory grows with the table, not with
entity x time pairs (the Feast pitfall). DuckDB orders the result by row id
(spilling to a scratch folder next to the output if it must), and it is
streamed batch by batch, through the transforms, into a Parquet file that
appears atomically (temporary file + rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import DataError, LoopmlError
from loopml.features.definitions import (
    check_features,
    feature_columns,
    has_indicator,
    indicator_name,
    request_time_feature,
    string_request_features,
    view_key,
    view_outputs,
)
from loopml.features.join import (
    ROW_ID,
    check_view_sources,
    column_types,
    connect,
    pit_sql,
    register_source,
    require,
    require_time,
    spine_span,
)
from loopml.features.spine import load_spine
from loopml.features.transforms import apply_transforms
from loopml.features.windows import quote, view_sql
from loopml.spec.model import Spec

__all__ = ["BuildResult", "Progress", "build_spine_training_set", "build_training_set"]

Progress = Callable[[str, float], None]

#: Rows per Arrow batch while streaming the result into Parquet.
BATCH_ROWS = 262_144


@dataclass(frozen=True)
class BuildResult:
    """A written training set; ``filled`` lists request features a spine file lacked (NULL, or its time)."""

    path: Path
    rows: int
    features: list[str]
    seconds: float
    filled: tuple[str, ...] = ()


def _as_text(spec: Spec, column: str, types: Mapping[str, str], alias: str) -> str:
    """A spine column as selected: string request features become VARCHAR."""
    ref = f"{alias}.{quote(column)}"
    if column in string_request_features(spec) and types[column] != "VARCHAR":
        return f"CAST({ref} AS VARCHAR) AS {quote(column)}"
    return ref


def _fast_path_sql(spec: Spec, table: str, spine_columns: Mapping[str, str], general: str | None) -> str:
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
    select = [_as_text(spec, c, spine_columns, "agg") for c in spine_columns] + [e for p in pieces for e in p.outer]
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


def _derived_names(spec: Spec) -> list[str]:
    """Every column the feature stage adds: view outputs, null indicators, transforms."""
    names: list[str] = []
    for v in spec.features.views:
        names.extend(o.name for o in view_outputs(spec, v))
        if has_indicator(spec, v):
            names.append(indicator_name(v))
    return names + list(spec.features.transforms)


def _check_clashes(spec: Spec, spine_columns: Sequence[str], spine_path: Path) -> None:
    for name in _derived_names(spec):
        if name in spine_columns:
            raise DataError(f"{spine_path}: column {name!r} clashes with the feature of the same name")


def _check_spine(spec: Spec, spine_columns: list[str], spine_path: Path) -> None:
    _check_clashes(spec, spine_columns, spine_path)
    requests = {i for t in spec.features.transforms.values() for i in t.inputs} & set(spec.features.request)
    requests |= set(feature_columns(spec)) & set(spec.features.request)
    requests |= set(string_request_features(spec))
    require(spine_columns, sorted(requests), str(spine_path), "features.request")
    if spec.features.views and spec.sources[spec.label.source].timestamp is None:
        raise LoopmlError(f"sources.{spec.label.source}.timestamp: the label source needs a timestamp for point-in-time features")
    for name in spec.features.views:
        require(spine_columns, [view_key(spec, name)], str(spine_path), f"features.views.{name} (entity key)")


def _snapshot(snapshot_paths: Mapping[str, Path], name: str) -> Path:
    if name not in snapshot_paths:
        raise DataError(f"source {name!r} has no snapshot (run 'loopml ingest' first)")
    return snapshot_paths[name]


@contextmanager
def _atomic_output(out_path: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    """A DuckDB connection spilling next to ``out_path`` and a temporary file that becomes ``out_path`` on success."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".duckdb-", dir=out_path.parent))
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        con = connect(scratch)
        try:
            yield con, tmp
        finally:
            con.close()
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def build_training_set(
    spec: Spec, snapshot_paths: Mapping[str, Path], out_path: Path, progress: Progress | None = None
) -> BuildResult:
    """Write the label source's rows with their point-in-time features to ``out_path``.

    One row per source row in source order: every source column (string
    request features as text), then the feature columns of
    :func:`~loopml.features.definitions.feature_columns` that are not source
    columns already (numeric request features are the source's own columns).
    """
    started = time.perf_counter()
    check_features(spec)
    with _atomic_output(out_path) as (con, tmp):
        spine_source = spec.label.source
        names = {spine_source} | {v.source for v in spec.features.views.values()}
        paths = {n: _snapshot(snapshot_paths, n) for n in sorted(names)}
        tables = {n: register_source(con, n, p) for n, p in paths.items()}
        spine_types = column_types(con, tables[spine_source])
        spine_columns = [c for c in spine_types if c != ROW_ID]
        require_time(spine_types, spec.sources[spine_source].timestamp or "", str(paths[spine_source]))
        _check_spine(spec, spine_columns, paths[spine_source])
        spine_types.pop(ROW_ID)
        check_view_sources(con, spec, list(spec.features.views), tables, paths)
        other = [v for v, view in spec.features.views.items() if view.source != spine_source]
        general = None
        if other:
            ts = spec.sources[spine_source].timestamp or ""
            span = spine_span(con, tables[spine_source], ts)
            general = pit_sql(spec, tables[spine_source], tables, ts, ROW_ID, other, False, span, con)
        total = int(con.execute(f"SELECT count(*) FROM {quote(tables[spine_source])}").fetchall()[0][0])
        if progress is not None:
            progress("features: computing windows", 0.0)
        reader = con.sql(_fast_path_sql(spec, tables[spine_source], spine_types, general)).to_arrow_reader(BATCH_ROWS)
        rows = _write(reader, spec, spine_columns, tmp, total, progress)
    return BuildResult(path=out_path, rows=rows, features=feature_columns(spec), seconds=time.perf_counter() - started)


def _request_fills(spec: Spec, spine_columns: Mapping[str, str], time_column: str) -> list[tuple[str, str]]:
    """``(name, SQL)`` of each request feature the spine lacks: the request time is the spine's time, the rest NULL."""
    fills = []
    time_feature = request_time_feature(spec)
    for name, rule in spec.features.request.items():
        if name in spine_columns:
            continue
        if name == time_feature:
            sql = f"CAST(s.{quote(time_column)} AS TIMESTAMP)"
        else:
            sql = {"string": "NULL::VARCHAR", "timestamp": "NULL::TIMESTAMP"}.get(rule.type, "NULL::DOUBLE")
        fills.append((name, f"{sql} AS {quote(name)}"))
    return fills


def build_spine_training_set(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    spine_path: Path,
    out_path: Path,
    spine_time: str | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Write the features of every row of a spine file, as of its time, to ``out_path``.

    The spine (Parquet, CSV or JSON Lines; see :mod:`loopml.features.spine`)
    holds each view's entity key and a time column, ``spine_time`` (default:
    the label source's timestamp name); any other column (a label, ids) is
    carried through. Output: one row per spine row, in spine order: the
    spine's columns (string request features as text), then each request
    feature the spine lacks (the first timestamp request feature takes the
    spine's time, the others are NULL, listed in ``BuildResult.filled``), then
    the remaining feature columns. Every view goes through
    :func:`~loopml.features.join.point_in_time_join`.
    """
    started = time.perf_counter()
    check_features(spec)
    time_column = spine_time or spec.sources[spec.label.source].timestamp or ""
    if not time_column:
        raise LoopmlError("--spine-time: the label source has no timestamp; name the spine's time column")
    with _atomic_output(out_path) as (con, tmp):
        if progress is not None:
            progress("features: reading the spine", 0.0)
        names = sorted({v.source for v in spec.features.views.values()})
        paths = {n: _snapshot(snapshot_paths, n) for n in names}
        tables = {n: register_source(con, n, p) for n, p in paths.items()}
        check_view_sources(con, spec, list(spec.features.views), tables, paths)
        keys: dict[str, tuple[str, str]] = {}
        for v, view in spec.features.views.items():
            key = view_key(spec, v)
            keys.setdefault(key, (column_types(con, tables[view.source])[key], f"features.views.{v}"))
        spine = load_spine(con, spine_path, time_column, keys)
        _check_clashes(spec, list(spine.columns), spine_path)
        fills = _request_fills(spec, spine.columns, time_column)
        select = [_as_text(spec, c, spine.columns, "s") for c in spine.columns] + [sql for _, sql in fills]
        sql = f"SELECT {', '.join(select)} FROM {quote(spine.table)} s ORDER BY s.{ROW_ID}"
        if spec.features.views:
            if progress is not None:
                progress("features: computing windows", 0.0)
            span = spine_span(con, spine.table, time_column)
            joined = pit_sql(spec, spine.table, tables, time_column, ROW_ID, list(spec.features.views), False, span, con)
            sql = (
                f"SELECT {', '.join(select)}, g.* EXCLUDE ({ROW_ID}) FROM {quote(spine.table)} s "
                f"JOIN ({joined}) g ON s.{ROW_ID} = g.{ROW_ID} ORDER BY s.{ROW_ID}"
            )
        passthrough = list(spine.columns) + [name for name, _ in fills]
        rows = _write(con.sql(sql).to_arrow_reader(BATCH_ROWS), spec, passthrough, tmp, spine.rows, progress)
    filled = tuple(name for name, _ in fills)
    return BuildResult(out_path, rows, feature_columns(spec), time.perf_counter() - started, filled)
