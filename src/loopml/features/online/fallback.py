"""The local cache behind a remote online store, for ``storage.online_unavailable: fallback``.

With Redis as the online store and the fallback behaviour configured, two
pieces keep a local copy that requests can be answered from while Redis is
down:

- :class:`MirroredStore` writes every materialization and push to Redis and
  then to a local SQLite store (``.loopml/online-cache.sqlite``); reads,
  ``ping`` and the materialization time are Redis's.
- :class:`Fallback` answers reads from that SQLite cache, merged with the
  events this process last read from Redis for each entity (bounded; the
  oldest entries are forgotten first). Events are immutable facts, so the
  union of both is the best local knowledge; values are then computed as of
  the request's time like any other read, and the response says it came from
  the fallback.

With ``fail`` (the default) neither exists and an unreachable Redis makes the
request fail with 503 and the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from loopml.features.online.base import (
    EntityKey,
    Event,
    EventLog,
    OnlineStore,
    StateChunk,
    decode_events,
    encode_events,
    key_text,
    merge_events,
)

__all__ = ["Fallback", "MirroredStore"]

#: Entities whose last read events a :class:`Fallback` remembers.
REMEMBER = 100_000


class MirroredStore:
    """An :class:`~loopml.features.online.base.OnlineStore` writing to ``primary`` and then to a local ``mirror``."""

    def __init__(self, primary: OnlineStore, mirror: OnlineStore) -> None:
        self.primary = primary
        self.mirror = mirror

    def write_events(self, view: str, events: Sequence[tuple[EntityKey, Event]], horizon_us: int) -> int:
        gained = self.primary.write_events(view, events, horizon_us)
        self.mirror.write_events(view, events, horizon_us)
        return gained

    def read_events(self, view: str, keys: Sequence[EntityKey]) -> list[EventLog | None]:
        return self.primary.read_events(view, keys)

    def replace_view(self, view: str, chunks: Iterable[StateChunk], as_of: datetime) -> int:
        kept = [list(chunk) for chunk in chunks]
        entities = self.primary.replace_view(view, kept, as_of)
        self.mirror.replace_view(view, kept, as_of)
        return entities

    def materialized_as_of(self, view: str) -> datetime | None:
        return self.primary.materialized_as_of(view)

    def ping(self) -> None:
        self.primary.ping()

    def close(self) -> None:
        self.primary.close()
        self.mirror.close()


class Fallback:
    """Reads for when the online store is unreachable: the local cache plus the last events read."""

    def __init__(self, cache: OnlineStore, horizons_us: Mapping[str, int], remember: int = REMEMBER) -> None:
        self.cache = cache
        self.horizons_us = dict(horizons_us)
        self.limit = remember
        self._recent: dict[tuple[str, str], EventLog] = {}
        self._lock = threading.Lock()

    def remember(self, view: str, keys: Sequence[EntityKey], logs: Sequence[EventLog | None]) -> None:
        """Keep what a successful read of the online store returned (entities it knows)."""
        with self._lock:
            for key, log in zip(keys, logs, strict=True):
                if log is None:
                    continue
                slot = (view, key_text(key))
                self._recent.pop(slot, None)
                self._recent[slot] = log  # immutable: keeping a reference costs nothing on the request path
            while len(self._recent) > self.limit:
                del self._recent[next(iter(self._recent))]

    def read(self, view: str, keys: Sequence[EntityKey]) -> list[EventLog | None]:
        """Each key's events from the cache merged with the last ones read; ``None`` if neither knows it."""
        cached = self.cache.read_events(view, keys)
        with self._lock:
            recent = [self._recent.get((view, key_text(k))) for k in keys]
        out: list[EventLog | None] = []
        for log, seen in zip(cached, recent, strict=True):
            if seen is None:
                out.append(log)
                continue
            if log is None or len(log.values) != len(seen.values):
                out.append(seen)
                continue
            merged, _ = merge_events(log.events(), seen.events(), self.horizons_us.get(view, 0))
            out.append(decode_events(encode_events(merged, len(seen.values))))
        return out
