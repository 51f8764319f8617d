"""Feature vectors for online requests: online events + request features + transforms.

:class:`FeatureAssembler` turns a batch of requests (entity keys and request
features, as they arrive in a predict body) into the model matrix, in
:func:`~loopml.features.definitions.feature_columns` order. The per-request
path stays lean: each view's events are read from the store once per batch
(one store call per view), every view's features are computed from those
events *as of each request's time* by
:class:`~loopml.features.online.windows.ViewWindows` (the offline window
semantics: delay, inclusive/exclusive, ttl, missing values), values go
straight into numpy columns (no DataFrame), and the transforms are computed by
:func:`~loopml.features.transforms.apply_transforms`, the same function the
offline builder uses. String request features are not model inputs; they are
handed over as object arrays (``AssembledBatch.strings``) for the encodings.

Rules:

- A request's time is its first timestamp request feature (the event time,
  ``tx_datetime`` in the fraud example), or the current UTC time when the
  spec has none or the request leaves it out.
- Entities are looked up by their key column name (``customer_id``) or their
  entity name (``customer``). An entity that is absent from the request or
  unknown to the store gives its views the missing-history values (counts and
  sums 0, the rest ``features.default``, null indicators 1) and is listed in
  ``missing_entities``; it never fails the request. A known entity without
  recent events simply has missing-history values.
- Request features: numbers may be JSON numbers or numeric strings; booleans
  ``true``/``false``/``0``/``1``; timestamps ISO-8601 strings (an offset is
  converted to UTC; naive means UTC like the data) or epoch seconds. Missing
  required or unparsable features raise one :class:`RequestFeatureError` naming
  every such field of the batch. An optional feature left out is NaN (NaT for timestamps, ``None`` for
  strings), as a NULL would be offline. Unknown keys are ignored.
- An unreachable online store raises
  :class:`~loopml.features.online.base.OnlineStoreUnavailable`, unless the
  assembler has a :class:`~loopml.features.online.fallback.Fallback`: then
  the views are computed from the local cache and the batch is flagged
  ``fallback``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.features.definitions import feature_columns, request_time_feature, view_key
from loopml.features.online.base import (
    EntityKey,
    EventLog,
    OnlineStore,
    OnlineStoreUnavailable,
    datetime_from_us,
    key_text,
    micros,
    timestamp_us,
)
from loopml.features.online.fallback import Fallback
from loopml.features.online.windows import ViewWindows
from loopml.features.transforms import apply_transforms
from loopml.spec.model import RequestFeature, Spec

__all__ = ["AssembledBatch", "FeatureAssembler", "Request", "RequestFeatureError", "online_features", "parse_request_feature"]

Request = tuple[Mapping[str, Any], Mapping[str, Any]]
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class RequestFeatureError(LoopmlError):
    """Request fields that are missing or unparsable; ``field`` is the first one's path (``features.tx_amount``).

    ``problems`` lists every bad field of the batch as ``(request index or None, field, message)``, the
    first being ``(index, field, message)``.
    """

    def __init__(
        self, field: str, message: str, index: int | None = None, more: Sequence[tuple[int | None, str, str]] = ()
    ) -> None:
        self.field = field
        self.message = message
        self.index = index
        self.problems: list[tuple[int | None, str, str]] = [(index, field, message), *more]
        where = f"instances.{index}." if index is not None else ""
        others = f" (and {len(more)} more)" if more else ""
        super().__init__(f"{where}{field}: {message}{others}")


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
            return timestamp_us(value)
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
    #: string request features (not model inputs), object arrays with ``None`` where absent
    strings: dict[str, npt.NDArray[np.object_]] = field(default_factory=dict)
    #: True when the online store was unreachable and views came from the local fallback cache
    fallback: bool = False
    #: each request's event time (epoch microseconds, UTC) when it carried the timestamp request feature
    event_us: list[int | None] = field(default_factory=list)

    def values(self, i: int) -> dict[str, float]:
        """Feature name -> value of request ``i``."""
        return dict(zip(self.columns, self.matrix[i].tolist(), strict=True))


def _now_us() -> int:
    return micros(datetime.now(UTC))


class FeatureAssembler:
    """Builds feature vectors from an :class:`~loopml.features.online.base.OnlineStore` and request features."""

    def __init__(self, spec: Spec, store: OnlineStore, fallback: Fallback | None = None) -> None:
        self.spec = spec
        self.store = store
        self.fallback = fallback
        self.columns = feature_columns(spec)
        self.windows = {name: ViewWindows.from_spec(spec, name) for name in spec.features.views}
        self._keys = {name: view_key(spec, name) for name in spec.features.views}
        self._time_feature = request_time_feature(spec)
        # where each view's outputs go in the matrix, and which of them the transforms read
        position = {name: j for j, name in enumerate(self.columns)}
        transform_inputs = {i for t in spec.features.transforms.values() for i in t.inputs}
        self._placement: dict[str, tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]] = {}
        self._view_inputs: dict[str, list[tuple[int, str]]] = {}
        produced: set[str] = set()
        for view_name, windows in self.windows.items():
            placed = [(j, position[name]) for j, name in enumerate(windows.names) if name in position]
            self._placement[view_name] = (
                np.array([j for j, _ in placed], dtype=np.intp),
                np.array([k for _, k in placed], dtype=np.intp),
            )
            self._view_inputs[view_name] = [(j, name) for j, name in enumerate(windows.names) if name in transform_inputs]
            produced.update(windows.names)
        self._other_columns = [(j, name) for j, name in enumerate(self.columns) if name not in produced]

    def read(self, view: str, keys: Sequence[EntityKey]) -> tuple[list[EventLog | None], bool]:
        """The events of ``keys`` in one store call, and whether they came from the fallback cache."""
        try:
            logs = self.store.read_events(view, keys)
        except OnlineStoreUnavailable:
            if self.fallback is None:
                raise
            return self.fallback.read(view, keys), True
        if self.fallback is not None:
            self.fallback.remember(view, keys, logs)
        return logs, False

    def view_values(self, view: str, keys: Sequence[EntityKey], at_us: int) -> tuple[list[dict[str, float] | None], bool]:
        """Every feature of ``view`` for each key as of ``at_us`` (``None``: unknown entity), and the fallback flag."""
        windows = self.windows[view]
        logs, fallback = self.read(view, keys)
        names = windows.names
        out = [None if log is None else dict(zip(names, windows.values(log, at_us), strict=True)) for log in logs]
        return out, fallback

    def _request_columns(self, requests: Sequence[Request]) -> tuple[dict[str, npt.NDArray[np.generic]], dict[str, Any]]:
        columns: dict[str, npt.NDArray[np.generic]] = {}
        strings: dict[str, npt.NDArray[np.object_]] = {}
        problems: list[tuple[int | None, str, str]] = []
        for name, rule in self.spec.features.request.items():
            raw: list[float | int | str | None] = []
            for i, (_, features) in enumerate(requests):
                try:
                    raw.append(parse_request_feature(name, rule, features.get(name)))
                except RequestFeatureError as exc:  # every bad field is named, not only the first
                    problems.append((i if len(requests) > 1 else None, exc.field, exc.message))
                    raw.append(None)
            if problems:
                continue
            if rule.type == "string":
                strings[name] = np.array(raw, dtype=object)
            elif rule.type == "timestamp":
                nat = np.iinfo(np.int64).min  # the int64 pattern of NaT
                columns[name] = np.array([nat if v is None else v for v in raw], dtype=np.int64).view("datetime64[us]")
            else:
                columns[name] = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
        if problems:
            problems.sort(key=lambda p: -1 if p[0] is None else p[0])  # request order, then the features' order
            raise RequestFeatureError(problems[0][1], problems[0][2], problems[0][0], problems[1:])
        return columns, strings

    def _request_times(self, columns: Mapping[str, npt.NDArray[np.generic]], n: int) -> list[int]:
        if self._time_feature is None:
            return [_now_us()] * n
        times = columns[self._time_feature]
        if not np.isnat(times).any():
            return [int(t) for t in times.view(np.int64)]
        now = _now_us()
        return [now if np.isnat(t) else int(t.view(np.int64)) for t in times]

    def _view_columns(
        self,
        requests: Sequence[Request],
        times: Sequence[int],
        missing: list[list[str]],
        matrix: npt.NDArray[np.float64],
        inputs: dict[str, npt.NDArray[np.generic]],
    ) -> bool:
        """Every view's features into ``matrix`` (and the transforms' inputs into ``inputs``); the fallback flag."""
        fallback = False
        n = len(requests)
        for view_name, windows in self.windows.items():
            entity = self.spec.features.views[view_name].entity
            rows = [windows.missing()] * n
            key_name = self._keys[view_name]
            positions: list[int] = []
            keys: list[str] = []
            for i, (entities, _) in enumerate(requests):
                value = entities.get(key_name, entities.get(entity))
                if value is None:
                    if entity not in missing[i]:
                        missing[i].append(entity)
                    continue
                try:
                    keys.append(key_text(value))
                except LoopmlError as exc:
                    raise RequestFeatureError(f"entities.{key_name}", str(exc), i if n > 1 else None) from None
                positions.append(i)
            if keys:
                logs, from_cache = self.read(view_name, keys)
                fallback = fallback or from_cache
                for i, log in zip(positions, logs, strict=True):
                    if log is None:
                        if entity not in missing[i]:
                            missing[i].append(entity)
                        continue
                    rows[i] = windows.values(log, times[i])
            table = np.array(rows, dtype=np.float64).reshape(n, len(windows.names))
            source, target = self._placement[view_name]
            matrix[:, target] = table[:, source]
            for j, name in self._view_inputs[view_name]:
                inputs[name] = table[:, j]
        return fallback

    def vectors(self, requests: Sequence[Request]) -> AssembledBatch:
        """The feature matrix of ``requests`` (``(entities, request_features)`` pairs)."""
        n = len(requests)
        request_columns, strings = self._request_columns(requests)
        missing: list[list[str]] = [[] for _ in range(n)]
        matrix = np.empty((n, len(self.columns)), dtype=np.float64)
        inputs: dict[str, npt.NDArray[np.generic]] = dict(request_columns)
        fallback = self._view_columns(requests, self._request_times(request_columns, n), missing, matrix, inputs)
        event_us: list[int | None] = [None] * n
        if self._time_feature is not None:
            event_us = [None if np.isnat(t) else int(t.view(np.int64)) for t in request_columns[self._time_feature]]
        if self.spec.features.transforms:
            inputs.update(apply_transforms(self.spec, inputs))
        for j, name in self._other_columns:
            matrix[:, j] = inputs[name]
        return AssembledBatch(
            columns=self.columns, matrix=matrix, missing_entities=missing, strings=strings, fallback=fallback, event_us=event_us
        )


def online_features(
    spec: Spec, store: OnlineStore, entities: Mapping[str, str], as_of: datetime | None = None
) -> dict[str, dict[str, Any] | None]:
    """``loopml features get``: each view of the given entity keys, ``{"values", "as_of"}`` or None when unknown.

    ``entities`` maps entity key columns (``customer_id``) to values. Values
    are computed as of ``as_of`` when given, else as of the end of the data
    the store holds for that entity: the later of the view's materialization
    time and just after the entity's newest event (now for a view never
    materialized whose entity has no event).
    """
    keys = {e.key: name for name, e in spec.entities.items()}
    for key in entities:
        if key not in keys:
            raise LoopmlError(f"--entity {key}: unknown entity key (known: {', '.join(keys)})")
    assembler = FeatureAssembler(spec, store)
    result: dict[str, dict[str, Any] | None] = {}
    for view_name in spec.features.views:
        key = view_key(spec, view_name)
        if key not in entities:
            continue
        log = assembler.read(view_name, [entities[key]])[0][0]
        if log is None:
            result[view_name] = None
            continue
        if as_of is not None:
            at = micros(as_of)
        else:
            ends = [micros(m) for m in [store.materialized_as_of(view_name)] if m is not None]
            ends += [log.ts[-1] + 1] if log.ts else []
            at = max(ends) if ends else _now_us()
        windows = assembler.windows[view_name]
        values = dict(zip(windows.names, windows.values(log, at), strict=True))
        result[view_name] = {"values": values, "as_of": datetime_from_us(at).isoformat()}
    return result
