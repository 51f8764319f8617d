"""``loopml init --data``: a loopml.yaml inferred from any file parses, has the expected types and rules, and ingests."""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from loopml.data import infer_spec, ingest
from loopml.data.infer import Inferred, infer_project
from loopml.errors import DataError
from loopml.layout import Layout
from loopml.spec import Spec, parse_spec

START = datetime(2024, 3, 1)
N = 60


def events(n: int = N) -> dict[str, Any]:
    """n events over 20 days: an id, a timestamp, an entity, numbers, strings, a bool and a binary label."""
    return {
        "event_id": list(range(1000, 1000 + n)),
        "ts": [START + timedelta(hours=8 * i) for i in range(n)],
        "user_id": [i % 7 for i in range(n)],
        "amount": [round(1.5 + (i * 37 % 100) / 3, 2) for i in range(n)],
        "items": [1 + i % 4 for i in range(n)],
        "channel": [("web", "app", "shop")[i % 3] for i in range(n)],
        "note": [None if i % 10 == 0 else f"free text {i}" for i in range(n)],
        "is_member": [i % 2 == 0 for i in range(n)],
        "label": [1 if i % 5 == 0 else 0 for i in range(n)],
    }


def write(path: Path, columns: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="none"))
    return path


def infer(data: Path, project: Path, label: str = "label", **kw: Any) -> tuple[str, Spec]:
    args: dict[str, Any] = {"positive": None, "task": None, "timestamp": None, "entities": []} | kw
    text = infer_spec(data, label, args["positive"], args["task"], args["timestamp"], args["entities"], project)
    return text, parse_spec(text)


def rules(spec: Spec) -> dict[str, dict[str, Any]]:
    [source] = spec.sources.values()
    return {name: rule.model_dump(exclude_defaults=True) for name, rule in source.columns.items()}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_binary_project_from_a_file_parses_and_ingests(tmp_path: Path, fmt: str) -> None:
    project = tmp_path / "shop"
    data = write(project / "data" / f"events.{fmt}", events())
    text, spec = infer(data, project, entities=["user_id"])

    assert text.startswith("# loopml project") and "\n# What to predict." in text
    assert spec.project == "shop" and spec.task == "binary"
    assert spec.label.column == "label" and spec.label.positive == 1 and spec.label.delay == timedelta(0)
    [(name, source)] = spec.sources.items()
    assert name == "events" and spec.label.source == "events"
    assert source.path == f"data/events.{fmt}" and source.format == fmt and source.timestamp == "ts"
    assert source.table.min_rows == 1
    assert rules(spec) == {
        "event_id": {"type": "int", "nullable": False, "unique": True},
        "ts": {"type": "timestamp", "nullable": False},
        "user_id": {"type": "int", "nullable": False},
        "amount": {"type": "float", "nullable": False},
        "items": {"type": "int", "nullable": False},
        "channel": {"type": "string", "nullable": False, "allowed": ["app", "shop", "web"]},
        "note": {"type": "string"},  # has nulls and more than 20 values
        "is_member": {"type": "bool", "nullable": False},
        "label": {"type": "int", "nullable": False, "allowed": [0, 1]},
    }
    assert {k: e.key for k, e in spec.entities.items()} == {"user_id": "user_id"}

    features = spec.features
    request = {k: f.type for k, f in features.request.items()}
    assert request == {"amount": "float", "items": "int", "channel": "string", "is_member": "bool", "ts": "timestamp"}
    assert {k: (e.input, e.op) for k, e in features.encodings.items()} == {"channel_onehot": ("channel", "onehot")}
    assert {k: (t.op, t.inputs) for k, t in features.transforms.items()} == {
        "ts_hour": ("hour", ["ts"]),
        "ts_day_of_week": ("day_of_week", ["ts"]),
    }
    assert features.exclude == ["ts"]
    [(view_name, view)] = features.views.items()
    assert view_name == "user_id" and view.entity == "user_id" and view.source == "events"
    [agg] = view.aggregations
    assert agg.column == "amount" and agg.functions == ["count", "mean"]
    # a user's events are 56 h apart: a 1d window would always be empty; 30d spans the 20 days of data
    assert agg.windows == [timedelta(days=7), timedelta(days=30)]

    span_days = (N - 1) * 8 / 24  # about 19.7 days -> 15 % is 3 days each
    assert spec.split.method == "time" and spec.split.valid_days == spec.split.test_days == round(0.15 * span_days) == 3
    assert spec.split.train_days is None

    (project / "loopml.yaml").write_text(text)
    result = ingest(spec, Layout.for_project(project, spec))
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (N, N, 0)
    assert all(c.passed or c.severity == "warn" for c in result.checks)


def test_regression_target_without_timestamp(tmp_path: Path) -> None:
    columns = events()
    columns["price"] = [10.0 + (i * 13 % 50) * 0.7 for i in range(N)]
    del columns["ts"], columns["label"]
    data = write(tmp_path / "prices.csv", columns)
    text, spec = infer(data, tmp_path, label="price")
    assert spec.task == "regression"
    assert "positive:" not in text
    assert rules(spec)["price"] == {"type": "float", "nullable": False}
    assert spec.sources["prices"].timestamp is None and "# timestamp: none (no timestamp column found)" in text
    assert spec.split.method == "random" and spec.split.valid_fraction == 0.15
    assert spec.features.transforms == {} and spec.features.views == {} and spec.features.exclude == []
    assert set(spec.features.request) == {"user_id", "amount", "items", "channel", "is_member"}
    result = ingest(spec, Layout.for_project(tmp_path, spec))
    assert result.rows_valid == N


def test_a_label_that_does_not_exist_is_named(tmp_path: Path) -> None:
    data = write(tmp_path / "events.csv", events())
    with pytest.raises(DataError) as info:
        infer(data, tmp_path, label="fraud")
    found = "event_id, ts, user_id, amount, items, channel, note, is_member, label"
    assert str(info.value) == f"{data}: label column 'fraud' is not a column of the file (found: {found})"


@pytest.mark.parametrize(
    ("values", "given", "expected"),
    [
        (["yes", "no", "no", "no"], None, "yes"),  # DuckDB reads yes/no as booleans; a label keeps the file's words
        (["neg", "pos", "neg", "neg"], None, "pos"),
        (["true", "false", "false", "false"], None, True),
        (["dog", "cat", "cat", "cat"], None, "dog"),  # the minority class
        (["cat", "dog", "dog", "dog"], None, "cat"),
        (["dog", "cat", "cat", "cat"], "cat", "cat"),
        ([2, 3, 3, 3], "3", 3),
    ],
)
def test_positive_class_is_inferred_or_checked(tmp_path: Path, values: list[Any], given: str | None, expected: Any) -> None:
    columns = events(40)
    columns["label"] = [values[i % 4] for i in range(40)]
    data = write(tmp_path / "data" / "events.csv", columns)
    _, spec = infer(data, tmp_path, positive=given)
    assert spec.task == "binary" and spec.label.positive == expected
    result = ingest(spec, Layout.for_project(tmp_path, spec))
    assert result.rows_valid == 40


def test_bad_choices_are_one_line_errors(tmp_path: Path) -> None:
    columns = events()
    columns["grade"] = [("a", "b", "c")[i % 3] for i in range(N)]
    columns["score"] = [i * 0.5 for i in range(N)]
    data = write(tmp_path / "events.csv", columns)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"label": "label", "positive": "7"}, "--positive '7' is not a value of label column 'label' (values: 0, 1)"),
        ({"label": "grade", "task": "binary"}, "label column 'grade' has 3 distinct values (a, b, c); a binary task needs"),
        ({"label": "grade"}, "cannot infer the task: label column 'grade' is string with 3 distinct values; pass --task"),
        ({"label": "grade", "task": "regression"}, "label column 'grade' is string; a regression task needs a numeric label"),
        ({"label": "score", "task": "binary"}, "label column 'score' has 60 distinct values (more than 20)"),
        ({"label": "label", "timestamp": "when"}, "timestamp column 'when' is not a column of the file"),
        ({"label": "label", "timestamp": "amount"}, "--timestamp column 'amount' does not hold timestamps (read as float)"),
        ({"label": "label", "entities": ["shop_id"]}, "entity column 'shop_id' is not a column of the file"),
        ({"label": "ts", "timestamp": "ts"}, "label column 'ts' cannot also be the timestamp or an entity"),
        ({"label": "user_id", "entities": ["user_id"]}, "label column 'user_id' cannot also be the timestamp or an"),
        ({"label": "ts"}, "cannot infer the task: label column 'ts' is timestamp with 60 distinct values"),
    ]
    for kw, message in cases:
        with pytest.raises(DataError) as info:
            infer(data, tmp_path, **kw)
        assert str(info.value).startswith(f"{data}: {message}"), kw
        assert "\n" not in str(info.value)


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        infer(tmp_path / "nope.csv", tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        infer(empty, tmp_path)
    header = tmp_path / "header.csv"
    header.write_text("a,label\n")
    with pytest.raises(DataError, match="has no rows"):
        infer(header, tmp_path)
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="cannot tell the file format"):
        infer(odd, tmp_path)


def test_file_outside_the_project_gets_an_absolute_path_and_odd_names_are_quoted(tmp_path: Path) -> None:
    columns = events()
    columns["unit price"] = columns.pop("amount")
    columns["yes"] = columns.pop("items")
    data = write(tmp_path / "elsewhere" / "my events.parquet", columns)
    _, spec = infer(data, tmp_path / "proj", entities=["user_id"], timestamp="ts")
    [(name, source)] = spec.sources.items()
    assert name == "my_events" and source.path == str(data.resolve())
    assert "unit price" in spec.features.request and "yes" in spec.features.request
    assert spec.features.views["user_id"].aggregations[0].column == "unit price"
    result = ingest(spec, Layout.for_project(tmp_path / "proj", spec))
    assert result.rows_valid == N


def test_several_timestamp_columns_need_a_choice(tmp_path: Path) -> None:
    columns = events()
    columns["shipped"] = [t + timedelta(days=1) for t in columns["ts"]]
    data = write(tmp_path / "events.parquet", columns)
    text, spec = infer(data, tmp_path)
    assert spec.sources["events"].timestamp is None and "pass --timestamp to pick one" in text
    _, spec = infer(data, tmp_path, timestamp="shipped")
    assert spec.sources["events"].timestamp == "shipped"
    assert spec.features.request["shipped"].type == "timestamp" and "ts" not in spec.features.request
    assert spec.features.exclude == ["shipped"]


def write_text(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> Path:
    """A CSV written cell by cell as given (``None``: a blank cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def inferred(data: Path, project: Path, label: str = "label", **kw: Any) -> tuple[Inferred, Spec]:
    args: dict[str, Any] = {"positive": None, "task": None, "timestamp": None, "entities": []} | kw
    result = infer_project(data, label, args["positive"], args["task"], args["timestamp"], args["entities"], project)
    return result, parse_spec(result.text)


def test_text_columns_become_categories_free_text_is_skipped_stray_cells_are_missing(tmp_path: Path) -> None:
    cities = ("Paris", "Lyon", "Nice", "Metz", "Brest")
    strays = {5: "?", 17: "n/a", 33: "thirty"}
    rows = [
        [
            cities[i % 5],
            f"cust{i % 60}",
            f"a rather long comment, number {i}, about nothing much",
            strays.get(i, 20 + i % 40),
            i % 2,
        ]
        for i in range(240)
    ]
    data = write_text(tmp_path / "people.csv", ["city", "customer", "comment", "age", "label"], rows)
    result, spec = inferred(data, tmp_path)
    assert {k: f.type for k, f in spec.features.request.items()} == {"city": "string", "customer": "string", "age": "int"}
    encodings = {k: (e.input, e.op) for k, e in spec.features.encodings.items()}
    assert encodings == {"city_onehot": ("city", "onehot"), "customer_target": ("customer", "target")}
    assert rules(spec)["age"] == {"type": "int", "severity": "warn"}
    assert "column 'age': 3 of 240 cells are not numbers ('?', 'n/a', 'thirty'); read as int" in result.notes[0]
    assert any(n.startswith("not model inputs: comment (free text: 240 distinct values") for n in result.notes)
    result_in = ingest(spec, Layout.for_project(tmp_path, spec))
    assert (result_in.rows_valid, result_in.rows_quarantined) == (240, 0)
    ages = pq.read_table(result_in.per_source["people"].path).column("age").to_pylist()
    assert ages[5] is None and ages[6] == 26


def test_decimal_commas_in_a_semicolon_file_are_numbers(tmp_path: Path) -> None:
    rows = [[f"{i},5", f"{i * 3}", i % 2] for i in range(50)]
    data = write_text(tmp_path / "prices.csv", ["price", "qty", "label"], rows, delimiter=";")
    assert data.read_text().startswith("price;qty;label\n0,5;0;0\n")
    result, spec = inferred(data, tmp_path)
    source = spec.sources["prices"]
    assert source.csv.decimal == "," and rules(spec)["price"] == {"type": "float", "nullable": False}
    assert 'numbers are written with a decimal comma (price): csv: {decimal: ","}' in result.notes
    done = ingest(spec, Layout.for_project(tmp_path, spec))
    assert pq.read_table(done.per_source["prices"].path).column("price").to_pylist()[:3] == [0.5, 1.5, 2.5]


def test_dates_written_day_first_or_with_slashes_get_a_format_and_ingest(tmp_path: Path) -> None:
    months = ("Jan", "Feb", "Mar")
    rows = [
        [f"{1 + i % 28:02d}.{1 + i % 12:02d}.2017", f"03/{1 + i % 12:02d}/2017", f"{1 + i % 28}/3/2017 {i % 24}:15", i % 2]
        for i in range(60)
    ]
    named = [f"{1 + i % 28}-{months[i % 3]}-2017" for i in range(60)]
    data = write_text(
        tmp_path / "visits.csv", ["day", "slashed", "at", "label", "named"], [[*r, n] for r, n in zip(rows, named, strict=True)]
    )
    result, spec = inferred(data, tmp_path, timestamp="at")
    assert rules(spec)["named"] == {"type": "date", "nullable": False, "format": "%d-%b-%Y"}
    assert rules(spec)["day"] == {"type": "date", "nullable": False, "format": "%d.%m.%Y"}
    assert rules(spec)["slashed"] == {"type": "date", "nullable": False, "format": "%d/%m/%Y"}
    assert rules(spec)["at"] == {"type": "timestamp", "nullable": False, "format": "%d/%m/%Y %H:%M"}
    [ambiguous] = [n for n in result.notes if "could be month first" in n]
    assert ambiguous.startswith("column 'slashed': dates like '03/01/2017' read day first (%d/%m/%Y); no day is above 12")
    assert "set format: '%m/%d/%Y'" in ambiguous
    done = ingest(spec, Layout.for_project(tmp_path, spec))
    by_time = {row["at"]: row for row in pq.read_table(done.per_source["visits"].path).to_pylist()}
    assert done.rows_valid == 60 and by_time[datetime(2017, 3, 14, 13, 15)] == {  # row 14 of the file
        "day": date(2017, 2, 14),
        "slashed": date(2017, 2, 3),
        "at": datetime(2017, 3, 14, 13, 15),
        "label": 1,
        "named": date(2017, 2, 14),
    }


def test_a_header_naming_a_column_twice_is_refused_with_both_positions(tmp_path: Path) -> None:
    data = tmp_path / "people.csv"
    data.write_text("age,income,age,label\n30,1.5,31,0\n40,2.5,41,1\n")
    with pytest.raises(DataError) as info:
        infer(data, tmp_path)
    message = f"{data}: the header names column 'age' twice (columns 1 and 3); a reader would silently call the second 'age_1'"
    assert str(info.value).startswith(message)


def test_a_line_longer_than_duckdb_reads_raises_the_limit_and_the_long_text_is_skipped(tmp_path: Path) -> None:
    data = tmp_path / "pages.csv"
    with data.open("w") as fh:
        fh.write("views,page,label\n")
        fh.write(f"3,{'x' * 3_000_000},1\n")
        fh.writelines(f"{i},short page {i},{i % 2}\n" for i in range(40))
    result, spec = inferred(data, tmp_path)
    limit = spec.sources["pages"].csv.max_line_bytes
    assert limit is not None and limit > 3_000_000
    assert f"line 2 is 3,000,005 bytes, over DuckDB's 2,000,000: csv: {{max_line_bytes: {limit}}}" in result.notes
    assert set(spec.features.request) == {"views"} and "page (free text" in " ".join(result.notes)
    assert ingest(spec, Layout.for_project(tmp_path, spec)).rows_valid == 41


def test_an_entity_without_a_timestamp_is_a_categorical_feature_and_the_split_group(tmp_path: Path) -> None:
    rows = [[i % 30, round(10 + (i * 7 % 13) / 3, 2), i % 2] for i in range(240)]
    data = write_text(tmp_path / "visits.csv", ["user_id", "spend", "churned"], rows)
    result, spec = inferred(data, tmp_path, label="churned", entities=["user_id"])
    assert {k: e.key for k, e in spec.entities.items()} == {"user_id": "user_id"} and spec.features.views == {}
    assert {k: f.type for k, f in spec.features.request.items()} == {"spend": "float", "user_id": "string"}
    assert {k: (e.input, e.op) for k, e in spec.features.encodings.items()} == {"user_id_target": ("user_id", "target")}
    assert spec.split.method == "random" and spec.split.group == "user_id"
    assert (
        "entity 'user_id': no timestamp, so no history views; kept as a categorical feature (target encoding) "
        "and as the group of the random split" in result.notes
    )
    # keys written as decimals, as pandas writes a column with gaps (statsmodels' modechoice): still a category
    decimals = write_text(tmp_path / "decimals.csv", ["user_id", "spend", "churned"], [[f"{r[0]}.0", *r[1:]] for r in rows])
    result, spec = inferred(decimals, tmp_path, label="churned", entities=["user_id"])
    assert rules(spec)["user_id"] == {"type": "int", "nullable": False} and "user_id_target" in spec.features.encodings
    assert "entity 'user_id': keys written as decimals, all whole numbers: declared int" in result.notes


def test_features_that_would_always_be_constant_are_not_added(tmp_path: Path) -> None:
    # yearly figures per country, on date-only time: no hour, and no window shorter than a year
    rows = [[f"{y}-12-31", f"c{c}", 100 + y - 2000 + c * 3.5, (y + c) % 2, "same"] for y in range(2000, 2020) for c in range(12)]
    data = write_text(tmp_path / "yearly.csv", ["year_end", "country", "gdp", "label", "unit"], rows)
    result, spec = inferred(data, tmp_path, entities=["country"])
    assert spec.sources["yearly"].timestamp == "year_end" and rules(spec)["year_end"]["type"] == "date"
    assert set(spec.features.transforms) == {"year_end_day_of_week"}
    assert "no year_end_hour feature: every year_end has the same hour" in result.notes
    [agg] = spec.features.views["country"].aggregations
    assert agg.windows == [timedelta(days=730), timedelta(days=1825)]
    assert "entity 'country': history windows 730d, 1825d (its events are a median 365 days apart)" in result.notes
    assert "unit" not in spec.features.request and "unit (constant)" in " ".join(result.notes)
    # one event per entity: any window would always be empty
    once = write_text(
        tmp_path / "once.csv",
        ["ts", "user", "x", "label"],
        [[f"2024-01-{d:02d} 10:{d:02d}:00", d, d, d % 2] for d in range(1, 29)],
    )
    result, spec = inferred(once, tmp_path, entities=["user"])
    assert spec.features.views == {} and "entity 'user': no user has two events" in " ".join(result.notes)
