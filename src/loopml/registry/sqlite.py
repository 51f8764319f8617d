"""The SQLite model registry (``layout.registry``) with artifacts under ``layout.artifacts``.

Registering is crash-safe: the artifact is copied to a temporary file in the
artifacts folder, fsync'ed and hashed; then, inside one ``BEGIN IMMEDIATE``
transaction, the next version number is taken, the file is renamed to its
final name ``<version>-<sha16>.<txt|json>`` and the row is inserted and
committed. A crash at any point leaves at most an orphan file (see
:meth:`SqliteRegistry.orphans`), never a row pointing at nothing; a later
registration simply reuses the version number.

Aliases live in ``aliases`` (current holder) and ``alias_history`` (every
move, with its reason); a rollback replays that history as a stack.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from loopml.durable import fsync_dir
from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.registry.base import CHAMPION, AliasEvent, ModelVersion, Signature
from loopml.registry.gate import GateVerdict
from loopml.train.artifact import SUFFIXES, Predictor, sha256_file

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    artifact TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    signature TEXT NOT NULL,
    reference_stats TEXT NOT NULL,
    tags TEXT NOT NULL,
    run_id TEXT,
    gate TEXT
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL REFERENCES versions(version),
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL REFERENCES versions(version),
    previous INTEGER,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
"""
_COLUMNS = "version, created_at, kind, artifact, sha256, metrics, lineage, signature, tags, run_id, gate"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise LoopmlError(f"registry: {what} is not plain JSON ({exc})") from None


class Connection(Protocol):
    """What the registry needs of a DB-API connection: ``sqlite3`` as is, psycopg through an adapter."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StagedArtifact:
    """An artifact copied into the artifacts folder under a temporary name, with its hash."""

    path: Path
    sha256: str
    kind: str


class SqliteRegistry:
    """Model registry in one SQLite file; artifacts as files next to it."""

    def __init__(self, path: Path, artifacts: Path) -> None:
        self.path = path
        self.artifacts = artifacts
        self.where = str(path)  # names the registry in error messages

    @classmethod
    def for_layout(cls, layout: Layout) -> SqliteRegistry:
        return cls(layout.registry, layout.artifacts)

    # -- connection and transactions -------------------------------------------------

    def _connect(self) -> Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            con.execute("PRAGMA foreign_keys = ON")
            con.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise LoopmlError(f"{self.where}: cannot open the model registry ({exc})") from None
        return con

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction holding the database lock; rolled back on any error."""
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- register, in its crash-safe steps -----------------------------------------------

    def _stage(self, artifact_file: Path, kind: str) -> StagedArtifact:
        if kind not in SUFFIXES:
            raise LoopmlError(f"registry: unknown artifact kind {kind!r} (known: {', '.join(SUFFIXES)})")
        if not artifact_file.is_file():
            raise LoopmlError(f"{artifact_file}: model artifact file does not exist")
        tmp = self.artifacts / f".tmp-{uuid.uuid4().hex}{SUFFIXES[kind]}"
        try:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact_file, tmp)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise LoopmlError(f"{self.artifacts}: cannot copy the model artifact in ({exc.strerror or exc})") from None
        return StagedArtifact(tmp, sha256_file(tmp), kind)

    @staticmethod
    def _next_version(con: Connection) -> int:
        row = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions").fetchone()
        return int(row[0])

    def _place(self, staged: StagedArtifact, version: int) -> Path:
        final = self.artifacts / f"{version}-{staged.sha256[:16]}{SUFFIXES[staged.kind]}"
        os.replace(staged.path, final)
        fsync_dir(self.artifacts)
        return final

    def register(
        self,
        artifact_file: Path,
        kind: str,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        signature: Signature,
        reference_stats: dict[str, Any],
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        encoded = [
            _dumps(metrics, "metrics"),
            _dumps(lineage, "lineage"),
            _dumps(signature, "signature"),
            _dumps(reference_stats, "reference_stats"),
            _dumps(tags or {}, "tags"),
        ]
        staged = self._stage(artifact_file, kind)
        try:
            with self._transaction() as con:
                version = self._next_version(con)
                final = self._place(staged, version)
                con.execute(
                    "INSERT INTO versions (version, created_at, kind, artifact, sha256, metrics, lineage, signature,"
                    " reference_stats, tags, run_id, gate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (version, _now(), kind, final.name, staged.sha256, *encoded, run_id),
                )
                self._store_artifact(con, final)
        finally:
            staged.path.unlink(missing_ok=True)
        return self.get(version)

    def _store_artifact(self, con: Connection, final: Path) -> None:
        """Keep a copy of the artifact in the database (the SQLite registry keeps files only)."""

    def orphans(self) -> builtins.list[Path]:
        """Files in the artifacts folder that no version row points at (left by a crash)."""
        if not self.artifacts.is_dir():
            return []
        with closing(self._connect()) as con:
            known = {row[0] for row in con.execute("SELECT artifact FROM versions")}
        return sorted(p for p in self.artifacts.iterdir() if p.is_file() and p.name not in known)

    # -- reading -------------------------------------------------------------------

    def _row_to_version(self, row: tuple[Any, ...], aliases: builtins.list[str]) -> ModelVersion:
        version, created_at, kind, artifact, sha, metrics, lineage, signature, tags, run_id, gate = row
        return ModelVersion(
            version=int(version),
            created_at=created_at,
            kind=kind,
            artifact_path=self.artifacts / artifact,
            sha256=sha,
            metrics=json.loads(metrics),
            lineage=json.loads(lineage),
            signature=json.loads(signature),
            aliases=aliases,
            gate=GateVerdict.from_json(json.loads(gate)) if gate else None,
            run_id=run_id,
            tags=json.loads(tags),
        )

    def _aliases(self, con: Connection) -> dict[int, builtins.list[str]]:
        out: dict[int, builtins.list[str]] = {}
        for name, version in con.execute("SELECT name, version FROM aliases ORDER BY name"):
            out.setdefault(int(version), []).append(name)
        return out

    def _get(self, con: Connection, version: int) -> ModelVersion:
        row = con.execute(f"SELECT {_COLUMNS} FROM versions WHERE version = ?", (version,)).fetchone()
        if row is None:
            count = con.execute("SELECT COUNT(*), MIN(version), MAX(version) FROM versions").fetchone()
            known = f"versions {count[1]}..{count[2]}" if count[0] else "the registry is empty"
            raise LoopmlError(f"{self.where}: model version {version} does not exist ({known})")
        return self._row_to_version(row, self._aliases(con).get(version, []))

    def get(self, version: int) -> ModelVersion:
        with closing(self._connect()) as con:
            return self._get(con, version)

    def list(self) -> builtins.list[ModelVersion]:
        with closing(self._connect()) as con:
            aliases = self._aliases(con)
            rows = con.execute(f"SELECT {_COLUMNS} FROM versions ORDER BY version").fetchall()
            return [self._row_to_version(row, aliases.get(int(row[0]), [])) for row in rows]

    def alias(self, name: str) -> ModelVersion | None:
        with closing(self._connect()) as con:
            row = con.execute("SELECT version FROM aliases WHERE name = ?", (name,)).fetchone()
            return None if row is None else self._get(con, int(row[0]))

    def alias_history(self, name: str) -> builtins.list[AliasEvent]:
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT name, version, previous, action, reason, at FROM alias_history WHERE name = ? ORDER BY id", (name,)
            ).fetchall()
        return [AliasEvent(r[0], int(r[1]), None if r[2] is None else int(r[2]), r[3], r[4], r[5]) for r in rows]

    def reference_stats(self, version: int) -> dict[str, Any]:
        with closing(self._connect()) as con:
            row = con.execute("SELECT reference_stats FROM versions WHERE version = ?", (version,)).fetchone()
            if row is None:
                self._get(con, version)  # raises the standard "does not exist" error
            result: dict[str, Any] = json.loads(row[0])
            return result

    def load_predictor(self, version: int) -> Predictor:
        model = self.get(version)
        return Predictor.load(model.artifact_path, model.sha256)

    # -- aliases and gate ---------------------------------------------------------------

    def _move(self, con: Connection, name: str, version: int, action: str, reason: str) -> None:
        row = con.execute("SELECT version FROM aliases WHERE name = ?", (name,)).fetchone()
        previous = None if row is None else int(row[0])
        now = _now()
        con.execute(
            "INSERT INTO aliases (name, version, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            (name, version, now),
        )
        con.execute(
            "INSERT INTO alias_history (name, version, previous, action, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, previous, action, reason, now),
        )

    def set_alias(self, name: str, version: int, reason: str) -> ModelVersion:
        if not _ALIAS.match(name):
            raise LoopmlError(f"registry: alias {name!r} must start with a letter and use only letters, digits, '_', '.', '-'")
        with self._transaction() as con:
            self._get(con, version)
            row = con.execute("SELECT version FROM aliases WHERE name = ?", (name,)).fetchone()
            if row is None or int(row[0]) != version:
                self._move(con, name, version, "set", reason)
            return self._get(con, version)

    def rollback(self, alias: str = CHAMPION) -> ModelVersion:
        with self._transaction() as con:
            rows = con.execute("SELECT version, action FROM alias_history WHERE name = ? ORDER BY id", (alias,)).fetchall()
            stack: builtins.list[int] = []
            for version, action in rows:
                if action == "rollback":
                    stack.pop()
                else:
                    stack.append(int(version))
            if not stack:
                raise LoopmlError(f"{self.where}: alias {alias!r} is not set; nothing to roll back")
            if len(stack) < 2:
                raise LoopmlError(f"{self.where}: alias {alias!r} (v{stack[-1]}) has no previous holder to roll back to")
            target = stack[-2]
            self._move(con, alias, target, "rollback", f"rollback from v{stack[-1]}")
            return self._get(con, target)

    def record_gate(self, version: int, verdict: GateVerdict) -> None:
        with self._transaction() as con:
            self._get(con, version)
            con.execute("UPDATE versions SET gate = ? WHERE version = ?", (_dumps(verdict.to_json(), "gate verdict"), version))
