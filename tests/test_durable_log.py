"""No answered prediction is lost: the prediction log's journal (``loopml.predlog.journal``) and the logger around it.

The end-to-end test kills ``loopml serve`` (one process, then two workers) with
SIGKILL in the middle of a burst of predictions and labels, and checks that
every request answered 200 (or 202) is in the log exactly once after a restart
(or when a reader opens the log). The unit tests cover the line format, torn
and damaged segments, liveness by ``flock``, the fsync policies, a full queue,
a log that refuses writes, a failed journal append and
``serving.log_flush_rows``. What every backend must do for a replay
(``unlogged``, a replay after a crash between the log write and the delete)
is in the contract suite, ``tests/test_contract_predlog.py``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopml.errors import LoopmlError
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.journal import SUFFIX, Journal
from loopml.predlog.lines import decode, encode
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.records import Feedback, LoggedPrediction
from loopml.predlog.tables import log_table, typed_feature_columns
from loopml.predlog.writer import AsyncLogger
from loopml.project import Project
from loopml.server import free_port
from loopml.spec.model import Serving
from served_fraud import body, live_rows

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456)
QUIET = {"flush_seconds": 3600.0, "flush_rows": 10**6, "compact_seconds": 0.0, "recover_seconds": 3600.0}


def pred(i: int, **changes: Any) -> LoggedPrediction:
    fields: dict[str, Any] = {
        "request_id": f"r{i}",
        "ts": T0 + timedelta(seconds=i),
        "entities": {"customer_id": i},
        "features": {"amount": float(i), "country": "FR"},
        "score": i / 100,
        "model_version": 1,
        "variant": "champion",
        "latency_ms": 0.5,
    }
    return LoggedPrediction(**{**fields, **changes})


def label(i: int, value: float = 1.0) -> Feedback:
    return Feedback(f"r{i}", value, T0 + timedelta(seconds=i, microseconds=7))


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def counts(log: PredictionLogBackend) -> tuple[int, int]:
    with log.connect() as con:
        predictions = con.execute("SELECT count(*) FROM predictions").fetchone()
        labels = con.execute("SELECT count(*) FROM feedback").fetchone()
    assert predictions is not None and labels is not None
    return int(predictions[0]), int(labels[0])


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the line format ---------------------------------------------------------------------------------------


def test_lines_read_back_as_the_records_the_log_would_have_stored() -> None:
    records: list[LoggedPrediction | Feedback] = [
        pred(1),
        pred(2, ts=datetime(2026, 3, 1, 12, 0, 0), features={"amount": 2.5, "country": None, "n": 3, "flag": True}),
        pred(3, entities={"customer_id": 2**70, "name": "\ud800 lone"}, features={"tiny": 1e-310, "big": 1.7976931348623157e308}),
        label(1),
        label(2, 0.25),
    ]
    data = encode(records)
    lines = data.split(b"\n")
    assert len(lines) == len(records) + 1 and lines[-1] == b""
    assert repr([decode(line) for line in lines[:-1]]) == repr(records)  # every field, to the microsecond, and its type
    non_finite = [pred(4, features={"nan": float("nan"), "inf": float("inf"), "neg": float("-inf"), "x": 1.0}), pred(5)]
    back = [decode(line) for line in encode(non_finite).splitlines()]
    assert back[0] == pred(4, features={"nan": None, "inf": None, "neg": None, "x": 1.0})  # as the log's JSON has them
    assert log_table(back).equals(log_table(non_finite))  # logged the same ...
    typed, typed_back = typed_feature_columns(non_finite), typed_feature_columns(back)  # type: ignore[arg-type]
    assert all(typed[name].equals(column) for name, column in typed_back.items())  # ... and read the same:
    assert all(typed[name].null_count == 2 for name in typed.keys() - typed_back.keys())  # NULL either way
    for bad in (b"", b"[]", b'["p", 1]', b'["x", "r1", 1.0, "2026-03-01T12:00:00"]', b'["f", "r1", "one", "2026"]', b"{"):
        with pytest.raises(ValueError):
            decode(bad)


def test_a_torn_last_line_is_ignored_and_a_damaged_segment_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    (folder / f"a{SUFFIX}").write_bytes(encode([pred(1), pred(2), label(1)]) + encode([pred(3)])[:-9])  # killed mid-write
    (folder / f"b{SUFFIX}").write_bytes(encode([pred(4)]) + b"\x00\x00garbage\n" + encode([pred(5)]))
    log = PredictionLog(tmp_path / "predictions")
    with caplog.at_level(logging.WARNING, logger="loopml.predlog.journal"):
        assert Journal(folder).recover(log) == 5
    assert {r["request_id"] for r in log.read().to_pylist()} == {"r1", "r2", "r4", "r5"}
    assert counts(log) == (4, 1)
    assert sorted(p.name for p in folder.iterdir()) == [f"b{SUFFIX}.damaged"]  # never silently dropped
    assert "1 unreadable line(s) in b.seg" in caplog.text
    assert Journal(folder).recover(log) == 0  # set aside: not replayed again


# -- liveness --------------------------------------------------------------------------------------------------


_CHILD = """
import sys, time
from pathlib import Path
from loopml.predlog.journal import Journal
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.writer import AsyncLogger
from test_durable_log import QUIET, pred

logger = AsyncLogger(PredictionLog(Path(sys.argv[1])), journal=Journal(Path(sys.argv[2])), **QUIET)
logger.start()
logger.submit_many([pred(100 + i) for i in range(20)])
print("journaled", flush=True)
time.sleep(600)
"""


def test_live_loggers_never_replay_each_others_segments(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    folder = tmp_path / "journal"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(log.folder), str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "journaled\n"
        mine = AsyncLogger(log, journal=Journal(folder), **QUIET)
        mine.start()
        mine.submit_many([pred(i) for i in range(5)])
        assert Journal(folder).recover(log) == 0  # both writers are alive: their segments are locked
        assert len(segments(folder)) == 2 and log.count() == 0
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert Journal(folder).recover(log) == 20  # the dead one's, not mine
        assert len(segments(folder)) == 1 and mine.pending == 5
        mine.close()
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert log.count() == 25 and segments(folder) == []


# -- the logger -----------------------------------------------------------------------------------------------


def journal_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every fsync of a journal segment from now on (the file's name)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(SUFFIX):
            synced.append(target)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.parametrize(("policy", "on_submit", "on_flush"), [("off", 0, 0), ("interval", 0, 1), ("always", 3, 0)])
def test_fsync_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Any, on_submit: int, on_flush: int) -> None:
    assert Serving.model_validate({"log_fsync": policy}).log_fsync == policy
    log = PredictionLog(tmp_path / "predictions")
    logger = AsyncLogger(log, journal=Journal(tmp_path / "journal", fsync=policy), **QUIET)
    logger.start()
    synced = journal_fsyncs(monkeypatch)
    for g in range(3):
        logger.submit_many([pred(10 * g + k) for k in range(4)])
    assert len(synced) == on_submit
    assert logger.flush() == 12 and len(synced) == on_submit + on_flush
    logger.close()
    assert log.count() == 12 and segments(tmp_path / "journal") == []


def test_an_unknown_fsync_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="log_fsync"):
        Serving.model_validate({"log_fsync": "sometimes"})


def test_a_full_queue_keeps_records_in_the_journal_and_drops_nothing(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    logger = AsyncLogger(log, max_queue=10, journal=Journal(tmp_path / "journal"), **QUIET)
    logger.start()
    for g in range(10):
        assert logger.submit_many([pred(5 * g + k) for k in range(4)] + [label(5 * g)])
    assert logger.pending == 50 and logger.dropped == 0
    assert logger.flush() == 50  # read back from the segment
    logger.close()
    assert counts(log) == (40, 10) and logger.dropped == 0


def test_without_a_journal_a_full_queue_drops_and_counts_or_hands_over(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    logger = AsyncLogger(log, max_queue=10, **QUIET)
    logger.start()
    assert logger.submit_many([pred(i) for i in range(8)])
    assert not logger.submit_many([pred(i) for i in range(8, 12)]) and logger.dropped == 4
    handed: list[Feedback] = []
    assert not logger.submit_many([label(1), label(2), label(3)], fallback=handed.extend)
    assert len(handed) == 3 and logger.dropped == 4  # the caller kept them: not lost, not counted
    logger.close()
    assert log.count() == 8


def test_log_flush_rows_wakes_the_flush(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    logger = AsyncLogger(log, journal=Journal(tmp_path / "journal"), **{**QUIET, "flush_rows": 20})
    logger.start()
    logger.submit_many([pred(i) for i in range(15)])
    logger.submit_many([pred(i) for i in range(15, 25)])
    wait_for(lambda: log.count() == 25, "the flush that 20 waiting records trigger (flush_seconds is an hour)")
    logger.close()


class Refusing:
    """A log whose writes fail while ``refuse`` names them (``append``, ``add_feedback``)."""

    def __init__(self, log: PredictionLog) -> None:
        self.inner = log
        self.refuse: set[str] = set()

    def append(self, rows: Sequence[LoggedPrediction]) -> None:
        if "append" in self.refuse and rows:
            raise LoopmlError("the disk is full")
        self.inner.append(rows)

    def add_feedback(self, items: Sequence[Feedback]) -> None:
        if "add_feedback" in self.refuse and items:
            raise LoopmlError("the disk is full")
        self.inner.add_feedback(items)

    def unlogged(
        self, rows: Sequence[LoggedPrediction], items: Sequence[Feedback]
    ) -> tuple[list[LoggedPrediction], list[Feedback]]:
        return self.inner.unlogged(rows, items)


def test_a_log_that_refuses_writes_keeps_the_segments_and_retries_them_in_order(tmp_path: Path) -> None:
    inner = PredictionLog(tmp_path / "predictions")
    log = Refusing(inner)
    errors: list[Exception] = []
    folder = tmp_path / "journal"
    logger = AsyncLogger(log, journal=Journal(folder), on_error=errors.append, **QUIET)  # type: ignore[arg-type]
    logger.start()
    logger.submit_many([pred(1), pred(2), label(1)])
    log.refuse = {"add_feedback"}  # the predictions are written, the label is refused
    assert logger.flush() == 0 and len(errors) == 1 and logger.dropped == 0
    logger.submit_many([pred(3), label(3)])
    log.refuse = {"append", "add_feedback"}
    assert logger.flush() == 0 and len(segments(folder)) == 2  # the open one grows: nothing is rotated behind a refusal
    logger.submit_many([pred(4)])
    log.refuse = set()
    assert logger.flush() == 1 + 3  # the refused segment (its label only: its predictions are there), then the rest
    logger.close()
    assert counts(inner) == (4, 2) and segments(folder) == [] and logger.dropped == 0


def test_a_failed_journal_append_keeps_the_group_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = PredictionLog(tmp_path / "predictions")
    folder = tmp_path / "journal"
    errors: list[Exception] = []
    logger = AsyncLogger(log, journal=Journal(folder), on_error=errors.append, **QUIET)
    logger.start()
    logger.submit_many([pred(1)])
    [segment] = segments(folder)
    size = segment.stat().st_size
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: Any) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:10])  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... and no room for the rest

    monkeypatch.setattr(os, "write", full_disk)
    assert logger.submit_many([pred(2), pred(3)])
    monkeypatch.undo()
    assert segment.stat().st_size == size  # cut back: no torn group left behind
    assert logger.journal_errors == 1 and len(errors) == 1
    logger.submit_many([pred(4)])  # no segment until the flush makes one: kept in memory
    assert logger.flush() == 4 and len(segments(folder)) == 1
    logger.submit_many([pred(5)])
    logger.close()
    assert log.count() == 5 and segments(folder) == [] and logger.dropped == 0


def test_project_readers_replay_what_a_dead_server_left(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    journal = project.prediction_journal()
    assert journal.folder == project.layout.state / "predictions-journal" and journal.fsync == "interval"
    before = project.prediction_log().count()
    segment = journal.create()
    segment.append(encode([pred(1), pred(2), label(1)]))
    segment.release()  # its process died
    assert project.prediction_log().count() == before + 2 and segments(journal.folder) == []


# -- SIGKILL in the middle of a burst --------------------------------------------------------------------------


class Burst:
    """Threads posting predictions (single and batch) and labels until the server stops answering."""

    def __init__(self, url: str, rows: list[dict[str, Any]]) -> None:
        self.url = url
        self.rows = rows
        self.answered: list[str] = []  # request ids answered 200
        self.labels: list[tuple[str, float]] = []  # labels answered 202
        self.threads = [threading.Thread(target=self._single, args=(t,)) for t in range(6)]
        self.threads.append(threading.Thread(target=self._batch))

    def __enter__(self) -> Burst:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join(timeout=60)

    def _single(self, t: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for n in range(100_000):
                rid = f"s{t}-{n}"
                try:
                    if client.post("/v1/predict", json=body(self.rows[n % len(self.rows)], request_id=rid)).status_code != 200:
                        continue
                    self.answered.append(rid)
                    if (
                        n % 2 == 0
                        and client.post("/v1/feedback", json={"request_id": rid, "label": n % 4 // 2}).status_code == 202
                    ):
                        self.labels.append((rid, float(n % 4 // 2)))
                except httpx.TransportError:
                    return

    def _batch(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for n in range(100_000):
                ids = [f"b{n}-{k}" for k in range(5)]
                instances = [body(self.rows[(5 * n + k) % len(self.rows)], request_id=rid) for k, rid in enumerate(ids)]
                try:
                    if client.post("/v1/predict/batch", json={"instances": instances}).status_code == 200:
                        self.answered.extend(ids)
                except httpx.TransportError:
                    return


def start_server(project: Path, workers: int, output: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "loopml", "serve", "--project", str(project), "--port", str(port), "--workers", str(workers)]
    with output.open("ab") as out:  # its own process group: SIGKILL reaches every worker at once, as an OOM kill of a container
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"loopml serve exited with {process.returncode}: {output.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"loopml serve did not become ready: {output.read_text()[-2000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def kill_mid_burst(project: Path, workers: int, output: Path) -> Burst:
    """Serve, burst, SIGKILL every server process once enough was answered; the answers, as the clients saw them."""
    process, url = start_server(project, workers, output)
    try:
        with Burst(url, live_rows(project, 500)) as burst:
            wait_for(lambda: len(burst.answered) >= 1200 and len(burst.labels) >= 300, "answers")
            os.killpg(process.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return burst


def assert_all_logged(log: PredictionLogBackend, burst: Burst) -> None:
    answered = set(burst.answered)
    with log.connect() as con:
        rows = dict(con.execute("SELECT request_id, count(*) FROM predictions GROUP BY request_id").fetchall())
        labels = con.execute("SELECT request_id, label, count(*) FROM feedback GROUP BY ALL").fetchall()
    missing = answered - set(rows)
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions are not in the log"
    assert {rid: rows[rid] for rid in answered} == dict.fromkeys(answered, 1)
    found = {(rid, value): n for rid, value, n in labels}
    assert {key: found.get(key, 0) for key in burst.labels} == dict.fromkeys(burst.labels, 1)


def with_slow_flushes(project: Path) -> None:
    """Only the one-second timer flushes (so that up to a second of answers waits in memory when the server dies)."""
    yaml = project / "loopml.yaml"
    yaml.write_text(yaml.read_text().replace("\nserving:\n", "\nserving:\n  log_flush_rows: 1000000\n", 1))


def test_sigkill_mid_burst_loses_no_answered_prediction_after_a_restart(trained_copy: Path, tmp_path: Path) -> None:
    with_slow_flushes(trained_copy)
    project = Project.load(trained_copy)
    burst = kill_mid_burst(trained_copy, 1, tmp_path / "serve.log")
    journaled = sum(p.stat().st_size for p in segments(project.layout.prediction_journal))
    process, _ = start_server(trained_copy, 1, tmp_path / "restart.log")  # replays the journal before it is ready
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert "Traceback" not in (tmp_path / "restart.log").read_text()
    assert_all_logged(PredictionLog(project.layout.prediction_log), burst)  # the log itself: no reader replayed anything
    assert segments(project.layout.prediction_journal) == []
    assert journaled > 0, "the kill found nothing waiting in the journal: the test proved nothing"


def test_sigkill_of_two_workers_loses_nothing_readers_see(trained_copy: Path, tmp_path: Path) -> None:
    with_slow_flushes(trained_copy)
    project = Project.load(trained_copy)
    journal = project.layout.prediction_journal
    burst = kill_mid_burst(trained_copy, 2, tmp_path / "serve.log")
    journaled = sum(p.stat().st_size for p in segments(journal))

    def replayed() -> bool:
        project.prediction_log()  # a reader replays what the dead workers left (neither is restarted)
        return not segments(journal)

    wait_for(replayed, "a reader to replay the dead workers' journal")
    assert_all_logged(PredictionLog(project.layout.prediction_log), burst)
    assert journaled > 0, "the kill found nothing waiting in the journal: the test proved nothing"
