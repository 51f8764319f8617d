"""Stream scoring against a real Redis: a scorer killed mid-run and restarted loses and duplicates nothing.

The input stream holds live transactions (after the project's snapshot, in
time order) plus three bad entries: an unparsable amount and an unparsable
time (no score; quarantined) and a customer key the store refuses (scored as an
unknown customer, then quarantined as not applied). A reference scorer runs
uninterrupted on its own copy of the project; the interrupted scorers (a
``loopml stream score`` process killed with SIGKILL, and in-process scorers
stopped between the output write and the store write, or between the store
write and the acknowledgement) must end with exactly the reference's output:
one entry per input entry, same ids, same scores, and the same online store;
and their prediction logs hold each output entry once, with its written score.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis
from typer.testing import CliRunner

from loopml.cli import app
from loopml.features.stream import connect_streams
from loopml.features.vector import FeatureAssembler
from loopml.predlog.compact import CompactStats
from loopml.predlog.parquet import PredictionLog
from loopml.project import Project
from loopml.serve.schemas import PredictRequest
from loopml.serve.service import PredictionService
from loopml.serve.stream_score import ScoringConsumer
from servers import RedisServer
from specs import configure
from waiting import wait_until

N = 800
BAD = {10: ("tx_amount", "lots"), 300: ("customer_id", "abc"), 650: ("tx_datetime", "yesterday")}
UNSCORABLE = {"11-0", "651-0"}  # entry ids of the entries that get no score
IN = "transactions"
OUT = "scores"


def project_copy(trained_project: Path, target: Path, url: str) -> Path:
    shutil.copytree(trained_project, target)
    configure(target, storage={"redis_url": url})
    return target


def feed(client: redis.Redis, project: Path) -> None:
    """The live rows as stream entries ``1-0``, ``2-0``...: source columns as text."""
    rows = pq.read_table(project / "data" / "live.parquet").slice(0, N).to_pylist()
    pipe = client.pipeline()
    for i, row in enumerate(rows):
        fields = {k: v.isoformat() if hasattr(v, "isoformat") else str(v) for k, v in row.items()}
        if i in BAD:
            fields[BAD[i][0]] = BAD[i][1]
        pipe.xadd(IN, fields, id=f"{i + 1}-0")
    pipe.execute()


def entries(client: redis.Redis, stream: str) -> dict[str, dict[str, str]]:
    got: Any = client.xrange(stream)
    return {i.decode(): {k.decode(): v.decode() for k, v in f.items()} for i, f in got}


def customers_features(project: Path) -> list[Any]:
    p = Project.load(project)
    return [p.online_features({"customer_id": str(c)}) for c in (0, 17, 436, 622)]


@pytest.fixture(scope="module")
def reference(trained_project: Path, redis_session: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its output, quarantine and online features."""
    if redis_session.process is None or redis_session.process.poll() is not None:
        redis_session.start()
    project = project_copy(trained_project, tmp_path_factory.mktemp("reference") / "project", redis_session.url)
    with redis_session.client() as client:
        client.flushall()
        feed(client, project)
        stats = Project.load(project).score_stream(IN, OUT, until_idle=True)
        assert stats.messages == N and stats.written == N - len(UNSCORABLE) and stats.quarantined == len(BAD)
        result: dict[str, Any] = {"out": entries(client, OUT), "quarantine": entries(client, f"{OUT}:quarantine")}
        client.flushall()
    result["features"] = customers_features(project)
    return result


def check_against(reference: dict[str, Any], client: redis.Redis, project: Path) -> None:
    out = entries(client, OUT)
    assert client.xlen(OUT) == len(out) == N - len(UNSCORABLE)  # one output entry per scorable input entry...
    assert set(out) == {f"{i + 1}-0" for i in range(N)} - UNSCORABLE  # ...with the input entry's id
    assert out == reference["out"]  # same request ids and exactly the same scores as the uninterrupted run
    quarantine = entries(client, f"{OUT}:quarantine")
    assert set(quarantine) == {f"{i + 1}-0" for i in BAD} and quarantine == reference["quarantine"]
    assert "not applied to the online store" in quarantine["301-0"]["__reason"]
    assert quarantine["11-0"]["__reason"] == "features.tx_amount: expected a number, got 'lots'"
    pending: Any = client.xpending(IN, "loopml-score")
    assert pending["pending"] == 0  # everything acknowledged
    assert customers_features(project) == reference["features"]  # every event applied once
    check_log(out, project)


def check_log(out: dict[str, dict[str, str]], project: Path) -> None:
    """The prediction log holds each output entry once, with the score written to the stream."""
    log = Project.load(project).prediction_log()
    try:
        logged = log.read().to_pylist()
    finally:
        log.close()
    assert len(logged) == len(out)  # once each, whatever was redone after a crash
    assert {r["request_id"]: r["score"] for r in logged} == {e["request_id"]: float(e["score"]) for e in out.values()}
    assert {(r["model_version"], r["variant"]) for r in logged} == {(1, "champion")}
    assert all("tx_amount" in r["features"] for r in logged)  # the model's inputs by name, as the service logs them


def test_scores_are_the_online_services_before_the_event_is_applied(
    reference: dict[str, Any], trained_project: Path, tmp_path: Path
) -> None:
    """An entry whose customer and terminal had no earlier entry gets the score the service gives on the materialized store."""
    project = project_copy(trained_project, tmp_path / "project", "redis://127.0.0.1:1/0")
    p = Project.load(project)
    store = p.online_store()
    service = PredictionService(p.spec, FeatureAssembler(p.spec, store), p.registry(), None)
    service.reload()
    rows = pq.read_table(project / "data" / "live.parquet").slice(0, N).to_pylist()
    seen: set[tuple[str, int]] = set()
    fresh = []
    for i, row in enumerate(rows):
        mine = {("c", row["customer_id"]), ("t", row["terminal_id"])}
        if not mine & seen and i not in BAD:
            fresh.append(i)
        seen |= mine
    requests = [
        PredictRequest(
            entities={"customer_id": rows[i]["customer_id"], "terminal_id": rows[i]["terminal_id"]},
            features={"tx_amount": rows[i]["tx_amount"], "tx_datetime": rows[i]["tx_datetime"].isoformat()},
        )
        for i in fresh
    ]
    online = [prediction.score for prediction in service.predict(requests, batch=True)]
    store.close()
    out = reference["out"]
    assert len(fresh) > 100
    assert [float(out[f"{i + 1}-0"]["score"]) for i in fresh] == online  # exactly, as text round trip (repr)
    assert [out[f"{i + 1}-0"]["request_id"] for i in fresh] == [str(rows[i]["transaction_id"]) for i in fresh]
    assert {e["model_version"] for e in out.values()} == {"1"} and {e["variant"] for e in out.values()} == {"champion"}
    assert out["301-0"]["missing_entities"] == "customer"  # the refused key was scored as an unknown customer


def test_sigkilled_scorer_process_restarts_without_loss_or_duplicates(
    trained_project: Path, redis_server: RedisServer, reference: dict[str, Any], tmp_path: Path
) -> None:
    project = project_copy(trained_project, tmp_path / "project", redis_server.url)
    command = [sys.executable, "-m", "loopml", "stream", "score", "-p", str(project), "--input", IN, "--output", OUT]
    command += ["--batch", "5", "--until-idle"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with redis_server.client() as client:
        feed(client, project)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

        def scored_some() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            return client.xlen(OUT) >= 150

        wait_until(scored_some, timeout=90, interval=0.005, message="the scorer to write 150 scores")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
        written = client.xlen(OUT)
        assert written < N - len(UNSCORABLE), "the scorer finished before it was killed"
        restarted = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        check_against(reference, client, project)


class EagerLog(PredictionLog):
    """The project's Parquet log, compacting every part at once (no minimum age, no grace)."""

    def compact(self, min_age: float = 0.0, target_rows: int = 1_000_000, grace: float = 0.0) -> CompactStats:
        return super().compact(min_age=0.0, target_rows=target_rows, grace=0.0)


class Crash(Exception):
    """The scorer dies here."""


class DyingScorer(ScoringConsumer):
    """Dies at its third run of entries: after writing the scores (``before="push"``) or after the store write."""

    before = "push"
    runs = 0

    def _push(self, entries: list[Any]) -> None:
        self.runs += 1
        if self.runs == 3 and self.before == "push":
            raise Crash
        super()._push(entries)
        if self.runs == 3 and self.before == "ack":
            raise Crash


@pytest.mark.parametrize("before", ["push", "ack"])
def test_scorer_stopped_between_write_and_ack_restarts_without_loss_or_duplicates(
    trained_project: Path, redis_server: RedisServer, reference: dict[str, Any], tmp_path: Path, before: str
) -> None:
    project = project_copy(trained_project, tmp_path / "project", redis_server.url)
    p = Project.load(project)
    with redis_server.client() as client:
        feed(client, project)
    store = p.online_store()
    log = EagerLog(p.layout.prediction_log)
    streams = connect_streams(p.spec.storage.redis_url)
    try:
        dying = DyingScorer(p.spec, store, streams, p.registry(), IN, OUT, "transactions", batch=50, log=log)
        dying.before = before
        with pytest.raises(Crash):
            dying.run(until_idle=True)
        written = streams.xlen(OUT)
        in_flight: Any = streams.xpending_range(IN, "loopml-score", min="-", max="+", count=N)
        in_flight_ids = {e["message_id"].decode() for e in in_flight}
        assert in_flight_ids and in_flight_ids & set(entries(streams, OUT))  # scores written, never acknowledged
        name = dying.consumer if before == "push" else "another-name"  # a restart under a new name takes over too
        again = ScoringConsumer(
            p.spec, store, streams, p.registry(), IN, OUT, "transactions", consumer=name, batch=50, log=log, compact_seconds=1e-9
        )
        stats = again.run(until_idle=True)
        assert stats.written == N - len(UNSCORABLE) - written  # what was already there was not written twice
        assert again.compactions > 0  # compacting the log between batches loses and duplicates nothing either
        parts = list((p.layout.prediction_log / "log").rglob("part-*.parquet"))
        assert 0 < len(parts) < N // 50  # fewer parts than batches: they were merged
        check_against(reference, streams, project)
    finally:
        log.close()
        streams.close()
        store.close()


def test_cli_errors_are_one_line(trained_project: Path, tmp_path: Path) -> None:
    from loopml.server import free_port

    project = project_copy(trained_project, tmp_path / "project", f"redis://127.0.0.1:{free_port()}/0")
    runner = CliRunner()
    same = runner.invoke(app, ["stream", "score", "-p", str(project), "--input", "a", "--output", "a"])
    down = runner.invoke(app, ["stream", "score", "-p", str(project), "--input", "a", "--output", "b"])
    assert same.exit_code == 1 and down.exit_code == 1
    assert same.stderr.strip().splitlines() == ["error: --output a: the output stream must not be the input stream"]
    assert len(down.stderr.strip().splitlines()) == 1
    assert down.stderr.startswith("error: storage.redis_url: Redis at redis://127.0.0.1:") and "is unreachable" in down.stderr
