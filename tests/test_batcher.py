"""Micro-batching over real HTTP: concurrent single predictions are scored together, each keeps its own answer."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from loopml.project import Project
from loopml.serve.errors import ModelFailure
from loopml.serve.schemas import Prediction, PredictRequest
from loopml.server import BackgroundServer, build_app
from served_fraud import body


def test_concurrent_requests_are_batched_and_answer_as_alone(trained_copy: Path) -> None:
    rows = pq.read_table(trained_copy / "data" / "live.parquet").slice(0, 400).to_pylist()
    app = build_app(Project.load(trained_copy))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        alone = [client.post("/v1/predict", json=body(r, request_id=f"a{i}")).json()["score"] for i, r in enumerate(rows[:40])]
        batcher = app.state.batcher
        before = batcher.batches

        def send(i: int) -> httpx.Response:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                row = rows[i % 40]
                bad = i % 50 == 7  # a few bad requests mixed in: only they fail
                payload = body(row, request_id=f"c{i}")
                if bad:
                    payload["entities"] = {"customer_id": row["customer_id"]}
                return c.post("/v1/predict", json=payload)

        with ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(send, range(400)))
        statuses = [r.status_code for r in answers]
        assert statuses.count(422) == 8 and statuses.count(200) == 392
        for i, response in enumerate(answers):
            if response.status_code == 200:
                assert response.json()["request_id"] == f"c{i}"
                assert response.json()["score"] == pytest.approx(alone[i % 40], rel=1e-12)
            else:
                assert "terminal_id" in response.text
        assert batcher.batches - before < 400  # requests were scored in groups


def test_a_failing_group_counts_only_the_requests_that_fail_alone(trained_copy: Path) -> None:
    """A model that fails on one request of a micro-batch: that request gets 503, the rest their scores, and the
    rollout (canary error rate, alerts) counts one failed request, not the failed group attempt as well."""
    project = Project.load(trained_copy)
    rows = pq.read_table(trained_copy / "data" / "live.parquet").slice(0, 8).to_pylist()
    app = build_app(project)
    service, batcher = app.state.service, app.state.batcher
    live = service.live_models["champion"]
    poison = 123456.0

    class FailsOnPoison:
        feature_names = live.predictor.feature_names

        def predict(self, matrix: Any) -> Any:
            scores = live.predictor.predict(matrix)
            scores[(matrix == poison).any(axis=1)] = float("nan")
            return scores

    service.live_models = {"champion": type(live)(live.version, FailsOnPoison(), "champion", live.inputs)}
    requests = [PredictRequest.model_validate(body(r)) for r in rows]
    requests[3].features["tx_amount"] = poison
    futures: list[Future[Prediction]] = [Future() for _ in requests]
    batcher._score([(r, False, f) for r, f in zip(requests, futures, strict=True)], explain=False)  # one group of 8
    failed = [i for i, f in enumerate(futures) if f.exception() is not None]
    assert failed == [3] and isinstance(futures[3].exception(), ModelFailure)
    assert all(0.0 <= futures[i].result().score <= 1.0 for i in range(8) if i != 3)
    counts = service.rollout.state()["stats"]["champion"]
    assert (counts["requests"], counts["errors"]) == (8, 1)
    assert [a.rule for a in project.alerts().active()] == ["model_failure"]
    batcher.close()
