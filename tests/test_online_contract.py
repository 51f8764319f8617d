"""The online store contract: every backend passes these same tests, unchanged (SQLite and a real Redis server)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from loopml.errors import LoopmlError
from loopml.features.online.base import Event, EventLog, OnlineStore
from loopml.features.online.redis import RedisOnlineStore
from loopml.features.online.sqlite import SqliteOnlineStore

AS_OF = datetime(2025, 5, 1, 12, 0)
DAY = 86_400_000_000
T0 = 1_746_000_000_000_000  # 2025-04-30 08:00 UTC in epoch µs
HORIZON = 30 * DAY

Opener = Callable[[], OnlineStore]


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a new handle on one backend's store (two handles see the same state)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        return lambda: RedisOnlineStore(url, "contract")
    return lambda: SqliteOnlineStore(tmp_path / "online.sqlite")


@pytest.fixture
def store(opener: Opener) -> Iterator[OnlineStore]:
    handle = opener()
    yield handle
    handle.close()


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
