"""The PostgreSQL model registry: the SQLite registry's SQL and steps, on a shared server.

:class:`PostgresRegistry` reuses every query and every crash-safe step of
:class:`~loopml.registry.sqlite.SqliteRegistry` (the statements are plain SQL
both databases accept) and changes only what differs: the connection (psycopg
3 in autocommit mode, ``?`` placeholders rewritten to ``%s``), the schema
(``GENERATED ... AS IDENTITY`` instead of ``AUTOINCREMENT``) and the write lock
(``LOCK TABLE versions IN EXCLUSIVE MODE`` inside the transaction instead of
SQLite's ``BEGIN IMMEDIATE``), so two processes registering at once get
consecutive version numbers.

Artifacts are kept twice: as files under the project's artifacts folder, like
the SQLite registry, and as bytes in the ``artifacts`` table, written in the
same transaction as the version row. A machine that does not have the file
(another host sharing the registry) fetches it from the database into its
artifacts folder; it is loaded only when its hash matches the record.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from loopml.errors import LoopmlError
from loopml.registry.sqlite import Connection, SqliteRegistry
from loopml.train.artifact import Predictor

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, created_at TEXT NOT NULL, kind TEXT NOT NULL,"
    " artifact TEXT NOT NULL, sha256 TEXT NOT NULL, metrics TEXT NOT NULL, lineage TEXT NOT NULL, signature TEXT NOT NULL,"
    " reference_stats TEXT NOT NULL, tags TEXT NOT NULL, run_id TEXT, gate TEXT)",
    "CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, version INTEGER NOT NULL REFERENCES versions(version),"
    " updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alias_history (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,"
    " version INTEGER NOT NULL REFERENCES versions(version), previous INTEGER, action TEXT NOT NULL, reason TEXT NOT NULL,"
    " at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS artifacts (name TEXT PRIMARY KEY, data BYTEA NOT NULL)",
]
_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]*@")


class _PgConnection:
    """A psycopg connection with the ``execute(sql, params)`` of ``sqlite3`` (``?`` placeholders)."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self._con.execute(sql.replace("?", "%s"), parameters)

    def close(self) -> None:
        self._con.close()


class PostgresRegistry(SqliteRegistry):
    """Model registry in a PostgreSQL database; artifacts in the database and cached as files."""

    def __init__(self, url: str, artifacts: Path) -> None:
        super().__init__(Path(os.devnull), artifacts)
        self.url = url
        self.where = "registry " + _PASSWORD.sub(r"\1***@", url)
        self._schema_ready = False

    def _connect(self) -> Connection:
        import psycopg

        try:
            con = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LoopmlError(f"{self.where}: cannot connect ({reason})") from None
        if not self._schema_ready:
            try:
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(7461202611)")  # one schema creator at a time
                    for statement in _SCHEMA:
                        con.execute(statement)
            except psycopg.Error as exc:
                con.close()
                raise LoopmlError(f"{self.where}: cannot create the registry tables ({exc})") from None
            self._schema_ready = True
        return _PgConnection(con)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with closing(self._connect()) as con:
            con.execute("BEGIN")
            try:
                con.execute("LOCK TABLE versions IN EXCLUSIVE MODE")
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _store_artifact(self, con: Connection, final: Path) -> None:
        con.execute(
            "INSERT INTO artifacts (name, data) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET data = excluded.data",
            (final.name, final.read_bytes()),
        )

    def load_predictor(self, version: int) -> Predictor:
        model = self.get(version)
        if not model.artifact_path.is_file():
            with closing(self._connect()) as con:
                row = con.execute("SELECT data FROM artifacts WHERE name = ?", (model.artifact_path.name,)).fetchone()
            if row is None:
                raise LoopmlError(f"{self.where}: the artifact of model version {version} is missing from the database")
            self.artifacts.mkdir(parents=True, exist_ok=True)
            tmp = self.artifacts / f".fetch-{uuid.uuid4().hex}"
            tmp.write_bytes(bytes(row[0]))
            os.replace(tmp, model.artifact_path)
        return Predictor.load(model.artifact_path, model.sha256)
