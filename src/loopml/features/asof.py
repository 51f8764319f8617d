"""Latest-value lookups, the fast path of the point-in-time join for views made only of ``last``.

The general point-in-time join (:mod:`loopml.features.join`) unions the spine
into the event stream and computes every output with ``RANGE`` window frames.
For a view whose every output is ``last`` that is more work than the question
needs: "the latest non-NULL value of the entity visible at ``t``". Two
implementations, with one semantics (``tests/test_pit_reference.py`` holds
both to the same brute-force reference):

* :func:`asof_view_table`, used whenever the caller passes its DuckDB
  connection: numpy over the view's events, read once; the result is
  registered in the connection as an Arrow table.
* :func:`asof_view_sql` without a connection, for entity keys that are
  neither integers nor text on both sides, and when entities and events are
  too many for 62 bits: DuckDB ``ASOF JOIN`` SQL.

Why hand-written numpy: on ``benchmarks/pit_join.py`` (1 M spine rows, 10 M
events, the 2 cores shared with other jobs, best of 2 to 4 runs in one
process) DuckDB's ``ASOF JOIN`` took 4.2 to 5.1 s where ``pandas.merge_asof``
(with the sort it needs) took 2.6 to 2.9 s; sorting every event once with
``numpy.sort`` and one ``searchsorted`` per spine row, 1.3 to 1.8 s; the
table of cells below, 1.0 to 2.0 s, with a third less CPU time than the
sort. (``np.argsort`` of the same keys is 2.3x slower than ``np.sort``,
hence positions ride in the sorted values; Arrow's ``sort_indices`` on
(entity, time) was 20x slower.)

The numpy path. Events with a key and a time get an entity code (a dense
integer key minus the smallest, else its index in an Arrow dictionary of the
keys) and keep their position in source order (the rows are read in
``__rid`` order), which breaks ties of ``last``. A spine row at ``t`` sees
the events before its cutoff ``t - d`` (``t - d + 1 µs`` when inclusive); its
latest visible event is the one with the greatest (time, position).

* Cells (:func:`_by_cells`): each entity's time span is cut into cells of
  ``2**c`` µs, about one event per cell. One scatter (``np.maximum.at``)
  keeps each cell's latest event as ``(time within the cell) << p |
  position``, and a running maximum along each entity's cells gives its
  latest non-empty cell up to any cell. A spine row's answer is the latest
  event of its own cell before the cutoff, if there is one, else the latest
  event of the cells before. Only the events that share a cell with some
  spine row (a sixth on the benchmark) are sorted for that first part.
* Sorting (:class:`_Sorted`, also the inside of a cell): every event becomes
  ``(code << b | time bucket) << p | position``, the time bucket being the
  microseconds since the earliest event shifted right just enough to fit 62
  bits; after ``np.sort`` (two threads), runs of one entity in one bucket are
  re-sorted by exact time, so the array is in (entity, time, position)
  order. ``searchsorted`` of a spine row's bucket, then a bisection on exact
  times inside that bucket, gives its latest visible event.

``last`` of a column with NULL values is the latest event with a value (a
second table, or a running maximum of the sorted positions that have one);
the rest (window, ttl, null indicator, latest event time) is arithmetic on
the matched events' times.

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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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
#: Rows per Arrow batch streamed from DuckDB into the numpy arrays.
_BATCH_ROWS = 1 << 18
#: Most cells of the (entity, time cell) table per event (0: always sort every event) and per entity; tests lower them.
CELL_BUDGET = 4
CELLS_PER_ENTITY_CAP = 1 << 20
#: Below this many events one thread sorts them (splitting costs more than it saves).
_PARALLEL_SORT_ROWS = 1 << 20

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
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
    keys) and the query reads them from an Arrow table registered in ``con``
    (one per call, kept as long as the connection: it holds the spine's rows,
    not the events); without it, the query is DuckDB ``ASOF JOIN`` SQL.
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


@dataclass
class _Events:
    """A view's events read into numpy in source order; NULLs are 0 in the arrays and False in the masks (None: none)."""

    keys: I64 | pa.ChunkedArray  # integer keys as int64, text keys as Arrow
    times: I64  # epoch microseconds
    present: Mask | None  # rows with a key and a time
    values: list[F64]  # one per value column, as DOUBLE
    valid: list[Mask | None]  # rows with a value, per column

    def keep(self, rows: Mask) -> None:
        """Keep only ``rows``."""
        self.keys = self.keys[rows] if isinstance(self.keys, np.ndarray) else self.keys.filter(pa.array(rows))
        self.times = self.times[rows]
        self.present = None
        self.values = [v[rows] for v in self.values]
        self.valid = [None if v is None else v[rows] for v in self.valid]


def _read(con: duckdb.DuckDBPyConnection, query: str, rows: int, integer: bool, columns: int) -> _Events:
    """The query's rows (key, time, values), streamed in Arrow batches into arrays made once for ``rows`` rows.

    Measured against a whole Arrow table then numpy: half the page faults and
    a third less time on 10 M rows (the batches reuse their memory).
    """
    events = _Events(np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64), None, [], [None] * columns)
    events.values = [np.empty(rows, dtype=np.float64) for _ in range(columns)]
    text: list[pa.Array] = []
    start = 0

    def put(target: npt.NDArray[Any], column: pa.Array, end: int) -> Mask | None:
        """Copy ``column`` into ``target[start:end]``; its validity when it has NULLs."""
        if not column.null_count:
            target[start:end] = column.to_numpy(zero_copy_only=False)
            return None
        target[start:end] = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)

    def mark(mask: Mask | None, valid: Mask | None, end: int) -> Mask | None:
        if valid is None:
            return mask
        mask = np.ones(len(events.times), dtype=np.bool_) if mask is None else mask
        mask[start:end] &= valid
        return mask

    for batch in con.sql(query).to_arrow_reader(_BATCH_ROWS):
        end = start + batch.num_rows
        if end > len(events.times):  # more rows than counted (the source changed): grow
            _grow(events, max(end, 2 * len(events.times)))
        if integer:
            events.present = mark(events.present, put(events.keys, batch.column(0), end), end)
        else:
            text.append(batch.column(0))
            if batch.column(0).null_count:
                events.present = mark(events.present, batch.column(0).is_valid().to_numpy(zero_copy_only=False), end)
        events.present = mark(events.present, put(events.times, batch.column(1), end), end)
        for j in range(columns):
            events.valid[j] = mark(events.valid[j], put(events.values[j], batch.column(2 + j), end), end)
        start = end
    if start < len(events.times):
        _grow(events, start)
    if not integer:
        events.keys = pa.chunked_array(text, type=text[0].type if text else pa.string())
    return events


def _grow(events: _Events, rows: int) -> None:
    """Resize every array of ``events`` to ``rows`` rows (new rows: no key, no time, no value)."""

    def fit(array: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
        if rows <= len(array):
            return array[:rows]
        return np.concatenate([array, np.full(rows - len(array), fill, dtype=array.dtype)])

    if isinstance(events.keys, np.ndarray):
        events.keys = fit(events.keys, 0)
    events.times = fit(events.times, 0)
    events.present = fit(np.ones(len(events.times), dtype=np.bool_) if events.present is None else events.present, False)
    events.values = [fit(v, 0.0) for v in events.values]
    events.valid = [None if v is None else fit(v, False) for v in events.valid]


def _codes(keys: I64 | pa.ChunkedArray, spine: pa.ChunkedArray) -> tuple[I64, I64, Mask, int]:
    """Entity codes of the events (overwriting integer ``keys``) and of the spine, which spine keys are known, how many codes.

    Dense integer keys are their own code (minus the smallest); other keys are
    their index in an Arrow dictionary of the events' keys (a hash table).
    ``keys`` has no NULLs.
    """
    if isinstance(keys, np.ndarray):
        if len(keys):
            low, high = int(keys.min()), int(keys.max())
            if (high - low).bit_length() <= len(keys).bit_length() + 1:
                rows, present = _numpy(spine, 0)
                wanted = np.asarray(rows, dtype=np.int64)
                known = present & (wanted >= low) & (wanted <= high)
                keys -= low
                return keys, np.where(known, wanted, low) - low, known, high - low + 1
        keys = pa.chunked_array([pa.array(keys)])
    encoded = keys.combine_chunks().dictionary_encode()
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
    rows = int(con.execute(f"SELECT count(*) FROM {quote(events)}").fetchall()[0][0])
    read_events = _read(con, read + ("" if ordered else f" ORDER BY {quote(row_id)}"), rows, kind == "integer", len(columns))
    # NULL keys and times out, on the numbers (a SQL filter of this size costs 0.1 s per 10 M rows). Of the span
    # the general join skips, later events are never visible and earlier ones never in a window: skipping them
    # only changes the latest event time, so only then (it is NULL there when the latest is out of the span).
    keep = read_events.present
    times = read_events.times
    if not timed.any():
        keep = np.zeros(len(times), dtype=np.bool_)
    elif last_event and len(times):
        low = int(t[timed].min()) - view_horizon(view) // _ONE_US
        if int(times.min()) < low:
            keep = times >= low if keep is None else keep & (times >= low)
    if keep is not None:
        read_events.keep(keep)
        times = read_events.times
    codes, wanted, known, count = _codes(read_events.keys, spine.column("__k"))
    read_events.keys = codes
    ok = known & timed
    nulls = [j for j, valid in enumerate(read_events.valid) if valid is not None]
    valids = [valid for valid in read_events.valid if valid is not None]
    shift = 1 if spec.features.inclusive else 0
    found = _latest(codes, times, count, wanted, t - (view.delay // _ONE_US - shift), ok, valids)
    if found is None:
        return None
    del codes
    if len(times) == 0:
        times = np.zeros(1, dtype=np.int64)  # position -1 (no event) reads index 0 below; those rows are masked out
    has = found[0] >= 0
    latest = times[np.maximum(found[0], 0)]
    expired = np.zeros(len(t), dtype=np.bool_)
    if view.ttl is not None:
        expired = has & (t - latest > view.ttl // _ONE_US)
    out: dict[str, pa.Array] = {"__srid": spine.column("__srid").combine_chunks()}
    taken_values: dict[int, npt.NDArray[np.float64]] = {}
    for output in outputs:
        j = columns.index(output.column)
        got = found[1 + nulls.index(j)] if j in nulls else found[0]
        if j not in taken_values:
            column = read_events.values[j]
            taken_values[j] = column[np.maximum(got, 0)] if len(column) else np.zeros(len(t))
        in_window = (got >= 0) & ~expired & (t - times[np.maximum(got, 0)] < (view.delay + output.window) // _ONE_US)
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
