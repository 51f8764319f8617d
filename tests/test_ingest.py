"""Ingest: reading CSV/Parquet/JSONL, validation rules, quarantine, snapshots, and every bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.data import Snapshot, get_snapshot, ingest, latest_snapshot, read_source
from loopml.errors import DataError, LoopmlError
from loopml.layout import Layout
from loopml.spec import Spec, parse_spec

NOW = datetime(2024, 1, 10)

# 6 rows; row 4 ties with row 1 on the timestamp, rows are not in time order
ROWS: dict[str, list[Any]] = {
    "id": [1, 2, 3, 4, 5, 6],
    "ts": [
        "2024-01-01 10:00:00",
        "2024-01-01 08:00:00",
        "2024-01-02 09:30:00",
        "2024-01-01 10:00:00",
        "2024-01-03 00:00:00",
        "2024-01-02 12:00:00",
    ],
    "amount": [10.5, 3.0, 7.25, 1.0, 99.0, 0.5],
    "flag": [True, False, True, False, False, True],
    "kind": ["a", "b", "a", "c", "b", "a"],
    "day": ["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-01", "2024-01-03", "2024-01-02"],
    "label": [0, 1, 0, 0, 1, 0],
    "note": ["x", "y", "z", "w", "v", "u"],  # not declared
}


def spec_text(path: str = "data/tx.csv", columns: str = "", table: str = "min_rows: 1", extra: str = "") -> str:
    columns = (
        columns
        or """
      id: {type: int, nullable: false, unique: true}
      ts: {type: timestamp, nullable: false}
      amount: {type: float, min: 0}
      flag: {type: bool}
      kind: {type: string, allowed: [a, b, c]}
      day: {type: date}
      label: {type: int, allowed: [0, 1]}"""
    )
    return f"""
project: t
entities: {{thing: {{key: id}}}}
sources:
  tx:
    path: {path}
    timestamp: ts
    columns:{columns}
    table: {{{table}}}
label: {{source: tx, column: label}}
{extra}
"""


def csv_text(rows: dict[str, list[Any]]) -> str:
    names = list(rows)
    lines = [",".join(names)]
    for i in range(len(rows[names[0]])):
        cells = []
        for n in names:
            v = rows[n][i]
            cells.append("" if v is None else ("true" if v is True else "false" if v is False else str(v)))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def arrow_table(rows: dict[str, list[Any]]) -> pa.Table:
    out = dict(rows)
    if all(isinstance(v, str) for v in rows["ts"]):
        out["ts"] = pa.array([datetime.fromisoformat(v) for v in rows["ts"]], pa.timestamp("us"))
    if all(isinstance(v, str) for v in rows["day"]):
        out["day"] = pa.array([datetime.fromisoformat(v).date() for v in rows["day"]], pa.date32())
    return pa.table(out)


def write(root: Path, name: str, rows: dict[str, list[Any]]) -> Path:
    path = root / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".csv"):
        path.write_text(csv_text(rows), encoding="utf-8")
    elif name.endswith(".parquet"):
        pq.write_table(arrow_table(rows), path)
    else:
        n = len(rows["id"])
        path.write_text("".join(json.dumps({k: v[i] for k, v in rows.items()}) + "\n" for i in range(n)), encoding="utf-8")
    return path


def project(root: Path, text: str) -> tuple[Spec, Layout]:
    spec = parse_spec(text)
    return spec, Layout.for_project(root, spec)


def with_row(rows: dict[str, list[Any]], **changes: Any) -> dict[str, list[Any]]:
    """``rows`` plus a 7th row: row 1's values with ``changes``."""
    out = {k: [*v, v[0]] for k, v in rows.items()}
    out["id"][-1] = 7
    for k, v in changes.items():
        out[k][-1] = v
    return out


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def check(result: Any, rule: str, column: str | None = None) -> Any:
    found = [c for c in result.checks if c.rule == rule and c.column == column]
    assert len(found) == 1, f"expected one {rule} check on {column}: {result.checks}"
    return found[0]


def assert_invariant(result: Any) -> None:
    assert result.rows_in == result.rows_valid + result.rows_quarantined
    for src in result.per_source.values():
        assert src.rows_in == src.rows_valid + src.rows_quarantined
        assert pq.read_metadata(src.path).num_rows == src.rows_valid
        quarantined = pq.read_metadata(src.quarantine).num_rows if src.quarantine else 0
        assert quarantined == src.rows_quarantined


def state_files(layout: Layout) -> list[str]:
    if not layout.state.exists():
        return []
    return sorted(p.relative_to(layout.state).as_posix() for p in layout.state.rglob("*") if p.name != "catalog.duckdb.wal")


def catalog_rows(layout: Layout) -> list[tuple[Any, ...]]:
    if not layout.catalog.exists():
        return []
    with duckdb.connect(str(layout.catalog), read_only=True) as con:
        return con.execute(
            "SELECT s.hash, s.ingested_at, count(*) FROM snapshots s JOIN snapshot_sources USING (hash) GROUP BY ALL ORDER BY 1"
        ).fetchall()


# -- good path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_each_format_ingests_to_a_typed_sorted_snapshot(tmp_path: Path, fmt: str) -> None:
    write(tmp_path, f"tx.{fmt}", ROWS)
    spec, layout = project(tmp_path, spec_text(f"data/tx.{fmt}"))
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (6, 6, 0)
    assert_invariant(result)
    doc = result.to_json()
    assert {"snapshot", "rows_in", "rows_valid", "rows_quarantined", "checks"} <= set(doc)
    assert doc["snapshot"] == result.snapshot and len(result.snapshot) == 16
    assert all(set(c) == {"source", "column", "rule", "severity", "failed_rows", "passed", "message"} for c in doc["checks"])
    json.dumps(doc)
    path = layout.snapshots / result.snapshot / "tx.parquet"
    assert result.per_source["tx"].path == path
    schema = pq.read_schema(path)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("id", "int64"),
        ("ts", "timestamp[us]"),
        ("amount", "double"),
        ("flag", "bool"),
        ("kind", "string"),
        ("day", "date32[day]"),
        ("label", "int64"),
    ]
    rows = parquet_rows(path)
    assert [r["id"] for r in rows] == [2, 1, 4, 3, 6, 5]  # by timestamp, ties in file order
    assert rows[0] == {
        "id": 2,
        "ts": datetime(2024, 1, 1, 8),
        "amount": 3.0,
        "flag": False,
        "kind": "b",
        "day": datetime(2024, 1, 1).date(),
        "label": 1,
    }
    undeclared = check(result, "undeclared_columns")
    assert undeclared.severity == "warn" and "note" in undeclared.message
    assert result.per_source["tx"].min_ts == datetime(2024, 1, 1, 8)
    assert result.per_source["tx"].max_ts == datetime(2024, 1, 3)
    assert result.per_source["tx"].quarantine is None
    assert not (layout.quarantine / result.snapshot).exists()


def test_same_data_in_every_format_gives_the_same_snapshot_hash(tmp_path: Path) -> None:
    hashes = set()
    for fmt in ("csv", "parquet", "jsonl"):
        root = tmp_path / fmt
        write(root, f"tx.{fmt}", ROWS)
        spec, layout = project(root, spec_text(f"data/tx.{fmt}"))
        hashes.add(ingest(spec, layout, now=NOW).snapshot)
    assert len(hashes) == 1


def test_hash_is_deterministic_and_reingesting_reuses_the_snapshot(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text())
    first = ingest(spec, layout, now=NOW)
    second = ingest(spec, layout, now=NOW)
    assert second.snapshot == first.snapshot
    assert (first.reused, second.reused) == (False, True)
    assert [p.name for p in layout.snapshots.iterdir()] == [first.snapshot]
    assert len(catalog_rows(layout)) == 1
    assert second.to_json()["rows_valid"] == 6

    write(tmp_path, "tx.csv", with_row(ROWS))
    third = ingest(spec, layout, now=NOW)
    assert third.snapshot != first.snapshot and third.rows_in == 7
    latest = latest_snapshot(layout)
    assert isinstance(latest, Snapshot) and latest.hash == third.snapshot

    write(tmp_path, "tx.csv", ROWS)  # back to the first data: its snapshot is reused and is the latest again
    fourth = ingest(spec, layout, now=NOW)
    assert fourth.snapshot == first.snapshot and fourth.reused
    latest = latest_snapshot(layout)
    assert latest is not None and latest.hash == first.snapshot
    assert latest.paths == {"tx": layout.snapshots / first.snapshot / "tx.parquet"}
    assert latest.sources["tx"].rows_valid == 6 and latest.columns["tx"]["ts"] == "timestamp"
    assert sorted(p.name for p in layout.snapshots.iterdir()) == sorted({first.snapshot, third.snapshot})
    assert not [p for p in layout.state.iterdir() if p.name.startswith(".ingest-")]


def test_hash_depends_on_declared_columns(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text())
    base = ingest(spec, layout, now=NOW).snapshot
    label = "label: {type: int, allowed: [0, 1]}"
    text = spec_text().replace(label, label + "\n      note: {type: string}")
    spec2, layout2 = project(tmp_path, text)
    assert ingest(spec2, layout2, now=NOW).snapshot != base


def test_get_snapshot_by_hash_prefix_and_unknown_hash(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text())
    with pytest.raises(DataError, match="nothing ingested yet"):
        get_snapshot(layout, "abc")
    assert latest_snapshot(layout) is None
    result = ingest(spec, layout, now=NOW)
    assert get_snapshot(layout, result.snapshot).hash == result.snapshot
    assert get_snapshot(layout, result.snapshot[:6]).hash == result.snapshot
    with pytest.raises(DataError, match=r"snapshot 'ffffffffffffffff' is unknown \(latest: " + result.snapshot):
        get_snapshot(layout, "ffffffffffffffff")


def test_header_only_csv_is_an_empty_snapshot(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tx.csv").write_text("id,ts,amount,flag,kind,day,label\n")
    spec, layout = project(tmp_path, spec_text(table=""))
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (0, 0, 0)
    assert pq.read_table(result.per_source["tx"].path).num_rows == 0
    assert check(result, "label_classes", "label").severity == "warn"


def test_read_source_returns_typed_rows_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, "tx.csv", ROWS)
    spec = parse_spec(spec_text())
    table = read_source("tx", spec.sources["tx"], path)
    rows = table.relation().fetchall()
    assert table.rows == 6 and table.undeclared == ["note"]
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[0][1] == 1
    assert rows[1][2] == datetime(2024, 1, 1, 8)


def test_timestamps_with_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    rows = dict(ROWS)
    rows["ts"] = ["2024-01-01T10:00:00+02:00", "2024-01-01T10:00:00Z", *ROWS["ts"][2:]]
    write(tmp_path, "tx.csv", rows)
    spec, layout = project(tmp_path, spec_text())
    result = ingest(spec, layout, now=NOW)
    by_id = {r["id"]: r["ts"] for r in parquet_rows(result.per_source["tx"].path)}
    assert by_id[1] == datetime(2024, 1, 1, 8) and by_id[2] == datetime(2024, 1, 1, 10)


# -- row rules ---------------------------------------------------------------------------------------

# (column rule in YAML, the bad 7th row, expected rule id, expected reason)
ROW_RULES = [
    ("amount: {type: float, SEV}", {"amount": "abc"}, "amount.type", "amount: 'abc' is not a valid float"),
    ("id: {type: int, SEV}", {"id": "1.5"}, "id.type", "id: '1.5' is not a valid int"),
    ("flag: {type: bool, SEV}", {"flag": "maybe"}, "flag.type", "flag: 'maybe' is not a valid bool"),
    ("day: {type: date, SEV}", {"day": "someday"}, "day.type", "day: 'someday' is not a valid date"),
    ("amount: {type: float, nullable: false, SEV}", {"amount": None}, "amount.nullable", "amount: missing (nullable: false)"),
    ("amount: {type: float, min: 0, SEV}", {"amount": -2.5}, "amount.min", "amount: -2.5 is below min 0"),
    ("amount: {type: float, max: 100, SEV}", {"amount": 175.0}, "amount.max", "amount: 175.0 is above max 100"),
    ("kind: {type: string, allowed: [a, b, c], SEV}", {"kind": "z"}, "kind.allowed", "kind: 'z' is not one of [a, b, c]"),
    ("kind: {type: string, pattern: '[a-c]', SEV}", {"kind": "zz"}, "kind.pattern", "kind: 'zz' does not match pattern [a-c]"),
    ("id: {type: int, unique: true, SEV}", {"id": 3}, "id.unique", "id: '3' repeats row 3"),
]


def rule_spec(rule: str, severity: str) -> str:
    column = rule.split(":", 1)[0]
    base = {
        "id": "id: {type: int}",
        "ts": "ts: {type: timestamp}",
        "amount": "amount: {type: float}",
        "flag": "flag: {type: bool}",
        "kind": "kind: {type: string}",
        "day": "day: {type: date}",
        "label": "label: {type: int}",
    }
    base[column] = rule.replace("SEV", f"severity: {severity}")
    return "".join(f"\n      {line}" for line in base.values())


@pytest.mark.parametrize(("rule", "bad", "rule_id", "reason"), ROW_RULES, ids=[r[2] for r in ROW_RULES])
def test_row_rule_with_severity_error_quarantines_the_row(
    tmp_path: Path, rule: str, bad: dict[str, Any], rule_id: str, reason: str
) -> None:
    write(tmp_path, "tx.csv", with_row(ROWS, **bad))
    spec, layout = project(tmp_path, spec_text(columns=rule_spec(rule, "error")))
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (7, 6, 1)
    assert_invariant(result)
    column, name = rule_id.split(".")
    failed = check(result, name, column)
    assert (failed.severity, failed.failed_rows, failed.passed) == ("error", 1, False)
    assert "row 7" in failed.message
    quarantine = result.per_source["tx"].quarantine
    assert quarantine == layout.quarantine / result.snapshot / "tx.parquet"
    rows = parquet_rows(quarantine)
    assert len(rows) == 1
    assert rows[0]["_row"] == 7 and rows[0]["_rules"] == rule_id and rows[0]["_reasons"] == reason
    original = "" if bad[column] is None else str(bad[column])
    assert (rows[0][column] or "") == original  # the value as it was in the file
    assert all(isinstance(v, str) or v is None for k, v in rows[0].items() if k != "_row")
    assert sorted(r["id"] for r in parquet_rows(result.per_source["tx"].path)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("rule", "bad", "rule_id", "reason"), ROW_RULES, ids=[r[2] for r in ROW_RULES])
def test_row_rule_with_severity_warn_keeps_the_row_and_counts_it(
    tmp_path: Path, rule: str, bad: dict[str, Any], rule_id: str, reason: str
) -> None:
    write(tmp_path, "tx.csv", with_row(ROWS, **bad))
    spec, layout = project(tmp_path, spec_text(columns=rule_spec(rule, "warn")))
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_in, result.rows_valid, result.rows_quarantined) == (7, 7, 0)
    assert_invariant(result)
    column, name = rule_id.split(".")
    warned = check(result, name, column)
    assert (warned.severity, warned.failed_rows, warned.passed) == ("warn", 1, False)
    assert "kept with a warning" in warned.message and "row 7" in warned.message
    assert result.per_source["tx"].quarantine is None


def test_passing_rules_are_reported_as_passed(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text())
    result = ingest(spec, layout, now=NOW)
    for rule, column in [("unique", "id"), ("nullable", "id"), ("min", "amount"), ("allowed", "kind"), ("timestamp", "ts")]:
        passed = check(result, rule, column)
        assert passed.passed and passed.failed_rows == 0 and passed.severity == "error"


def test_a_row_failing_several_rules_is_one_quarantine_row_with_every_reason(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", with_row(ROWS, amount=-1, kind="q", id=2))
    spec, layout = project(tmp_path, spec_text())
    result = ingest(spec, layout, now=NOW)
    assert result.rows_quarantined == 1
    [row] = parquet_rows(result.per_source["tx"].quarantine)
    assert row["_row"] == 7
    assert row["_rules"] == "id.unique; amount.min; kind.allowed"
    assert row["_reasons"] == "id: '2' repeats row 2; amount: -1.0 is below min 0; kind: 'q' is not one of [a, b, c]"


def test_bad_timestamps_are_always_quarantined_even_with_severity_warn(tmp_path: Path) -> None:
    rows = with_row(with_row(ROWS, ts=None), ts="not a time")
    write(tmp_path, "tx.csv", rows)
    columns = rule_spec("ts: {type: timestamp, SEV}", "warn")
    spec, layout = project(tmp_path, spec_text(columns=columns))
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_valid, result.rows_quarantined) == (6, 2)
    failed = check(result, "timestamp", "ts")
    assert failed.severity == "error" and failed.failed_rows == 2
    reasons = [r["_reasons"] for r in parquet_rows(result.per_source["tx"].quarantine)]
    assert reasons == ["ts: missing timestamp", "ts: 'not a time' is not a valid timestamp"]


@pytest.mark.parametrize("severity", ["error", "warn"])
def test_duplicate_keys(tmp_path: Path, severity: str) -> None:
    rows = with_row(with_row(ROWS, kind="b"), kind="b")  # rows 7 and 8 both have key (id 7, kind b)
    write(tmp_path, "tx.csv", rows)
    table = f"duplicate_keys: [id, kind], severity: {severity}"
    spec, layout = project(tmp_path, spec_text(columns=rule_spec("id: {type: int}", "error"), table=table))
    result = ingest(spec, layout, now=NOW)
    dup = check(result, "duplicate_keys")
    assert dup.failed_rows == 1 and dup.severity == severity
    if severity == "error":
        assert result.rows_quarantined == 1
        [row] = parquet_rows(result.per_source["tx"].quarantine)
        assert (row["_row"], row["_rules"], row["_reasons"]) == (8, "duplicate_keys", "duplicate key (id, kind) of row 7")
    else:
        assert result.rows_quarantined == 0 and result.rows_valid == 8


def test_unique_and_duplicate_keys_on_the_same_column_both_report(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", with_row(ROWS, id=5))
    spec, layout = project(tmp_path, spec_text(table="duplicate_keys: [id]"))
    result = ingest(spec, layout, now=NOW)
    assert result.rows_quarantined == 1
    assert check(result, "unique", "id").failed_rows == 1 and check(result, "duplicate_keys").failed_rows == 1
    [row] = parquet_rows(result.per_source["tx"].quarantine)
    assert row["_rules"] == "id.unique; duplicate_keys"
    assert row["_reasons"] == "id: '5' repeats row 5; duplicate key (id) of row 5"


def test_a_cell_failing_its_type_with_severity_warn_is_kept_as_null(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", with_row(ROWS, amount="n/a"))
    spec, layout = project(tmp_path, spec_text(columns=rule_spec("amount: {type: float, SEV}", "warn")))
    result = ingest(spec, layout, now=NOW)
    assert result.rows_valid == 7
    amounts = {r["id"]: r["amount"] for r in parquet_rows(result.per_source["tx"].path)}
    assert amounts[7] is None and amounts[1] == 10.5


def test_null_keys_are_not_duplicates(tmp_path: Path) -> None:
    rows = with_row(with_row(ROWS, kind=None), kind=None)
    rows["kind"][:6] = ["a", "b", "c", "d", "e", "f"]
    write(tmp_path, "tx.csv", rows)
    columns = rule_spec("kind: {type: string, unique: true}", "error")
    spec, layout = project(tmp_path, spec_text(columns=columns))
    result = ingest(spec, layout, now=NOW)
    assert result.rows_quarantined == 0 and check(result, "unique", "kind").passed


def test_formats_decimal_commas_and_nan_cells_are_read_as_declared(tmp_path: Path) -> None:
    path = tmp_path / "data" / "tx.csv"
    path.parent.mkdir(parents=True)
    path.write_text("id;ts;day;amount;label\n1;01.02.2024 10:30;01.02.2024;1,5;1\n2;13.02.2024 08:00;13.02.2024;nan;0\n")
    columns = """
      id: {type: int}
      ts: {type: timestamp, format: "%d.%m.%Y %H:%M"}
      day: {type: date, format: "%d.%m.%Y"}
      amount: {type: float, nullable: false}
      label: {type: int}"""
    text = spec_text(columns=columns, table="severity: warn").replace("timestamp: ts", 'csv: {decimal: ","}\n    timestamp: ts')
    spec, layout = project(tmp_path, text)
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_valid, result.rows_quarantined) == (1, 1)  # the nan amount is a missing value
    assert parquet_rows(result.per_source["tx"].path) == [
        {"id": 1, "ts": datetime(2024, 2, 1, 10, 30), "day": datetime(2024, 2, 1).date(), "amount": 1.5, "label": 1}
    ]
    assert check(result, "nullable", "amount").failed_rows == 1


def test_a_parquet_text_column_declared_float_is_cast_per_row(tmp_path: Path) -> None:
    rows = with_row(ROWS, amount="oops")
    rows["amount"] = [str(v) for v in rows["amount"]]
    write(tmp_path, "tx.parquet", rows)
    spec, layout = project(tmp_path, spec_text("data/tx.parquet"))
    result = ingest(spec, layout, now=NOW)
    assert (result.rows_valid, result.rows_quarantined) == (7 - 1, 1)
    [row] = parquet_rows(result.per_source["tx"].quarantine)
    assert row["_reasons"] == "amount: 'oops' is not a valid float"
    assert pq.read_schema(result.per_source["tx"].path).field("amount").type == pa.float64()


# -- table rules -------------------------------------------------------------------------------------

TABLE_RULES = [
    ("min_rows: 10", "6 valid rows (of 6 read); table.min_rows is 10"),
    ("max_rows: 3", "6 valid rows (of 6 read); table.max_rows is 3"),
    ("max_age: 1d", "newest ts is 2024-01-03 00:00:00, 168.0h old; table.max_age is 1d"),
]


@pytest.mark.parametrize(("rule", "message"), TABLE_RULES, ids=["min_rows", "max_rows", "max_age"])
def test_table_rule_with_severity_error_fails_the_ingest(tmp_path: Path, rule: str, message: str) -> None:
    path = write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text(table=f"{rule}, severity: error"))
    with pytest.raises(DataError) as info:
        ingest(spec, layout, now=NOW)
    assert str(info.value) == f"{path}: {message}"
    assert_nothing_left(layout, [], [])


@pytest.mark.parametrize(("rule", "message"), TABLE_RULES, ids=["min_rows", "max_rows", "max_age"])
def test_table_rule_with_severity_warn_is_recorded(tmp_path: Path, rule: str, message: str) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text(table=f"{rule}, severity: warn"))
    result = ingest(spec, layout, now=NOW)
    warned = check(result, rule.split(":")[0])
    assert (warned.severity, warned.passed, warned.message) == ("warn", False, message)
    assert result.rows_valid == 6


def test_table_rules_that_hold_pass(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text(table="min_rows: 6, max_rows: 6, max_age: 7d"))
    result = ingest(spec, layout, now=NOW)
    assert all(check(result, r).passed for r in ("min_rows", "max_rows", "max_age"))


@pytest.mark.parametrize("severity", ["error", "warn"])
def test_max_null_rate(tmp_path: Path, severity: str) -> None:
    rows = dict(ROWS)
    rows["amount"] = [1.0, None, None, 2.0, 3.0, 4.0]
    path = write(tmp_path, "tx.csv", rows)
    columns = rule_spec("amount: {type: float, max_null_rate: 0.25, SEV}", severity)
    spec, layout = project(tmp_path, spec_text(columns=columns))
    message = "column 'amount' is null in 33.33% of rows (2 of 6); max_null_rate is 25.00%"
    if severity == "error":
        with pytest.raises(DataError) as info:
            ingest(spec, layout, now=NOW)
        assert str(info.value) == f"{path}: {message}"
        assert_nothing_left(layout, [], [])
    else:
        result = ingest(spec, layout, now=NOW)
        warned = check(result, "max_null_rate", "amount")
        assert (warned.passed, warned.failed_rows, warned.message) == (False, 2, message)


# -- the label ---------------------------------------------------------------------------------------


def test_label_with_one_class_is_a_warning(tmp_path: Path) -> None:
    rows = dict(ROWS)
    rows["label"] = [0] * 6
    write(tmp_path, "tx.csv", rows)
    spec, layout = project(tmp_path, spec_text())
    result = ingest(spec, layout, now=NOW)
    warned = check(result, "label_classes", "label")
    assert warned.severity == "warn" and not warned.passed and "one class only (0)" in warned.message


@pytest.mark.parametrize(
    ("label_type", "values", "positive"),
    [
        ("int", [0, 1], "1"),
        ("bool", ["false", "true"], "1"),
        ("string", ["0", "1"], "1"),
        ("bool", ["false", "true"], "true"),
        ("string", ["no", "yes"], "yes"),
    ],
)
def test_label_positive_compares_as_text(tmp_path: Path, label_type: str, values: list[Any], positive: str) -> None:
    rows = dict(ROWS)
    rows["label"] = [values[i % 2] for i in range(6)]
    write(tmp_path, "tx.csv", rows)
    columns = rule_spec(f"label: {{type: {label_type}}}", "error")
    text = spec_text(columns=columns).replace("column: label}", f"column: label, positive: {positive}}}")
    spec, layout = project(tmp_path, text)
    result = ingest(spec, layout, now=NOW)
    assert check(result, "label_classes", "label").passed


def test_label_without_the_positive_class_fails(tmp_path: Path) -> None:
    path = write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text().replace("column: label}", "column: label, positive: 5}"))
    with pytest.raises(DataError) as info:
        ingest(spec, layout, now=NOW)
    assert str(info.value) == f"{path}: label column 'label' has values (0, 1) but label.positive is 5"


def test_regression_label_is_not_checked_for_classes(tmp_path: Path) -> None:
    rows = dict(ROWS)
    rows["label"] = [1, 2, 3, 4, 5, 6]
    write(tmp_path, "tx.csv", rows)
    columns = rule_spec("label: {type: int}", "error")
    spec, layout = project(tmp_path, "task: regression\n" + spec_text(columns=columns))
    result = ingest(spec, layout, now=NOW)
    assert result.rows_valid == 6 and not [c for c in result.checks if c.rule == "label_classes"]


# -- bad input: one-line errors naming the file, nothing left behind ---------------------------------


def assert_nothing_left(layout: Layout, files_before: list[str], catalog_before: list[tuple[Any, ...]]) -> None:
    assert state_files(layout) == files_before
    assert catalog_rows(layout) == catalog_before


def one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.fixture(params=["fresh", "after_a_good_ingest"])
def previous(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Bad inputs are tried on a fresh project and on one that already holds a snapshot."""
    if request.param == "fresh":
        return [], []
    write(tmp_path, "good.csv", ROWS)
    spec, layout = project(tmp_path, spec_text("data/good.csv"))
    ingest(spec, layout, now=NOW)
    return state_files(layout), catalog_rows(layout)


def failing_ingest(tmp_path: Path, text: str, previous: tuple[list[str], list[tuple[Any, ...]]]) -> str:
    spec, layout = project(tmp_path, text)
    with pytest.raises(DataError) as info:
        ingest(spec, layout, now=NOW)
    assert_nothing_left(layout, *previous)
    return one_line(info)


def test_missing_file(tmp_path: Path, previous: Any) -> None:
    message = failing_ingest(tmp_path, spec_text("data/nope.csv"), previous)
    assert message == f"{tmp_path / 'data' / 'nope.csv'}: no such file (loopml.yaml sources.tx.path)"


def test_zero_byte_file(tmp_path: Path, previous: Any) -> None:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "tx.csv").write_bytes(b"")
    message = failing_ingest(tmp_path, spec_text(), previous)
    assert message == f"{tmp_path / 'data' / 'tx.csv'}: the file is empty (0 bytes)"


def test_truncated_parquet(tmp_path: Path, previous: Any) -> None:
    path = write(tmp_path, "tx.parquet", ROWS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = failing_ingest(tmp_path, spec_text("data/tx.parquet"), previous)
    assert message.startswith(f"{path}: not a readable Parquet file (truncated or corrupt)")


def test_non_utf8_csv(tmp_path: Path, previous: Any) -> None:
    path = write(tmp_path, "tx.csv", ROWS)
    text = path.read_text().replace(",c,", ",café,")
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index("é".encode("latin-1"))
    message = failing_ingest(tmp_path, spec_text(), previous)
    assert message == f"{path}: not UTF-8 text (byte {offset}, line 5); re-save the file as UTF-8"


def test_non_utf8_jsonl(tmp_path: Path, previous: Any) -> None:
    path = write(tmp_path, "tx.jsonl", ROWS)
    path.write_bytes(path.read_text().replace('"kind": "c"', '"kind": "caf\u00e9"').encode("latin-1"))
    message = failing_ingest(tmp_path, spec_text("data/tx.jsonl"), previous)
    assert message.startswith(f"{path}: not UTF-8 text (byte ") and "line 4" in message


def test_column_where_no_value_parses(tmp_path: Path, previous: Any) -> None:
    rows = dict(ROWS)
    rows["amount"] = ["abc", "x", None, "y", "z", "?"]
    path = write(tmp_path, "tx.csv", rows)
    message = failing_ingest(tmp_path, spec_text(), previous)
    assert message == f"{path}: column 'amount' declared float but no value parses (row 1: 'abc')"


def test_declared_column_absent(tmp_path: Path, previous: Any) -> None:
    rows = {k: v for k, v in ROWS.items() if k != "amount"}
    path = write(tmp_path, "tx.csv", rows)
    message = failing_ingest(tmp_path, spec_text(), previous)
    found = "id, ts, flag, kind, day, label, note"
    assert message == f"{path}: column 'amount' declared in loopml.yaml sources.tx.columns is missing (found: {found})"


def test_binary_label_with_three_values(tmp_path: Path, previous: Any) -> None:
    rows = dict(ROWS)
    rows["label"] = [0, 1, 2, 0, 1, 2]
    path = write(tmp_path, "tx.csv", rows)
    columns = rule_spec("label: {type: int}", "error")
    message = failing_ingest(tmp_path, spec_text(columns=columns), previous)
    assert message == f"{path}: label column 'label' has 3 distinct values (0, 1, 2); a binary task needs exactly 2"


def test_a_line_over_the_csv_line_limit_names_its_cause_and_the_fix(tmp_path: Path, previous: Any) -> None:
    rows = with_row(ROWS, note="x" * 2_100_000)  # a cell a little over DuckDB's 2,000,000-byte line limit
    path = write(tmp_path, "tx.csv", rows)
    size = len(path.read_bytes().splitlines(keepends=True)[7])
    message = failing_ingest(tmp_path, spec_text(), previous)
    assert message == (
        f"{path}: line 8 is {size:,} bytes, longer than the 2,000,000 bytes a CSV line may have; raise "
        "sources.tx.csv.max_line_bytes in loopml.yaml above that (or take the long column out of the file)"
    )
    spec, layout = project(
        tmp_path, spec_text(extra="").replace("timestamp: ts", "csv: {max_line_bytes: 4000000}\n    timestamp: ts")
    )
    assert ingest(spec, layout, now=NOW).rows_valid == 7


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path, previous: Any) -> None:
    path = write(tmp_path, "tx.csv", ROWS)
    path.write_text(path.read_text().replace(",note\n", ",amount\n", 1))
    message = failing_ingest(tmp_path, spec_text(), previous)
    assert message == (
        f"{path}: the header names column 'amount' twice (columns 3 and 8); a reader would silently call the second "
        "'amount_1' and a model would need it under that name: rename one of them in the file"
    )


def test_min_rows_violated(tmp_path: Path, previous: Any) -> None:
    path = write(tmp_path, "tx.csv", ROWS)
    message = failing_ingest(tmp_path, spec_text(table="min_rows: 100"), previous)
    assert message == f"{path}: 6 valid rows (of 6 read); table.min_rows is 100"


def test_min_rows_counts_valid_rows_only(tmp_path: Path, previous: Any) -> None:
    rows = dict(ROWS)
    rows["amount"] = [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    path = write(tmp_path, "tx.csv", rows)
    message = failing_ingest(tmp_path, spec_text(table="min_rows: 5"), previous)
    assert message == f"{path}: 4 valid rows (of 6 read); table.min_rows is 5"


def test_unknown_extension_and_invalid_pattern(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tx.txt").write_text(csv_text(ROWS))
    spec, layout = project(tmp_path, spec_text("data/tx.txt"))
    with pytest.raises(DataError, match=r"cannot tell the file format from the extension '.txt'.*set sources.tx.format"):
        ingest(spec, layout, now=NOW)
    spec, layout = project(tmp_path, spec_text("data/tx.txt").replace("timestamp: ts", "format: csv\n    timestamp: ts"))
    assert ingest(spec, layout, now=NOW).rows_valid == 6
    columns = rule_spec("kind: {type: string, pattern: '[a-'}", "error")
    text = spec_text(str(tmp_path / "data" / "tx.txt"), columns=columns)
    text = text.replace("timestamp: ts", "format: csv\n    timestamp: ts")
    spec, layout = project(tmp_path / "other", text)
    with pytest.raises(LoopmlError, match=r"sources.tx.columns.kind.pattern: invalid regular expression"):
        ingest(spec, layout, now=NOW)


def test_progress_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "tx.csv", ROWS)
    spec, layout = project(tmp_path, spec_text())
    seen: list[tuple[str, float]] = []
    ingest(spec, layout, progress=lambda message, fraction: seen.append((message, fraction)), now=NOW)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any("tx" in m for m, _ in seen)


def test_max_age_uses_the_clock_by_default(tmp_path: Path) -> None:
    rows = dict(ROWS)
    recent = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    rows["ts"] = [(recent - timedelta(days=400 - i)).isoformat(sep=" ") for i in range(6)]
    write(tmp_path, "tx.csv", rows)
    spec, layout = project(tmp_path, spec_text(table="max_age: 30d, severity: warn"))
    result = ingest(spec, layout)
    assert not check(result, "max_age").passed
