"""Point-in-time features against a brute-force reference of the documented semantics.

``reference`` below is ``docs/features.md`` written the slow, obvious way: for
every spine row it loops over every event. The DuckDB paths (the training-set
build over the events themselves, the spine-file build, the general join)
must agree with it to 1e-9 on randomized data built to hit the edge cases:
timestamps on a coarse grid (many events at the same time, spine rows exactly
at event times and at window and delay boundaries), gaps, NULL values, NULL
keys and times, unknown entities, ttl, availability delays, late labels,
inclusive and exclusive windows, every aggregation function and the null
indicator. Views made only of ``last`` take the ``ASOF JOIN`` path
(``features/asof/``), the others the window path; both are checked.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from loopml.features import build_training_set, point_in_time_join
from loopml.features.asof import tuning
from loopml.features.asof.events import read_events
from loopml.features.join import connect, pit_sql, register_source, spine_span
from loopml.features.offline import build_spine_training_set
from loopml.spec.model import Spec

US = timedelta(microseconds=1)
MINUTE = 60_000_000
EPOCH = datetime(1970, 1, 1)
START = (datetime(2025, 4, 1) - EPOCH) // US
FUNCTIONS = ["count", "sum", "mean", "std", "min", "max", "last"]
LABEL_DELAY = "30m"

# --------------------------------------------------------------------------- the reference


@dataclass(frozen=True)
class Event:
    key: Any
    ts: int | None
    values: dict[str, float | None]
    position: int  # row position in the source file: orders ties of ``last``


def events_of(table: pa.Table, key: str, columns: list[str]) -> list[Event]:
    keys, times = table.column(key).to_pylist(), micros(table.column("ts"))
    values = {c: table.column(c).to_pylist() for c in columns}
    return [Event(keys[i], times[i], {c: values[c][i] for c in columns}, i) for i in range(table.num_rows)]


def micros(column: pa.ChunkedArray) -> list[int | None]:
    return [None if v is None else (v - EPOCH) // US for v in column.to_pylist()]


def aggregate(function: str, rows: list[Event], column: str, default: float) -> float:
    """One function over the events of one window (``rows``), as documented."""
    if function == "count":
        return float(len(rows))  # rows, NULL values included
    present = [e for e in rows if e.values[column] is not None]
    values = [float(e.values[column]) for e in present]  # type: ignore[arg-type]
    if function == "sum":
        return math.fsum(values)
    if not values or (function == "std" and len(values) < 2):
        return default
    if function == "mean":
        return math.fsum(values) / len(values)
    if function == "std":
        return statistics.stdev(values)
    if function == "min":
        return min(values)
    if function == "max":
        return max(values)
    latest = max(present, key=lambda e: (e.ts, e.position))  # last: latest time, ties by file position
    return float(latest.values[column])  # type: ignore[arg-type]


def reference(spec: Spec, view_name: str, spine: list[tuple[Any, int | None]], events: list[Event]) -> dict[str, list[float]]:
    """Every output (and the null indicator) of one view for each ``(key, time)`` spine row."""
    view = spec.features.views[view_name]
    inclusive, default = spec.features.inclusive, spec.features.default
    d = view.delay // US
    ttl = None if view.ttl is None else view.ttl // US
    outputs: dict[str, tuple[str, str, int]] = {}
    for name, agg, fn, window in view.outputs(view_name):
        outputs.setdefault(name, (fn, agg.column, window // US))
    longest = max(w for _, _, w in outputs.values())
    indicator = spec.features.null_indicators if view.indicator is None else view.indicator
    out: dict[str, list[float]] = {name: [] for name in outputs}
    if indicator:
        out[f"{view_name}_missing"] = []
    for key, t in spine:
        if key is None or t is None:
            visible: list[Event] = []
        else:
            visible = [
                e
                for e in events
                if e.key == key and e.ts is not None and (e.ts <= t - d if inclusive else e.ts < t - d)  # availability
            ]
        latest = max((e.ts for e in visible if e.ts is not None), default=None)
        expired = ttl is not None and latest is not None and t is not None and t - latest > ttl
        for name, (fn, column, w) in outputs.items():
            rows = [] if expired else [e for e in visible if e.ts is not None and t is not None and e.ts > t - d - w]
            out[name].append(aggregate(fn, rows, column, default))
        if indicator:
            in_window = [e for e in visible if e.ts is not None and t is not None and e.ts > t - d - longest]
            out[f"{view_name}_missing"].append(1.0 if expired or not in_window else 0.0)
    return out


# --------------------------------------------------------------------------- randomized worlds

COLUMNS = {
    "event_id": {"type": "int"},
    "ts": {"type": "timestamp"},
    "user_id": {"type": "int"},
    "shop": {"type": "string"},
    "amount": {"type": "float"},
    "flag": {"type": "int"},
}


def random_events(rng: np.random.Generator, n: int, users: int = 6) -> pa.Table:
    """Events on a minute grid with gaps: many ties, some NULL values, keys and times, file order shuffled."""
    minutes = rng.choice(np.concatenate([np.arange(0, 90), np.arange(150, 300)]), n)  # a one-hour gap
    ts: list[int | None] = [int(START + m * MINUTE) for m in minutes]
    user: list[int | None] = [int(u) for u in rng.integers(0, users, n)]
    amount: list[float | None] = [float(a) for a in np.round(rng.gamma(2.0, 20.0, n), 2)]
    for column, rate in ((ts, 0.02), (user, 0.03), (amount, 0.2)):
        for i in np.flatnonzero(rng.random(n) < rate):
            column[i] = None
    return pa.table(
        {
            "event_id": pa.array(np.arange(n), pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us")),
            "user_id": pa.array(user, pa.int64()),
            "shop": pa.array([f"s{k}" for k in rng.integers(0, 3, n)], pa.string()),
            "amount": pa.array(amount, pa.float64()),
            "flag": pa.array(rng.integers(0, 2, n), pa.int8()),
        }
    )


def random_spec(rng: np.random.Generator) -> Spec:
    def pick(options: list[Any]) -> Any:
        return options[int(rng.integers(len(options)))]

    windows = sorted({pick(["1m", "15m", "1h", "3h", "1d"]) for _ in range(3)})
    views = {
        "u": {
            "entity": "user",
            "source": "events",
            "delay": pick(["0s", "1m", "10m", "45m"]),
            "ttl": pick([None, "5m", "30m", "2h"]),
            "aggregations": [
                {"column": "amount", "functions": FUNCTIONS, "windows": windows},
                {"column": "flag", "functions": ["count", "mean"], "windows": ["1h"]},
            ],
        },
        "h": {
            "entity": "user",
            "source": "history",
            "delay": pick(["0s", "5m", "1h"]),
            "ttl": pick([None, "20m", "3h"]),
            "aggregations": [{"column": "amount", "functions": FUNCTIONS, "windows": [pick(["30m", "2h"])]}],
        },
        "label": {  # late labels: fraud-like flags only known LABEL_DELAY after the event
            "entity": "user",
            "source": "events",
            "delay": LABEL_DELAY,
            "aggregations": [{"column": "flag", "functions": ["sum", "mean", "last"], "windows": ["1h", "1d"]}],
        },
        "s": {
            "entity": "shop",
            "source": "history",
            "indicator": bool(rng.integers(2)),
            "aggregations": [{"column": "amount", "functions": ["count", "last", "std"], "windows": ["20m"]}],
        },
        # only ``last``: the ASOF JOIN path of features/asof/
        "latest": {
            "entity": "user",
            "source": "history",
            "delay": pick(["0s", "1m", "30m"]),
            "ttl": pick([None, "10m", "1h"]),
            "indicator": bool(rng.integers(2)),
            "aggregations": [
                {"column": "amount", "functions": ["last"], "windows": [pick(["5m", "1h"]), "1d"]},
                {"column": "flag", "functions": ["last"], "windows": ["2h"]},
            ],
        },
        "recent": {
            "entity": "shop",
            "source": "events",
            "delay": pick(["0s", "15m"]),
            "aggregations": [{"column": "amount", "functions": ["last"], "windows": ["30m"]}],
        },
    }
    sources = {name: {"path": f"{name}.parquet", "timestamp": "ts", "columns": COLUMNS} for name in ("events", "history")}
    return Spec.model_validate(
        {
            "project": "pit",
            "entities": {"user": {"key": "user_id"}, "shop": {"key": "shop"}},
            "sources": sources,
            "label": {"source": "events", "column": "flag", "delay": LABEL_DELAY},
            "features": {
                "inclusive": bool(rng.integers(2)),
                "default": pick([0.0, -1.0, float("nan")]),
                "null_indicators": True,
                "views": views,
            },
        }
    )


def random_spine(rng: np.random.Generator, events: pa.Table, n: int) -> pa.Table:
    """Spine rows at event times, a microsecond either side, on the grid and anywhere; unknown and NULL keys."""
    times = [t for t in micros(events.column("ts")) if t is not None]
    rows_t: list[int | None] = []
    for _ in range(n):
        kind = int(rng.integers(5))
        base = times[int(rng.integers(len(times)))]
        if kind == 0:
            rows_t.append(base)
        elif kind == 1:
            rows_t.append(base + int(rng.choice([-1, 1])))
        elif kind == 2:
            rows_t.append(int(START + rng.integers(0, 330) * MINUTE))
        elif kind == 3:
            rows_t.append(int(START + rng.integers(0, 330 * MINUTE)))
        else:
            rows_t.append(None if rng.random() < 0.3 else base + 30 * MINUTE)
    users: list[int | None] = [int(u) for u in rng.integers(0, 8, n)]  # 6 and 7 have no events
    users[int(rng.integers(n))] = None
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "shop": pa.array([f"s{k}" for k in rng.integers(0, 4, n)], pa.string()),
            "ts": pa.array(rows_t, pa.timestamp("us")),
            "target": pa.array(rng.integers(0, 2, n), pa.int8()),
        }
    )


def expected_for(spec: Spec, spine: pa.Table, tables: dict[str, pa.Table]) -> dict[str, list[float]]:
    expected: dict[str, list[float]] = {}
    spine_t = micros(spine.column("ts"))
    for name, view in spec.features.views.items():
        key = spec.entities[view.entity].key
        value_columns = sorted({agg.column for agg in view.aggregations})
        rows = list(zip(spine.column(key).to_pylist(), spine_t, strict=True))
        expected |= reference(spec, name, rows, events_of(tables[view.source], key, value_columns))
    return expected


def assert_equal(got: pa.Table, expected: dict[str, list[float]], context: str) -> None:
    for name, values in expected.items():
        np.testing.assert_allclose(
            got.column(name).to_numpy(), np.array(values), rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=f"{context}: {name}"
        )


def world(seed: int, tmp_path: Path) -> tuple[Spec, dict[str, pa.Table], dict[str, Path]]:
    rng = np.random.default_rng(seed)
    tables = {"events": random_events(rng, int(rng.integers(80, 220))), "history": random_events(rng, int(rng.integers(80, 220)))}
    paths = {}
    for name, table in tables.items():
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(table, paths[name])
    return random_spec(rng), tables, paths


SEEDS = range(24)

# --------------------------------------------------------------------------- the DuckDB paths against it


@pytest.mark.parametrize("seed", SEEDS)
def test_training_set_over_the_events_matches_the_reference(tmp_path: Path, seed: int) -> None:
    spec, tables, paths = world(seed, tmp_path)
    out = pq.read_table(build_training_set(spec, paths, tmp_path / "train.parquet").path)
    events = tables["events"]
    assert out.column("event_id").to_pylist() == events.column("event_id").to_pylist()  # one row per event, in order
    assert_equal(out, expected_for(spec, events, tables), f"seed {seed} (inclusive={spec.features.inclusive})")


@pytest.mark.parametrize("seed", SEEDS)
def test_spine_file_matches_the_reference_in_spine_order(tmp_path: Path, seed: int) -> None:
    spec, tables, paths = world(seed, tmp_path)
    spine = random_spine(np.random.default_rng(1000 + seed), tables["events"], 150)
    pq.write_table(spine, tmp_path / "spine.parquet")
    result = build_spine_training_set(spec, paths, tmp_path / "spine.parquet", tmp_path / "out.parquet", spine_time="ts")
    out = pq.read_table(result.path)
    assert result.rows == out.num_rows == spine.num_rows
    assert out.select(spine.column_names).equals(spine)  # the spine itself, untouched and in its order
    assert_equal(out, expected_for(spec, spine, tables), f"seed {seed} (inclusive={spec.features.inclusive})")


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_point_in_time_join_matches_the_reference(tmp_path: Path, seed: int) -> None:
    spec, tables, paths = world(seed, tmp_path)
    spine = random_spine(np.random.default_rng(2000 + seed), tables["history"], 100)
    spine = spine.append_column("rid", pa.array(np.arange(spine.num_rows) * 7 + 3, pa.int64()))
    con = connect()
    sources = {name: register_source(con, name, path) for name, path in paths.items()}
    got = point_in_time_join(con, con.from_arrow(spine), spec, sources=sources, timestamp="ts", row_id="rid").order("rid")
    table = got.to_arrow_table()
    con.close()
    assert table.column("rid").to_pylist() == spine.column("rid").to_pylist()
    assert_equal(table, expected_for(spec, spine, tables), f"seed {seed}")


@pytest.mark.parametrize("inclusive", [False, True])
def test_labels_inside_their_delay_never_reach_a_feature(tmp_path: Path, inclusive: bool) -> None:
    """Flip every label not yet known at a cutoff C: no label feature of a row at or before C may move."""
    rng = np.random.default_rng(7)
    spec = random_spec(rng).model_copy(deep=True)
    spec = Spec.model_validate(spec.model_dump() | {"features": spec.features.model_dump() | {"inclusive": inclusive}})
    events = random_events(rng, 300)
    cutoff = START + 200 * MINUTE
    delay = spec.features.views["label"].delay // US
    ts = micros(events.column("ts"))
    flags = events.column("flag").to_pylist()
    flipped = [1 - f if t is not None and t > cutoff - delay else f for f, t in zip(flags, ts, strict=True)]
    assert flipped != flags
    late = events.set_column(events.column_names.index("flag"), "flag", pa.array(flipped, pa.int8()))
    spine = random_spine(rng, events, 200)
    pq.write_table(spine, tmp_path / "spine.parquet")
    outs = []
    for name, table in (("known", events), ("late", late)):
        paths = {"events": tmp_path / f"{name}.parquet", "history": tmp_path / f"{name}.parquet"}
        pq.write_table(table, paths["events"])
        out = tmp_path / f"{name}-out.parquet"
        outs.append(pq.read_table(build_spine_training_set(spec, paths, tmp_path / "spine.parquet", out, "ts").path))
    before = [t is not None and t <= cutoff for t in micros(spine.column("ts"))]
    assert sum(before) > 50
    label_features = [n for n in outs[0].column_names if n.startswith("label_")]
    for name in label_features:
        a, b = outs[0].column(name).to_numpy(), outs[1].column(name).to_numpy()
        np.testing.assert_array_equal(a[before], b[before], err_msg=name)
    changed = [n for n in label_features if not np.array_equal(outs[0].column(n).to_numpy(), outs[1].column(n).to_numpy())]
    assert changed, "flipping labels changed no later row: the test would not see a leak"


# --------------------------------------------------------------------------- the two ways of the ``last`` fast path
# ``point_in_time_join`` computes views of only ``last`` with numpy (features/asof/, ``asof_view_table``);
# ``pit_sql`` without a connection gives the DuckDB ASOF JOIN SQL. Both against the reference, and the numpy
# path's rarer branches forced: coarse time buckets (runs re-sorted, bisection inside a bucket), the two-thread
# sort, dictionary codes for sparse integer keys, a folder source, and DuckDB not keeping insertion order.

LAST_VIEWS = ["latest", "recent"]


def last_only(spec: Spec) -> Spec:
    views = {name: view for name, view in spec.features.views.items() if name in LAST_VIEWS}
    return spec.model_copy(update={"features": spec.features.model_copy(update={"views": views})})


def join_last_views(
    con: duckdb.DuckDBPyConnection, spec: Spec, paths: dict[str, Path], spine: pa.Table, numpy_path: bool
) -> pa.Table:
    sources = {name: register_source(con, name, path) for name, path in paths.items()}
    con.from_arrow(spine).create_view("spine", replace=True)
    if numpy_path:
        rel = point_in_time_join(con, "spine", spec, sources=sources, timestamp="ts", row_id="rid", last_event=True)
    else:
        span = spine_span(con, "spine", "ts")
        rel = con.sql(pit_sql(spec, "spine", sources, "ts", "rid", list(spec.features.views), True, span))
    return rel.order("rid").to_arrow_table()


def spine_with_rid(seed: int, events: pa.Table, rows: int = 120) -> pa.Table:
    spine = random_spine(np.random.default_rng(3000 + seed), events, rows)
    return spine.append_column("rid", pa.array(np.arange(spine.num_rows) * 5 + 1, pa.int64()))


def check_last_views(
    con: duckdb.DuckDBPyConnection, spec: Spec, tables: dict[str, pa.Table], paths: dict[str, Path], spine: pa.Table, context: str
) -> None:
    got = join_last_views(con, spec, paths, spine, numpy_path=True)
    assert got.column("rid").to_pylist() == spine.column("rid").to_pylist()
    assert_equal(got, expected_for(spec, spine, tables), context)
    sql = join_last_views(con, spec, paths, spine, numpy_path=False)
    assert_equal(sql, expected_for(spec, spine, tables), f"{context} (SQL)")
    for name in LAST_VIEWS:  # the latest visible event time (the ttl's input) agrees between the two ways too
        column = f"__last_event__{name}"
        assert got.column(column).to_pylist() == sql.column(column).to_pylist(), f"{context}: {column}"


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_last_views_numpy_and_sql_match_the_reference(tmp_path: Path, seed: int) -> None:
    spec, tables, paths = world(seed, tmp_path)
    spec = last_only(spec)
    con = connect()
    check_last_views(con, spec, tables, paths, spine_with_rid(seed, tables["history"]), f"seed {seed}")
    con.close()


@pytest.mark.parametrize("way", ["every event sorted", "one cell per entity", "two cells per entity", "cells, running maximum"])
@pytest.mark.parametrize("seed", SEEDS[:8])
def test_last_views_through_each_numpy_way_with_coarse_time_buckets(
    tmp_path: Path, seed: int, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sorting every event (the way when the cell table would be too big), coarse cells, or cells found by the running maximum.

    Buckets of 2**33 µs (~2.4 h) or more hold many events of one entity: runs are re-sorted by exact time and
    the search bisects inside a bucket; the sort is split over two threads even for these few events.
    """
    monkeypatch.setattr(tuning, "TIME_BITS_CAP", 1 + seed % 3)
    monkeypatch.setattr(tuning, "PARALLEL_SORT_ROWS", 2)
    if way == "every event sorted":
        monkeypatch.setattr(tuning, "CELL_BUDGET", 0)
    elif way == "cells, running maximum":  # no steps back from a spine row's cell: the running maximum finds them all
        monkeypatch.setattr(tuning, "STEPS_BACK", seed % 2)
    else:
        monkeypatch.setattr(tuning, "CELLS_PER_ENTITY_CAP", 1 if way.startswith("one") else 2)
    spec, tables, paths = world(seed, tmp_path)
    spec = last_only(spec)
    con = connect()
    check_last_views(con, spec, tables, paths, spine_with_rid(seed, tables["history"]), f"seed {seed}, {way}")
    con.close()


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_last_views_with_sparse_integer_keys(tmp_path: Path, seed: int) -> None:
    """Keys far apart (ids * 10**12 - 7) take dictionary codes instead of ``key - min``."""
    spec, tables, paths = world(seed, tmp_path)
    spec = last_only(spec)

    def sparse(table: pa.Table) -> pa.Table:
        ids = pc.subtract(pc.multiply(table.column("user_id"), 10**12), 7)
        return table.set_column(table.column_names.index("user_id"), "user_id", ids)

    tables = {name: sparse(table) for name, table in tables.items()}
    for name, table in tables.items():
        pq.write_table(table, paths[name])
    con = connect()
    check_last_views(con, spec, tables, paths, spine_with_rid(seed, sparse(tables["history"])), f"seed {seed}")
    con.close()


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_last_views_over_a_folder_source_without_insertion_order(tmp_path: Path, seed: int) -> None:
    """A source split over three files (ties across files go to the later file) and DuckDB free to reorder rows."""
    spec, tables, paths = world(seed, tmp_path)
    spec = last_only(spec)
    folder = tmp_path / "history"
    folder.mkdir()
    history = tables["history"]
    cuts = [0, history.num_rows // 3, 2 * history.num_rows // 3, history.num_rows]
    for i in range(3):
        pq.write_table(history.slice(cuts[i], cuts[i + 1] - cuts[i]), folder / f"part-{i}.parquet", row_group_size=17)
    paths = {**paths, "history": folder}
    con = connect()
    con.execute("SET preserve_insertion_order = false")
    check_last_views(con, spec, tables, paths, spine_with_rid(seed, history), f"seed {seed}")
    con.close()


def test_last_view_with_no_event_in_the_spine_span_gives_missing_values(tmp_path: Path) -> None:
    """Every event after the spine (none visible) and spine rows without a time: defaults, indicator 1, no latest event."""
    spec, tables, paths = world(0, tmp_path)
    spec = last_only(spec)
    events = tables["history"]
    early = random_spine(np.random.default_rng(5), events, 40)
    early = early.set_column(early.column_names.index("ts"), "ts", pc.subtract(early.column("ts"), pa.scalar(timedelta(days=30))))
    early = early.append_column("rid", pa.array(np.arange(early.num_rows), pa.int64()))
    con = connect()
    got = join_last_views(con, spec, paths, early, numpy_path=True)
    assert_equal(got, expected_for(spec, early, tables), "spine before every event")
    assert got.column("__last_event__latest").null_count == early.num_rows
    default = spec.features.default
    values = got.column("latest_amount_last_1d").to_numpy()
    assert np.all(np.isnan(values)) if math.isnan(default) else np.all(values == default)
    assert set(got.column("latest_missing").to_pylist()) <= {1.0}
    untimed = early.set_column(early.column_names.index("ts"), "ts", pa.nulls(early.num_rows, pa.timestamp("us")))
    got = join_last_views(con, spec, paths, untimed, numpy_path=True)
    assert got.num_rows == early.num_rows
    assert got.column("__last_event__latest").null_count == early.num_rows
    con.close()


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_last_views_for_spine_rows_after_every_event(tmp_path: Path, seed: int) -> None:
    """Cutoffs past the last event (beyond the last time cell): each entity's very latest event, as the reference says."""
    spec, tables, paths = world(seed, tmp_path)
    spec = last_only(spec)
    spine = spine_with_rid(seed, tables["history"])
    later = pc.add(spine.column("ts"), pa.scalar(timedelta(hours=5 + seed)))
    spine = spine.set_column(spine.column_names.index("ts"), "ts", later)
    con = connect()
    check_last_views(con, spec, tables, paths, spine, f"seed {seed}")
    con.close()


@pytest.mark.parametrize("counted", [0, 5, 1000])
def test_events_are_read_whole_whatever_the_row_count_said(tmp_path: Path, counted: int) -> None:
    """The numpy path sizes its arrays by ``count(*)``; a source that changed in between is still read in full, in order."""
    events = random_events(np.random.default_rng(11), 60)
    pq.write_table(events, tmp_path / "events.parquet")
    con = connect()
    view = register_source(con, "events", tmp_path / "events.parquet")
    query = f'SELECT user_id AS __k, epoch_us(ts) AS __s, amount AS __v0 FROM "{view}"'
    got = read_events(con, query, counted, True, 1)
    con.close()
    assert isinstance(got.keys, np.ndarray)
    users, times, amounts = events.column("user_id").to_pylist(), micros(events.column("ts")), events.column("amount").to_pylist()
    present = [u is not None and t is not None for u, t in zip(users, times, strict=True)]
    assert len(got.times) == events.num_rows
    assert got.present is not None and got.present.tolist() == present
    assert [int(t) for t, p in zip(got.times, present, strict=True) if p] == [t for t, p in zip(times, present, strict=True) if p]
    assert [int(k) for k, p in zip(got.keys, present, strict=True) if p] == [u for u, p in zip(users, present, strict=True) if p]
    assert got.valid[0] is not None and got.valid[0].tolist() == [a is not None for a in amounts]
    assert [float(v) for v, a in zip(got.values[0], amounts, strict=True) if a is not None] == [
        a for a in amounts if a is not None
    ]
