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
balance. scikit-learn's ``train_test_split`` does the drawing. With
``split.group: COLUMN`` (an entity key) the draw is by group instead
(``GroupShuffleSplit``): all rows of one entity land in one split, and
:func:`check_entity_leakage` proves that no entity sits in two splits.

Cross-validation folds for model selection: :func:`kfold_splits` (stratified
or grouped k-fold for data without time) and :func:`rolling_origin_splits`
(prequential validation for time data: the origin moves forward by a step,
each fold trains on the window before it and tests after a gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, StratifiedKFold, train_test_split

from loopml.errors import LoopmlError
from loopml.spec.model import Spec
from loopml.tasks import task_of

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


def split_rows(
    spec: Spec,
    y: npt.NDArray[Any],
    timestamps: npt.NDArray[np.datetime64] | None,
    groups: npt.NDArray[Any] | None = None,
) -> SplitResult:
    """Split rows according to ``spec.split``; ``y`` is the (already encoded) label.

    ``groups`` holds the ``split.group`` column per row (random splits only).

    Raises :class:`LoopmlError` for too little time span, an empty split or a
    binary train split holding a single class.
    """
    classifier = task_of(spec.task).classifier
    if spec.split.method == "time":
        if timestamps is None:
            raise LoopmlError("split.method: 'time' needs a timestamp column on the label source; use method: random")
        result = time_split(timestamps, spec.split.train_days, spec.split.valid_days, spec.split.test_days, _gap(spec))
    elif groups is not None:
        result = group_split(len(y), spec.split.valid_fraction, spec.split.test_fraction, spec.model.seed, groups)
        check_entity_leakage(result, groups, spec.split.group or "group")
    else:
        result = random_split(
            len(y), spec.split.valid_fraction, spec.split.test_fraction, spec.model.seed, y if classifier else None
        )
    if classifier:
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


def group_split(n: int, valid_fraction: float, test_fraction: float, seed: int, groups: npt.NDArray[Any]) -> SplitResult:
    """Seeded random split by group: every group's rows land in exactly one split."""
    if valid_fraction + test_fraction >= 1:
        raise LoopmlError(
            f"split: valid_fraction {valid_fraction:g} + test_fraction {test_fraction:g} must leave rows for training (sum < 1)"
        )
    if len(groups) != n:
        raise LoopmlError(f"split: {len(groups)} group values for {n} rows")
    all_rows = np.arange(n, dtype=np.int64)
    if len(np.unique(groups)) < 3:
        raise LoopmlError(f"split: a group split needs at least 3 distinct groups, got {len(np.unique(groups))}")
    rest, test = next(GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(all_rows, groups=groups))
    inner = GroupShuffleSplit(n_splits=1, test_size=valid_fraction / (1 - test_fraction), random_state=seed)
    train_pos, valid_pos = next(inner.split(rest, groups=groups[rest]))
    parts = {"train": np.sort(rest[train_pos]), "valid": np.sort(rest[valid_pos]), "test": np.sort(test)}
    for name, idx in parts.items():
        if len(idx) == 0:
            raise LoopmlError(f"split: {name} split is empty ({n} rows in total); add data or change split.*_fraction")
    bounds = {name: SplitBounds(rows=len(idx)) for name, idx in parts.items()}
    return SplitResult(
        "random", parts["train"].astype(np.int64), parts["valid"].astype(np.int64), parts["test"].astype(np.int64), bounds
    )


def check_entity_leakage(result: SplitResult, groups: npt.NDArray[Any], column: str) -> None:
    """Raise when one value of ``column`` has rows in two splits."""
    seen: dict[str, set[Any]] = {name: set(np.unique(groups[result.indices(name)]).tolist()) for name in SPLITS}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            shared = seen[first] & seen[second]
            if shared:
                example = sorted(shared, key=str)[0]
                raise LoopmlError(
                    f"split: {column} {example!r} (and {len(shared) - 1} more) has rows in both the {first} and {second} splits"
                )


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: training and evaluation rows (sorted, disjoint)."""

    train: IndexArray
    test: IndexArray
    bounds: dict[str, SplitBounds]


def kfold_splits(
    n: int, k: int, seed: int, stratify: npt.NDArray[Any] | None = None, groups: npt.NDArray[Any] | None = None
) -> list[Fold]:
    """k folds for data without time: grouped when ``groups`` is given, else stratified when ``stratify`` is."""
    if k < 2:
        raise LoopmlError(f"split: k-fold needs k >= 2, got {k}")
    rows = np.arange(n, dtype=np.int64)
    splitter: Any
    try:
        if groups is not None:
            splitter = GroupKFold(n_splits=k).split(rows, groups=groups)
        elif stratify is not None:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, stratify)
        else:
            splitter = KFold(n_splits=k, shuffle=True, random_state=seed).split(rows)
        folds = list(splitter)
    except ValueError as exc:
        raise LoopmlError(f"split: cannot make {k} folds of {n} row(s): {exc}") from None
    return [
        Fold(
            np.sort(train).astype(np.int64),
            np.sort(test).astype(np.int64),
            {"train": SplitBounds(len(train)), "test": SplitBounds(len(test))},
        )
        for train, test in folds
    ]


def rolling_origin_splits(
    timestamps: npt.NDArray[np.datetime64],
    train_days: float,
    test_days: float,
    gap: timedelta,
    step_days: float | None = None,
    folds: int | None = None,
) -> list[Fold]:
    """Prequential folds: ``[origin - gap - train_days, origin - gap)`` trains, ``[origin, origin + test_days)`` tests.

    The first origin is the earliest day that leaves ``train_days + gap`` of
    history; origins then advance by ``step_days`` (default ``test_days``)
    while a full test window fits; ``folds`` keeps the latest that many.
    """
    ts = timestamps.astype("datetime64[us]")
    if len(ts) == 0 or np.isnat(ts).any():
        raise LoopmlError("split: rolling-origin validation needs a timestamp on every row")
    first = ts.min().astype("datetime64[D]").astype("datetime64[us]")
    end = (ts.max().astype("datetime64[D]") + _DAY).astype("datetime64[us]")
    gap_td = np.timedelta64(int(gap.total_seconds() * 1_000_000), "us")
    step = _days(step_days if step_days is not None else test_days)
    if step <= np.timedelta64(0, "us"):
        raise LoopmlError("split: rolling-origin step_days must be positive")
    origins = []
    origin = first + _days(train_days) + gap_td
    while origin + _days(test_days) <= end:
        origins.append(origin)
        origin = origin + step
    if folds is not None:
        origins = origins[-folds:]
    if not origins:
        span = float((end - first) / _DAY)
        raise LoopmlError(
            f"split: the data spans {span:g} days but one rolling-origin fold needs "
            f"{train_days:g} + gap {gap.total_seconds() / 86_400:g} + {test_days:g} days"
        )
    out = []
    for origin in origins:
        train_start, train_end = origin - gap_td - _days(train_days), origin - gap_td
        test_end = origin + _days(test_days)
        train = np.flatnonzero((ts >= train_start) & (ts < train_end)).astype(np.int64)
        test = np.flatnonzero((ts >= origin) & (ts < test_end)).astype(np.int64)
        bounds = {
            "train": SplitBounds(len(train), train_start, train_end),
            "test": SplitBounds(len(test), origin, test_end),
        }
        out.append(Fold(train, test, bounds))
    return out
