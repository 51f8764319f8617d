"""The prediction log's write-ahead journal: a killed server loses no answered prediction and no acknowledged label.

The serving logger (:mod:`loopml.predlog.writer`) keeps records in memory and
writes them to the log in batches, about once a second: what a killed process
held in memory was lost. Now each micro-batch's records are first appended,
as lines (:mod:`loopml.predlog.lines`), to a local *segment* file with one
``write`` (``O_APPEND``) before the answers are sent. A write to the page cache
outlives the process: after ``SIGKILL``, an OOM kill or a crash, the kernel
still writes the bytes to disk; only a machine crash can lose what was not
fsync'ed (``serving.log_fsync``, see :class:`Journal`).

Files, under ``<state>/predictions-journal/`` (local even when the log is
PostgreSQL; several server workers share the folder):

* ``<time>-<pid>-<random>.seg``: one segment, appended to by one logger. Its
  writer holds an exclusive ``flock`` on it from before it has that name (it
  is created as ``.<name>.tmp``, locked, then renamed) until it deletes it:
  the kernel releases the lock when the process dies, even on ``SIGKILL``, so
  *a segment nobody holds locked is an orphan* of a dead writer. (The rule of
  :mod:`loopml.ownership`, with the record itself as the lock file: a
  segment must never be seen unlocked under its name, hence the temporary
  name. Descriptors are close-on-exec; a child forked without ``exec`` would
  keep its parent's segments alive until it exits.)
* The logger's flush thread rotates: it swaps in a new segment, writes the old
  one's records to the log, then deletes it. A segment is deleted only once all
  its records are in the log.
* ``*.seg.damaged``: a segment with lines that did not parse, moved aside
  (its readable records were logged), never deleted by loopml.

Recovery (:meth:`Journal.recover`): every segment that can be locked is an
orphan; its records are written to the log in chunks (skipping those already
there, :meth:`~loopml.predlog.base.PredictionLogBackend.unlogged`: the writer
may have died after writing its batch but before deleting the segment), then
the segment is deleted. Two recoverers never replay one segment: each locks
it first and checks that the name still points at the file it locked (the
other may have deleted it in between). The server runs it when it starts and
every 30 s (a dead sibling worker), and ``Project.prediction_log()`` before a
reader reads.

Written by hand: the write-ahead logs that are kept well belong to a database
(SQLite's WAL: a transaction per group, tens of microseconds, and a database
file per worker) or are a service (Kafka). ``persist-queue``, the disk queue
library, is one queue per process with its own file layout, no notion of a
dead writer's leftovers and no group write. What is needed here is small: one
``write`` of a group of lines, an fsync policy, and a dead writer's files found
by ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from datetime import datetime
from pathlib import Path

from loopml.durable import fsync_dir
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.lines import read_lines
from loopml.predlog.records import Feedback, LoggedPrediction
from loopml.spec.model import LogFsync

_log = logging.getLogger(__name__)

SUFFIX = ".seg"
DAMAGED_SUFFIX = ".damaged"
#: records replayed per write to the log (bounds the memory of a replay)
REPLAY_CHUNK = 10_000
#: a temporary segment name older than this was left by a writer that died while creating it
STALE_TMP_SECONDS = 60.0


class Segment:
    """One journal file and the descriptor that holds its lock (released when it is closed, or the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0  # bytes appended by this process

    def append(self, data: bytes, sync: bool = False) -> None:
        """Append with one ``write`` (a short one is continued), fsync'ed with ``sync``.

        On failure (a full disk, an I/O error) the file is cut back to where it was, so that no part of
        the group stays in it (the caller keeps the group elsewhere), and the error is raised.
        """
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
            if sync:
                os.fsync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def discard(self) -> None:
        """Delete the file: its records are in the log. Unlinked before the lock is released, so nobody replays it."""
        self.path.unlink(missing_ok=True)
        os.close(self.fd)

    def release(self) -> None:
        """Close without deleting: the file becomes an orphan, replayed by the next recovery."""
        os.close(self.fd)

    def move_aside(self) -> Path:
        target = self.path.with_name(self.path.name + DAMAGED_SUFFIX)
        os.replace(self.path, target)
        os.close(self.fd)
        return target


def replay(segment: Segment, log: PredictionLogBackend, skip_logged: bool) -> int:
    """Write a segment's records to ``log`` (``skip_logged``: those it does not hold yet), then delete it.

    Returns the number of records written. A segment with damaged lines is moved aside instead of
    deleted, with a warning. Raises (and keeps the segment) when the log cannot be written.
    """
    written = damaged = 0
    for records, bad in read_lines(segment.path, REPLAY_CHUNK):
        damaged += bad
        rows = [r for r in records if isinstance(r, LoggedPrediction)]
        items = [r for r in records if isinstance(r, Feedback)]
        if skip_logged:
            rows, items = log.unlogged(rows, items)
        log.append(rows)
        log.add_feedback(items)
        written += len(rows) + len(items)
    if damaged:
        kept = segment.move_aside()
        _log.warning(
            "prediction log journal: %d unreadable line(s) in %s; its other records are logged, kept as %s",
            damaged,
            segment.path.name,
            kept,
        )
    else:
        segment.discard()
    return written


class Journal:
    """The journal folder of one project, and its fsync policy (``serving.log_fsync``).

    * ``off``: never fsync'ed. A killed process loses nothing; a machine crash loses what the
      kernel had not written back (up to about 30 s on Linux's defaults) of records not yet in the log.
    * ``interval`` (default): the writer fsyncs a segment when it rotates it, each flush (every
      second, or ``serving.log_flush_rows`` records), before writing it to the log: a machine crash
      loses at most the predictions answered since the last flush.
    * ``always``: the segment is fsync'ed after each append, before the answers are sent: a
      machine crash loses nothing answered, at the cost of a disk flush per micro-batch.
    """

    def __init__(self, folder: Path, fsync: LogFsync = "interval") -> None:
        self.folder = folder
        self.fsync = fsync

    def create(self) -> Segment:
        """A new segment, locked by this process before it appears under its name."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now():%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        tmp = self.folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can know the name yet: never blocks
            os.rename(tmp, self.folder / name)
            if self.fsync != "off":
                fsync_dir(self.folder)  # the name is on disk before any record is fsync'ed into the file
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return Segment(self.folder / name, fd)

    def _claim(self, path: Path) -> Segment | None:
        """The segment at ``path`` locked by this call, if its writer is dead and nobody else replays it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # replayed and deleted by another since we opened it
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):  # its writer is alive (or another recoverer has it)
            os.close(fd)
            return None
        return Segment(path, fd)

    def orphans(self) -> list[Path]:
        """The segments on disk, oldest first (the live ones included: :meth:`recover` skips what it cannot lock)."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"*{SUFFIX}"))

    def recover(self, log: PredictionLogBackend) -> int:
        """Replay the segments of dead writers into ``log`` and delete them; return the records written.

        Idempotent (records already in the log are skipped) and safe beside live writers and other
        recoverers. Raises when the log cannot be written; what was not replayed stays for the next time.
        """
        written = 0
        for path in self.orphans():
            segment = self._claim(path)
            if segment is None:
                continue
            try:
                written += replay(segment, log, skip_logged=True)
            except BaseException:
                segment.release()
                raise
        self._sweep()
        if written:
            _log.info("prediction log journal: %d record(s) of stopped servers replayed into %s", written, log.where)
        return written

    def _sweep(self) -> None:
        """Delete temporary names left by writers that died while creating a segment (they hold no record)."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for tmp in self.folder.glob(f".*{SUFFIX}.tmp") if self.folder.is_dir() else ():
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass
