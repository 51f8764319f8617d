"""Latest-value lookups with numpy, streamed from DuckDB or in memory (see :mod:`loopml.features.asof`)."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import pyarrow as pa

import loopml.features.asof.tuning as tuning
from loopml.features.asof.cells import Cells, Latest, latest, own_cell
from loopml.features.asof.events import as_numpy, entity_codes, filled, key_kind, read_events, valid_mask
from loopml.features.asof.tuning import I64, Mask
from loopml.features.definitions import (
    has_indicator,
    indicator_name,
    missing_value,
    view_horizon,
    view_key,
    view_outputs,
)
from loopml.features.windows import last_event_column, quote
from loopml.spec.model import Spec

_ONE_US = timedelta(microseconds=1)


def _streamed(
    con: duckdb.DuckDBPyConnection,
    query: str,
    bounds: tuple[int, int, int, int, int],
    spine_keys: pa.ChunkedArray,
    cutoffs: I64,
    timed: Mask,
    columns: int,
    earliest: int | None,
) -> Latest | None:
    """The cells way (:func:`by_cells`) applied batch by batch as DuckDB streams the events: no array of them is made.

    For dense integer keys, whose bounds (rows, smallest and largest key and
    time: ``bounds``) DuckDB answers from the Parquet statistics. Each batch
    of 256 Ki rows becomes cells and keys in cache and one scatter into the
    table; only the values are kept (for the matched rows) and the events
    that share a cell with a spine row. Measured on the benchmark against
    the same on arrays of every event: the same user time, less system time
    (page faults of the big arrays: 0.3 s against 0.4 to 1.3 s). None (the caller
    then reads every event) when the keys are not dense, the table would be
    too big, or the source changed between the bounds and the read.
    """
    rows, low_key, high_key, first, last = bounds
    if (high_key - low_key).bit_length() > rows.bit_length() + 1:
        return None
    cells = Cells.fit(high_key - low_key + 1, rows, first, last)
    if cells is None:
        return None
    spine_rows, present = as_numpy(spine_keys, 0)
    wanted = np.asarray(spine_rows, dtype=np.int64)
    known = present & (wanted >= low_key) & (wanted <= high_key)
    query_cell, looking, earlier = cells.spine(np.where(known, wanted, low_key) - low_key, cutoffs, known & timed)
    marked = np.zeros(cells.cells, dtype=np.bool_)
    marked[query_cell[looking]] = True
    table = np.full(cells.cells, -1, dtype=np.int64)
    variants: dict[int, I64] = {}  # column -> its table, from the first batch where it has a NULL
    values = [np.empty(rows, dtype=np.float64) for _ in range(columns)]
    shared: list[tuple[I64, I64, I64, list[Mask]]] = []  # per batch: cell, time, position, validity per column
    offsets = np.arange(tuning.BATCH_ROWS, dtype=np.int64)
    # Per-batch scratch made once: allocating these for every batch costs more in page faults than the arithmetic.
    cell_buffer, key_buffer, shifted, work = (np.empty(tuning.BATCH_ROWS, dtype=np.int64) for _ in range(4))
    seen_buffer = np.empty(tuning.BATCH_ROWS, dtype=np.bool_)
    start = 0
    for batch in con.sql(query).to_arrow_reader(tuning.BATCH_ROWS):
        end = start + batch.num_rows
        if end > rows or batch.num_rows > tuning.BATCH_ROWS:
            return None
        keys, stamps = filled(batch.column(0), 0), filled(batch.column(1), 0)
        keep = valid_mask(batch.column(0))
        on_time = valid_mask(batch.column(1))
        keep = on_time if keep is None else keep if on_time is None else keep & on_time
        if earliest is not None:
            keep = stamps >= earliest if keep is None else keep & (stamps >= earliest)
        valid: list[Mask | None] = []
        for j in range(columns):
            values[j][start:end] = filled(batch.column(2 + j), 0.0)
            valid.append(valid_mask(batch.column(2 + j)))
        positions = np.add(offsets[: batch.num_rows], start, out=work[: batch.num_rows])
        if keep is not None:
            kept = np.flatnonzero(keep)
            keys, stamps, positions = keys[kept], stamps[kept], positions[kept]
            valid = [None if v is None else v[kept] for v in valid]
        m = len(keys)
        if m and (keys.min() < low_key or keys.max() > high_key or stamps.min() < first or stamps.max() > last):
            return None
        cell = np.subtract(keys, low_key, out=cell_buffer[:m])
        cell *= cells.per_entity
        key = np.subtract(stamps, first, out=key_buffer[:m])
        cell += np.right_shift(key, cells.shift, out=shifted[:m])
        key &= (1 << cells.shift) - 1
        key <<= cells.bits
        key |= positions
        for j, v in enumerate(valid):
            if v is not None and j not in variants:
                variants[j] = table.copy()
        np.maximum.at(table, cell, key)
        for j, other in variants.items():
            v = valid[j]
            np.maximum.at(other, cell if v is None else cell[v], key if v is None else key[v])
        hit = np.flatnonzero(np.take(marked, cell, out=seen_buffer[:m]))
        if len(hit):
            shared.append(
                (
                    cell[hit],
                    stamps[hit],
                    positions[hit],
                    [np.ones(len(hit), dtype=np.bool_) if v is None else v[hit] for v in valid],
                )
            )
        start = end
    nulls = sorted(variants)
    prior = [cells.before(tbl, query_cell, earlier) for tbl in [table, *(variants[j] for j in nulls)]]
    variants.clear()
    cell = np.concatenate([part[0] for part in shared]) if shared else np.zeros(0, dtype=np.int64)
    stamps = np.concatenate([part[1] for part in shared]) if shared else np.zeros(0, dtype=np.int64)
    positions = np.concatenate([part[2] for part in shared]) if shared else np.zeros(0, dtype=np.int64)
    with_value: list[Mask | None] = [None]
    for j in nulls:
        with_value.append(np.concatenate([part[3][j] for part in shared]) if shared else np.zeros(0, dtype=np.bool_))
    own = own_cell(table, cells, (query_cell, looking, cutoffs), (cell, stamps), with_value)
    found: list[I64] = []
    when: list[I64] = []
    for mine, (row, time) in zip(own, prior, strict=True):
        at = np.maximum(mine, 0)
        found.append(np.where(mine >= 0, positions[at], row) if len(positions) else row)
        when.append(np.where(mine >= 0, stamps[at], time) if len(stamps) else time)
    per_column = [1 + nulls.index(j) if j in nulls else 0 for j in range(columns)]
    rows_out = [found[0]] + [found[i] for i in per_column]
    values = [v[:start] for v in values]
    taken = [v[np.maximum(r, 0)] if len(v) else np.zeros(len(r)) for v, r in zip(values, rows_out[1:], strict=True)]
    return Latest(rows_out, [when[0]] + [when[i] for i in per_column], taken)


def _in_memory(
    con: duckdb.DuckDBPyConnection,
    query: str,
    rows: int,
    integer: bool,
    spine_keys: pa.ChunkedArray,
    cutoffs: I64,
    timed: Mask,
    columns: int,
    earliest: int | None,
) -> Latest | None:
    """Every event read into arrays (:func:`read_events`), then :func:`latest`; None when the keys do not fit."""
    events = read_events(con, query, rows, integer, columns)
    keep = events.present
    if not timed.any():
        keep = np.zeros(len(events.times), dtype=np.bool_)
    elif earliest is not None and len(events.times) and int(events.times.min()) < earliest:
        keep = events.times >= earliest if keep is None else keep & (events.times >= earliest)
    if keep is not None:
        events.keep(keep)
    codes, wanted, known, count = entity_codes(events.keys, spine_keys)
    nulls = [j for j, valid in enumerate(events.valid) if valid is not None]
    found = latest(codes, events.times, count, wanted, cutoffs, known & timed, [v for v in events.valid if v is not None])
    if found is None:
        return None
    del codes
    times = events.times if len(events.times) else np.zeros(1, dtype=np.int64)  # (-1, none, reads index 0: masked)
    rows_out = [found[0]] + [found[1 + nulls.index(j)] if j in nulls else found[0] for j in range(columns)]
    taken = [v[np.maximum(r, 0)] if len(v) else np.zeros(len(r)) for v, r in zip(events.values, rows_out[1:], strict=True)]
    return Latest(rows_out, [times[np.maximum(r, 0)] for r in rows_out], taken)


def asof_view_table(
    con: duckdb.DuckDBPyConnection,
    spec: Spec,
    view_name: str,
    spine_rows: str,
    events: str,
    timestamp: str,
    row_id: str,
    last_event: bool,
) -> pa.Table | None:
    """The rows :func:`asof_view_sql` describes, computed with numpy (see the module docstring).

    Events outside the span the spine can see are skipped as the general join
    does (from ``delay + longest window`` before the earliest spine time to
    ``delay`` before the latest), here on the numbers rather than in SQL.
    Returns None when the entity keys are not integers on both sides or text
    on both sides, or when entities and events do not fit the packed value:
    the caller then runs the SQL.
    """
    view = spec.features.views[view_name]
    key = quote(view_key(spec, view_name))
    kind = key_kind(con, f"SELECT {key} FROM {quote(events)}")
    if kind is None or kind != key_kind(con, f"SELECT {key} FROM ({spine_rows})"):
        return None
    outputs = view_outputs(spec, view_name)
    columns = list(dict.fromkeys(o.column for o in outputs))
    key_sql = f"CAST({key} AS BIGINT)" if kind == "integer" else key
    spine = con.sql(f"SELECT {key_sql} AS __k, epoch_us(__spine_ts) AS __t, __srid FROM ({spine_rows})").to_arrow_table()
    spine_us, timed = as_numpy(spine.column("__t"), 0)
    t = np.asarray(spine_us, dtype=np.int64)
    # Positions must follow the source order (it breaks ties of ``last``): DuckDB keeps it for a scan (and
    # UNION ALL) unless preserve_insertion_order is off; then the rows are sorted by their row id.
    ordered = bool(con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0])
    values = "".join(f", CAST({quote(c)} AS DOUBLE) AS __v{j}" for j, c in enumerate(columns))
    ts = f"CAST({quote(timestamp)} AS TIMESTAMP)"
    read = f"SELECT {key_sql} AS __k, epoch_us({ts}) AS __s{values} FROM {quote(events)}"
    read += "" if ordered else f" ORDER BY {quote(row_id)}"
    shift = 1 if spec.features.inclusive else 0
    cutoffs = t - (view.delay // _ONE_US - shift)
    # Of the span the general join skips, later events are never visible and earlier ones never in a window:
    # skipping them only changes the latest event time, so only then (NULL there when the latest is out of the span).
    earliest = int(t[timed].min()) - view_horizon(view) // _ONE_US if last_event and timed.any() else None
    found: Latest | None = None
    if kind == "integer" and timed.any():  # bounds from the Parquet statistics, no scan
        bounds = con.execute(
            f"SELECT count(*), CAST(min({key}) AS BIGINT), CAST(max({key}) AS BIGINT), epoch_us(CAST(min({quote(timestamp)}) "
            f"AS TIMESTAMP)), epoch_us(CAST(max({quote(timestamp)}) AS TIMESTAMP)) FROM {quote(events)}"
        ).fetchall()[0]
        if all(isinstance(b, int) for b in bounds) and bounds[0]:
            found = _streamed(con, read, bounds, spine.column("__k"), cutoffs, timed, len(columns), earliest)
    if found is None:
        rows = int(con.execute(f"SELECT count(*) FROM {quote(events)}").fetchall()[0][0])
        found = _in_memory(con, read, rows, kind == "integer", spine.column("__k"), cutoffs, timed, len(columns), earliest)
    if found is None:
        return None
    has = found.rows[0] >= 0
    latest = found.times[0]
    expired = np.zeros(len(t), dtype=np.bool_)
    if view.ttl is not None:
        expired = has & (t - latest > view.ttl // _ONE_US)
    out: dict[str, pa.Array] = {"__srid": spine.column("__srid").combine_chunks()}
    for output in outputs:
        j = columns.index(output.column)
        got, when = found.rows[1 + j], found.times[1 + j]
        in_window = (got >= 0) & ~expired & (t - when < (view.delay + output.window) // _ONE_US)
        missing = missing_value(output.function, spec.features.default)
        out[output.name] = pa.array(np.where(in_window, found.values[j], missing), pa.float64())
    if has_indicator(spec, view_name):
        gone = ~has | (t - latest >= view_horizon(view) // _ONE_US) | expired
        out[indicator_name(view_name)] = pa.array(np.where(gone, 1.0, 0.0), pa.float64())
    if last_event:
        out[last_event_column(view_name)] = pa.array(latest, pa.timestamp("us"), mask=~has)
    return pa.table(out)


# --------------------------------------------------------------------------- the SQL path
