"""Load feature values into the online store, computed by the offline SQL.

For every view, the spine is one row per entity of the view's source at the
time ``as_of``, and the values are computed by
:func:`loopml.features.offline.point_in_time_join`, the same window SQL that
builds the training set, so online values cannot drift from offline ones (the
skew test in ``tests/test_features_online.py`` holds the two together).
Next to the features, each row keeps the entity's latest event visible at
``as_of`` (under :data:`~loopml.features.definitions.LAST_EVENT_KEY`, epoch
microseconds) so that the online path can apply the view's ttl at request time.

This first version materializes in full: the online values are those as of
``as_of`` and are not re-windowed per request. Incremental updates from the
event stream arrive in a later issue.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from loopml.errors import DataError
from loopml.features.definitions import LAST_EVENT_KEY, check_features, view_key, view_outputs
from loopml.features.join import check_view_sources, connect, point_in_time_join, register_source
from loopml.features.offline import Progress
from loopml.features.online import EntityKey, OnlineStore
from loopml.features.windows import last_event_column, quote
from loopml.spec.model import Spec

__all__ = ["MaterializeResult", "materialize"]

#: Entities written to the store per transaction.
WRITE_CHUNK = 50_000
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class MaterializeResult:
    rows: dict[str, int]
    as_of: dict[str, datetime]
    seconds: float


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _latest(con: duckdb.DuckDBPyConnection, table: str, timestamp: str) -> datetime | None:
    rows = con.execute(f"SELECT max(CAST({quote(timestamp)} AS TIMESTAMP)) FROM {quote(table)}").fetchall()
    value = rows[0][0]
    return value if isinstance(value, datetime) else None


StoreRow = tuple[EntityKey, dict[str, float], datetime]


def _rows(table: pa.Table, spec: Spec, view_name: str, key: str, as_of: datetime) -> list[StoreRow]:
    names = [o.name for o in view_outputs(spec, view_name)]
    columns = [table.column(n).to_numpy().astype(np.float64).tolist() for n in names]
    last = table.column(last_event_column(view_name)).cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
    last_us = np.where(np.isnat(last), -1, last.astype("datetime64[us]").view(np.int64))
    keys = table.column(key).to_pylist()
    out: list[StoreRow] = []
    for i, values in enumerate(zip(*columns, strict=True)):
        row = dict(zip(names, values, strict=True))
        if not np.isnat(last[i]):
            row[LAST_EVENT_KEY] = float(last_us[i])
        out.append((keys[i], row, as_of))
    return out


def materialize(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    store: OnlineStore,
    as_of: datetime | None = None,
    progress: Progress | None = None,
) -> MaterializeResult:
    """Write every view's features of every entity, as of ``as_of``, to ``store``.

    ``as_of`` defaults, per view, to one microsecond after the latest event of
    the view's source (so, with exclusive windows, the latest event counts).
    Timezone-aware times are converted to naive UTC.
    """
    started = time.perf_counter()
    check_features(spec)
    rows: dict[str, int] = {}
    times: dict[str, datetime] = {}
    scratch = Path(tempfile.mkdtemp(prefix="loopml-materialize-"))
    con = connect(scratch)
    try:
        tables: dict[str, str] = {}
        for n, (view_name, view) in enumerate(spec.features.views.items()):
            if view.source not in snapshot_paths:
                raise DataError(f"source {view.source!r} has no snapshot (run 'loopml ingest' first)")
            if view.source not in tables:
                tables[view.source] = register_source(con, view.source, snapshot_paths[view.source])
            check_view_sources(con, spec, [view_name], tables, snapshot_paths)
            timestamp = spec.sources[view.source].timestamp or ""
            latest = _latest(con, tables[view.source], timestamp)
            moment = _naive_utc(as_of) if as_of is not None else (latest + _ONE_US if latest is not None else None)
            if moment is None:
                rows[view_name] = 0
                continue
            key = quote(view_key(spec, view_name))
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE __mat_spine AS SELECT {key}, TIMESTAMP '{moment.isoformat(sep=' ')}' AS __as_of, "
                f"row_number() OVER (ORDER BY {key}) AS __rid FROM (SELECT DISTINCT {key} FROM {quote(tables[view.source])} "
                f"WHERE {key} IS NOT NULL)"
            )
            point_in_time_join(
                con, "__mat_spine", spec, sources=tables, timestamp="__as_of", views=[view_name], last_event=True
            ).create_view("__mat_features", replace=True)
            result = con.sql(f"SELECT s.{key}, f.* EXCLUDE (__rid) FROM __mat_spine s JOIN __mat_features f USING (__rid)")
            batch = _rows(result.to_arrow_table(), spec, view_name, view_key(spec, view_name), moment)
            for start in range(0, len(batch), WRITE_CHUNK):
                store.write(view_name, batch[start : start + WRITE_CHUNK])
            rows[view_name] = len(batch)
            times[view_name] = moment
            if progress is not None:
                progress(f"materialized {view_name}", (n + 1) / len(spec.features.views))
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return MaterializeResult(rows=rows, as_of=times, seconds=time.perf_counter() - started)
