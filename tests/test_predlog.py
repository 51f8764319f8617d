"""The prediction log contract, on both backends: rows, late labels, windows, crash safety, labels files.

One suite, parametrised over the Parquet+DuckDB log and the PostgreSQL log (a real
server started for the session, tests/postgres_server.py, one empty database per test).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
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
from loopml.monitor.drift import LiveData, current_values, load_live, logged_schema
from loopml.monitor.predlog import (
    LABELLED_SCHEMA,
    LOG_SCHEMA,
    Feedback,
    LoggedPrediction,
    PredictionLog,
    PredictionLogBackend,
    log_table,
    open_prediction_log,
    read_labels_file,
)
from loopml.monitor.predlog_postgres import PostgresPredictionLog
from loopml.project import Project
from loopml.serve.runner import BackgroundServer, build_app, free_port
from loopml.spec.model import Spec
from specs import configure, minimal_spec_dict

BACKENDS = ("duckdb", "postgres")
T0 = datetime(2026, 3, 1, 12, 0, 0)


def make_log(backend: str, request: pytest.FixtureRequest, tmp: Path) -> PredictionLogBackend:
    if backend == "postgres":
        return PostgresPredictionLog(request.getfixturevalue("postgres_url"))
    return PredictionLog(tmp / "state" / "predictions")


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionLogBackend]:
    backend = make_log(request.param, request, tmp_path)
    yield backend
    backend.close()


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


# -- the contract ------------------------------------------------------------------------------------------


def test_an_empty_log_has_the_views_and_no_rows(log: PredictionLogBackend) -> None:
    assert log.count() == 0
    table = log.read()
    assert table.num_rows == 0 and table.schema == LABELLED_SCHEMA
    assert log.unmatched_feedback() == [] and log.known_request_ids(["r1"]) == set()
    with log.connect() as con:
        columns = [r[0] for r in con.execute("DESCRIBE labelled").fetchall()]
        assert columns == LABELLED_SCHEMA.names
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
        assert [r[0] for r in con.execute("DESCRIBE feedback").fetchall()] == ["request_id", "label", "ts"]


def test_predictions_round_trip_exactly(log: PredictionLogBackend) -> None:
    odd = ['a,b "quoted"\nnewline', "NULL", "NaN", "é🙂", ""]  # ids a CSV or NULL parser could mangle
    rows = [pred(i, request_id=rid) for i, rid in enumerate(odd)]
    rows.append(pred(9, features={"amount": math.nan, "hour": math.inf}, score=0.123456789012345, latency_ms=0.001))
    rows.append(pred(10, ts=T0 + timedelta(microseconds=123457), entities={"customer_id": "C-1", "terminal_id": 7}))
    log.append(rows)
    log.append([])  # an empty flush is a no-op
    assert log.count() == len(rows)
    got = {r["request_id"]: r for r in log.read().to_pylist()}
    assert set(got) == {r.request_id for r in rows}
    for r in rows:
        row = got[r.request_id]
        assert row["ts"] == r.ts and row["score"] == r.score and row["model_version"] == r.model_version
        assert row["variant"] == "champion" and row["latency_ms"] == r.latency_ms
        assert json.loads(row["entities"]) == r.entities
        assert row["label"] is None and row["label_ts"] is None
    assert json.loads(got["r9"]["features"]) == {"amount": None, "hour": None}  # non-finite values are logged as missing
    assert [r["ts"] for r in log.read().to_pylist()] == sorted(r.ts for r in rows)  # oldest first


def test_labels_join_by_request_id_and_the_latest_label_wins(log: PredictionLogBackend) -> None:
    log.append([pred(i) for i in range(4)])
    log.add_feedback([Feedback("r0", 1.0, T0 + timedelta(hours=1)), Feedback("r1", 0.0, T0 + timedelta(hours=1))])
    log.add_feedback([Feedback("r0", 0.0, T0 + timedelta(hours=2))])  # corrected later: wins
    log.add_feedback([Feedback("r1", 1.0, T0)])  # written later but received earlier: loses
    log.add_feedback([Feedback("r2", 0.0, T0 + timedelta(hours=3)), Feedback("r2", 1.0, T0 + timedelta(hours=3))])
    rows = {r["request_id"]: r for r in log.read().to_pylist()}
    assert (rows["r0"]["label"], rows["r0"]["label_ts"]) == (0.0, T0 + timedelta(hours=2))
    assert (rows["r1"]["label"], rows["r1"]["label_ts"]) == (0.0, T0 + timedelta(hours=1))
    assert rows["r2"]["label"] == 1.0  # same time: the one written last
    assert rows["r3"]["label"] is None
    with log.connect() as con:
        assert con.execute("SELECT count(*), count(label) FROM labelled").fetchone() == (4, 3)
        assert con.execute("SELECT count(*) FROM feedback").fetchone() == (6,)


def test_a_label_before_its_prediction_waits_and_joins_when_it_arrives(log: PredictionLogBackend) -> None:
    log.add_feedback([Feedback("late", 1.0, datetime.now() - timedelta(days=3)), Feedback("never", 0.0, datetime.now())])
    log.append([pred(1)])
    pending = log.unmatched_feedback()
    assert [f.request_id for f in pending] == ["late", "never"]
    assert [f.request_id for f in log.unmatched_feedback(older_than=timedelta(days=1))] == ["late"]
    assert log.known_request_ids(["late", "r1", "never", "r1"]) == {"r1"}
    log.append([pred(2, request_id="late", ts=datetime.now())])  # the prediction arrives days after its label
    assert labels_of(log) == {"r1": None, "late": 1.0}
    assert [f.request_id for f in log.unmatched_feedback()] == ["never"]
    assert log.unmatched_feedback(older_than=timedelta(hours=1)) == []


def test_windows_and_model_versions_select_rows(log: PredictionLogBackend) -> None:
    log.append([pred(i, version=1 + i % 2) for i in range(10)])
    log.add_feedback([Feedback(f"r{i}", float(i % 2), T0 + timedelta(days=1)) for i in range(10)])
    window = log.read(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=7))
    assert window.column("request_id").to_pylist() == ["r3", "r4", "r5", "r6"]  # since inclusive, until exclusive
    v2 = log.read(model_version=2)
    assert v2.column("request_id").to_pylist() == ["r1", "r3", "r5", "r7", "r9"] and set(v2.column("label").to_pylist()) == {1.0}
    with log.connect(since=T0 + timedelta(minutes=8)) as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchone() == (2,)
        assert sorted(r[0] for r in con.execute("SELECT request_id FROM feedback").fetchall()) == ["r8", "r9"]
        assert con.execute("SELECT count(label) FROM labelled").fetchone() == (2,)
    from datetime import UTC

    aware = (T0 + timedelta(minutes=8)).astimezone(UTC)  # an aware bound means the same instant in local time
    assert log.read(since=aware).num_rows == 2


def test_drift_reads_the_log_through_connect(log: PredictionLogBackend) -> None:
    log.append([pred(i, version=3) for i in range(5)] + [pred(9, version=4)])
    features, scores = current_values(log, 3)
    assert list(scores) == [0.0, 0.01, 0.02, 0.03, 0.04]
    assert list(features["amount"]) == [0.0, 1.0, 2.0, 3.0, 4.0]


# -- crash safety --------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import itertools, sys
    from datetime import datetime
    from pathlib import Path
    from loopml.monitor.predlog import Feedback, LoggedPrediction, PredictionLog
    from loopml.monitor.predlog_postgres import PostgresPredictionLog

    target = sys.argv[1]
    log = PostgresPredictionLog(target) if target.startswith("postgresql://") else PredictionLog(Path(target))
    for batch in itertools.count():
        now = datetime.now()
        features = {f"f{k}": float(k) for k in range(30)}
        log.append([LoggedPrediction(f"b{batch}-{i}", now, {"c": i}, features, 0.5, 1, "champion", 1.0) for i in range(300)])
        log.add_feedback([Feedback(f"b{batch}-0", 1.0, now)])
        print(batch, flush=True)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_writer_killed_mid_run_loses_nothing_flushed(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    log = make_log(backend, request, tmp_path)
    target = log.url if isinstance(log, PostgresPredictionLog) else str(tmp_path / "state" / "predictions")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, target], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    flushed = -1
    try:
        for line in proc.stdout:
            flushed = int(line)
            if flushed >= 6:
                break
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing the next batch
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.stderr is not None
        errors = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and flushed >= 6, errors
    table = log.read()  # readable after the crash
    ids = set(table.column("request_id").to_pylist())
    assert all(f"b{b}-{i}" in ids for b in range(flushed + 1) for i in range(300))  # every acknowledged batch
    assert table.num_rows % 300 == 0  # and never part of a batch
    labelled = {r["request_id"] for r in table.to_pylist() if r["label"] == 1.0}
    assert {f"b{b}-0" for b in range(flushed + 1)} <= labelled
    log.append([pred(1)])  # and writable
    assert log.count() == table.num_rows + 1


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


def test_an_unwritable_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "predictions"
    blocker.write_text("a file where the log folder should be")
    with pytest.raises(LoopmlError, match=r"^prediction log .*predictions/log: cannot write a part"):
        PredictionLog(blocker).append([pred(1)])


# -- choosing the backend ----------------------------------------------------------------------------------

RAW_SPEC = minimal_spec_dict()


def test_open_prediction_log_follows_the_spec_and_the_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOPML_PREDLOG_URL", raising=False)
    spec = Spec.model_validate(RAW_SPEC)
    default = open_prediction_log(spec, Layout.for_project(tmp_path, spec))
    assert isinstance(default, PredictionLog) and default.folder == tmp_path.resolve() / ".loopml" / "predictions"
    spec = Spec.model_validate({**RAW_SPEC, "storage": {"prediction_log": "postgres"}})
    with pytest.raises(LoopmlError, match=r"^storage\.prediction_log_url: the postgres prediction log needs a URL"):
        open_prediction_log(spec, Layout.for_project(tmp_path, spec))
    monkeypatch.setenv("LOOPML_PREDLOG_URL", postgres_url)
    from_env = open_prediction_log(spec, Layout.for_project(tmp_path, spec))
    assert isinstance(from_env, PostgresPredictionLog) and from_env.count() == 0
    monkeypatch.delenv("LOOPML_PREDLOG_URL")
    spec = Spec.model_validate({**RAW_SPEC, "storage": {"prediction_log": "postgres", "prediction_log_url": postgres_url}})
    open_prediction_log(spec, Layout.for_project(tmp_path, spec)).append([pred(1)])
    assert from_env.count() == 1
    with pytest.raises(ValueError, match="prediction_log"):
        Spec.model_validate({**RAW_SPEC, "storage": {"prediction_log": "sqlite"}})


def test_postgres_unreachable_is_one_line_without_the_password() -> None:
    log = PostgresPredictionLog(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")
    with pytest.raises(LoopmlError, match=r"^prediction log postgresql://u:\*\*\*@127\.0\.0\.1:\d+/x: cannot connect") as err:
        log.append([pred(1)])
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


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


# -- typed feature columns: the drift report reads them instead of parsing JSON ----------------------------


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


def test_drift_reads_typed_columns_exactly_as_it_parses_the_json(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    batches = live_rows()
    labels = [Feedback("r0", 1.0, T0), Feedback("r4", 0.0, T0), Feedback("r4", 1.0, T0 + timedelta(hours=1))]
    typed = PredictionLog(tmp_path / "typed")
    legacy = tmp_path / "legacy"  # the same rows, JSON text only
    postgres = make_log("postgres", request, tmp_path)
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
