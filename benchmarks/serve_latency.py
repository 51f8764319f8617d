"""Online serving: ``loopml serve`` against ``mlflow models serve``, same LightGBM model, same rows, same load.

    .venv/bin/python benchmarks/serve_latency.py [--rate 500] [--duration 25] [--workers 1 2]
                                                 [--skip-mlflow] [--mlflow-stacks fast pip] [--fresh]

Set-up (cached under the system temp folder, ``loopml-bench-serve``; ``--fresh``
rebuilds it): the default fraud world (``loopml init --example fraud``, 183
days, the last 7 kept aside as live traffic), ingested, features built, the
champion trained and the online store materialized.

For each server and worker count the server runs as its own process on a
free loopback port and gets, from this process, open-loop load (requests
sent on a fixed schedule, whatever the answers do):

1. **fixed load**: ``--rate`` requests/s for ``--duration`` s (after a 3 s
   warm-up at the same rate): p50/p99/max latency, achieved rate, errors;
2. **ramp**: 6 s steps from 100 requests/s up, each 25 % above the last,
   until two steps in a row are not kept up with. A step is *kept up with*
   when every request succeeded and no backlog built up: the median latency
   of the requests scheduled in its last second is under 100 ms (a server
   slower than the offered rate queues requests, and their latency grows
   through the step). The **maximum throughput** is the highest step kept up with (the
   error-free saturation point); the **maximum sustainable throughput** is
   the highest step kept up with at a p99 under 10 ms (the issue's latency
   budget).

Latency is measured from each request's *scheduled* send time (open loop, so
a slow server cannot slow the arrivals down and hide its queueing). The
generator's garbage collector is off during each run (a collection pause in
the generator would be counted as server latency).

loopml gets ``POST /v1/predict`` bodies of the fraud example
(``{"entities": {customer_id, terminal_id}, "features": {tx_amount,
tx_datetime}}``): it reads the online features, computes the request-time
features and the transforms, scores and logs each prediction. MLflow
(installed with LightGBM into its own venv; run twice: on uvicorn with
uvloop and httptools like loopml's, and on the asyncio loop and h11 parser a
plain ``pip install mlflow`` gets) serves the champion's booster
saved with ``mlflow.lightgbm.save_model`` and gets, for the same rows, the
finished model input as a pandas-split JSON body: it does less work per
request (no feature lookup, no logging). Its scores are checked against
loopml's before the load.

The load generator is hand-written: an asyncio HTTP/1.1 client over raw
loopback sockets with every request pre-encoded. On two cores the generator
shares the CPU with the server, and ``httpx.AsyncClient`` spends about ten
times more CPU per request than this client (measured here: ~1.8 ms against
~0.17 ms), CPU the server would not get. The generator's CPU per request is
printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow.parquet as pq
from common import MLFLOW_VENV, mlflow_python

from loopml.project import Project
from loopml.server import free_port

T = TypeVar("T")
CACHE = Path(tempfile.gettempdir()) / "loopml-bench-serve"
LIVE_DAYS = 7
ROWS = 20_000
SLO_P99_MS = 10.0
RAMP_START = 100.0
RAMP_FACTOR = 1.25
RAMP_MAX = 20_000.0
STEP_SECONDS = 6.0
BACKLOG_MS = 100.0

_SAVE_MLFLOW_MODEL = """
import sys, lightgbm, mlflow.lightgbm
mlflow.lightgbm.save_model(lightgbm.Booster(model_file=sys.argv[1]), sys.argv[2])
"""


# -- set-up -------------------------------------------------------------------------------------------------------


def prepare(fresh: bool) -> Path:
    """The default fraud project, trained and materialized (cached between runs)."""
    folder = CACHE / "project"
    marker = CACHE / "ready"
    if fresh and CACHE.exists():
        shutil.rmtree(CACHE)
    if marker.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    print(f"preparing the default fraud project in {folder} (once; --fresh rebuilds it)...", file=sys.stderr)
    from loopml.scaffold import init_example

    init_example(folder, live_days=LIVE_DAYS)
    project = Project.load(folder)
    project.ingest()
    project.build_features()
    project.train()
    project.materialize()
    marker.write_text(f"{time.perf_counter() - started:.0f} s\n")
    return folder


def request_rows(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(folder / "data" / "live.parquet").slice(0, ROWS).to_pylist()
    return rows


def loopml_bodies(rows: list[dict[str, Any]]) -> list[bytes]:
    return [
        json.dumps(
            {
                "entities": {"customer_id": r["customer_id"], "terminal_id": r["terminal_id"]},
                "features": {"tx_amount": r["tx_amount"], "tx_datetime": r["tx_datetime"].isoformat()},
            }
        ).encode()
        for r in rows
    ]


def model_inputs(folder: Path, rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """The champion's input matrix for the rows (what loopml's server computes), its scores and its LightGBM text."""
    from loopml.features.encodings import EncodingState
    from loopml.features.vector import FeatureAssembler
    from loopml.serve.model_input import ModelInput

    project = Project.load(folder)
    registry = project.registry()
    version = registry.alias(project.spec.rollout.alias)
    if version is None:
        raise SystemExit("the benchmark project has no champion")
    predictor = registry.load_predictor(version.version)
    booster = getattr(predictor, "inner", predictor)
    if booster.kind != "lightgbm":
        raise SystemExit(f"the champion is a {booster.kind} model; this benchmark compares LightGBM")
    assembler = FeatureAssembler(project.spec, project.online_store())
    requests = [
        (
            {"customer_id": r["customer_id"], "terminal_id": r["terminal_id"]},
            {"tx_amount": r["tx_amount"], "tx_datetime": r["tx_datetime"]},
        )
        for r in rows
    ]
    assembled = assembler.vectors(requests)
    matrix = ModelInput(predictor.feature_names, assembler.columns, EncodingState(), version.version).matrix(assembled)
    return list(predictor.feature_names), matrix, np.asarray(predictor.predict(matrix)), booster.to_text()


def mlflow_bodies(names: list[str], matrix: np.ndarray) -> list[bytes]:
    return [json.dumps({"dataframe_split": {"columns": names, "data": [row.tolist()]}}).encode() for row in matrix]


# -- servers ------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    path: bytes
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(
    name: str, command: list[str], port: int, path: str, ready: str, workdir: Path, env: dict[str, str] | None = None
) -> Server:
    log = workdir / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(name, process, port, path.encode(), log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if run_async(_get_ok("127.0.0.1", port, ready)):
            return server
        time.sleep(0.3)
    server.stop()
    raise SystemExit(f"{name} did not become ready in 180 s:\n{log.read_text()[-3000:]}")


async def _get_ok(host: str, port: int, path: str) -> bool:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        status, _ = await _response(reader)
        return status == 200
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return False
    finally:
        writer.close()


# -- the load generator -------------------------------------------------------------------------------------------


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]
    return status, await reader.readexactly(int(headers.get(b"content-length", b"0")))


@dataclass
class Run:
    offered: float  # requests/s
    seconds: float
    latencies_ms: np.ndarray  # of the successful requests
    errors: int
    cpu_per_request_us: float
    last_second_p50_ms: float  # of the requests scheduled in the last second: grows when a backlog builds up

    @property
    def achieved(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def kept_up(self) -> bool:
        return self.errors == 0 and self.last_second_p50_ms < BACKLOG_MS


class Load:
    """Pre-encoded HTTP/1.1 requests against one server over keep-alive loopback connections."""

    def __init__(self, server: Server, bodies: list[bytes]) -> None:
        self.port = server.port
        head = b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self.requests = [head % (server.path, len(b)) + b for b in bodies]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def _send(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], i: int) -> bool:
        reader, writer = conn
        writer.write(self.requests[i % len(self.requests)])
        status, _ = await _response(reader)
        return status == 200

    async def open_loop(self, rate: float, seconds: float, connections: int = 64) -> Run:
        """``rate`` requests/s for ``seconds``; latency from each request's scheduled time."""
        pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(connections):
            pool.put_nowait(await self._connect())
        n = int(rate * seconds)
        latencies = np.full(n, np.nan)
        errors = 0

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors
            conn = await pool.get()
            try:
                ok = await self._send(conn, i)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
                conn[1].close()
                conn = await self._connect()
            pool.put_nowait(conn)
            if ok:
                latencies[i] = (time.perf_counter() - scheduled) * 1000.0
            else:
                errors += 1

        gc.collect()
        gc.disable()  # the generator's own collection pauses would be counted as server latency
        cpu = _cpu()
        tasks = []
        t0 = time.perf_counter() + 0.01
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        used = _cpu() - cpu
        gc.enable()
        while not pool.empty():
            pool.get_nowait()[1].close()
        done = latencies[~np.isnan(latencies)]
        tail = latencies[-max(int(rate), 1) :]
        tail_p50 = float(np.nanmedian(tail)) if not np.all(np.isnan(tail)) else float("inf")
        return Run(rate, max(elapsed, seconds), done, errors, used / max(n, 1) * 1e6, tail_p50)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (less generator CPU per request), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    name: str
    fixed: Run
    ramp: list[Run]

    @property
    def max_throughput(self) -> float:
        return max((run.offered for run in self.ramp if run.kept_up()), default=0.0)

    @property
    def sustainable(self) -> float:
        return max((run.offered for run in self.ramp if run.kept_up() and run.pct(99) < SLO_P99_MS), default=0.0)


def measure(server: Server, bodies: list[bytes], rate: float, duration: float) -> Result:
    load = Load(server, bodies)
    print(f"{server.name}: {rate:.0f} req/s for {duration:.0f} s (after a 3 s warm-up)...", file=sys.stderr)
    run_async(load.open_loop(rate, 3.0))
    fixed = run_async(load.open_loop(rate, duration))
    ramp: list[Run] = []
    step, misses = RAMP_START, 0
    while misses < 2 and step <= RAMP_MAX:
        run = run_async(load.open_loop(round(step), STEP_SECONDS))
        ramp.append(run)
        misses = 0 if run.kept_up() else misses + 1
        print(
            f"  {run.offered:>6.0f} req/s offered: served {run.achieved:.0f}/s, p50 {run.pct(50):.2f} ms, "
            f"p99 {run.pct(99):.2f} ms, errors {run.errors}",
            file=sys.stderr,
        )
        step *= RAMP_FACTOR
    return Result(server.name, fixed, ramp)


# -- main ---------------------------------------------------------------------------------------------------------


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


#: what the MLflow venv needs beside MLflow: the model's library, and the same C event loop and HTTP parser
#: that loopml's uvicorn uses (MLflow's scoring server is uvicorn too, and picks them up the same way)
MLFLOW_EXTRAS = ["lightgbm>=4.3,<5", "uvloop>=0.19,<1", "httptools>=0.6,<1"]


def ensure_extras(python: Path) -> bool:
    probe = "import lightgbm, mlflow.lightgbm, uvloop, httptools"
    if subprocess.run([str(python), "-c", probe], capture_output=True, check=False).returncode == 0:
        return True
    print(f"installing {', '.join(MLFLOW_EXTRAS)} into {MLFLOW_VENV} (once)...", file=sys.stderr)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *MLFLOW_EXTRAS], check=False, timeout=900)
    return done.returncode == 0


def print_table(results: list[Result], rate: float) -> None:
    header = ("server", f"p50 @{rate:.0f}/s", f"p99 @{rate:.0f}/s", f"max @{rate:.0f}/s", "served", "errors",
              "max throughput", "max sustainable (p99<10ms)", "generator CPU/request")  # fmt: skip
    rows = [header]
    for r in results:
        f = r.fixed
        rows.append(
            (
                r.name,
                f"{f.pct(50):.2f} ms",
                f"{f.pct(99):.2f} ms",
                f"{float(f.latencies_ms.max()) if len(f.latencies_ms) else float('nan'):.1f} ms",
                f"{f.achieved:.0f}/s",
                str(f.errors),
                f"{r.max_throughput:.0f}/s",
                f"{r.sustainable:.0f}/s" if r.sustainable else f"none from {RAMP_START:.0f}/s",
                f"{f.cpu_per_request_us:.0f} us",
            )
        )
    width = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s of the fixed load")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of the fixed load")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument(
        "--mlflow-stacks",
        nargs="+",
        choices=["fast", "pip"],
        default=["fast", "pip"],
        help="MLflow's uvicorn with uvloop + httptools like loopml's (fast), and as pip installs it (pip: asyncio + h11)",
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached project")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    print(f"load before: {uptime()}")
    folder = prepare(args.fresh)
    rows = request_rows(folder)
    names, matrix, scores, booster_text = model_inputs(folder, rows)
    workdir = Path(tempfile.mkdtemp(prefix="loopml-bench-serve-"))
    results: list[Result] = []
    try:
        for workers in args.workers:
            predictions = Project.load(folder).layout.state / "predictions"
            shutil.rmtree(predictions, ignore_errors=True)  # each run starts with an empty prediction log
            port = free_port()
            command = [sys.executable, "-m", "loopml", "serve", "--project", str(folder), "--port", str(port),
                       "--workers", str(workers)]  # fmt: skip
            server = start(f"loopml serve, {workers} worker(s)", command, port, "/v1/predict", "/readyz", workdir)
            try:
                results.append(measure(server, loopml_bodies(rows), args.rate, args.duration))
            finally:
                server.stop()
        python = None if args.skip_mlflow else mlflow_python()
        if python is not None and ensure_extras(python):
            model_file = workdir / "champion.txt"
            model_file.write_text(booster_text)
            model_dir = workdir / "mlflow-model"
            save = [str(python), "-c", _SAVE_MLFLOW_MODEL, str(model_file), str(model_dir)]
            subprocess.run(save, check=True, capture_output=True)
            bodies = mlflow_bodies(names, matrix)
            mlflow = str(python.parent / "mlflow")
            # it starts its server as "uvicorn ..." from PATH: the venv's own
            env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            for stack, workers in [(stack, w) for stack in args.mlflow_stacks for w in args.workers]:
                port = free_port()
                command = [mlflow, "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1",
                           "-p", str(port), "-w", str(workers)]  # fmt: skip
                # uvicorn reads UVICORN_* variables: "pip" forces what a plain `pip install mlflow` runs on
                forced = {"UVICORN_LOOP": "asyncio", "UVICORN_HTTP": "h11"} if stack == "pip" else {}
                name = f"mlflow models serve, {workers} worker(s){', asyncio+h11' if stack == 'pip' else ''}"
                server = start(name, command, port, "/invocations", "/ping", workdir, {**env, **forced})
                try:
                    check_same_scores(server, bodies[:50], scores[:50])
                    results.append(measure(server, bodies, args.rate, args.duration))
                finally:
                    server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load after:  {uptime()}")
    print(f"{len(rows):,} live rows of the default fraud world, cycled; model input {len(names)} features")
    print_table(results, args.rate)
    best = {
        side: max(group, key=lambda r: (r.max_throughput, -r.fixed.pct(99)))
        for side in ("loopml", "mlflow")
        if (group := [r for r in results if r.name.startswith(side)])
    }
    if len(best) == 2 and best["mlflow"].max_throughput:
        lo, ml = best["loopml"], best["mlflow"]
        print(
            f"throughput ratio, best of each: {lo.name} {lo.max_throughput:.0f}/s / {ml.name} {ml.max_throughput:.0f}/s"
            f" = {lo.max_throughput / ml.max_throughput:.1f}x (target 5x); p99 at {args.rate:.0f}/s: {lo.fixed.pct(99):.2f} ms"
            f" vs {ml.fixed.pct(99):.2f} ms"
        )


def check_same_scores(server: Server, bodies: list[bytes], expected: np.ndarray) -> None:
    """MLflow's answers for the first rows equal loopml's scores (it is the same model on the same input)."""

    async def ask() -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        out = []
        for body in bodies:
            head = b"POST /invocations HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            writer.write(head % len(body) + body)
            status, payload = await _response(reader)
            if status != 200:
                raise SystemExit(f"mlflow answered {status}: {payload[:500]!r}")
            data = json.loads(payload)
            out.append(float(np.ravel(data["predictions"] if isinstance(data, dict) else data)[0]))
        writer.close()
        return out

    got = np.array(run_async(ask()))
    if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
        raise SystemExit(f"mlflow's scores differ from loopml's: {got[:5]} vs {expected[:5]}")


if __name__ == "__main__":
    main()
