"""Offline point-in-time features: DuckDB results against a brute-force reference."""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.errors import DataError, LoopmlError
from loopml.features import apply_transforms, build_training_set, feature_columns, point_in_time_join
from loopml.features.join import connect, register_source
from loopml.spec.load import parse_spec
from loopml.spec.model import Spec

MINUTE = 60_000_000  # microseconds
EPOCH = datetime(1970, 1, 1)
START = (datetime(2025, 4, 1) - EPOCH) // timedelta(microseconds=1)
FRAUD_YAML = Path(__file__).resolve().parents[1] / "src" / "loopml" / "datasets" / "fraud.yaml"

# --------------------------------------------------------------------------- helpers


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
    spec = parse_spec(FRAUD_YAML.read_text(encoding="utf-8"))
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
