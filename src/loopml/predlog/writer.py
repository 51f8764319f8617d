"""Off-the-request-path prediction logging: journaled on the request path, written to the log in batches.

Feedback labels travel the same way, so that neither path writes a log part
per request.

The request path calls :meth:`AsyncLogger.submit_many` once per micro-batch
group (``submit`` for one record), before the answers are sent. It appends
the group's records to the current journal segment with one ``write``
(:mod:`loopml.predlog.journal`; plus an fsync with ``serving.log_fsync:
always``) and keeps them in memory, both under one lock so that the segment
and the memory agree, and never blocks otherwise: with ``max_queue`` records
in memory, later ones of the segment are kept in the file only (read back
when it is written), nothing is dropped.

A daemon thread flushes every ``flush_seconds``, or as soon as ``flush_rows``
records wait: it swaps in a new segment, fsyncs the old one (policy
``interval``), writes its records to the
:class:`~loopml.predlog.base.PredictionLogBackend`, then deletes it. When the
log cannot be written (a full disk, PostgreSQL down), the error goes to
``on_error`` and the segment stays: the next flushes retry it from its file
(skipping what reached the log) before rotating again, so the journal grows
on disk instead of memory. At start and every ``recover_seconds`` the thread
also replays the segments of dead loggers (:meth:`Journal.recover`).

Without a journal (none given; or its folder cannot be written, or an append
failed, e.g. a full disk: reported, and a new segment tried at every flush)
records wait in memory only, as before the journal: at most ``max_queue``,
later ones are dropped and counted (``dropped``, on ``/metrics``), and a batch
the log refuses is dropped and counted too. An append that fails leaves none
of its group in the segment (cut back), so nothing is logged twice.
``close`` flushes what is left and deletes its segment; what the log refused
stays on disk for the next start.

Every ``compact_seconds`` (0: never) a second daemon thread calls the backend's
``compact`` (the Parquet one merges many small parts into few,
:mod:`loopml.predlog.compact`; PostgreSQL's does nothing).
Its own thread, not the flush thread: merging a large backlog can take seconds.
A failed compaction is reported through ``on_error`` (else logged as a
warning) and never stops logging; several server processes compacting one
folder take turns (the compactor's lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.journal import Journal, Segment, replay
from loopml.predlog.lines import Record, encode
from loopml.predlog.records import Feedback, LoggedPrediction

_log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)


@dataclass
class _Open:
    """The segment being appended to: its records in memory, unless some are in the file only (``spilled``)."""

    segment: Segment
    cached: list[Record] = field(default_factory=list)
    count: int = 0
    spilled: bool = False


class AsyncLogger:
    def __init__(
        self,
        log: PredictionLogBackend,
        max_queue: int = 10_000,
        flush_rows: int = 500,
        flush_seconds: float = 1.0,
        on_error: Callable[[Exception], None] | None = None,
        compact_seconds: float = 300.0,
        journal: Journal | None = None,
        recover_seconds: float = 30.0,
    ) -> None:
        self.log = log
        self.max_queue = max_queue
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.on_error = on_error
        self.compact_seconds = compact_seconds
        self.journal = journal
        self.recover_seconds = recover_seconds
        self.dropped = 0  # records lost: kept in memory only (no journal) and not written
        self.written = 0
        self.journal_errors = 0  # appends the journal refused (their records were kept in memory only)
        self.compactions = 0  # compaction rounds run (failed ones included)
        self._lock = threading.Lock()  # the open segment and the memory agree under it
        self._open: _Open | None = None
        self._retired: list[_Open] = []  # segments closed early (an append failed), written at the next flush
        self._volatile: list[Record] = []  # records in memory only
        self._memory = 0  # records held in memory since the last flush (at most max_queue)
        self._journal_down = False  # no segment could be created: reported once, retried each flush
        self._backlog: list[Segment] = []  # segments the log refused, retried from their files, oldest first
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._compactor: threading.Thread | None = None
        self._flush_lock = threading.Lock()

    def start(self) -> None:
        if self.journal is not None and self._open is None:
            segment = self._new_segment()
            self._open = _Open(segment) if segment is not None else None
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loopml-prediction-log", daemon=True)
            self._thread.start()
        if self._compactor is None and self.compact_seconds > 0:
            self._compactor = threading.Thread(target=self._compact_loop, name="loopml-log-compaction", daemon=True)
            self._compactor.start()

    # -- the request path ---------------------------------------------------------------------------
    def submit_many(self, records: Sequence[R], fallback: Callable[[Sequence[R]], None] | None = None) -> bool:
        """Take records to log (one call per micro-batch group); on return they are journaled, or in memory without one.

        False when they could be neither (no journal and ``max_queue`` records in memory): then
        ``fallback`` gets them (the feedback path writes labels itself), else they are dropped and counted.
        """
        if not records:
            return True
        data = encode(records) if self.journal is not None else b""
        sync = self.journal is not None and self.journal.fsync == "always"
        with self._lock:
            current = self._open
            if current is not None:
                try:
                    current.segment.append(data, sync)
                except OSError as exc:  # nothing of the group stays in the file; it is written at the next flush
                    self._retired.append(current)
                    self._open = current = None
                    self.journal_errors += 1
                    self._report(exc)
            taken = True
            room = self.max_queue - self._memory
            if current is not None:
                current.count += len(records)
                if current.spilled or room < len(records):  # the file holds them all: read back when written
                    self._memory -= len(current.cached)
                    current.spilled, current.cached = True, []
                else:
                    current.cached.extend(records)
                    self._memory += len(records)
            elif room >= len(records):
                self._volatile.extend(records)
                self._memory += len(records)
            else:
                taken = False
            ready = len(self._volatile) + (current.count if current is not None else 0) >= self.flush_rows
        if ready:
            self._wake.set()
        if taken:
            return True
        if fallback is not None:
            fallback(records)
        else:
            self.dropped += len(records)
        return False

    def submit(self, record: LoggedPrediction | Feedback) -> bool:
        return self.submit_many([record])

    # -- the flush thread ---------------------------------------------------------------------------
    def flush(self) -> int:
        """Write everything taken so far (and retry what the log refused before); return the number of records written."""
        with self._flush_lock:
            written = 0
            while self._backlog:  # oldest first; while the log refuses them, nothing newer is rotated out
                try:
                    written += replay(self._backlog[0], self.log, skip_logged=True)
                except Exception as exc:
                    self._report(exc)
                    self._sync_open()
                    self.written += written
                    return written
                self._backlog.pop(0)
            current = self._open
            fresh = self._new_segment() if self.journal is not None and (current is None or current.count) else None
            with self._lock:
                closing, self._retired = self._retired, []
                if fresh is not None:
                    if self._open is not None:
                        closing.append(self._open)
                    self._open = _Open(fresh)
                volatile, self._volatile = self._volatile, []
                self._memory = 0 if fresh is not None else (len(self._open.cached) if self._open is not None else 0)
            for batch in closing:
                if self._backlog:  # an older one was refused: keep the order, retry them together
                    self._backlog.append(batch.segment)
                else:
                    written += self._write_segment(batch)
            if volatile:
                try:
                    self._write(volatile)
                    written += len(volatile)
                except Exception as exc:  # no journal to retry from: count and report
                    self.dropped += len(volatile)
                    self._report(exc)
            self.written += written
            return written

    def _write_segment(self, batch: _Open) -> int:
        """Write a rotated segment's records to the log and delete it; on failure keep it for a retry."""
        segment = batch.segment
        try:
            if self.journal is not None and self.journal.fsync == "interval":
                segment.sync()  # from now on a machine crash cannot lose these records either
            if batch.spilled:
                return replay(segment, self.log, skip_logged=False)
            self._write(batch.cached)
            segment.discard()
            return len(batch.cached)
        except Exception as exc:
            self._backlog.append(segment)
            self._report(exc)
            return 0

    def _write(self, records: Sequence[Record]) -> None:
        self.log.append([r for r in records if isinstance(r, LoggedPrediction)])
        self.log.add_feedback([r for r in records if isinstance(r, Feedback)])

    def _sync_open(self) -> None:
        """With ``interval``, fsync the open segment while it cannot be rotated (the log refuses writes)."""
        current = self._open  # only a flush closes it, and the caller is the flush: no lock needed to fsync it
        if self.journal is not None and self.journal.fsync == "interval" and current is not None:
            try:
                current.segment.sync()
            except OSError as exc:
                self._report(exc)

    def _new_segment(self) -> Segment | None:
        assert self.journal is not None
        try:
            segment = self.journal.create()
        except OSError as exc:  # records wait in memory until a segment can be created (retried each flush)
            if not self._journal_down:
                self.journal_errors += 1
                self._report(exc)
            self._journal_down = True
            return None
        self._journal_down = False
        return segment

    def _run(self) -> None:
        next_recovery = 0.0
        while not self._stop.is_set():
            if self.journal is not None and time.monotonic() >= next_recovery:
                self.recover()
                next_recovery = time.monotonic() + self.recover_seconds
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def recover(self) -> int:
        """Replay the journal segments of dead loggers into the log (see :meth:`Journal.recover`)."""
        if self.journal is None:
            return 0
        try:
            return self.journal.recover(self.log)
        except Exception as exc:  # retried at the next round
            self._report(exc)
            return 0

    def _report(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        else:
            _log.warning("prediction log: %s", exc)

    # -- compaction and shutdown ----------------------------------------------------------------------
    def _compact_loop(self) -> None:
        while not self._stop.wait(self.compact_seconds):
            self.compact_now()

    def compact_now(self) -> None:
        """One compaction round of the backend; an error goes to ``on_error``."""
        try:
            self.log.compact()
        except Exception as exc:  # the log stays usable uncompacted: report and carry on
            self._report(exc)
        finally:
            self.compactions += 1

    def close(self) -> None:
        """Flush what is left; a segment that could not be written stays on disk for the next start's recovery."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._compactor is not None:
            self._compactor.join(timeout=10)  # a round cut short by exit is safe: compaction is crash-safe
            self._compactor = None
        self.flush()
        with self._flush_lock, self._lock:
            current, self._open = self._open, None
            leftovers, self._backlog = self._backlog, []
        if current is not None:
            if current.count:
                leftovers.append(current.segment)
            else:
                current.segment.discard()
        for segment in leftovers:
            segment.release()

    @property
    def pending(self) -> int:
        """Records taken and not yet written (those of segments the log refused not included)."""
        current = self._open
        return len(self._volatile) + (current.count if current is not None else 0)
