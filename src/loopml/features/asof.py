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
events, the 2 cores shared with other jobs; best of 2 to 5 runs in one
process) DuckDB's ``ASOF JOIN`` took 4.2 to 5.1 s where ``pandas.merge_asof``
(with the sort it needs) took 2.4 to 2.9 s. Sorting every event once with
``numpy.sort`` and one ``searchsorted`` per spine row took 1.1 to 1.8 s
(1.5 s of CPU); the cells below, streamed, 1.0 to 1.4 s (1.1 s of CPU,
where merge_asof uses 2.6). ``np.argsort`` of the same keys is 2.3x slower
than ``np.sort`` (hence positions ride in the sorted values), Arrow's
``sort_indices`` on (entity, time) 20x slower.

The numpy path. Events with a key and a time get an entity code (a dense
integer key minus the smallest, else its index in an Arrow dictionary of the
keys) and keep their position in source order (the rows are read in
``__rid`` order), which breaks ties of ``last``. A spine row at ``t`` sees
the events before its cutoff ``t - d`` (``t - d + 1 µs`` when inclusive); its
latest visible event is the one with the greatest (time, position).

* Cells (:class:`_Cells`, :func:`_by_cells`): each entity's time span is cut
  into cells of ``2**c`` µs, about one event per cell. One scatter
  (``np.maximum.at``) keeps each cell's latest event as ``(time within the
  cell) << p | position``. A spine row's answer is the latest event of its
  own cell before the cutoff (:func:`_own_cell`: a second scatter, or a sort
  of the few cells holding several spine rows), if there is one, else that
  of the latest non-empty cell before its own (a few steps back, or a running
  maximum along the entity's cells). For dense integer keys
  (:func:`_streamed`) the bounds come from the Parquet statistics and the
  events are turned into cells batch by batch as DuckDB streams them: no
  array of all events is made but their values.
* Sorting (:class:`_Sorted`; for other keys when the cell table would be
  too big, and inside crowded cells): every event becomes ``(code << b |
  time bucket) << p | position``, the time bucket being the microseconds
  since the earliest event shifted right just enough to fit 62 bits; after
  ``np.sort`` (two threads), runs of one entity in one bucket are re-sorted
  by exact time, so the array is in (entity, time, position) order.
  ``searchsorted`` of a spine row's bucket, then a bisection on exact times
  inside that bucket, gives its latest visible event.

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
#: Steps back from a spine row's cell to find a non-empty one, before a running maximum over every cell does it.
_STEPS_BACK = 8
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

    Measured against a whole Arrow table then numpy on 10 M rows: a third of
    the page faults and a quarter less time (the batches reuse their memory).
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
    """Resize every array of ``events`` to ``rows`` rows (new rows are about to be written: masks True there)."""

    def fit(array: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
        if rows <= len(array):
            return array[:rows]
        return np.concatenate([array, np.full(rows - len(array), fill, dtype=array.dtype)])

    if events.present is not None:
        events.present = fit(events.present, True)
    if isinstance(events.keys, np.ndarray):
        events.keys = fit(events.keys, 0)
    events.times = fit(events.times, 0)
    events.values = [fit(v, 0.0) for v in events.values]
    events.valid = [None if v is None else fit(v, True) for v in events.valid]


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


@dataclass(frozen=True)
class _Cells:
    """How time is cut into cells: ``per_entity`` cells of ``2**shift`` µs from ``first``, positions in ``bits``."""

    count: int  # entities
    per_entity: int
    shift: int
    first: int
    span: int
    bits: int  # position bits: a cell's key is (time within the cell) << bits | position

    @property
    def cells(self) -> int:
        return self.count * self.per_entity

    @staticmethod
    def fit(count: int, rows: int, first: int, last: int) -> _Cells | None:
        """About one event per cell, (time within a cell, position) in 63 bits; None when the table would be too big."""
        bits = max(1, (rows - 1).bit_length())
        span = last - first + 1
        fewest = 1 << max(0, span.bit_length() + bits - 63)
        per_entity = max(fewest, min(CELLS_PER_ENTITY_CAP, 1 << max(0, (rows // count).bit_length() - 1)))
        cells = count * per_entity
        if cells > CELL_BUDGET * max(rows, 1 << 16) or _PACKED_BITS - bits - max(1, (cells - 1).bit_length()) < 1:
            return None  # (the second: no time bits left to sort the events that share a cell with spine rows)
        shift = max(0, (span - 1).bit_length() - (per_entity.bit_length() - 1))  # (span - 1) >> shift < per_entity
        return _Cells(count, per_entity, shift, first, span, bits)

    def spine(self, wanted: I64, cutoffs: I64, ok: Mask) -> tuple[I64, I64, I64]:
        """Each spine row's cell (its cutoff's; past the entity's last cell when after every event), the rows whose
        own cell may hold their answer, and the rows with cells before theirs."""
        bucket = np.clip(cutoffs - self.first, 0, self.span) >> self.shift
        cell = np.where(ok, wanted * self.per_entity + bucket, 0)
        return cell, np.flatnonzero(ok & (bucket < self.per_entity)), np.flatnonzero(ok & (bucket > 0))

    def before(self, table: I64, cell: I64, earlier: I64) -> tuple[I64, I64]:
        """Position and time of the latest event in the cells before each spine row's own (-1 and 0: none)."""
        at = _non_empty_before(table, cell, earlier, self.count, self.per_entity)
        key = table[np.maximum(at, 0)]
        start = self.first + ((np.maximum(at, 0) % self.per_entity) << self.shift)
        return np.where(at >= 0, key & ((1 << self.bits) - 1), -1), np.where(at >= 0, start + (key >> self.bits), 0)


def _own_cell(
    table: I64, cells: _Cells, spine: tuple[I64, I64, I64], shared: tuple[I64, I64], valids: list[Mask | None]
) -> list[I64]:
    """For the spine rows that look into their own cell, the latest event there before their cutoff: its index in ``shared``.

    ``spine`` is (each spine row's cell, the rows that look, their cutoffs);
    ``shared`` the (cell, time) of the events in those cells, in source order;
    ``table`` scratch of one entry per cell. One list entry per ``valids``
    (None: any event; else only events with a value); -1: none. A cell with
    one such spine row: its events before the cutoff go to that row by one
    scatter (``np.maximum.at`` of (time within the cell, index)). A cell with
    several ("crowded"): its events are sorted with the cell as entity
    (:class:`_Sorted`) and searched.
    """
    query_cell, looking, cutoffs = spine
    cell, time = shared
    index_bits = max(1, (len(cell) - 1).bit_length())
    key = np.subtract(time, cells.first)
    key &= (1 << cells.shift) - 1
    key <<= index_bits
    key |= np.arange(len(cell), dtype=np.int64)
    table.fill(-1)
    table[query_cell[looking]] = looking  # the spine row of each cell, -2 where several
    table[query_cell[looking[table[query_cell[looking]] != looking]]] = -2
    owner = table[cell]
    alone = np.flatnonzero(owner >= 0)
    row = owner[alone]
    seen = time[alone] < cutoffs[row]
    alone, row = alone[seen], row[seen]
    crowded = looking[table[query_cell[looking]] == -2]
    packed = np.flatnonzero(owner == -2)
    inside: _Sorted | None = None
    if len(crowded) and len(packed):
        time_bits = _PACKED_BITS - max(1, (len(packed) - 1).bit_length()) - max(1, (cells.cells - 1).bit_length())
        inside = _Sorted(cell[packed], time[packed], min(time_bits, TIME_BITS_CAP))
        at = inside.search(query_cell[crowded], cutoffs[crowded], np.ones(len(crowded), dtype=np.bool_))
    out = []
    for valid in valids:
        best = np.full(len(cutoffs), -1, dtype=np.int64)
        chosen = alone if valid is None else valid[alone]
        np.maximum.at(best, row if valid is None else row[chosen], key[alone if valid is None else alone[chosen]])
        found = np.where(best >= 0, best & ((1 << index_bits) - 1), -1)
        if inside is not None:
            got = inside.events(at if valid is None else inside.latest_valid(at, valid[packed]))
            found[crowded] = np.where(got >= 0, packed[np.maximum(got, 0)], -1)
        out.append(found)
    return out


def _by_cells(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """:func:`_latest` through a table of the latest event per (entity, time cell); None when the table would be too big.

    Each entity's time is cut into cells (:class:`_Cells`, about one event per
    cell). One scatter (``np.maximum.at``) keeps each cell's latest event,
    packed as ``(time within the cell) << p | position``, and the latest
    non-empty cell before a spine row's own is found from that table. A spine
    row's latest event is the latest one in its own cell before its cutoff
    (:func:`_own_cell`), if any, else the latest of the cells before.
    """
    cells = _Cells.fit(count, len(times), int(times.min()), int(times.max()))
    if cells is None:
        return None
    cell = codes  # the caller's array, turned into cell numbers in place
    cell *= cells.per_entity
    key = np.subtract(times, cells.first)
    key >>= cells.shift
    cell += key
    np.subtract(times, cells.first, out=key)  # then (time within the cell, position), in place
    key &= (1 << cells.shift) - 1
    key <<= cells.bits
    key |= np.arange(len(times), dtype=np.int64)
    query_cell, looking, earlier = cells.spine(wanted, cutoffs, ok)
    marked = np.zeros(cells.cells, dtype=np.bool_)
    marked[query_cell[looking]] = True
    shared = np.flatnonzero(marked[cell])  # events in the cell of some spine row
    del marked
    table = np.full(cells.cells, -1, dtype=np.int64)
    before = []
    for valid in [None, *valids]:
        table.fill(-1)
        np.maximum.at(table, cell if valid is None else cell[valid], key if valid is None else key[valid])
        before.append(cells.before(table, query_cell, earlier)[0])
    own = _own_cell(
        table, cells, (query_cell, looking, cutoffs), (cell[shared], times[shared]), [None, *(v[shared] for v in valids)]
    )
    if not len(shared):
        return before
    return [np.where(mine >= 0, shared[np.maximum(mine, 0)], prior) for mine, prior in zip(own, before, strict=True)]


def _non_empty_before(table: I64, cells: I64, rows: I64, count: int, per_entity: int) -> I64:
    """For ``rows``, the latest non-empty cell of the entity before ``cells`` (-1: none; other rows -1).

    Cells hold about one event, so most rows find one within a few steps
    back; rows still looking after ``_STEPS_BACK`` steps get a running
    maximum of the non-empty cells along every entity instead.
    """
    found = np.full(len(cells), -1, dtype=np.int64)
    at = cells[rows] - 1
    start = (cells[rows] // per_entity) * per_entity  # the entity's first cell
    for _ in range(_STEPS_BACK):
        hit = table[at] >= 0
        found[rows[hit]] = at[hit]
        going = ~hit & (at > start)
        rows, at, start = rows[going], at[going] - 1, start[going]
        if not len(rows):
            return found
    upto = np.arange(len(table), dtype=np.int64)
    np.putmask(upto, table < 0, -1)
    np.maximum.accumulate(upto.reshape(count, per_entity), axis=1, out=upto.reshape(count, per_entity))
    found[rows] = upto[at]
    return found


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


@dataclass
class _Latest:
    """Per spine row, the latest visible event: ``rows[0]`` whatever its values (-1: none), ``rows[1 + j]`` the
    latest with a value in column ``j``; ``times`` theirs (anything where none) and ``values[j]`` the value there."""

    rows: list[I64]
    times: list[I64]
    values: list[F64]


def _filled(column: pa.Array, fill: int | float) -> npt.NDArray[Any]:
    """A column as numpy (zero-copy without NULLs), NULLs as ``fill``."""
    return np.asarray((pc.fill_null(column, fill) if column.null_count else column).to_numpy(zero_copy_only=False))


def _valid(column: pa.Array) -> Mask | None:
    """Where a column is not NULL; None when it has no NULL."""
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_) if column.null_count else None


def _streamed(
    con: duckdb.DuckDBPyConnection,
    query: str,
    bounds: tuple[int, int, int, int, int],
    spine_keys: pa.ChunkedArray,
    cutoffs: I64,
    timed: Mask,
    columns: int,
    earliest: int | None,
) -> _Latest | None:
    """The cells way (:func:`_by_cells`) applied batch by batch as DuckDB streams the events: no array of them is made.

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
    cells = _Cells.fit(high_key - low_key + 1, rows, first, last)
    if cells is None:
        return None
    spine_rows, present = _numpy(spine_keys, 0)
    wanted = np.asarray(spine_rows, dtype=np.int64)
    known = present & (wanted >= low_key) & (wanted <= high_key)
    query_cell, looking, earlier = cells.spine(np.where(known, wanted, low_key) - low_key, cutoffs, known & timed)
    marked = np.zeros(cells.cells, dtype=np.bool_)
    marked[query_cell[looking]] = True
    table = np.full(cells.cells, -1, dtype=np.int64)
    variants: dict[int, I64] = {}  # column -> its table, from the first batch where it has a NULL
    values = [np.empty(rows, dtype=np.float64) for _ in range(columns)]
    shared: list[tuple[I64, I64, I64, list[Mask]]] = []  # per batch: cell, time, position, validity per column
    offsets = np.arange(_BATCH_ROWS, dtype=np.int64)
    # Per-batch scratch made once: allocating these for every batch costs more in page faults than the arithmetic.
    cell_buffer, key_buffer, shifted, work = (np.empty(_BATCH_ROWS, dtype=np.int64) for _ in range(4))
    seen_buffer = np.empty(_BATCH_ROWS, dtype=np.bool_)
    start = 0
    for batch in con.sql(query).to_arrow_reader(_BATCH_ROWS):
        end = start + batch.num_rows
        if end > rows or batch.num_rows > _BATCH_ROWS:
            return None
        keys, stamps = _filled(batch.column(0), 0), _filled(batch.column(1), 0)
        keep = _valid(batch.column(0))
        on_time = _valid(batch.column(1))
        keep = on_time if keep is None else keep if on_time is None else keep & on_time
        if earliest is not None:
            keep = stamps >= earliest if keep is None else keep & (stamps >= earliest)
        valid: list[Mask | None] = []
        for j in range(columns):
            values[j][start:end] = _filled(batch.column(2 + j), 0.0)
            valid.append(_valid(batch.column(2 + j)))
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
    own = _own_cell(table, cells, (query_cell, looking, cutoffs), (cell, stamps), with_value)
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
    return _Latest(rows_out, [when[0]] + [when[i] for i in per_column], taken)


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
) -> _Latest | None:
    """Every event read into arrays (:func:`_read`), then :func:`_latest`; None when the keys do not fit."""
    events = _read(con, query, rows, integer, columns)
    keep = events.present
    if not timed.any():
        keep = np.zeros(len(events.times), dtype=np.bool_)
    elif earliest is not None and len(events.times) and int(events.times.min()) < earliest:
        keep = events.times >= earliest if keep is None else keep & (events.times >= earliest)
    if keep is not None:
        events.keep(keep)
    codes, wanted, known, count = _codes(events.keys, spine_keys)
    nulls = [j for j, valid in enumerate(events.valid) if valid is not None]
    found = _latest(codes, events.times, count, wanted, cutoffs, known & timed, [v for v in events.valid if v is not None])
    if found is None:
        return None
    del codes
    times = events.times if len(events.times) else np.zeros(1, dtype=np.int64)  # (-1, none, reads index 0: masked)
    rows_out = [found[0]] + [found[1 + nulls.index(j)] if j in nulls else found[0] for j in range(columns)]
    taken = [v[np.maximum(r, 0)] if len(v) else np.zeros(len(r)) for v, r in zip(events.values, rows_out[1:], strict=True)]
    return _Latest(rows_out, [times[np.maximum(r, 0)] for r in rows_out], taken)


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
    ts = f"CAST({quote(timestamp)} AS TIMESTAMP)"
    read = f"SELECT {key_sql} AS __k, epoch_us({ts}) AS __s{values} FROM {quote(events)}"
    read += "" if ordered else f" ORDER BY {quote(row_id)}"
    shift = 1 if spec.features.inclusive else 0
    cutoffs = t - (view.delay // _ONE_US - shift)
    # Of the span the general join skips, later events are never visible and earlier ones never in a window:
    # skipping them only changes the latest event time, so only then (NULL there when the latest is out of the span).
    earliest = int(t[timed].min()) - view_horizon(view) // _ONE_US if last_event and timed.any() else None
    found: _Latest | None = None
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
