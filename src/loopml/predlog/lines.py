"""Log records as journal lines: one JSON array per record, parsed back into the very record that was logged.

The format of :mod:`loopml.predlog.journal`'s segments, one line per record:

* a prediction: ``["p", request_id, ts, entities, features, score, model_version, variant, latency_ms]``
* a label: ``["f", request_id, label, ts]``

``ts`` is ISO text to the microsecond (what the log stores). orjson writes a
group of records in a few microseconds; it cannot write NaN or Infinity (it
writes ``null``) nor integers past 64 bits, so a record with a non-finite
feature value (rare: the output has ``null`` in it, then the features are
checked) or a value orjson refuses is written by ``json`` instead, whose
``NaN``/``Infinity`` tokens read back as the same floats: a replayed record
is the record, and the log stores it exactly as it would have (a NaN
feature and a missing one are not the same to the typed columns,
:func:`loopml.predlog.tables.typed_feature_columns`). Entities, like the
log's JSON column, turn what JSON cannot hold into its text.

A line that does not end with a newline is the tail of a write cut short by
the process's death (its answer was never sent): :func:`read_lines` leaves
it out. Any other line that does not parse is damaged, and counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from loopml.predlog.records import Feedback, LoggedPrediction

Record = LoggedPrediction | Feedback

_PREDICTION, _FEEDBACK = "p", "f"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _fallback(value: Any) -> Any:
    """What ``json`` writes for a value it does not know: a time as ISO text, a numpy number as the number, else text."""
    if isinstance(value, datetime):
        return value.isoformat()
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def _non_finite(record: Record) -> bool:
    return isinstance(record, LoggedPrediction) and any(
        isinstance(v, float) and not math.isfinite(v) for v in record.features.values()
    )


def encode_one(record: Record) -> bytes:
    """One record as one line (newline included)."""
    if isinstance(record, LoggedPrediction):
        row: list[Any] = [
            _PREDICTION,
            record.request_id,
            record.ts,
            record.entities,
            record.features,
            record.score,
            record.model_version,
            record.variant,
            record.latency_ms,
        ]
    else:
        row = [_FEEDBACK, record.request_id, record.label, record.ts]
    try:
        line = orjson.dumps(row, default=str, option=_OPTIONS)
        if b"null" not in line or not _non_finite(record):
            return line + b"\n"
    except TypeError:  # an integer past 64 bits, a lone surrogate...
        pass
    return json.dumps(row, default=_fallback, separators=(",", ":")).encode() + b"\n"


def encode(records: Sequence[Record]) -> bytes:
    """Records as lines, ready for one write."""
    return b"".join(map(encode_one, records))


def decode(line: bytes) -> Record:
    """The record of one line (without its newline); ``ValueError`` if it is not one."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        row = json.loads(line)  # NaN, Infinity, lone surrogates: what only json writes
    if not isinstance(row, list) or not row:
        raise ValueError("not a journal record")
    try:
        if row[0] == _PREDICTION and len(row) == 9:
            _, request_id, ts, entities, features, score, version, variant, latency = row
            if isinstance(request_id, str) and isinstance(entities, dict) and isinstance(features, dict):
                return LoggedPrediction(
                    request_id,
                    datetime.fromisoformat(ts),
                    entities,
                    features,
                    float(score),
                    int(version),
                    str(variant),
                    float(latency),
                )
        elif row[0] == _FEEDBACK and len(row) == 4 and isinstance(row[1], str):
            return Feedback(row[1], float(row[2]), datetime.fromisoformat(row[3]))
    except (TypeError, ValueError):
        pass
    raise ValueError("not a journal record")


def read_lines(path: Path, chunk: int) -> Iterator[tuple[list[Record], int]]:
    """The records of a journal file, ``chunk`` at a time, each with the number of damaged lines met since the last.

    A last line without its newline (a write cut short) is left out, not counted as damaged.
    """
    records: list[Record] = []
    damaged = 0
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # the torn tail: only the last line can lack its newline
            try:
                records.append(decode(line[:-1]))
            except ValueError:
                damaged += 1
            if len(records) >= chunk:
                yield records, damaged
                records, damaged = [], 0
    if records or damaged:
        yield records, damaged
