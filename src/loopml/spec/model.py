"""The typed model of ``loopml.yaml``: the single source of configuration.

Every stage receives (parts of) a validated :class:`Spec`; nothing reads the
YAML file or environment variables on its own. Unknown keys are errors
(``extra="forbid"`` everywhere) so that a typo never silently falls back to a
default. Durations are written as ``90s``, ``15m``, ``1h``, ``7d`` or ``2w``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """Parse ``7d``/``12h``/``30m``/``45s``/``500ms`` (or a number of seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '7d', got {value!r}")
    if isinstance(value, (int, float)):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ValueError(f"expected a duration like '7d', '12h', '30m' or '45s', got {value!r}")


def format_duration(value: timedelta) -> str:
    """Inverse of :func:`parse_duration`: the largest exact unit up to days (``7d``, not ``1w``)."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms" if seconds else "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]

Severity = Literal["error", "warn"]
ColumnType = Literal["int", "float", "bool", "string", "timestamp", "date"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Strict):
    key: str
    description: str = ""


class ColumnRule(_Strict):
    """Validation rules for one source column; ``severity`` applies to all of them."""

    type: ColumnType
    nullable: bool = True
    max_null_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = None
    unique: bool = False
    pattern: str | None = None
    severity: Severity = "error"


class TableRules(_Strict):
    min_rows: int | None = Field(default=None, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    max_age: Duration | None = None
    duplicate_keys: list[str] | None = None
    severity: Severity = "error"


class Source(_Strict):
    path: str
    format: Literal["parquet", "csv", "jsonl"] | None = None
    timestamp: str | None = None
    columns: dict[str, ColumnRule]
    table: TableRules = TableRules()


class Label(_Strict):
    source: str
    column: str
    positive: str | int | float | bool | None = 1
    delay: Duration = timedelta(days=7)


AggFunction = Literal["count", "sum", "mean", "std", "min", "max", "last"]


class Aggregation(_Strict):
    column: str
    functions: list[AggFunction]
    windows: list[Duration]


class FeatureView(_Strict):
    """Windowed aggregations of one source per entity, as of each event time."""

    entity: str
    source: str
    aggregations: list[Aggregation]
    delay: Duration = timedelta(0)
    ttl: Duration | None = None

    def outputs(self, view_name: str) -> list[tuple[str, Aggregation, AggFunction, timedelta]]:
        """``(feature_name, aggregation, function, window)`` for every output column.

        Names are ``{view}_{column}_{function}_{window}``, e.g.
        ``customer_tx_amount_mean_7d``; ``count`` drops the column name.
        """
        out = []
        for agg in self.aggregations:
            for window in agg.windows:
                for fn in agg.functions:
                    middle = fn if fn == "count" else f"{agg.column}_{fn}"
                    out.append((f"{view_name}_{middle}_{format_duration(window)}", agg, fn, window))
        return out


class RequestFeature(_Strict):
    type: Literal["int", "float", "bool", "string", "timestamp"]
    required: bool = True


TransformOp = Literal["hour", "day_of_week", "is_weekend", "is_night", "log1p", "ratio"]


class Transform(_Strict):
    op: TransformOp
    inputs: list[str]


class Features(_Strict):
    inclusive: bool = False
    default: float = 0.0
    views: dict[str, FeatureView] = {}
    request: dict[str, RequestFeature] = {}
    transforms: dict[str, Transform] = {}
    exclude: list[str] = []


class ModelSpec(_Strict):
    type: str = "lightgbm"
    params: dict[str, Any] = {}
    baseline: str | None = "logistic"
    seed: int = 0


class Split(_Strict):
    method: Literal["time", "random"] = "time"
    valid_days: float = Field(default=7, gt=0)
    test_days: float = Field(default=7, gt=0)
    train_days: float | None = Field(default=None, gt=0)
    gap: Duration | None = None
    valid_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)
    group: str | None = None  # random split: keep every value of this column (an entity key) in one split


class Serving(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    latency_budget_ms: float = Field(default=10.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    log_queue_size: int = Field(default=10_000, gt=0)
    log_flush_rows: int = Field(default=500, gt=0)


class Rollout(_Strict):
    policy: Literal["single"] = "single"
    alias: str = "champion"


class Monitoring(_Strict):
    psi_threshold: float = Field(default=0.2, gt=0)
    psi_bins: int = Field(default=10, ge=2)
    min_rows: int = Field(default=100, ge=1)
    window: Duration = timedelta(days=1)


class Retraining(_Strict):
    enabled: bool = False
    schedule: Duration | None = None


class Gate(_Strict):
    metric: str = "average_precision"
    min_improvement: float = 0.0


class Storage(_Strict):
    root: str = ".loopml"
    online: Literal["sqlite"] = "sqlite"
    registry: Literal["sqlite", "postgres"] = "sqlite"
    #: PostgreSQL registry: a libpq URL; ``${VAR}`` is not expanded, use ``LOOPML_REGISTRY_URL`` to keep secrets out of the file
    registry_url: str | None = None
    prediction_log: Literal["duckdb"] = "duckdb"


class Spec(_Strict):
    project: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["binary", "regression"] = "binary"
    entities: dict[str, Entity]
    sources: dict[str, Source]
    label: Label
    features: Features = Features()
    model: ModelSpec = ModelSpec()
    split: Split = Split()
    gate: Gate = Gate()
    serving: Serving = Serving()
    rollout: Rollout = Rollout()
    monitoring: Monitoring = Monitoring()
    retraining: Retraining = Retraining()
    storage: Storage = Storage()
