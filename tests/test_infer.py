"""``loopml init --data``: a loopml.yaml inferred from any file parses, has the expected types and rules, and ingests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from loopml.data import infer_spec, ingest
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
