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

* Cells (:class:`Cells`, :func:`by_cells`): each entity's time span is cut
  into cells of ``2**c`` µs, about one event per cell. One scatter
  (``np.maximum.at``) keeps each cell's latest event as ``(time within the
  cell) << p | position``. A spine row's answer is the latest event of its
  own cell before the cutoff (:func:`own_cell`: a second scatter, or a sort
  of the few cells holding several spine rows), if there is one, else that
  of the latest non-empty cell before its own (a few steps back, or a running
  maximum along the entity's cells). For dense integer keys
  (:func:`_streamed`) the bounds come from the Parquet statistics and the
  events are turned into cells batch by batch as DuckDB streams them: no
  array of all events is made but their values.
* Sorting (:class:`Sorted`; for other keys when the cell table would be
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

from loopml.features.asof.lookup import asof_view_table
from loopml.features.asof.sql import asof_view_sql, is_asof_view

__all__ = ["asof_view_sql", "asof_view_table", "is_asof_view"]
