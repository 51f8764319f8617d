"""What the dashboard reads from the prediction log: traffic per time bucket, and the champion's latest rows.

:func:`read_traffic` aggregates every logged prediction (all versions) into
equal-width time buckets in DuckDB: requests, latency quantiles and requests
per variant. :func:`read_monitored` loads the live version's latest
``max_rows`` rows as columns (:func:`loopml.monitor.drift.load_live`) with the
reference statistics and training metrics stored with that version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from loopml.monitor.dashboard.blocks import Json, number
from loopml.monitor.dashboard.live import LiveService
from loopml.monitor.dashboard.windows import bucket_width_us
from loopml.monitor.drift import column_references
from loopml.monitor.live_rows import SCORE, LiveData, load_live
from loopml.monitor.stattests import ColumnReference
from loopml.predlog.base import PredictionLogBackend


def first_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...] | None:
    """The first row of a query, with the result fully consumed (DuckDB refuses new work on an open result)."""
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


@dataclass(frozen=True)
class Traffic:
    """Latency and throughput per time bucket (all versions), from one DuckDB aggregation."""

    width_us: int
    starts_ms: list[int]
    requests: list[int]
    p50: list[float | None]
    p95: list[float | None]
    p99: list[float | None]
    by_variant: dict[str, list[int]]
    total: int
    overall: dict[str, float | None]


def read_traffic(log: PredictionLogBackend, max_points: int) -> Traffic:
    with log.connect() as con:
        span = first_row(
            con,
            "SELECT min(epoch_us(ts)), max(epoch_us(ts)), count(*),"
            " quantile_cont(latency_ms, [0.5, 0.95, 0.99]) FROM predictions",
        )
        if span is None or not span[2]:
            return Traffic(1_000_000, [], [], [], [], [], {}, 0, {"p50": None, "p95": None, "p99": None})
        lo, hi, total, quantiles = int(span[0]), int(span[1]), int(span[2]), span[3] or [None] * 3
        width = bucket_width_us(hi - lo + 1, max_points)
        first = lo // width
        rows = con.execute(
            f"""SELECT epoch_us(ts) // {width} - {first} AS b, count(*),
                       quantile_cont(latency_ms, [0.5, 0.95, 0.99])
                FROM predictions GROUP BY b ORDER BY b"""
        ).fetchall()
        variants = con.execute(
            f"SELECT epoch_us(ts) // {width} - {first} AS b, variant, count(*) FROM predictions GROUP BY b, variant"
        ).fetchall()
    n = hi // width - first + 1
    requests = [0] * n
    p50: list[float | None] = [None] * n
    p95: list[float | None] = [None] * n
    p99: list[float | None] = [None] * n
    for b, count, q in rows:
        requests[b], p50[b], p95[b], p99[b] = int(count), number(q[0]), number(q[1]), number(q[2])
    by_variant: dict[str, list[int]] = {}
    for b, variant, count in variants:
        by_variant.setdefault(str(variant), [0] * n)[b] = int(count)
    starts = [(first + i) * width // 1000 for i in range(n)]
    overall = {"p50": number(quantiles[0]), "p95": number(quantiles[1]), "p99": number(quantiles[2])}
    return Traffic(width, starts, requests, p50, p95, p99, dict(sorted(by_variant.items())), total, overall)


@dataclass(frozen=True)
class Monitored:
    """The champion's recent logged rows, with its reference statistics and training metrics."""

    version: int
    references: dict[str, ColumnReference]
    reference: Json
    metrics: Json
    live: LiveData
    total: int  # rows of this version in the log (``live`` holds the latest ``max_rows``)


def read_monitored(service: LiveService, log: PredictionLogBackend, max_rows: int) -> Monitored | None:
    """The live version's latest ``max_rows`` logged rows as columns; None while no model is loaded."""
    champion = service.live
    if champion is None:
        return None
    version = champion.version
    reference = service.registry.reference_stats(version)
    metrics = service.registry.get(version).metrics
    references = column_references(reference)
    numeric = [n for n, r in references.items() if r.kind == "numeric" and n != SCORE]
    categorical = [n for n, r in references.items() if r.kind == "categorical"]
    with log.connect(model_version=version) as con:
        row = first_row(con, "SELECT count(*) FROM predictions")
        total = int(row[0]) if row else 0
        since: datetime | None = None
        if total > max_rows:
            found = first_row(con, f"SELECT ts FROM predictions ORDER BY ts DESC LIMIT 1 OFFSET {int(max_rows) - 1}")
            since = found[0] if found else None
        if since is None:
            live = load_live(con, numeric, categorical)
    if since is not None:
        with log.connect(since=since, model_version=version) as con:
            live = load_live(con, numeric, categorical)
    return Monitored(version, references, reference, metrics, live, total)


def truncation_note(monitored: Monitored, max_rows: int) -> str | None:
    """Says that only the latest ``max_rows`` rows were read, when the log holds more."""
    if monitored.total <= monitored.live.rows:
        return None
    return (
        f"the latest {monitored.live.rows:,} of {monitored.total:,} predictions of version {monitored.version} (cap {max_rows:,})"
    )
