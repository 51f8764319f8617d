"""Redis as the online store, for real: the stream consumer, start-up errors, and a server killed under live HTTP traffic."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

import loopml.features.online.redis as online_redis
from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.features import push_events
from loopml.features.online.base import OnlineStoreUnavailable
from loopml.features.online.redis import COOLDOWN_SECONDS, RedisOnlineStore
from loopml.features.online.sqlite import SqliteOnlineStore
from loopml.features.stream import REASON_FIELD, StreamConsumer
from loopml.project import Project
from loopml.server import BackgroundServer, build_app, free_port
from loopml.spec.model import Spec
from served_fraud import body, live_rows
from servers import RedisServer
from specs import configure, fraud_spec

runner = CliRunner()


def spec_with(url: str) -> Spec:
    return fraud_spec(storage={"online": "redis", "redis_url": url})


def use_redis(project: Path, url: str, unavailable: str = "fail", online: str = "redis") -> None:
    configure(project, storage={"online": online, "redis_url": url, "online_unavailable": unavailable})


def stream_rows(n: int, start: int = 0, day: str = "2025-07-01") -> list[dict[str, str]]:
    """Transactions as a producer would XADD them: every value as text."""
    return [
        {
            "transaction_id": str(start + i),
            "tx_datetime": f"{day}T10:{i // 60:02d}:{i % 60:02d}",
            "customer_id": str(i % 3),
            "terminal_id": str(10 + i % 2),
            "tx_amount": f"{10 + i}.5",
            "tx_fraud": "0",
            "tx_fraud_scenario": "",
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------- unreachable Redis


def test_unreachable_redis_fails_fast_and_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    connect = redis.connection.Connection._connect

    def counted(self: redis.connection.Connection) -> Any:
        attempts.append(self.port)
        return connect(self)

    monkeypatch.setattr(redis.connection.Connection, "_connect", counted)
    monkeypatch.setattr(online_redis, "COOLDOWN_SECONDS", 3600.0)  # the second call is within it, however busy the machine
    port = free_port()
    store = RedisOnlineStore(f"redis://:s3cret@127.0.0.1:{port}/0", "t")
    with pytest.raises(OnlineStoreUnavailable, match=rf"redis://:\*\*\*@127\.0\.0\.1:{port}/0 is unreachable") as caught:
        store.ping()
    assert "s3cret" not in str(caught.value)
    tried = len(attempts)
    assert 1 <= tried <= 2 and set(attempts) == {port}  # fails fast: one connection attempt, one retry at most
    with pytest.raises(OnlineStoreUnavailable):
        store.read_events("customer", [1])  # within the cooldown: no new connection attempt
    assert len(attempts) == tried
    store.close()


@pytest.mark.parametrize(
    "command",
    [
        ["features", "materialize"],
        ["features", "get", "--entity", "customer_id=1"],
        ["features", "consume", "--stream", "tx"],
        ["serve", "--port", "0"],
    ],
    ids=["materialize", "get", "consume", "serve"],
)
def test_commands_stop_at_start_up_with_one_line(trained_copy: Path, command: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    use_redis(trained_copy, url)
    result = runner.invoke(app, [*command, "--project", str(trained_copy)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: storage.online: the online store at") and url in lines[0]


# --------------------------------------------------------------------------- the stream consumer


def xadd(client: redis.Redis, stream: str, rows: list[dict[str, str]]) -> None:
    for row in rows:
        client.xadd(stream, row)  # type: ignore[arg-type]


def test_consumer_applies_acks_and_quarantines(redis_server: RedisServer, tmp_path: Path) -> None:
    spec = spec_with(redis_server.url)
    client = redis_server.client()
    rows = stream_rows(30)
    rows[4]["tx_datetime"] = "garbage"
    rows[7]["tx_amount"] = "twelve"
    xadd(client, "tx", rows)
    with RedisOnlineStore(redis_server.url, "fraud") as store:
        consumer = StreamConsumer(spec, store, client, "tx", "transactions", consumer="c1", batch=8)
        stats = consumer.run(until_idle=True, block_ms=50)
        assert (stats.messages, stats.written, stats.quarantined) == (30, 2 * 28, 2)
        assert client.xpending("tx", "loopml")["pending"] == 0  # everything acknowledged
        bad = client.xrange("tx:quarantine")
        assert [dict(f)[b"transaction_id"] for _, f in bad] == [b"4", b"7"]
        assert dict(bad[0][1])[REASON_FIELD.encode()].startswith(b"tx_datetime: expected an ISO-8601 time")
        logs = store.read_events("customer", [0, 1, 2])
        assert sorted(i for log in logs if log is not None for i in log.ids) == [i for i in range(30) if i not in (4, 7)]
        # more events later: the same group picks up where it stopped
        xadd(client, "tx", stream_rows(5, start=100))
        assert consumer.run(until_idle=True, block_ms=50).written == 2 * 5
    client.close()


def test_redelivered_events_count_once(redis_server: RedisServer) -> None:
    spec = spec_with(redis_server.url)
    client = redis_server.client()
    rows = stream_rows(12)
    xadd(client, "tx", rows)
    with RedisOnlineStore(redis_server.url, "fraud") as store:
        StreamConsumer(spec, store, client, "tx", "transactions", consumer="dead").ensure_group()
        # consumer "dead" reads every entry and writes the store, then dies before acknowledging
        client.xreadgroup("loopml", "dead", {"tx": ">"}, count=100)
        push_events(spec, store, "transactions", rows)
        assert client.xpending("tx", "loopml")["pending"] == 12
        survivor = StreamConsumer(spec, store, client, "tx", "transactions", consumer="alive", claim_idle_ms=0)
        stats = survivor.run(until_idle=True, block_ms=50)
        assert stats.messages == 12 and stats.written == 0  # delivered again, counted once
        assert client.xpending("tx", "loopml")["pending"] == 0
        logs = store.read_events("customer", [0, 1, 2])
        assert sum(len(log.ids) for log in logs if log is not None) == 12
    client.close()


def test_store_outage_leaves_entries_pending_until_it_is_back(redis_server: RedisServer, tmp_path: Path) -> None:
    spec = spec_with(redis_server.url)
    client = redis_server.client()
    xadd(client, "tx", stream_rows(6))
    dead = RedisOnlineStore(f"redis://127.0.0.1:{free_port()}/0", "fraud")
    consumer = StreamConsumer(spec, dead, client, "tx", "transactions", consumer="c1")
    consumer.ensure_group()
    with pytest.raises(OnlineStoreUnavailable):
        consumer.step(block_ms=50)
    assert client.xpending("tx", "loopml")["pending"] == 6  # read, not acknowledged
    with SqliteOnlineStore(tmp_path / "online.sqlite") as store:
        consumer.store = store  # the store is back
        stats = consumer.run(until_idle=True, block_ms=50)
        assert stats.messages == 6 and stats.written == 2 * 6
        assert client.xpending("tx", "loopml")["pending"] == 0
    client.close()


def test_cli_consume_into_the_sqlite_store(redis_server: RedisServer, trained_copy: Path) -> None:
    use_redis(trained_copy, redis_server.url, online="sqlite")  # the stream is in Redis, the store stays SQLite
    client = redis_server.client()
    xadd(client, "live", stream_rows(9, start=10_000_000))
    result = runner.invoke(
        app, ["features", "consume", "--stream", "live", "--until-idle", "--json", "--project", str(trained_copy)]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"messages": 9, "written": 18, "quarantined": 0, "retries": 0}
    got = runner.invoke(
        app,
        [
            "features",
            "get",
            "--entity",
            "customer_id=0",
            "--as-of",
            "2025-07-01T11:00:00",
            "--json",
            "--project",
            str(trained_copy),
        ],
    )
    assert json.loads(got.stdout)["customer"]["values"]["customer_count_1d"] >= 3  # the three streamed events of customer 0
    missing = runner.invoke(app, ["features", "consume", "--stream", "live", "--source", "nope", "--project", str(trained_copy)])
    assert missing.exit_code == 1 and "--source nope" in missing.stderr
    client.close()


# --------------------------------------------------------------------------- Redis killed under live HTTP traffic


def live_bodies(project: Path, n: int) -> list[dict[str, Any]]:
    return [body(r) for r in live_rows(project, n)]


@pytest.fixture
def redis_project(trained_copy: Path, redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[Path]:
    use_redis(trained_copy, redis_server.url, request.param)
    Project.load(trained_copy).materialize()
    yield trained_copy


@pytest.mark.parametrize("redis_project", ["fail"], indirect=True)
def test_killed_redis_gives_503_with_a_reason_then_recovers(redis_project: Path, redis_server: RedisServer) -> None:
    bodies = live_bodies(redis_project, 3)
    with BackgroundServer(build_app(Project.load(redis_project))) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        before = http.post("/v1/predict", json=bodies[0]).json()
        assert before["missing_entities"] == [] and "fallback" not in before
        redis_server.stop()
        for _ in range(3):
            r = http.post("/v1/predict", json=bodies[1])
            assert r.status_code == 503
            assert "online store" in r.json()["error"] and redis_server.url in r.json()["error"]
        assert http.post("/v1/predict/batch", json={"instances": bodies}).status_code == 503
        assert http.get("/healthz").status_code == 200  # the process lives on
        metrics = http.get("/metrics").text
        assert "loopml_feature_store_errors_total 4.0" in metrics and "loopml_model_errors_total 0.0" in metrics
        redis_server.start()
        time.sleep(COOLDOWN_SECONDS + 0.1)
        back = http.post("/v1/predict", json=bodies[0])
        assert back.status_code == 200 and back.json()["missing_entities"] == ["customer", "terminal"]  # a fresh, empty Redis
        Project.load(redis_project).materialize()
        assert http.post("/v1/predict", json=bodies[0]).json()["score"] == before["score"]


@pytest.mark.parametrize("redis_project", ["fallback"], indirect=True)
def test_killed_redis_answers_from_the_local_cache_flagged(redis_project: Path, redis_server: RedisServer) -> None:
    bodies = live_bodies(redis_project, 20)
    with BackgroundServer(build_app(Project.load(redis_project))) as srv, httpx.Client(base_url=srv.url, timeout=10) as http:
        live = [http.post("/v1/predict", json=b).json() for b in bodies]
        assert all("fallback" not in p for p in live)
        redis_server.stop()
        cached = [http.post("/v1/predict", json=b) for b in bodies]
        assert all(r.status_code == 200 and r.json()["fallback"] is True for r in cached)
        assert [r.json()["score"] for r in cached] == [p["score"] for p in live]  # the same events, the same features
        batch = http.post("/v1/predict/batch", json={"instances": bodies[:5]}).json()["predictions"]
        assert all(p["fallback"] is True for p in batch)
        redis_server.start()
        time.sleep(COOLDOWN_SECONDS + 0.1)
        back = http.post("/v1/predict", json=bodies[0]).json()
        assert "fallback" not in back and back["missing_entities"] == ["customer", "terminal"]  # Redis answers again


def test_bad_redis_url_is_named(trained_copy: Path) -> None:
    use_redis(trained_copy, "http://example.com/0")
    with pytest.raises(LoopmlError, match=r"storage\.redis_url: http://example\.com/0 is not a Redis URL"):
        Project.load(trained_copy).online_store()


def test_pushed_events_reach_the_fallback_cache(trained_copy: Path, redis_server: RedisServer) -> None:
    use_redis(trained_copy, redis_server.url, "fallback")
    project = Project.load(trained_copy)
    store = project.online_store()
    rows = [{k: (None if v == "" else v) for k, v in row.items()} for row in stream_rows(4, start=50_000_000)]
    assert push_events(project.spec, store, "transactions", rows).written == {"customer": 4, "terminal": 4}
    redis_server.stop()
    with pytest.raises(OnlineStoreUnavailable):
        store.read_events("customer", [0])
    fallback = project.online_fallback()
    assert fallback is not None
    (log,) = fallback.read("customer", [0])
    assert log is not None and {50_000_000, 50_000_003} <= set(log.ids)
    store.close()
