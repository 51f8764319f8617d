"""Read a training set Parquet file into the arrays the trainer needs.

The feature store writes the training set: the label source's columns (with
the label and the source timestamp) followed by the numeric feature columns,
whose names the caller passes in, and the string columns that categorical
encodings read (``features.encodings``; object arrays of ``str``, ``None``
for NULL, integer columns as their decimal text like a request's ``"5411"``).
Rows without a label (NULL: a blank cell or not known yet; NaN) are set aside
with a warning that counts them; a missing
or non-numeric feature column, or a string column of another type, is an error
naming the file and the column (the trainer reports a missing encoding input,
naming its ``features.encodings`` key). NULL feature values become NaN.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopml.errors import DataError
from loopml.spec.model import Spec

FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]


def column_type(arrow_type: pa.DataType) -> str | None:
    """The spec's type name of a numeric Arrow type (``int``/``float``/``bool``), else ``None``."""
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    return None


@dataclass
class TrainingData:
    """Label, time, entity and numeric columns of one training set, rows aligned."""

    path: Path
    feature_names: list[str]
    y: npt.NDArray[Any]
    columns: dict[str, FloatArray]
    types: dict[str, str]
    timestamps: npt.NDArray[np.datetime64] | None = None
    entity_ids: npt.NDArray[Any] | None = None
    entity_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    strings: dict[str, ObjectArray] = field(default_factory=dict)
    encoded: dict[str, str] = field(default_factory=dict)

    def matrix(self, names: list[str], rows: npt.NDArray[np.int64] | None = None) -> FloatArray:
        """Feature matrix (float64, NaN for NULL) of ``names`` in that order."""
        n = len(self.y) if rows is None else len(rows)
        if not names:
            return np.zeros((n, 0), dtype=np.float64)
        out: FloatArray = np.column_stack([self.columns[c] if rows is None else self.columns[c][rows] for c in names])
        return out

    def add_encoded(self, columns: dict[str, FloatArray], encoding_of: dict[str, str]) -> None:
        """Append encoded feature columns (``encoding_of``: column -> encoding name) after the others."""
        for name, values in columns.items():
            if name in self.columns:
                raise DataError(f"{self.path}: encoded column {name!r} clashes with a feature column of the same name")
            self.columns[name] = values
            self.types[name] = "float"
            self.encoded[name] = encoding_of[name]
            self.feature_names.append(name)

    @property
    def signature(self) -> list[dict[str, str]]:
        """Model input columns in order; an encoded column also names its encoding."""
        out = []
        for n in self.feature_names:
            entry = {"name": n, "type": self.types[n]}
            if n in self.encoded:
                entry["encoding"] = self.encoded[n]
            out.append(entry)
        return out


def _timestamps(column: pa.ChunkedArray, where: str) -> npt.NDArray[np.datetime64]:
    if pa.types.is_date(column.type):
        column = pc.cast(column, pa.timestamp("us"))
    if not pa.types.is_timestamp(column.type):
        raise DataError(f"{where}: timestamp column must be a timestamp or date, not {column.type}")
    if column.type.tz is not None:
        column = pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
    return np.asarray(column.to_numpy(zero_copy_only=False)).astype("datetime64[us]")


def _label(spec: Spec, column: pa.ChunkedArray, where: str) -> npt.NDArray[Any]:
    if spec.task == "regression":
        if column_type(column.type) is None:
            raise DataError(f"{where}: a regression label must be numeric, not {column.type}")
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    values = np.asarray(column.to_numpy(zero_copy_only=False))
    positive = spec.label.positive if spec.label.positive is not None else 1
    encoded: npt.NDArray[np.int8] = np.asarray(values == positive).astype(np.int8)
    if not encoded.any():
        seen = ", ".join(repr(v) for v in pc.unique(column).to_pylist()[:5])
        raise DataError(f"{where}: label.positive {positive!r} never occurs (values seen: {seen}); a binary model needs both")
    return encoded


def _strings(column: pa.ChunkedArray, where: str) -> ObjectArray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_integer(column.type)):
        raise DataError(f"{where}: an encoded column must hold strings (or integers), not {column.type}")
    return np.asarray(pc.cast(column, pa.string()).to_numpy(zero_copy_only=False), dtype=object)


def load_training_set(
    spec: Spec,
    path: Path,
    feature_columns: list[str],
    optional_columns: Iterable[str] = (),
    string_columns: Iterable[str] = (),
) -> TrainingData:
    """Load label, timestamp, first entity key and ``feature_columns`` (+ any numeric ``optional_columns``).

    ``string_columns`` (the inputs of ``features.encodings``, plus those the
    champion's encodings read) are loaded into ``strings`` when present; the
    caller decides which of them are required.
    """
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: cannot read the training set ({str(exc).splitlines()[0]})") from None
    names = set(schema.names)
    label_col = spec.label.column
    ts_col = spec.sources[spec.label.source].timestamp if spec.label.source in spec.sources else None
    entity_key = next(iter(spec.entities.values())).key if spec.entities else None
    if label_col not in names:
        raise DataError(f"{path}: label column {label_col!r} (label.column) is missing")
    if not feature_columns:
        raise DataError(f"{path}: no feature columns were given")
    for name in feature_columns:
        if name == label_col:
            raise DataError(f"{path}: feature column {name!r} is the label (label.column); remove it from the features")
        if name not in names:
            raise DataError(f"{path}: feature column {name!r} is missing")
        if column_type(schema.field(name).type) is None:
            raise DataError(f"{path}: feature column {name!r} has type {schema.field(name).type}; features must be numeric")
    extra = [n for n in dict.fromkeys(optional_columns) if n in names and n not in feature_columns]
    extra = [n for n in extra if column_type(schema.field(n).type) is not None]
    wanted = list(dict.fromkeys([label_col, *feature_columns, *extra]))
    if ts_col is not None and ts_col in names:
        wanted.append(ts_col)
    if entity_key is not None and entity_key in names and entity_key not in wanted:
        wanted.append(entity_key)
    string_names = [n for n in dict.fromkeys(string_columns) if n in names]
    wanted += [n for n in string_names if n not in wanted]
    table = pq.read_table(path, columns=wanted)

    warnings: list[str] = []
    known = pc.invert(pc.is_null(table.column(label_col), nan_is_null=True))
    dropped = table.num_rows - int(pc.sum(known).as_py() or 0)
    if dropped:
        table = table.filter(known)
        what = f"{dropped} of {dropped + table.num_rows} row(s) have no label {label_col!r} (blank, NaN or not known yet)"
        warnings.append(f"{path}: {what}; set aside, training uses the {table.num_rows} labelled row(s)")
    if table.num_rows == 0:
        raise DataError(f"{path}: the training set has no row with a known label (label.column {label_col!r})")

    columns: dict[str, FloatArray] = {}
    types: dict[str, str] = {}
    for name in [*feature_columns, *extra]:
        types[name] = column_type(schema.field(name).type) or "float"
        columns[name] = np.asarray(pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    timestamps = _timestamps(table.column(ts_col), f"{path}: column {ts_col!r}") if ts_col in table.column_names else None
    entity_ids = None
    if entity_key is not None and entity_key in table.column_names:
        entity_ids = np.asarray(table.column(entity_key).to_numpy(zero_copy_only=False))
    return TrainingData(
        path=path,
        feature_names=list(feature_columns),
        y=_label(spec, table.column(label_col), f"{path}: column {label_col!r}"),
        columns=columns,
        types=types,
        timestamps=timestamps,
        entity_ids=entity_ids,
        entity_key=entity_key if entity_ids is not None else None,
        warnings=warnings,
        strings={n: _strings(table.column(n), f"{path}: column {n!r}") for n in string_names},
    )
