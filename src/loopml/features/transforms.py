"""Row-wise feature transforms: the one implementation for training and serving.

``apply_transforms`` is called on Arrow batches converted to numpy by the
offline builder and on the small arrays of a request batch by the online
assembler, so a transform can never be computed two different ways. It is
written by hand because the operations are one numpy expression each and no
library computes exactly these (with our missing-value rules) on both paths.

Conventions (all outputs are float64 arrays, missing or undefined -> ``features.default``):

- timestamps come in as ``datetime64[us]``; hours and days are read off the
  value as given (naive local time, or UTC for timezone-aware columns, which
  Arrow and the request parser both turn into UTC);
- ``hour``: 0-23; ``day_of_week``: 0 = Monday ... 6 = Sunday;
  ``is_weekend``: 1 on Saturday and Sunday;
- ``is_night``: 1 when the hour is 0-6, i.e. 00:00-06:59, exactly the
  ``is_night`` of the fraud-detection handbook (``tx_hour <= 6``) whose
  world the built-in example simulates;
- ``log``: the natural logarithm ``ln(x)``, undefined for ``x <= 0``;
- ``log1p``: ``log(1 + x)``, undefined for ``x <= -1``;
- ``ratio``: ``a / b``, undefined when ``b`` is 0 or either side is NaN;
- ``bucket``: with ``edges: [e0, e1, ..., ek]`` (strictly increasing), the
  index of the right-open bucket holding ``x``: 0 for ``x < e0``, ``i`` for
  ``e(i-1) <= x < e(i)``, ``k + 1`` for ``x >= ek``; undefined for NaN. An edge
  value itself falls in the bucket it opens (``x = e0`` gives 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.spec.model import Spec

__all__ = ["NIGHT_LAST_HOUR", "apply_transforms", "bucket_edges"]

FloatArray = npt.NDArray[np.float64]

#: The last hour (inclusive) that counts as night; night starts at 00:00.
NIGHT_LAST_HOUR = 6

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def _timestamps(name: str, values: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Microseconds since the epoch and a validity mask of a datetime64 array."""
    if not np.issubdtype(values.dtype, np.datetime64):
        raise LoopmlError(f"feature {name!r}: expected timestamps, got an array of {values.dtype}")
    as_us = values.astype("datetime64[us]")
    return as_us.view(np.int64), ~np.isnat(as_us)


def _numbers(name: str, values: npt.NDArray[np.generic]) -> FloatArray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LoopmlError(f"feature {name!r}: expected numbers, got an array of {values.dtype}") from None


def _hour(us: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    hours: npt.NDArray[np.int64] = np.floor_divide(np.mod(us, _US_PER_DAY), _US_PER_HOUR)
    return hours


def _weekday(us: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    days: npt.NDArray[np.int64] = np.mod(np.floor_divide(us, _US_PER_DAY) + _EPOCH_WEEKDAY, 7)
    return days


#: microseconds of the cycle each calendar transform repeats over (its distribution is seasonal within shorter spans)
CALENDAR_CYCLE_US: dict[str, int] = {
    "hour": _US_PER_DAY,
    "is_night": _US_PER_DAY,
    "day_of_week": 7 * _US_PER_DAY,
    "is_weekend": 7 * _US_PER_DAY,
}

_TIME_OPS: dict[str, Callable[[npt.NDArray[np.int64]], npt.NDArray[np.generic]]] = {
    "hour": _hour,
    "day_of_week": _weekday,
    "is_weekend": lambda us: _weekday(us) >= 5,
    "is_night": lambda us: _hour(us) <= NIGHT_LAST_HOUR,
}


def _time_op(op: str, name: str, values: npt.NDArray[np.generic], default: float) -> FloatArray:
    us, valid = _timestamps(name, values)
    result = _TIME_OPS[op](us).astype(np.float64)
    return np.where(valid, result, default)


def _log1p(name: str, values: npt.NDArray[np.generic], default: float) -> FloatArray:
    x = _numbers(name, values)
    ok = x > -1.0  # False for NaN too
    with np.errstate(all="ignore"):
        result = np.log1p(np.where(ok, x, 0.0))
    return np.where(ok, result, default)


def _log(name: str, values: npt.NDArray[np.generic], default: float) -> FloatArray:
    x = _numbers(name, values)
    ok = x > 0.0  # False for NaN too
    with np.errstate(all="ignore"):
        result = np.log(np.where(ok, x, 1.0))
    return np.where(ok, result, default)


def bucket_edges(name: str, edges: Sequence[float] | None) -> FloatArray:
    """The validated edges of a ``bucket`` transform (non-empty, finite, strictly increasing)."""
    array = np.asarray(edges if edges is not None else [], dtype=np.float64)
    if array.size == 0 or not np.all(np.isfinite(array)) or np.any(np.diff(array) <= 0):
        raise LoopmlError(f"features.transforms.{name}.edges: bucket needs finite, strictly increasing edges")
    return array


def _bucket(name: str, values: npt.NDArray[np.generic], edges: FloatArray, default: float) -> FloatArray:
    x = _numbers(name, values)
    index = np.searchsorted(edges, x, side="right").astype(np.float64)  # right-open: x == e[i] goes up
    return np.where(np.isnan(x), default, index)


def _ratio(names: list[str], a_values: npt.NDArray[np.generic], b_values: npt.NDArray[np.generic], default: float) -> FloatArray:
    a = _numbers(names[0], a_values)
    b = _numbers(names[1], b_values)
    ok = (b != 0.0) & ~np.isnan(a) & ~np.isnan(b)
    with np.errstate(all="ignore"):  # inf / inf and overflow become the default below
        result = np.divide(a, np.where(ok, b, 1.0))
    return np.where(ok & np.isfinite(result), result, default)


def apply_transforms(spec: Spec, columns: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, FloatArray]:
    """Compute every transform of ``spec.features.transforms``, in spec order.

    ``columns`` maps input names (request features, view outputs) to arrays of
    equal length, timestamps as ``datetime64[us]``. A transform may use the
    output of an earlier one. Returns only the transform outputs.
    """
    default = spec.features.default
    available: dict[str, npt.NDArray[np.generic]] = dict(columns)
    out: dict[str, FloatArray] = {}
    for name, transform in spec.features.transforms.items():
        inputs = []
        for input_name in transform.inputs:
            if input_name not in available:
                raise LoopmlError(f"features.transforms.{name}: input {input_name!r} is not available")
            inputs.append(available[input_name])
        if transform.op in _TIME_OPS:
            result = _time_op(transform.op, transform.inputs[0], inputs[0], default)
        elif transform.op == "log1p":
            result = _log1p(transform.inputs[0], inputs[0], default)
        elif transform.op == "log":
            result = _log(transform.inputs[0], inputs[0], default)
        elif transform.op == "bucket":
            result = _bucket(transform.inputs[0], inputs[0], bucket_edges(name, transform.edges), default)
        else:
            result = _ratio(transform.inputs, inputs[0], inputs[1], default)
        out[name] = result
        available[name] = result
    return out
