"""The prediction log beyond its contract: Parquet parts and typed columns, PostgreSQL behind the server, choosing
the backend, labels files and ``loopml feedback``.

The contract both backends keep (rows, late labels, windows, concurrency, crashes, an unreachable log) is
``tests/test_contract_predlog.py``; compaction of the Parquet log is ``tests/test_predlog_compact.py``.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.monitor.live_rows import LiveData, load_live, logged_schema
from loopml.predlog.backends import open_prediction_log
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.labels import read_labels_file
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.postgres import PostgresPredictionLog
from loopml.predlog.records import LABELLED_SCHEMA, LOG_SCHEMA, Feedback, LoggedPrediction
from loopml.predlog.tables import log_table
from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from loopml.spec.environment import apply_environment
from loopml.spec.model import Spec
from specs import configure, minimal_spec_dict

T0 = datetime(2026, 3, 1, 12, 0, 0)


def pred(i: int, version: int = 1, **changes: Any) -> LoggedPrediction:
    fields: dict[str, Any] = {
        "request_id": f"r{i}",
        "ts": T0 + timedelta(minutes=i),
        "entities": {"customer_id": i},
        "features": {"amount": float(i), "hour": 12.0},
        "score": i / 100,
        "model_version": version,
        "variant": "champion",
        "latency_ms": 1.25,
    }
    return LoggedPrediction(**{**fields, **changes})


def labels_of(log: PredictionLogBackend) -> dict[str, Any]:
    return {r["request_id"]: r["label"] for r in log.read().to_pylist()}


# -- Parquet only: temporary parts ---------------------------------------------------------------------


def test_leftover_temporary_parts_are_ignored_and_swept(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    log.append([pred(1)])
    stale = folder / "log" / ".part-20200101T000000000000-dead.parquet.tmp"
    stale.write_bytes(b"PAR1 half a file")  # what a writer killed mid-write leaves
    assert log.count() == 1
    os.utime(stale, (0, 0))
    fresh = PredictionLog(folder)
    fresh.append([pred(2)])
    assert not stale.exists() and fresh.count() == 2


# -- choosing the backend ----------------------------------------------------------------------------------

RAW_SPEC = minimal_spec_dict()


def test_open_prediction_log_follows_the_spec_and_the_environment(tmp_path: Path, postgres_url: str) -> None:
    spec = Spec.model_validate(RAW_SPEC)
    default = open_prediction_log(spec, Layout.for_project(tmp_path, spec))
    assert isinstance(default, PredictionLog) and default.folder == tmp_path.resolve() / ".loopml" / "predictions"
    spec = Spec.model_validate({**RAW_SPEC, "storage": {"prediction_log": "postgres"}})
    with pytest.raises(LoopmlError, match=r"^storage\.prediction_log_url: the postgres prediction log needs a URL"):
        open_prediction_log(spec, Layout.for_project(tmp_path, spec))
    overridden = apply_environment(spec, {"LOOPML_PREDLOG_URL": postgres_url})
    from_env = open_prediction_log(overridden, Layout.for_project(tmp_path, spec))
    assert isinstance(from_env, PostgresPredictionLog) and from_env.count() == 0
    spec = Spec.model_validate({**RAW_SPEC, "storage": {"prediction_log": "postgres", "prediction_log_url": postgres_url}})
    open_prediction_log(spec, Layout.for_project(tmp_path, spec)).append([pred(1)])
    assert from_env.count() == 1
    with pytest.raises(ValueError, match="prediction_log"):
        Spec.model_validate({**RAW_SPEC, "storage": {"prediction_log": "sqlite"}})


# -- PostgreSQL only: the server logs there --------------------------------------------------------------


def test_the_server_logs_to_postgres_and_joins_feedback(
    trained_copy: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(trained_copy, storage={"prediction_log": "postgres"})
    monkeypatch.setenv("LOOPML_PREDLOG_URL", postgres_url)
    project = Project.load(trained_copy)
    rows = pq.read_table(trained_copy / "data" / "live.parquet").slice(0, 4).to_pylist()
    token = "t0ken"
    with BackgroundServer(build_app(project, admin_token=token)) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        assert client.post("/v1/feedback", json={"request_id": "early", "label": 1}).status_code == 202
        ids = []
        for i, row in enumerate(rows):
            payload = {
                "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
                "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
                "request_id": "early" if i == 0 else f"q{i}",
            }
            response = client.post("/v1/predict", json=payload)
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])
        assert client.post("/v1/feedback", json={"request_id": ids[1], "label": 0}).status_code == 202
        assert client.post("/v1/admin/flush", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    log = project.prediction_log()
    assert isinstance(log, PostgresPredictionLog) and log.count() == 4
    assert not (project.layout.prediction_log / "log").exists()  # nothing went to the Parquet log
    assert labels_of(log) == {"early": 1.0, "q1": 0.0, "q2": None, "q3": None}


# -- labels files and `loopml feedback` --------------------------------------------------------------------


def test_labels_files_csv_and_parquet(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text('\ufeffrequest_id,label,note\nr1,1,x\nr2,0.0,\n"r,3",true,y\nr4,FALSE,\n')
    now = datetime(2026, 5, 1, 9, 30)
    items = read_labels_file(csv, now=now)
    assert [(f.request_id, f.label, f.ts) for f in items] == [
        ("r1", 1.0, now),
        ("r2", 0.0, now),
        ("r,3", 1.0, now),
        ("r4", 0.0, now),
    ]
    parquet = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"request_id": ["a", "b"], "label": [True, False], "ts": ["2026-01-02T03:04:05", None]}), parquet)
    items = read_labels_file(parquet, now=now)
    assert [(f.request_id, f.label, f.ts) for f in items] == [("a", 1.0, datetime(2026, 1, 2, 3, 4, 5)), ("b", 0.0, now)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("labels.csv", "request_id,label\nr1,1\nr2,maybe\n", r"labels\.csv row 2: label 'maybe' is not a finite number"),
        ("labels.csv", "request_id,label\nr1,1\n,0\n", r"labels\.csv row 2: request_id is empty"),
        ("labels.csv", "request_id,label\nr1,\n", r"labels\.csv row 1: label None is not a finite number"),
        ("labels.csv", "request_id,label\nr1,nan\n", r"labels\.csv row 1: label 'nan' is not a finite number"),
        ("labels.csv", "id,label\nr1,1\n", r"labels\.csv: missing column\(s\) request_id \(found: id, label\)"),
        ("labels.csv", "request_id,label,ts\nr1,1,yesterday\n", r"labels\.csv row 1: ts 'yesterday' is not an ISO date or time"),
        ("labels.csv", "request_id,label\nr1,1,extra\n", r"labels\.csv: cannot read the labels file \(CSV parse error"),
        ("labels.json", "{}", r"labels\.json: a labels file must be \.csv or \.parquet"),
        ("labels.parquet", "not parquet", r"labels\.parquet: cannot read the labels file"),
    ],
)
def test_bad_labels_files_are_one_line_naming_file_and_row(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LoopmlError, match=message) as err:
        read_labels_file(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


runner = CliRunner()


def test_feedback_command_adds_labels_and_reports_pending(tmp_path: Path) -> None:
    (tmp_path / "loopml.yaml").write_text(json.dumps(RAW_SPEC))
    spec = Spec.model_validate(RAW_SPEC)
    log = open_prediction_log(spec, Layout.for_project(tmp_path, spec))
    log.append([pred(1), pred(2)])
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr1,1\nr2,0\nr2,1\nr9,1\n")
    result = runner.invoke(app, ["feedback", "--file", str(labels), "--project", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"file": str(labels), "labels": 4, "request_ids": 3, "matched": 2, "pending": 1}
    assert labels_of(log) == {"r1": 1.0, "r2": 1.0}  # the file's last row of a request wins
    assert [f.request_id for f in log.unmatched_feedback()] == ["r9"]
    log.append([pred(9)])  # its prediction shows up later: joined
    assert labels_of(log)["r9"] == 1.0
    result = runner.invoke(app, ["feedback", "--file", str(labels), "--project", str(tmp_path)])
    assert result.exit_code == 0 and "4 label(s) added" in result.stdout and "0 pending" in result.stdout

    labels.write_text("request_id,label\nr1,1\nr2,oops\n")
    result = runner.invoke(app, ["feedback", "--file", str(labels), "--project", str(tmp_path)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: {labels} row 2: label 'oops' is not a finite number (or true/false)"
    with log.connect() as con:
        assert con.execute("SELECT count(*) FROM feedback").fetchone() == (8,)  # nothing of the bad file was stored
    result = runner.invoke(app, ["feedback", "--file", str(tmp_path / "missing.csv"), "--project", str(tmp_path)])
    assert result.exit_code == 1 and "missing.csv: no such labels file" in result.stderr


# -- Parquet only: typed feature columns, which the drift report reads instead of parsing JSON ---------------


def typed_parts(folder: Path) -> list[Path]:
    return sorted((folder / "log").glob("typed-*/part-*.parquet"))


def untyped_parts(folder: Path) -> list[Path]:
    return sorted((folder / "log").glob("part-*.parquet"))


def write_legacy_part(folder: Path, rows: list[LoggedPrediction], name: str) -> None:
    """A part as the log wrote it before typed columns: JSON text only."""
    (folder / "log").mkdir(parents=True, exist_ok=True)
    pq.write_table(log_table(rows), folder / "log" / f"part-{name}.parquet")


def test_each_feature_is_also_stored_as_a_typed_column(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    features = [
        {"amount": 2.5, "count": 3, "country": None, "gone": None},
        {"amount": math.nan, "count": 4, "country": "FR", "gone": None},
    ]
    log.append([pred(i, features=f) for i, f in enumerate(features)])
    (part,) = typed_parts(folder)
    assert untyped_parts(folder) == []
    table = pq.read_table(part)
    # "gone" has only missing values: no column (a reader gets NULL, as from the JSON)
    assert table.column_names == [*LOG_SCHEMA.names, "_typed", "n:amount", "n:count", "s:country"]
    assert table.column("n:amount").to_pylist() == [2.5, None]  # non-finite: missing, as in the JSON
    assert table.column("n:count").type == pa.float64() and table.column("n:count").to_pylist() == [3.0, 4.0]
    assert table.column("s:country").to_pylist() == [None, "FR"] and table.column("_typed").to_pylist() == [True, True]
    # the views keep the contract's columns, the JSON text as before
    got = log.read()
    assert got.schema == LABELLED_SCHEMA
    assert json.loads(got.column("features")[1].as_py()) == {"amount": None, "count": 4, "country": "FR", "gone": None}
    with log.connect() as con:
        assert [r[0] for r in con.execute("DESCRIBE predictions").fetchall()] == LOG_SCHEMA.names


@pytest.mark.parametrize(
    "features",
    [
        [{"x": 1.0}, {"x": "one"}],  # numbers and strings in one feature
        [{"x": True}, {"x": 1.0}],  # a boolean
        [{"x": [1, 2]}, {"x": 1.0}],  # a list
        [{"x": 1.0, "X": 2.0}, {"x": 1.0, "X": 2.0}],  # two names a DuckDB column cannot tell apart
        [{"x": 10**400}, {"x": 1.0}],  # an integer beyond any double
    ],
)
def test_a_batch_that_cannot_be_typed_is_logged_as_json_only(tmp_path: Path, features: list[dict[str, Any]]) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    log.append([pred(i, features=f) for i, f in enumerate(features)])
    assert typed_parts(folder) == []
    (part,) = untyped_parts(folder)
    assert pq.read_schema(part).names == LOG_SCHEMA.names
    assert [json.loads(r["features"]) for r in log.read().to_pylist()] == features


def test_parts_of_every_layout_read_as_one_log(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    write_legacy_part(folder, [pred(0), pred(1)], "00000000T000000000000-0ld0ld00")  # written before typed columns
    log = PredictionLog(folder)
    log.append([pred(i) for i in range(2, 4)])  # amount, hour
    log.append([pred(i, features={"amount": 1.0, "country": "FR"}) for i in range(4, 6)])  # another set of columns
    log.append([pred(i) for i in range(6, 8)])  # the first set again: the same folder
    log.append([pred(8, features={"amount": "n/a"}), pred(9)])  # mixed types: JSON only
    assert len(typed_parts(folder)) == 3 and len({p.parent for p in typed_parts(folder)}) == 2
    assert len(untyped_parts(folder)) == 2
    log.add_feedback([Feedback("r0", 1.0, T0), Feedback("r5", 0.0, T0)])
    assert log.count() == 10
    got = log.read()
    assert got.schema == LABELLED_SCHEMA and got.column("request_id").to_pylist() == [f"r{i}" for i in range(10)]
    assert labels_of(log) == {f"r{i}": {0: 1.0, 5: 0.0}.get(i) for i in range(10)}
    # a temporary part left in a typed folder by a writer that died is ignored, then swept
    stale = typed_parts(folder)[0].parent / ".part-20200101T000000000000-dead.parquet.tmp"
    stale.write_bytes(b"PAR1 half a file")
    assert log.count() == 10
    os.utime(stale, (0, 0))
    PredictionLog(folder).append([pred(10)])
    assert not stale.exists() and log.count() == 11


def test_writers_in_parallel_create_typed_folders_safely(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"

    def write(w: int) -> None:
        log = PredictionLog(folder)  # one per writer, as separate processes would have
        for b in range(5):
            log.append([pred(100 * w + 10 * b + i, features={"amount": 1.0, f"only{b % 2}": "x"}) for i in range(10)])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    log = PredictionLog(folder)
    assert log.count() == 200 and len({p.parent for p in typed_parts(folder)}) == 2
    assert len(set(log.read().column("request_id").to_pylist())) == 200


def live_rows() -> list[list[LoggedPrediction]]:
    """Batches covering every way a feature can be logged; times out of write order on purpose."""
    at = [T0 + timedelta(minutes=m) for m in (5, 1, 7, 3, 2, 9, 8, 0, 6, 4, 11, 10)]
    return [
        # typed: numbers (a NaN, an integer), strings (a missing one), a missing feature
        [
            pred(0, ts=at[0], features={"amount": 1.5, "country": "FR"}),
            pred(1, ts=at[1], features={"amount": math.nan, "country": None}),
            pred(2, ts=at[2], features={"amount": 7, "country": "DE", "other": 1.0}),
        ],
        # typed, but of the other type: strings for the numeric feature, numbers for the categorical one
        [
            pred(3, ts=at[3], features={"amount": "12.5", "country": 3}),
            pred(4, ts=at[4], features={"amount": "abc", "country": 2.5}),
        ],
        # untyped (a boolean, mixed types)
        [
            pred(5, ts=at[5], features={"amount": True, "country": "FR"}),
            pred(6, ts=at[6], features={"amount": 2.0, "country": 1}),
            pred(7, ts=at[7], features={"amount": 3.0, "country": "IT"}),
        ],
        # typed, categorical feature missing everywhere
        [pred(8, ts=at[8], features={"amount": 4.0}), pred(9, ts=at[9], features={"amount": -1.0})],
        [pred(10, ts=at[10], version=2, features={"amount": 5.0, "country": "FR"})],
        [pred(11, ts=at[11], features={"amount": 6.0, "country": "ES"})],
    ]


def test_drift_reads_typed_columns_exactly_as_it_parses_the_json(postgres_url: str, tmp_path: Path) -> None:
    batches = live_rows()
    labels = [Feedback("r0", 1.0, T0), Feedback("r4", 0.0, T0), Feedback("r4", 1.0, T0 + timedelta(hours=1))]
    typed = PredictionLog(tmp_path / "typed")
    legacy = tmp_path / "legacy"  # the same rows, JSON text only
    postgres = PostgresPredictionLog(postgres_url)
    for i, batch in enumerate(batches):
        typed.append(batch)
        postgres.append(batch)
        write_legacy_part(legacy, batch, f"{i:08d}")
    for log in (typed, postgres, PredictionLog(legacy)):
        log.add_feedback(labels)
    assert len(typed_parts(tmp_path / "typed")) == 5 and len(untyped_parts(tmp_path / "typed")) == 1

    def live(log: PredictionLogBackend, text: bool, version: int | None = 1) -> LiveData:
        with log.connect(model_version=version) as con:
            return load_live(con, ["amount", "other"], ["country"], logged_schema(con) if text else None)

    for text in (False, True):  # numbers parsed straight, or as text with the errors counted
        got = live(typed, text)
        assert got.rows == 11 and list(got.ts_us) == sorted(got.ts_us)  # oldest first
        for other in (PredictionLog(legacy), postgres):
            expected = live(other, text)
            assert list(got.ts_us) == list(expected.ts_us)
            for name in ("score", "label", "latency_ms"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
            for name in ("amount", "other"):
                np.testing.assert_array_equal(got.numeric[name], expected.numeric[name])
            assert got.categorical["country"].to_pylist() == expected.categorical["country"].to_pylist()
            assert got.type_errors == expected.type_errors
    # oldest first: r7 (0 min), r1, r4, r3, r9, r0, r8, r2, r6, r5, r11 (10 min)
    got = live(typed, text=True)
    np.testing.assert_array_equal(got.numeric["amount"], [3.0, np.nan, np.nan, 12.5, -1.0, 1.5, 4.0, 7.0, 2.0, np.nan, 6.0])
    assert got.categorical["country"].to_pylist() == ["IT", None, "2.5", "3", None, "FR", None, "DE", "1", "FR", "ES"]
    np.testing.assert_array_equal(got.numeric["other"], [np.nan] * 7 + [1.0] + [np.nan] * 3)
    np.testing.assert_array_equal(got.label, [np.nan, np.nan, 1.0, np.nan, np.nan, 1.0] + [np.nan] * 5)
    assert got.type_errors == {"amount": 2}  # "abc" and true
    assert live(typed, text=False, version=None).rows == 12


def test_the_typed_read_never_parses_the_json(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    log.append([pred(i, features={"amount": float(i), "country": "FR"}) for i in range(3)])
    (part,) = typed_parts(folder)
    table = pq.read_table(part)
    broken = table.set_column(table.schema.get_field_index("features"), "features", pa.array(["{not json"] * 3))
    pq.write_table(broken, part)  # the typed columns alone must be read
    with log.connect() as con:
        got = load_live(con, ["amount"], ["country"])
    assert list(got.numeric["amount"]) == [0.0, 1.0, 2.0] and got.categorical["country"].to_pylist() == ["FR"] * 3
