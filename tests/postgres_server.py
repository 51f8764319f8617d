"""A throwaway PostgreSQL server for the tests: its own data folder, a free loopback port, stopped after.

``make test`` installs the Debian ``postgresql`` package when it is missing; the
server binaries live in ``/usr/lib/postgresql/<major>/bin`` (or on ``PATH``).
PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user (created by the Debian package) via ``runuser``.
Use the ``postgres_url`` fixture (import it into a test module); each call of
``fresh_database`` gives a test its own empty database.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml.server import free_port


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        pytest.fail(f"PostgreSQL's {name} is not installed (run 'make servers')")
    return candidates[-1]


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresServer:
    """A running server; ``url(db)`` is a libpq URL for database ``db``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="loopml-pg-"))
        self.port = free_port()
        self.data = self.folder / "data"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        subprocess.run(
            _as_server_user([_bin("initdb"), "-D", str(self.data), "-U", "loopml", "-A", "trust", "--no-sync", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder} -c fsync=off"
        subprocess.run(
            _as_server_user([_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"]),
            check=True,
            capture_output=True,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://loopml@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_server_user([_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A libpq URL of an empty database of its own."""
    return postgres_server.fresh_database()
