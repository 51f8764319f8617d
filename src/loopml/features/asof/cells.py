"""The cell search of the numpy path: per-entity time cells filled by ``np.maximum.at`` (see :mod:`loopml.features.asof`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import loopml.features.asof.tuning as tuning
from loopml.features.asof.sorting import Sorted, by_sorting
from loopml.features.asof.tuning import F64, I64, Mask


@dataclass(frozen=True)
class Cells:
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
    def fit(count: int, rows: int, first: int, last: int) -> Cells | None:
        """About one event per cell, (time within a cell, position) in 63 bits; None when the table would be too big."""
        bits = max(1, (rows - 1).bit_length())
        span = last - first + 1
        fewest = 1 << max(0, span.bit_length() + bits - 63)
        per_entity = max(fewest, min(tuning.CELLS_PER_ENTITY_CAP, 1 << max(0, (rows // count).bit_length() - 1)))
        cells = count * per_entity
        if cells > tuning.CELL_BUDGET * max(rows, 1 << 16) or tuning.PACKED_BITS - bits - max(1, (cells - 1).bit_length()) < 1:
            return None  # (the second: no time bits left to sort the events that share a cell with spine rows)
        shift = max(0, (span - 1).bit_length() - (per_entity.bit_length() - 1))  # (span - 1) >> shift < per_entity
        return Cells(count, per_entity, shift, first, span, bits)

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


def own_cell(
    table: I64, cells: Cells, spine: tuple[I64, I64, I64], shared: tuple[I64, I64], valids: list[Mask | None]
) -> list[I64]:
    """For the spine rows that look into their own cell, the latest event there before their cutoff: its index in ``shared``.

    ``spine`` is (each spine row's cell, the rows that look, their cutoffs);
    ``shared`` the (cell, time) of the events in those cells, in source order;
    ``table`` scratch of one entry per cell. One list entry per ``valids``
    (None: any event; else only events with a value); -1: none. A cell with
    one such spine row: its events before the cutoff go to that row by one
    scatter (``np.maximum.at`` of (time within the cell, index)). A cell with
    several ("crowded"): its events are sorted with the cell as entity
    (:class:`Sorted`) and searched.
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
    inside: Sorted | None = None
    if len(crowded) and len(packed):
        time_bits = tuning.PACKED_BITS - max(1, (len(packed) - 1).bit_length()) - max(1, (cells.cells - 1).bit_length())
        inside = Sorted(cell[packed], time[packed], min(time_bits, tuning.TIME_BITS_CAP))
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


def by_cells(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """:func:`latest` through a table of the latest event per (entity, time cell); None when the table would be too big.

    Each entity's time is cut into cells (:class:`Cells`, about one event per
    cell). One scatter (``np.maximum.at``) keeps each cell's latest event,
    packed as ``(time within the cell) << p | position``, and the latest
    non-empty cell before a spine row's own is found from that table. A spine
    row's latest event is the latest one in its own cell before its cutoff
    (:func:`own_cell`), if any, else the latest of the cells before.
    """
    cells = Cells.fit(count, len(times), int(times.min()), int(times.max()))
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
    own = own_cell(
        table, cells, (query_cell, looking, cutoffs), (cell[shared], times[shared]), [None, *(v[shared] for v in valids)]
    )
    if not len(shared):
        return before
    return [np.where(mine >= 0, shared[np.maximum(mine, 0)], prior) for mine, prior in zip(own, before, strict=True)]


def _non_empty_before(table: I64, cells: I64, rows: I64, count: int, per_entity: int) -> I64:
    """For ``rows``, the latest non-empty cell of the entity before ``cells`` (-1: none; other rows -1).

    Cells hold about one event, so most rows find one within a few steps
    back; rows still looking after ``tuning.STEPS_BACK`` steps get a running
    maximum of the non-empty cells along every entity instead.
    """
    found = np.full(len(cells), -1, dtype=np.int64)
    at = cells[rows] - 1
    start = (cells[rows] // per_entity) * per_entity  # the entity's first cell
    for _ in range(tuning.STEPS_BACK):
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


def latest(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """Per spine row, the position of the latest event of its entity before its cutoff (-1: none).

    ``codes`` and ``times`` describe the events in source order (``codes`` is
    overwritten), ``wanted`` and ``cutoffs`` the spine rows (``ok``: rows
    with a known key and a time); an event is visible iff its time is before
    the cutoff. The first array is over every event, then one per ``valids``
    (the latest event whose value is not NULL). None when neither way fits.
    """
    if len(times) == 0:
        return [np.full(len(cutoffs), -1, dtype=np.int64) for _ in range(1 + len(valids))]
    found = by_cells(codes, times, count, wanted, cutoffs, ok, valids)  # (it returns None before touching codes)
    return found if found is not None else by_sorting(codes, times, count, wanted, cutoffs, ok, valids)


@dataclass
class Latest:
    """Per spine row, the latest visible event: ``rows[0]`` whatever its values (-1: none), ``rows[1 + j]`` the
    latest with a value in column ``j``; ``times`` theirs (anything where none) and ``values[j]`` the value there."""

    rows: list[I64]
    times: list[I64]
    values: list[F64]
