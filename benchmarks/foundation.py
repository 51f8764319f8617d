"""Foundation benchmark: simulate the default world, ingest it, run the demo.

    .venv/bin/python benchmarks/foundation.py [--skip-demo]

Each loopml step is compared in the same run with a plain implementation of
the same work, and the ratio is printed:

* simulation: loopml's vectorised simulator vs a per-customer, per-day loop
  in the style of the reference handbook (run on a slice of the customers and
  scaled per transaction, since the full loop takes minutes);
* ingest: ``loopml ingest`` (read, type checks, rules, quarantine, content
  hash, snapshot) vs pandas reading the same Parquet, evaluating the same
  rules (nulls, ranges, allowed values, uniqueness) with a reason per bad row,
  writing valid and quarantined rows and hashing the result;
* demo: wall time of ``loopml demo`` with its defaults (the contract's limit: 10 minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import ratio, timed
from scipy.spatial import cKDTree

from loopml.datasets.fraud import FraudWorldConfig, simulate, write_world
from loopml.project import Project
from loopml.scaffold import example_spec_text


def loop_simulation(config: FraudWorldConfig, customers: int) -> int:
    """Legitimate transactions generated row by row, per customer and day (the handbook's approach)."""
    rng = np.random.default_rng(config.seed)
    terminals = rng.uniform(0, 100, size=(config.n_terminals, 2))
    tree = cKDTree(terminals)
    rows = []
    for c in range(customers):
        x, y = rng.uniform(0, 100, 2)
        mean = rng.uniform(5, 100)
        std = mean / 2
        per_day = rng.uniform(0, 4)
        available = tree.query_ball_point([x, y], config.radius)
        for day in range(config.days):
            for _ in range(rng.poisson(per_day)):
                t = rng.normal(43200, 20000)
                if 0 < t < 86400 and available:
                    amount = rng.normal(mean, std)
                    if amount < 0:
                        amount = rng.uniform(0, mean * 2)
                    rows.append([day * 86400 + int(t), c, int(rng.choice(available)), round(amount, 2)])
    frame = pd.DataFrame(rows, columns=["t", "customer_id", "terminal_id", "tx_amount"]).sort_values("t")
    return len(frame)


def pandas_ingest(path: Path, out: Path) -> int:
    """The same work by hand in pandas: read, the same rules, quarantine with a reason, write, hash."""
    df = pd.read_parquet(path)
    reasons = pd.Series("", index=df.index)
    for col in ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]:
        reasons = reasons.where(~df[col].isna(), reasons + f"{col}: null;")
    reasons = reasons.where(~((df["customer_id"] < 0) | (df["terminal_id"] < 0)), reasons + "id < 0;")
    reasons = reasons.where(~((df["tx_amount"] < 0) | (df["tx_amount"] > 100000)), reasons + "tx_amount out of range;")
    reasons = reasons.where(df["tx_fraud"].isin([0, 1]), reasons + "tx_fraud not allowed;")
    reasons = reasons.where(~df["transaction_id"].duplicated(keep=False), reasons + "transaction_id duplicated;")
    bad = reasons != ""
    out.mkdir(parents=True, exist_ok=True)
    df[bad].assign(reason=reasons[bad]).to_parquet(out / "quarantine.parquet")
    df[~bad].to_parquet(out / "valid.parquet")
    hashlib.sha256((out / "valid.parquet").read_bytes()).hexdigest()
    return int((~bad).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--loop-customers", type=int, default=250)
    args = parser.parse_args()
    cpu = next(
        (line.split(":")[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?"
    )
    print(f"machine: {platform.machine()} {cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    results: list[tuple[str, str, str, str]] = []

    config = FraudWorldConfig()
    table, sim_s = timed(lambda: simulate(config))
    fraud_rate = float(np.asarray(table["tx_fraud"]).mean())
    loop_rows, loop_s = timed(lambda: loop_simulation(config, args.loop_customers))
    loop_per_row = loop_s / max(loop_rows, 1)
    sim_per_row = sim_s / table.num_rows
    results.append(
        (
            "simulate default world",
            f"{sim_s:.2f} s ({table.num_rows:,} tx, fraud {fraud_rate:.2%})",
            f"loop: {loop_per_row * table.num_rows:.1f} s est. ({loop_rows:,} tx in {loop_s:.1f} s)",
            ratio(loop_per_row, sim_per_row),
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "project"
        write_world(config, folder / "data")
        (folder / "loopml.yaml").write_text(example_spec_text())
        project = Project.load(folder)
        result, ingest_s = timed(project.ingest)
        valid, pandas_s = timed(lambda: pandas_ingest(folder / "data" / "transactions.parquet", Path(tmp) / "pandas"))
        assert valid == result.rows_valid, (valid, result.rows_valid)
        results.append(
            (
                "ingest + validate + snapshot",
                f"{ingest_s:.2f} s ({result.rows_in:,} rows)",
                f"pandas, same rules + write + hash: {pandas_s:.2f} s",
                ratio(pandas_s, ingest_s),
            )
        )
        built, build_s = timed(project.build_features)
        results.append(("features build (training set)", f"{build_s:.2f} s ({len(built.features)} features)", "-", "-"))

    if not args.skip_demo:
        workdir = Path(tempfile.mkdtemp())
        try:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "loopml", "demo", "--workdir", str(workdir / "demo")],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            results.append(("loopml demo (defaults)", f"{time.perf_counter() - started:.1f} s", "target: 600 s", "-"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    width = [max(len(r[i]) for r in [*results, ("step", "loopml", "reference", "ratio")]) for i in range(4)]
    for row in [("step", "loopml", "reference", "ratio"), *results]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)))


if __name__ == "__main__":
    main()
