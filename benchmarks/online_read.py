"""Online read benchmark: the features of one ``/v1/predict`` (a customer and a terminal), in process.

    .venv/bin/python benchmarks/online_read.py [--reads 100000] [--days 183] [--backends sqlite,redis]

Simulates the default fraud world (``FraudWorldConfig()``: 183 days, 5,000
customers, 10,000 terminals), materializes it with the example spec into each
online backend (SQLite in a temporary folder; Redis: a ``redis-server`` this
script starts on a free loopback port, no persistence, stopped at the end),
then times ``FeatureAssembler.vectors`` for one request at a time: read both
entities' events (one store call per view), compute every window as of the
request's time, apply the transforms. Requests are random (customer,
terminal) pairs of the data, at random times in the hour after its end.

The reference, in the same run, is the floor any online store pays: the raw
client fetching two entities' *precomputed* values (one ``sqlite3`` point
lookup per entity + ``json.loads``; one redis-py ``HGETALL`` per entity),
with no window arithmetic. Prints p50 / p99 / mean per backend, the ratio to
the reference, and the targets (p99 < 1 ms SQLite, < 2 ms Redis).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from loopml.datasets.fraud import FraudWorldConfig, simulate
from loopml.features import FeatureAssembler, materialize
from loopml.features.online.base import OnlineStore, micros
from loopml.features.online.redis import RedisOnlineStore
from loopml.features.online.sqlite import SqliteOnlineStore
from loopml.scaffold import example_spec_text
from loopml.spec.load import parse_spec
from loopml.spec.model import Spec

TARGET_P99_MS = {"sqlite": 1.0, "redis": 2.0}
HOUR_US = 3_600_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.2) as probe:
                    probe.ping()
                break
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on port {port} (run 'make servers')") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def timed(fn: Callable[[int], Any], n: int, warmup: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Milliseconds of ``fn(i)`` for i in range(n), after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(i)
    gc.collect()
    out = np.empty(n, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(n):
        started = clock()
        fn(i)
        out[i] = clock() - started
    return out / 1e6


def summary(ms: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def precomputed(assembler: FeatureAssembler, spec: Spec, keys: dict[str, list[Any]], at_us: int) -> dict[str, dict[str, str]]:
    """Every entity's feature values at ``at_us``, as JSON text: what a values-only store would hold."""
    out: dict[str, dict[str, str]] = {}
    for view, view_keys in keys.items():
        values, _ = assembler.view_values(view, view_keys, at_us)
        out[view] = {str(k): json.dumps(v) for k, v in zip(view_keys, values, strict=True) if v is not None}
    return out


def reference_sqlite(path: Path, values: dict[str, dict[str, str]]) -> Callable[[str, str], Any]:
    con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE vals (view TEXT, key TEXT, vals TEXT, PRIMARY KEY (view, key)) WITHOUT ROWID")
    con.execute("BEGIN")
    con.executemany("INSERT INTO vals VALUES (?, ?, ?)", [(v, k, j) for v, rows in values.items() for k, j in rows.items()])
    con.execute("COMMIT")
    query = "SELECT vals FROM vals WHERE view = ? AND key = ?"

    def read(customer: str, terminal: str) -> Any:
        a = con.execute(query, ("customer", customer)).fetchone()
        b = con.execute(query, ("terminal", terminal)).fetchone()
        return json.loads(a[0]) if a else None, json.loads(b[0]) if b else None

    return read


def reference_redis(url: str, values: dict[str, dict[str, str]]) -> Callable[[str, str], Any]:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for view, rows in values.items():
        for key, text in rows.items():
            pipe.hset(f"ref:{view}:{key}", mapping={k: repr(v) for k, v in json.loads(text).items()})
    pipe.execute()

    def read(customer: str, terminal: str) -> Any:
        return client.hgetall(f"ref:customer:{customer}"), client.hgetall(f"ref:terminal:{terminal}")

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=100_000, help="timed reads per backend (default 100000)")
    parser.add_argument("--days", type=int, default=FraudWorldConfig().days, help="days of the simulated world")
    parser.add_argument("--backends", default="sqlite,redis", help="comma-separated: sqlite, redis")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    warmup = min(5_000, args.reads)  # Redis finishes settling the freshly swapped-in hashes meanwhile

    machine = f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpu(s)"
    print(f"{machine}; {args.reads:,} reads per backend")
    started = time.perf_counter()
    table = simulate(FraudWorldConfig(days=args.days))
    print(f"simulated {table.num_rows:,} transactions in {time.perf_counter() - started:.1f}s")
    spec = parse_spec(example_spec_text())
    rng = np.random.default_rng(0)
    picks = rng.integers(0, table.num_rows, args.reads + warmup)
    customers = table.column("customer_id").take(picks).to_pylist()
    terminals = table.column("terminal_id").take(picks).to_pylist()
    amounts = table.column("tx_amount").take(picks).to_pylist()
    end_us = micros(pc.max(table.column("tx_datetime")).as_py())
    times = (end_us + rng.integers(1, HOUR_US, args.reads + warmup)).tolist()
    requests = [
        (
            {"customer_id": customers[i], "terminal_id": terminals[i]},
            {"tx_amount": amounts[i], "tx_datetime": times[i] / 1e6},
        )
        for i in range(args.reads + warmup)
    ]
    keys = {view: sorted(set(table.column(f"{view}_id").to_pylist())) for view in ("customer", "terminal")}

    with tempfile.TemporaryDirectory(prefix="loopml-bench-online-") as tmp:
        folder = Path(tmp)
        path = folder / "transactions.parquet"
        pq.write_table(table, path)
        del table
        results: dict[str, dict[str, dict[str, float]]] = {}
        for backend in backends:
            server: Any = nullcontext() if backend == "sqlite" else redis_server(folder)
            with server as url:
                store: OnlineStore = (
                    SqliteOnlineStore(folder / "online.sqlite") if backend == "sqlite" else RedisOnlineStore(str(url), "bench")
                )
                started = time.perf_counter()
                done = materialize(spec, {"transactions": path}, store)
                print(
                    f"{backend}: materialized {sum(done.rows.values()):,} entities, {sum(done.events.values()):,} events "
                    f"in {time.perf_counter() - started:.1f}s"
                )
                assembler = FeatureAssembler(spec, store)
                ours = timed(lambda i, a=assembler: a.vectors([requests[i]]), args.reads, warmup)
                values = precomputed(assembler, spec, keys, end_us + HOUR_US)
                if backend == "sqlite":
                    raw = reference_sqlite(folder / "ref.sqlite", values)
                else:
                    raw = reference_redis(str(url), values)
                floor = timed(lambda i, r=raw: r(str(customers[i]), str(terminals[i])), args.reads, warmup)
                results[backend] = {"loopml": summary(ours), "reference": summary(floor)}
                store.close()

    print()
    print(f"{'backend':8} {'path':44} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for backend, rows in results.items():
        labels = {
            "loopml": "FeatureAssembler.vectors (2 entities, windows)",
            "reference": "raw client, precomputed values (floor)",
        }
        for name, stats in rows.items():
            print(f"{backend:8} {labels[name]:44} {stats['p50']:8.3f} {stats['p99']:8.3f} {stats['mean']:8.3f}")
        p50 = rows["loopml"]["p50"] / rows["reference"]["p50"]
        p99 = rows["loopml"]["p99"] / rows["reference"]["p99"]
        target = TARGET_P99_MS[backend]
        verdict = "meets" if rows["loopml"]["p99"] < target else "MISSES"
        print(f"{backend:8} ratio to the floor: p50 {p50:.1f}x, p99 {p99:.1f}x; target p99 < {target} ms: {verdict}")


if __name__ == "__main__":
    main()
