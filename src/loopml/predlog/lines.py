"""Log records as journal lines: one JSON array per record, read back as the record the log would have stored.

The format of :mod:`loopml.predlog.journal`'s segments, one line per record:

* a prediction: ``["p", request_id, ts, entities, features, score, model_version, variant, latency_ms]``
* a label: ``["f", request_id, label, ts]``

``ts`` is ISO text to the microsecond (what the log stores). orjson writes a
micro-batch of records in about a microsecond and a half each, on the request
path. Like the log's JSON columns (:func:`loopml.predlog.records.to_json`, also
orjson), it writes a NaN or infinite feature value as ``null``: the record
read back holds ``None`` there, which every reader of the log sees exactly as
it sees the original (NULL in the JSON and in the typed columns). What orjson
refuses (an integer past 64 bits, a lone surrogate) is written by ``json``,
which reads back the same. Entities, like the log's JSON column, turn what
JSON cannot hold into its text.

A line that does not end with a newline is the tail of a write cut short by
the process's death (its answer was never sent): :func:`read_lines` leaves
it out. Any other line that does not parse is damaged, and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from loopml.predlog.records import Feedback, LoggedPrediction

Record = LoggedPrediction | Feedback

_PREDICTION, _FEEDBACK = "p", "f"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def _fallback(value: Any) -> Any:
    """What ``json`` writes for a value it does not know: a time as ISO text, a numpy number as the number, else text."""
    if isinstance(value, datetime):
        return value.isoformat()
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def _row(record: Record) -> list[Any]:
    if isinstance(record, LoggedPrediction):
        r = record
        return [_PREDICTION, r.request_id, r.ts, r.entities, r.features, r.score, r.model_version, r.variant, r.latency_ms]
    return [_FEEDBACK, record.request_id, record.label, record.ts]


def _encode_one(record: Record) -> bytes:
    row = _row(record)
    try:
        return orjson.dumps(row, default=str, option=_OPTIONS)
    except TypeError:  # an integer past 64 bits, a lone surrogate...
        return json.dumps(row, default=_fallback, separators=(",", ":")).encode() + b"\n"


def encode(records: Sequence[Record]) -> bytes:
    """Records as lines (newlines included), ready for one write: orjson in one pass, record by record only if it refuses one."""
    try:
        return b"".join([orjson.dumps(_row(r), default=str, option=_OPTIONS) for r in records])
    except TypeError:
        return b"".join(map(_encode_one, records))


def decode(line: bytes) -> Record:
    """The record of one line (without its newline); ``ValueError`` if it is not one."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        row = json.loads(line)  # what only json writes (lone surrogates; NaN, Infinity)
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
