"""Feature vectors for online requests: online store rows + request features + transforms.

:class:`FeatureAssembler` turns a batch of requests (entity keys and request
features, as they arrive in a predict body) into the model matrix, in
:func:`~loopml.features.definitions.feature_columns` order. The per-request
path stays lean: each view is read from the store once per batch, values go
straight into numpy columns (no DataFrame), and the transforms are computed
by :func:`~loopml.features.transforms.apply_transforms`, the same function the
offline builder uses.

Rules:

- Entities are looked up by their key column name (``customer_id``) or their
  entity name (``customer``). An entity that is absent from the request or
  unknown to the store gives its views the missing-history values (counts and
  sums 0, the rest ``features.default``) and is listed in
  ``missing_entities``; it never fails the request.
- Request features: numbers may be JSON numbers or numeric strings; booleans
  ``true``/``false``/``0``/``1``; timestamps ISO-8601 strings (an offset is
  converted to UTC; naive means UTC like the data) or epoch seconds. A missing
  required or unparsable feature raises :class:`RequestFeatureError` naming the
  field. An optional feature left out is NaN (NaT for timestamps), as a NULL
  would be offline. Unknown keys are ignored.
- ttl: the request's time is its first timestamp request feature (the event
  time, ``tx_datetime`` in the fraud example), or the current UTC time when the
  spec has none. A view's values count as missing when the entity's latest
  event known to the store is older than the ttl at that time, exactly as the
  offline ttl does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.features.definitions import (
    LAST_EVENT_KEY,
    ViewOutput,
    feature_columns,
    missing_value,
    request_time_feature,
    view_key,
    view_outputs,
)
from loopml.features.online import OnlineStore, key_text
from loopml.features.transforms import apply_transforms
from loopml.spec.model import RequestFeature, Spec

__all__ = ["AssembledBatch", "FeatureAssembler", "Request", "RequestFeatureError", "parse_request_feature"]

Request = tuple[Mapping[str, Any], Mapping[str, Any]]
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
_MIN_EPOCH_SECONDS = (datetime.min - _EPOCH).total_seconds()
_MAX_EPOCH_SECONDS = (datetime.max - _EPOCH).total_seconds()
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class RequestFeatureError(LoopmlError):
    """A request field is missing or unparsable; ``field`` is its path (``features.tx_amount``)."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.message = message
        self.index = index
        where = f"instances.{index}." if index is not None else ""
        super().__init__(f"{where}{field}: {message}")


def _number(value: Any, integral: bool) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    if integral and not number.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return number


def _bool(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return 1.0 if value.strip().lower() in _TRUE else 0.0
    raise ValueError(f"expected true or false, got {value!r}")


def _timestamp_us(value: Any) -> int:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(f"expected an ISO-8601 time or epoch seconds, got {value!r}") from None
            return _timestamp_us(seconds)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and _MIN_EPOCH_SECONDS <= value <= _MAX_EPOCH_SECONDS):
            raise ValueError(f"epoch seconds out of range (years 1-9999), got {value!r}")
        return round(value * 1_000_000)
    else:
        raise ValueError(f"expected an ISO-8601 time or epoch seconds, got {type(value).__name__}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - _EPOCH) // _ONE_US


def parse_request_feature(name: str, rule: RequestFeature, value: Any) -> float | int | str | None:
    """One request feature as the assembler uses it: float, epoch microseconds (timestamps) or text.

    ``None`` means absent. Raises :class:`RequestFeatureError` naming ``features.<name>``.
    """
    if value is None:
        if rule.required:
            raise RequestFeatureError(f"features.{name}", "required request feature is missing")
        return None
    try:
        if rule.type == "timestamp":
            return _timestamp_us(value)
        if rule.type == "bool":
            return _bool(value)
        if rule.type == "string":
            return str(value)
        return _number(value, integral=rule.type == "int")
    except (ValueError, OverflowError) as exc:
        raise RequestFeatureError(f"features.{name}", str(exc)) from None


@dataclass(frozen=True)
class AssembledBatch:
    """The model matrix of a request batch, rows in request order."""

    columns: list[str]
    matrix: npt.NDArray[np.float64]
    missing_entities: list[list[str]] = field(default_factory=list)

    def values(self, i: int) -> dict[str, float]:
        """Feature name -> value of request ``i``."""
        return dict(zip(self.columns, self.matrix[i].tolist(), strict=True))


class FeatureAssembler:
    """Builds feature vectors from an :class:`~loopml.features.online.OnlineStore` and request features."""

    def __init__(self, spec: Spec, store: OnlineStore) -> None:
        self.spec = spec
        self.store = store
        self.columns = feature_columns(spec)
        self._outputs: dict[str, list[ViewOutput]] = {v: view_outputs(spec, v) for v in spec.features.views}
        self._time_feature = request_time_feature(spec)

    def _request_columns(self, requests: Sequence[Request]) -> dict[str, npt.NDArray[np.generic]]:
        columns: dict[str, npt.NDArray[np.generic]] = {}
        for name, rule in self.spec.features.request.items():
            if rule.type == "string":
                continue
            raw: list[float | int | str | None] = []
            for i, (_, features) in enumerate(requests):
                try:
                    raw.append(parse_request_feature(name, rule, features.get(name)))
                except RequestFeatureError as exc:
                    raise RequestFeatureError(exc.field, exc.message, i if len(requests) > 1 else None) from None
            if rule.type == "timestamp":
                nat = np.iinfo(np.int64).min  # the int64 pattern of NaT
                columns[name] = np.array([nat if v is None else v for v in raw], dtype=np.int64).view("datetime64[us]")
            else:
                columns[name] = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
        return columns

    def _request_times(self, columns: Mapping[str, npt.NDArray[np.generic]], n: int) -> npt.NDArray[np.int64]:
        now = (datetime.now(UTC).replace(tzinfo=None) - _EPOCH) // _ONE_US
        if self._time_feature is None:
            return np.full(n, now, dtype=np.int64)
        times = columns[self._time_feature]
        return np.where(np.isnat(times), now, times.view(np.int64))

    def _view_columns(
        self, requests: Sequence[Request], times: npt.NDArray[np.int64], missing: list[list[str]]
    ) -> dict[str, npt.NDArray[np.float64]]:
        default = self.spec.features.default
        columns: dict[str, npt.NDArray[np.float64]] = {}
        for view_name, outputs in self._outputs.items():
            view = self.spec.features.views[view_name]
            for o in outputs:
                columns[o.name] = np.full(len(requests), missing_value(o.function, default), dtype=np.float64)
            key_name = view_key(self.spec, view_name)
            positions: list[int] = []
            keys: list[str] = []
            for i, (entities, _) in enumerate(requests):
                value = entities.get(key_name, entities.get(view.entity))
                if value is None:
                    if view.entity not in missing[i]:
                        missing[i].append(view.entity)
                    continue
                try:
                    keys.append(key_text(value))
                except LoopmlError as exc:
                    raise RequestFeatureError(f"entities.{key_name}", str(exc), i if len(requests) > 1 else None) from None
                positions.append(i)
            ttl_us = None if view.ttl is None else view.ttl // _ONE_US
            for i, row in zip(positions, self.store.read(view_name, keys) if keys else [], strict=True):
                if row is None:
                    if view.entity not in missing[i]:
                        missing[i].append(view.entity)
                    continue
                values = row[0]
                last = values.get(LAST_EVENT_KEY)
                if ttl_us is not None and last is not None and times[i] - int(last) > ttl_us:
                    continue
                for o in outputs:
                    if o.name in values:
                        columns[o.name][i] = values[o.name]
        return columns

    def vectors(self, requests: Sequence[Request]) -> AssembledBatch:
        """The feature matrix of ``requests`` (``(entities, request_features)`` pairs)."""
        n = len(requests)
        request_columns = self._request_columns(requests)
        missing: list[list[str]] = [[] for _ in range(n)]
        view_columns = self._view_columns(requests, self._request_times(request_columns, n), missing)
        inputs: dict[str, npt.NDArray[np.generic]] = {**request_columns, **view_columns}
        inputs.update(apply_transforms(self.spec, inputs))
        matrix = np.empty((n, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            matrix[:, j] = inputs[name]
        return AssembledBatch(columns=self.columns, matrix=matrix, missing_entities=missing)
