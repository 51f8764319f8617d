"""Listing many tracked runs: loopml vs MLflow's run search, same number of runs, same run.

    .venv/bin/python benchmarks/runs_list.py [--runs 10000] [--skip-mlflow]

loopml side: ``--runs`` runs are recorded with :class:`loopml.train.tracking.RunStore`
(a ``run.json`` each plus the SQLite index), then timed:

* ``RunStore.list`` of every run, in process;
* ``loopml runs list --json --limit N`` as a fresh process (what a user waits for,
  interpreter start and imports included), and the default first page.

MLflow side (installed into its own venv under the system temp folder, since it
is not a loopml dependency): the same number of runs, each with the same params
and metrics, logged to a SQLite tracking store, then ``mlflow.search_runs`` of
every run timed in a fresh process. Skipped with a message when MLflow cannot be
installed.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import mlflow_python

from loopml.train.tracking import RunRecord, RunStore

_MLFLOW_LOG = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
client = mlflow.MlflowClient()
exp = client.create_experiment("bench")
from mlflow.entities import Metric, Param
import time
now = int(time.time() * 1000)
for i in range(int(sys.argv[2])):
    run = client.create_run(exp)
    client.log_batch(run.info.run_id,
        metrics=[Metric("average_precision", 0.5 + i * 1e-6, now, 0), Metric("roc_auc", 0.9, now, 0)],
        params=[Param("model_type", "lightgbm"), Param("learning_rate", "0.05")])
    client.set_terminated(run.info.run_id)
print(exp)
"""

_MLFLOW_SEARCH = """
import sys, time
started = time.perf_counter()
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
imported = time.perf_counter()
runs = mlflow.search_runs(experiment_ids=[sys.argv[2]], max_results=int(sys.argv[3]))
done = time.perf_counter()
print(len(runs), imported - started, done - imported)
"""


def record_runs(root: Path, n: int) -> RunStore:
    store = RunStore(root)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        moment = start + timedelta(seconds=i)
        run = RunRecord(
            run_id=f"{moment.strftime('%Y%m%dT%H%M%S')}-{i % 0xFFFFFF:06x}",
            status="finished",
            started_at=moment.isoformat(),
            duration_s=12.5,
            params={"model_type": "lightgbm", "learning_rate": 0.05},
            metrics={"test": {"average_precision": 0.5 + i * 1e-6, "roc_auc": 0.9}},
            model_version=i + 1,
            promoted=i % 10 == 0,
        )
        store.record(run, metric="average_precision")
    return store


def timed_process(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--skip-mlflow", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        project = folder / "project"
        subprocess.run(
            [sys.executable, "-m", "loopml", "init", str(project), "--example", "fraud", "--days", "1", "--customers", "5"],
            check=True,
            capture_output=True,
        )
        store = record_runs(project / ".loopml" / "runs", args.runs)
        started = time.perf_counter()
        listed = store.list(limit=args.runs)
        in_process = time.perf_counter() - started
        assert len(listed) == args.runs
        cli_all, out = timed_process(
            [sys.executable, "-m", "loopml", "runs", "list", "--json", "--limit", str(args.runs), "--project", str(project)]
        )
        assert len(json.loads(out)) == args.runs
        cli_page, _ = timed_process([sys.executable, "-m", "loopml", "runs", "list", "--project", str(project)])
        rows = [
            ("RunStore.list (in process)", f"{in_process * 1000:.1f} ms"),
            (f"loopml runs list --json --limit {args.runs} (new process)", f"{cli_all:.2f} s"),
            ("loopml runs list, first page (new process)", f"{cli_page:.2f} s"),
        ]
        python = None if args.skip_mlflow else mlflow_python()
        if python is not None:
            uri = f"sqlite:///{folder / 'mlflow.db'}"
            _, exp = timed_process([str(python), "-c", _MLFLOW_LOG, uri, str(args.runs)])
            total, out = timed_process([str(python), "-c", _MLFLOW_SEARCH, uri, exp.strip(), str(args.runs)])
            count, _imported, searched = out.split()
            assert int(count) == args.runs
            rows.append(
                (f"mlflow.search_runs of {args.runs} runs (new process)", f"{total:.2f} s (search alone {float(searched):.2f} s)")
            )
            rows.append(("ratio, new process: MLflow / loopml", f"{total / cli_all:.1f}x"))
            rows.append(("ratio, search alone vs RunStore.list", f"{float(searched) / in_process:.0f}x"))
    width = max(len(r[0]) for r in rows)
    print(f"{args.runs:,} runs")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
