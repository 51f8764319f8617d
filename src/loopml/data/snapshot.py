"""Content-hashed snapshots of validated sources and their DuckDB catalogue.

A snapshot is a folder ``<state>/snapshots/<hash16>/`` holding one Parquet file
per source (valid rows, declared columns and types, sorted by timestamp then
file order); quarantined rows live in ``<state>/quarantine/<hash16>/``. The
hash is computed from the data, not from Parquet bytes (which vary between
writers): per source, the row count and the sum of DuckDB's 64-bit ``hash``
of every row, for both the valid and the quarantined rows, plus the declared
column names and types, go through sha256. The sum is order-independent, so
the hash names the multiset of rows; it is stable from run to run (a DuckDB
upgrade that changes ``hash`` only produces a new snapshot). A snapshot is
staged in a temporary folder and published with an atomic rename, then
recorded in the catalogue (``catalog.duckdb``: tables ``snapshots`` and
``snapshot_sources``); publishing the same hash again reuses the folder and
only marks it as the latest ingested.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from loopml.data.sources import one
from loopml.errors import DataError, LoopmlError
from loopml.layout import Layout

__all__ = [
    "Snapshot",
    "SourceDigest",
    "SourceSnapshot",
    "content_digest",
    "get_snapshot",
    "latest_snapshot",
    "publish",
    "snapshot_hash",
]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS snapshots (hash VARCHAR PRIMARY KEY, created_at TIMESTAMP, ingested_at TIMESTAMP, "
    "columns VARCHAR, rows_in BIGINT, rows_valid BIGINT, rows_quarantined BIGINT)",
    "CREATE TABLE IF NOT EXISTS snapshot_sources (hash VARCHAR, source VARCHAR, path VARCHAR, quarantine_path VARCHAR, "
    "rows_in BIGINT, rows_valid BIGINT, rows_quarantined BIGINT, min_ts TIMESTAMP, max_ts TIMESTAMP, PRIMARY KEY (hash, source))",
)


@dataclass(frozen=True)
class SourceSnapshot:
    """One source of a snapshot: its Parquet file, counts and timestamp range."""

    source: str
    path: Path
    quarantine: Path | None
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    min_ts: datetime | None
    max_ts: datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "quarantine": str(self.quarantine) if self.quarantine else None,
            "rows_in": self.rows_in,
            "rows_valid": self.rows_valid,
            "rows_quarantined": self.rows_quarantined,
            "min_ts": self.min_ts.isoformat() if self.min_ts else None,
            "max_ts": self.max_ts.isoformat() if self.max_ts else None,
        }


@dataclass(frozen=True)
class Snapshot:
    """A published snapshot: ``paths`` maps each source to its Parquet file."""

    hash: str
    created_at: datetime
    paths: dict[str, Path]
    sources: dict[str, SourceSnapshot]
    columns: dict[str, dict[str, str]]

    @property
    def rows_valid(self) -> int:
        return sum(s.rows_valid for s in self.sources.values())


@dataclass(frozen=True)
class SourceDigest:
    """What a source contributes to the snapshot hash."""

    source: str
    columns: dict[str, str]
    rows_valid: int
    valid: str
    rows_quarantined: int
    quarantined: str


def content_digest(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[int, str]:
    """(row count, order-independent digest) of the rows ``sql`` selects."""
    row = one(con, f"SELECT count(*), CAST(coalesce(sum(hash(q)), 0) AS VARCHAR) FROM ({sql}) q")
    if row is None:
        return 0, "0"
    return int(row[0]), str(row[1])


def snapshot_hash(digests: list[SourceDigest]) -> str:
    """16 hex characters of sha256 over every source's columns and content digests."""
    doc = [
        [d.source, sorted(d.columns.items()), d.rows_valid, d.valid, d.rows_quarantined, d.quarantined]
        for d in sorted(digests, key=lambda d: d.source)
    ]
    return hashlib.sha256(json.dumps(["loopml-snapshot-1", doc]).encode("utf-8")).hexdigest()[:16]


def _connect(layout: Layout) -> duckdb.DuckDBPyConnection:
    layout.catalog.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(layout.catalog))
    except duckdb.Error as exc:
        raise LoopmlError(f"{layout.catalog}: cannot open the snapshot catalogue: {str(exc).splitlines()[0]}") from None
    for statement in _SCHEMA:
        con.execute(statement)
    return con


def _relative(layout: Layout, path: Path) -> str:
    return path.relative_to(layout.state).as_posix()


def _load(layout: Layout, con: duckdb.DuckDBPyConnection, hash_: str) -> Snapshot | None:
    head = one(con, "SELECT created_at, columns FROM snapshots WHERE hash = ?", [hash_])
    if head is None:
        return None
    rows = con.execute(
        "SELECT source, path, quarantine_path, rows_in, rows_valid, rows_quarantined, min_ts, max_ts "
        "FROM snapshot_sources WHERE hash = ? ORDER BY source",
        [hash_],
    ).fetchall()
    sources = {
        r[0]: SourceSnapshot(
            r[0], layout.state / r[1], layout.state / r[2] if r[2] else None, int(r[3]), int(r[4]), int(r[5]), r[6], r[7]
        )
        for r in rows
    }
    created = head[0].replace(tzinfo=UTC)
    columns = {str(k): {str(c): str(t) for c, t in v.items()} for k, v in json.loads(head[1]).items()}
    return Snapshot(hash_, created, {k: s.path for k, s in sources.items()}, sources, columns)


def publish(
    layout: Layout,
    staged: Path,
    staged_quarantine: Path,
    hash_: str,
    sources: list[SourceSnapshot],
    columns: dict[str, dict[str, str]],
) -> tuple[Snapshot, bool]:
    """Move staged folders into place and record them; returns (snapshot, reused).

    ``sources`` carry paths inside the staged folders; the published snapshot
    points at the final folders. On failure nothing new stays on disk or in
    the catalogue.
    """
    final = layout.snapshots / hash_
    final_q = layout.quarantine / hash_
    now = datetime.now(UTC).replace(tzinfo=None)
    con = _connect(layout)
    try:
        existing = _load(layout, con, hash_)
        if existing is not None and all(p.is_file() for p in existing.paths.values()):
            con.execute("UPDATE snapshots SET ingested_at = ? WHERE hash = ?", [now, hash_])
            return existing, True
        moved: list[Path] = []
        in_transaction = False
        try:
            for src, dst in ((staged, final), (staged_quarantine, final_q)):
                if not src.is_dir() or not any(src.iterdir()):
                    continue
                if dst.exists():  # left by an earlier run that died before recording it
                    shutil.rmtree(dst)
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dst)
                moved.append(dst)
            placed = [
                SourceSnapshot(
                    s.source,
                    final / s.path.name,
                    final_q / s.quarantine.name if s.quarantine else None,
                    s.rows_in,
                    s.rows_valid,
                    s.rows_quarantined,
                    s.min_ts,
                    s.max_ts,
                )
                for s in sources
            ]
            con.execute("BEGIN TRANSACTION")
            in_transaction = True
            con.execute("DELETE FROM snapshot_sources WHERE hash = ?", [hash_])
            con.execute("DELETE FROM snapshots WHERE hash = ?", [hash_])
            con.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    hash_,
                    now,
                    now,
                    json.dumps(columns),
                    sum(s.rows_in for s in placed),
                    sum(s.rows_valid for s in placed),
                    sum(s.rows_quarantined for s in placed),
                ],
            )
            con.executemany(
                "INSERT INTO snapshot_sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [
                        hash_,
                        s.source,
                        _relative(layout, s.path),
                        _relative(layout, s.quarantine) if s.quarantine else None,
                        s.rows_in,
                        s.rows_valid,
                        s.rows_quarantined,
                        s.min_ts,
                        s.max_ts,
                    ]
                    for s in placed
                ],
            )
            con.execute("COMMIT")
            in_transaction = False
        except BaseException:
            if in_transaction:
                con.execute("ROLLBACK")
            for path in moved:
                shutil.rmtree(path, ignore_errors=True)
            raise
        snapshot = _load(layout, con, hash_)
        assert snapshot is not None
        return snapshot, False
    finally:
        con.close()


def _read_only(layout: Layout) -> duckdb.DuckDBPyConnection | None:
    if not layout.catalog.is_file():
        return None
    try:
        return duckdb.connect(str(layout.catalog), read_only=True)
    except duckdb.Error as exc:
        raise LoopmlError(f"{layout.catalog}: cannot open the snapshot catalogue: {str(exc).splitlines()[0]}") from None


def latest_snapshot(layout: Layout) -> Snapshot | None:
    """The snapshot of the most recent ingest, or None before the first one."""
    con = _read_only(layout)
    if con is None:
        return None
    try:
        row = one(con, "SELECT hash FROM snapshots ORDER BY ingested_at DESC, created_at DESC LIMIT 1")
        return _load(layout, con, str(row[0])) if row else None
    finally:
        con.close()


def get_snapshot(layout: Layout, hash_: str) -> Snapshot:
    """The snapshot ``hash_`` (a unique prefix is enough); a clear error when unknown."""
    con = _read_only(layout)
    if con is None:
        raise DataError(f"{layout.catalog}: no snapshot {hash_!r}: nothing ingested yet (run 'loopml ingest')")
    try:
        rows = con.execute("SELECT hash FROM snapshots WHERE starts_with(hash, ?) ORDER BY hash", [hash_]).fetchall()
        if len(rows) != 1:
            known = [str(r[0]) for r in con.execute("SELECT hash FROM snapshots ORDER BY ingested_at DESC LIMIT 5").fetchall()]
            what = "is ambiguous" if rows else "is unknown"
            raise DataError(f"{layout.catalog}: snapshot {hash_!r} {what} (latest: {', '.join(known) or 'none'})")
        snapshot = _load(layout, con, str(rows[0][0]))
        assert snapshot is not None
        return snapshot
    finally:
        con.close()
