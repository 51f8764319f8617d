"""The Redis online store (redis-py), for a store shared by several servers and writers.

Layout, under the prefix ``loopml:<project>:``:

- ``view:<view>``: a hash per view, field = entity key, value = the entity's
  events as one blob of :mod:`loopml.features.online.base`'s codec (the same bytes
  the SQLite backend stores). A read of a batch is one ``HMGET``.
- ``views``: a hash of each view's materialization time (epoch µs).

Writes merge in Python and commit with a compare-and-set Lua script: each
entity's blob is replaced only if it still holds the bytes the merge started
from, and entities that changed meanwhile are merged again. So merging,
deduplication (an event id counts once) and pruning are atomic per entity,
whatever the number of concurrent writers, without a lock on the whole view.
A materialization writes a fresh hash in pipelined chunks and swaps it in
with ``RENAME`` inside ``MULTI``: readers see the old view until the new one
is complete. (A push racing a materialization of the same view may be lost
with the old hash; run the stream consumer again from the snapshot's end.)

Failures to reach Redis raise :class:`~loopml.features.online.base.OnlineStoreUnavailable`
naming the URL (the password masked). Timeouts are short and, after a
failure, calls fail at once for :data:`COOLDOWN_SECONDS` instead of each
waiting for a connection, so a dead Redis costs requests microseconds; the
first call after the cooldown tries again, and redis-py reconnects.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from loopml.errors import LoopmlError
from loopml.features.online.base import (
    EntityKey,
    Event,
    EventLog,
    OnlineStoreUnavailable,
    StateChunk,
    datetime_from_us,
    decode_events,
    encode_events,
    key_text,
    merge_blob,
    micros,
)

__all__ = ["COOLDOWN_SECONDS", "RedisOnlineStore", "safe_url"]

T = TypeVar("T")

#: After a failed call, how long calls fail fast before Redis is tried again.
COOLDOWN_SECONDS = 0.5
#: Entities per compare-and-set script call (keeps each script short for other clients).
CAS_CHUNK = 1000
_CAS_ATTEMPTS = 20
#: seconds: the first retry waits up to 2 ms, doubling up to 0.1 s (full jitter); 20 attempts span about 1.5 s at most
_CAS_BACKOFF, _CAS_BACKOFF_CAP = 0.001, 0.1
_CAS_SCRIPT = """
local conflicts = {}
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if (current == false and ARGV[i + 1] == '') or current == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  else
    conflicts[#conflicts + 1] = ARGV[i]
  end
end
return conflicts
"""
_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _hmget(client: redis.Redis, key: str, fields: list[str]) -> list[Any]:
    return client.hmget(key, fields)


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisOnlineStore:
    """:class:`~loopml.features.online.base.OnlineStore` on a Redis server."""

    def __init__(self, url: str, namespace: str, connect_timeout: float = 0.5, timeout: float = 2.0) -> None:
        self.url = url
        self.prefix = f"loopml:{namespace}:"
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._client: redis.Redis | None = None
        self._cas: Script | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    # -- plumbing -------------------------------------------------------------
    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                try:
                    client = redis.Redis.from_url(
                        self.url,
                        socket_connect_timeout=self.connect_timeout,
                        socket_timeout=self.timeout,
                        retry=Retry(NoBackoff(), 1),
                    )
                except ValueError as exc:
                    raise LoopmlError(f"storage.redis_url: {safe_url(self.url)} is not a Redis URL ({exc})") from None
                self._cas = client.register_script(_CAS_SCRIPT)
                self._client = client
            return self._client

    def _call(self, fn: Callable[[redis.Redis], T]) -> T:
        if time.monotonic() < self._down_until:
            raise OnlineStoreUnavailable(self._down_reason)
        client = self._redis()
        try:
            return fn(client)
        except _UNREACHABLE as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._down_reason = f"the online store at {safe_url(self.url)} is unreachable ({detail})"
            self._down_until = time.monotonic() + COOLDOWN_SECONDS
            raise OnlineStoreUnavailable(self._down_reason) from None

    def _view_key(self, view: str) -> str:
        return f"{self.prefix}view:{view}"

    # -- the protocol ---------------------------------------------------------
    def write_events(self, view: str, events: Sequence[tuple[EntityKey, Event]], horizon_us: int) -> int:
        grouped: dict[str, list[Event]] = defaultdict(list)
        for key, event in events:
            grouped[key_text(key)].append(event)
        keys = sorted(grouped)
        gained = 0
        for start in range(0, len(keys), CAS_CHUNK):
            gained += self._write_chunk(self._view_key(view), keys[start : start + CAS_CHUNK], grouped, horizon_us)
        return gained

    def _write_chunk(self, hash_key: str, keys: list[str], grouped: dict[str, list[Event]], horizon_us: int) -> int:
        gained = 0
        pending = keys
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:  # lost a race: back off a random, growing while so competing writers stop colliding
                time.sleep(random.uniform(0, min(_CAS_BACKOFF_CAP, _CAS_BACKOFF * 2**attempt)))
            current: list[bytes | None] = self._call(partial(_hmget, key=hash_key, fields=pending))
            args: list[bytes | str] = []
            gains: dict[str, int] = {}
            for key, blob in zip(pending, current, strict=True):
                merged, gains[key] = merge_blob(blob, grouped[key], horizon_us)
                args += [key, blob or b"", merged]
            conflicts = set(self._call(partial(self._compare_and_set, key=hash_key, args=args)))
            gained += sum(n for key, n in gains.items() if key not in conflicts)
            pending = [k for k in pending if k in conflicts]
            if not pending:
                return gained
        raise LoopmlError(f"online store at {safe_url(self.url)}: entities {pending[:3]} kept changing during the write")

    def _compare_and_set(self, client: redis.Redis, key: str, args: list[bytes | str]) -> list[str]:
        script = self._cas
        if script is None:
            raise OnlineStoreUnavailable(f"the online store at {safe_url(self.url)} was closed")
        return [c.decode() for c in script(keys=[key], args=args, client=client)]

    def read_events(self, view: str, keys: Sequence[EntityKey]) -> list[EventLog | None]:
        texts = [key_text(k) for k in keys]
        if not texts:
            return []
        blobs: list[bytes | None] = self._call(partial(_hmget, key=self._view_key(view), fields=texts))
        return [None if blob is None else decode_events(blob) for blob in blobs]

    def replace_view(self, view: str, chunks: Iterable[StateChunk], as_of: datetime) -> int:
        live = self._view_key(view)
        loading = f"{live}:loading:{uuid.uuid4().hex}"
        entities = 0
        try:
            for chunk in chunks:
                mapping: dict[str, bytes] = {}
                for key, events in chunk:
                    mapping[key_text(key)] = encode_events(events, len(events[0].values) if events else 0)
                if mapping:
                    self._call(lambda r, m=mapping: r.hset(loading, mapping=m))  # type: ignore[misc]
                    entities += len(mapping)

            def swap(r: redis.Redis) -> None:
                pipe = r.pipeline(transaction=True)
                if entities:
                    pipe.rename(loading, live)
                else:
                    pipe.delete(live)
                pipe.hset(f"{self.prefix}views", view, str(micros(as_of)))
                pipe.execute()

            self._call(swap)
        except BaseException:
            with contextlib.suppress(OnlineStoreUnavailable):
                self._call(lambda r: r.delete(loading))
            raise
        return entities

    def materialized_as_of(self, view: str) -> datetime | None:
        value = self._call(lambda r: r.hget(f"{self.prefix}views", view))
        return None if value is None else datetime_from_us(int(value))

    def ping(self) -> None:
        self._call(lambda r: r.ping())

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._cas = None

    def __enter__(self) -> RedisOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
