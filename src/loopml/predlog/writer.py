"""Off-the-request-path prediction logging: a bounded queue flushed in batches.

Feedback labels travel through the same queue so that neither path writes a
file per request.

The request handler only calls :meth:`AsyncLogger.submit`, which never blocks:
when the queue is full the record is counted as dropped (reported on
``/metrics``) instead of slowing the response. A daemon thread drains the
queue into the :class:`~loopml.predlog.parquet.PredictionLog` every
``flush_rows`` records or ``flush_seconds``, whichever comes first; ``close``
flushes what is left.

Every ``compact_seconds`` (0: never) a second daemon thread calls the backend's
``compact`` (the Parquet one merges many small parts into few,
:mod:`loopml.predlog.compact`; PostgreSQL's does nothing).
Its own thread, not the flush thread: merging a large backlog can take seconds,
during which the queue would fill and drop records. A failed compaction is
reported through ``on_error`` (else logged as a warning) and never stops
logging; several server processes compacting one folder take turns (the
compactor's lock).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.records import Feedback, LoggedPrediction

_log = logging.getLogger(__name__)


class AsyncLogger:
    def __init__(
        self,
        log: PredictionLogBackend,
        max_queue: int = 10_000,
        flush_rows: int = 500,
        flush_seconds: float = 1.0,
        on_error: Callable[[Exception], None] | None = None,
        compact_seconds: float = 300.0,
    ) -> None:
        self.log = log
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.on_error = on_error
        self.compact_seconds = compact_seconds
        self.dropped = 0
        self.written = 0
        self.compactions = 0  # compaction rounds run (failed ones included)
        self._queue: queue.Queue[LoggedPrediction | Feedback] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._compactor: threading.Thread | None = None
        self._flush_lock = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loopml-prediction-log", daemon=True)
            self._thread.start()
        if self._compactor is None and self.compact_seconds > 0:
            self._compactor = threading.Thread(target=self._compact_loop, name="loopml-log-compaction", daemon=True)
            self._compactor.start()

    def submit(self, record: LoggedPrediction | Feedback) -> bool:
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self) -> int:
        """Write everything queued so far; return the number of rows written."""
        with self._flush_lock:
            batch: list[LoggedPrediction | Feedback] = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch:
                try:
                    self.log.append([r for r in batch if isinstance(r, LoggedPrediction)])
                    self.log.add_feedback([r for r in batch if isinstance(r, Feedback)])
                    self.written += len(batch)
                except Exception as exc:  # a full disk must not kill the server; count and report
                    self.dropped += len(batch)
                    if self.on_error is not None:
                        self.on_error(exc)
            return len(batch)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_seconds)
            self.flush()

    def _compact_loop(self) -> None:
        while not self._stop.wait(self.compact_seconds):
            self.compact_now()

    def compact_now(self) -> None:
        """One compaction round of the backend; an error goes to ``on_error``."""
        try:
            self.log.compact()
        except Exception as exc:  # the log stays usable uncompacted: report and carry on
            if self.on_error is not None:
                self.on_error(exc)
            else:
                _log.warning("prediction log compaction failed (logging goes on): %s", exc)
        finally:
            self.compactions += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._compactor is not None:
            self._compactor.join(timeout=10)  # a round cut short by exit is safe: compaction is crash-safe
            self._compactor = None
        self.flush()

    @property
    def pending(self) -> int:
        return self._queue.qsize()
