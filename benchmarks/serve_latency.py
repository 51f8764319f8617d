"""Online serving: ``loopml serve`` against ``mlflow models serve``, same LightGBM model, same rows, same load.

    .venv/bin/python benchmarks/serve_latency.py [--rate 500] [--duration 25] [--workers 1 2] [--repeats 2]
                                                 [--loopml-src NAME=PATH ...] [--step-seconds 6] [--skip-mlflow] [--fresh]

Set-up (cached under the system temp folder, ``loopml-bench-serve``; ``--fresh``
rebuilds it): the default fraud world (``loopml init --example fraud``, 183
days, the last 7 kept aside as live traffic), ingested, features built, the
champion trained and the online store materialized, by the loopml this script
is run with.

The servers: one ``loopml serve`` per ``--loopml-src NAME=PATH`` (a loopml
source tree: its server process gets ``PYTHONPATH=PATH/src``, checked before
the load; without the option, the tree this script is in), so two trees can be
compared in the same run (the first one named is the reference of the
ratios), and ``mlflow models serve``. Every server and worker count is run
``--repeats`` times, interleaved (A B C A B C: a change in the machine's load
hits every side alike), each time a new process on a free loopback port with an
empty prediction log, and gets, from this process, open-loop load (requests
sent on a fixed schedule, whatever the answers do):

1. **fixed load**: ``--rate`` requests/s for ``--duration`` s (after a 3 s
   warm-up at the same rate): p50/p99/max latency, achieved rate, errors;
2. **ramp**: 6 s steps from 100 requests/s up, each 25 % above the last,
   until two steps in a row are not kept up with. A step is *kept up with*
   when every request succeeded and no backlog built up: the median latency
   of the requests scheduled in its last second is under 100 ms (a server
   slower than the offered rate queues requests, and their latency grows
   through the step). The **maximum sustainable throughput**, the headline,
   is the highest step kept up with at a p99 under 10 ms (the issue's latency
   budget); the **maximum throughput** (no p99 bound: the error-free
   saturation point) is shown beside it.

CPU: with 1 worker the server (every process and thread of it) is pinned to
core 0 and this load generator to core 1; with 2 workers the servers and the
generator share both cores (the machine has two), which the output says.
Every server gets ``OMP_NUM_THREADS=1``: a one-row LightGBM predict run on two
OpenMP threads per worker is many times slower (loopml already asks LightGBM
for one thread on batches up to 64 rows; MLflow's pyfunc wrapper passes no
``num_threads``, so the variable is its only knob).

loopml gets ``POST /v1/predict`` bodies of the fraud example
(``{"entities": {customer_id, terminal_id}, "features": {tx_amount,
tx_datetime}}``): it reads the online features, computes the request-time
features and the transforms, scores and logs each prediction. MLflow
(pinned, ``MLFLOW_PIN``, installed with the same LightGBM, uvloop and httptools
versions as loopml's into its own venv) serves the champion's booster saved with
``mlflow.lightgbm.save_model``, set up for speed: ``--env-manager local``,
uvicorn (what ``mlflow models serve`` runs) on uvloop and httptools with its
access log off (``mlflow models serve`` passes uvicorn no options but host,
port and workers; uvicorn reads ``UVICORN_ACCESS_LOG``, ``UVICORN_LOOP`` and
``UVICORN_HTTP`` from the environment). It gets, for the same rows, the
finished model input as a numpy tensor body (``{"inputs": [[...]]}``, its
cheapest input: no DataFrame): it does less work per request (no feature
lookup, no logging). Every server's scores for the first rows are checked
against the model's scores computed here before the load.

The load generator is hand-written: an asyncio HTTP/1.1 client over raw
loopback sockets with every request pre-encoded; ``httpx.AsyncClient`` spends
about ten times more CPU per request (measured here: ~1.8 ms against ~0.17 ms),
which matters when it shares the cores with the servers. Latency is measured
from each request's *scheduled* send time (open loop, so a slow server cannot
slow the arrivals down and hide its queueing). The generator's garbage
collector is off during each run (a collection pause in the generator would be
counted as server latency). The generator's CPU per request, the load average
before each run and every version (Python, the libraries on both sides, each
loopml tree's git commit) are printed with the results.
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
from collections.abc import Callable, Coroutine
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
CHECKED_ROWS = 50
#: cores of the 1-worker runs: the server's, the load generator's
SERVER_CORE, GENERATOR_CORE = 0, 1
#: the MLflow every figure is measured against (printed with them)
MLFLOW_PIN = "mlflow==3.18.0"
#: every server's environment: one OpenMP thread per process
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
#: MLflow's uvicorn: no access log, uvloop and httptools (what loopml's uvicorn picks by itself)
MLFLOW_UVICORN_ENV = {"UVICORN_ACCESS_LOG": "false", "UVICORN_LOOP": "uvloop", "UVICORN_HTTP": "httptools"}

_SAVE_MLFLOW_MODEL = """
import sys, lightgbm, mlflow.lightgbm
mlflow.lightgbm.save_model(lightgbm.Booster(model_file=sys.argv[1]), sys.argv[2])
"""

_VERSIONS = """
import importlib.metadata as m, platform
names = ["mlflow", "lightgbm", "numpy", "pandas", "fastapi", "starlette", "pydantic", "uvicorn", "uvloop", "httptools"]
found = []
for name in names:
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        pass
print(f"Python {platform.python_version()}, " + ", ".join(found))
"""

#: exits 0 when every NAME==VERSION argument is installed at that version
_PINNED = """
import sys, importlib.metadata as m
sys.exit(any(m.version(name) != version for name, version in (arg.split("==") for arg in sys.argv[1:])))
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


def mlflow_bodies(matrix: np.ndarray) -> list[bytes]:
    """One row each as a numpy tensor body: MLflow's cheapest JSON input (no DataFrame built per request)."""
    return [json.dumps({"inputs": [row.tolist()]}).encode() for row in matrix]


# -- the sides ----------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One server to compare: a loopml source tree, or MLflow."""

    name: str
    kind: str  # "loopml" or "mlflow"
    path: str  # the request path
    ready: str  # answers 200 once the server is up
    bodies: list[bytes]
    env: dict[str, str]
    command: Callable[[int, int], list[str]]  # (port, workers) -> argv
    score: Callable[[Any], float]  # an answer's JSON -> its score
    src: Path | None = None  # loopml: the tree's root


def loopml_side(name: str, root: Path, folder: Path, bodies: list[bytes], base_env: dict[str, str]) -> Side:
    src = root / "src"
    if not (src / "loopml" / "__init__.py").exists():
        raise SystemExit(f"--loopml-src {name}={root}: no src/loopml in it")
    env = {**base_env, "PYTHONPATH": str(src)}
    where = subprocess.run(
        [sys.executable, "-c", "import loopml; print(loopml.__file__)"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"--loopml-src {name}={root}: the server would import loopml from {where}")

    def command(port: int, workers: int) -> list[str]:
        return [sys.executable, "-m", "loopml", "serve", "--project", str(folder), "--port", str(port),
                "--workers", str(workers)]  # fmt: skip

    return Side(name, "loopml", "/v1/predict", "/readyz", bodies, env, command, lambda answer: float(answer["score"]), root)


def mlflow_side(python: Path, model_dir: Path, bodies: list[bytes], base_env: dict[str, str]) -> Side:
    mlflow = str(python.parent / "mlflow")
    # it starts its server as "exec uvicorn ..." from PATH: the venv's own
    env = {**base_env, **MLFLOW_UVICORN_ENV, "PATH": f"{python.parent}{os.pathsep}{base_env.get('PATH', '')}"}

    def command(port: int, workers: int) -> list[str]:
        return [mlflow, "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1",
                "-p", str(port), "-w", str(workers)]  # fmt: skip

    def score(answer: Any) -> float:
        return float(np.ravel(answer["predictions"] if isinstance(answer, dict) else answer)[0])

    return Side("mlflow", "mlflow", "/invocations", "/ping", bodies, env, command, score)


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return commit + (" + uncommitted changes under src/" if dirty else "")


def versions(python: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run([python, "-c", _VERSIONS], env=env, capture_output=True, text=True, check=True).stdout.strip()


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
    name: str,
    command: list[str],
    port: int,
    path: str,
    ready: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    cores: set[int] | None = None,
) -> Server:
    """Start a server in its own process group, pinned to ``cores`` (its workers and threads inherit it)."""
    log = workdir / f"{name.replace(' ', '-').replace(',', '').replace('/', '-')}.log"
    if cores is not None:
        command = ["taskset", "--cpu-list", ",".join(map(str, sorted(cores))), *command]
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


def check_same_scores(server: Server, side: Side, expected: np.ndarray) -> None:
    """The server's answers for the first rows equal the model's scores computed here (same model, same input)."""

    async def ask() -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        out = []
        head = b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        for body in side.bodies[: len(expected)]:
            writer.write(head % (server.path, len(body)) + body)
            status, payload = await _response(reader)
            if status != 200:
                raise SystemExit(f"{server.name} answered {status}: {payload[:500]!r}")
            out.append(side.score(json.loads(payload)))
        writer.close()
        return out

    got = np.array(run_async(ask()))
    if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
        raise SystemExit(f"{server.name}'s scores differ from the model's: {got[:5]} vs {expected[:5]}")


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
    side: str
    workers: int
    repeat: int
    load: str  # the 1, 5 and 15 minute load averages before the run
    fixed: Run
    ramp: list[Run]

    @property
    def max_throughput(self) -> float:
        return max((run.offered for run in self.ramp if run.kept_up()), default=0.0)

    @property
    def sustainable(self) -> float:
        return max((run.offered for run in self.ramp if run.kept_up() and run.pct(99) < SLO_P99_MS), default=0.0)


def measure(server: Server, side: Side, workers: int, repeat: int, rate: float, duration: float, step: float) -> Result:
    load = Load(server, side.bodies)
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{server.name}: {rate:.0f} req/s for {duration:.0f} s (after a 3 s warm-up); load {loadavg}...", file=sys.stderr)
    run_async(load.open_loop(rate, 3.0))
    fixed = run_async(load.open_loop(rate, duration))
    print(
        f"  fixed: served {fixed.achieved:.0f}/s, p50 {fixed.pct(50):.2f} ms, p99 {fixed.pct(99):.2f} ms, errors {fixed.errors}",
        file=sys.stderr,
    )
    ramp: list[Run] = []
    offered, misses = RAMP_START, 0
    while misses < 2 and offered <= RAMP_MAX:
        run = run_async(load.open_loop(round(offered), step))
        ramp.append(run)
        misses = 0 if run.kept_up() else misses + 1
        print(
            f"  {run.offered:>6.0f} req/s offered: served {run.achieved:.0f}/s, p50 {run.pct(50):.2f} ms, "
            f"p99 {run.pct(99):.2f} ms, errors {run.errors}",
            file=sys.stderr,
        )
        offered *= RAMP_FACTOR
    return Result(side.name, workers, repeat, loadavg, fixed, ramp)


# -- main ---------------------------------------------------------------------------------------------------------


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def ensure_mlflow(python: Path) -> bool:
    """The pinned MLflow with loopml's LightGBM, uvloop and httptools versions in MLflow's venv (installed once)."""
    import importlib.metadata as metadata

    wanted = [MLFLOW_PIN, *(f"{name}=={metadata.version(name)}" for name in ("lightgbm", "uvloop", "httptools"))]
    if subprocess.run([str(python), "-c", _PINNED, *wanted], capture_output=True, check=False).returncode == 0:
        return True
    print(f"installing {', '.join(wanted)} into {MLFLOW_VENV}...", file=sys.stderr)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=False, timeout=900)
    return done.returncode == 0


def _cells(results: list[Result], rate: float) -> list[tuple[str, ...]]:
    header = ("server", "workers", "repeat", "load avg before", f"p50 @{rate:.0f}/s", f"p99 @{rate:.0f}/s",
              f"max @{rate:.0f}/s", "served", "errors", f"max sustainable (p99<{SLO_P99_MS:.0f}ms)",
              "max throughput (no p99 bound)", "generator CPU/request")  # fmt: skip
    rows = [header]
    for r in results:
        f = r.fixed
        rows.append(
            (
                r.side,
                str(r.workers),
                str(r.repeat),
                r.load,
                f"{f.pct(50):.2f} ms",
                f"{f.pct(99):.2f} ms",
                f"{float(f.latencies_ms.max()) if len(f.latencies_ms) else float('nan'):.1f} ms",
                f"{f.achieved:.0f}/s",
                str(f.errors),
                f"{r.sustainable:.0f}/s" if r.sustainable else f"none from {RAMP_START:.0f}/s",
                f"{r.max_throughput:.0f}/s",
                f"{f.cpu_per_request_us:.0f} us",
            )
        )
    return rows


def print_table(results: list[Result], rate: float) -> None:
    rows = _cells(results, rate)
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)).rstrip())


def print_ratios(results: list[Result], sides: list[Side], workers: list[int], rate: float) -> None:
    """Per worker count: each side's median over the repeats, and each side against the first loopml tree and MLflow."""

    def median(side: str, w: int, value: Callable[[Result], float]) -> float:
        return float(np.median([value(r) for r in results if r.side == side and r.workers == w]))

    figures: dict[str, Callable[[Result], float]] = {
        "sustainable": lambda r: r.sustainable,
        "max": lambda r: r.max_throughput,
        "p50": lambda r: r.fixed.pct(50),
        "p99": lambda r: r.fixed.pct(99),
    }
    loopml = [s.name for s in sides if s.kind == "loopml"]
    for w in workers:
        where = "server on core 0, generator on core 1" if w == 1 else "servers and generator share both cores"
        print(f"\n{w} worker(s) ({where}), median of the repeats:")
        m = {s.name: {k: median(s.name, w, f) for k, f in figures.items()} for s in sides}
        for name, f in m.items():
            print(
                f"  {name}: max sustainable {f['sustainable']:.0f}/s, max throughput {f['max']:.0f}/s, "
                f"p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms @{rate:.0f}/s"
            )
        references = [loopml[0]] if len(loopml) > 1 else []
        references += ["mlflow"] if "mlflow" in m else []
        for ref in references:
            for name in loopml:
                if name == ref:
                    continue
                a, b = m[name], m[ref]
                sustainable = f"{a['sustainable'] / b['sustainable']:.2f}x" if b["sustainable"] else "n/a (reference 0)"
                print(
                    f"  {name} / {ref}: max sustainable {sustainable}, max throughput "
                    f"{a['max'] / b['max'] if b['max'] else float('nan'):.2f}x, p50 {a['p50']:.2f} vs {b['p50']:.2f} ms, "
                    f"p99 {a['p99']:.2f} vs {b['p99']:.2f} ms @{rate:.0f}/s"
                )


def parse_src(values: list[str]) -> list[tuple[str, Path]]:
    trees = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--loopml-src {value}: expected NAME=PATH")
        if name == "mlflow" or name in (n for n, _ in trees):
            raise SystemExit(f"--loopml-src {value}: name used twice or reserved")
        trees.append((f"loopml {name}", Path(path).resolve()))
    return trees or [("loopml", Path(__file__).resolve().parents[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s of the fixed load")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of the fixed load")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs of every server and worker count, interleaved")
    parser.add_argument(
        "--loopml-src",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a loopml source tree to serve with (PYTHONPATH=PATH/src); repeat to compare trees, the first is the "
        "reference; default: the tree this script is in",
    )
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS, help="seconds of each ramp step")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached project")
    args = parser.parse_args()
    cores = os.sched_getaffinity(0)
    if 1 in args.workers and not {SERVER_CORE, GENERATOR_CORE} <= cores:
        raise SystemExit(f"1-worker runs pin to cores {SERVER_CORE} and {GENERATOR_CORE}; this process may use {cores}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load before: {uptime()}")
    print(f"this process (set-up, load generator): {versions(sys.executable)}")
    folder = prepare(args.fresh)
    rows = request_rows(folder)
    names, matrix, scores, booster_text = model_inputs(folder, rows)
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | SERVER_ENV
    bodies = loopml_bodies(rows)
    sides = [loopml_side(name, root, folder, bodies, base_env) for name, root in parse_src(args.loopml_src)]
    for side in sides:
        print(f"{side.name}: {side.src} at {git_commit(side.src or Path())}, PYTHONPATH={side.env['PYTHONPATH']}")
    workdir = Path(tempfile.mkdtemp(prefix="loopml-bench-serve-"))
    results: list[Result] = []
    try:
        python = None if args.skip_mlflow else mlflow_python()
        if python is not None and ensure_mlflow(python):
            model_file = workdir / "champion.txt"
            model_file.write_text(booster_text)
            model_dir = workdir / "mlflow-model"
            save = [str(python), "-c", _SAVE_MLFLOW_MODEL, str(model_file), str(model_dir)]
            subprocess.run(save, check=True, capture_output=True)
            sides.append(mlflow_side(python, model_dir, mlflow_bodies(matrix), base_env))
            print(f"mlflow: {versions(str(python))}; `mlflow models serve --env-manager local` with "
                  f"{' '.join(f'{k}={v}' for k, v in MLFLOW_UVICORN_ENV.items())}")  # fmt: skip
        elif not args.skip_mlflow:
            print("MLflow could not be installed: loopml only", file=sys.stderr)
        print(f"every server: {' '.join(f'{k}={v}' for k, v in SERVER_ENV.items())}")
        state = Project.load(folder).layout.state
        for workers in args.workers:
            pinned = {SERVER_CORE} if workers == 1 else None
            os.sched_setaffinity(0, {GENERATOR_CORE} if workers == 1 else cores)
            for repeat in range(1, args.repeats + 1):
                for side in sides:
                    for old in state.glob("predictions*"):  # each run starts with an empty prediction log (and journal)
                        shutil.rmtree(old) if old.is_dir() else old.unlink()
                    port = free_port()
                    name = f"{side.name}, {workers} worker(s), repeat {repeat}"
                    server = start(name, side.command(port, workers), port, side.path, side.ready, workdir, side.env, pinned)
                    try:
                        check_same_scores(server, side, scores[:CHECKED_ROWS])
                        results.append(measure(server, side, workers, repeat, args.rate, args.duration, args.step_seconds))
                    finally:
                        server.stop()
        os.sched_setaffinity(0, cores)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load after:  {uptime()}")
    print(f"{len(rows):,} live rows of the default fraud world, cycled; model input {len(names)} features; "
          f"scores of the first {CHECKED_ROWS} rows equal on every server")  # fmt: skip
    print(
        f"1 worker: server pinned to core {SERVER_CORE}, generator to core {GENERATOR_CORE}; "
        "2 workers: the servers and the generator share both cores"
    )
    print_table(results, args.rate)
    print_ratios(results, sides, args.workers, args.rate)


if __name__ == "__main__":
    main()
