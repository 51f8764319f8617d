"""Point-in-time join benchmark: a 1 M-row spine against a 10 M-row feature table.

    .venv/bin/python benchmarks/pit_join.py [--spine N] [--events N] [--entities N] [--repeat N] [--skip-feast]

Synthetic data (seeded): ``--events`` rows of (entity_id, ts, value) with
entity ids drawn from ``--entities`` and times uniform over a year, in random
order; a spine of ``--spine`` (entity_id, ts) rows drawn the same way. The
question asked of each spine row: the entity's latest value strictly before
the row's time ("as of"), the view ``{value: last over 3650d}``. Three ways,
on the same data in the same run:

* loopml: ``point_in_time_join`` (the numpy path of ``features/asof/``,
  since the view is only ``last``), from the Parquet files to an Arrow table
  in spine order; also ``build_spine_training_set`` end to end (read and
  check the spine file, join, write Parquet);
* pandas: ``merge_asof(by="entity_id", allow_exact_matches=False)`` on
  DataFrames already in memory (reading them is not timed), timing the sort
  by time that ``merge_asof`` requires and putting the result back in spine
  order; its values must equal loopml's (checked);
* Feast ``get_historical_features`` with a local file offline store,
  installed with pip into its own venv (``/tmp/loopml-bench-feast``) by this
  script, run in a subprocess with a 10-minute limit and a memory limit (3/4
  of the machine); skipped (and said so) if it cannot be installed, does not
  finish or outgrows the memory limit. Feast's as-of includes
  events at exactly the spine time, so its values are not compared; the
  number of rows it returns is printed.

loopml and pandas run ``--repeat`` times each, alternating, and the best time
of each is compared (every time is printed): the machine's 2 cores are
shared, and the best of a few runs is the least disturbed one. The load
average is printed before and after.

Targets (issue 3): loopml under 10 s and at least 3x faster than merge_asof.
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
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import ratio, timed

from loopml.features.join import connect, register_source
from loopml.features.join import point_in_time_join as pit_join
from loopml.features.offline import build_spine_training_set
from loopml.spec.model import Spec

YEAR_US = 365 * 86_400 * 1_000_000
START_US = int(np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64))
FEAST_VENV = Path("/tmp/loopml-bench-feast")
FEAST_TIMEOUT_S = 600
FEAST_MAX_MEMORY = 0.75  # of the machine's memory (see _run_guarded)
FEATURE = "f_value_last_3650d"

SPEC = {
    "project": "pitbench",
    "entities": {"e": {"key": "entity_id"}},
    "sources": {
        "events": {
            "path": "events.parquet",
            "timestamp": "ts",
            "columns": {"entity_id": {"type": "int"}, "ts": {"type": "timestamp"}, "value": {"type": "float"}},
        }
    },
    "label": {"source": "events", "column": "value"},
    "features": {
        "views": {
            "f": {
                "entity": "e",
                "source": "events",
                "aggregations": [{"column": "value", "functions": ["last"], "windows": ["3650d"]}],
            }
        }
    },
}

FEAST_SCRIPT = """
import json, sys, time
from datetime import timedelta
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64
repo, events, spine = sys.argv[1:4]
open(f"{repo}/feature_store.yaml", "w").write(
    "project: pitbench\\nregistry: registry.db\\nprovider: local\\noffline_store:\\n  type: file\\n"
    "online_store:\\n  type: sqlite\\n  path: online.db\\nentity_key_serialization_version: 2\\n"
)
entity = Entity(name="entity", join_keys=["entity_id"], value_type=ValueType.INT64)
source = FileSource(path=events, timestamp_field="ts")
schema = [Field(name="value", dtype=Float64)]
view = FeatureView(name="f", entities=[entity], ttl=timedelta(days=3650), schema=schema, source=source)
store = FeatureStore(repo_path=repo)
store.apply([entity, view])
entity_df = pd.read_parquet(spine).rename(columns={"ts": "event_timestamp"})
entity_df["event_timestamp"] = entity_df["event_timestamp"].dt.tz_localize("UTC")
started = time.perf_counter()
df = store.get_historical_features(entity_df=entity_df, features=["f:value"]).to_df()
print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(df)}))
"""


def make_data(folder: Path, events: int, spine: int, entities: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "entity_id": pa.array(rng.integers(0, entities, events), pa.int64()),
            "ts": pa.array(START_US + rng.integers(0, YEAR_US, events), pa.timestamp("us")),
            "value": pa.array(rng.normal(size=events), pa.float64()),
        }
    )
    rows = pa.table(
        {
            "entity_id": pa.array(rng.integers(0, entities, spine), pa.int64()),
            "ts": pa.array(START_US + rng.integers(0, YEAR_US, spine), pa.timestamp("us")),
        }
    )
    paths = folder / "events.parquet", folder / "spine.parquet"
    pq.write_table(table, paths[0])
    pq.write_table(rows, paths[1])
    return paths


def loopml_join(spec: Spec, events: Path, spine: Path) -> np.ndarray:
    """From the two Parquet files to the feature in spine order."""
    con = connect()
    try:
        sources = {"events": register_source(con, "events", events)}
        rows = con.sql(f"SELECT *, file_row_number AS rid FROM read_parquet('{spine}', file_row_number = true)")
        result = pit_join(con, rows, spec, sources=sources, timestamp="ts", row_id="rid").order("rid").to_arrow_table()
        return np.asarray(result.column(FEATURE).to_numpy(), dtype=np.float64)
    finally:
        con.close()


def pandas_join(events: pd.DataFrame, spine: pd.DataFrame) -> np.ndarray:
    """merge_asof, with the sort it requires and the spine order restored."""
    left = spine.assign(rid=np.arange(len(spine))).sort_values("ts", kind="stable")
    right = events.sort_values("ts", kind="stable")
    merged = pd.merge_asof(left, right, on="ts", by="entity_id", allow_exact_matches=False)
    return merged.sort_values("rid")["value"].to_numpy(dtype=np.float64)


def feast(folder: Path, events: Path, spine: Path, spine_rows: int) -> str:
    """Install Feast into its own venv (once) and time get_historical_features; a line of text."""
    python = FEAST_VENV / "bin" / "python"
    try:
        if not python.exists():
            print(f"feast: creating {FEAST_VENV} and installing feast with pip (once) ...", flush=True)
            venv.create(FEAST_VENV, with_pip=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", "feast"]
            installed = subprocess.run(pip, capture_output=True, text=True, timeout=FEAST_TIMEOUT_S)
            if installed.returncode != 0:
                last = (installed.stderr.strip().splitlines() or ["no output"])[-1]
                return f"skipped: could not install feast ({last[:200]})"
        repo = folder / "feast_repo"
        repo.mkdir(exist_ok=True)
        script = folder / "feast_run.py"
        script.write_text(FEAST_SCRIPT)
        command = [str(python), str(script), str(repo), str(events), str(spine)]
        returncode, stdout, stderr, stopped = _run_guarded(command, repo)
    except subprocess.TimeoutExpired:
        return f"skipped: could not install feast within {FEAST_TIMEOUT_S} s"
    except OSError as exc:
        return f"skipped: could not install feast ({exc})"
    if stopped:
        return f"skipped: {stopped}"
    if returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if "warn" not in line.lower()] or ["no output"]
        return f"skipped: feast failed ({lines[-1][:200]})"
    data = json.loads(stdout.strip().splitlines()[-1])
    return f"{data['seconds']:.2f} s ({data['rows']:,} rows returned for {spine_rows:,} spine rows)"


def _run_guarded(command: list[str], cwd: Path) -> tuple[int, str, str, str]:
    """Run ``command`` with the time limit and a memory limit; (return code, stdout, stderr, why it was stopped or "").

    Feast's file offline store holds the whole joined frame in memory: on the
    full-size data it passed 20 GB of the machine's 24 GB, so it is stopped
    past ``FEAST_MAX_MEMORY`` of its machine's memory (resident set, read from
    /proc twice a second) rather than left to the kernel's OOM killer, which
    could pick a neighbour.
    """
    total = _meminfo_kib("MemTotal")
    limit_kib = int(total * FEAST_MAX_MEMORY) if total else None
    started = time.monotonic()
    peak = 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=cwd)
        stopped = ""
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            peak = max(peak, _rss_kib(proc.pid))
            if elapsed > FEAST_TIMEOUT_S:
                stopped = f"did not finish within {FEAST_TIMEOUT_S} s"
            elif limit_kib is not None and peak > limit_kib:
                stopped = (
                    f"stopped after {elapsed:.0f} s, holding {peak / 2**20:.1f} GB "
                    f"(limit {FEAST_MAX_MEMORY:.0%} of the machine's {total / 2**20:.0f} GB)"
                )
            if stopped:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), stopped


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spine", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of loopml and of pandas (the best of each counts)")
    parser.add_argument("--skip-feast", action="store_true")
    args = parser.parse_args()
    cpu = next(
        (line.split(":")[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?"
    )
    print(f"machine: {platform.machine()} {cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    print(f"data: spine {args.spine:,} rows, feature table {args.events:,} rows, {args.entities:,} entities, random times")
    spec = Spec.model_validate(SPEC)
    print(f"load average before: {_load()}")
    with tempfile.TemporaryDirectory(prefix="loopml-pit-") as tmp:
        folder = Path(tmp)
        events_path, spine_path = make_data(folder, args.events, args.spine, args.entities)
        events_df, spine_df = pd.read_parquet(events_path), pd.read_parquet(spine_path)
        ours_runs: list[float] = []
        pandas_runs: list[float] = []
        for _ in range(args.repeat):
            ours, seconds = timed(lambda: loopml_join(spec, events_path, spine_path))
            ours_runs.append(seconds)
            theirs, seconds = timed(lambda: pandas_join(events_df, spine_df))
            pandas_runs.append(seconds)
        ours_s, pandas_s = min(ours_runs), min(pandas_runs)
        np.testing.assert_array_equal(np.isnan(theirs), ours == 0.0)  # no earlier value: NaN there, the default (0) here
        found = ~np.isnan(theirs)
        assert np.array_equal(ours[found], theirs[found]), "loopml and merge_asof disagree"
        built, build_s = timed(
            lambda: build_spine_training_set(spec, {"events": events_path}, spine_path, folder / "out.parquet")
        )
        runs = ", ".join(f"{r:.2f}" for r in ours_runs)
        print(f"loopml point_in_time_join (numpy path):  {ours_s:7.2f} s  best of {args.repeat} ({runs}) (target < 10 s)")
        versus = ratio(pandas_s, ours_s)
        runs = ", ".join(f"{r:.2f}" for r in pandas_runs)
        print(f"pandas merge_asof incl. its sort:        {pandas_s:7.2f} s  best of {args.repeat} ({runs})")
        print(f"  -> loopml {versus} than merge_asof (target >= 3x faster)")
        print(f"loopml features build --spine (to file): {build_s:7.2f} s  ({built.rows:,} rows)")
        print(f"values equal to merge_asof on all {len(ours):,} rows ({int(found.sum()):,} with an earlier event)")
        if args.skip_feast:
            print("feast get_historical_features:          skipped (--skip-feast)")
        else:
            line = feast(folder, events_path, spine_path, args.spine)
            print(f"feast get_historical_features:          {line}")
            if line[0].isdigit():
                print(f"  -> loopml {ratio(float(line.split()[0]), ours_s)} than Feast")
    print(f"load average after: {_load()}")


def _load() -> str:
    """The 1, 5 and 15 minute load averages (2 cores: above 2 means other work waited for a core)."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
    sys.exit(0)
