"""Apply a Redis Stream of source events to the online store (``loopml features consume``).

Each stream entry is one row of a source: field = column name, value = the
column's value as text (an empty value is NULL), e.g.
``XADD transactions * transaction_id 42 tx_datetime 2025-05-01T10:00:00 customer_id 3 ...``.
:class:`StreamConsumer` reads them as a member of a consumer group
(``XREADGROUP``; the group is created at the stream's start when missing) and
hands them to :func:`loopml.features.push.push_events`:

- **At least once, counted once**: an entry is acknowledged (``XACK``) only
  after the store write; if the consumer dies in between, the entry stays
  pending and is delivered again, to itself when it restarts or, after
  ``claim_idle_ms``, to another consumer of the group (``XAUTOCLAIM``).
  Writing the same event again changes nothing, because the store keeps one
  copy per event id: the source's id column, or, for a source without one,
  the entry's stream id (``milliseconds * 2**20 + sequence``).
- **Bad entries** (missing or unparsable time, id or value) are copied to the
  stream ``<stream>:quarantine`` with the reason in the field ``__reason``
  and acknowledged: they would never parse, and they never reach a window.
- **Store unavailable**: nothing is acknowledged; :meth:`StreamConsumer.run`
  reports it, waits and tries again, so no event is lost.

redis-py is an optional extra (``loopml[redis]``); this module needs it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from loopml.errors import LoopmlError
from loopml.features.online.base import OnlineStore, OnlineStoreUnavailable
from loopml.features.online.redis import safe_url
from loopml.features.push import event_id_column, push_events
from loopml.spec.model import Spec

__all__ = [
    "ConsumeStats",
    "StreamConsumer",
    "connect_streams",
    "consume_stream",
    "default_consumer_name",
    "stream_event_id",
    "stream_source",
]

#: Field of a quarantined entry holding the reason.
REASON_FIELD = "__reason"
#: Field of a quarantined entry holding its original stream id.
ORIGIN_FIELD = "__id"
_SEQUENCE_BITS = 20
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass
class ConsumeStats:
    """What a consumer did: entries read and acknowledged, events newly written per view, entries quarantined."""

    messages: int = 0
    written: int = 0
    quarantined: int = 0
    retries: int = 0

    def to_json(self) -> dict[str, int]:
        return {"messages": self.messages, "written": self.written, "quarantined": self.quarantined, "retries": self.retries}


def connect_streams(url: str) -> redis.Redis:
    """A redis-py client for the streams at ``url``; raises one line naming the URL when unreachable."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=30.0, retry=Retry(NoBackoff(), 1))
        client.ping()
    except ValueError as exc:
        raise LoopmlError(f"storage.redis_url: {safe_url(url)} is not a Redis URL ({exc})") from None
    except _REDIS_DOWN as exc:
        raise LoopmlError(f"storage.redis_url: Redis at {safe_url(url)} is unreachable ({exc})") from None
    return client


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def stream_event_id(entry_id: str) -> int:
    """An integer event id from a stream entry id ``<ms>-<seq>``, increasing with the entry id."""
    ms, _, seq = entry_id.partition("-")
    sequence = int(seq or 0)
    if sequence >= 1 << _SEQUENCE_BITS:
        raise ValueError(f"stream entry {entry_id}: sequence too large for an event id")
    return (int(ms) << _SEQUENCE_BITS) | sequence


def as_text(value: Any) -> str:
    """A Redis reply (bytes or text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamConsumer:
    """One member of a consumer group applying a stream of ``source`` rows to an online store."""

    def __init__(
        self,
        spec: Spec,
        store: OnlineStore,
        client: redis.Redis,
        stream: str,
        source: str,
        group: str = "loopml",
        consumer: str | None = None,
        batch: int = 500,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.spec = spec
        self.store = store
        self.client = client
        self.stream = stream
        self.source = source
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.quarantine = f"{stream}:quarantine"
        self._has_id_column = event_id_column(spec, source) is not None

    def ensure_group(self) -> None:
        """Create the consumer group at the start of the stream (and the stream) unless it exists."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _pending(self, count: int) -> list[tuple[str, dict[str, str] | None]]:
        """Entries to process again: stale ones of other consumers, then this consumer's own."""
        claimed: Any = self.client.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count)
        entries = list(claimed[1]) if claimed else []
        if not entries:
            own: Any = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            entries = list(own[0][1]) if own else []
        return [(as_text(i), None if not f else {as_text(k): as_text(v) for k, v in f.items()}) for i, f in entries]

    def _new(self, count: int, block_ms: int) -> list[tuple[str, dict[str, str] | None]]:
        got: Any = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        entries = list(got[0][1]) if got else []
        return [(as_text(i), {as_text(k): as_text(v) for k, v in (f or {}).items()}) for i, f in entries]

    def step(self, block_ms: int = 1000, limit: int | None = None) -> ConsumeStats:
        """Process one batch (pending entries first, else new ones, waiting up to ``block_ms``)."""
        count = self.batch if limit is None else max(1, min(self.batch, limit))
        entries = self._pending(count) or self._new(count, block_ms)
        stats = ConsumeStats(messages=len(entries))
        if not entries:
            return stats
        rows: list[dict[str, Any]] = []
        ids: list[int] = []
        bad: list[tuple[str, dict[str, str], str]] = []
        kept: list[tuple[str, dict[str, str]]] = []
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream while pending
                continue
            try:
                event_id = stream_event_id(entry_id)
            except ValueError as exc:
                bad.append((entry_id, fields, str(exc)))
                continue
            rows.append({k: (None if v == "" else v) for k, v in fields.items()})
            ids.append(event_id)
            kept.append((entry_id, fields))
        if rows:
            result = push_events(self.spec, self.store, self.source, rows, None if self._has_id_column else ids)
            stats.written = sum(result.written.values())
            bad += [(kept[i][0], kept[i][1], reason) for i, reason in result.quarantined]
        pipe = self.client.pipeline(transaction=True)
        for entry_id, fields, reason in bad:
            record: dict[Any, Any] = {**fields, REASON_FIELD: reason, ORIGIN_FIELD: entry_id}
            pipe.xadd(self.quarantine, record)
        pipe.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
        stats.quarantined = len(bad)
        return stats

    def run(
        self,
        stop: threading.Event | None = None,
        max_messages: int | None = None,
        until_idle: bool = False,
        block_ms: int = 1000,
        retry_seconds: float = 1.0,
        report: Callable[[str], None] | None = None,
    ) -> ConsumeStats:
        """Consume until ``stop`` is set, ``max_messages`` entries were handled, or (``until_idle``) the stream is drained.

        An unreachable store or stream is reported and retried after
        ``retry_seconds``; the entries stay pending meanwhile.
        """
        total = ConsumeStats()
        self.ensure_group()
        while stop is None or not stop.is_set():
            remaining = None if max_messages is None else max_messages - total.messages
            if remaining is not None and remaining <= 0:
                break
            try:
                stats = self.step(block_ms, remaining)
            except (OnlineStoreUnavailable, *_REDIS_DOWN) as exc:
                total.retries += 1
                if report is not None:
                    report(f"waiting {retry_seconds:g}s and retrying: {exc}")
                time.sleep(retry_seconds)
                continue
            total.messages += stats.messages
            total.written += stats.written
            total.quarantined += stats.quarantined
            if report is not None and stats.messages:
                report(f"{total.messages:,} entries, {total.written:,} new events, {total.quarantined:,} quarantined")
            if until_idle and stats.messages == 0:
                break
        return total


def stream_source(spec: Spec, source: str | None) -> str:
    """The source a stream carries: ``source`` if given, else the label source or the only source feeding views."""
    feeding = list(dict.fromkeys(view.source for view in spec.features.views.values()))
    if source is not None:
        if source not in feeding:
            raise LoopmlError(f"--source {source}: no feature view aggregates it (sources with views: {', '.join(feeding)})")
        return source
    if spec.label.source in feeding:
        return spec.label.source
    if len(feeding) == 1:
        return feeding[0]
    raise LoopmlError(f"--source: several sources feed feature views ({', '.join(feeding)}); name the stream's source")


def consume_stream(
    spec: Spec,
    store: OnlineStore,
    stream: str,
    group: str = "loopml",
    consumer: str | None = None,
    source: str | None = None,
    max_messages: int | None = None,
    until_idle: bool = False,
    report: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> ConsumeStats:
    """``loopml features consume``: apply ``stream`` (at ``storage.redis_url``) to ``store`` until told to stop."""
    name = stream_source(spec, source)
    client = connect_streams(spec.storage.redis_url)
    try:
        consumer_ = StreamConsumer(spec, store, client, stream, name, group=group, consumer=consumer)
        return consumer_.run(stop=stop, max_messages=max_messages, until_idle=until_idle, report=report)
    finally:
        client.close()
