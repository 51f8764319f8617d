"""Offline point-in-time features: DuckDB results against a brute-force reference."""

from __future__ import annotations

import json
import math
import re
import statistics
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import DataError, LoopmlError
from loopml.features import apply_transforms, build_training_set, feature_columns, point_in_time_join
from loopml.features.join import connect, register_source
from loopml.features.offline import build_spine_training_set
from loopml.project import Project
from loopml.spec.model import Spec
from specs import fraud_spec

MINUTE = 60_000_000  # microseconds
EPOCH = datetime(1970, 1, 1)
START = (datetime(2025, 4, 1) - EPOCH) // timedelta(microseconds=1)

# --------------------------------------------------------------------------- helpers


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def events_table(n: int, seed: int, null_rate: float = 0.15) -> pa.Table:
    """Random events on a minute grid (many equal timestamps), in shuffled file order."""
    rng = np.random.default_rng(seed)
    ts = START + rng.integers(0, 240, n) * MINUTE
    amount = np.round(rng.gamma(2.0, 20.0, n), 2)
    amount_list: list[float | None] = [None if rng.random() < null_rate else float(a) for a in amount]
    return pa.table(
        {
            "event_id": pa.array(np.arange(n), pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us")),
            "user_id": pa.array(rng.integers(0, 6, n), pa.int64()),
            "shop": pa.array([f"s{k}" for k in rng.integers(0, 4, n)], pa.string()),
            "amount": pa.array(amount_list, pa.float64()),
            "flag": pa.array(rng.integers(0, 2, n), pa.int8()),
        }
    )


SOURCE_COLUMNS = {
    "event_id": {"type": "int"},
    "ts": {"type": "timestamp"},
    "user_id": {"type": "int"},
    "shop": {"type": "string"},
    "amount": {"type": "float"},
    "flag": {"type": "int"},
}


def make_spec(
    views: dict[str, Any],
    *,
    inclusive: bool = False,
    default: float = 0.0,
    label_source: str = "events",
    transforms: dict[str, Any] | None = None,
    request: dict[str, Any] | None = None,
    exclude: list[str] | None = None,
) -> Spec:
    sources = {name: {"path": f"{name}.parquet", "timestamp": "ts", "columns": SOURCE_COLUMNS} for name in ("events", "history")}
    return Spec.model_validate(
        {
            "project": "t",
            "entities": {"user": {"key": "user_id"}, "shop": {"key": "shop"}},
            "sources": sources,
            "label": {"source": label_source, "column": "flag"},
            "features": {
                "inclusive": inclusive,
                "default": default,
                "views": views,
                "request": request or {},
                "transforms": transforms or {},
                "exclude": exclude or [],
            },
        }
    )


def view(
    entity: str, functions: list[str], windows: list[str], column: str = "amount", source: str = "events", **extra: Any
) -> dict[str, Any]:
    aggregation = {"column": column, "functions": functions, "windows": windows}
    return {"entity": entity, "source": source, "aggregations": [aggregation], **extra}


def small_table(ts: list[int | None], amount: list[float | None], user: list[int | None] | None = None) -> pa.Table:
    n = len(ts)
    return pa.table(
        {
            "event_id": list(range(n)),
            "ts": pa.array(ts, pa.timestamp("us")),
            "user_id": pa.array(user or [1] * n, pa.int64()),
            "shop": ["a"] * n,
            "amount": pa.array(amount, pa.float64()),
            "flag": pa.array([0] * n, pa.int8()),
        }
    )


def build(tmp_path: Path, spec: Spec, table: pa.Table) -> pa.Table:
    path = write(table, tmp_path / "events.parquet")
    return pq.read_table(build_training_set(spec, {"events": path}, tmp_path / "train.parquet").path)


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def micros(column: pa.ChunkedArray) -> list[int | None]:
    return [None if v is None else (v - EPOCH) // timedelta(microseconds=1) for v in column.to_pylist()]


def reference(spec: Spec, view_name: str, spine: pa.Table, events: pa.Table) -> dict[str, list[float]]:
    """The window semantics, written the slow obvious way."""
    view = spec.features.views[view_name]
    key = spec.entities[view.entity].key
    inclusive, default = spec.features.inclusive, spec.features.default
    us = timedelta(microseconds=1)
    d = view.delay // us
    ttl = None if view.ttl is None else view.ttl // us
    e_key, e_ts = events.column(key).to_pylist(), micros(events.column("ts"))
    s_key, s_ts = spine.column(key).to_pylist(), micros(spine.column("ts"))
    out: dict[str, list[float]] = {}
    for name, agg, fn, window in view.outputs(view_name):
        if name in out:
            continue
        w = window // us
        values = events.column(agg.column).to_pylist()
        col: list[float] = []
        for k, t in zip(s_key, s_ts, strict=True):
            missing = 0.0 if fn in ("count", "sum") else default
            if k is None or t is None:
                col.append(missing)
                continue

            def visible(s: int | None, t: int = t) -> bool:
                return s is not None and (s <= t - d if inclusive else s < t - d)

            mine = [j for j in range(len(e_key)) if e_key[j] == k and visible(e_ts[j])]
            last_seen = max((e_ts[j] or 0 for j in mine), default=None)
            if ttl is not None and last_seen is not None and t - last_seen > ttl:
                col.append(missing)
                continue
            rows = [j for j in mine if e_ts[j] > t - d - w]  # type: ignore[operator]
            vals = [float(values[j]) for j in rows if values[j] is not None]
            if fn == "count":
                col.append(float(len(rows)))
            elif fn == "sum":
                col.append(math.fsum(vals))
            elif not vals or (fn == "std" and len(vals) < 2):
                col.append(default)
            elif fn == "mean":
                col.append(math.fsum(vals) / len(vals))
            elif fn == "std":
                col.append(statistics.stdev(vals))
            elif fn == "min":
                col.append(min(vals))
            elif fn == "max":
                col.append(max(vals))
            else:  # last: the latest non-null value, ties by file position
                j = max((j for j in rows if values[j] is not None), key=lambda j: (e_ts[j] or 0, j))
                col.append(float(values[j]))
        out[name] = col
    return out


def assert_matches(result: pa.Table, expected: dict[str, list[float]]) -> None:
    for name, col in expected.items():
        np.testing.assert_allclose(result.column(name).to_numpy(), np.array(col), rtol=1e-9, atol=1e-9, err_msg=name)


ALL_FUNCTIONS = ["count", "sum", "mean", "std", "min", "max", "last"]

# --------------------------------------------------------------------------- semantics vs reference


@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize(("delay", "ttl"), [("0s", None), ("10m", None), ("0s", "45m"), ("20m", "30m")])
def test_training_set_matches_brute_force(tmp_path: Path, inclusive: bool, delay: str, ttl: str | None) -> None:
    table = events_table(260, seed=int(inclusive) + 10 * len(delay) + (0 if ttl is None else 100))
    views = {
        "u": {
            "entity": "user",
            "source": "events",
            "delay": delay,
            "ttl": ttl,
            "aggregations": [
                {"column": "amount", "functions": ALL_FUNCTIONS, "windows": ["30m", "1h", "3h"]},
                {"column": "flag", "functions": ["count", "mean"], "windows": ["1h"]},
            ],
        },
        "s": view("shop", ["count", "last"], ["20m"]),
    }
    spec = make_spec(views, inclusive=inclusive, default=-1.0)
    path = write(table, tmp_path / "events.parquet")
    result = build_training_set(spec, {"events": path}, tmp_path / "out" / "train.parquet")
    out = pq.read_table(result.path)
    assert result.rows == out.num_rows == table.num_rows
    assert out.column("event_id").to_pylist() == table.column("event_id").to_pylist()  # spine order kept
    assert out.column_names == table.column_names + result.features
    assert result.features == feature_columns(spec)
    assert_matches(out, reference(spec, "u", table, table))
    assert_matches(out, reference(spec, "s", table, table))


@pytest.mark.parametrize("inclusive", [False, True])
def test_view_over_another_source_uses_the_general_join(tmp_path: Path, inclusive: bool) -> None:
    history, spine = events_table(300, seed=1), events_table(120, seed=2)
    views = {
        "h": {
            "entity": "user",
            "source": "history",
            "delay": "5m",
            "ttl": "2h",
            "aggregations": [{"column": "amount", "functions": ALL_FUNCTIONS, "windows": ["40m", "2h"]}],
        },
        "e": view("user", ["sum"], ["1h"]),
    }
    spec = make_spec(views, inclusive=inclusive, default=float("nan"))
    paths = {"events": write(spine, tmp_path / "events.parquet"), "history": write(history, tmp_path / "history.parquet")}
    out = pq.read_table(build_training_set(spec, paths, tmp_path / "train.parquet").path)
    assert out.column("event_id").to_pylist() == spine.column("event_id").to_pylist()
    expected = reference(spec, "h", spine, history)
    for name, col in expected.items():  # NaN default: compare NaN positions too
        np.testing.assert_allclose(out.column(name).to_numpy(), np.array(col), rtol=1e-9, atol=1e-9, equal_nan=True)
    assert_matches(out, reference(spec, "e", spine, spine))


def test_point_in_time_join_on_an_arbitrary_spine(tmp_path: Path) -> None:
    history = events_table(200, seed=3)
    spec = make_spec(
        {
            "h": {
                "entity": "user",
                "source": "history",
                "aggregations": [{"column": "amount", "functions": ["count", "mean"], "windows": ["1h"]}],
            }
        }
    )
    con = connect()
    sources = {"history": register_source(con, "history", write(history, tmp_path / "h.parquet"))}
    times = [START + 90 * MINUTE, START + 180 * MINUTE, START + 180 * MINUTE]
    spine = pa.table({"rid": [10, 11, 12], "user_id": [1, 2, 99], "when": pa.array(times, pa.timestamp("us"))})
    rel = point_in_time_join(con, con.from_arrow(spine), spec, sources=sources, timestamp="when", row_id="rid")
    got = rel.order("rid").to_arrow_table()
    expected = reference(spec, "h", spine.rename_columns(["rid", "user_id", "ts"]), history)
    assert got.column("rid").to_pylist() == [10, 11, 12]
    assert_matches(got, expected)
    assert got.column("h_count_1h").to_pylist()[2] == 0.0  # unknown entity: no history
    with pytest.raises(DataError, match="'user_id' is missing"):
        no_key = con.from_arrow(spine.drop_columns(["user_id"]))
        point_in_time_join(con, no_key, spec, sources=sources, timestamp="when", row_id="rid")
    con.close()


# --------------------------------------------------------------------------- boundaries and ties


def boundary_table(d_us: int, w_us: int) -> pa.Table:
    t = START + 1000 * MINUTE
    ts = [t - d_us - w_us - 1, t - d_us - w_us, t - d_us - w_us + 1, t - d_us - 1, t - d_us, t - d_us + 1, t]
    return pa.table(
        {
            "event_id": list(range(7)),
            "ts": pa.array(ts, pa.timestamp("us")),
            "user_id": [1] * 7,
            "shop": ["a"] * 7,
            "amount": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            "flag": pa.array([0] * 7, pa.int8()),
        }
    )


@pytest.mark.parametrize(("inclusive", "count", "total"), [(False, 2, 12.0), (True, 3, 28.0)])
def test_window_bounds_are_exact_to_the_microsecond(tmp_path: Path, inclusive: bool, count: int, total: float) -> None:
    d_us, w_us = 10 * MINUTE, 60 * MINUTE
    spec = make_spec(
        {
            "u": {
                "entity": "user",
                "source": "events",
                "delay": "10m",
                "aggregations": [{"column": "amount", "functions": ["count", "sum"], "windows": ["1h"]}],
            }
        },
        inclusive=inclusive,
    )
    path = write(boundary_table(d_us, w_us), tmp_path / "events.parquet")
    out = pq.read_table(build_training_set(spec, {"events": path}, tmp_path / "train.parquet").path)
    # the last row sits at t: it sees t-d-w < s < t-d (2 rows: 4 + 8), or <= t-d (+16)
    assert out.column("u_count_1h").to_pylist()[-1] == count
    assert out.column("u_amount_sum_1h").to_pylist()[-1] == total


@pytest.mark.parametrize(("inclusive", "expected"), [(False, [0.0, 0.0, 2.0]), (True, [2.0, 2.0, 3.0])])
def test_events_at_the_same_time_are_ties_not_order(tmp_path: Path, inclusive: bool, expected: list[float]) -> None:
    table = small_table([START, START, START + MINUTE], [5.0, 3.0, None], user=[7, 7, 7])
    out = build(tmp_path, make_spec({"u": view("user", ["count", "last"], ["1h"])}, inclusive=inclusive), table)
    assert out.column("u_count_1h").to_pylist() == expected
    # last: both earlier rows share a timestamp, so file order decides (3.0); the NULL row is skipped
    last = out.column("u_amount_last_1h").to_pylist()
    assert last[2] == 3.0
    if inclusive:
        assert last[:2] == [3.0, 3.0]


def test_missing_history_and_null_values(tmp_path: Path) -> None:
    table = small_table([START + i * MINUTE for i in range(4)], [None, None, 4.0, 6.0])
    spec = make_spec({"u": view("user", ALL_FUNCTIONS, ["1h"])}, default=-7.0)
    out = build(tmp_path, spec, table)
    col = {name: out.column(name).to_pylist() for name in feature_columns(spec)}
    assert col["u_count_1h"] == [0.0, 1.0, 2.0, 3.0]  # count counts rows, NULL values included
    assert col["u_amount_sum_1h"] == [0.0, 0.0, 0.0, 4.0]  # no values: sum is 0
    assert col["u_amount_mean_1h"] == [-7.0, -7.0, -7.0, 4.0]  # no values: the default
    assert col["u_amount_std_1h"] == [-7.0, -7.0, -7.0, -7.0]  # fewer than two values: the default
    assert col["u_amount_last_1h"] == [-7.0, -7.0, -7.0, 4.0]
    assert not any(v is None for values in col.values() for v in values)


def test_rows_without_key_or_time_get_missing_history_and_are_not_events(tmp_path: Path) -> None:
    table = small_table([START, None, START + MINUTE, START + 2 * MINUTE], [1.0, 2.0, 4.0, 8.0], user=[1, 1, None, 1])
    out = build(tmp_path, make_spec({"u": view("user", ["count", "sum"], ["1h"])}), table)
    assert out.column("u_count_1h").to_pylist() == [0.0, 0.0, 0.0, 1.0]
    assert out.column("u_amount_sum_1h").to_pylist() == [0.0, 0.0, 0.0, 1.0]


def test_snapshot_folder_keeps_file_order_for_ties(tmp_path: Path) -> None:
    folder = tmp_path / "snap"
    folder.mkdir()
    for i, (ts, amount) in enumerate([(START, 1.0), (START, 2.0), (START + MINUTE, None)]):
        write(small_table([ts], [amount]).set_column(0, "event_id", pa.array([i])), folder / f"part-{i}.parquet")
    spec = make_spec({"u": view("user", ["last"], ["1h"])})
    out = pq.read_table(build_training_set(spec, {"events": folder}, tmp_path / "t.parquet").path)
    assert out.column("event_id").to_pylist() == [0, 1, 2]
    assert out.column("u_amount_last_1h").to_pylist() == [0.0, 0.0, 2.0]


# --------------------------------------------------------------------------- transforms


def test_transforms_values() -> None:
    spec = make_spec(
        {},
        default=-1.0,
        request={"when": {"type": "timestamp"}, "a": {"type": "float"}, "b": {"type": "float"}},
        transforms={
            "h": {"op": "hour", "inputs": ["when"]},
            "dow": {"op": "day_of_week", "inputs": ["when"]},
            "we": {"op": "is_weekend", "inputs": ["when"]},
            "night": {"op": "is_night", "inputs": ["when"]},
            "l": {"op": "log1p", "inputs": ["a"]},
            "r": {"op": "ratio", "inputs": ["a", "b"]},
            "lr": {"op": "log1p", "inputs": ["r"]},
        },
    )
    moments = ["2025-04-07T00:00", "2025-04-12T06:59:59", "2025-04-13T07:00", "2025-04-09T23:30", "NaT"]
    when = np.array(moments, dtype="datetime64[us]")
    a = np.array([0.0, np.e - 1, 3.0, np.nan, -1.0])
    b = np.array([2.0, 0.0, 1.5, 1.0, 4.0])
    out = apply_transforms(spec, {"when": when, "a": a, "b": b})
    assert list(out) == ["h", "dow", "we", "night", "l", "r", "lr"]
    assert out["h"].tolist() == [0.0, 6.0, 7.0, 23.0, -1.0]
    assert out["dow"].tolist() == [0.0, 5.0, 6.0, 2.0, -1.0]  # Monday 7 April 2025 is 0
    assert out["we"].tolist() == [0.0, 1.0, 1.0, 0.0, -1.0]
    assert out["night"].tolist() == [1.0, 1.0, 0.0, 0.0, -1.0]  # 00:00-06:59 is night
    np.testing.assert_allclose(out["l"], [0.0, 1.0, np.log(4.0), -1.0, -1.0])
    np.testing.assert_allclose(out["r"], [0.0, -1.0, 2.0, -1.0, -0.25])  # b == 0 or NaN -> default
    np.testing.assert_allclose(out["lr"], [0.0, -1.0, np.log(3.0), -1.0, np.log1p(-0.25)])
    with pytest.raises(LoopmlError, match="input 'a' is not available"):
        apply_transforms(spec, {"when": when})


def test_transforms_in_the_training_set(tmp_path: Path) -> None:
    table = events_table(50, seed=4, null_rate=0.0)
    spec = make_spec(
        {
            "u": {
                "entity": "user",
                "source": "events",
                "aggregations": [{"column": "amount", "functions": ["mean"], "windows": ["1h"]}],
            }
        },
        request={"amount": {"type": "float"}, "ts": {"type": "timestamp"}},
        transforms={"hour": {"op": "hour", "inputs": ["ts"]}, "rel": {"op": "ratio", "inputs": ["amount", "u_amount_mean_1h"]}},
        exclude=["u_amount_mean_1h"],
    )
    out = pq.read_table(build_training_set(spec, {"events": write(table, tmp_path / "e.parquet")}, tmp_path / "t.parquet").path)
    assert feature_columns(spec) == ["amount", "hour", "rel"]
    assert "u_amount_mean_1h" not in out.column_names  # excluded from the file, still usable by transforms
    hours = [v.hour for v in table.column("ts").to_pylist()]
    assert out.column("hour").to_pylist() == [float(h) for h in hours]
    means = reference(spec, "u", table, table)["u_amount_mean_1h"]
    amounts = table.column("amount").to_pylist()
    expected = [a / m if m != 0 else 0.0 for a, m in zip(amounts, means, strict=True)]
    np.testing.assert_allclose(out.column("rel").to_numpy(), expected, rtol=1e-9)


# --------------------------------------------------------------------------- the fraud example


def fraud_like(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 40 * 86_400, n))
    seconds[1::7] = seconds[::7][: len(seconds[1::7])]  # some equal timestamps
    fraud = (rng.random(n) < 0.1).astype(np.int8)
    return pa.table(
        {
            "transaction_id": pa.array(np.arange(n), pa.int64()),
            "tx_datetime": pa.array(START + np.sort(seconds) * 1_000_000, pa.timestamp("us")),
            "customer_id": pa.array(rng.integers(0, 30, n), pa.int64()),
            "terminal_id": pa.array(rng.integers(0, 40, n), pa.int64()),
            "tx_amount": pa.array(np.round(rng.gamma(2.0, 30.0, n), 2), pa.float64()),
            "tx_fraud": pa.array(fraud, pa.int8()),
            "tx_fraud_scenario": pa.array(fraud, pa.int8()),
        }
    )


def test_fraud_yaml_end_to_end(tmp_path: Path) -> None:
    spec = fraud_spec()
    table = fraud_like(1500, seed=5)
    path = write(table, tmp_path / "transactions.parquet")
    progress: list[float] = []
    result = build_training_set(
        spec, {"transactions": path}, tmp_path / "features" / "train.parquet", progress=lambda _msg, frac: progress.append(frac)
    )
    assert result.features == [
        "customer_count_1d",
        "customer_tx_amount_mean_1d",
        "customer_count_7d",
        "customer_tx_amount_mean_7d",
        "customer_count_30d",
        "customer_tx_amount_mean_30d",
        "terminal_count_1d",
        "terminal_tx_fraud_mean_1d",
        "terminal_count_7d",
        "terminal_tx_fraud_mean_7d",
        "terminal_count_30d",
        "terminal_tx_fraud_mean_30d",
        "tx_amount",
        "tx_hour",
        "tx_is_weekend",
        "tx_is_night",
        "amount_over_customer_mean_30d",
    ]
    out = pq.read_table(result.path)
    assert out.num_rows == result.rows == 1500
    assert out.column_names == table.column_names + [f for f in result.features if f != "tx_amount"]
    assert progress and progress[-1] == 1.0
    spine = table.rename_columns([c if c != "tx_datetime" else "ts" for c in table.column_names])
    assert_matches(out, reference(spec, "customer", spine, spine))
    assert_matches(out, reference(spec, "terminal", spine, spine))  # 7-day delay: fraud labels known a week later
    assert not list(tmp_path.joinpath("features").glob(".*"))  # no temp files or spill folders left behind


# --------------------------------------------------------------------------- bad input


def simple_spec(**kwargs: Any) -> Spec:
    definition = view("user", ["mean"], ["1h"])
    definition.update(kwargs)
    return make_spec({"u": definition})


def test_missing_snapshot_and_missing_columns(tmp_path: Path) -> None:
    spec = simple_spec()
    with pytest.raises(DataError, match="source 'events' has no snapshot"):
        build_training_set(spec, {}, tmp_path / "t.parquet")
    with pytest.raises(DataError, match="no Parquet snapshot"):
        build_training_set(spec, {"events": tmp_path / "nope.parquet"}, tmp_path / "t.parquet")
    path = write(events_table(10, seed=6).drop_columns(["amount"]), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: column 'amount' is missing \(needed by features.views.u\)"):
        build_training_set(spec, {"events": path}, tmp_path / "t.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        build_training_set(spec, {"events": tmp_path / "bad.parquet"}, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "e.parquet"]  # nothing half-written


def test_feature_name_clashing_with_a_source_column(tmp_path: Path) -> None:
    table = events_table(10, seed=7).append_column("u_amount_mean_1h", pa.array([0.0] * 10))
    with pytest.raises(DataError, match="'u_amount_mean_1h' clashes"):
        build_training_set(simple_spec(), {"events": write(table, tmp_path / "e.parquet")}, tmp_path / "t.parquet")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregations": [{"column": "amount", "functions": ["mean"], "windows": [0]}]}, "windows must be positive"),
        ({"delay": -60}, "delay: must not be negative"),
        ({"ttl": "0s"}, "ttl: must be positive"),
        ({"aggregations": [{"column": "shop", "functions": ["last"], "windows": ["1h"]}]}, "only count applies"),
    ],
)
def test_definitions_the_feature_stage_cannot_compute(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    path = write(events_table(10, seed=8), tmp_path / "e.parquet")
    with pytest.raises(LoopmlError, match=message):
        build_training_set(simple_spec(**kwargs), {"events": path}, tmp_path / "t.parquet")


def test_time_column_of_the_wrong_type(tmp_path: Path) -> None:
    table = events_table(5, seed=10)
    table = table.set_column(1, "ts", pa.array([str(v) for v in table.column("ts").to_pylist()]))
    with pytest.raises(DataError, match="time column 'ts' has type VARCHAR; expected TIMESTAMP or DATE"):
        build_training_set(simple_spec(), {"events": write(table, tmp_path / "e.parquet")}, tmp_path / "t.parquet")


def test_spec_without_views_and_an_empty_source(tmp_path: Path) -> None:
    spec = make_spec({}, request={"amount": {"type": "float"}}, transforms={"l": {"op": "log1p", "inputs": ["amount"]}})
    out = build(tmp_path, spec, small_table([START, START], [np.e - 1, None]))
    assert out.column("l").to_pylist() == [1.0, 0.0]
    empty = build(tmp_path, simple_spec(), events_table(0, seed=11))
    assert empty.num_rows == 0 and empty.column_names == [*SOURCE_COLUMNS, "u_amount_mean_1h"]


def test_existing_output_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    out.write_text("old")
    path = write(events_table(20, seed=9), tmp_path / "e.parquet")
    result = build_training_set(simple_spec(), {"events": path}, out)
    assert pq.read_table(out).num_rows == result.rows == 20


# --------------------------------------------------------------------------- string request features


def test_string_request_features_are_text_columns_not_model_inputs(tmp_path: Path) -> None:
    table = events_table(30, seed=12)  # shop is a string column, flag an int one
    spec = make_spec(
        {"u": view("user", ["count"], ["1h"])},
        request={"shop": {"type": "string"}, "flag": {"type": "string"}, "amount": {"type": "float"}},
    )
    out = build(tmp_path, spec, table)
    assert feature_columns(spec) == ["u_count_1h", "amount"]
    assert out.schema.field("shop").type == pa.string() and out.schema.field("flag").type == pa.string()
    assert out.column("shop").to_pylist() == table.column("shop").to_pylist()
    assert out.column("flag").to_pylist() == [str(v) for v in table.column("flag").to_pylist()]
    with pytest.raises(DataError, match=r"column 'merchant' is missing \(needed by features.request\)"):
        build(tmp_path, make_spec({}, request={"merchant": {"type": "string"}}), table)


# --------------------------------------------------------------------------- null indicator


def test_null_indicator_marks_no_history_out_of_window_and_expired_ttl(tmp_path: Path) -> None:
    # user 1: events at 0, 10 and 100 minutes; one spine row per event plus user 2 with no history
    table = small_table([START, START + 10 * MINUTE, START + 100 * MINUTE, START], [1.0, 2.0, 4.0, 8.0], user=[1, 1, 1, 2])
    views = {
        "u": view("user", ["count", "sum"], ["30m", "1h"], ttl="5m", indicator=True),
        "v": view("user", ["sum"], ["1h"]),
        "w": view("user", ["sum"], ["1h"], indicator=False),
    }
    spec = make_spec(views, default=-1.0).model_copy(update={})
    spec = Spec.model_validate(spec.model_dump() | {"features": spec.features.model_dump() | {"null_indicators": True}})
    assert feature_columns(spec) == [
        "u_count_30m",
        "u_amount_sum_30m",
        "u_count_1h",
        "u_amount_sum_1h",
        "u_missing",
        "v_amount_sum_1h",
        "v_missing",
        "w_amount_sum_1h",
    ]
    out = build(tmp_path, spec, table)
    # row 0: nothing before; row 1: the event at 0 is 10 min old > ttl 5m; row 2: 90 min > the 1h window; row 3: new user
    assert out.column("u_missing").to_pylist() == [1.0, 1.0, 1.0, 1.0]
    assert out.column("u_count_1h").to_pylist() == [0.0, 0.0, 0.0, 0.0]  # ttl expired: the missing values
    assert out.column("v_missing").to_pylist() == [1.0, 0.0, 1.0, 1.0]  # no ttl: row 1 sees the event 10 min ago
    assert out.column("v_amount_sum_1h").to_pylist() == [0.0, 1.0, 0.0, 0.0]
    assert "w_missing" not in out.column_names


# --------------------------------------------------------------------------- spine files


def test_spine_in_any_order_gets_the_training_rows_of_the_same_moments(tmp_path: Path) -> None:
    table = events_table(150, seed=13, null_rate=0.0)
    spec = make_spec(
        {"u": view("user", ALL_FUNCTIONS, ["30m", "2h"], delay="5m", ttl="1h"), "s": view("shop", ["count", "mean"], ["1h"])},
        request={"amount": {"type": "float"}, "ts": {"type": "timestamp"}, "shop": {"type": "string"}},
        transforms={"hour": {"op": "hour", "inputs": ["ts"]}},
    )
    path = write(table, tmp_path / "events.parquet")
    train = pq.read_table(build_training_set(spec, {"events": path}, tmp_path / "train.parquet").path)
    order = np.random.default_rng(0).permutation(table.num_rows)
    spine = table.select(["user_id", "shop", "ts", "amount", "flag"]).take(order)
    write(spine, tmp_path / "spine.parquet")
    progress: list[tuple[str, float]] = []
    result = build_spine_training_set(
        spec, {"events": path}, tmp_path / "spine.parquet", tmp_path / "s.parquet", progress=lambda m, f: progress.append((m, f))
    )
    out = pq.read_table(result.path)
    assert result.rows == out.num_rows == table.num_rows and result.filled == ()
    assert progress[0] == ("features: reading the spine", 0.0) and progress[-1] == ("features: writing", 1.0)
    assert out.column_names == ["user_id", "shop", "ts", "amount", "flag", *[f for f in feature_columns(spec) if f != "amount"]]
    expected = train.take(order)
    for name in feature_columns(spec):
        np.testing.assert_allclose(out.column(name).to_numpy(), expected.column(name).to_numpy(), rtol=1e-12, err_msg=name)


def test_csv_spine_with_text_keys_and_request_features_it_lacks(tmp_path: Path) -> None:
    table = small_table([START, START + MINUTE, START + 2 * MINUTE], [1.0, 2.0, 4.0], user=[7, 7, 8])
    spec = make_spec(
        {"u": view("user", ["count", "sum"], ["1h"])},
        request={"ts": {"type": "timestamp"}, "amount": {"type": "float"}, "shop": {"type": "string"}},
        transforms={"hour": {"op": "hour", "inputs": ["ts"]}, "l": {"op": "log1p", "inputs": ["amount"]}},
    )
    path = write(table, tmp_path / "events.parquet")
    (tmp_path / "spine.csv").write_text('user_id,when,label\n"7",2025-04-01 03:00:00,1\n7,2025-04-01 00:01:00,0\n9,,1\n')
    result = build_spine_training_set(spec, {"events": path}, tmp_path / "spine.csv", tmp_path / "out.parquet", spine_time="when")
    out = pq.read_table(result.path)
    assert result.filled == ("ts", "amount", "shop")
    assert out.column_names[:6] == ["user_id", "when", "label", "ts", "amount", "shop"]
    assert out.column("u_count_1h").to_pylist() == [0.0, 1.0, 0.0]  # 03:00 is 3 h after the events; 00:01 sees 00:00 only
    assert out.column("u_amount_sum_1h").to_pylist() == [0.0, 1.0, 0.0]
    assert out.column("hour").to_pylist() == [3.0, 0.0, 0.0]  # the request time is the spine's time; none -> default
    assert out.column("l").to_pylist() == [0.0, 0.0, 0.0]  # amount is not in the spine: NULL -> default
    assert out.column("shop").to_pylist() == [None, None, None]


def test_spine_times_with_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    """A JSON Lines spine with '+02:00' / 'Z' times gets the features of the same UTC moments as a naive UTC one."""
    table = small_table([START, START + MINUTE, START + 2 * MINUTE], [1.0, 2.0, 4.0], user=[7, 7, 7])
    spec = make_spec({"u": view("user", ["count", "sum"], ["1h"])})
    path = write(table, tmp_path / "events.parquet")
    utc = ["2025-04-01T00:01:30", "2025-04-01T00:00:30", "2025-04-01T02:00:00"]
    shifted = ["2025-04-01T02:01:30+02:00", "2025-04-01T00:00:30Z", "2025-03-31T21:00:00-05:00"]
    columns = {}
    for name, times in (("utc", utc), ("shifted", shifted)):
        lines = "".join(json.dumps({"user_id": 7, "when": t}) + "\n" for t in times)
        (tmp_path / f"{name}.jsonl").write_text(lines)
        result = build_spine_training_set(
            spec, {"events": path}, tmp_path / f"{name}.jsonl", tmp_path / f"{name}.parquet", spine_time="when"
        )
        columns[name] = pq.read_table(result.path).select(["when", "u_count_1h", "u_amount_sum_1h"]).to_pylist()
    assert columns["shifted"] == columns["utc"]
    assert [r["u_count_1h"] for r in columns["utc"]] == [2.0, 1.0, 0.0]  # 00:01:30 sees two events, 00:00:30 one, 02:00 none


@pytest.mark.parametrize(
    ("content", "time", "message"),
    [
        (
            "when,label\n2025-04-01,1\n",
            "when",
            r"spine\.csv: column 'user_id' is missing \(needed as the entity key of features\.views\.u",
        ),
        ("user_id,label\n1,1\n", "ts", r"spine\.csv: column 'ts' is missing \(needed as the spine's time, --spine-time"),
        (
            "user_id,ts\n1,2025-04-01 00:00:00\n2,yesterday\n",
            "ts",
            r"spine\.csv: row 2: column 'ts' value 'yesterday' is not a TIMESTAMP",
        ),
        ("user_id,ts\n1,2025-04-01\nx1,2025-04-02\n", "ts", r"spine\.csv: row 2: column 'user_id' value 'x1' is not a BIGINT"),
        ("user_id,ts\n1,7\n", "ts", r"spine\.csv: time column 'ts' has type BIGINT; expected TIMESTAMP or DATE"),
        ("", "ts", r"spine\.csv: the file is empty"),
        ("user_id,ts,__rid\n1,2025-04-01,3\n", "ts", r"spine\.csv: column '__rid' is reserved"),
    ],
)
def test_bad_spine_files_are_one_line_errors_and_write_nothing(tmp_path: Path, content: str, time: str, message: str) -> None:
    path = write(small_table([START], [1.0]), tmp_path / "events.parquet")
    (tmp_path / "spine.csv").write_text(content)
    out = tmp_path / "out" / "spine.parquet"
    with pytest.raises(DataError, match=message) as info:
        build_spine_training_set(simple_spec(), {"events": path}, tmp_path / "spine.csv", out, spine_time=time)
    assert "\n" not in str(info.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no output, no temp files


# --------------------------------------------------------------------------- projects: check, ingest, CLI

PROJECT_SPEC = """\
project: shop
entities:
  customer: {key: customer_id}
sources:
  orders:
    path: orders.csv
    timestamp: ts
    columns:
      order_id: {type: int}
      ts: {type: timestamp, severity: warn}
      customer_id: {type: int}
      amount: {type: float}
      returned: {type: int}
label: {source: orders, column: returned, delay: 1d}
features:
  null_indicators: true
  request:
    amount: {type: float}
  views:
    customer:
      entity: customer
      source: orders
      ttl: 2d
      aggregations:
        - {column: amount, functions: [count, sum, max, last], windows: [1h, 1d]}
    returns:
      entity: customer
      source: orders
      delay: 1d
      indicator: false
      aggregations:
        - {column: returned, functions: [mean], windows: [30d]}
  transforms:
    band: {op: bucket, inputs: [amount], edges: [10, 100]}
"""


def project(tmp_path: Path, orders: str, spec: str = PROJECT_SPEC) -> Path:
    folder = tmp_path / "p"
    folder.mkdir(parents=True)
    (folder / "loopml.yaml").write_text(spec)
    (folder / "orders.csv").write_text(orders)
    return folder


def test_rows_with_bad_timestamps_never_reach_a_window(tmp_path: Path) -> None:
    good = [
        "1,2025-04-01 09:00:00,7,20.0,0",
        "2,2025-04-01 09:10:00,7,30.0,1",
        "3,2025-04-01 09:20:00,7,40.0,0",
        "4,2025-04-02 10:00:00,7,50.0,0",
    ]
    bad = ["5,not a time,7,1000000.0,1", "6,,7,2000000.0,1", "7,2025-02-30 09:15:00,7,3000000.0,1"]
    header = "order_id,ts,customer_id,amount,returned\n"
    folder = project(tmp_path, header + "\n".join(good[:2] + bad + good[2:]) + "\n")
    clean = project(tmp_path / "clean", header + "\n".join(good) + "\n")
    results = []
    for f in (folder, clean):
        p = Project.load(f)
        ingested = p.ingest()
        results.append(pq.read_table(p.build_features().path))
        assert ingested.rows_quarantined == (3 if f == folder else 0)
    with_bad, without = results
    assert with_bad.num_rows == without.num_rows == 4  # the bad rows are not events, nor training rows
    assert with_bad.equals(without)
    amounts = [v for name in feature_columns(Project.load(folder).spec) for v in with_bad.column(name).to_pylist()]
    assert max(amounts) < 1000  # no window ever saw the huge amounts of the bad rows


@pytest.mark.parametrize(
    ("old", "new", "at", "key", "words"),
    [
        (
            "delay: 1d\n      indicator",
            "delay: 12h\n      indicator",
            "delay: 12h",
            "features.views.returns.delay",
            "label.delay 1d",
        ),
        (
            "{column: returned, functions",
            "{column: returnd, functions",
            "- {column: returnd",
            "features.views.returns.aggregations.0.column",
            "returnd",
        ),
        ("source: orders\n      ttl", "source: order\n      ttl", "source: order", "features.views.customer.source", "'order'"),
        (
            "amount: {type: float}\n  views",
            "amount_usd: {type: float}\n  views",
            "amount_usd:",
            "features.request.amount_usd",
            "label source",
        ),
        (
            "inputs: [amount], edges",
            "inputs: [returns_missing], edges",
            "band:",
            "features.transforms.band.inputs",
            "returns_missing",
        ),
        ("ttl: 2d", "ttl: 0s", "ttl: 0s", "features.views.customer.ttl", "must be positive"),
    ],
)
def test_check_names_the_key_and_line_of_bad_feature_definitions(
    tmp_path: Path, old: str, new: str, at: str, key: str, words: str
) -> None:
    assert old in PROJECT_SPEC
    text = PROJECT_SPEC.replace(old, new)
    folder = project(tmp_path, "order_id,ts,customer_id,amount,returned\n", text)
    code, out, err = invoke("check", "--project", str(folder))
    assert code == 1 and out == ""
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.strip().startswith(at))
    assert any(f"loopml.yaml:{line}: {key}: " in t and words in t for t in err.strip().splitlines()), err


def test_check_accepts_a_null_indicator_as_a_transform_input(tmp_path: Path) -> None:
    text = PROJECT_SPEC.replace("inputs: [amount], edges", "inputs: [customer_missing], edges")
    code, _, err = invoke("check", "--project", str(project(tmp_path, "order_id,ts,customer_id,amount,returned\n", text)))
    assert code == 0, err


def test_features_list_json_is_the_catalogue(tmp_path: Path) -> None:
    folder = project(tmp_path, "order_id,ts,customer_id,amount,returned\n1,2025-04-01 09:00:00,7,20.0,0\n")
    code, out, err = invoke("features", "list", "--json", "--project", str(folder))
    assert code == 0, err
    before = json.loads(out)["features"]
    assert {e["freshness"]["latest_event"] for e in before} == {None}  # nothing ingested yet
    invoke("ingest", "--project", str(folder))
    code, out, err = invoke("features", "list", "--json", "--project", str(folder))
    assert code == 0, err
    catalog = json.loads(out)["features"]
    spec = Project.load(folder).spec
    assert [e["name"] for e in catalog] == feature_columns(spec)
    by_name = {e["name"]: e for e in catalog}
    assert set(by_name["customer_amount_max_1d"]) == {
        "name",
        "kind",
        "view",
        "entity",
        "source",
        "definition",
        "in_model",
        "freshness",
    }
    assert by_name["customer_amount_max_1d"]["definition"] == {
        "function": "max",
        "column": "amount",
        "window": "1d",
        "delay": "0s",
        "ttl": "2d",
    }
    assert by_name["customer_count_1h"]["definition"]["column"] is None
    assert by_name["returns_returned_mean_30d"]["definition"]["delay"] == "1d"
    assert by_name["customer_missing"]["kind"] == "indicator" and by_name["customer_missing"]["definition"]["window"] == "1d"
    assert by_name["band"]["definition"] == {"op": "bucket", "inputs": ["amount"], "edges": [10.0, 100.0]}
    assert by_name["amount"]["kind"] == "request" and by_name["amount"]["view"] is None
    assert by_name["customer_count_1h"]["view"] == "customer" and by_name["customer_count_1h"]["entity"] == "customer"
    assert all(e["freshness"]["latest_event"] == "2025-04-01T09:00:00" for e in catalog)
    assert all(e["freshness"]["materialized_at"] is None for e in catalog)  # never materialized
    code, out, _ = invoke("features", "list", "--project", str(folder))
    assert code == 0 and "customer_amount_max_1d" in out


def test_features_build_spine_from_the_command_line(tmp_path: Path) -> None:
    folder = project(tmp_path, "order_id,ts,customer_id,amount,returned\n1,2025-04-01 09:00:00,7,20.0,0\n")
    invoke("ingest", "--project", str(folder))
    (folder / "spine.csv").write_text("customer_id,ts,amount\n7,2025-04-01 09:30:00,5\n8,2025-04-01 09:30:00,50\n")
    out_file = folder / "out.parquet"
    code, out, err = invoke(
        "features", "build", "--spine", "spine.csv", "--output", str(out_file), "--json", "--project", str(folder)
    )
    assert code == 1 and out == "" and "spine.csv: no such file" in err  # relative to the current folder, said clearly
    spine = str(folder / "spine.csv")
    code, out, err = invoke("features", "build", "--spine", spine, "--output", str(out_file), "--json", "--project", str(folder))
    assert code == 0, err
    data = json.loads(out)
    assert data["rows"] == 2 and data["filled"] == [] and data["path"] == str(out_file)
    table = pq.read_table(out_file)
    assert table.column("customer_amount_last_1h").to_pylist() == [20.0, 0.0]
    assert table.column("customer_missing").to_pylist() == [0.0, 1.0]
    assert table.column("band").to_pylist() == [0.0, 1.0]
    (folder / "spine.csv").write_text("customer,ts\n7,2025-04-01 09:30:00\n")
    out_file.unlink()
    code, out, err = invoke("features", "build", "--spine", spine, "--output", str(out_file), "--project", str(folder))
    assert code == 1 and out == ""
    why = "needed as the entity key of features.views.customer; found: customer, ts"
    assert err.strip() == f"error: {spine}: column 'customer_id' is missing ({why})"
    assert not out_file.exists()


# --------------------------------------------------------------------------- docs/features.md

DOCS = Path(__file__).resolve().parents[1] / "docs" / "features.md"


def test_the_example_of_docs_features_md_runs_as_written(tmp_path: Path) -> None:
    blocks = dict(re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", DOCS.read_text(), re.S))
    assert set(blocks) == {"loopml.yaml", "orders.csv", "spine.csv", "expected.csv"}
    for name in ("loopml.yaml", "orders.csv", "spine.csv"):
        (tmp_path / name).write_text(blocks[name])
    assert invoke("ingest", "--project", str(tmp_path))[0] == 0
    out = tmp_path / "features.parquet"
    code, _, err = invoke(
        "features", "build", "--spine", str(tmp_path / "spine.csv"), "--output", str(out), "--project", str(tmp_path)
    )
    assert code == 0, err
    got = pq.read_table(out)
    lines = blocks["expected.csv"].strip().splitlines()
    assert got.column_names == lines[0].split(",")
    for i, line in enumerate(lines[1:]):
        row = {name: got.column(name)[i].as_py() for name in got.column_names}
        cells = line.split(",")
        assert row["customer_id"] == int(cells[0]) and str(row["ts"]) == cells[1]
        assert [row[name] for name in got.column_names[2:]] == [float(c) for c in cells[2:]], f"row {i + 1}"
