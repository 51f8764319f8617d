"""Categorical encodings of string request features: fitted on the training split, applied everywhere.

``features.encodings`` turns a string request feature (``merchant_category``)
into numeric model inputs. :func:`fit_encodings` learns the statistics from
the **training split rows only** (``loop/train.py`` calls it after the time
split, so no validation or test label ever reaches them);
:func:`apply_encodings` is the one implementation that turns strings into
columns for evaluation, the gate's re-scoring and serving. The fitted
:class:`EncodingState` is plain JSON and self-contained (it carries each
encoding's input and op). Training stores it with the model version's
reference statistics (``reference_stats["encodings"]``, written in the same
registry row as the version) and the version's signature lists the encoded
columns, after all other features, each with ``"encoding": NAME``; the server
loads the state with the version, so a version keeps serving with the
statistics it was trained with even after the spec changes.

Values (``n`` = training rows; ``n_c``, ``sum_c`` = rows and label sum of
category ``c``; ``m`` = ``smoothing``; ``prior`` = mean training label):

============= =================================== =========================== ===========================
op            a training category ``c``           null (missing)              unseen category
============= =================================== =========================== ===========================
``onehot``    1.0 in column ``NAME=c``            0.0 in every column         1.0 in ``NAME=__other__``
``frequency`` ``n_c / n``                         ``n_null / n``              0.0
``target``    ``(sum_c + m*prior) / (n_c + m)``   same formula over the nulls ``prior``
============= =================================== =========================== ===========================

- Null (``None``, an absent optional request feature, a NULL in the data) is
  its own category: one-hot gives it no column (all zeros), frequency its
  training share, target its smoothed mean (the prior when the training rows
  had no null). The empty string is a category like any other, not a null.
- ``onehot`` keeps the categories with at least ``min_frequency`` training
  rows, the ``max_categories`` most frequent of them (ties by value), one
  column each in that order, then ``NAME=__other__`` for every other non-null
  value (rare in training or never seen). Column names keep letters, digits,
  ``_ . -`` of the value and replace anything else with ``_`` (LightGBM
  refuses spaces and JSON characters in feature names); a clash gets ``_2``,
  ``_3``... The state maps categories to columns by position, so a renamed
  column still receives exactly its category.
- ``target`` is the m-estimate with ``m = smoothing`` and ``prior`` = the mean
  label of the training rows (the positive rate for a binary task): a rare
  category is pulled towards the prior. To keep a training row's own label
  out of its own encoded value, the **training rows** are encoded out of
  fold (``folds``, default 5, seeded by ``model.seed``; ``0`` turns it off):
  rows are dealt at random into ``folds`` folds and each fold is encoded with
  statistics (prior included) fitted on the other folds. Validation, test and
  served rows use the state fitted on all training rows. This is the cross
  fitting of scikit-learn's ``TargetEncoder.fit_transform``. The monitoring
  reference of a target-encoded column is therefore its out-of-fold training
  distribution, the one closest to what serving sees.

Why hand-written: scikit-learn's ``OneHotEncoder``/``TargetEncoder`` compute
the same numbers (the tests check ``target`` against ``TargetEncoder``), but
their fitted state is a pickled Python object, and the registry stores plain
JSON and unpickles nothing it did not write; applying them also costs a
validation pass per call, while serving one request here is a dict lookup
per encoding. Fitting factorises the strings with pandas (hash based, fast on
millions of rows) and sums with ``numpy.bincount``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from loopml.errors import LoopmlError
from loopml.spec.model import Encoding, Spec

__all__ = [
    "OTHER",
    "REFERENCE_KEY",
    "STATE_FORMAT",
    "EncodingState",
    "FittedEncoding",
    "apply_encodings",
    "encode_training_set",
    "fit_encodings",
]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]
ObjectArray = npt.NDArray[Any]

#: The one-hot column of every non-null value without a column of its own.
OTHER = "__other__"
STATE_FORMAT = "loopml.encodings/1"
#: Where a model version keeps its state: ``reference_stats[REFERENCE_KEY]`` (see :meth:`EncodingState.from_reference`).
REFERENCE_KEY = "encodings"
_UNSAFE = re.compile(r"[^\w.\-]")
_MAX_LABEL = 60
_SMALL_BATCH = 64  # up to this many rows a plain loop beats factorising (the serving path)


@dataclass(frozen=True)
class FittedEncoding:
    """One encoding's fitted statistics and output columns.

    ``levels`` (onehot): the categories that have a column, in column order.
    ``values`` (frequency, target): category -> encoded value; ``null`` and
    ``unknown`` are the values of a null and of an unseen category.
    """

    name: str
    input: str
    op: str
    rows: int
    columns: list[str]
    levels: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    null: float = 0.0
    unknown: float = 0.0
    prior: float | None = None
    smoothing: float | None = None

    @cached_property
    def level_index(self) -> dict[str, int]:
        """onehot: category -> its column position."""
        return {level: j for j, level in enumerate(self.levels)}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "input": self.input,
            "op": self.op,
            "rows": self.rows,
            "columns": list(self.columns),
        }
        if self.op == "onehot":
            body["levels"] = list(self.levels)
        else:
            body.update(values=dict(self.values), null=self.null, unknown=self.unknown)
        if self.op == "target":
            body.update(prior=self.prior, smoothing=self.smoothing)
        return body

    @classmethod
    def from_json(cls, body: Any, where: str) -> FittedEncoding:
        if not isinstance(body, dict):
            raise LoopmlError(f"{where}: expected an object")
        for key in ("name", "input", "op"):
            if not isinstance(body.get(key), str):
                raise LoopmlError(f"{where}: key {key!r} must be a string")
        op = body["op"]
        if op not in ("onehot", "frequency", "target"):
            raise LoopmlError(f"{where}: unknown op {op!r}")
        columns, rows = body.get("columns"), body.get("rows")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) or not isinstance(rows, int):
            raise LoopmlError(f"{where}: keys 'columns' (strings) and 'rows' (an integer) are required")
        if op == "onehot":
            levels = body.get("levels")
            if not isinstance(levels, list) or not all(isinstance(v, str) for v in levels) or len(columns) != len(levels) + 1:
                raise LoopmlError(f"{where}: key 'levels' must list one category per column but the last ({OTHER})")
            return cls(body["name"], body["input"], op, rows, columns, levels=levels)
        values = body.get("values")
        if not isinstance(values, dict) or not all(_is_number(v) for v in values.values()) or len(columns) != 1:
            raise LoopmlError(f"{where}: key 'values' must map categories to numbers, with one output column")
        numbers = {key: body.get(key) for key in ("null", "unknown", "prior", "smoothing")}
        if not _is_number(numbers["null"]) or not _is_number(numbers["unknown"]):
            raise LoopmlError(f"{where}: keys 'null' and 'unknown' must be numbers")
        return cls(
            body["name"],
            body["input"],
            op,
            rows,
            columns,
            values={str(k): float(v) for k, v in values.items()},
            null=float(numbers["null"]),  # type: ignore[arg-type]
            unknown=float(numbers["unknown"]),  # type: ignore[arg-type]
            prior=float(numbers["prior"]) if _is_number(numbers["prior"]) else None,  # type: ignore[arg-type]
            smoothing=float(numbers["smoothing"]) if _is_number(numbers["smoothing"]) else None,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class EncodingState:
    """Every fitted encoding of a model version, in ``features.encodings`` order."""

    encodings: list[FittedEncoding] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """All output columns, in model-input order."""
        return [c for enc in self.encodings for c in enc.columns]

    @property
    def inputs(self) -> list[str]:
        """The string request features the encodings read, each once."""
        return list(dict.fromkeys(enc.input for enc in self.encodings))

    def encoding_of(self) -> dict[str, str]:
        """Output column -> the name of the encoding that makes it."""
        return {c: enc.name for enc in self.encodings for c in enc.columns}

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "encodings": [enc.to_json() for enc in self.encodings]}

    @classmethod
    def from_json(cls, body: Any, where: str = "encodings") -> EncodingState:
        """Parse a stored state; ``{}`` (a version without encodings) is the empty state."""
        if body == {} or body is None:
            return cls()
        if not isinstance(body, dict) or body.get("format") != STATE_FORMAT or not isinstance(body.get("encodings"), list):
            raise LoopmlError(f"{where}: not a {STATE_FORMAT} encoding state")
        return cls([FittedEncoding.from_json(e, f"{where}.encodings.{i}") for i, e in enumerate(body["encodings"])])

    @classmethod
    def from_reference(cls, reference: Mapping[str, Any], where: str = "model version") -> EncodingState:
        """The state stored in a model version's training-time statistics (empty for a version without encodings)."""
        return cls.from_json(reference.get(REFERENCE_KEY), f"{where}: reference_stats.{REFERENCE_KEY}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> str | None:
    """A category as text, or ``None`` for a null (``None`` or a float NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _distinct(values: ObjectArray) -> tuple[IndexArray, list[str | None]]:
    """Each row's index into the distinct category texts (``None`` for null), in order of first appearance.

    pandas factorises the raw values (hash based); only the distinct values go
    through :func:`_text`, so ``5411`` and ``"5411"`` are one category.
    """
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    first: dict[str | None, int] = {}
    remap = np.array([first.setdefault(_text(u), len(first)) for u in uniques], dtype=np.int64)
    return remap[np.asarray(codes, dtype=np.int64)], list(first)


def _lookup(values: ObjectArray, fn: Callable[[str | None], float], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """``fn`` of every value's category text; distinct values are looked up once in large batches."""
    if len(values) <= _SMALL_BATCH:
        return np.array([fn(_text(v)) for v in values], dtype=dtype)
    codes, texts = _distinct(values)
    return np.array([fn(x) for x in texts], dtype=dtype)[codes]


def _onehot_columns(name: str, levels: list[str]) -> list[str]:
    other = f"{name}={OTHER}"
    used = {other}
    columns = []
    for level in levels:
        label = _UNSAFE.sub("_", level)[:_MAX_LABEL] or "_"
        column, k = f"{name}={label}", 1
        while column in used:
            k += 1
            column = f"{name}={label}_{k}"
        used.add(column)
        columns.append(column)
    return [*columns, other]


def _fit_one(name: str, enc: Encoding, values: ObjectArray, labels: FloatArray) -> FittedEncoding:
    """Fit one encoding on exactly these (training) rows."""
    n = len(values)
    if n == 0:
        raise LoopmlError(f"features.encodings.{name}: no training rows to fit the encoding on")
    codes, texts = _distinct(values)
    counts = np.bincount(codes, minlength=len(texts))
    seen = [(j, x) for j, x in enumerate(texts) if x is not None]
    null_j = texts.index(None) if None in texts else None
    n_null = int(counts[null_j]) if null_j is not None else 0
    if enc.op == "onehot":
        order = sorted(seen, key=lambda jx: (-int(counts[jx[0]]), jx[1]))
        levels = [x for j, x in order if counts[j] >= enc.min_frequency][: enc.max_categories]
        return FittedEncoding(name, enc.input, "onehot", n, _onehot_columns(name, levels), levels=levels)
    if enc.op == "frequency":
        shares = {x: float(counts[j] / n) for j, x in seen}
        return FittedEncoding(name, enc.input, "frequency", n, [name], values=shares, null=n_null / n, unknown=0.0)
    m = float(enc.smoothing)
    y = np.asarray(labels, dtype=np.float64)
    prior = float(y.mean())
    sums = np.bincount(codes, weights=y, minlength=len(texts))
    means = {x: float((sums[j] + m * prior) / (counts[j] + m)) for j, x in seen}
    null = float((sums[null_j] + m * prior) / (n_null + m)) if null_j is not None else prior
    return FittedEncoding(name, enc.input, "target", n, [name], values=means, null=null, unknown=prior, prior=prior, smoothing=m)


def _apply_one(enc: FittedEncoding, values: ObjectArray) -> dict[str, FloatArray]:
    if enc.op == "onehot":
        index, other = enc.level_index, len(enc.levels)
        matrix = np.zeros((len(values), len(enc.columns)), dtype=np.float64)
        if len(values) <= _SMALL_BATCH:
            for i, value in enumerate(values):
                x = _text(value)
                if x is not None:
                    matrix[i, index.get(x, other)] = 1.0
        else:
            positions = _lookup(values, lambda x: -1 if x is None else index.get(x, other), np.int64)
            hit = positions >= 0
            matrix[np.flatnonzero(hit), positions[hit]] = 1.0
        return dict(zip(enc.columns, matrix.T, strict=True))
    mapping, null, unknown = enc.values, enc.null, enc.unknown
    return {enc.columns[0]: _lookup(values, lambda x: null if x is None else mapping.get(x, unknown), np.float64)}


def _column(strings: Mapping[str, ObjectArray], name: str, enc_name: str) -> ObjectArray:
    if name not in strings:
        raise LoopmlError(f"features.encodings.{enc_name}: string feature {name!r} is not available")
    return np.asarray(strings[name], dtype=object)


def fit_encodings(spec: Spec, strings: Mapping[str, ObjectArray], labels: npt.ArrayLike, rows: IndexArray) -> EncodingState:
    """Fit every ``features.encodings`` entry on the training ``rows`` of ``strings`` and ``labels``.

    ``strings`` maps each input column to one value per row (``None`` = null),
    aligned with ``labels``. Only ``rows`` are read: no other row's value or
    label can change the state.
    """
    y = np.asarray(labels, dtype=np.float64)[rows]
    fitted = [_fit_one(name, enc, _column(strings, enc.input, name)[rows], y) for name, enc in spec.features.encodings.items()]
    return EncodingState(fitted)


def apply_encodings(state: EncodingState, strings: Mapping[str, ObjectArray]) -> dict[str, FloatArray]:
    """The encoded columns (float64) of ``strings`` under a fitted state; never fails on a value."""
    out: dict[str, FloatArray] = {}
    for enc in state.encodings:
        out.update(_apply_one(enc, _column(strings, enc.input, enc.name)))
    return out


def _fold_of(n: int, folds: int, seed: int) -> IndexArray:
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n, dtype=np.int64) % folds
    return fold


def _out_of_fold(name: str, enc: Encoding, values: ObjectArray, labels: FloatArray, seed: int) -> FloatArray:
    """Target encoding of training rows, each fold encoded by statistics of the other folds."""
    folds = min(enc.folds, len(values))
    fold = _fold_of(len(values), folds, seed)
    out = np.empty(len(values), dtype=np.float64)
    for k in range(folds):
        held = fold == k
        fitted = _fit_one(name, enc, values[~held], labels[~held])
        out[held] = _apply_one(fitted, values[held])[name]
    return out


def encode_training_set(
    spec: Spec, strings: Mapping[str, ObjectArray], labels: npt.ArrayLike, train_rows: IndexArray, seed: int
) -> tuple[EncodingState, dict[str, FloatArray]]:
    """The state fitted on ``train_rows`` and the encoded columns of every row.

    Rows outside ``train_rows`` get :func:`apply_encodings` of that state;
    training rows of a ``target`` encoding with ``folds >= 2`` get their
    out-of-fold values (see the module docstring).
    """
    state = fit_encodings(spec, strings, labels, train_rows)
    columns = apply_encodings(state, strings)
    y = np.asarray(labels, dtype=np.float64)
    for name, enc in spec.features.encodings.items():
        if enc.op == "target" and enc.folds >= 2 and len(train_rows) >= 2:
            values = _column(strings, enc.input, name)[train_rows]
            column = columns[name].copy()
            column[train_rows] = _out_of_fold(name, enc, values, y[train_rows], seed)
            columns[name] = column
    return state, columns
