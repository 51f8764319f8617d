"""The closed loop: triggers, recorded and memoised steps, resume after a kill, and a canary through the live service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.loop.retrain import LoopStore, evaluate_triggers
from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from specs import configure
from waiting import wait_until

TOKEN = "loop-token"


def add_live_rows(folder: Path, n: int) -> None:
    """New data lands in the source: the first ``n`` held-back live transactions."""
    source = folder / "data" / "transactions.parquet"
    history = pq.read_table(source)
    live = pq.read_table(folder / "data" / "live.parquet").slice(0, n).select(history.column_names).cast(history.schema)
    pq.write_table(pa.concat_tables([history, live]), source)


def test_nothing_fires_on_a_fresh_champion(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    triggers = evaluate_triggers(project)
    assert {t["trigger"] for t in triggers} == {"drift", "performance", "volume"}
    assert not any(t["fired"] for t in triggers)
    run = project.retrain()
    assert run.status == "not triggered" and run.steps == []


@pytest.mark.slow
def test_new_data_triggers_the_loop_and_unchanged_inputs_are_not_rerun(trained_copy: Path) -> None:
    configure(trained_copy, retraining={"min_new_rows": 500, "canary": False}, gate={"min_improvement": -1.0})
    add_live_rows(trained_copy, 3000)
    project = Project.load(trained_copy)
    first = project.retrain(service_url="http://127.0.0.1:9")
    assert [t["trigger"] for t in first.triggers if t["fired"]] == ["volume"]
    assert [s.name for s in first.steps] == ["ingest", "features", "train", "canary"]
    assert all(s.status == "done" for s in first.steps)
    version = first.steps[2].outputs["model_version"]
    assert project.registry().alias("champion").version == version  # type: ignore[union-attr]
    assert "promoted" in (first.outcome or "")

    again = project.retrain(force=True)
    status = {s.name: s.status for s in again.steps}
    assert status["ingest"] == "reused" and status["features"] == "reused"  # same files, same snapshot
    assert status["train"] == "done"  # the champion changed, so training ran against the new one
    saved = json.loads((trained_copy / ".loopml" / "loop" / f"{again.id}.json").read_text())
    assert saved["status"] == "finished" and saved["steps"][0]["inputs"]["files"]


@pytest.mark.slow
def test_a_killed_loop_resumes_where_it_stopped(trained_copy: Path) -> None:
    configure(trained_copy, retraining={"canary": False}, model={"params": {"n_estimators": 400}})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    loop_dir = trained_copy / ".loopml" / "loop"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopml.cli", "retrain", "--force", "--project", str(trained_copy), "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def training() -> bool:
        runs = LoopStore(loop_dir).runs()
        return bool(runs) and any(s.name == "train" and s.status == "running" for s in runs[-1].steps)

    try:
        wait_until(training, timeout=120, interval=0.05, message="the loop to reach the train step")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = LoopStore(loop_dir).runs()[-1]
    assert killed.status == "failed" and killed.error == f"the loop process (pid {proc.pid}) ended without finishing the run"
    assert {s.name: s.status for s in killed.steps}["train"] == "failed"  # redone on resume
    project = Project.load(trained_copy)
    resumed = project.retrain()
    assert resumed.id == killed.id and resumed.status == "finished"
    by_name = {s.name: s for s in resumed.steps}
    assert by_name["ingest"].started == killed.steps[0].started  # not re-run
    assert by_name["train"].status == "done" and by_name["train"].outputs["model_version"] >= 2


@pytest.mark.slow
def test_the_loop_canaries_through_the_live_service_and_promotes(trained_copy: Path) -> None:
    configure(
        trained_copy,
        rollout={"canary": {"steps": [0.5, 1.0], "min_requests": 15, "max_score_psi": 5.0}},
        retraining={"canary_timeout": "2m"},
        gate={"min_improvement": -1.0},
    )
    project = Project.load(trained_copy)
    live = pq.read_table(trained_copy / "data" / "live.parquet").slice(0, 400).to_pylist()
    stop = threading.Event()
    answers: list[int] = []

    def traffic(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                for row in live:
                    if stop.is_set():
                        return
                    body: dict[str, Any] = {
                        "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
                        "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
                    }
                    answers.append(client.post("/v1/predict", json=body).status_code)
                    time.sleep(0.005)

    with BackgroundServer(build_app(project, admin_token=TOKEN)) as srv:
        sender = threading.Thread(target=traffic, args=(srv.url,), daemon=True)
        sender.start()
        try:
            run = project.retrain(force=True, service_url=srv.url, admin_token=TOKEN)
        finally:
            stop.set()
            sender.join(timeout=30)
    canary = run.steps[-1]
    assert canary.name == "canary" and canary.outputs["decision"] == "promote", canary.outputs
    new = run.steps[2].outputs["model_version"]
    assert project.registry().alias("champion").version == new  # type: ignore[union-attr]
    assert answers and set(answers) == {200}  # no request failed while the canary ran and the champion moved


def test_a_second_loop_is_refused_while_one_runs(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    store = LoopStore(trained_copy / ".loopml" / "loop")
    with store.lock(), pytest.raises(Exception, match="another 'loopml retrain' is running"):
        project.retrain(force=True)


def test_the_schedule_runs_the_loop_in_its_own_process(trained_copy: Path) -> None:
    from loopml.loop.schedule import RetrainScheduler

    scheduler = RetrainScheduler(trained_copy, interval_s=0.2, service_url="http://127.0.0.1:9", admin_token=None).start()
    try:
        wait_until(lambda: scheduler.checks > 0, timeout=120, interval=0.1, message="the schedule's first check")
    finally:
        scheduler.stop()
    assert scheduler.last is not None and scheduler.last["status"] == "not triggered"
    assert LoopStore(trained_copy / ".loopml" / "loop").runs()[0].status == "not triggered"
