"""The prediction log's records and table schemas: what every backend stores and every reader gets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

LOG_SCHEMA = pa.schema(
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
FEEDBACK_SCHEMA = pa.schema([("request_id", pa.string()), ("label", pa.float64()), ("ts", pa.timestamp("us"))])
#: the columns of :meth:`PredictionLogBackend.read` and of the ``labelled`` view
LABELLED_SCHEMA = pa.schema([*LOG_SCHEMA, ("label", pa.float64()), ("label_ts", pa.timestamp("us"))])

#: a part's constant true column saying that its features are also stored as typed columns
TYPED_MARKER = "_typed"
#: the typed column of a feature whose values in a part are all numbers (DOUBLE) / all strings (VARCHAR)
NUMBER_PREFIX, STRING_PREFIX = "n:", "s:"
#: parts with typed columns live in ``log/typed-<schema hash>/``, one folder per set of typed columns
TYPED_FOLDER_PREFIX = "typed-"
#: ``predictions`` with every stored column (typed feature columns included, when there are any)
WIDE_PREDICTIONS = "_predictions_wide"


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


def clean_float(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite feature values are logged as null (missing)."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def to_json(values: dict[str, Any], default: Callable[[Any], Any] | None = None) -> str:
    """JSON text of a row's entities or features; non-finite numbers become null.

    orjson first (about ten times faster than ``json``, and it writes NaN and
    Infinity as null already); ``json`` for what orjson refuses (integers past
    64 bits, lone surrogates), so every row is still logged.
    """
    try:
        return orjson.dumps(values, default=default, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        return json.dumps({k: clean_float(v) for k, v in values.items()}, default=default)


def naive_local(value: datetime) -> datetime:
    """The log's time base: naive local time."""
    return value if value.tzinfo is None else value.astimezone().replace(tzinfo=None)
