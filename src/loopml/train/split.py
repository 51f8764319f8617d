"""Train / validation / test splits: by time (the default) or at random.

Time split (``split.method: time``), built backwards from the end of the data
on day boundaries so that bounds read as whole days::

    end  = midnight after the last timestamp
    test  = [end - test_days, end)
    valid = [test.start - gap - valid_days, test.start - gap)
    train = [valid.start - gap - train_days, valid.start - gap)   (or everything earlier)

``gap`` is ``split.gap`` and defaults to ``label.delay``: a label is only known
that long after the event, so rows inside the gap would leak the future into
the earlier split. Rows in a gap (or before the train window) belong to no
split; no row is ever in two splits.

Random split (``split.method: random``) is for data without time: seeded, and
stratified on the label for binary tasks so every split keeps the class
balance. scikit-learn's ``train_test_split`` does the drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

from loopml.errors import LoopmlError
from loopml.spec.model import Spec

IndexArray = npt.NDArray[np.int64]
SPLITS = ("train", "valid", "test")
_DAY = np.timedelta64(1, "D")
_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class SplitBounds:
    """One split's rows and (for a time split) its half-open time window ``[start, end)``."""

    rows: int
    start: np.datetime64 | None = None
    end: np.datetime64 | None = None

    def label(self) -> str:
        """``2025-04-01..2025-04-28`` (inclusive days), or ``N rows`` for a random split."""
        if self.start is None or self.end is None:
            return f"{self.rows} rows"
        last = self.end - np.timedelta64(1, "us")
        return f"{np.datetime_as_string(self.start, unit='D')}..{np.datetime_as_string(last, unit='D')}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows}
        if self.start is not None and self.end is not None:
            out["start"] = np.datetime_as_string(self.start, unit="s")
            out["end"] = np.datetime_as_string(self.end, unit="s")
        return out


@dataclass(frozen=True)
class SplitResult:
    """Row indices of each split (sorted, disjoint) and their bounds for lineage."""

    method: str
    train: IndexArray
    valid: IndexArray
    test: IndexArray
    bounds: dict[str, SplitBounds]
    gap_days: float | None = None

    def indices(self, name: str) -> IndexArray:
        result: IndexArray = {"train": self.train, "valid": self.valid, "test": self.test}[name]
        return result

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, **{name: self.bounds[name].to_json() for name in SPLITS}}
        if self.gap_days is not None:
            out["gap_days"] = self.gap_days
        return out


def split_rows(spec: Spec, y: npt.NDArray[Any], timestamps: npt.NDArray[np.datetime64] | None) -> SplitResult:
    """Split rows according to ``spec.split``; ``y`` is the (already encoded) label.

    Raises :class:`LoopmlError` for too little time span, an empty split or a
    binary train split holding a single class.
    """
    if spec.split.method == "time":
        if timestamps is None:
            raise LoopmlError("split.method: 'time' needs a timestamp column on the label source; use method: random")
        result = time_split(timestamps, spec.split.train_days, spec.split.valid_days, spec.split.test_days, _gap(spec))
    else:
        result = random_split(
            len(y), spec.split.valid_fraction, spec.split.test_fraction, spec.model.seed, y if spec.task == "binary" else None
        )
    if spec.task == "binary":
        check_two_classes(result, y)
    return result


def _gap(spec: Spec) -> timedelta:
    return spec.split.gap if spec.split.gap is not None else spec.label.delay


def _days(value: float) -> np.timedelta64:
    return np.timedelta64(round(value * _US_PER_DAY), "us")


def time_split(
    timestamps: npt.NDArray[np.datetime64],
    train_days: float | None,
    valid_days: float,
    test_days: float,
    gap: timedelta,
) -> SplitResult:
    """Backwards time split on day boundaries (see the module docstring)."""
    ts = timestamps.astype("datetime64[us]")
    if len(ts) == 0:
        raise LoopmlError("split: the training set has no rows")
    if np.isnat(ts).any():
        nulls = int(np.isnat(ts).sum())
        raise LoopmlError(f"split: the timestamp column has {nulls} null value(s); a time split needs every timestamp")
    first_day = ts.min().astype("datetime64[D]").astype("datetime64[us]")
    end = (ts.max().astype("datetime64[D]") + _DAY).astype("datetime64[us]")
    gap_td = np.timedelta64(int(gap.total_seconds() * 1_000_000), "us")
    gap_days = gap.total_seconds() / 86_400
    test_start = end - _days(test_days)
    valid_end = test_start - gap_td
    valid_start = valid_end - _days(valid_days)
    train_end = valid_start - gap_td
    train_start = train_end - _days(train_days) if train_days is not None else None

    span_days = float((end - first_day) / _DAY)
    needed = test_days + valid_days + 2 * gap_days + (train_days or 0.0)
    if span_days < needed or (train_start is None and train_end <= first_day):
        parts = ([f"train {train_days:g}"] if train_days is not None else ["train >0"]) + [
            f"gap {gap_days:g}",
            f"valid {valid_days:g}",
            f"gap {gap_days:g}",
            f"test {test_days:g}",
        ]
        have = f"{np.datetime_as_string(first_day, unit='D')}..{np.datetime_as_string(end - np.timedelta64(1, 'us'), unit='D')}"
        more = "" if train_days is not None else " more than"
        raise LoopmlError(
            f"split: the data spans {span_days:g} days ({have}) but the time split needs{more} {needed:g} "
            f"({' + '.join(parts)}); lower split.train_days/valid_days/test_days/gap or add data"
        )

    windows = {
        "train": (train_start, train_end),
        "valid": (valid_start, valid_end),
        "test": (test_start, end),
    }
    indices: dict[str, IndexArray] = {}
    bounds: dict[str, SplitBounds] = {}
    for name, (start, stop) in windows.items():
        mask = ts < stop
        if start is not None:
            mask &= ts >= start
        indices[name] = np.flatnonzero(mask).astype(np.int64)
        shown_start = start if start is not None else first_day
        bounds[name] = SplitBounds(rows=len(indices[name]), start=shown_start, end=stop)
        if len(indices[name]) == 0:
            raise LoopmlError(f"split: {name} split ({bounds[name].label()}) is empty; check split.*_days and the data's dates")
    return SplitResult("time", indices["train"], indices["valid"], indices["test"], bounds, gap_days)


def random_split(
    n: int, valid_fraction: float, test_fraction: float, seed: int, stratify: npt.NDArray[Any] | None
) -> SplitResult:
    """Seeded random split; stratified on ``stratify`` when every class has at least 3 rows."""
    if valid_fraction + test_fraction >= 1:
        raise LoopmlError(
            f"split: valid_fraction {valid_fraction:g} + test_fraction {test_fraction:g} must leave rows for training (sum < 1)"
        )
    all_rows = np.arange(n, dtype=np.int64)
    if stratify is not None:
        _, counts = np.unique(stratify, return_counts=True)
        if len(counts) < 2 or counts.min() < 3:
            stratify = None
    try:
        rest, test = train_test_split(all_rows, test_size=test_fraction, random_state=seed, stratify=stratify)
        inner = stratify[rest] if stratify is not None else None
        train, valid = train_test_split(rest, test_size=valid_fraction / (1 - test_fraction), random_state=seed, stratify=inner)
    except ValueError as exc:
        raise LoopmlError(f"split: cannot split {n} row(s) at random: {exc}") from None
    parts = {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}
    for name, idx in parts.items():
        if len(idx) == 0:
            raise LoopmlError(f"split: {name} split is empty ({n} rows in total); add data or change split.*_fraction")
    bounds = {name: SplitBounds(rows=len(idx)) for name, idx in parts.items()}
    return SplitResult("random", parts["train"], parts["valid"], parts["test"], bounds)


def check_two_classes(result: SplitResult, y: npt.NDArray[Any]) -> None:
    """A binary model cannot learn from a train split holding a single label value."""
    classes = np.unique(y[result.train])
    if len(classes) < 2:
        only = int(classes[0]) if len(classes) else "nothing"
        raise LoopmlError(
            f"split: train split ({result.bounds['train'].label()}) has only label {only}; "
            "a binary model needs both classes (widen split.train_days or check label.positive)"
        )
