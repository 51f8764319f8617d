"""``loopml serve --workers 2``: two uvicorn worker processes serve one project and both log to one prediction log.

The server runs as a real subprocess on a free loopback port. Each worker has
its own Prometheus registry, so ``/metrics`` fetched over fresh connections
tells the workers apart (``loopml_requests_created`` is a per-process
timestamp) and gives each worker's count of predictions. After a clean
shutdown (SIGINT to the supervisor), the Parquet prediction log written by
both workers holds every request exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from loopml.project import Project
from loopml.server import free_port
from waiting import wait_until

REQUESTS = 240
_COUNT = re.compile(r'^loopml_requests_(total|created)\{endpoint="/v1/predict",status="200"\} (\S+)$', re.M)
_STARTED = re.compile(r"^loopml_model_errors_created (\S+)$", re.M)  # made when a worker starts: one value per worker


def bodies(project: Path, n: int) -> list[dict[str, Any]]:
    rows = pq.read_table(project / "data" / "live.parquet").slice(0, n).to_pylist()
    return [
        {
            "entities": {"customer_id": r["customer_id"], "terminal_id": r["terminal_id"]},
            "features": {"tx_amount": r["tx_amount"], "tx_datetime": r["tx_datetime"].isoformat()},
            "request_id": f"w-{i}-{uuid.uuid4().hex[:6]}",
        }
        for i, r in enumerate(rows)
    ]


def fresh(url: str) -> httpx.Client:
    """A client that opens a new connection per request, so the kernel hands requests to either worker."""
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def per_worker_counts(url: str, total: int, attempts: int = 60) -> dict[str, int]:
    """Worker (its counter's creation time) -> predictions it served, from /metrics over fresh connections."""
    seen: dict[str, int] = {}
    with fresh(url) as client:
        for _ in range(attempts):
            values = dict(_COUNT.findall(client.get("/metrics").text))
            if "created" in values:
                seen[values["created"]] = int(float(values["total"]))
            if len(seen) >= 2 and sum(seen.values()) == total:
                break
    return seen


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until both workers answer: one worker's /readyz is not enough, the other may still be loading the project."""
    started: set[str] = set()

    def both_up() -> bool:
        assert process.poll() is None, f"loopml serve exited with {process.returncode}: {log.read_text()[-2000:]}"
        try:
            with fresh(url) as client:
                started.update(_STARTED.findall(client.get("/metrics").text))
        except httpx.TransportError:
            pass
        return len(started) >= 2

    wait_until(both_up, timeout=90, interval=0.05, message=lambda: f"loopml serve --workers 2: {log.read_text()[-2000:]}")
    assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200


@pytest.mark.slow
def test_two_workers_serve_and_both_log_every_prediction_once(trained_copy: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "loopml", "serve", "--project", str(trained_copy), "--port", str(port), "--workers", "2"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LOOPML_ADMIN_TOKEN": "t"})
    try:
        wait_ready(url, process, log)
        sent: list[dict[str, Any]] = []

        def post(chunk: list[dict[str, Any]]) -> list[int]:
            with fresh(url) as client:
                return [client.post("/v1/predict", json=b).status_code for b in chunk]

        def a_round_served_by_both() -> bool:  # the kernel picks the worker of each connection: a busy one may get none
            batch = bodies(trained_copy, REQUESTS)
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = [s for part in pool.map(post, [batch[i::8] for i in range(8)]) for s in part]
            assert statuses == [200] * REQUESTS
            sent.extend(batch)
            return len(per_worker_counts(url, len(sent))) == 2

        wait_until(a_round_served_by_both, timeout=300, interval=0, message="predictions served by both workers")
        workers = per_worker_counts(url, len(sent))
        assert len(workers) == 2 and all(n > 0 for n in workers.values()), workers
        assert sum(workers.values()) == len(sent), workers
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = log.read_text()
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert f"loopml serve: listening on {url} (2 workers), model version 1; Ctrl-C to stop" in output.splitlines(), output
    assert f"loopml serve: stopped listening on {url}" in output.splitlines(), output[-2000:]

    with Project.load(trained_copy).prediction_log().connect() as con:
        rows = con.execute("SELECT request_id, count(*) FROM predictions GROUP BY request_id").fetchall()
    assert dict(rows) == {b["request_id"]: 1 for b in sent}


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], seconds: float = 90) -> str:
    """The first line of ``log`` holding ``text``, polled until a deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no line with {text!r} in the output of loopml serve: {log.read_text()[-2000:]}")


def test_serve_says_where_it_listens_and_when_it_stops(trained_copy: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "loopml", "serve", "--project", str(trained_copy), "--port", str(port)]
    with log.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        line = wait_for_line(log, "listening on", process)
        expected = f"loopml serve: listening on http://127.0.0.1:{port} (1 worker), model version 1; Ctrl-C to stop"
        assert line == expected
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200  # it listens once it says so
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = log.read_text()
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert output.splitlines()[-1] == f"loopml serve: stopped listening on http://127.0.0.1:{port}", output[-2000:]
