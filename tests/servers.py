"""A throwaway Redis server for the tests: its own folder, a free loopback port, no persistence, stopped after.

``make servers`` installs the Debian ``redis-server`` package when it is
missing. Use the ``redis_server`` fixture (import it into a test module); each
test gets an empty server (``FLUSHALL`` between tests), and
:meth:`RedisServer.stop` / :meth:`RedisServer.start` let a test kill the
server and bring it back on the same port.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loopml.server import free_port
from waiting import wait_until


def redis_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found is None:
        pytest.fail("redis-server is not installed (run 'make servers')")
    return found


class RedisServer:
    """A redis-server child process on 127.0.0.1:``port`` with its files in ``folder``."""

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="loopml-redis-"))
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 60.0) -> None:
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.folder / "redis.log"),
        ]
        process = self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def log() -> str:
            path = self.folder / "redis.log"
            return f"redis-server on port {self.port}: {path.read_text(errors='replace')[-500:] if path.exists() else ''}"

        def answers() -> bool:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2) as probe:
                    return bool(probe.ping())
            except redis.exceptions.ConnectionError:
                assert process.poll() is None, f"exited with {process.returncode}: {log()}"
                return False

        wait_until(answers, timeout=timeout, message=log)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no clean shutdown, like a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """A running, empty Redis server (restarted if a previous test killed it)."""
    if redis_session.process is None or redis_session.process.poll() is not None:
        redis_session.start()
    with redis_session.client() as client:
        client.flushall()
    yield redis_session
