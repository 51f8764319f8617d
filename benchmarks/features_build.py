"""Feature build benchmark: 25+ features on the default fraud world, wall time and peak memory.

    .venv/bin/python benchmarks/features_build.py [--days N] [--customers N] [--terminals N] [--skip-pandas]

The world is ``FraudWorldConfig()`` (183 days, ~1.79 M transactions) unless
sizes are given. The spec below is the built-in fraud example made richer:
per customer ``count, mean, std, max`` of the amount over ``1h, 1d, 7d, 30d``
(and a null indicator), per terminal ``count, mean`` of the fraud label over
``1d, 7d, 30d`` with the 7-day label delay and the mean amount over the last
day, the amount itself and seven transforms (hour, day of week, weekend,
night, log, bucket, ratio).

Each measured step runs in a fresh child process, so its peak memory is its
own RSS high-water mark (``os.wait4``'s ``ru_maxrss``), not this script's:

* loopml: ``build_training_set`` from the Parquet file to the training set
  (Parquet), every feature;
* reference: pandas ``groupby("customer_id").rolling(window, on=time,
  closed="left")`` computing the 16 customer features only (count, mean, std,
  max over the four windows), put back in row order. Its ``closed="left"``
  window is ``[t - w, t)`` where loopml's is ``(t - w, t)``, so the two
  agree except where a customer has events exactly one window apart; the
  script reports how many rows differ.

Targets (issue 3): under 20 s and under 4 GB peak for the loopml build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SPEC = """\
project: fraud-bench
entities:
  customer: {key: customer_id}
  terminal: {key: terminal_id}
sources:
  transactions:
    path: transactions.parquet
    timestamp: tx_datetime
    columns:
      transaction_id: {type: int}
      tx_datetime: {type: timestamp}
      customer_id: {type: int}
      terminal_id: {type: int}
      tx_amount: {type: float}
      tx_fraud: {type: int}
      tx_fraud_scenario: {type: int}
label: {source: transactions, column: tx_fraud, delay: 7d}
features:
  request:
    tx_amount: {type: float}
    tx_datetime: {type: timestamp}
  views:
    customer:
      entity: customer
      source: transactions
      indicator: true
      aggregations:
        - {column: tx_amount, functions: [count, mean, std, max], windows: [1h, 1d, 7d, 30d]}
    terminal:
      entity: terminal
      source: transactions
      delay: 7d
      aggregations:
        - {column: tx_fraud, functions: [count, mean], windows: [1d, 7d, 30d]}
    terminal_amount:
      entity: terminal
      source: transactions
      aggregations:
        - {column: tx_amount, functions: [mean], windows: [1d]}
  transforms:
    tx_hour: {op: hour, inputs: [tx_datetime]}
    tx_day_of_week: {op: day_of_week, inputs: [tx_datetime]}
    tx_is_weekend: {op: is_weekend, inputs: [tx_datetime]}
    tx_is_night: {op: is_night, inputs: [tx_datetime]}
    tx_log_amount: {op: log, inputs: [tx_amount]}
    tx_amount_band: {op: bucket, inputs: [tx_amount], edges: [10, 50, 100, 220]}
    amount_over_customer_mean_30d: {op: ratio, inputs: [tx_amount, customer_tx_amount_mean_30d]}
  exclude: [tx_datetime]
"""

WINDOWS = ["1h", "1d", "7d", "30d"]
FUNCTIONS = ["count", "mean", "std", "max"]


def child_loopml(data: Path, out: Path) -> dict[str, object]:
    from loopml.features.offline import build_training_set
    from loopml.spec.load import parse_spec

    spec = parse_spec(SPEC)
    result = build_training_set(spec, {"transactions": data}, out)
    return {"rows": result.rows, "features": len(result.features)}


def child_pandas(data: Path, out: Path) -> dict[str, object]:
    import pandas as pd

    df = pd.read_parquet(data, columns=["tx_datetime", "customer_id", "tx_amount"])
    columns = {}
    grouped = df.groupby("customer_id")
    # the result comes group by group (keys sorted), rows in order within a group: a stable sort by key
    position = np.argsort(df["customer_id"].to_numpy(), kind="stable")
    for window in WINDOWS:
        rolled = grouped.rolling(window.replace("d", "D"), on="tx_datetime", closed="left")["tx_amount"].agg(FUNCTIONS)
        for fn in FUNCTIONS:
            values = np.empty(len(df))
            values[position] = rolled[fn].to_numpy()
            columns[f"customer_{'count' if fn == 'count' else 'tx_amount_' + fn}_{window}"] = values
    pd.DataFrame(columns).to_parquet(out)
    return {"rows": len(df), "features": len(columns)}


def run_child(kind: str, data: Path, out: Path) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS in MB and the child's JSON answer (plus its CPU seconds under ``cpu``)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(data), str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    answer = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed with exit code {proc.returncode}")
    result: dict[str, object] = json.loads(answer)
    result["cpu"] = usage.ru_utime + usage.ru_stime
    return seconds, usage.ru_maxrss / 1024, result


def compare(ours: Path, theirs: Path) -> str:
    a, b = pq.read_table(ours), pq.read_table(theirs)
    differing = np.zeros(a.num_rows, dtype=bool)
    for name in b.column_names:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        y = np.where(np.isnan(y), 0.0, y)  # pandas: NaN for an empty window (or < 2 values for std); loopml: 0
        differing |= ~np.isclose(x, y, rtol=1e-9, atol=1e-9)
    return f"{int(differing.sum()):,} of {a.num_rows:,} rows differ (events exactly one window apart)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--terminals", type=int, default=None)
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, data, out = args.child
        answer = (child_loopml if kind == "loopml" else child_pandas)(Path(data), Path(out))
        print(json.dumps(answer))
        return

    from loopml.datasets.fraud import FraudWorldConfig, simulate

    sizes = {"days": args.days, "n_customers": args.customers, "n_terminals": args.terminals}
    config = FraudWorldConfig(**{k: v for k, v in sizes.items() if v is not None})
    cpu = next(
        (line.split(":")[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?"
    )
    print(f"machine: {platform.machine()} {cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="loopml-features-") as tmp:
        folder = Path(tmp)
        table = simulate(config)
        pq.write_table(table, folder / "transactions.parquet")
        world = f"{config.days} days, {config.n_customers:,} customers, {config.n_terminals:,} terminals"
        print(f"world: {world}, {table.num_rows:,} transactions")
        del table
        seconds, peak, answer = run_child("loopml", folder / "transactions.parquet", folder / "loopml.parquet")
        print(
            f"loopml build: {answer['features']} features x {answer['rows']:,} rows in {seconds:.2f} s "
            f"(CPU {answer['cpu']:.1f} s), peak RSS {peak:,.0f} MB (targets: < 20 s, < 4096 MB)"
        )
        if args.skip_pandas:
            return
        p_seconds, p_peak, p_answer = run_child("pandas", folder / "transactions.parquet", folder / "pandas.parquet")
        print(
            f"pandas groupby().rolling(closed='left'): {p_answer['features']} customer features in {p_seconds:.2f} s "
            f"(CPU {p_answer['cpu']:.1f} s), peak RSS {p_peak:,.0f} MB"
        )
        per_feature = (p_seconds / int(str(p_answer["features"]))) / (seconds / int(str(answer["features"])))
        whole = p_seconds / seconds
        n = answer["features"]
        print(f"ratio: loopml {whole:.1f}x the speed of pandas with all {n} features, {per_feature:.1f}x per feature")
        print(f"agreement on the 16 customer features: {compare(folder / 'loopml.parquet', folder / 'pandas.parquet')}")


if __name__ == "__main__":
    main()
