"""Load the online store from the latest snapshot: every entity's recent events, per view.

The online state is events, not values (see :mod:`loopml.features.online.base`),
so materializing a view as of ``as_of`` loads, for every entity of the view's
source with an event at or before ``as_of``, its events inside the view's
horizon (``as_of - delay - longest window < s <= as_of``). The event id is
the one :func:`loopml.features.push.push_events` uses, the source's id column
(so an event both materialized and pushed counts once), or, for a source
without one, the row's position in the snapshot (the offline tie order). An
entity without such recent events is stored with none: it is known, its
values are the missing-history ones. Reads then compute the
features as of any later time; events that arrive later are appended with
:func:`loopml.features.push.push_events` or the stream consumer.

One DuckDB query per view streams the events ordered by entity; they are
grouped in Python and written in chunks of :data:`WRITE_CHUNK` entities with
:meth:`~loopml.features.online.base.OnlineStore.replace_view`, which swaps the
whole view atomically for readers. Events with a NULL key or time are never
loaded (ingest quarantines unparsable times; a NULL key belongs to no entity).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from loopml.errors import DataError
from loopml.features.definitions import check_features, view_horizon, view_key, view_value_columns
from loopml.features.join import check_view_sources, connect, register_source
from loopml.features.online.base import EntityKey, Event, OnlineStore, datetime_from_us, micros
from loopml.features.push import event_id_column
from loopml.features.windows import quote
from loopml.spec.model import Spec

__all__ = ["WRITE_CHUNK", "MaterializeResult", "materialize"]

Progress = Callable[[str, float], None]

#: Entities written to the store per chunk.
WRITE_CHUNK = 5_000
#: Rows per Arrow batch read from DuckDB.
_BATCH_ROWS = 65_536
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class MaterializeResult:
    #: entities written per view
    rows: dict[str, int]
    #: events written per view
    events: dict[str, int]
    as_of: dict[str, datetime]
    seconds: float


def _latest_us(con: duckdb.DuckDBPyConnection, table: str, timestamp: str) -> int | None:
    value = con.execute(f"SELECT max(epoch_us(CAST({quote(timestamp)} AS TIMESTAMP))) FROM {quote(table)}").fetchall()[0][0]
    return None if value is None else int(value)


def _events_sql(spec: Spec, view_name: str, table: str, as_of_us: int) -> str:
    view = spec.features.views[view_name]
    id_column = event_id_column(spec, view.source)
    # a NULL id (which a push would quarantine) still counts offline: it gets a negative id of its own
    event_id = "__rid" if id_column is None else f"coalesce(CAST({quote(id_column)} AS BIGINT), -1 - __rid)"
    key = quote(view_key(spec, view_name))
    ts = f"epoch_us(CAST({quote(spec.sources[view.source].timestamp or '')} AS TIMESTAMP))"
    values = "".join(f", CAST({quote(c)} AS DOUBLE) AS __v{i}" for i, c in enumerate(view_value_columns(spec, view_name)))
    since = as_of_us - view_horizon(view) // _ONE_US
    return (
        f"WITH known AS (SELECT DISTINCT {key} FROM {quote(table)} WHERE {key} IS NOT NULL AND {ts} <= {as_of_us}), "
        f"recent AS (SELECT {key}, {ts} AS __t, {event_id} AS __id{values} FROM {quote(table)} "
        f"WHERE {key} IS NOT NULL AND {ts} <= {as_of_us} AND {ts} > {since}) "
        f"SELECT * FROM known LEFT JOIN recent USING ({key}) ORDER BY {key}, __t, __id"
    )


def _entities(reader: duckdb.DuckDBPyRelation) -> Iterator[tuple[EntityKey, list[Event]]]:
    """(key, events) per entity from rows ordered by key, time, id (NULL time: a known entity without events)."""
    current: EntityKey | None = None
    events: list[Event] = []
    started = False
    for batch in reader.to_arrow_reader(_BATCH_ROWS):
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        keys, times, ids, values = columns[0], columns[1], columns[2], columns[3:]
        rows = zip(*values, strict=True) if values else (() for _ in keys)
        for key, t, i, row in zip(keys, times, ids, rows, strict=True):
            if not started or key != current:
                if started:
                    yield current, events  # type: ignore[misc]
                current, events, started = key, [], True
            if t is not None:
                events.append(Event(int(t), int(i), tuple(row)))
    if started:
        yield current, events  # type: ignore[misc]


def _chunks(
    entities: Iterator[tuple[EntityKey, list[Event]]], total: int, counts: list[int], report: Callable[[float], None]
) -> Iterator[list[tuple[EntityKey, list[Event]]]]:
    chunk: list[tuple[EntityKey, list[Event]]] = []
    for entity in entities:
        chunk.append(entity)
        counts[1] += len(entity[1])
        if len(chunk) >= WRITE_CHUNK:
            counts[0] += len(chunk)
            yield chunk
            report(counts[0] / max(total, 1))
            chunk = []
    if chunk:
        counts[0] += len(chunk)
        yield chunk
        report(1.0)


def materialize(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    store: OnlineStore,
    as_of: datetime | None = None,
    progress: Progress | None = None,
) -> MaterializeResult:
    """Replace every view's state in ``store`` by the entities' events as of ``as_of``.

    ``as_of`` defaults, per view, to one microsecond after the latest event of
    the view's source (the end of the data). Timezone-aware times are
    converted to naive UTC.
    """
    started = time.perf_counter()
    check_features(spec)
    rows: dict[str, int] = {}
    events: dict[str, int] = {}
    times: dict[str, datetime] = {}
    views = list(spec.features.views)
    scratch = Path(tempfile.mkdtemp(prefix="loopml-materialize-"))
    con = connect(scratch)
    try:
        tables: dict[str, str] = {}
        for n, view_name in enumerate(views):
            view = spec.features.views[view_name]
            if view.source not in snapshot_paths:
                raise DataError(f"source {view.source!r} has no snapshot (run 'loopml ingest' first)")
            if view.source not in tables:
                tables[view.source] = register_source(con, view.source, snapshot_paths[view.source])
            check_view_sources(con, spec, [view_name], tables, snapshot_paths)
            latest = _latest_us(con, tables[view.source], spec.sources[view.source].timestamp or "")
            end = latest + 1 if latest is not None else micros(datetime.now(UTC))  # the end of the data
            moment = micros(as_of) if as_of is not None else end
            key = quote(view_key(spec, view_name))
            ts = f"epoch_us(CAST({quote(spec.sources[view.source].timestamp or '')} AS TIMESTAMP))"
            total = int(
                con.execute(
                    f"SELECT count(DISTINCT {key}) FROM {quote(tables[view.source])} WHERE {key} IS NOT NULL AND {ts} <= {moment}"
                ).fetchall()[0][0]
            )

            def report(fraction: float, n: int = n, name: str = view_name) -> None:
                if progress is not None:
                    progress(f"materializing {name}", (n + fraction) / len(views))

            counts = [0, 0]
            entities = _entities(con.sql(_events_sql(spec, view_name, tables[view.source], moment)))
            when = datetime_from_us(moment)
            store.replace_view(view_name, _chunks(entities, total, counts, report), when)
            rows[view_name], events[view_name] = counts
            times[view_name] = when
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return MaterializeResult(rows=rows, events=events, as_of=times, seconds=time.perf_counter() - started)
