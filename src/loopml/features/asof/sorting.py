"""The sorting search of the numpy path: events packed as (entity, time bucket, position) (see :mod:`loopml.features.asof`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import loopml.features.asof.tuning as tuning
from loopml.features.asof.tuning import I64, Mask


def _sort(values: I64) -> None:
    """Sort in place; big arrays in two threads (numpy releases the GIL) after an in-place split at the median."""
    threads = min(2, os.cpu_count() or 1)
    if threads < 2 or len(values) < tuning.PARALLEL_SORT_ROWS:
        values.sort()
        return
    middle = len(values) // 2
    values.partition(middle)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.ndarray.sort, [values[:middle], values[middle:]]))


class Sorted:
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


def by_sorting(codes: I64, times: I64, count: int, wanted: I64, cutoffs: I64, ok: Mask, valids: list[Mask]) -> list[I64] | None:
    """:func:`latest` by sorting every event (:class:`Sorted`); None when the packed value cannot hold them."""
    position_bits = max(1, (len(times) - 1).bit_length())
    time_bits = min(tuning.PACKED_BITS - position_bits - max(1, (count - 1).bit_length()), tuning.TIME_BITS_CAP)
    if time_bits < 1:
        return None
    events = Sorted(codes, times, time_bits)
    at = events.search(wanted, cutoffs, ok)
    return [events.events(at)] + [events.events(events.latest_valid(at, valid)) for valid in valids]
