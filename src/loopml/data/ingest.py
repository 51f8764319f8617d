"""Ingest: read every declared source, validate it, and publish a content-hashed snapshot.

Each source is loaded into its own in-memory DuckDB, validated, and its valid
and quarantined rows are written as Parquet into a staging folder under the
state directory; only when every source has passed is the snapshot published
(:func:`loopml.data.snapshot.publish`). Any error removes the staging folder,
so a failed ingest leaves no snapshot, no quarantine and no catalogue row.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from loopml.data.snapshot import SourceDigest, SourceSnapshot, content_digest, publish, snapshot_hash
from loopml.data.sources import literal, one, read_source
from loopml.data.validate import Check, Validation, validate
from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.spec.model import Spec

__all__ = ["IngestResult", "Progress", "ingest"]

Progress = Callable[[str, float], None]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class IngestResult:
    """What ``loopml ingest`` reports; :meth:`to_json` is the ``--json`` document."""

    snapshot: str
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    checks: list[Check]
    per_source: dict[str, SourceSnapshot]
    reused: bool
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "rows_in": self.rows_in,
            "rows_valid": self.rows_valid,
            "rows_quarantined": self.rows_quarantined,
            "checks": [c.to_json() for c in self.checks],
            "reused": self.reused,
            "created_at": self.created_at.isoformat(),
            "sources": {name: s.to_json() for name, s in self.per_source.items()},
        }


def _copy(con: duckdb.DuckDBPyConnection, sql: str, path: Path) -> int:
    row = one(con, f"COPY ({sql}) TO {literal(str(path))} (FORMAT parquet, COMPRESSION zstd)")
    return int(row[0]) if row else 0


def _stage_source(validation: Validation, staged: Path, staged_q: Path) -> tuple[SourceSnapshot, SourceDigest]:
    """Write one validated source into the staging folders; check nothing was lost on the way."""
    table, con = validation.table, validation.table.con
    out = staged / f"{table.name}.parquet"
    written = _copy(con, validation.valid_sql(), out)
    rows_valid, valid_digest = content_digest(con, validation.valid_sql(ordered=False))
    quarantine: Path | None = None
    written_q, rows_q, q_digest = 0, 0, "0"
    if validation.rows_quarantined:
        quarantine = staged_q / f"{table.name}.parquet"
        written_q = _copy(con, validation.quarantine_sql(), quarantine)
        rows_q, q_digest = content_digest(con, validation.quarantine_sql(ordered=False))
    if not (written == rows_valid == validation.rows_valid and written_q == rows_q == validation.rows_quarantined):
        raise AssertionError(f"{table.path}: rows written ({written} + {written_q}) differ from rows validated")
    if validation.rows_in != validation.rows_valid + validation.rows_quarantined:
        raise AssertionError(f"{table.path}: rows_in != rows_valid + rows_quarantined")
    columns: dict[str, str] = {c.name: c.rule.type for c in table.columns}
    snap = SourceSnapshot(
        table.name, out, quarantine, validation.rows_in, rows_valid, rows_q, validation.min_ts, validation.max_ts
    )
    return snap, SourceDigest(table.name, columns, rows_valid, valid_digest, rows_q, q_digest)


def _remove_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def ingest(spec: Spec, layout: Layout, progress: Progress | None = None, now: datetime | None = None) -> IngestResult:
    """Read, validate and snapshot every source of ``spec``; ``now`` (naive UTC) is for ``max_age``."""
    for name in spec.sources:
        if not _SAFE_NAME.match(name):
            raise LoopmlError(f"loopml.yaml: sources.{name}: a source name may only use letters, digits, '_', '-' and '.'")
    report: Progress = progress if progress is not None else (lambda _message, _fraction: None)
    state_existed = layout.state.exists()
    staging = layout.state / f".ingest-{uuid.uuid4().hex}"
    staged, staged_q = staging / "snapshot", staging / "quarantine"
    try:
        staged.mkdir(parents=True)
        staged_q.mkdir()
        snaps: list[SourceSnapshot] = []
        digests: list[SourceDigest] = []
        checks: list[Check] = []
        total = max(len(spec.sources), 1)
        for i, (name, source) in enumerate(spec.sources.items()):
            with duckdb.connect() as con:
                report(f"reading {name}", i / total)
                table = read_source(name, source, layout.source_path(source.path), con)
                report(f"validating {name} ({table.rows} rows)", (i + 0.4) / total)
                validation = validate(spec, table, now)
                report(f"writing {name}", (i + 0.7) / total)
                snap, digest = _stage_source(validation, staged, staged_q)
            snaps.append(snap)
            digests.append(digest)
            checks.extend(validation.checks)
        report("publishing the snapshot", 0.99)
        columns = {d.source: d.columns for d in digests}
        snapshot, reused = publish(layout, staged, staged_q, snapshot_hash(digests), snaps, columns)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not state_existed:
            _remove_empty(layout.state)
    report("done", 1.0)
    result = IngestResult(
        snapshot=snapshot.hash,
        rows_in=sum(s.rows_in for s in snapshot.sources.values()),
        rows_valid=sum(s.rows_valid for s in snapshot.sources.values()),
        rows_quarantined=sum(s.rows_quarantined for s in snapshot.sources.values()),
        checks=checks,
        per_source=snapshot.sources,
        reused=reused,
        created_at=snapshot.created_at,
    )
    if result.rows_in != result.rows_valid + result.rows_quarantined:
        raise AssertionError(f"snapshot {result.snapshot}: rows_in != rows_valid + rows_quarantined")
    return result
