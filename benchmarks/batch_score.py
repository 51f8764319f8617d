"""Batch scoring benchmark: loopml's scoring path against raw ``lightgbm.Booster.predict`` on the same rows.

    .venv/bin/python benchmarks/batch_score.py [--live-days 30] [--chunk-rows 100000] [--repeats 3] [--fresh]

Set-up (cached under the system temp folder, ``loopml-bench-batch``): the
default fraud world (``loopml init --example fraud``: 183 days, 5,000
customers, 10,000 terminals) whose last ``--live-days`` days are held out as
``data/live.parquet`` (about 290k transactions for 30 days), ingested,
featurized and trained with the example's spec (LightGBM, 200 trees). The
live rows are the batch input.

Measured on those rows, each the best of ``--repeats`` runs:

(a) **raw Booster**: ``lightgbm.Booster(model_str=<the registered artifact>).predict(X)``
    on the whole model-input matrix ``X`` at once (the floor: no loopml code);
(b) **loopml scoring**: the scoring part of ``loopml predict`` on the same rows,
    chunk by chunk as the batch path runs it (``LoadedModel.score``: the
    model input by ``ModelInput``, the registry-loaded ``Predictor``, the
    finite-score check), feature computation excluded;
(c) **features**: the point-in-time feature computation of the batch path
    (``ChunkFeatures.assemble``: DuckDB join over the snapshot, transforms),
    chunk by chunk;
(d) **end to end**: ``Project.predict_file`` Parquet to Parquet, for context.

Target (issue 5): (b) at least 80 % of (a)'s rows/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from pathlib import Path

import lightgbm
import numpy as np
import pyarrow.parquet as pq
from common import timed

from loopml.data.inputs import InputFile
from loopml.features.chunks import ChunkFeatures
from loopml.features.definitions import feature_columns
from loopml.project import Project
from loopml.scaffold import init_example
from loopml.serve.batch import load_model


def project(live_days: int, fresh: bool) -> Path:
    """The default fraud project with ``live_days`` held out, trained (built once, then reused)."""
    folder = Path(tempfile.gettempdir()) / f"loopml-bench-batch-{live_days}d"
    ready = folder / ".ready"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if ready.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building the default fraud project with {live_days} live days in {folder} (once)...", flush=True)
    init_example(folder, live_days=live_days)
    p = Project.load(folder)
    _, s = timed(p.ingest)
    print(f"  ingest {s:.1f}s", flush=True)
    _, s = timed(p.build_features)
    print(f"  features {s:.1f}s", flush=True)
    _, s = timed(p.train)
    print(f"  train {s:.1f}s", flush=True)
    ready.touch()
    return folder


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:>12,.0f} rows/s  ({seconds * 1000:8.1f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live-days", type=int, default=30, help="days held out as the batch input")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="rows per chunk (loopml predict's default)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached project")
    args = parser.parse_args()

    folder = project(args.live_days, args.fresh)
    p = Project.load(folder)
    live = folder / "data" / "live.parquet"
    rows = pq.ParquetFile(live).metadata.num_rows
    registry = p.registry()
    model = load_model(p.spec, registry, feature_columns(p.spec))
    record = registry.get(model.version)
    booster = lightgbm.Booster(model_str=record.artifact_path.read_text())

    # (c) features, chunk by chunk, as the batch path computes them
    scratch = Path(tempfile.mkdtemp(prefix="loopml-bench-batch-scratch-"))
    feature_s = []
    assembled = []
    try:
        for _ in range(args.repeats):
            source = InputFile(live, args.chunk_rows)
            features = ChunkFeatures(p.spec, p.snapshot().paths, live, source.schema, scratch)
            try:
                batches, s = timed(lambda: [features.assemble(chunk, 0) for chunk, _ in source])  # noqa: B023
            finally:
                features.close()
                source.close()
            feature_s.append(s)
            assembled = batches
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    X = np.vstack([model.matrix(b) for b in assembled])
    assert X.shape == (rows, len(booster.feature_name()))

    # (a) raw Booster.predict on the whole matrix; (b) loopml's scoring, chunk by chunk
    raw_s, loopml_s = [], []
    for _ in range(args.repeats):
        raw, s = timed(lambda: np.asarray(booster.predict(X), dtype=np.float64))
        raw_s.append(s)
        ours, s = timed(lambda: np.concatenate([model.score(b) for b in assembled]))
        loopml_s.append(s)
    assert np.array_equal(raw, ours), "loopml's scores differ from the raw Booster's"

    # (d) end to end, for context
    out = Path(tempfile.mkdtemp(prefix="loopml-bench-batch-out-")) / "scored.parquet"
    try:
        result, end_s = timed(lambda: p.predict_file(live, out, chunk_rows=args.chunk_rows))
        scored = pq.read_table(out, columns=["score"]).column("score").to_numpy()
        assert np.array_equal(scored, raw), "loopml predict's scores differ from the raw Booster's"
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)

    a, b, c = min(raw_s), min(loopml_s), min(feature_s)
    load = os.getloadavg()
    print()
    print(f"batch scoring: {rows:,} rows x {X.shape[1]} features, model version {model.version} ({record.kind}, 200 trees)")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} (1 and 5 min)")
    print(f"chunk rows: {args.chunk_rows:,} ({result.chunks} chunks); best of {args.repeats}")
    print(f"(a) raw lightgbm.Booster.predict : {rate(rows, a)}")
    print(f"(b) loopml scoring (chunked)     : {rate(rows, b)}")
    print(f"(c) features (point in time)     : {rate(rows, c)}")
    rest = end_s - result.feature_seconds - result.score_seconds
    split = f"features {result.feature_seconds:.2f}s, model {result.score_seconds:.2f}s, read/write {rest:.2f}s"
    print(f"(d) loopml predict end to end    : {rate(rows, end_s)}  [{split}]")
    share = a / b
    verdict = "meets" if share >= 0.8 else "MISSES"
    print(f"loopml scoring throughput = {share:.1%} of raw Booster.predict ({verdict} the 80 % target)")


if __name__ == "__main__":
    main()
