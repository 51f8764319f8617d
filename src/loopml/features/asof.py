"""Latest-value lookups, the fast path of the point-in-time join for views made only of ``last``.

The general point-in-time join (:mod:`loopml.features.join`) unions the spine
into the event stream and computes every output with ``RANGE`` window frames.
For a view whose every output is ``last`` that is more work than the question
needs: "the latest non-NULL value of the entity visible at ``t``" is one
sorted search per spine row. Two implementations, with one semantics
(``tests/test_pit_reference.py`` holds both to the same brute-force reference):

* :func:`asof_view_table` (used whenever the caller passes its DuckDB
  connection): reads the events once, sorts one packed ``int64`` per event
  with ``numpy.sort`` and answers every spine row with ``numpy.searchsorted``;
  the result is registered in the connection as an Arrow table. Hand-written
  because the library ways were measured slower on the benchmark
  (``benchmarks/pit_join.py``: 1 M spine rows, 10 M events, 2 shared cores):
  DuckDB's ``ASOF JOIN`` (below) 2.9 s, as slow as ``pandas.merge_asof``
  (whose cost is its ``argsort``); an ``argsort`` of a composite key is itself
  2.3x slower than ``numpy.sort`` of the same values (AVX-512 sorting
  network), and Arrow's ``sort_indices`` on (entity, time) 20x slower. So
  the row position rides in the low bits of the sorted value itself.
* :func:`asof_view_sql`: the same as DuckDB ``ASOF JOIN`` SQL, for callers
  without a connection and for keys the numpy path does not take (entity keys
  that are neither integers nor text on both sides, or more entities and
  events than 61 bits can hold).

The numpy path. Every event with a key and a time (and inside the span the
spine can see) becomes ``(code << b | time bucket) << p | position``:
``code`` an entity code (the integer key minus its minimum when the keys are
dense, else its index in an Arrow dictionary of the keys), the time bucket the
event's microseconds since the earliest event shifted right just enough to
fit, ``position`` the event's row in source order (the values are read in
``__rid`` order). After ``numpy.sort``, events are in (entity, bucket,
position) order; runs of events of one entity in one bucket (only when the
time had to be shifted) are re-sorted by (exact time, position), so the array
is in (entity, time, position) order: the order in which ``last`` is defined.
A spine row at ``t`` sees exactly the events before ``(code, t - d)`` (``t -
d + 1 µs`` when inclusive): ``searchsorted`` of the row's bucket, then a
bisection on exact times inside that one bucket, gives the latest visible
event; ``last`` of a column with NULL values is the latest non-NULL one
before it (a running maximum of non-NULL positions), and the rest (window,
ttl, null indicator) is arithmetic on the matched event's time.

The SQL path. Visibility ``s < t - d`` (``<=`` when inclusive) and ties of
``last`` (the latest time, then the latest position in the source) are one
strict inequality on a ``HUGEINT`` key ``epoch_us(s) * 2**40 + position``:
the spine side is ``(t - d) * 2**40`` (``(t - d + 1) * 2**40`` when
inclusive), so no event at a later time, and every event at an earlier time,
is before it, and among events at the same time the last in file order wins.
One ASOF join per aggregated column, over its non-NULL rows (``last`` skips
NULL values); the window is then a check on the matched event's age: it is in
the window ``w`` iff ``t - s < d + w``, and if the latest visible value is
not in the window no value is. The ttl and the null indicator need the
latest visible event whatever its values: one more ASOF join over every
event, only when the view has a ttl, an indicator, or the caller asks for the
latest event time.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from loopml.features.definitions import (
    has_indicator,
    indicator_name,
    missing_value,
    view_horizon,
    view_key,
    view_outputs,
)
from loopml.features.windows import last_event_column, literal_double, quote
from loopml.spec.model import Spec

__all__ = ["asof_view_sql", "asof_view_table", "is_asof_view"]

_ONE_US = timedelta(microseconds=1)
_ORDER = 1 << 40  # positions < 2**40, as in windows.py
#: Bits of the packed sort value (int64, one bit of headroom so ``bucket + 1`` never overflows).
_PACKED_BITS = 62
#: Cap on the time bits of the packed value; tests lower it to force coarse buckets (many runs to re-sort).
TIME_BITS_CAP = _PACKED_BITS
_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"})
_TEXT_TYPES = frozenset({"VARCHAR"})
_names = itertools.count()
#: Arrow batches asked of DuckDB: few chunks to join into numpy arrays (measured 0.9 s against 1.5 s for 1 M-row ones).
_BATCH_ROWS = 1 << 30
#: Most cells of the (entity, time cell) table per event (0: always sort every event) and per entity; tests lower them.
CELL_BUDGET = 4
CELLS_PER_ENTITY_CAP = 1 << 20
#: Below this many events one thread sorts them (splitting costs more than it saves).
_PARALLEL_SORT_ROWS = 1 << 20

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def is_asof_view(spec: Spec, view_name: str) -> bool:
    """Whether every output of the view is ``last`` (then this module computes it)."""
    outputs = view_outputs(spec, view_name)
    return bool(outputs) and all(o.function == "last" for o in outputs)


def asof_view_sql(
    spec: Spec,
    view_name: str,
    spine_rows: str,
    events: str,
    timestamp: str,
    row_id: str,
    in_span: str,
    last_event: bool,
    con: duckdb.DuckDBPyConnection | None = None,
) -> str:
    """A query of ``__srid`` and the view's outputs for every row of ``spine_rows``.

    ``spine_rows`` selects the entity key, ``__spine_ts`` (TIMESTAMP) and
    ``__srid``; ``events`` is the view's registered source (time column
    ``timestamp``, position ``row_id``); ``in_span`` is a SQL condition on
    the event rows that may skip events no spine row can see. With ``con``
    the rows are computed now by :func:`asof_view_table` (when it takes the
    keys) and the query reads them from an Arrow table registered in ``con``;
    without it, the query is DuckDB ``ASOF JOIN`` SQL.
    """
    if con is not None:
        table = asof_view_table(con, spec, view_name, spine_rows, events, timestamp, row_id, last_event)
        if table is not None:
            name = f"__asof_{view_name}_{next(_names)}"
            con.register(name, table)
            return f"SELECT * FROM {quote(name)}"
    return _asof_sql(spec, view_name, spine_rows, events, timestamp, row_id, in_span, last_event)


# --------------------------------------------------------------------------- the numpy path


def _key_kind(con: duckdb.DuckDBPyConnection, query: str) -> str | None:
    """``integer``, ``text`` or None (not taken by the numpy path) for the one column of ``query``."""
    kind = str(con.execute(f"DESCRIBE {query}").fetchall()[0][1])
    if kind in _INTEGER_TYPES:
        return "integer"
    return "text" if kind in _TEXT_TYPES else None


def _numpy(column: pa.ChunkedArray | pa.Array, fill: int | float) -> tuple[npt.NDArray[np.generic], Mask]:
    """A column's values (NULLs replaced by ``fill``) and where it is not NULL."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count == 0:
        return array.to_numpy(zero_copy_only=False), np.ones(len(array), dtype=np.bool_)
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    return pc.fill_null(array, fill).to_numpy(zero_copy_only=False), valid


def _int64s(column: pa.ChunkedArray) -> I64:
    """An integer column without NULLs as one new, writable int64 array (copied chunk by chunk, no Arrow copy first)."""
    out = np.empty(len(column), dtype=np.int64)
    start = 0
    for chunk in column.chunks:
        out[start : start + len(chunk)] = chunk.to_numpy()
        start += len(chunk)
    return out


def _codes(events: pa.ChunkedArray, spine: pa.ChunkedArray, integer: bool) -> tuple[I64, I64, Mask, int]:
    """Entity codes of the events (a new array) and of the spine rows, which spine rows have a known key, how many codes.

    Dense integer keys are their own code (minus the smallest); other keys are
    their index in an Arrow dictionary of the events' keys (a hash table).
    ``events`` has no NULLs.
    """
    if integer and len(events) > 0:
        bounds = pc.min_max(events)
        low, high = int(bounds["min"].as_py()), int(bounds["max"].as_py())
        if (high - low).bit_length() <= len(events).bit_length() + 1:
            rows, present = _numpy(spine, 0)
            wanted = np.asarray(rows, dtype=np.int64)
            known = present & (wanted >= low) & (wanted <= high)
            codes = _int64s(events)
            codes -= low
            return codes, np.where(known, wanted, low) - low, known, high - low + 1
    encoded = events.combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    found, known = _numpy(pc.index_in(spine, value_set=encoded.dictionary), 0)
    return codes, np.asarray(found, dtype=np.int64), known, len(encoded.dictionary)


def _sort(values: I64) -> None:
    """Sort in place; big arrays in two threads (numpy releases the GIL) after an in-place split at the median."""
    threads = min(2, os.cpu_count() or 1)
    if threads < 2 or len(values) < _PARALLEL_SORT_ROWS:
        values.sort()
        return
    middle = len(values) // 2
    values.partition(middle)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.ndarray.sort, [values[:middle], values[middle:]]))


class _Sorted:
    """Events in (entity, time, position) order, as packed ``(code << b | time bucket) << p | position`` values."""

    def __init__(self, codes: I64, times: I64, time_bits: int) -> None:
        n = len(codes)
        self.times = times
        self.position_bits = max(1, (n - 1).bit_length())
        self.time_bits = time_bits
        self.entity_shift = self.position_bits + time_bits
        self.first = int(times.min())
        self.span = int(times.max()) - self.first + 1  # cutoffs are clipped to [0, span]
        self.shift = max(0, self.span.bit_length() - time_bits)
        self.mask = (1 << self.position_bits) - 1
        packed = codes  # the caller's array, packed in place; ``scratch`` is the one other big array made
        packed <<= time_bits
        scratch = np.subtract(times, self.first)
        scratch >>= self.shift
        packed |= scratch
        packed <<= self.position_bits
        packed |= np.arange(n, dtype=np.int64)
        _sort(packed)
        self.packed = packed
        if self.shift:
            self._sort_runs(scratch)

    def positions(self, at: I64) -> I64:
        """Event positions (rows of the arrays read) at sorted indices ``at``."""
        return self.packed[at] & self.mask

    def events(self, at: I64) -> I64:
        """Event positions at sorted indices ``at``, -1 where ``at`` is -1."""
        return np.where(at >= 0, self.positions(np.maximum(at, 0)), -1)

    def _sort_runs(self, scratch: I64) -> None:
        """Within runs of one entity and one time bucket, order by (exact time, position) instead of position."""
        gaps = np.subtract(self.packed[1:], self.packed[:-1], out=scratch[:-1])
        close = np.flatnonzero(gaps <= self.mask)  # neighbours that may share a bucket
        del gaps
        if len(close) == 0:
            return
        same = close[(self.packed[close] >> self.position_bits) == (self.packed[close + 1] >> self.position_bits)]
        if len(same) == 0:
            return
        in_run = np.zeros(len(self.packed), dtype=np.bool_)
        in_run[same] = True
        in_run[same + 1] = True
        at = np.flatnonzero(in_run)
        del in_run
        values = self.packed[at]
        runs, positions = values >> self.position_bits, values & self.mask
        times = self.times[positions]
        if np.any((runs[1:] == runs[:-1]) & (times[1:] < times[:-1])):
            self.packed[at] = values[np.lexsort((positions, times, runs))]

    def search(self, codes: I64, cutoffs: I64, ok: Mask) -> I64:
        """Sorted index of each query's latest event of entity ``codes`` before ``cutoffs`` (-1: none)."""
        relative = np.clip(cutoffs - self.first, 0, self.span)
        buckets = np.where(ok, (codes << self.time_bits) | (relative >> self.shift), 0)
        order = _argsort(buckets, 62 - self.position_bits)  # searching in sorted order keeps the probes in cache
        wanted = buckets[order]
        end = np.searchsorted(self.packed, wanted << self.position_bits, "left")
        if self.shift:  # events in the query's own bucket: bisect on their exact times
            probe = np.minimum(end, len(self.packed) - 1)
            inside = np.flatnonzero((end < len(self.packed)) & ((self.packed[probe] >> self.position_bits) == wanted))
            if len(inside):
                stop = np.searchsorted(self.packed, (wanted[inside] + 1) << self.position_bits, "left")
                end[inside] = self._bisect(end[inside], stop, cutoffs[order[inside]])
        at = np.empty_like(end)
        at[order] = end - 1
        safe = np.maximum(at, 0)
        found = ok & (at >= 0) & ((self.packed[safe] >> self.entity_shift) == codes)
        return np.where(found, at, -1)

    def _bisect(self, low: I64, high: I64, cutoffs: I64) -> I64:
        """First index in ``[low, high)`` whose event is not before the cutoff (times ascend there)."""
        last = len(self.packed) - 1
        while True:
            active = low < high
            if not active.any():
                return low
            middle = np.minimum((low + high) >> 1, last)
            before = self.times[self.positions(middle)] < cutoffs
            low = np.where(active & before, middle + 1, low)
            high = np.where(active & ~before, middle, high)

    def latest_valid(self, at: I64, valid: Mask) -> I64:
        """For sorted indices ``at`` (-1: none), the latest sorted index at or before it, same entity, with a valid value."""
        keep = valid[self.packed & self.mask]
        latest = np.where(keep, np.arange(len(keep), dtype=np.int64), -1)
        np.maximum.accumulate(latest, out=latest)
        got = np.where(at >= 0, latest[np.maximum(at, 0)], -1)
        same = (self.packed[np.maximum(got, 0)] >> self.entity_shift) == (self.packed[np.maximum(at, 0)] >> self.entity_shift)
        return np.where((got >= 0) & same, got, -1)


def _argsort(values: I64, bits: int) -> I64:
    """``np.argsort`` of non-negative ``values`` below ``2**bits``; sorting packed (value, index) pairs when they fit."""
    index_bits = max(1, (len(values) - 1).bit_length())
    if bits + index_bits > 63:
        return np.argsort(values)
    packed = values << index_bits
    packed |= np.arange(len(values), dtype=np.int64)
    packed.sort()
    packed &= (1 << index_bits) - 1
    return packed


def _by_sorting(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """:func:`_latest` by sorting every event (:class:`_Sorted`); None when the packed value cannot hold them."""
    position_bits = max(1, (len(times) - 1).bit_length())
    time_bits = min(_PACKED_BITS - position_bits - max(1, (count - 1).bit_length()), TIME_BITS_CAP)
    if time_bits < 1:
        return None
    events = _Sorted(codes, times, time_bits)
    at = events.search(wanted, cutoffs, ok)
    return [events.events(at)] + [events.events(events.latest_valid(at, valid)) for valid in valids]


def _by_cells(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """:func:`_latest` through a table of the latest event per (entity, time cell); None when the table would be too big.

    Each entity's time is cut into ``per_entity`` cells (about one event per
    cell). One scatter (``np.maximum.at``) keeps each cell's latest event,
    packed as ``(time within the cell) << p | position``, and a running
    maximum along each entity's cells gives the latest non-empty cell up to
    any cell. A spine row's latest event is then the latest one in its own
    cell before its cutoff, if any, else the latest of the cells before: only
    the few events that share a cell with some spine row are sorted
    (:class:`_Sorted`, with the cell as entity).
    """
    n = len(times)
    position_bits = max(1, (n - 1).bit_length())
    first = int(times.min())
    span = int(times.max()) - first + 1
    fewest = 1 << max(0, span.bit_length() + position_bits - 63)  # so that (time within a cell, position) fits 63 bits
    per_entity = max(fewest, min(CELLS_PER_ENTITY_CAP, 1 << max(0, (n // count).bit_length() - 1)))
    cells = count * per_entity
    if cells > CELL_BUDGET * max(n, 1 << 16) or _PACKED_BITS - position_bits - max(1, (cells - 1).bit_length()) < 1:
        return None  # (the second: no time bits left to sort the events that share a cell with spine rows)
    cell_shift = max(0, (span - 1).bit_length() - (per_entity.bit_length() - 1))  # (span - 1) >> cell_shift < per_entity
    cell = codes  # the caller's array, turned into cell numbers in place
    cell *= per_entity
    key = np.subtract(times, first)
    key >>= cell_shift
    cell += key
    np.subtract(times, first, out=key)  # then (time within the cell, position), in place
    key &= (1 << cell_shift) - 1
    key <<= position_bits
    key |= np.arange(n, dtype=np.int64)
    mask = (1 << position_bits) - 1
    bucket = np.clip(cutoffs - first, 0, span) >> cell_shift  # per_entity: after every event
    query_cell = np.where(ok, wanted * per_entity + bucket, 0)
    own = ok & (bucket < per_entity)
    marked = np.zeros(cells, dtype=np.bool_)
    marked[query_cell[own]] = True
    shared = np.flatnonzero(marked[cell])  # events in the cell of some spine row
    del marked
    inside: _Sorted | None = None
    if len(shared):
        time_bits = _PACKED_BITS - max(1, (len(shared) - 1).bit_length()) - max(1, (cells - 1).bit_length())
        inside = _Sorted(cell[shared], times[shared], min(time_bits, TIME_BITS_CAP))
        at = inside.search(query_cell, cutoffs, own)
    earlier = ok & (bucket > 0)
    out = []
    for valid in [None, *valids]:
        latest = np.full(cells, -1, dtype=np.int64)
        if valid is None:
            np.maximum.at(latest, cell, key)
        else:
            np.maximum.at(latest, cell[valid], key[valid])
        upto = np.arange(cells, dtype=np.int64)
        np.putmask(upto, latest < 0, -1)
        np.maximum.accumulate(upto.reshape(count, per_entity), axis=1, out=upto.reshape(count, per_entity))
        before = np.where(earlier, upto[np.maximum(query_cell - 1, 0)], -1)  # latest non-empty earlier cell
        got = np.where(before >= 0, latest[np.maximum(before, 0)] & mask, -1)
        if inside is not None:
            mine = at if valid is None else inside.latest_valid(at, valid[shared])
            found = inside.events(mine)
            got = np.where(found >= 0, shared[np.maximum(found, 0)], got)
        out.append(got)
    return out


def _latest(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """Per spine row, the position of the latest event of its entity before its cutoff (-1: none).

    ``codes`` and ``times`` describe the events in source order (``codes`` is
    overwritten), ``wanted`` and ``cutoffs`` the spine rows (``ok``: rows
    with a known key and a time); an event is visible iff its time is before
    the cutoff. The first array is over every event, then one per ``valids``
    (the latest event whose value is not NULL). None when neither way fits.
    """
    if len(times) == 0:
        return [np.full(len(cutoffs), -1, dtype=np.int64) for _ in range(1 + len(valids))]
    by_cells = _by_cells(codes, times, count, wanted, cutoffs, ok, valids)  # (it returns None before touching codes)
    return by_cells if by_cells is not None else _by_sorting(codes, times, count, wanted, cutoffs, ok, valids)


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
    kind = _key_kind(con, f"SELECT {key} FROM {quote(events)}")
    if kind is None or kind != _key_kind(con, f"SELECT {key} FROM ({spine_rows})"):
        return None
    outputs = view_outputs(spec, view_name)
    columns = list(dict.fromkeys(o.column for o in outputs))
    key_sql = f"CAST({key} AS BIGINT)" if kind == "integer" else key
    spine = con.sql(f"SELECT {key_sql} AS __k, epoch_us(__spine_ts) AS __t, __srid FROM ({spine_rows})").to_arrow_table()
    spine_us, timed = _numpy(spine.column("__t"), 0)
    t = np.asarray(spine_us, dtype=np.int64)
    # Positions must follow the source order (it breaks ties of ``last``): DuckDB keeps it for a scan (and
    # UNION ALL) unless preserve_insertion_order is off; then the rows are sorted by their row id.
    ordered = bool(con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0])
    values = "".join(f", CAST({quote(c)} AS DOUBLE) AS __v{j}" for j, c in enumerate(columns))
    read = f"SELECT {key_sql} AS __k, epoch_us(CAST({quote(timestamp)} AS TIMESTAMP)) AS __s{values} FROM {quote(events)}"
    table = con.sql(read + ("" if ordered else f" ORDER BY {quote(row_id)}")).to_arrow_table(batch_size=_BATCH_ROWS)
    # The span and the NULL keys and times, on the numbers (a SQL filter of this size costs 0.1 s per 10 M rows).
    keep: Mask | None = None
    for name in ("__k", "__s"):
        if table.column(name).null_count:
            valid = np.asarray(table.column(name).is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
            keep = valid if keep is None else keep & valid
    stamps = table.column("__s")
    times = _int64s(pc.fill_null(stamps, 0) if stamps.null_count else stamps)
    if timed.any() and len(times):
        low, high = int(t[timed].min()) - view_horizon(view) // _ONE_US, int(t[timed].max()) - view.delay // _ONE_US
        if int(times.min()) < low or int(times.max()) > high:
            inside = (times >= low) & (times <= high)
            keep = inside if keep is None else keep & inside
    elif len(times):
        keep = np.zeros(len(times), dtype=np.bool_)
    if keep is not None:
        table = table.filter(pa.array(keep))
        times = times[keep]
    codes, wanted, known, count = _codes(table.column("__k"), spine.column("__k"), kind == "integer")
    table = table.drop_columns(["__k", "__s"])  # frees them: the events' memory is the values, codes and times
    ok = known & timed
    nulls = [j for j in range(len(columns)) if table.column(f"__v{j}").null_count]
    valids = [_numpy(table.column(f"__v{j}"), 0.0)[1] for j in nulls]
    shift = 1 if spec.features.inclusive else 0
    found = _latest(codes, times, count, wanted, t - (view.delay // _ONE_US - shift), ok, valids)
    if found is None:
        return None
    del codes
    times = np.append(times, 0)  # position -1 reads this; those rows are masked out below
    has = found[0] >= 0
    latest = times[found[0]]
    expired = np.zeros(len(t), dtype=np.bool_)
    if view.ttl is not None:
        expired = has & (t - latest > view.ttl // _ONE_US)
    out: dict[str, pa.Array] = {"__srid": spine.column("__srid").combine_chunks()}
    taken_values: dict[int, npt.NDArray[np.float64]] = {}
    for output in outputs:
        j = columns.index(output.column)
        rows = found[1 + nulls.index(j)] if j in nulls else found[0]
        if j not in taken_values:
            column = table.column(f"__v{j}")
            taken = pc.fill_null(column.take(pa.array(np.maximum(rows, 0))), 0.0) if len(column) else pa.array(np.zeros(len(t)))
            taken_values[j] = np.asarray(_numpy(taken, 0.0)[0], dtype=np.float64)
        in_window = (rows >= 0) & ~expired & (t - times[rows] < (view.delay + output.window) // _ONE_US)
        missing = missing_value(output.function, spec.features.default)
        out[output.name] = pa.array(np.where(in_window, taken_values[j], missing), pa.float64())
    if has_indicator(spec, view_name):
        gone = ~has | (t - latest >= view_horizon(view) // _ONE_US) | expired
        out[indicator_name(view_name)] = pa.array(np.where(gone, 1.0, 0.0), pa.float64())
    if last_event:
        out[last_event_column(view_name)] = pa.array(latest, pa.timestamp("us"), mask=~has)
    return pa.table(out)


# --------------------------------------------------------------------------- the SQL path


def _asof_sql(
    spec: Spec, view_name: str, spine_rows: str, events: str, timestamp: str, row_id: str, in_span: str, last_event: bool
) -> str:
    view = spec.features.views[view_name]
    key = quote(view_key(spec, view_name))
    delay_us = view.delay // _ONE_US
    shift = 1 if spec.features.inclusive else 0
    ts = f"CAST({quote(timestamp)} AS TIMESTAMP)"
    base = f"{key} IS NOT NULL AND {quote(timestamp)} IS NOT NULL AND {in_span}"
    spine = (
        f"SELECT *, epoch_us(__spine_ts) - {delay_us - shift} AS __vis, "
        f"(epoch_us(__spine_ts) - {delay_us - shift})::HUGEINT * {_ORDER} AS __visk FROM ({spine_rows})"
    )
    joins: list[str] = []
    columns = list(dict.fromkeys(o.column for o in view_outputs(spec, view_name)))
    for j, column in enumerate(columns):
        value = quote(column)
        joins.append(
            f"ASOF LEFT JOIN (SELECT {key}, epoch_us({ts})::HUGEINT * {_ORDER} + {quote(row_id)} AS __k, {ts} AS __e, "
            f"CAST({value} AS DOUBLE) AS __v FROM {quote(events)} WHERE {base} AND {value} IS NOT NULL) e{j} "
            f"ON s.{key} = e{j}.{key} AND s.__visk > e{j}.__k"
        )
    indicator = has_indicator(spec, view_name)
    need_latest = last_event or indicator or view.ttl is not None
    if need_latest:
        joins.append(
            f"ASOF LEFT JOIN (SELECT {key}, epoch_us({ts}) AS __eus, {ts} AS __e FROM {quote(events)} WHERE {base}) el "
            f"ON s.{key} = el.{key} AND s.__vis > el.__eus"
        )
    age = "epoch_us(s.__spine_ts) - epoch_us({})"
    invalid = f"s.{key} IS NULL OR s.__spine_ts IS NULL"
    expired = "" if view.ttl is None else f" OR {age.format('el.__e')} > {view.ttl // _ONE_US}"
    default = spec.features.default
    outer: list[str] = []
    for output in view_outputs(spec, view_name):
        j = columns.index(output.column)
        missing = literal_double(missing_value(output.function, default))
        gone = f"e{j}.__e IS NULL OR {age.format(f'e{j}.__e')} >= {(view.delay + output.window) // _ONE_US}"
        outer.append(
            f"CAST(CASE WHEN {invalid}{expired} OR {gone} THEN {missing} ELSE e{j}.__v END AS DOUBLE) AS {quote(output.name)}"
        )
    if indicator:
        horizon = view_horizon(view) // _ONE_US
        outer.append(
            f"CAST(CASE WHEN {invalid} OR el.__e IS NULL OR {age.format('el.__e')} >= {horizon}{expired} "
            f"THEN 1.0 ELSE 0.0 END AS DOUBLE) AS {quote(indicator_name(view_name))}"
        )
    if last_event:
        outer.append(f"CASE WHEN {invalid} THEN NULL ELSE el.__e END AS {quote(last_event_column(view_name))}")
    return f"SELECT s.__srid, {', '.join(outer)} FROM ({spine}) s {' '.join(joins)}"
