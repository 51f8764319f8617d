"""The online feature path: window arithmetic, materialization, request vectors, the push API and bad input.

Backend behaviour shared by every online store is in ``test_contract_online.py``;
the offline/online equality on a simulated world is in ``test_online_skew.py``;
the Redis stream consumer and an unreachable Redis are in ``test_online_redis.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.features import FeatureAssembler, SqliteOnlineStore, build_training_set, feature_columns, materialize, push_events
from loopml.features.online.base import Event, EventLog, micros
from loopml.features.online.windows import ViewWindows, aggregate
from loopml.features.vector import RequestFeatureError
from loopml.spec.model import Spec
from specs import fraud_spec_dict

START = datetime(2025, 4, 1)
HOUR = 3_600_000_000
DAY = 24 * HOUR


def fraud_spec(features: dict[str, Any] | None = None, **views: dict[str, Any]) -> Spec:
    return Spec.model_validate(fraud_spec_dict(features={**(features or {}), "views": views}))


def log_of(*events: tuple[int, float | None]) -> EventLog:
    """An entity's events (time, amount), ids in order."""
    rows = [Event(t, i, (v,)) for i, (t, v) in enumerate(events)]
    return EventLog(tuple(e.ts for e in rows), tuple(e.id for e in rows), (tuple(e.values[0] for e in rows),))


def values_at(spec: Spec, view: str, log: EventLog | None, at: int) -> dict[str, float]:
    windows = ViewWindows.from_spec(spec, view)
    return dict(zip(windows.names, windows.values(log, at), strict=True))


# --------------------------------------------------------------------------- window arithmetic


def test_window_bounds_are_exact_to_the_microsecond() -> None:
    t = 100 * DAY
    log = log_of((t - DAY, 1.0), (t - DAY + 1, 2.0), (t - 1, 4.0), (t, 8.0))
    exclusive = values_at(fraud_spec(), "customer", log, t)
    assert exclusive["customer_count_1d"] == 2.0  # t - 1d is outside (lower bound open), t itself is not visible
    assert exclusive["customer_tx_amount_mean_1d"] == 3.0
    inclusive = values_at(fraud_spec({"inclusive": True}), "customer", log, t)
    assert inclusive["customer_count_1d"] == 3.0  # s <= t
    assert inclusive["customer_tx_amount_mean_1d"] == pytest.approx(14 / 3, rel=1e-15)
    # a request one microsecond later sees the event at t, and t - 1d + 1 drops out
    assert values_at(fraud_spec(), "customer", log, t + 1)["customer_count_1d"] == 2.0


def test_delay_shifts_every_window() -> None:
    spec = fraud_spec()  # terminal: delay 7d
    t = 100 * DAY
    log = log_of((t - 8 * DAY, 0.0), (t - 7 * DAY - 1, 1.0), (t - 7 * DAY, 1.0))
    got = values_at(spec, "terminal", log, t)
    assert got["terminal_count_1d"] == 1.0  # (t-8d, t-7d): only t-7d-1us; t-8d is the open lower bound
    assert got["terminal_count_7d"] == 2.0
    assert got["terminal_tx_fraud_mean_7d"] == 0.5


def test_ttl_boundary_and_null_indicator() -> None:
    spec = fraud_spec({"null_indicators": True}, customer={"ttl": "2d"})
    t = 100 * DAY
    log = log_of((t, 10.0))
    fresh = values_at(spec, "customer", log, t + 2 * DAY)  # exactly 2 days old: still within the ttl
    assert fresh["customer_count_30d"] == 1.0 and fresh["customer_missing"] == 0.0
    stale = values_at(spec, "customer", log, t + 2 * DAY + 1)
    assert stale["customer_count_30d"] == 0.0 and stale["customer_tx_amount_mean_30d"] == 0.0
    assert stale["customer_missing"] == 1.0
    assert values_at(spec, "customer", None, t)["customer_missing"] == 1.0  # unknown entity
    assert values_at(spec, "customer", log, t)["customer_missing"] == 1.0  # nothing visible yet


@pytest.mark.parametrize(
    "values",
    [
        [1.5, None, 2.5, 10.0],
        [None, None],
        [3.0],
        [0.1, 0.1, 0.1],
        [math.nan, 2.0, None],
        [math.inf, 2.0],
        [math.inf, -math.inf],
        [-math.inf, 5.0, 1e300, -1e300],
    ],
)
def test_aggregates_match_duckdb(values: list[float | None]) -> None:
    con = duckdb.connect()
    rows = ", ".join(f"({'NULL' if v is None else repr(str(v))}::DOUBLE, {i})" for i, v in enumerate(values))
    sql = "SELECT count(*), sum(v), avg(v), stddev_samp(v), min(v), max(v), arg_max(v, CASE WHEN v IS NOT NULL THEN o END)"
    expected = con.execute(f"{sql} FROM (VALUES {rows}) t(v, o)").fetchone()
    assert expected is not None
    for function, want in zip(["count", "sum", "mean", "std", "min", "max", "last"], expected, strict=True):
        got = aggregate(function, values)  # type: ignore[arg-type]
        if want is None or got is None:
            assert got is None and want is None, function
        elif math.isnan(want):
            assert math.isnan(got), function
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), function


def test_sqlite_store_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "online.sqlite"
    path.write_text("this is not sqlite" * 100)
    with pytest.raises(LoopmlError, match=f"{path}: cannot open the online store"):
        SqliteOnlineStore(path).read_events("customer", [1])


# --------------------------------------------------------------------------- materialization


def fraud_like(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 40 * 86_400, n))
    seconds[1::9] = seconds[::9][: len(seconds[1::9])]  # equal timestamps
    fraud = (rng.random(n) < 0.15).astype(np.int8)
    times = np.datetime64(START, "us") + np.sort(seconds).astype("timedelta64[s]")
    return pa.table(
        {
            "transaction_id": pa.array(np.arange(n), pa.int64()),
            "tx_datetime": pa.array(times, pa.timestamp("us")),
            "customer_id": pa.array(rng.integers(0, 25, n), pa.int64()),
            "terminal_id": pa.array(rng.integers(0, 30, n), pa.int64()),
            "tx_amount": pa.array(np.round(rng.gamma(2.0, 30.0, n), 2), pa.float64()),
            "tx_fraud": pa.array(fraud, pa.int8()),
            "tx_fraud_scenario": pa.array(fraud, pa.int8()),
        }
    )


World = tuple[pa.Table, Path, pa.Table]


@pytest.fixture(scope="module")
def fraud_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A small fraud-like table (customer 24 has only old events), its snapshot and its offline training set."""
    folder = tmp_path_factory.mktemp("fraud")
    table = fraud_like(1200, seed=11)
    customers = np.asarray(table.column("customer_id"))
    old = np.where(customers == 24)[0]
    keep = np.ones(table.num_rows, dtype=bool)
    keep[old[3:]] = False  # customer 24 keeps only its first events: nothing in any window at the end
    table = table.filter(pa.array(keep))
    path = folder / "transactions.parquet"
    pq.write_table(table, path)
    train = pq.read_table(
        build_training_set(fraud_spec(customer={"ttl": "2d"}), {"transactions": path}, folder / "t.parquet").path
    )
    return table, path, train


def test_materialize_loads_each_entitys_recent_events(fraud_world: World, tmp_path: Path) -> None:
    table, path, _ = fraud_world
    spec = fraud_spec()
    latest = max(table.column("tx_datetime").to_pylist())
    stages: list[tuple[str, float]] = []
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        result = materialize(spec, {"transactions": path}, store, progress=lambda s, f: stages.append((s, f)))
        assert result.as_of == {"customer": latest + timedelta(microseconds=1), "terminal": latest + timedelta(microseconds=1)}
        assert result.rows == {"customer": 25, "terminal": 30}
        assert stages[-1] == ("materializing terminal", 1.0) and all(0 <= f <= 1 for _, f in stages)
        end = micros(latest)
        rows = table.to_pylist()
        for view, key, horizon in (("customer", "customer_id", 30 * DAY), ("terminal", "terminal_id", 37 * DAY)):
            expected = {r["transaction_id"] for r in rows if micros(r["tx_datetime"]) > end + 1 - horizon}
            logs = store.read_events(view, sorted({r[key] for r in rows}))
            loaded = {i for log in logs if log is not None for i in log.ids}
            assert loaded == expected  # the horizon, and nothing older
            assert result.events[view] == len(expected)
        assert store.materialized_as_of("customer") == latest + timedelta(microseconds=1)
        (quiet,) = store.read_events("customer", [24])
        assert quiet is not None and quiet.ts == ()  # known entity, no recent events


def test_materialize_at_an_earlier_time_then_read_equals_offline(fraud_world: World, tmp_path: Path) -> None:
    table, path, train = fraud_world
    spec = fraud_spec(customer={"ttl": "2d"})
    columns = feature_columns(spec)
    for row in (5, 400, 401, 1100):  # 400/401 share a timestamp with a neighbour
        when = table.column("tx_datetime")[row].as_py()
        with SqliteOnlineStore(tmp_path / f"online-{row}.sqlite") as store:
            materialize(spec, {"transactions": path}, store, as_of=when)
            entities = {
                "customer_id": table.column("customer_id")[row].as_py(),
                "terminal_id": table.column("terminal_id")[row].as_py(),
            }
            features = {"tx_amount": table.column("tx_amount")[row].as_py(), "tx_datetime": when.isoformat()}
            batch = FeatureAssembler(spec, store).vectors([(entities, features)])
        assert batch.missing_entities == [[]] and list(batch.values(0)) == columns
        expected = np.array([train.column(c)[row].as_py() for c in columns], dtype=float)
        np.testing.assert_allclose(batch.matrix[0], expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- request handling


@pytest.fixture
def assembler(fraud_world: World, tmp_path: Path) -> Iterator[FeatureAssembler]:
    _, path, _ = fraud_world
    store = SqliteOnlineStore(tmp_path / "online.sqlite")
    materialize(fraud_spec(customer={"ttl": "2d"}), {"transactions": path}, store)  # as of just after the last event
    yield FeatureAssembler(fraud_spec(customer={"ttl": "2d"}), store)
    store.close()


def test_values_slide_with_the_request_time(fraud_world: World, assembler: FeatureAssembler) -> None:
    table = fraud_world[0]
    last = table.num_rows - 1
    latest = table.column("tx_datetime")[last].as_py()
    entities = {
        "customer_id": table.column("customer_id")[last].as_py(),
        "terminal_id": table.column("terminal_id")[last].as_py(),
    }

    def at(moment: datetime) -> dict[str, float]:
        return assembler.vectors([(entities, {"tx_amount": 10.0, "tx_datetime": moment.isoformat()})]).values(0)

    now = at(latest + timedelta(microseconds=1))
    later = at(latest + timedelta(days=1, microseconds=1))
    assert now["customer_count_1d"] >= 1 and later["customer_count_1d"] == 0  # the 1-day window slid past every event
    assert later["customer_count_7d"] == now["customer_count_7d"]  # the 7-day one did not
    stale = at(latest + timedelta(days=2, microseconds=1))
    assert stale["customer_count_30d"] == 0.0  # the latest event is older than the 2-day ttl
    assert stale["terminal_count_30d"] > 0  # no ttl on terminals


def test_missing_entities_get_missing_history_values(assembler: FeatureAssembler) -> None:
    when = (START + timedelta(days=41)).isoformat()
    batch = assembler.vectors(
        [
            ({"customer_id": 999_999, "terminal_id": 1}, {"tx_amount": 50, "tx_datetime": when}),
            ({"terminal_id": 1}, {"tx_amount": 50, "tx_datetime": when}),
            ({"customer": 3, "terminal": "1"}, {"tx_amount": "50", "tx_datetime": when}),
            ({"customer_id": 24, "terminal_id": 1}, {"tx_amount": 50, "tx_datetime": when}),
        ]
    )
    assert batch.missing_entities == [["customer"], ["customer"], [], []]  # 24 is known, just quiet
    first = batch.values(0)
    assert first["customer_count_1d"] == 0.0 and first["customer_tx_amount_mean_30d"] == 0.0  # default 0.0
    assert first["amount_over_customer_mean_30d"] == 0.0  # ratio over a missing mean -> default
    assert batch.values(1) == first == batch.values(3)
    assert batch.values(2)["terminal_count_30d"] == first["terminal_count_30d"]  # entity names work, "1" is 1
    assert batch.fallback is False


def test_request_timestamps_as_iso_or_epoch(assembler: FeatureAssembler) -> None:
    moment = datetime(2025, 5, 10, 23, 15, 30, tzinfo=UTC)
    entities = {"customer_id": 3, "terminal_id": 1}
    forms = [moment.isoformat(), "2025-05-11T01:15:30+02:00", "2025-05-10T23:15:30Z", moment.timestamp(), str(moment.timestamp())]
    batch = assembler.vectors([(entities, {"tx_amount": 10.0, "tx_datetime": f}) for f in forms])
    assert all(np.array_equal(batch.matrix[0], batch.matrix[i]) for i in range(len(forms)))
    values = batch.values(0)
    assert (values["tx_hour"], values["tx_is_weekend"], values["tx_is_night"]) == (23.0, 1.0, 0.0)


def test_string_request_features_are_handed_over_as_text(fraud_world: World, tmp_path: Path) -> None:
    data = fraud_spec().model_dump(mode="json")
    data["features"]["request"]["merchant"] = {"type": "string", "required": False}
    spec = Spec.model_validate(data)
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        batch = FeatureAssembler(spec, store).vectors(
            [
                ({"customer_id": 1, "terminal_id": 1}, {"tx_amount": 1, "tx_datetime": "2025-05-10", "merchant": "grocer"}),
                ({"customer_id": 1, "terminal_id": 1}, {"tx_amount": 1, "tx_datetime": "2025-05-10"}),
            ]
        )
    assert batch.strings["merchant"].dtype == object and batch.strings["merchant"].tolist() == ["grocer", None]
    assert "merchant" not in batch.columns


def test_request_time_is_now_without_a_time_feature(fraud_world: World, tmp_path: Path) -> None:
    table, path, _ = fraud_world
    data = fraud_spec().model_dump(mode="json")
    del data["features"]["request"]["tx_datetime"]
    data["features"]["transforms"] = {}
    data["features"]["exclude"] = []
    spec = Spec.model_validate(data)
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        materialize(spec, {"transactions": path}, store)
        values = FeatureAssembler(spec, store).vectors([({"customer_id": 3, "terminal_id": 1}, {"tx_amount": 1})]).values(0)
    # the simulated events are from 2025-04/05: long out of every window now
    assert datetime.now() - max(table.column("tx_datetime").to_pylist()) > timedelta(days=40)
    assert values["customer_count_30d"] == 0.0 and values["terminal_count_30d"] == 0.0


@pytest.mark.parametrize(
    ("features", "field", "message"),
    [
        ({"tx_datetime": "2025-05-10T10:00"}, "features.tx_amount", "required request feature is missing"),
        ({"tx_amount": None, "tx_datetime": "2025-05-10T10:00"}, "features.tx_amount", "missing"),
        ({"tx_amount": "abc", "tx_datetime": "2025-05-10T10:00"}, "features.tx_amount", "expected a number, got 'abc'"),
        ({"tx_amount": True, "tx_datetime": "2025-05-10T10:00"}, "features.tx_amount", "got a boolean"),
        ({"tx_amount": float("nan"), "tx_datetime": "2025-05-10T10:00"}, "features.tx_amount", "finite"),
        ({"tx_amount": [1], "tx_datetime": "2025-05-10T10:00"}, "features.tx_amount", "got list"),
        ({"tx_amount": 1.0, "tx_datetime": "yesterday"}, "features.tx_datetime", "ISO-8601"),
        ({"tx_amount": 1.0, "tx_datetime": 1e300}, "features.tx_datetime", "out of range"),
        ({"tx_amount": 1.0, "tx_datetime": "1e300"}, "features.tx_datetime", "out of range"),
        ({"tx_amount": 1.0}, "features.tx_datetime", "required request feature is missing"),
    ],
)
def test_bad_request_features_name_the_field(
    assembler: FeatureAssembler, features: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(RequestFeatureError, match=message) as caught:
        assembler.vectors([({"customer_id": 3, "terminal_id": 1}, features)])
    assert caught.value.field == field
    assert isinstance(caught.value, LoopmlError)
    assert str(caught.value).startswith(field)


def test_bad_input_in_a_batch_names_the_instance(assembler: FeatureAssembler) -> None:
    good = ({"customer_id": 3, "terminal_id": 1}, {"tx_amount": 1.0, "tx_datetime": "2025-05-10T10:00"})
    bad = ({"customer_id": 3, "terminal_id": 1}, {"tx_amount": "x", "tx_datetime": "2025-05-10T10:00"})
    with pytest.raises(RequestFeatureError, match=r"^instances\.1\.features\.tx_amount: ") as caught:
        assembler.vectors([good, bad])
    assert caught.value.index == 1
    with pytest.raises(RequestFeatureError, match=r"^instances\.0\.entities\.customer_id: ") as entity:
        assembler.vectors([({"customer_id": [1], "terminal_id": 1}, good[1]), good])
    assert entity.value.field == "entities.customer_id"


def test_optional_request_features_and_empty_batches(tmp_path: Path) -> None:
    data = fraud_spec().model_dump(mode="json")
    data["features"]["request"]["tx_amount"]["required"] = False
    spec = Spec.model_validate(data)
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        assembler = FeatureAssembler(spec, store)
        batch = assembler.vectors([({"customer_id": 1, "terminal_id": 1}, {"tx_datetime": "2025-05-10T10:00"})])
        values = batch.values(0)
        assert np.isnan(values["tx_amount"])  # like a NULL offline
        assert values["amount_over_customer_mean_30d"] == 0.0
        assert batch.missing_entities == [["customer", "terminal"]]  # nothing materialized yet
        empty = assembler.vectors([])
        assert empty.matrix.shape == (0, len(feature_columns(spec)))


# --------------------------------------------------------------------------- the push API


def tx(i: int, when: str, customer: Any = 1, terminal: Any = 2, amount: Any = 10.0, fraud: Any = 0) -> dict[str, Any]:
    return {
        "transaction_id": i,
        "tx_datetime": when,
        "customer_id": customer,
        "terminal_id": terminal,
        "tx_amount": amount,
        "tx_fraud": fraud,
    }


def test_push_appends_events_and_quarantines_bad_rows(tmp_path: Path) -> None:
    spec = fraud_spec()
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        rows = [
            tx(1, "2025-05-01T10:00:00", amount=10.0),
            tx(2, "2025-05-01T11:00:00+02:00", amount="30.5"),  # 09:00 UTC; text numbers as from a stream
            tx(3, None),  # type: ignore[arg-type]
            tx(4, "not a time"),
            tx(5, "2025-05-01T12:00:00", amount="lots"),
            tx(6, "2025-05-01T12:00:00", customer=[1]),
            tx(7, "2025-05-01T12:00:00", customer=None, amount=None),  # NULL key: terminal only; NULL amount
            {**tx(0, "2025-05-01T12:00:00"), "transaction_id": "x"},
        ]
        result = push_events(spec, store, "transactions", rows)
        assert [i for i, _ in result.quarantined] == [2, 3, 4, 5, 7]
        reasons = dict(result.quarantined)
        assert reasons[2] == "tx_datetime: missing timestamp"
        assert reasons[3].startswith("tx_datetime: expected an ISO-8601 time")
        assert reasons[4] == "tx_amount: expected a number, got 'lots'"
        assert reasons[5].startswith("customer_id: ")
        assert reasons[7] == "transaction_id: expected an integer event id, got 'x'"
        assert result.written == {"customer": 2, "terminal": 3}
        customer, terminal = store.read_events("customer", [1])[0], store.read_events("terminal", [2])[0]
        assert customer is not None and customer.ids == (2, 1) and customer.values == ((30.5, 10.0),)  # sorted by time
        assert terminal is not None and terminal.ids == (2, 1, 7)
        again = push_events(spec, store, "transactions", rows[:2])  # a redelivery counts once
        assert again.written == {"customer": 0, "terminal": 0}
        values = FeatureAssembler(spec, store).vectors(
            [({"customer_id": 1, "terminal_id": 2}, {"tx_amount": 1, "tx_datetime": "2025-05-01T10:00:01"})]
        )
        assert values.values(0)["customer_count_1d"] == 2.0 and values.values(0)["customer_tx_amount_mean_1d"] == 20.25


def test_push_needs_a_known_source_and_event_ids(tmp_path: Path) -> None:
    spec = fraud_spec()
    data = spec.model_dump(mode="json")
    data["sources"]["transactions"]["columns"]["transaction_id"]["unique"] = False
    no_ids = Spec.model_validate(data)
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        with pytest.raises(LoopmlError, match="unknown source 'payments'"):
            push_events(spec, store, "payments", [tx(1, "2025-05-01")])
        with pytest.raises(LoopmlError, match=r"no id column .*sources\.transactions\.columns"):
            push_events(no_ids, store, "transactions", [tx(1, "2025-05-01")])
        result = push_events(no_ids, store, "transactions", [tx(1, "2025-05-01"), tx(1, "2025-05-02")], event_ids=[10, 11])
        assert result.written["customer"] == 2
        with pytest.raises(LoopmlError, match="2 event ids for 1 rows"):
            push_events(no_ids, store, "transactions", [tx(1, "2025-05-01")], event_ids=[1, 2])


# --------------------------------------------------------------------------- command line

runner = CliRunner()


def test_cli_get_as_of_and_materialize_json(trained_copy: Path) -> None:
    result = runner.invoke(app, ["features", "materialize", "--json", "--project", str(trained_copy)])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"]["customer"] > 0 and summary["events"]["customer"] > 0
    end = summary["as_of"]["customer"]

    def get(*extra: str) -> dict[str, Any]:
        out = runner.invoke(
            app, ["features", "get", "--entity", "customer_id=1", "--json", "--project", str(trained_copy), *extra]
        )
        assert out.exit_code == 0, out.stderr
        return dict(json.loads(out.stdout))

    default = get()
    assert default["customer"]["as_of"] == end  # the end of the data
    assert set(default["customer"]["values"]) == {n for n in feature_columns(fraud_spec()) if n.startswith("customer_")}
    much_later = get("--as-of", "2030-01-01T00:00:00")
    assert much_later["customer"]["as_of"] == "2030-01-01T00:00:00"
    assert much_later["customer"]["values"]["customer_count_30d"] == 0.0
    bad = runner.invoke(app, ["features", "get", "--entity", "customer_id=1", "--as-of", "soon", "--project", str(trained_copy)])
    assert bad.exit_code == 1 and "--as-of 'soon'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    unknown = runner.invoke(
        app, ["features", "get", "--entity", "customer_id=99999999", "--json", "--project", str(trained_copy)]
    )
    assert json.loads(unknown.stdout) == {"customer": None}
