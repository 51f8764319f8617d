"""Runs and loop steps whose process was killed read ``failed`` with the reason; a live process's run still reads ``running``.

Each test starts real child processes that own a run, kills one with SIGKILL once its run reads ``running``
(polled with a deadline), and reads the run back from another process's point of view.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ruamel.yaml import YAML

from loopml.loop.retrain import LoopRun, LoopStore
from loopml.project import Project
from loopml.train.tracking import RUN_FILE, RunRecord, RunStore, RunSummary

T = TypeVar("T")
DEADLINE_S = 120.0

# Owns one training run through the public API until its stdin closes, then finishes it.
_RUN_OWNER = """
import sys
from datetime import UTC, datetime
from pathlib import Path

from loopml.train.tracking import RunRecord, RunStore, new_run_id

store = RunStore(Path(sys.argv[1]))
started = datetime.now(UTC).isoformat(timespec="seconds")
run = RunRecord(run_id=new_run_id(), status="running", started_at=started, params={"model_type": "lightgbm"})
store.record(run, "average_precision")
sys.stdin.read()
run.status, run.metrics = "finished", {"test": {"average_precision": 0.5}}
store.record(run, "average_precision")
"""

# A loop process stopped in the middle of its features step: holds the loop lock until its stdin closes.
_LOOP_OWNER = """
import os
import sys
from pathlib import Path

from loopml.loop.retrain import LoopRun, LoopStore, Step

store = LoopStore(Path(sys.argv[1]))
with store.lock():
    forced = [{"trigger": "forced", "fired": True, "detail": "--force"}]
    run = LoopRun(id="20260101T000000-abcdef", started="2026-01-01T00:00:00", status="running", triggers=forced, pid=os.getpid())
    run.steps.append(Step(name="ingest", key="k1", inputs={"files": 1}, status="done", outputs={"snapshot": "s1"}))
    run.steps.append(Step(name="features", key="k2", inputs={"snapshot": "s1"}))
    store.save(run)
    sys.stdin.read()
"""


@contextmanager
def child(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python process (``python ARGS...``); killed (and reaped) at the end if it still runs."""
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)


def poll(what: str, find: Callable[[], T | None], proc: subprocess.Popen[str] | None = None) -> T:
    """``find()``'s first non-``None`` answer, before the deadline (and while ``proc`` lives)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (exit code {proc.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def running_run_of(store: RunStore, pid: int) -> Callable[[], RunRecord | None]:
    def find() -> RunRecord | None:
        for summary in store.list(limit=1000):
            if summary.status == "running":
                run = store.get(summary.run_id)
                if run.pid == pid and run.status == "running":
                    return run
        return None

    return find


def summary_of(store: RunStore, run_id: str) -> RunSummary:
    return next(s for s in store.list(limit=1000) if s.run_id == run_id)


def loopml_json(*args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "loopml.cli", *args, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def index_status(root: Path, run_id: str) -> str:
    with sqlite3.connect(root / "runs.sqlite") as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    con.close()
    return str(row[0])


def test_a_killed_run_reads_failed_and_a_live_one_running(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    with child("-c", _RUN_OWNER, str(store.root)) as doomed, child("-c", _RUN_OWNER, str(store.root)) as live:
        killed = poll("the first run reads running", running_run_of(store, doomed.pid), doomed)
        alive = poll("the second run reads running", running_run_of(store, live.pid), live)
        kill(doomed)
        reason = f"the training process (pid {doomed.pid}) ended without finishing the run"

        summary = summary_of(store, killed.run_id)
        assert summary.status == "failed" and summary.model_type == "lightgbm" and summary.metric == "average_precision"
        record = store.get(killed.run_id)
        assert record.status == "failed" and record.error == reason and record.pid == doomed.pid
        # rewritten on disk, run.json and index row, so readers that do not check owners see it too
        on_disk = json.loads((store.root / killed.run_id / RUN_FILE).read_text())
        assert on_disk["status"] == "failed" and on_disk["error"] == reason
        assert index_status(store.root, killed.run_id) == "failed"
        assert RunStore(store.root).get(killed.run_id).error == reason  # and stays so for a new reader

        assert summary_of(store, alive.run_id).status == "running"
        assert store.get(alive.run_id).status == "running" and index_status(store.root, alive.run_id) == "running"
        finish(live)
    finished = store.get(alive.run_id)
    assert finished.status == "finished" and finished.error is None
    assert summary_of(store, alive.run_id).value == 0.5


def test_a_run_owned_in_this_process_reads_running_to_every_reader(tmp_path: Path) -> None:
    owner = RunStore(tmp_path / "runs")
    run = RunRecord(run_id="20260101T000000-abcdef", status="running", started_at="2026-01-01T00:00:00+00:00")
    owner.record(run)
    other = RunStore(owner.root)  # another reader in this process: a lock of its own, refused while the owner holds it
    assert other.get(run.run_id).status == "running" and other.list()[0].status == "running"
    assert owner.get(run.run_id).status == "running"
    with pytest.raises(Exception, match="owned by another process"):
        other.record(run)
    run.status = "finished"
    owner.record(run)
    assert other.get(run.run_id).status == "finished" and other.list()[0].status == "finished"


def test_runs_without_an_owner_and_half_finished_records_are_put_right(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    # written by a loopml that recorded no owner: no pid, no lock file
    legacy = RunRecord(run_id="20250101T000000-aaaaaa", status="finished", started_at="2025-01-01T00:00:00+00:00")
    store.record(legacy)
    path = store.root / legacy.run_id / RUN_FILE
    path.write_text(json.dumps({**legacy.to_json(), "status": "running"}))
    with sqlite3.connect(store.root / "runs.sqlite") as con:
        con.execute("UPDATE runs SET status = 'running'")
    con.close()
    assert store.list()[0].status == "failed"
    assert store.get(legacy.run_id).error == "the training process ended without finishing the run"
    # the owner wrote its final run.json and died before the index row: the index follows run.json
    path.write_text(json.dumps({**legacy.to_json(), "status": "finished"}))
    with sqlite3.connect(store.root / "runs.sqlite") as con:
        con.execute("UPDATE runs SET status = 'running'")
    con.close()
    assert store.list()[0].status == "finished" and index_status(store.root, legacy.run_id) == "finished"


def test_a_killed_loopml_train_reads_failed_in_runs_list_and_show(trained_copy: Path) -> None:
    yaml = YAML(typ="rt")
    spec = yaml.load((trained_copy / "loopml.yaml").read_text())
    spec["model"]["params"] = {"n_estimators": 400}  # long enough to be caught running
    with (trained_copy / "loopml.yaml").open("w") as fh:
        yaml.dump(spec, fh)
    store = Project.load(trained_copy).runs()
    with child("-m", "loopml.cli", "train", "--project", str(trained_copy)) as trainer:
        killed = poll("loopml train's run reads running", running_run_of(store, trainer.pid), trainer)
        with child("-c", _RUN_OWNER, str(store.root)) as live:
            alive = poll("the live run reads running", running_run_of(store, live.pid), live)
            kill(trainer)
            reason = f"the training process (pid {trainer.pid}) ended without finishing the run"

            listed = {r["run_id"]: r for r in loopml_json("runs", "list", "--project", str(trained_copy))}
            assert listed[killed.run_id]["status"] == "failed"
            assert listed[alive.run_id]["status"] == "running"
            shown = loopml_json("runs", "show", killed.run_id, "--project", str(trained_copy))
            assert shown["status"] == "failed" and shown["error"] == reason and shown["pid"] == trainer.pid
            assert loopml_json("runs", "show", alive.run_id, "--project", str(trained_copy))["status"] == "running"
            assert store.get(killed.run_id).error == reason and summary_of(store, killed.run_id).status == "failed"
            assert not any(r["status"] == "running" for r in listed.values() if r["run_id"] != alive.run_id)
            finish(live)


def loop_run(store: LoopStore, status: str) -> Callable[[], LoopRun | None]:
    return lambda: next((r for r in store.runs() if r.status == status), None)


def test_a_killed_loop_run_and_its_step_read_failed_and_stay_resumable(tmp_path: Path) -> None:
    store = LoopStore(tmp_path / "loop")
    with child("-c", _LOOP_OWNER, str(store.folder)) as loop:
        live = poll("the loop run reads running", loop_run(store, "running"), loop)
        assert [s.status for s in live.steps] == ["done", "running"]  # the reader left the live run alone
        with pytest.raises(Exception, match="another 'loopml retrain' is running"), store.lock():
            pass
        kill(loop)
    killed = store.runs()[-1]
    assert killed.status == "failed" and killed.pid == loop.pid
    assert killed.error == f"the loop process (pid {loop.pid}) ended without finishing the run"
    ingest, features = killed.steps
    assert ingest.status == "done" and ingest.error is None
    assert features.status == "failed" and features.error == f"the loop process (pid {loop.pid}) ended while this step ran"
    assert json.loads((store.folder / f"{killed.id}.json").read_text())["status"] == "failed"
    assert store.unfinished() is not None and store.unfinished().id == killed.id  # type: ignore[union-attr]


def test_the_next_loop_settles_a_killed_run_before_it_resumes_it(tmp_path: Path) -> None:
    store = LoopStore(tmp_path / "loop")
    with child("-c", _LOOP_OWNER, str(store.folder)) as loop:
        poll("the loop run is saved", lambda: next(store.folder.glob("2*.json"), None), loop)
        kill(loop)
    path = next(store.folder.glob("2*.json"))
    assert json.loads(path.read_text())["status"] == "running"  # nobody has read it since the kill
    with store.lock():
        saved = json.loads(path.read_text())
        assert saved["status"] == "failed" and saved["steps"][1]["status"] == "failed"
        resumed = store.unfinished()
        assert resumed is not None and resumed.id == saved["id"]
