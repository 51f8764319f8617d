"""Micro-batching over real HTTP: concurrent single predictions are scored together, each keeps its own answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from loopml.project import Project
from loopml.serve.runner import BackgroundServer, build_app


def body(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
        "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
        **extra,
    }


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
