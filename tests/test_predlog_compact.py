"""Compaction of the Parquet prediction log: same answers, far fewer parts, safe with readers, writers and crashes.

Every test reads through the public reader API (``count``, ``read``, ``connect``...) as the
dashboard, the drift report and the retraining triggers do; the compactor runs on real files,
with real threads and real ``flock`` locks.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pytest

import loopml.predlog.compact as compaction
from loopml.errors import LoopmlError
from loopml.predlog.compact import LOCK_NAME, RECORD_NAME, CompactStats, live_parts, read_record
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.records import Feedback, LoggedPrediction
from loopml.predlog.writer import AsyncLogger
from waiting import wait_until

T0 = datetime(2026, 3, 1, 12, 0, 0)


def pred(i: int, **changes: Any) -> LoggedPrediction:
    fields: dict[str, Any] = {
        "request_id": f"r{i}",
        "ts": T0 + timedelta(minutes=i),
        "entities": {"customer_id": i},
        "features": {"amount": float(i), "hour": 12.0},
        "score": i / 1000,
        "model_version": 1 + i % 2,
        "variant": "champion",
        "latency_ms": 1.25,
    }
    return LoggedPrediction(**{**fields, **changes})


def parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob("part-*.parquet"))


def feedback_parts(folder: Path) -> list[Path]:
    return sorted((folder / "feedback").glob("part-*.parquet"))


def snapshot(log: PredictionLog) -> dict[str, Any]:
    """Everything a reader can ask the log, in a comparable form."""
    with log.connect() as con:
        labelled = con.sql("SELECT * FROM labelled ORDER BY request_id").fetchall()
        wide = con.sql("SELECT * FROM _predictions_wide ORDER BY request_id").to_arrow_table().to_pylist()
        in_write_order = con.sql("SELECT request_id, label, ts FROM _feedback_raw ORDER BY _seq").fetchall()
    return {
        "count": log.count(),
        "read": log.read().to_pylist(),
        "window": log.read(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=40), model_version=1).to_pylist(),
        "unmatched": log.unmatched_feedback(),
        "known": log.known_request_ids([f"r{i}" for i in range(-5, 200)]),
        "labelled": labelled,
        "wide": wide,
        "feedback_in_write_order": in_write_order,
    }


def fill(log: PredictionLog) -> int:
    """Many small parts: two typed schemas, an untyped one, and labels repeated for a request at one time."""
    n = 0
    for batch in range(12):
        log.append([pred(n + k) for k in range(3)])  # typed: amount, hour
        n += 3
        log.append([pred(n + k, features={"amount": 1.5, "country": "FR"}) for k in range(2)])  # typed: another set
        n += 2
        log.append([pred(n, features={"amount": "n/a"}), pred(n + 1, features={"flag": True})])  # untyped (JSON only)
        n += 2
        when = T0 + timedelta(hours=1 + batch % 3)
        log.add_feedback([Feedback("r0", float(batch % 2), when), Feedback(f"r{n - 1}", 1.0, when)])  # r0: repeated, same times
        log.add_feedback([Feedback(f"late{batch}", 0.0, when), Feedback("r0", float((batch + 1) % 2), when)])  # pending labels
    return n


def instant_between_parts() -> datetime:
    """A local time after the name time of every part written so far and before that of every part written next."""
    first = datetime.now()
    while (instant := datetime.now()) <= first:  # part names have microseconds
        pass
    while datetime.now() <= instant:
        pass
    return instant


class CompactorClock:
    """The compactor's clock, stopped at ``now``: ages and graces move only when the test says, never with the machine's speed.

    Parts keep their real write times in their names; the compactor judges them by its ``datetime.now()``
    (``min_age``) and stamps and judges its record by its ``time.time()`` (``grace``).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: datetime) -> None:
        self.now = now
        clock = self

        class Stopped(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Stopped:
                return cls.fromtimestamp(clock.now.timestamp(), tz)

        monkeypatch.setattr(compaction, "datetime", Stopped)
        monkeypatch.setattr(compaction, "time", SimpleNamespace(time=lambda: clock.now.timestamp()))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# -- same answers, fewer parts ------------------------------------------------------------------------------


def test_compaction_changes_no_answer_and_leaves_one_part_per_folder(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    rows = fill(log)
    before = snapshot(log)
    assert before["count"] == rows and len(before["unmatched"]) == 12 and len(parts(folder)) == 60
    folders = {p.parent for p in parts(folder)}
    assert len(folders) == 4  # log/, two typed folders, feedback/

    stats = log.compact(min_age=0, grace=0)

    assert stats == CompactStats(parts_merged=60, parts_written=4, parts_deleted=60, rows=rows + 48)
    assert snapshot(log) == before
    assert {p.parent for p in parts(folder)} == folders and len(parts(folder)) == 4
    assert not any(folder.rglob(RECORD_NAME)) and not any(folder.rglob(".*.tmp"))  # grace 0: nothing left to remember
    # the log goes on: new parts, compacted again into the same single part per folder
    log.append([pred(500)])
    log.append([pred(501)])
    log.add_feedback([Feedback("r500", 1.0, T0)])
    log.add_feedback([Feedback("r501", 0.0, T0)])
    assert log.compact(min_age=0, grace=0).parts_merged == 4  # the 2 new parts of each folder; the big one is left alone
    assert log.count() == rows + 2 and {r["request_id"]: r["label"] for r in log.read().to_pylist()}["r500"] == 1.0


def test_the_latest_label_rule_survives_a_merge_between_parts_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    log.append([pred(i) for i in range(10)])
    log.add_feedback([Feedback(f"r{i}", 0.0, T0) for i in range(10)])  # 10 rows: as big as target_rows, left alone
    log.add_feedback([Feedback("r0", 1.0, T0)])
    log.add_feedback([Feedback("r0", 0.0, T0), Feedback("r1", 1.0, T0)])
    log.add_feedback([Feedback("r1", 0.0, T0)])
    between = instant_between_parts()
    log.add_feedback([Feedback("r0", 1.0, T0)])  # younger than min_age: left alone, stays the latest
    before = snapshot(log)
    first, *middle, last = feedback_parts(folder)

    CompactorClock(monkeypatch, between + timedelta(seconds=60))  # the parts before are a minute old, the last one less
    stats = log.compact(min_age=60, target_rows=10, grace=0)

    remaining = feedback_parts(folder)
    assert stats.parts_merged == 3 and len(remaining) == 3  # the 3 middle parts (the log itself is one part)
    assert remaining[0] == first and remaining[2] == last and remaining[1].name.startswith(middle[0].stem + "-m")
    assert snapshot(log) == before
    labels = {r["request_id"]: r["label"] for r in log.read().to_pylist()}
    assert labels["r0"] == 1.0 and labels["r1"] == 0.0  # written last wins, as before


def test_merged_parts_are_capped_and_a_big_part_is_not_rewritten_for_a_few_rows(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    for i in range(10):
        log.append([pred(3 * i + k) for k in range(3)])
    assert log.compact(min_age=0, target_rows=10, grace=0).parts_written == 3  # 9 + 9 + 9 rows; the last part alone
    assert [pq.read_metadata(p).num_rows for p in parts(folder)] == [9, 9, 9, 3] and log.count() == 30

    log.compact(min_age=0, target_rows=1000, grace=0)
    (big,) = parts(folder)
    log.append([pred(100)])
    log.append([pred(101)])
    assert log.compact(min_age=0, target_rows=1000, grace=0).rows == 2  # 30 rows are not rewritten to add 2
    assert parts(folder)[0] == big and len(parts(folder)) == 2 and log.count() == 32
    for i in range(102, 140):
        log.append([pred(i)])
    stats = log.compact(min_age=0, target_rows=1000, grace=0)
    assert (stats.parts_merged, stats.rows) == (40, 70) and len(parts(folder)) == 1  # now they outweigh it
    assert [r["request_id"] for r in log.read().to_pylist()] == [f"r{i}" for i in [*range(30), *range(100, 140)]]


def test_young_parts_wait_min_age_and_replaced_parts_wait_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    for i in range(5):
        log.append([pred(i)])
    clock = CompactorClock(monkeypatch, instant_between_parts())
    assert log.compact(min_age=60, grace=0) == CompactStats()  # all younger than a minute
    assert len(parts(folder)) == 5

    first = log.compact(min_age=0, grace=0.6)
    assert (first.parts_merged, first.parts_deleted) == (5, 0)
    assert len(parts(folder)) == 6 and log.count() == 5  # replaced parts still there for running readers; read once
    (entry,) = read_record(parts(folder)[0].parent)
    assert len(entry.replaces) == 5 and entry.deleted is None
    assert log.compact(min_age=0, grace=0.6).parts_deleted == 0  # grace not over yet

    clock.advance(0.5)
    assert log.compact(min_age=0, grace=0.6).parts_deleted == 0  # still not
    clock.advance(0.2)
    assert log.compact(min_age=0, grace=0.6).parts_deleted == 5
    assert len(parts(folder)) == 1 and log.count() == 5
    (entry,) = read_record(parts(folder)[0].parent)
    assert entry.deleted is not None  # kept another grace: a reader may have listed a replaced part just before
    clock.advance(0.7)
    log.compact(min_age=0, grace=0.6)
    assert read_record(parts(folder)[0].parent) == [] and log.count() == 5


def test_a_run_never_crosses_a_part_still_being_written(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    for i in range(2):
        log.add_feedback([Feedback(f"r{i}", 1.0, T0)])
    # another process named its part now and is still writing it: once renamed it sorts here
    in_progress = folder / "feedback" / f".part-{datetime.now():%Y%m%dT%H%M%S%f}-0a0a0a0a.parquet.tmp"
    in_progress.write_bytes(b"PAR1 being written")
    for i in range(2, 4):
        log.add_feedback([Feedback(f"r{i}", 1.0, T0)])
    stale = folder / "feedback" / ".part-20200101T000000000000-0b0b0b0b-m0c0c0c0c.parquet.tmp"  # a dead compactor's
    stale.write_bytes(b"PAR1 half a merged part")

    assert log.compact(min_age=0, grace=0).parts_merged == 2  # the two parts before it only
    assert in_progress.exists() and not stale.exists()
    assert len(feedback_parts(folder)) == 3
    in_progress.unlink()
    assert log.compact(min_age=0, grace=0).parts_merged == 3


# -- concurrency ---------------------------------------------------------------------------------------------


def test_readers_see_every_row_once_while_writers_append_and_the_compactor_runs(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    writer, reader, compactor = PredictionLog(folder), PredictionLog(folder), PredictionLog(folder)
    written = [0, 0]  # predictions, labels: updated after each append returns
    stop = threading.Event()
    failures: list[str] = []
    reads: list[int] = []
    stats: list[CompactStats] = []

    def guarded(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    body()
            except Exception as exc:  # reported below, with the thread's name
                failures.append(f"{threading.current_thread().name}: {exc!r}")
                stop.set()

        return run

    def write() -> None:
        n = written[0]
        features = {"amount": 1.0, "country": "FR"} if n % 3 else {"amount": 2.0, "hour": 3.0}
        writer.append([pred(n + k, features=features) for k in range(5)])
        written[0] += 5
        writer.add_feedback([Feedback(f"r{n}", 1.0, T0), Feedback(f"r{n}", 0.0, T0)])
        written[1] += 2
        time.sleep(0.002)

    def read() -> None:
        at_least = tuple(written)
        with reader.connect() as con:
            got = con.execute(
                "SELECT (SELECT count(*) FROM predictions), (SELECT count(DISTINCT request_id) FROM predictions), "
                "(SELECT count(*) FROM feedback)"
            ).fetchone()
        at_most = tuple(written)
        assert got is not None
        rows, distinct, labels = got
        if not (at_least[0] <= rows <= at_most[0] and distinct == rows and at_least[1] <= labels <= at_most[1]):
            failures.append(f"read {got} with {at_least} written before and {at_most} after")
        reads.append(rows)

    def compact() -> None:
        stats.append(compactor.compact(min_age=0, grace=0.2))
        time.sleep(0.05)

    threads = [threading.Thread(target=guarded(body), name=body.__name__) for body in (write, read, compact)]
    for thread in threads:
        thread.start()

    def enough() -> bool:  # the three ran together long enough (or one failed)
        merged, deleted = sum(s.parts_merged for s in stats), sum(s.parts_deleted for s in stats)
        return bool(failures) or (len(reads) >= 10 and merged > 100 and deleted > 0)

    try:
        wait_until(enough, timeout=120, interval=0.1, message="10 reads, 100 parts merged and some deleted")
    finally:
        stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert len(reads) >= 10 and sum(s.parts_merged for s in stats) > 100 and sum(s.parts_deleted for s in stats) > 0
    compactor.compact(min_age=0, grace=0)
    assert reader.count() == written[0] and len(reader.read()) == written[0]
    # hundreds of parts written; left: a few per folder, each far bigger than the ones after it (a big part
    # is merged again only once newer ones outweigh it), so about log2(rows) per folder at most
    assert len(parts(folder)) <= 3 * math.log2(written[0]) < written[0] // 5


def test_two_logs_compacting_the_same_folder_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    for i in range(150):
        log.append([pred(i)])
        log.add_feedback([Feedback(f"r{i}", float(i % 2), T0)])
    before = snapshot(log)
    first, second = PredictionLog(folder), PredictionLog(folder)
    start = threading.Barrier(2)
    results: list[CompactStats] = []

    def run(one: PredictionLog) -> None:
        start.wait()
        results.append(one.compact(min_age=0, grace=0))

    threads = [threading.Thread(target=run, args=(one,)) for one in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(r.parts_merged for r in results) == 300  # each part merged once, by one of them
    assert snapshot(log) == before and len(parts(folder)) == 2


def test_a_compactor_holding_the_lock_makes_others_skip(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    for i in range(3):
        log.append([pred(i)])
    with open(folder / LOCK_NAME, "a") as held:  # another process compacting
        fcntl.flock(held, fcntl.LOCK_EX)
        assert log.compact(min_age=0, grace=0) == CompactStats(skipped=True)
        assert len(parts(folder)) == 3
    assert log.compact(min_age=0, grace=0).parts_merged == 3


# -- crashes and bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("dies_at", ["record", "rename"])
def test_a_compactor_dying_midway_leaves_a_log_read_whole_and_the_next_one_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_at: str
) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    rows = fill(log)
    before = snapshot(log)
    real_replace = os.replace

    def dying_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        name = Path(dst).name
        if (dies_at == "record" and name == RECORD_NAME) or (dies_at == "rename" and name.startswith("part-")):
            raise OSError(28, "No space left on device")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(LoopmlError, match=r"^prediction log .*/predictions/log: compaction failed \(No space left on device\)$"):
        log.compact(min_age=0, grace=0)
    monkeypatch.setattr(os, "replace", real_replace)

    assert any(p.name.endswith(".tmp") for p in (folder / "log").iterdir())  # what the dead compactor left
    if dies_at == "rename":
        (entry,) = read_record(folder / "log")  # its entry names a merged part that never appeared
        assert not (folder / "log" / entry.merged).exists()
    assert snapshot(log) == before  # readers: every row once

    stats = log.compact(min_age=0, grace=0)
    assert stats.parts_written == 4 and stats.rows == rows + 48
    assert snapshot(log) == before and len(parts(folder)) == 4
    assert not any(p.name.endswith(".parquet.tmp") for p in folder.rglob(".*")) and read_record(folder / "log") == []


def test_bad_settings_and_a_damaged_record_are_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = PredictionLog(folder)
    log.append([pred(0)])
    with pytest.raises(
        LoopmlError, match=r"^prediction log .*predictions: compaction needs min_age >= 0.*\(got -1, 0, 1000000\)$"
    ):
        log.compact(min_age=-1, grace=0)
    with pytest.raises(LoopmlError, match=r"target_rows >= 2"):
        log.compact(target_rows=1)
    typed = parts(folder)[0].parent
    (typed / RECORD_NAME).write_text('{"not": "a list"}')
    with pytest.raises(
        LoopmlError, match=r"^prediction log .*/log/typed-\w+/compacted.json: the compaction record is not a list of entries"
    ):
        log.count()
    (typed / RECORD_NAME).write_text(json.dumps([{"merged": "part-x.parquet", "at": 1.0}]))
    with pytest.raises(
        LoopmlError, match=r"compacted.json: the compaction record is not a list of entries \(KeyError\('replaces'\)\)"
    ):
        live_parts(typed)


# -- the serving logger -----------------------------------------------------------------------------------


class EagerLog(PredictionLog):
    """The Parquet log compacting without waiting (the server's default waits a minute, then ten)."""

    def compact(self, min_age: float = 0.0, target_rows: int = 1_000_000, grace: float = 0.0) -> CompactStats:
        return super().compact(min_age, target_rows, grace)


def test_the_serving_logger_compacts_on_its_schedule(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    log = EagerLog(folder)
    errors: list[Exception] = []
    logger = AsyncLogger(log, flush_seconds=0.02, compact_seconds=0.3, on_error=errors.append)
    logger.start()
    for i in range(40):
        logger.submit(pred(i))
        if i % 4 == 0:
            logger.submit(Feedback(f"r{i}", 1.0, T0))
        time.sleep(0.03)  # about one part per record: many small parts
    wait_until(lambda: logger.pending == 0)
    done = logger.compactions
    wait_until(lambda: logger.compactions >= done + 2)
    logger.close()
    assert errors == [] and logger.dropped == 0
    assert log.count() == 40 and len(parts(folder)) < 10  # of about 50 written
    assert {r["request_id"] for r in log.read().to_pylist() if r["label"] == 1.0} == {f"r{i}" for i in range(0, 40, 4)}


def test_a_failing_compaction_is_reported_and_logging_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    (folder / LOCK_NAME).mkdir(parents=True)  # the lock cannot be opened: every compaction fails
    log = EagerLog(folder)
    errors: list[Exception] = []
    logger = AsyncLogger(log, flush_seconds=0.02, compact_seconds=0.1, on_error=errors.append)
    logger.start()
    for i in range(20):
        logger.submit(pred(i))
        time.sleep(0.02)
    wait_until(lambda: logger.compactions >= 2)
    logger.close()
    assert errors and all(isinstance(e, LoopmlError) for e in errors)
    assert str(errors[0]).startswith(f"prediction log {folder}: cannot open the compaction lock")
    assert logger.dropped == 0 and logger.written == 20 and log.count() == 20


def test_no_compaction_thread_when_disabled(tmp_path: Path) -> None:
    log = EagerLog(tmp_path / "predictions")
    disabled = AsyncLogger(log, compact_seconds=0)
    disabled.start()
    disabled.submit(pred(1))
    disabled.close()
    assert disabled.compactions == 0 and log.count() == 1
