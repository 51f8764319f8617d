"""The prediction log: every served prediction, and the labels that arrive later.

Storage is append-only Parquet parts in a folder, queried with DuckDB
(``read_parquet('…/*.parquet')``). Parts are written to a temporary name and
renamed, so a crash never leaves a half-written part, several processes can
read while the server writes (a single DuckDB database file would lock
readers out), and nothing already flushed is ever rewritten.

Layout under ``<state>/predictions/``: ``log/part-*.parquet`` (one row per
prediction) and ``feedback/part-*.parquet`` (request id, label, time).
Feature values are stored as one JSON text column so that the schema does not
change when the feature list does.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

_LOG_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("entities", pa.string()),
        ("features", pa.string()),
        ("score", pa.float64()),
        ("model_version", pa.int64()),
        ("variant", pa.string()),
        ("latency_ms", pa.float64()),
    ]
)
_FEEDBACK_SCHEMA = pa.schema([("request_id", pa.string()), ("label", pa.float64()), ("ts", pa.timestamp("us"))])


@dataclass(frozen=True)
class LoggedPrediction:
    request_id: str
    ts: datetime
    entities: dict[str, Any]
    features: dict[str, float]
    score: float
    model_version: int
    variant: str
    latency_ms: float


@dataclass(frozen=True)
class Feedback:
    request_id: str
    label: float
    ts: datetime


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


class PredictionLog:
    """Append predictions and feedback; query them with DuckDB."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def _log_dir(self) -> Path:
        return self.folder / "log"

    @property
    def _feedback_dir(self) -> Path:
        return self.folder / "feedback"

    def _write_part(self, folder: Path, table: pa.Table) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{datetime.now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)

    def append(self, rows: Sequence[LoggedPrediction]) -> None:
        if not rows:
            return
        table = pa.Table.from_pydict(
            {
                "request_id": [r.request_id for r in rows],
                "ts": [r.ts for r in rows],
                "entities": [json.dumps(r.entities, default=str) for r in rows],
                "features": [json.dumps({k: _clean(v) for k, v in r.features.items()}) for r in rows],
                "score": [r.score for r in rows],
                "model_version": [r.model_version for r in rows],
                "variant": [r.variant for r in rows],
                "latency_ms": [r.latency_ms for r in rows],
            },
            schema=_LOG_SCHEMA,
        )
        self._write_part(self._log_dir, table)

    def add_feedback(self, items: Sequence[Feedback]) -> None:
        if not items:
            return
        table = pa.Table.from_pydict(
            {"request_id": [i.request_id for i in items], "label": [i.label for i in items], "ts": [i.ts for i in items]},
            schema=_FEEDBACK_SCHEMA,
        )
        self._write_part(self._feedback_dir, table)

    def _relation_sql(self, folder: Path, schema: pa.Schema) -> str:
        if not any(folder.glob("part-*.parquet")):
            cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in schema)
            return f"(SELECT {cols} WHERE false)"
        pattern = str(folder / "part-*.parquet").replace("'", "''")
        return f"read_parquet('{pattern}')"

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with views ``predictions``, ``feedback`` and ``labelled``.

        ``labelled`` joins each prediction with its latest feedback label (NULL while none arrived).
        """
        con = duckdb.connect()
        con.execute(f"CREATE VIEW predictions AS SELECT * FROM {self._relation_sql(self._log_dir, _LOG_SCHEMA)}")
        con.execute(f"CREATE VIEW feedback AS SELECT * FROM {self._relation_sql(self._feedback_dir, _FEEDBACK_SCHEMA)}")
        con.execute(
            """CREATE VIEW labelled AS
               SELECT p.*, f.label FROM predictions p
               LEFT JOIN (SELECT request_id, arg_max(label, ts) AS label FROM feedback GROUP BY request_id) f
               USING (request_id)"""
        )
        return con

    def count(self) -> int:
        with self.connect() as con:
            row = con.execute("SELECT count(*) FROM predictions").fetchone()
        return int(row[0]) if row else 0


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_integer(t):
        return "BIGINT"
    return "DOUBLE"
