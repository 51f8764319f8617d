"""Arrow tables of log records: the JSON columns, the typed feature columns, their folder names (see :mod:`loopml.predlog`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from loopml.predlog.records import (
    FEEDBACK_SCHEMA,
    LOG_SCHEMA,
    NUMBER_PREFIX,
    STRING_PREFIX,
    TYPED_FOLDER_PREFIX,
    TYPED_MARKER,
    Feedback,
    LoggedPrediction,
    to_json,
)


def log_table(rows: Sequence[LoggedPrediction]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "request_id": [r.request_id for r in rows],
            "ts": [r.ts for r in rows],
            "entities": [to_json(r.entities, default=str) for r in rows],
            "features": [to_json(r.features) for r in rows],
            "score": [r.score for r in rows],
            "model_version": [r.model_version for r in rows],
            "variant": [r.variant for r in rows],
            "latency_ms": [r.latency_ms for r in rows],
        },
        schema=LOG_SCHEMA,
    )


def typed_feature_columns(rows: Sequence[LoggedPrediction]) -> dict[str, pa.Array]:
    """The batch's features as typed columns (see the module doc), the marker first; empty when the batch cannot have them.

    A feature with only missing values gets no column (a reader sees NULL, as the JSON gives); a
    value of another type than number or string (a boolean, a list...), an integer past 64 bits, a
    feature holding numbers in some rows and strings in others, or two column names equal but for
    case leave the whole part untyped: its readers parse the JSON, which stays the reference. Each
    column is converted by Arrow in one call (its type inference decides the kind), not value by value.
    """
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.features))
    columns: dict[str, pa.Array] = {}
    for key in sorted(keys):  # sorted: one schema per set of columns
        try:
            array = pa.array([row.features.get(key) for row in rows], from_pandas=True)  # NaN -> null
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return {}
        kind = array.type
        if pa.types.is_null(kind):
            continue
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            numbers = array.cast(pa.float64(), safe=False)
            columns[NUMBER_PREFIX + key] = pc.if_else(pc.is_finite(numbers), numbers, None)  # +-Infinity -> null
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns[STRING_PREFIX + key] = array.cast(pa.string())
        else:
            return {}
    folded = {TYPED_MARKER, *(name.lower() for name in LOG_SCHEMA.names)}
    for name in columns:
        if name.lower() in folded:
            return {}
        folded.add(name.lower())
    return {TYPED_MARKER: pa.array([True] * len(rows), pa.bool_()), **columns}


def typed_folder(schema: pa.Schema) -> str:
    """The folder of the parts of this schema (names and types of every column)."""
    described = json.dumps([[f.name, str(f.type)] for f in schema])
    return TYPED_FOLDER_PREFIX + hashlib.sha256(described.encode()).hexdigest()[:16]


def feedback_table(items: Sequence[Feedback]) -> pa.Table:
    return pa.Table.from_pydict(
        {"request_id": [i.request_id for i in items], "label": [i.label for i in items], "ts": [i.ts for i in items]},
        schema=FEEDBACK_SCHEMA,
    )
