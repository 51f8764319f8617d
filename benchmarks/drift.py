"""A drift report over 1 M current rows x 50 columns: loopml against stored reference statistics vs Evidently.

    .venv/bin/python benchmarks/drift.py [--rows 1000000] [--columns 50] [--reference-rows 200000]
                                         [--skip-evidently] [--evidently-timeout 1800] [--skip-json-log]

Data: ``--columns`` columns (every tenth one categorical with 20 string values,
the rest numeric: normal, log-normal and integer counts), ``--reference-rows``
reference rows and ``--rows`` current rows in which a fifth of the columns are
shifted clearly (PSI well above 0.2; both tools should flag exactly those).

loopml side, in this process:

* *once, at training time*: the reference statistics (:func:`loopml.train.reference.reference_stats`),
  stored as JSON (size printed);
* *the drift report from in-memory columns*: the stored JSON read back, every
  column profiled and every test (PSI, KS, chi-square, Jensen-Shannon,
  Wasserstein) scored over the whole period and per window (7 windows), with
  the default test's decision and the multiple-testing correction
  (:func:`~loopml.monitor.drift.summarise` + :func:`~loopml.monitor.drift.decide`);
  this is what Evidently is timed on (it gets the columns as DataFrames);
* *the same from a prediction log*: the current rows written as one Parquet part
  of a :class:`~loopml.predlog.parquet.PredictionLog` in the layout the server
  writes (features as JSON text and as one typed column each; the part's schema
  is checked against one written by ``PredictionLog.append``), then read with
  DuckDB (:func:`~loopml.monitor.drift.load_live`, typed columns straight to
  Arrow) and reported: what ``loopml monitor`` pays, reading included;
* *the same from a log written before typed columns* (JSON text only): the
  JSON parsed by DuckDB (``json_transform``), the fallback for old parts and
  the PostgreSQL log (``--skip-json-log`` skips it).

Evidently side: ``evidently`` (0.7) is installed with pip into its own venv
(``/tmp/loopml-bench-evidently``, since it is not a loopml dependency and needs
pandas < 3) and its ``DataDriftPreset`` runs in a subprocess with a time limit
on the same reference and current data, read from Parquet (the reading is
timed apart). Evidently needs the reference *data*; loopml only its stored
statistics.

Prints the times, the ratio, the machine and how busy it was (load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import ratio, timed

from loopml.monitor.drift import column_references, decide, summarise
from loopml.monitor.live_rows import SCORE, LiveData, load_live
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.records import LOG_SCHEMA, NUMBER_PREFIX, STRING_PREFIX, TYPED_MARKER, LoggedPrediction
from loopml.spec.model import Monitoring
from loopml.train.reference import reference_stats

VENV = Path(tempfile.gettempdir()) / "loopml-bench-evidently"
EVIDENTLY = "evidently>=0.7,<0.8"

_EVIDENTLY_RUN = """
import sys, time
import pandas as pd
started = time.perf_counter()
reference = pd.read_parquet(sys.argv[1])
current = pd.read_parquet(sys.argv[2])
loaded = time.perf_counter()
from evidently import Report
from evidently.presets import DataDriftPreset
imported = time.perf_counter()
snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
done = time.perf_counter()
drifted = snapshot.dict()["metrics"][0]["value"]["count"]
print(loaded - started, done - imported, drifted)
"""


def make_data(rows: int, reference_rows: int, columns: int, seed: int = 0) -> tuple[pa.Table, pa.Table, list[str]]:
    """Reference and current tables; every tenth column categorical; a fifth of the columns shifted."""
    rng = np.random.default_rng(seed)
    names = [f"c{j:02d}" for j in range(columns)]
    categories = np.array([f"v{i}" for i in range(20)])
    ref: dict[str, pa.Array] = {}
    cur: dict[str, pa.Array] = {}
    shifted: list[str] = []
    for j, name in enumerate(names):
        drift = j % 5 == 1
        if drift:
            shifted.append(name)
        if j % 10 == 9:
            weights = rng.dirichlet(np.ones(20))
            cur_weights = rng.dirichlet(np.ones(20)) if drift else weights
            ref[name] = pa.array(categories[rng.choice(20, size=reference_rows, p=weights)])
            cur[name] = pa.array(categories[rng.choice(20, size=rows, p=cur_weights)])
            continue
        kind = j % 3
        if kind == 0:
            r, c = rng.normal(size=reference_rows), rng.normal(loc=0.6 if drift else 0.0, size=rows)
        elif kind == 1:
            r, c = rng.lognormal(size=reference_rows), rng.lognormal(sigma=1.6 if drift else 1.0, size=rows)
        else:
            r, c = rng.poisson(5, size=reference_rows).astype(float), rng.poisson(7 if drift else 5, size=rows).astype(float)
        c[rng.uniform(size=rows) < 0.01] = np.nan
        ref[name], cur[name] = pa.array(r), pa.array(c, from_pandas=True)
    return pa.table(ref), pa.table(cur), shifted


def write_prediction_log(folder: Path, current: pa.Table, numeric: list[str], categorical: list[str], typed: bool = True) -> None:
    """The current rows as one part of a prediction log, built with DuckDB as :meth:`PredictionLog.append` lays it out.

    ``typed``: with the typed feature columns, in their folder (what the server writes; the schema and
    the folder are checked against a part of a few of the same rows written by ``PredictionLog.append``);
    without, JSON text only (a part written before typed columns existed).
    """
    start = datetime(2026, 3, 1)
    step_us = 7 * 86_400 * 1_000_000 // current.num_rows  # a week of traffic
    sql = {
        "request_id": "'r' || i",
        "ts": f"TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}' + to_microseconds((i * {step_us})::BIGINT)",
        "entities": "'{}'",
        "features": "json_object(" + ", ".join(f"'{n}', {n}" for n in [*numeric, *categorical]) + ")::VARCHAR",
        "score": "0.5::DOUBLE",
        "model_version": "1::BIGINT",
        "variant": "'champion'",
        "latency_ms": "1.0::DOUBLE",
    }
    part = folder / "log" / "part-0.parquet"
    expected: list[tuple[str, pa.DataType]] = [(f.name, f.type) for f in LOG_SCHEMA]
    if typed:
        sample = current.slice(0, 20).to_pylist()
        rows = [
            LoggedPrediction(f"r{i}", start, {}, {n: row[n] for n in [*numeric, *categorical]}, 0.5, 1, "champion", 1.0)
            for i, row in enumerate(sample)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            PredictionLog(Path(tmp)).append(rows)
            (server_part,) = (Path(tmp) / "log").glob("*/part-*.parquet")
            expected = [(f.name, f.type) for f in pq.read_schema(server_part)]
            part = folder / "log" / server_part.parent.name / "part-0.parquet"
        sql[TYPED_MARKER] = "true"
        sql |= {f"{NUMBER_PREFIX}{n}": n for n in numeric} | {f"{STRING_PREFIX}{n}": n for n in categorical}
    part.parent.mkdir(parents=True)
    con = duckdb.connect()
    con.register("cur", current)
    columns = ", ".join(f'{sql[name]} AS "{name}"' for name, _ in expected)
    con.execute(
        f"""COPY (SELECT {columns} FROM (SELECT *, row_number() OVER () - 1 AS i FROM cur))
            TO '{part}' (FORMAT parquet)"""
    )
    written = [(f.name, f.type) for f in pq.read_schema(part)]
    assert written == expected, (written, expected)


def evidently_python() -> Path | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"installing Evidently into {VENV} (once)...", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", EVIDENTLY, "pandas>=2.1,<3", "pyarrow"]
            subprocess.run(pip, check=True, timeout=1800)
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"Evidently could not be installed ({exc}); skipping it", file=sys.stderr)
            return None
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=50)
    parser.add_argument("--reference-rows", type=int, default=200_000)
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--evidently-timeout", type=float, default=1800.0)
    parser.add_argument("--skip-json-log", action="store_true", help="do not time the log written before typed columns")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    reference, current, shifted = make_data(args.rows, args.reference_rows, args.columns)
    categorical = [n for n in current.column_names if pa.types.is_string(current.schema.field(n).type)]
    numeric = [n for n in current.column_names if n not in categorical]
    settings = Monitoring()
    rows: list[tuple[str, str]] = []

    X_ref = np.column_stack([reference.column(n).to_numpy() for n in numeric])
    strings = {n: reference.column(n).to_numpy(zero_copy_only=False) for n in categorical}
    stats, seconds = timed(
        lambda: reference_stats(X_ref, numeric, np.random.default_rng(1).uniform(size=10_000), 10, strings=strings)
    )
    stored = json.dumps(stats)
    rows.append(("reference statistics (once, at training time)", f"{seconds:.2f} s, {len(stored) / 1e6:.1f} MB JSON"))

    columns = {n: current.column(n).to_numpy(zero_copy_only=False).astype(float) for n in numeric}
    chunked = {n: current.column(n) for n in categorical}
    live = LiveData(
        ts_us=np.arange(args.rows, dtype=np.int64),
        score=np.random.default_rng(2).uniform(size=args.rows),
        label=np.full(args.rows, np.nan),
        latency_ms=np.ones(args.rows),
        numeric=columns,
        categorical=chunked,
    )
    window = np.repeat(np.arange(7), -(-args.rows // 7))[: args.rows]

    def report() -> list[str]:
        references = column_references(json.loads(stored))
        decisions = decide(summarise(references, live, window, 7), settings)
        return sorted(d.feature for d in decisions[-1] if d.drifted)

    report()  # warm-up: imports, thread pool
    drifted, loopml_s = timed(report)
    rows.append((f"loopml drift report, {args.rows:,} rows x {args.columns} columns (+ score), 7 windows", f"{loopml_s:.2f} s"))
    missed = sorted(set(shifted) - set(drifted))
    rows.append(
        (
            "loopml: drifted columns found / shifted",
            f"{len(set(drifted) & set(shifted))} / {len(shifted)}" + (f" (missed {missed})" if missed else ""),
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def from_log(log: PredictionLog) -> list[str]:
            references = column_references(json.loads(stored))
            with log.connect() as con:
                logged = load_live(con, numeric, categorical)
            w = np.asarray(logged.ts_us // int(timedelta(days=1).total_seconds() * 1e6), dtype=np.int64)
            w -= w[0]
            decisions = decide(summarise(references, logged, w, int(w[-1]) + 1), settings)
            return sorted(d.feature for d in decisions[-1] if d.drifted and d.feature != SCORE)  # the logged score is constant

        write_prediction_log(folder / "predictions", current, numeric, categorical)
        from_typed, log_s = timed(lambda: from_log(PredictionLog(folder / "predictions")))
        assert from_typed == drifted, (from_typed, drifted)
        rows.append(("loopml, the same from a prediction log (typed columns + report)", f"{log_s:.2f} s"))
        shutil.rmtree(folder / "predictions")
        if not args.skip_json_log:
            write_prediction_log(folder / "predictions", current, numeric, categorical, typed=False)
            from_json, json_s = timed(lambda: from_log(PredictionLog(folder / "predictions")))
            assert from_json == drifted, (from_json, drifted)
            rows.append(("loopml, from a log of JSON text only (DuckDB JSON parse + report)", f"{json_s:.2f} s"))
            shutil.rmtree(folder / "predictions")

        python = None if args.skip_evidently else evidently_python()
        if python is not None:
            pq.write_table(reference, folder / "reference.parquet")
            pq.write_table(current, folder / "current.parquet")
            try:
                done = subprocess.run(
                    [str(python), "-c", _EVIDENTLY_RUN, str(folder / "reference.parquet"), str(folder / "current.parquet")],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=args.evidently_timeout,
                )
                _load_s, evidently_s, evidently_drifted = done.stdout.split()
                rows.append(
                    (
                        "Evidently DataDriftPreset, same data (reading apart)",
                        f"{float(evidently_s):.2f} s ({float(evidently_drifted):.0f} drifted columns)",
                    )
                )
                rows.append(
                    (
                        "ratio: Evidently / loopml (in-memory report)",
                        f"{float(evidently_s) / loopml_s:.1f}x ({ratio(float(evidently_s), loopml_s)})",
                    )
                )
            except subprocess.TimeoutExpired:
                rows.append(("Evidently DataDriftPreset", f"> {args.evidently_timeout:.0f} s (stopped)"))
                rows.append(("ratio: Evidently / loopml", f"> {args.evidently_timeout / loopml_s:.0f}x"))
            except subprocess.CalledProcessError as exc:
                rows.append(
                    ("Evidently DataDriftPreset", f"failed: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}")
                )
    rows.append(("load average after", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
