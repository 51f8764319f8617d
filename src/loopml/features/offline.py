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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import DataError, LoopmlError
from loopml.features.definitions import check_features, feature_columns, view_key, view_outputs
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
from loopml.features.transforms import apply_transforms
from loopml.features.windows import quote, view_sql
from loopml.spec.model import Spec

__all__ = ["BuildResult", "Progress", "build_training_set"]

Progress = Callable[[str, float], None]

#: Rows per Arrow batch while streaming the result into Parquet.
BATCH_ROWS = 262_144


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int
    features: list[str]
    seconds: float


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
    require(spine_columns, sorted(requests), str(spine_path), "features.request")
    if spec.features.views and spec.sources[spec.label.source].timestamp is None:
        raise LoopmlError(f"sources.{spec.label.source}.timestamp: the label source needs a timestamp for point-in-time features")
    for name in spec.features.views:
        require(spine_columns, [view_key(spec, name)], str(spine_path), f"features.views.{name} (entity key)")


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
            spine_types = column_types(con, tables[spine_source])
            spine_columns = [c for c in spine_types if c != ROW_ID]
            require_time(spine_types, spec.sources[spine_source].timestamp or "", str(paths[spine_source]))
            _check_spine(spec, spine_columns, paths[spine_source])
            check_view_sources(con, spec, list(spec.features.views), tables, paths)
            other = [v for v, view in spec.features.views.items() if view.source != spine_source]
            general = None
            if other:
                ts = spec.sources[spine_source].timestamp or ""
                span = spine_span(con, tables[spine_source], ts)
                general = pit_sql(spec, tables[spine_source], tables, ts, ROW_ID, other, False, span)
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
