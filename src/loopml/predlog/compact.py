"""Compaction of the Parquet prediction log: small parts merged into big ones while readers and writers run.

A server flushing every second writes 86,400 parts a day per worker, and every reader opens them all.
:func:`compact_log` (``PredictionLog.compact``; the serving logger calls it every few minutes) merges
runs of old small parts of each folder (``log/``, each ``log/typed-<hash>/``, ``feedback/``: one
schema per folder) into one part, without a reader ever seeing a row twice or missing one:

* **The record.** ``<folder>/compacted.json`` lists entries ``{"merged", "replaces", "at", "deleted"}``,
  always rewritten atomically (temporary file, fsync, ``os.replace``, fsync of the folder).
* **The reader rule** (:func:`live_parts`, the only way :class:`~loopml.predlog.parquet.PredictionLog`
  lists parts): list the folder's ``part-*.parquet`` files FIRST, read the record SECOND, and drop a
  replaced part only when its entry's merged part is in the listing (or is itself replaced by a part
  that is). A merged part is renamed into place only after its entry is on disk, so a listing that
  holds it is always followed by a record that names what it replaces; a listing made before the
  rename keeps the replaced parts, which are still the truth.
* **The compactor**, under an exclusive non-blocking ``flock`` on ``<predictions>/.compact.lock``
  (another process compacting: this one skips the round), takes runs of consecutive live parts in
  name order older than ``min_age`` (consecutive: in ``feedback/`` the latest label is the one
  received last, ties broken by (file name, row)), writes each as one part (rows in run order) named
  after the run's first part, without the ``-m<hex>`` of earlier merges, plus ``-m<hex>``: written
  part names have one length up to there and no two live parts start from the same one, so the
  merged part sorts where the run was and names do not grow with each merge. It adds the entry,
  THEN renames the merged part in. Replaced parts are deleted ``grace`` seconds after the entry
  (a reader holds its file list for the life of one connection) and the entry is dropped ``grace``
  seconds after that (so no reader lists a replaced part and then reads a record without its entry).
* **Crashes.** A merged part still under its temporary name belongs to a dead compactor (we hold
  the lock) and is deleted; an entry whose merged part never got renamed in is ignored by readers
  and dropped by the next round, which merges its parts again.

Two details beyond "merge every run": a run must not cross the write time of a part still being
written by another process (its temporary name carries that time: once renamed it would sort inside
the merged run), and a group is merged only when its first part holds no more rows than the rest
together, so a big merged part is not rewritten at every round to absorb a few new rows (each row is
rewritten about log2(target_rows / part rows) times, not once per round). Merged parts hold at most
``target_rows`` rows; they are written by streaming row groups, so memory stays bounded. They are
written with pyarrow rather than a DuckDB ``COPY``: the merged part must keep the exact Arrow schema
of its folder, since readers bind a folder's schema from one footer.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from loopml.durable import fsync_dir
from loopml.errors import LoopmlError

RECORD_NAME = "compacted.json"
LOCK_NAME = ".compact.lock"
#: a temporary part this old belongs to a writer that died
STALE_TMP_SECONDS = 3600.0
_ROW_GROUP = 131_072  # rows per row group of a merged part: DuckDB scans row groups in parallel
_NAME_TIME = re.compile(r"^\.?part-(\d{8}T\d{12})-")
_Part = tuple[str, pq.FileMetaData]  # a part's name and footer
_MERGED_SUFFIXES = re.compile(r"(-m[0-9a-f]{8})+$")
_MERGED_TMP = re.compile(r"^\.part-.*-m[0-9a-f]{8}\.parquet\.tmp$")


@dataclass(frozen=True)
class CompactStats:
    """What one :func:`compact_log` call did."""

    parts_merged: int = 0  # parts replaced by a merged part in this call
    parts_written: int = 0  # merged parts written
    parts_deleted: int = 0  # replaced parts deleted (their grace over)
    rows: int = 0  # rows rewritten into merged parts
    skipped: bool = False  # another process was compacting: nothing done

    def __add__(self, other: CompactStats) -> CompactStats:
        return CompactStats(
            self.parts_merged + other.parts_merged,
            self.parts_written + other.parts_written,
            self.parts_deleted + other.parts_deleted,
            self.rows + other.rows,
            self.skipped or other.skipped,
        )


@dataclass
class Entry:
    """One merge in the record: ``merged`` holds the rows of ``replaces`` (in that order)."""

    merged: str
    replaces: list[str]
    at: float  # unix time the entry was written
    deleted: float | None = None  # unix time the replaced parts were deleted


# -- the reader side -------------------------------------------------------------------------------------


def is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def part_names(folder: Path) -> list[str]:
    """The folder's ``part-*.parquet`` names (``os.listdir``: several times faster than ``Path.glob``)."""
    try:
        return [n for n in os.listdir(folder) if is_part(n)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_record(folder: Path) -> list[Entry]:
    path = folder / RECORD_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LoopmlError(f"prediction log {path}: cannot read the compaction record ({exc.strerror or exc})") from None
    try:
        return [
            Entry(
                merged=str(e["merged"]),
                replaces=[str(n) for n in e["replaces"]],
                at=float(e["at"]),
                deleted=None if e.get("deleted") is None else float(e["deleted"]),
            )
            for e in json.loads(raw)
        ]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LoopmlError(f"prediction log {path}: the compaction record is not a list of entries ({exc!r})") from None


def live_names(names: Iterable[str], entries: Sequence[Entry]) -> list[str]:
    """The listed parts a reader reads, in name order: those not replaced by a listed (or itself replaced) merged part.

    Entries are walked newest first, so that a merged part replaced in turn by a later merge still
    covers the parts it replaced.
    """
    listed = set(names)
    covered, dropped = set(listed), set()
    for entry in reversed(entries):
        if entry.merged in covered:
            covered.update(entry.replaces)
            dropped.update(entry.replaces)
    return sorted(listed - dropped)


def live_parts(folder: Path) -> list[Path]:
    """The parts of one folder a reader must read: listing FIRST, record SECOND (see the module doc)."""
    names = part_names(folder)
    if not names:
        return []
    return [folder / name for name in live_names(names, read_record(folder))]


# -- the compactor ---------------------------------------------------------------------------------------


def compact_log(
    root: Path,
    folders: Sequence[Path],
    min_age: float = 60.0,
    target_rows: int = 1_000_000,
    grace: float = 600.0,
) -> CompactStats:
    """Compact each folder of a prediction log under ``root`` (see the module doc); skip if another process is at it."""
    if not (_valid_seconds(min_age) and _valid_seconds(grace)) or target_rows < 2:
        raise LoopmlError(
            f"prediction log {root}: compaction needs min_age >= 0, grace >= 0 and target_rows >= 2 "
            f"(got {min_age}, {grace}, {target_rows})"
        )
    if not root.is_dir():
        return CompactStats()
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LoopmlError(f"prediction log {root}: cannot open the compaction lock ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return CompactStats(skipped=True)
        total = CompactStats()
        for folder in folders:
            if folder.is_dir():
                try:
                    total += _compact_folder(folder, min_age, target_rows, grace)
                except (OSError, pa.ArrowException) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
                    raise LoopmlError(f"prediction log {folder}: compaction failed ({reason})") from None
        return total
    finally:
        os.close(fd)  # releases the lock


def _valid_seconds(seconds: float) -> bool:
    return 0 <= seconds < float("inf")  # NaN is not


def name_time(name: str) -> datetime | None:
    """The local write time a part's (or temporary part's) name starts with; None for a foreign name."""
    match = _NAME_TIME.match(name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f")
    except ValueError:
        return None


def _compact_folder(folder: Path, min_age: float, target_rows: int, grace: float) -> CompactStats:
    # the age limit is taken before listing temporary parts: a part named earlier is then either listed
    # as temporary (and no run crosses its time) or already renamed in (and listed below)
    cutoff = datetime.now() - timedelta(seconds=min_age)
    writing = _sweep(folder)
    entries = read_record(folder)
    names = set(part_names(folder))
    kept = _without_orphans(entries, names)
    changed = len(kept) != len(entries)
    entries = kept
    if writing is not None:  # a part being written now will sort at its name time: no run may cross it
        cutoff = min(cutoff, writing)
    stats = CompactStats()
    for group, schema in _groups(folder, live_names(names, entries), cutoff, target_rows):
        if changed:  # the orphans go before the first new entry
            _write_record(folder, entries)
            changed = False
        rows = _merge(folder, group, schema, entries)
        stats += CompactStats(parts_merged=len(group), parts_written=1, rows=rows)
    deleted, changed_by_delete, entries = _delete_replaced(folder, entries, grace)
    if changed or changed_by_delete:
        _write_record(folder, entries)
    return stats + CompactStats(parts_deleted=deleted)


def _sweep(folder: Path) -> datetime | None:
    """Delete dead temporary parts; return the earliest name time of a part another process is writing now."""
    earliest: datetime | None = None
    stale = time.time() - STALE_TMP_SECONDS
    for name in os.listdir(folder):
        if not (name.startswith(".part-") and name.endswith(".tmp")):
            continue
        path = folder / name
        try:
            if _MERGED_TMP.match(name) or path.stat().st_mtime < stale:  # merged: a dead compactor's (we hold the lock)
                path.unlink()
                continue
        except FileNotFoundError:
            continue  # renamed in meanwhile
        when = name_time(name)
        if when is not None and (earliest is None or when < earliest):
            earliest = when
    return earliest


def _without_orphans(entries: list[Entry], names: set[str]) -> list[Entry]:
    """Drop entries whose merged part never got renamed in (a compactor died); readers ignore those already."""
    kept: list[Entry] = []
    replaced_later: set[str] = set()
    for entry in reversed(entries):
        if entry.deleted is None and entry.merged not in names and entry.merged not in replaced_later:
            continue
        kept.append(entry)
        replaced_later.update(entry.replaces)
    return kept[::-1]


def _groups(folder: Path, live: list[str], cutoff: datetime, target_rows: int) -> list[tuple[list[_Part], pa.Schema]]:
    """The groups of parts to merge: within runs of consecutive live parts that may be merged together.

    A part younger than ``cutoff``, with ``target_rows`` rows or more, with a foreign name or an
    unreadable footer, or with another schema than the run's, ends the run.
    """
    groups: list[tuple[list[_Part], pa.Schema]] = []
    run: list[_Part] = []
    schema: pa.Schema | None = None

    def close_run() -> None:
        if schema is not None and len(run) >= 2:
            groups.extend((group, schema) for group in _split(run, target_rows))
        run.clear()

    for name in live:
        when = name_time(name)
        footer = _footer(folder / name) if when is not None and when < cutoff else None
        if footer is None or footer.num_rows >= target_rows:
            close_run()
            continue
        part_schema = footer.schema.to_arrow_schema()
        if schema is None or not part_schema.equals(schema):
            close_run()
            schema = part_schema
        run.append((name, footer))
    close_run()
    return groups


def _footer(path: Path) -> pq.FileMetaData | None:
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return None


def _split(run: list[_Part], target_rows: int) -> list[list[_Part]]:
    """Cut a run into groups of at most ``target_rows`` rows, each merged only if its first part is no bigger than the rest.

    Greedy, left to right, with prefix sums: a first part bigger than what follows it is left as it is.
    """
    sums = [0]
    for _, footer in run:
        sums.append(sums[-1] + footer.num_rows)
    groups: list[list[_Part]] = []
    i = 0
    while i < len(run) - 1:
        end = bisect.bisect_right(sums, sums[i] + target_rows) - 1  # parts [i, end) fit
        first, rest = run[i][1].num_rows, sums[end] - sums[i + 1]
        if end - i >= 2 and first <= rest:
            groups.append(run[i:end])
            i = end
        else:
            i += 1
    return groups


def _batches(path: Path, footer: pq.FileMetaData) -> Iterator[pa.RecordBatch]:
    """A part's rows in order: read whole when small (twice as fast for parts of a flush), else by row groups."""
    part = pq.ParquetFile(path, metadata=footer)
    if footer.num_rows <= _ROW_GROUP:
        yield from part.read(use_threads=False).to_batches()
    else:
        yield from part.iter_batches(batch_size=_ROW_GROUP)


def _merge(folder: Path, group: list[_Part], schema: pa.Schema, entries: list[Entry]) -> int:
    """Write the group as one part (temporary name, fsync), add its entry to the record, THEN rename it in."""
    merged = f"{_MERGED_SUFFIXES.sub('', group[0][0].removesuffix('.parquet'))}-m{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{merged}.tmp"
    rows = 0
    try:
        with open(tmp, "wb") as fh:
            with pq.ParquetWriter(fh, schema) as writer:
                pending: list[pa.RecordBatch] = []
                buffered = 0
                for name, footer in group:
                    for batch in _batches(folder / name, footer):
                        pending.append(batch)
                        buffered += batch.num_rows
                        rows += batch.num_rows
                        while buffered >= _ROW_GROUP:
                            table = pa.Table.from_batches(pending, schema)
                            writer.write_table(table.slice(0, _ROW_GROUP), row_group_size=_ROW_GROUP)
                            pending = table.slice(_ROW_GROUP).to_batches()
                            buffered -= _ROW_GROUP
                if buffered:
                    writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=_ROW_GROUP)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    entries.append(Entry(merged=merged, replaces=[name for name, _ in group], at=time.time()))
    _write_record(folder, entries)  # the entry is on disk before the merged part is visible
    os.replace(tmp, folder / merged)
    fsync_dir(folder)
    return rows


def _delete_replaced(folder: Path, entries: list[Entry], grace: float) -> tuple[int, bool, list[Entry]]:
    """Delete replaced parts ``grace`` after their entry; drop entries ``grace`` after their deletion."""
    now = time.time()
    names = part_names(folder)
    listed = set(names)
    covered = set(listed)
    for entry in reversed(entries):
        if entry.merged in covered:
            covered.update(entry.replaces)
    deleted, changed = 0, False
    for entry in entries:
        if entry.deleted is None and now >= entry.at + grace and entry.merged in covered:
            for name in entry.replaces:
                try:
                    (folder / name).unlink()
                    deleted += 1
                except FileNotFoundError:
                    pass
            entry.deleted = now
            changed = True
    kept = [e for e in entries if e.deleted is None or now < e.deleted + grace]
    return deleted, changed or len(kept) != len(entries), kept


def _write_record(folder: Path, entries: list[Entry]) -> None:
    path = folder / RECORD_NAME
    if not entries:
        path.unlink(missing_ok=True)
        fsync_dir(folder)
        return
    data = [{"merged": e.merged, "replaces": e.replaces, "at": e.at, "deleted": e.deleted} for e in entries]
    tmp = folder / f".{RECORD_NAME}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(data).encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
