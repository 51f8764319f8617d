"""Labels files (``loopml feedback --file``): request ids and labels from CSV or Parquet, each value checked."""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from loopml.errors import LoopmlError
from loopml.predlog.records import Feedback, naive_local

_TRUE, _FALSE = {"true", "yes"}, {"false", "no"}


def _label_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return 1.0 if text in _TRUE else 0.0
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _read_labels_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise LoopmlError(f"{path}: a labels file must be .csv or .parquet (columns request_id,label[,ts])")
    if not path.is_file():
        raise LoopmlError(f"{path}: no such labels file")
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = fh.readline()
            names = next(csv.reader([header]), [])
            return pacsv.read_csv(
                path,
                # every column as text: each value is checked below, with its row number
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in names}, null_values=[""], strings_can_be_null=True
                ),
            )
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoopmlError(f"{path}: cannot read the labels file ({reason})") from None


def read_labels_file(path: Path, now: datetime | None = None) -> list[Feedback]:
    """The labels of a CSV/Parquet file with columns ``request_id`` and ``label`` (and optionally ``ts``).

    Labels are numbers or ``true``/``false``; ``ts`` (when the label became known) defaults to now.
    Other columns are ignored. A bad value is an error naming the file, the row (1-based, the header
    not counted) and the column; nothing is stored unless every row is valid.
    """
    table = _read_labels_table(path)
    missing = [c for c in ("request_id", "label") if c not in table.column_names]
    if missing:
        found = ", ".join(table.column_names) or "none"
        needs = "a labels file needs request_id,label"
        raise LoopmlError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}); {needs}")
    received = naive_local(now or datetime.now())
    ids = table.column("request_id").to_pylist()
    labels = table.column("label").to_pylist()
    times: list[Any] = table.column("ts").to_pylist() if "ts" in table.column_names else [None] * len(ids)
    out = []
    for row, (request_id, label, ts) in enumerate(zip(ids, labels, times, strict=True), start=1):
        if request_id is None or str(request_id).strip() == "":
            raise LoopmlError(f"{path} row {row}: request_id is empty")
        value = _label_value(label)
        if value is None:
            raise LoopmlError(f"{path} row {row}: label {label!r} is not a finite number (or true/false)")
        if ts is None:
            when = received
        elif isinstance(ts, datetime):
            when = naive_local(ts)
        else:
            try:
                when = naive_local(datetime.fromisoformat(str(ts).strip()))
            except ValueError:
                raise LoopmlError(f"{path} row {row}: ts {ts!r} is not an ISO date or time") from None
        out.append(Feedback(request_id=str(request_id), label=value, ts=when))
    return out
