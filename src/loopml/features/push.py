"""Append new events of a source to the online store: the incremental path (no HTTP needed).

:func:`push_events` takes rows of a source as they happen (a mapping of
column -> value each, the source's own column names), checks what the windows
need and appends each row, as one event, to every view over that source. The
windows stay exact because features are computed from the events at read
time; the store prunes what falls out of every window (see
:mod:`loopml.features.online.base`).

- **Event id**: ``event_ids`` if given, else the source's id column: its one
  ``int`` column declared ``unique: true`` (``transaction_id`` in the fraud
  example). Writing an event twice (a redelivery) counts it once. Ties of
  ``last`` are ordered by id, offline by snapshot row; they agree when ids
  follow the source's row order, as the fraud example's do.
- **Bad rows are quarantined, never fed to windows**: a missing or
  unparsable timestamp or event id, an unparsable entity key, or a value of an
  aggregated column that is not a number. Each comes back in
  :attr:`PushResult.quarantined` as ``(row index, "column: reason")``; the
  good rows of the same call are written. A missing (NULL) key leaves the row
  out of that entity's view only, as offline; a NULL value is a NULL.
- Each view is written in its own store call; a failure between two leaves
  the event in some views only, and pushing the same rows again completes it
  (the others count it once). The stream consumer relies on this.
- Times: ``datetime``, ISO-8601 text (an offset is converted to UTC; naive
  means UTC like the data) or epoch seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from loopml.errors import LoopmlError
from loopml.features.definitions import view_horizon, view_key, view_value_columns
from loopml.features.online.base import EntityKey, Event, OnlineStore, key_text, timestamp_us
from loopml.spec.model import Spec

__all__ = ["PushResult", "event_id_column", "push_events"]

_ONE_US = timedelta(microseconds=1)
_INT64 = (-(2**63), 2**63 - 1)
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


@dataclass(frozen=True)
class PushResult:
    rows: int
    #: new events per view (duplicates and events already out of every window are not counted)
    written: dict[str, int] = field(default_factory=dict)
    #: (row index, "column: reason") of every row left out
    quarantined: list[tuple[int, str]] = field(default_factory=list)


def event_id_column(spec: Spec, source: str) -> str | None:
    """The source's id column: its only ``int`` column declared ``unique: true``, if it has exactly one."""
    found = [name for name, rule in spec.sources[source].columns.items() if rule.unique and rule.type == "int"]
    return found[0] if len(found) == 1 else None


def _number(value: Any, kind: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if kind == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return 1.0 if value.strip().lower() in _TRUE else 0.0
        raise ValueError(f"expected true or false, got {value!r}")
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    raise ValueError(f"expected a number, got {type(value).__name__}")


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected an integer {what}, got {value!r}")
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"{what} {value} does not fit in 64 bits")
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return _integer(int(value), what)
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            pass
        else:
            return _integer(number, what)
    raise ValueError(f"expected an integer {what}, got {value!r}")


def _views_of(spec: Spec, source: str) -> list[str]:
    if source not in spec.sources:
        raise LoopmlError(f"push: unknown source {source!r} (sources: {', '.join(spec.sources)})")
    views = [name for name, view in spec.features.views.items() if view.source == source]
    if not views:
        raise LoopmlError(f"push: no feature view aggregates source {source!r}")
    if spec.sources[source].timestamp is None:
        raise LoopmlError(f"sources.{source}.timestamp: events pushed online need a timestamp column")
    return views


def push_events(
    spec: Spec,
    store: OnlineStore,
    source: str,
    rows: Sequence[Mapping[str, Any]],
    event_ids: Sequence[int] | None = None,
) -> PushResult:
    """Append ``rows`` of ``source`` to every view over it; bad rows are quarantined (see the module doc)."""
    views = _views_of(spec, source)
    columns = spec.sources[source].columns
    time_column = spec.sources[source].timestamp or ""
    id_column = event_id_column(spec, source)
    if event_ids is None and id_column is None:
        raise LoopmlError(
            f"push: source {source!r} has no id column (declare one int column 'unique: true' under "
            f"sources.{source}.columns) and no event ids were given"
        )
    if event_ids is not None and len(event_ids) != len(rows):
        raise LoopmlError(f"push: {len(event_ids)} event ids for {len(rows)} rows")
    plans = {name: (view_key(spec, name), view_value_columns(spec, name)) for name in views}
    batches: dict[str, list[tuple[EntityKey, Event]]] = {name: [] for name in views}
    quarantined: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        where = time_column
        try:
            when = row.get(time_column)
            if when is None:
                raise ValueError("missing timestamp")
            ts = timestamp_us(when)
            where = id_column or "event id"
            event_id = _integer(event_ids[index] if event_ids is not None else row.get(id_column or ""), "event id")
            events: list[tuple[str, str, Event]] = []
            for name, (key_column, value_columns) in plans.items():
                where = key_column
                raw_key = row.get(key_column)
                if raw_key is None:
                    continue
                key_rule = columns.get(key_column)
                if isinstance(raw_key, str) and key_rule is not None and key_rule.type == "int":
                    raw_key = _integer(raw_key, "key")  # "42" from a text message is the integer key 42
                key = key_text(raw_key)
                values: list[float | None] = []
                for column in value_columns:
                    where = column
                    rule = columns.get(column)
                    values.append(_number(row.get(column), rule.type if rule is not None else "float"))
                events.append((name, key, Event(ts, event_id, tuple(values))))
        except (ValueError, OverflowError, LoopmlError) as exc:
            quarantined.append((index, f"{where}: {exc}"))
            continue
        for name, entity, event in events:
            batches[name].append((entity, event))
    written = {}
    for name, batch in batches.items():
        horizon = view_horizon(spec.features.views[name]) // _ONE_US
        written[name] = store.write_events(name, batch, horizon) if batch else 0
    return PushResult(rows=len(rows), written=written, quarantined=quarantined)
