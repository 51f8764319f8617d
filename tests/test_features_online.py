"""The online feature store, materialization and request-time feature vectors."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.errors import LoopmlError
from loopml.features import FeatureAssembler, OnlineStore, SqliteOnlineStore, build_training_set, feature_columns, materialize
from loopml.features.definitions import LAST_EVENT_KEY, view_outputs
from loopml.features.vector import RequestFeatureError
from loopml.spec.load import parse_spec
from loopml.spec.model import Spec

FRAUD_YAML = Path(__file__).resolve().parents[1] / "src" / "loopml" / "datasets" / "fraud.yaml"
START = datetime(2025, 4, 1)
AS_OF = datetime(2025, 5, 1, 12, 0)

# --------------------------------------------------------------------------- the store contract


#: One factory per online store backend; every backend passes the same contract tests.
BACKENDS: dict[str, Callable[[Path], OnlineStore]] = {
    "sqlite": lambda folder: SqliteOnlineStore(folder / "online.sqlite"),
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


def test_store_round_trip(store: OnlineStore) -> None:
    later = AS_OF + timedelta(seconds=1)
    store.write("customer", [(1, {"a": 1.5, "b": 0.0}, AS_OF), (2, {"a": -2.0, "b": 3.25}, later)])
    assert store.read("customer", [2, 1]) == [({"a": -2.0, "b": 3.25}, later), ({"a": 1.5, "b": 0.0}, AS_OF)]
    assert store.read("customer", [1, 1]) == [({"a": 1.5, "b": 0.0}, AS_OF)] * 2
    assert store.read("customer", []) == []


def test_store_upserts(store: OnlineStore) -> None:
    store.write("customer", [(1, {"a": 1.0}, AS_OF)])
    store.write("customer", [(1, {"a": 2.0, "c": 5.0}, AS_OF + timedelta(days=1))])
    assert store.read("customer", [1]) == [({"a": 2.0, "c": 5.0}, AS_OF + timedelta(days=1))]


def test_store_reopens_after_close(store: OnlineStore) -> None:
    store.write("customer", [(1, {"a": 1.0}, AS_OF)])
    store.close()
    assert store.read("customer", [1]) == [({"a": 1.0}, AS_OF)]


def test_store_unknown_entity_and_view(store: OnlineStore) -> None:
    store.write("customer", [(1, {"a": 1.0}, AS_OF)])
    assert store.read("customer", [3, 1, 4]) == [None, ({"a": 1.0}, AS_OF), None]
    assert store.read("terminal", [1]) == [None]  # views do not share rows


def test_store_int_and_str_keys(store: OnlineStore) -> None:
    store.write("shop", [("s-1", {"a": 1.0}, AS_OF), (42, {"a": 2.0}, AS_OF), (np.int64(7), {"a": 3.0}, AS_OF)])  # type: ignore[list-item]
    assert store.read("shop", ["s-1"]) == [({"a": 1.0}, AS_OF)]
    # "42" (as typed on the command line) finds the row written with 42
    assert store.read("shop", [42, "42", 7]) == [({"a": 2.0}, AS_OF), ({"a": 2.0}, AS_OF), ({"a": 3.0}, AS_OF)]
    with pytest.raises(LoopmlError, match="entity key"):
        store.read("shop", [1.5])  # type: ignore[list-item]


def test_store_timezone_aware_as_of_is_stored_in_utc(store: OnlineStore) -> None:
    store.write("customer", [(1, {"a": 1.0}, datetime(2025, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))])
    assert store.read("customer", [1]) == [({"a": 1.0}, datetime(2025, 5, 1, 12, 0))]


def test_sqlite_store_persists_and_reads_fast(tmp_path: Path) -> None:
    path = tmp_path / "state" / "online.sqlite"
    with SqliteOnlineStore(path) as first:
        first.write("customer", [(k, {"a": float(k)}, AS_OF) for k in range(5000)])
    second = SqliteOnlineStore(path)
    assert second.read("customer", [4999]) == [({"a": 4999.0}, AS_OF)]
    started = time.perf_counter()
    for k in range(2000):
        second.read("customer", [k])
    per_read = (time.perf_counter() - started) / 2000
    assert per_read < 0.001, f"single-entity read took {per_read * 1e3:.3f} ms"
    second.close()
    second.close()  # closing twice is harmless


def test_sqlite_store_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "online.sqlite"
    path.write_text("this is not sqlite" * 100)
    with pytest.raises(LoopmlError, match="cannot open the online store"):
        SqliteOnlineStore(path).read("customer", [1])


# --------------------------------------------------------------------------- offline/online skew


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


def fraud_spec(**changes: Any) -> Spec:
    spec = parse_spec(FRAUD_YAML.read_text(encoding="utf-8"))
    if not changes:
        return spec
    data = spec.model_dump(mode="json")
    for view, fields in changes.items():
        data["features"]["views"][view].update(fields)
    return Spec.model_validate(data)


World = tuple[pa.Table, Path, pa.Table]


@pytest.fixture(scope="module")
def fraud_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A small fraud-like table, its snapshot and its offline training set (ttl on the customer view)."""
    folder = tmp_path_factory.mktemp("fraud")
    table = fraud_like(1200, seed=11)
    path = folder / "transactions.parquet"
    pq.write_table(table, path)
    spec = fraud_spec(customer={"ttl": "2d"})
    train = pq.read_table(build_training_set(spec, {"transactions": path}, folder / "train.parquet").path)
    return table, path, train


def entities_of(table: pa.Table, row: int) -> dict[str, Any]:
    return {"customer_id": table.column("customer_id")[row].as_py(), "terminal_id": table.column("terminal_id")[row].as_py()}


def test_materialize_equals_offline_features_at_the_same_time(fraud_world: World, tmp_path: Path) -> None:
    table, path, train = fraud_world
    spec = fraud_spec(customer={"ttl": "2d"})
    for row in (5, 400, 401, 1199):  # 400/401 share a timestamp with their neighbours
        when = table.column("tx_datetime")[row].as_py()
        with SqliteOnlineStore(tmp_path / f"online-{row}.sqlite") as store:
            result = materialize(spec, {"transactions": path}, store, as_of=when)
            assert result.rows == {"customer": 25, "terminal": 30}
            assert result.as_of == {"customer": when, "terminal": when}
            for view, key in (("customer", "customer_id"), ("terminal", "terminal_id")):
                got = store.read(view, [table.column(key)[row].as_py()])[0]
                assert got is not None and got[1] == when
                values = {k: v for k, v in got[0].items() if k != LAST_EVENT_KEY}
                expected = {name: train.column(name)[row].as_py() for name in values}
                assert values == pytest.approx(expected, rel=1e-9, abs=1e-9)
                assert list(values) == [o.name for o in view_outputs(spec, view)]


def test_assembler_gives_the_offline_row(fraud_world: World, tmp_path: Path) -> None:
    table, path, train = fraud_world
    spec = fraud_spec(customer={"ttl": "2d"})
    columns = feature_columns(spec)
    for row in (3, 600, 1100):
        when = table.column("tx_datetime")[row].as_py()
        with SqliteOnlineStore(tmp_path / f"online-{row}.sqlite") as store:
            materialize(spec, {"transactions": path}, store, as_of=when)
            entities = entities_of(table, row)
            features = {"tx_amount": table.column("tx_amount")[row].as_py(), "tx_datetime": when.isoformat()}
            batch = FeatureAssembler(spec, store).vectors([(entities, features)])
        assert batch.matrix.shape == (1, len(columns))
        assert batch.missing_entities == [[]]
        expected = np.array([train.column(c)[row].as_py() for c in columns], dtype=float)
        np.testing.assert_allclose(batch.matrix[0], expected, rtol=1e-9, atol=1e-9)
        assert list(batch.values(0)) == columns


def test_default_as_of_is_just_after_the_latest_event(fraud_world: World, tmp_path: Path) -> None:
    table, path, _ = fraud_world
    latest = max(table.column("tx_datetime").to_pylist())
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        result = materialize(fraud_spec(), {"transactions": path}, store)
        assert result.as_of == {"customer": latest + timedelta(microseconds=1), "terminal": latest + timedelta(microseconds=1)}
        last_customer = table.column("customer_id")[table.num_rows - 1].as_py()
        got = store.read("customer", [last_customer])[0]
        assert got is not None and got[0][LAST_EVENT_KEY] == (latest - datetime(1970, 1, 1)) // timedelta(microseconds=1)


# --------------------------------------------------------------------------- request handling


@pytest.fixture
def assembler(fraud_world: World, tmp_path: Path) -> Iterator[FeatureAssembler]:
    _, path, _ = fraud_world
    store = SqliteOnlineStore(tmp_path / "online.sqlite")
    materialize(fraud_spec(customer={"ttl": "2d"}), {"transactions": path}, store)  # as of just after the last event
    yield FeatureAssembler(fraud_spec(customer={"ttl": "2d"}), store)
    store.close()


def test_missing_entities_get_missing_history_values(assembler: FeatureAssembler) -> None:
    when = (START + timedelta(days=41)).isoformat()
    batch = assembler.vectors(
        [
            ({"customer_id": 999_999, "terminal_id": 1}, {"tx_amount": 50, "tx_datetime": when}),
            ({"terminal_id": 1}, {"tx_amount": 50, "tx_datetime": when}),
            ({"customer": 3, "terminal": "1"}, {"tx_amount": "50", "tx_datetime": when}),
        ]
    )
    assert batch.missing_entities == [["customer"], ["customer"], []]
    first = batch.values(0)
    assert first["customer_count_1d"] == 0.0 and first["customer_tx_amount_mean_30d"] == 0.0  # default 0.0
    assert first["amount_over_customer_mean_30d"] == 0.0  # ratio over a missing mean -> default
    assert batch.values(1) == first
    assert batch.values(2)["terminal_count_30d"] == first["terminal_count_30d"]  # entity names work, "1" is 1


def test_ttl_is_honoured_at_request_time(fraud_world: World, assembler: FeatureAssembler) -> None:
    table = fraud_world[0]
    last = table.num_rows - 1
    latest = table.column("tx_datetime")[last].as_py()
    entities = entities_of(table, last)
    fresh = assembler.vectors([(entities, {"tx_amount": 10.0, "tx_datetime": (latest + timedelta(days=2)).isoformat()})])
    assert fresh.values(0)["customer_count_30d"] > 0  # exactly 2 days old: still within the ttl
    late = latest + timedelta(days=2, microseconds=1)
    stale = assembler.vectors([(entities, {"tx_amount": 10.0, "tx_datetime": late.isoformat()})])
    assert stale.values(0)["customer_count_30d"] == 0.0  # latest event older than the 2-day ttl
    assert stale.values(0)["terminal_count_30d"] == fresh.values(0)["terminal_count_30d"]  # no ttl on terminals
    assert stale.missing_entities == [[]]  # known entity, just stale


def test_request_timestamps_as_iso_or_epoch(assembler: FeatureAssembler) -> None:
    moment = datetime(2025, 5, 10, 23, 15, 30, tzinfo=UTC)
    entities = {"customer_id": 3, "terminal_id": 1}
    forms = [moment.isoformat(), "2025-05-11T01:15:30+02:00", "2025-05-10T23:15:30Z", moment.timestamp(), str(moment.timestamp())]
    batch = assembler.vectors([(entities, {"tx_amount": 10.0, "tx_datetime": f}) for f in forms])
    assert all(np.array_equal(batch.matrix[0], batch.matrix[i]) for i in range(len(forms)))
    values = batch.values(0)
    assert (values["tx_hour"], values["tx_is_weekend"], values["tx_is_night"]) == (23.0, 1.0, 0.0)


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


def test_optional_request_features_and_empty_batches(fraud_world: World, tmp_path: Path) -> None:
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
