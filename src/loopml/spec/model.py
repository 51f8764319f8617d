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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

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
#: when the prediction log's journal is fsync'ed (``serving.log_fsync``; see ``loopml.predlog.journal``)
LogFsync = Literal["off", "interval", "always"]


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
    #: date and timestamp columns read from text: a ``strptime`` format such as ``"%d.%m.%Y"``; unset: ISO 8601
    format: str | None = None


class TableRules(_Strict):
    min_rows: int | None = Field(default=None, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    max_age: Duration | None = None
    duplicate_keys: list[str] | None = None
    severity: Severity = "error"


class CsvOptions(_Strict):
    """How a CSV source is read, where DuckDB's detection of the dialect needs help."""

    #: the decimal separator of numbers: ``","`` for files written with a decimal comma (``1,5``; ``;``-separated)
    decimal: Literal[".", ","] = "."
    #: the longest line read, in bytes (DuckDB's default is 2,000,000); a file with a longer line is an error saying so
    max_line_bytes: int | None = Field(default=None, ge=1)


class Source(_Strict):
    path: str
    format: Literal["parquet", "csv", "jsonl"] | None = None
    timestamp: str | None = None
    columns: dict[str, ColumnRule]
    table: TableRules = TableRules()
    csv: CsvOptions = CsvOptions()


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
    #: add ``{view}_missing`` (1.0 without visible history or past the ttl); None follows ``features.null_indicators``
    indicator: bool | None = None

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


TransformOp = Literal["hour", "day_of_week", "is_weekend", "is_night", "log", "log1p", "ratio", "bucket"]


class Transform(_Strict):
    op: TransformOp
    inputs: list[str]
    #: ``bucket`` only: increasing edges; the output is the index of the right-open bucket ``[e[i-1], e[i])``
    edges: list[float] | None = None


EncodingOp = Literal["onehot", "frequency", "target"]


class Encoding(_Strict):
    """A categorical encoding of a string request feature, fitted on the training split only.

    Values, nulls and unseen categories: see :mod:`loopml.features.encodings`.
    Options apply to one op each (``loopml check`` rejects the others).
    """

    input: str
    op: EncodingOp
    #: ``target``: the m of the m-estimate ``(sum_y + m * prior) / (n + m)``
    smoothing: float = Field(default=10.0, ge=0)
    #: ``target``: out-of-fold encoding of the training rows themselves (0 = off, else >= 2)
    folds: int = Field(default=5, ge=0)
    #: ``onehot``: a category needs this many training rows for its own column
    min_frequency: int = Field(default=1, ge=1)
    #: ``onehot``: at most this many category columns (the most frequent), plus ``__other__``
    max_categories: int = Field(default=20, ge=1)


class Features(_Strict):
    inclusive: bool = False
    default: float = 0.0
    null_indicators: bool = False  # every view gets ``{view}_missing`` unless it sets ``indicator: false``
    views: dict[str, FeatureView] = {}
    request: dict[str, RequestFeature] = {}
    transforms: dict[str, Transform] = {}
    encodings: dict[str, Encoding] = {}
    exclude: list[str] = []


class Threshold(_Strict):
    """How the decision threshold is chosen on the validation split (see :mod:`loopml.train.threshold`)."""

    objective: Literal["f1", "precision", "recall", "cost"] = "f1"
    #: ``precision`` / ``recall``: the level to reach (e.g. 0.9)
    target: float | None = Field(default=None, gt=0, le=1)
    #: ``cost``: the cost of one false positive / one false negative
    cost_fp: float = Field(default=1.0, ge=0)
    cost_fn: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _target_needed(self) -> Threshold:
        if self.objective in ("precision", "recall") and self.target is None:
            raise ValueError(f"objective {self.objective!r} needs a target, e.g. target: 0.9")
        return self


class Tuning(_Strict):
    """Optuna hyper-parameter search (``loopml train --trials N`` overrides ``trials``)."""

    trials: int = Field(default=0, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)
    n_jobs: int = Field(default=1, ge=1)
    #: the validation metric to optimise; defaults to ``gate.metric``
    metric: str | None = None
    #: trials fit on a seeded random sample of at most this many training rows (the final fit uses all); null: all
    max_rows: int | None = Field(default=200_000, ge=1000)


class ModelSpec(_Strict):
    #: ``lightgbm``, ``logistic`` (``linear``), ``xgboost`` (extra) or ``sklearn:<module>.<Class>``
    type: str = "lightgbm"
    params: dict[str, Any] = {}
    baseline: str | None = "logistic"
    #: which candidate is registered: ``best`` (the better of ``type`` and ``baseline`` on the validation split)
    #: or ``model`` (always ``type``; the baseline is only reported)
    select: Literal["best", "model"] = "best"
    seed: int = 0
    #: probability calibration fitted on the validation split (binary only)
    calibration: Literal["none", "isotonic", "sigmoid"] = "none"
    threshold: Threshold = Threshold()
    tuning: Tuning = Tuning()


class Split(_Strict):
    method: Literal["time", "random"] = "time"
    valid_days: float = Field(default=7, gt=0)
    test_days: float = Field(default=7, gt=0)
    train_days: float | None = Field(default=None, gt=0)
    gap: Duration | None = None
    valid_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)
    group: str | None = None  # random split: keep every value of this column (an entity key) in one split
    backtest: Backtest | None = None  # time split: rolling-origin (prequential) evaluation recorded with the run


class Backtest(_Strict):
    """Rolling-origin folds: train ``train_days``, gap (``split.gap`` or the label delay), test ``test_days``."""

    folds: int = Field(default=4, ge=1)
    train_days: float = Field(default=28, gt=0)
    test_days: float = Field(default=7, gt=0)
    step_days: float | None = Field(default=None, gt=0)


class Serving(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    latency_budget_ms: float = Field(default=10.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    #: most instances in one POST /v1/predict/batch (more is a 422 naming ``instances``; at most 10000)
    max_batch: int = Field(default=1000, ge=1, le=10_000)
    #: log records kept in memory until written; beyond that they wait in the journal only (nothing is dropped)
    log_queue_size: int = Field(default=10_000, gt=0)
    #: the log is written every second, or as soon as this many records wait
    log_flush_rows: int = Field(default=500, gt=0)
    #: what a machine crash can lose (a killed process loses nothing): ``interval`` (default) the last ~second of
    #: answered predictions, ``always`` nothing (an fsync before each answer), ``off`` what the kernel had not written back
    log_fsync: LogFsync = "interval"
    #: how often the server checks whether a registry alias moved (hot swap); 0 turns it off
    reload_seconds: float = Field(default=5.0, ge=0)
    #: concurrent single predictions scored together, up to this many (adaptive: no waiting); 1 turns it off
    micro_batch: int = Field(default=64, ge=1, le=1000)


class Variant(_Strict):
    """One arm of a rollout: the model version a registry alias points at, and its traffic weight."""

    alias: str
    weight: float = Field(default=1.0, ge=0)


class Canary(_Strict):
    """Canary steps and guardrails (see :mod:`loopml.rollout.policy`)."""

    #: the challenger's share of traffic at each step; passing the last step promotes it
    steps: list[Annotated[float, Field(gt=0, le=1)]] = [0.01, 0.05, 0.25, 1.0]
    #: challenger requests needed before a step's guardrails are judged and the next step starts
    min_requests: int = Field(default=200, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    #: challenger p99 latency limit; default ``serving.latency_budget_ms``
    max_p99_ms: float | None = Field(default=None, gt=0)
    #: PSI of the challenger's scores against the champion's over the same step
    max_score_psi: float = Field(default=0.2, gt=0)
    #: online metric (average precision on labelled requests): largest relative drop against the champion
    max_metric_drop: float = Field(default=0.05, ge=0)
    min_labels: int = Field(default=100, ge=1)


class Bandit(_Strict):
    #: every arm keeps at least this share of traffic (exploration floor)
    min_share: float = Field(default=0.05, ge=0, le=0.5)


class Rollout(_Strict):
    """How traffic is split between model versions (``loopml.rollout.policy``; changeable at run time)."""

    policy: Literal["single", "ab", "shadow", "canary", "bandit", "bluegreen"] = "single"
    #: the champion's registry alias: what ``single`` serves and what canary/blue-green fall back to
    alias: str = "champion"
    #: the challenger's registry alias (shadow, canary, blue-green)
    challenger: str = "challenger"
    #: A/B and bandit arms: variant name -> alias (+ weight for A/B)
    variants: dict[str, Variant] = {}
    #: request entity key hashed to pick a variant (A/B, canary); default: the first entity key
    unit: str | None = None
    canary: Canary = Canary()
    bandit: Bandit = Bandit()
    #: blue-green: which side takes all traffic ("champion" or "challenger")
    live: Literal["champion", "challenger"] = "champion"

    @model_validator(mode="after")
    def _arms(self) -> Rollout:
        if self.policy in ("ab", "bandit"):
            if len(self.variants) < 2:
                raise ValueError(f"rollout.policy {self.policy} needs at least two rollout.variants")
            if self.policy == "ab" and sum(v.weight for v in self.variants.values()) <= 0:
                raise ValueError("rollout.variants: the weights must not all be zero")
            if self.policy == "bandit" and self.bandit.min_share * len(self.variants) > 1:
                raise ValueError("rollout.bandit.min_share times the number of variants must be at most 1")
        if sorted(self.canary.steps) != self.canary.steps:
            raise ValueError("rollout.canary.steps must increase")
        return self


DriftTestName = Literal["auto", "psi", "ks", "chi2", "jensenshannon", "wasserstein"]


class Quality(_Strict):
    """Data-quality checks on live traffic (see ``docs/monitoring.md``, "Data quality")."""

    #: flag a column whose null rate rose by more than this (absolute) over the reference's
    null_rate_increase: float = Field(default=0.05, ge=0, le=1)
    #: out of range: outside [min - t * (max - min), max + t * (max - min)] of the reference
    range_tolerance: float = Field(default=0.0, ge=0)
    #: flag a column with more than this share of out-of-range values
    out_of_range: float = Field(default=0.01, ge=0, le=1)
    #: flag a string column with more than this share of values never seen in training
    unseen_categories: float = Field(default=0.01, ge=0, le=1)
    #: flag a feature view materialized longer ago than this (unset: report the age only)
    max_feature_age: Duration | None = None


class AlertRules(_Strict):
    """Which monitoring rules raise alerts (see ``docs/monitoring.md``, "Alert rules")."""

    #: a column drifted by its test (rule = the test: psi, ks, chi2, jensenshannon, wasserstein)
    drift: bool = True
    #: relative drop of ``metric`` on labelled traffic from the training baseline (test split); null: off
    metric_drop: float | None = Field(default=0.05, gt=0, lt=1)
    #: the metric ``metric_drop`` watches; default ``gate.metric``
    metric: str | None = None
    #: p99 latency over ``serving.latency_budget_ms``
    latency: bool = True
    #: the latest window's throughput below the median of the earlier ones by more than this; null: off
    throughput_drop: float | None = Field(default=0.2, gt=0, lt=1)
    #: the data-quality flags (null rates, out of range, unseen categories, schema, freshness)
    quality: bool = True


class Monitoring(_Strict):
    psi_threshold: float = Field(default=0.2, gt=0)
    psi_bins: int = Field(default=10, ge=2)
    min_rows: int = Field(default=100, ge=1)
    window: Duration = timedelta(days=1)
    #: the test deciding drift of every column (``auto``: chosen by column type and rows, see the docs)
    test: DriftTestName = "auto"
    #: per-column override of ``test``
    tests: dict[str, DriftTestName] = {}
    #: ``auto``: from this many rows on, PSI (an effect size) replaces KS / chi-square (p-values)
    large_sample: int = Field(default=1000, ge=1)
    #: p-value tests (KS, chi-square): drift when the corrected p-value is below this
    p_value: float = Field(default=0.001, gt=0, lt=1)
    #: multiple-testing correction across the columns of a window: Benjamini-Hochberg, Bonferroni or none
    correction: Literal["bh", "bonferroni", "none"] = "bh"
    jensenshannon_threshold: float = Field(default=0.1, gt=0, le=1)
    wasserstein_threshold: float = Field(default=0.1, gt=0)
    quality: Quality = Quality()
    alerts: AlertRules = AlertRules()
    #: POST every new alert as JSON to this URL (``LOOPML_WEBHOOK_URL`` overrides it); failures are recorded, never raised
    webhook_url: str | None = Field(default=None, pattern=r"^https?://\S+$")


class Retraining(_Strict):
    """The closed loop (``loopml retrain``, :mod:`loopml.loop.retrain`)."""

    #: ``loopml serve`` runs ``loopml retrain`` every ``check_every`` in a separate process
    enabled: bool = False
    check_every: Duration = timedelta(hours=1)
    #: which triggers may start the loop
    triggers: list[Literal["schedule", "drift", "performance", "volume"]] = ["schedule", "drift", "performance", "volume"]
    #: schedule trigger: the champion is at least this old
    schedule: Duration | None = None
    #: drift trigger: at least this many drifted columns (the score counts as one)
    drift_columns: int = Field(default=3, ge=1)
    #: drift and performance triggers look at this much of the prediction log, back from its newest prediction
    lookback: Duration = timedelta(days=1)
    #: new-data trigger: at least this many new source rows since the champion's snapshot
    min_new_rows: int = Field(default=50_000, ge=1)
    trials: int = Field(default=0, ge=0)
    #: canary the new version through the live service before promoting it (``rollout.canary`` settings)
    canary: bool = True
    #: the live service; default ``http://{serving.host}:{serving.port}``
    service_url: str | None = None
    canary_timeout: Duration = timedelta(minutes=30)


class Gate(_Strict):
    metric: str = "average_precision"
    min_improvement: float = 0.0


class Evaluation(_Strict):
    """The evaluation report of each run (see :mod:`loopml.train.report`)."""

    #: training-set columns: metrics per value (numeric columns: quantile bins) and the largest gap between values
    segments: list[str] = []
    #: headline metric (bootstrap interval, segments); defaults to ``gate.metric``
    metric: str | None = None
    bootstrap: int = Field(default=200, ge=0)
    #: the k of ranking metrics (precision@k, ndcg@k)
    k: int = Field(default=100, ge=1)
    #: ranking queries: rows sharing this column's value; unset: one query per day over entities (event data)
    group: str | None = None


class Storage(_Strict):
    root: str = ".loopml"
    #: the online store: embedded SQLite (``.loopml/online.sqlite``) or a Redis server at ``redis_url``
    online: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Redis unreachable at request time: ``fail`` answers 503 with the reason; ``fallback`` answers
    #: from the local SQLite cache of the last events materialized, pushed or read, flagged in the response
    online_unavailable: Literal["fail", "fallback"] = "fail"
    registry: Literal["sqlite", "postgres"] = "sqlite"
    #: PostgreSQL registry: a libpq URL; ``${VAR}`` is not expanded, use ``LOOPML_REGISTRY_URL`` to keep secrets out of the file
    registry_url: str | None = None
    #: the prediction log: Parquet parts queried with DuckDB (``.loopml/predictions``) or PostgreSQL at ``prediction_log_url``
    prediction_log: Literal["duckdb", "postgres"] = "duckdb"
    #: PostgreSQL prediction log: a libpq URL; ``LOOPML_PREDLOG_URL`` overrides it (keeps secrets out of the file)
    prediction_log_url: str | None = None


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
    evaluation: Evaluation = Evaluation()
    serving: Serving = Serving()
    rollout: Rollout = Rollout()
    monitoring: Monitoring = Monitoring()
    retraining: Retraining = Retraining()
    storage: Storage = Storage()
