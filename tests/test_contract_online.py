"""The online store contract: every implementation of ``OnlineStore`` passes these same tests, unchanged.

The implementations are found by ``tests/contracts.py`` (every class of ``loopml`` with the
protocol's verbs): today SQLite, a real Redis server (tests/servers.py, emptied between tests) and
the ``MirroredStore`` that writes Redis and then its local SQLite cache. A new one fails
``test_every_implementation_has_a_factory`` and every test here until it gets a factory.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from contracts import SECRET, Backend, Factory, check_factories, factory_for, ids, implementations
from loopml.errors import LoopmlError
from loopml.features.online.base import Event, EventLog, OnlineStore, OnlineStoreUnavailable
from loopml.features.online.fallback import MirroredStore
from loopml.features.online.redis import RedisOnlineStore
from loopml.features.online.sqlite import SqliteOnlineStore
from loopml.server import free_port
from servers import RedisServer

AS_OF = datetime(2025, 5, 1, 12, 0)
DAY = 86_400_000_000
T0 = 1_746_000_000_000_000  # 2025-04-30 08:00 UTC in epoch µs
HORIZON = 30 * DAY
SUITE = "tests/test_contract_online.py"

Opener = Callable[[], OnlineStore]


# -- the implementations ------------------------------------------------------------------------------------


def sqlite_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[OnlineStore]:
    blocker = tmp / "blocker"
    blocker.write_text("a file where the store's folder should be")
    return Backend(
        open=lambda: SqliteOnlineStore(tmp / "online.sqlite"),
        unreachable=lambda: SqliteOnlineStore(blocker / "online.sqlite"),
        names=str(blocker),
    )


def redis_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[OnlineStore]:
    url = request.getfixturevalue("redis_server").url
    port = free_port()  # nothing listens there
    return Backend(
        open=lambda: RedisOnlineStore(url, "contract"),
        unreachable=lambda: RedisOnlineStore(f"redis://:{SECRET}@127.0.0.1:{port}/0", "contract"),
        names=f"127.0.0.1:{port}",
    )


def mirrored_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[OnlineStore]:
    """Redis mirrored to a local SQLite cache: what ``storage.online_unavailable: fallback`` opens."""
    redis = redis_backend(request, tmp)
    return Backend(
        open=lambda: MirroredStore(redis.open(), SqliteOnlineStore(tmp / "online-cache.sqlite")),
        unreachable=lambda: MirroredStore(redis.unreachable(), SqliteOnlineStore(tmp / "online-cache.sqlite")),
        names=redis.names,
    )


FACTORIES: dict[type, Factory[Backend[OnlineStore]]] = {
    SqliteOnlineStore: sqlite_backend,
    RedisOnlineStore: redis_backend,
    MirroredStore: mirrored_backend,
}
IMPLEMENTATIONS = implementations(OnlineStore)


def test_every_implementation_has_a_factory() -> None:
    check_factories(OnlineStore, FACTORIES, SUITE)


@pytest.fixture(params=IMPLEMENTATIONS, ids=ids(IMPLEMENTATIONS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[OnlineStore]:
    return factory_for(FACTORIES, request.param, SUITE)(request, tmp_path)


@pytest.fixture
def opener(backend: Backend[OnlineStore]) -> Opener:
    """Opens a new handle on the implementation's store (two handles see the same state)."""
    return backend.open


@pytest.fixture
def store(opener: Opener) -> Iterator[OnlineStore]:
    handle = opener()
    yield handle
    handle.close()


# -- the contract -------------------------------------------------------------------------------------------


def ev(ts: int, event_id: int, *values: float | None) -> Event:
    return Event(ts, event_id, tuple(values))


def events_of(log: EventLog | None) -> list[Event] | None:
    return None if log is None else log.events()


def test_write_then_read_sorted_by_time_then_id(store: OnlineStore) -> None:
    written = store.write_events(
        "customer",
        [(1, ev(T0 + 5, 7, 1.5)), (2, ev(T0, 1, -2.0)), (1, ev(T0 + 5, 3, 2.5)), (1, ev(T0, 9, 0.0))],
        HORIZON,
    )
    assert written == 4
    got = store.read_events("customer", [1, 2, 3])
    assert events_of(got[0]) == [ev(T0, 9, 0.0), ev(T0 + 5, 3, 2.5), ev(T0 + 5, 7, 1.5)]
    assert events_of(got[1]) == [ev(T0, 1, -2.0)]
    assert got[2] is None
    assert got[0] is not None and got[0].ts == (T0, T0 + 5, T0 + 5) and got[0].values == ((0.0, 2.5, 1.5),)
    assert store.read_events("customer", []) == []


def test_same_event_twice_counts_once(store: OnlineStore) -> None:
    assert store.write_events("customer", [(1, ev(T0, 1, 10.0)), (1, ev(T0 + 1, 2, 20.0))], HORIZON) == 2
    assert store.write_events("customer", [(1, ev(T0, 1, 10.0)), (1, ev(T0 + 2, 3, 30.0))], HORIZON) == 1
    assert store.write_events("customer", [(1, ev(T0 + 1, 2, 20.0))], HORIZON) == 0
    assert [e.id for e in events_of(store.read_events("customer", [1])[0]) or []] == [1, 2, 3]


def test_write_prunes_what_no_window_can_see(store: OnlineStore) -> None:
    store.write_events("customer", [(1, ev(T0, 1, 1.0)), (1, ev(T0 + DAY, 2, 2.0))], 2 * DAY)
    # newest at T0 + 2 days: T0 is exactly one horizon old -> pruned; T0 + 1 day stays
    assert store.write_events("customer", [(1, ev(T0 + 2 * DAY, 3, 3.0))], 2 * DAY) == 1
    assert [e.id for e in events_of(store.read_events("customer", [1])[0]) or []] == [2, 3]
    # a late event already outside the horizon is not kept (and not counted)
    assert store.write_events("customer", [(1, ev(T0 - DAY, 4, 4.0))], 2 * DAY) == 0
    assert [e.id for e in events_of(store.read_events("customer", [1])[0]) or []] == [2, 3]


def test_nulls_nan_and_many_columns_round_trip(store: OnlineStore) -> None:
    values = (None, math.nan, 1e308, -0.0, None, 3.25, math.inf, 7.0, 8.0, None)  # 10 columns: a 16-bit NULL mask
    store.write_events("wide", [("a", Event(T0, 1, values))], HORIZON)
    (log,) = store.read_events("wide", ["a"])
    assert log is not None
    got = log.events()[0].values
    assert [v is None for v in got] == [v is None for v in values]
    assert math.isnan(got[1]) and got[2] == 1e308 and math.copysign(1, got[3]) == -1 and got[6] == math.inf  # type: ignore[arg-type]


def test_views_without_values(store: OnlineStore) -> None:
    store.write_events("counts", [(5, Event(T0, 1, ())), (5, Event(T0 + 1, 2, ()))], HORIZON)
    (log,) = store.read_events("counts", [5])
    assert log is not None and log.ts == (T0, T0 + 1) and log.values == ()


def test_views_do_not_share_state(store: OnlineStore) -> None:
    store.write_events("customer", [(1, ev(T0, 1, 1.0))], HORIZON)
    assert store.read_events("terminal", [1]) == [None]


def test_int_and_str_keys(store: OnlineStore) -> None:
    store.write_events("shop", [("s-1", ev(T0, 1, 1.0)), (42, ev(T0, 2, 2.0)), (np.int64(7), ev(T0, 3, 3.0))], HORIZON)  # type: ignore[list-item]
    got = store.read_events("shop", [42, "42", 7, "s-1"])
    assert [e.id for log in got for e in events_of(log) or []] == [2, 2, 3, 1]  # "42" finds what 42 wrote
    with pytest.raises(LoopmlError, match="entity key"):
        store.read_events("shop", [1.5])  # type: ignore[list-item]


def test_replace_view_swaps_the_whole_view(store: OnlineStore) -> None:
    store.write_events("customer", [(1, ev(T0, 1, 1.0)), (2, ev(T0, 2, 2.0))], HORIZON)
    chunks = [[(2, [ev(T0, 5, 5.0)]), (3, [])], [(4, [ev(T0, 6, 6.0), ev(T0 + 1, 7, None)])]]
    assert store.replace_view("customer", chunks, datetime(2025, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))) == 3
    one, two, three, four = store.read_events("customer", [1, 2, 3, 4])
    assert one is None  # not in the new state
    assert events_of(two) == [ev(T0, 5, 5.0)]
    assert three is not None and three.ts == ()  # known entity without recent events
    assert events_of(four) == [ev(T0, 6, 6.0), ev(T0 + 1, 7, None)]
    assert store.materialized_as_of("customer") == AS_OF  # stored in UTC
    assert store.materialized_as_of("terminal") is None
    # events pushed after a materialization merge with it
    assert store.write_events("customer", [(3, ev(T0 + 2, 8, 8.0))], HORIZON) == 1
    assert events_of(store.read_events("customer", [3])[0]) == [ev(T0 + 2, 8, 8.0)]


def test_replace_view_is_atomic_for_readers(store: OnlineStore, opener: Opener) -> None:
    store.write_events("customer", [(1, ev(T0, 1, 1.0))], HORIZON)
    reader = opener()
    seen: list[list[Event] | None] = []

    def chunks() -> Iterator[list[tuple[int, list[Event]]]]:
        yield [(1, [ev(T0, 2, 2.0)])]
        seen.append(events_of(reader.read_events("customer", [1])[0]))  # mid-way: still the old state
        yield [(2, [ev(T0, 3, 3.0)])]
        raise RuntimeError("materialization failed")

    with pytest.raises(RuntimeError):
        store.replace_view("customer", chunks(), AS_OF)
    assert seen == [[ev(T0, 1, 1.0)]]
    assert [events_of(log) for log in reader.read_events("customer", [1, 2])] == [[ev(T0, 1, 1.0)], None]  # nothing half-done
    assert reader.materialized_as_of("customer") is None
    reader.close()


def test_concurrent_writers_lose_nothing(store: OnlineStore, opener: Opener) -> None:
    writers = [opener() for _ in range(4)]

    def write(w: int) -> None:
        for i in range(25):
            writers[w].write_events("customer", [(1, ev(T0 + i, w * 100 + i, float(i))), (2, ev(T0, w * 100 + i, 0.0))], HORIZON)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one, two = store.read_events("customer", [1, 2])
    assert one is not None and two is not None
    assert sorted(one.ids) == sorted(w * 100 + i for w in range(4) for i in range(25))
    assert len(two.ids) == 100
    for handle in writers:
        handle.close()


def test_reopens_after_close_and_pings(store: OnlineStore) -> None:
    store.ping()
    store.write_events("customer", [(1, ev(T0, 1, 1.0))], HORIZON)
    store.close()
    assert events_of(store.read_events("customer", [1])[0]) == [ev(T0, 1, 1.0)]
    store.close()
    store.close()  # closing twice is harmless


def test_an_unreachable_store_raises_unavailable_naming_it(backend: Backend[OnlineStore]) -> None:
    """What the request path maps to 503 or the fallback: ``OnlineStoreUnavailable``, one line, no password."""
    store = backend.unreachable()
    calls: dict[str, Callable[[], object]] = {
        "ping": store.ping,
        "read_events": lambda: store.read_events("customer", [1]),
        "write_events": lambda: store.write_events("customer", [(1, ev(T0, 1, 1.0))], HORIZON),
        "replace_view": lambda: store.replace_view("customer", [[(1, [ev(T0, 1, 1.0)])]], AS_OF),
        "materialized_as_of": lambda: store.materialized_as_of("customer"),
    }
    for verb, call in calls.items():
        with pytest.raises(OnlineStoreUnavailable) as err:
            call()
        message = str(err.value)
        assert backend.names in message and SECRET not in message and "\n" not in message, (verb, message)
    store.close()
    store.close()


# -- MirroredStore only: the mirror gets everything the primary accepted -------------------------------------


def test_the_mirror_holds_every_write_and_materialization(redis_server: RedisServer, tmp_path: Path) -> None:
    store = MirroredStore(RedisOnlineStore(redis_server.url, "mirror"), SqliteOnlineStore(tmp_path / "online-cache.sqlite"))
    store.replace_view("customer", [[(1, [ev(T0, 1, 1.0)]), (2, [])]], AS_OF)
    assert store.write_events("customer", [(1, ev(T0 + 1, 2, 2.0)), (3, ev(T0, 3, 3.0))], HORIZON) == 2
    assert store.write_events("customer", [(1, ev(T0 + 1, 2, 2.0))], HORIZON) == 0
    keys = [1, 2, 3, 4]
    primary = [events_of(log) for log in store.primary.read_events("customer", keys)]
    assert primary == [[ev(T0, 1, 1.0), ev(T0 + 1, 2, 2.0)], [], [ev(T0, 3, 3.0)], None]
    assert [events_of(log) for log in store.mirror.read_events("customer", keys)] == primary
    assert store.mirror.materialized_as_of("customer") == store.primary.materialized_as_of("customer") == AS_OF
    store.close()
