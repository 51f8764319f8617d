"""Zero training/serving skew, proved: the online path gives the offline feature vector of every sampled event.

A simulated fraud world (timestamps rounded to 15 minutes, so many events tie
and many fall exactly on window bounds; some amounts NULL) is built offline
with DuckDB, then replayed in time order through the push API into each
online backend (SQLite and a real Redis server). Before the events of each
timestamp are pushed (exclusive windows; after, for inclusive ones, since an
event then sees its own time), the sampled events of that timestamp are
assembled online, as of their own time, and must equal their offline rows.
The spec uses every aggregation, a delay, a ttl shorter than its windows and
the null indicators. A second test materializes the store at the end of the
data and compares reads, at the end and later, with the offline
point-in-time join of a spine of every entity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from loopml.datasets.fraud import FraudWorldConfig, simulate
from loopml.features import FeatureAssembler, build_training_set, feature_columns, materialize, push_events
from loopml.features.join import connect, point_in_time_join, register_source
from loopml.features.online.base import OnlineStore, micros
from loopml.features.online.redis import RedisOnlineStore
from loopml.features.online.sqlite import SqliteOnlineStore
from loopml.spec.model import Spec

SAMPLE = 2500  # sampled events per replay (four replays: two backends x inclusive/exclusive)
ROUND_US = 15 * 60 * 1_000_000
ALL = ["count", "sum", "mean", "std", "min", "max", "last"]


def skew_spec(inclusive: bool) -> Spec:
    return Spec.model_validate(
        {
            "project": "skew",
            "entities": {"customer": {"key": "customer_id"}, "terminal": {"key": "terminal_id"}},
            "sources": {
                "transactions": {
                    "path": "transactions.parquet",
                    "timestamp": "tx_datetime",
                    "columns": {
                        "transaction_id": {"type": "int", "unique": True},
                        "tx_datetime": {"type": "timestamp"},
                        "customer_id": {"type": "int"},
                        "terminal_id": {"type": "int"},
                        "tx_amount": {"type": "float"},
                        "tx_fraud": {"type": "int"},
                    },
                }
            },
            "label": {"source": "transactions", "column": "tx_fraud", "delay": "7d"},
            "features": {
                "inclusive": inclusive,
                "default": -1.0,
                "null_indicators": True,
                "request": {"tx_amount": {"type": "float", "required": False}, "tx_datetime": {"type": "timestamp"}},
                "views": {
                    "customer": {
                        "entity": "customer",
                        "source": "transactions",
                        "ttl": "3d",
                        "aggregations": [{"column": "tx_amount", "functions": ALL, "windows": ["1h", "1d", "7d"]}],
                    },
                    "customer_recent": {
                        "entity": "customer",
                        "source": "transactions",
                        "delay": "1h",
                        "ttl": "6h",  # shorter than the window: the ttl decides
                        "aggregations": [{"column": "tx_amount", "functions": ["mean", "last", "count"], "windows": ["1d"]}],
                    },
                    "terminal": {
                        "entity": "terminal",
                        "source": "transactions",
                        "delay": "7d",  # labels are known a week later
                        "aggregations": [
                            {"column": "tx_fraud", "functions": ["count", "sum", "mean", "last"], "windows": ["1d", "7d"]},
                            {"column": "tx_amount", "functions": ["max", "std"], "windows": ["7d"]},
                        ],
                    },
                },
                "transforms": {
                    "tx_hour": {"op": "hour", "inputs": ["tx_datetime"]},
                    "amount_over_mean_7d": {"op": "ratio", "inputs": ["tx_amount", "customer_tx_amount_mean_7d"]},
                },
                "exclude": ["tx_datetime"],
            },
        }
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    """The simulated transactions (rounded times, 2% NULL amounts), written as the source snapshot."""
    table = simulate(FraudWorldConfig(days=45, n_customers=250, n_terminals=300, seed=11))
    rng = np.random.default_rng(5)
    us = table.column("tx_datetime").cast(pa.int64()).to_numpy()
    rounded = pa.array((us // ROUND_US) * ROUND_US, pa.int64()).cast(pa.timestamp("us"))
    amounts = table.column("tx_amount").to_numpy()
    amount = pa.array(amounts, mask=rng.random(len(amounts)) < 0.02)
    table = table.set_column(table.schema.get_field_index("tx_datetime"), "tx_datetime", rounded)
    table = table.set_column(table.schema.get_field_index("tx_amount"), "tx_amount", amount)
    path = tmp_path_factory.mktemp("skew") / "transactions.parquet"
    pq.write_table(table.select(["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud"]), path)
    return path, pq.read_table(path)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    store: OnlineStore
    if request.param == "redis":
        store = RedisOnlineStore(request.getfixturevalue("redis_server").url, "skew")
    else:
        store = SqliteOnlineStore(tmp_path / "online.sqlite")
    yield store
    store.close()


def assert_same(online: np.ndarray[Any, Any], offline: np.ndarray[Any, Any], columns: list[str], where: str) -> None:
    close = np.isclose(online, offline, rtol=1e-9, atol=1e-12) | (np.isnan(online) & np.isnan(offline))
    if not close.all():
        row, col = np.argwhere(~close)[0]
        raise AssertionError(f"{where}: {columns[col]} online {online[row, col]!r} != offline {offline[row, col]!r}")


@pytest.mark.parametrize("inclusive", [False, True], ids=["exclusive", "inclusive"])
def test_replayed_stream_gives_the_offline_vectors(
    world: tuple[Path, pa.Table], backend: OnlineStore, inclusive: bool, tmp_path: Path
) -> None:
    path, table = world
    spec = skew_spec(inclusive)
    columns = feature_columns(spec)
    offline = pq.read_table(build_training_set(spec, {"transactions": path}, tmp_path / "train.parquet").path)
    expected = np.column_stack([offline.column(c).to_numpy(zero_copy_only=False).astype(float) for c in columns])
    rows = table.to_pylist()
    times = [micros(r["tx_datetime"]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (times[i], i))
    sampled = set(np.random.default_rng(1).choice(len(rows), size=SAMPLE, replace=False).tolist())
    assembler = FeatureAssembler(spec, backend)
    checked = 0
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and times[order[end]] == times[order[start]]:
            end += 1
        group = order[start:end]
        batch = [i for i in group if i in sampled]
        requests = [
            (
                {"customer_id": rows[i]["customer_id"], "terminal_id": rows[i]["terminal_id"]},
                {"tx_amount": rows[i]["tx_amount"], "tx_datetime": rows[i]["tx_datetime"].isoformat()},
            )
            for i in batch
        ]
        if inclusive:  # the event's own time is visible: push first
            push_events(spec, backend, "transactions", [rows[i] for i in group])
        if batch:
            got = assembler.vectors(requests)
            assert_same(got.matrix, expected[batch], columns, f"transaction {rows[batch[0]]['transaction_id']}")
            checked += len(batch)
        if not inclusive:
            result = push_events(spec, backend, "transactions", [rows[i] for i in group])
            assert result.quarantined == []
        start = end
    assert checked == SAMPLE
    # the sample saw every branch: missing history, expired ttl, NULL-only windows and real values
    sample = expected[sorted(sampled)]
    indicator = sample[:, columns.index("customer_recent_missing")]
    assert 0 < indicator.sum() < len(sample)
    assert (sample[:, columns.index("customer_tx_amount_std_1h")] == -1.0).any()
    assert (sample[:, columns.index("terminal_tx_fraud_sum_7d")] > 0).any()


def test_materialized_store_equals_the_offline_point_in_time_join(
    world: tuple[Path, pa.Table], backend: OnlineStore, tmp_path: Path
) -> None:
    path, table = world
    spec = skew_spec(inclusive=False)
    result = materialize(spec, {"transactions": path}, backend)
    latest = pc.max(table.column("tx_datetime")).as_py()
    assert set(result.as_of.values()) == {latest + timedelta(microseconds=1)}
    assembler = FeatureAssembler(spec, backend)
    con = connect()
    sources = {"transactions": register_source(con, "transactions", path)}
    for later in (timedelta(microseconds=1), timedelta(hours=1), timedelta(days=2, hours=5), timedelta(days=8)):
        moment = latest + later
        for view_name, view in spec.features.views.items():
            key = spec.entities[view.entity].key
            keys = sorted(set(table.column(key).to_pylist()))
            spine = pa.table({key: keys, "at": pa.array([moment] * len(keys), pa.timestamp("us")), "__rid": range(len(keys))})
            con.register("spine_arrow", spine)
            con.execute("CREATE OR REPLACE TEMP TABLE spine AS SELECT * FROM spine_arrow")
            joined = point_in_time_join(con, "spine", spec, sources=sources, timestamp="at", views=[view_name])
            reference = joined.order("__rid").to_arrow_table()
            online, _ = assembler.view_values(view_name, keys, micros(moment))
            assert all(values is not None for values in online)  # every entity is known
            names = assembler.windows[view_name].names
            got = np.array([[values[n] for n in names] for values in online if values is not None], dtype=float)
            want = np.column_stack([reference.column(n).to_numpy(zero_copy_only=False).astype(float) for n in names])
            assert_same(got, want, names, f"{view_name} at end + {later}")
            if later == timedelta(days=8) and view.ttl is not None:
                assert math.isclose(float(got[:, names.index(f"{view_name}_missing")].mean()), 1.0)  # every ttl has expired
    con.close()
