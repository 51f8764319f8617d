"""Training benchmark: tuned LightGBM vs the logistic baseline, and the speed of ``loopml train --trials``.

    .venv/bin/python benchmarks/train_quality.py [--quick] [--trials 30] [--timing-rows 500000] [--skip-timing]

1. **Quality** on the default fraud world (``FraudWorldConfig()``), with the
   handbook's protocol: a 7-day training window, a gap of 7 days (the label
   delay), then 7 days to evaluate on. loopml's time split also needs a
   validation window for tuning, calibration and the threshold, so the layout
   is train 7 d | gap 7 d | valid 7 d | gap 7 d | test 7 d, ending at the last
   day of the data: the train -> valid step is exactly the handbook's
   protocol, and the test window repeats it once more with a model that never
   saw valid or test. One ``loopml train --trials N`` run fits both models on
   the same rows; the run's report holds, for average precision and card
   precision@100 on test, each model's value with its 95 % bootstrap interval
   (200 resamples; rows for AP, cards for card precision) and the interval of
   the paired difference (same resamples for both models).
2. **Speed**: ``loopml train --trials N`` as a separate process on a project
   whose training window holds about ``--timing-rows`` rows (the window
   length in days is derived from the world's daily volume); the training set
   is built beforehand, so the time is training alone (load, tune, fit,
   calibrate, evaluate, report, register). Target: under 180 s for 30 trials on
   500k rows on a 2-core machine.

``--quick`` shrinks the world and the trial count to prove the script runs.
Results are printed and written to ``<workdir>/train_quality.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ruamel.yaml import YAML

from loopml.datasets.fraud import FraudWorldConfig, write_world
from loopml.project import Project
from loopml.scaffold import example_spec_text

QUALITY_METRICS = ("average_precision", "card_precision@100")
TIME_LIMIT_S = 180.0


def spec_text(train_days: int, trials: int) -> str:
    """The example fraud spec with the benchmark's split and tuning."""
    yaml = YAML()
    body: Any = yaml.load(example_spec_text())
    body["split"] = {"method": "time", "train_days": train_days, "valid_days": 7, "test_days": 7}
    body["model"]["tuning"] = {"trials": trials}
    body["evaluation"] = {"bootstrap": 200}
    out = io.StringIO()
    yaml.dump(body, out)
    return out.getvalue()


def make_project(folder: Path, data: Path, train_days: int, trials: int) -> Project:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data").exists():
        shutil.copytree(data, folder / "data")
    (folder / "loopml.yaml").write_text(spec_text(train_days, trials), encoding="utf-8")
    return Project.load(folder)


def quality(folder: Path, data: Path, trials: int) -> dict[str, Any]:
    project = make_project(folder, data, 7, trials)
    project.ingest()
    project.build_features()
    started = time.perf_counter()
    result = project.train(trials=trials)
    seconds = time.perf_counter() - started
    report = json.loads(Path(result.report or "").with_name("report.json").read_text(encoding="utf-8"))
    comparison = {c["metric"]: c for c in report["comparison"]}
    return {
        "run_id": result.run_id,
        "report": result.report,
        "train_seconds": round(seconds, 1),
        "split": result.split,
        "tuning": {k: report["tuning"][k] for k in ("completed", "pruned", "failed", "best_value", "best_params", "seconds")},
        "metrics": {name: comparison.get(name) for name in QUALITY_METRICS},
    }


def timing(
    folder: Path, quality_folder: Path, world_days: int, rows_per_day: float, target_rows: int, trials: int
) -> dict[str, Any]:
    """Copy the ingested project, widen the training window to ~target_rows rows, and time the CLI."""
    shutil.copytree(quality_folder, folder, ignore=shutil.ignore_patterns("runs", "registry.sqlite", "artifacts"))
    train_days = min(max(7, round(target_rows / rows_per_day)), world_days - 29)  # 28 days of gaps, valid and test
    project = make_project(folder, quality_folder / "data", train_days, trials)
    if not project.training_set_path(project.snapshot()).is_file():  # copied: same snapshot, same features
        project.build_features()
    command = [sys.executable, "-m", "loopml", "train", "--trials", str(trials), "--json", "--project", str(folder)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"loopml train failed: {done.stderr.strip().splitlines()[-1:]}")
    body = json.loads(done.stdout)
    return {
        "command": " ".join(command[2:]),
        "train_days": train_days,
        "train_rows": body["split"]["train"]["rows"],
        "seconds": round(seconds, 1),
        "limit_seconds": TIME_LIMIT_S,
        "within_limit": seconds < TIME_LIMIT_S,
        "test_average_precision": body["metrics"]["test"]["average_precision"],
    }


def _fmt(interval: dict[str, Any]) -> str:
    return f"{interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small world and few trials: proves the script works")
    parser.add_argument("--trials", type=int, default=None, help="tuning trials (default 30, --quick 4)")
    parser.add_argument("--timing-rows", type=int, default=None, help="training rows of the timing run (default 500000)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the projects here (default: a temporary folder)")
    args = parser.parse_args()
    trials = args.trials or (4 if args.quick else 30)
    target_rows = args.timing_rows or (30_000 if args.quick else 500_000)
    config = FraudWorldConfig(n_customers=800, n_terminals=1600, days=60) if args.quick else FraudWorldConfig()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="loopml-train-bench-"))
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}")
    print(f"world: {config.n_customers} customers, {config.n_terminals} terminals, {config.days} days; workdir {workdir}")

    data = workdir / "world"
    write_world(config, data)
    rows = pq.read_metadata(data / "transactions.parquet").num_rows
    out: dict[str, Any] = {"world": {"rows": rows, "days": config.days, "quick": args.quick}, "trials": trials}

    out["quality"] = q = quality(workdir / "quality", data, trials)
    print(f"\nquality (test window {q['split']['test']['start'][:10]}, {q['split']['test']['rows']:,} rows), run {q['run_id']}:")
    print(f"  tuning: {q['tuning']['completed']} completed, {q['tuning']['pruned']} pruned in {q['tuning']['seconds']:.1f} s")
    print(f"  {'metric':<20} {'tuned LightGBM':<26} {'logistic baseline':<26} difference [95 % paired]")
    for name, c in q["metrics"].items():
        if c is None:
            print(f"  {name:<20} undefined")
            continue
        diff = f"{c['difference']:+.3f} [{c['difference_low']:+.3f}, {c['difference_high']:+.3f}]"
        print(f"  {name:<20} {_fmt(c['model']):<26} {_fmt(c['baseline']):<26} {diff}")
    print(f"  report: {q['report']}")

    if not args.skip_timing:
        per_day = rows / config.days
        out["timing"] = t = timing(workdir / "timing", workdir / "quality", config.days, per_day, target_rows, trials)
        verdict = "within" if t["within_limit"] else "OVER"
        print(f"\n{t['command']}: {t['seconds']:.1f} s on {t['train_rows']:,} training rows ({t['train_days']} days)")
        print(f"  {verdict} the {TIME_LIMIT_S:.0f} s limit; test average precision {t['test_average_precision']:.3f}")

    (workdir / "train_quality.json").write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\nresults: {workdir / 'train_quality.json'}")


if __name__ == "__main__":
    main()
