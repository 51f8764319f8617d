"""The prediction-log contract: every implementation of ``PredictionLogBackend`` passes these same tests, unchanged.

The implementations are found by ``tests/contracts.py`` (every class of ``loopml`` with the
protocol's verbs): today the Parquet+DuckDB log and the PostgreSQL log (a real server started for
the session, tests/postgres_server.py, one empty database per test). A new one fails
``test_every_implementation_has_a_factory`` and every test here until it gets a factory. What only
one backend does (Parquet parts and typed columns, compaction, the server on PostgreSQL) is in
``tests/test_predlog.py`` and ``tests/test_predlog_compact.py``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from contracts import SECRET, Backend, Factory, check_factories, factory_for, ids, implementations
from loopml.errors import LoopmlError
from loopml.monitor.live_rows import current_values
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.compact import CompactStats
from loopml.predlog.journal import Journal
from loopml.predlog.lines import encode
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.postgres import PostgresPredictionLog
from loopml.predlog.records import LABELLED_SCHEMA, Feedback, LoggedPrediction
from loopml.server import free_port

T0 = datetime(2026, 3, 1, 12, 0, 0)
SUITE = "tests/test_contract_predlog.py"


# -- the implementations ------------------------------------------------------------------------------------


def parquet_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[PredictionLogBackend]:
    blocker = tmp / "blocker"
    blocker.write_text("a file where the log's folder should be")
    return Backend(
        open=partial(PredictionLog, tmp / "state" / "predictions"),
        unreachable=partial(PredictionLog, blocker / "predictions"),
        names=str(blocker),
    )


def postgres_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[PredictionLogBackend]:
    port = free_port()  # nothing listens there
    return Backend(
        open=partial(PostgresPredictionLog, request.getfixturevalue("postgres_url")),
        unreachable=partial(PostgresPredictionLog, f"postgresql://u:{SECRET}@127.0.0.1:{port}/x"),
        names=f"postgresql://u:***@127.0.0.1:{port}/x",
    )


FACTORIES: dict[type, Factory[Backend[PredictionLogBackend]]] = {
    PredictionLog: parquet_backend,
    PostgresPredictionLog: postgres_backend,
}
IMPLEMENTATIONS = implementations(PredictionLogBackend)


def test_every_implementation_has_a_factory() -> None:
    check_factories(PredictionLogBackend, FACTORIES, SUITE)


@pytest.fixture(params=IMPLEMENTATIONS, ids=ids(IMPLEMENTATIONS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[PredictionLogBackend]:
    return factory_for(FACTORIES, request.param, SUITE)(request, tmp_path)


@pytest.fixture
def log(backend: Backend[PredictionLogBackend]) -> Iterator[PredictionLogBackend]:
    handle = backend.open()
    yield handle
    handle.close()


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


def everything(log: PredictionLogBackend) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Every row of ``labelled`` and of ``feedback``, to compare a log before and after a call."""
    with log.connect() as con:
        feedback = sorted(con.execute("SELECT request_id, label, ts FROM feedback").fetchall())
    return log.read().to_pylist(), feedback


# -- the contract -------------------------------------------------------------------------------------------


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
    aware = (T0 + timedelta(minutes=8)).astimezone(UTC)  # an aware bound means the same instant in local time
    assert log.read(since=aware).num_rows == 2


def test_drift_reads_the_log_through_connect(log: PredictionLogBackend) -> None:
    log.append([pred(i, version=3) for i in range(5)] + [pred(9, version=4)])
    features, scores = current_values(log, 3)
    assert list(scores) == [0.0, 0.01, 0.02, 0.03, 0.04]
    assert list(features["amount"]) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_labels_are_any_finite_number_and_times_keep_their_microseconds(log: PredictionLogBackend) -> None:
    at = T0 + timedelta(microseconds=987_654)
    log.append([pred(1, ts=at), pred(2)])
    log.add_feedback([Feedback("r1", 3.25, at + timedelta(microseconds=1)), Feedback("r2", -1e-9, at)])  # regression labels
    rows = {r["request_id"]: r for r in log.read().to_pylist()}
    assert (rows["r1"]["ts"], rows["r1"]["label"], rows["r1"]["label_ts"]) == (at, 3.25, at + timedelta(microseconds=1))
    assert rows["r2"]["label"] == -1e-9


def test_known_request_ids_of_a_long_list(log: PredictionLogBackend) -> None:
    log.append([pred(i) for i in range(0, 30_000, 7)])
    wanted = [f"r{i}" for i in range(25_000)]  # more than one round trip's worth
    assert log.known_request_ids(wanted) == {f"r{i}" for i in range(0, 25_000, 7)}
    assert log.known_request_ids([]) == set()


def test_unlogged_names_the_records_not_held_yet_in_their_order(log: PredictionLogBackend) -> None:
    """What a journal replay still has to write: a prediction is held by (request id, time, variant), a label by
    (request id, label, time), to the microsecond."""
    at = T0.replace(microsecond=123456)
    log.append([pred(1, ts=at), pred(2)])
    log.add_feedback([Feedback("r1", 1.0, at)])
    rows = [pred(3), pred(2), pred(1, ts=at, variant="shadow"), pred(1, ts=at.replace(microsecond=123457)), pred(1, ts=at)]
    items = [Feedback("r1", 0.0, at), Feedback("r1", 1.0, at), Feedback("r1", 1.0, T0), Feedback("r2", 1.0, at)]
    assert log.unlogged(rows, items) == (rows[:1] + rows[2:4], [items[0], items[2], items[3]])
    assert log.unlogged([], []) == ([], [])
    many = [pred(i, request_id=f"m{i}") for i in range(12_000)]  # more keys than one query takes
    log.append(many[::3])
    assert log.unlogged(many, []) == ([r for i, r in enumerate(many) if i % 3], [])


def test_a_journal_replay_after_a_crash_between_the_write_and_the_delete_writes_nothing_twice(
    log: PredictionLogBackend, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal")
    rows = [pred(i) for i in range(5)]
    shadow = pred(0, variant="challenger")  # the same request id and time as r0's answer: another row
    items = [Feedback("r0", 1.0, T0), Feedback("r1", 1.0, T0), Feedback("r1", 0.0, T0)]
    segment = journal.create()
    segment.append(encode([*rows, shadow, *items]))
    log.append(rows)  # the batch reached the log (but not its shadow row, nor all its labels) ...
    log.add_feedback(items[:1])
    segment.release()  # ... and the writer died before deleting its segment
    assert journal.recover(log) == 3
    assert log.count() == 6 and len(everything(log)[1]) == 3 and not list(journal.folder.iterdir())
    assert journal.recover(log) == 0 and log.count() == 6


def test_writers_in_parallel_lose_nothing(backend: Backend[PredictionLogBackend]) -> None:
    def write(w: int) -> None:
        handle = backend.open()  # one per writer, as separate processes would have
        for b in range(5):
            handle.append([pred(100 * w + 10 * b + i) for i in range(10)])
            handle.add_feedback([Feedback(f"r{100 * w + 10 * b}", 1.0, T0)])
        handle.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log = backend.open()
    assert log.count() == 200
    assert sorted(log.read().column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(400) if i % 100 < 50)
    assert sum(label == 1.0 for label in labels_of(log).values()) == 20


def test_compact_changes_no_answer(log: PredictionLogBackend) -> None:
    for i in range(6):
        log.append([pred(i)])
        log.add_feedback([Feedback(f"r{i}", float(i % 2), T0 + timedelta(hours=i))])
    log.add_feedback([Feedback("r0", 1.0, T0 + timedelta(days=1))])  # a correction: still the latest after compaction
    before = everything(log)
    assert isinstance(log.compact(), CompactStats)
    assert everything(log) == before and log.count() == 6
    log.append([pred(9)])
    assert log.count() == 7 and labels_of(log)["r0"] == 1.0


def test_a_closed_log_reconnects_on_demand(backend: Backend[PredictionLogBackend]) -> None:
    log = backend.open()
    log.append([pred(1)])
    log.close()
    assert log.count() == 1
    log.append([pred(2)])
    log.close()
    log.close()  # closing twice is harmless
    assert backend.open().count() == 2  # another handle sees the same log


def test_an_unreachable_log_is_one_line_naming_it(backend: Backend[PredictionLogBackend]) -> None:
    """Writes fail (all of the batch or none of it); reads fail the same way, or find an empty log."""
    log = backend.unreachable()
    assert backend.names in log.where and SECRET not in log.where
    writes: dict[str, Callable[[], object]] = {
        "append": lambda: log.append([pred(1)]),
        "add_feedback": lambda: log.add_feedback([Feedback("r1", 1.0, T0)]),
    }
    for verb, call in writes.items():
        with pytest.raises(LoopmlError) as err:
            call()
        message = str(err.value)
        assert backend.names in message and SECRET not in message and "\n" not in message, (verb, message)
    reads: dict[str, Callable[[], int]] = {
        "count": log.count,
        "read": lambda: log.read().num_rows,
        "unmatched_feedback": lambda: len(log.unmatched_feedback()),
        "known_request_ids": lambda: len(log.known_request_ids(["r1"])),
        "unlogged": lambda: len(log.unlogged([pred(1)], [Feedback("r1", 1.0, T0)])[0]) - 1,
    }
    for verb, call in reads.items():
        try:
            assert call() == 0, verb
        except LoopmlError as err:
            assert backend.names in str(err) and SECRET not in str(err) and "\n" not in str(err), (verb, str(err))
    log.close()


# -- crash safety --------------------------------------------------------------------------------------------

_WRITER = """
    import itertools, pickle, sys
    from datetime import datetime
    from loopml.predlog.records import Feedback, LoggedPrediction

    log = pickle.loads(bytes.fromhex(sys.argv[1]))()
    for batch in itertools.count():
        now = datetime.now()
        features = {f"f{k}": float(k) for k in range(30)}
        log.append([LoggedPrediction(f"b{batch}-{i}", now, {"c": i}, features, 0.5, 1, "champion", 1.0) for i in range(300)])
        log.add_feedback([Feedback(f"b{batch}-0", 1.0, now)])
        print(batch, flush=True)
    """


def test_a_writer_killed_mid_run_loses_nothing_flushed(backend: Backend[PredictionLogBackend]) -> None:
    log = backend.open()
    args = [sys.executable, "-c", textwrap.dedent(_WRITER), pickle.dumps(backend.open).hex()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    logged = set(table.column("request_id").to_pylist())
    assert all(f"b{b}-{i}" in logged for b in range(flushed + 1) for i in range(300))  # every acknowledged batch
    assert table.num_rows % 300 == 0  # and never part of a batch
    labelled = {r["request_id"] for r in table.to_pylist() if r["label"] == 1.0}
    assert {f"b{b}-0" for b in range(flushed + 1)} <= labelled
    log.append([pred(1)])  # and writable
    assert log.count() == table.num_rows + 1
