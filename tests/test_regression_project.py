"""A project scaffolded from a plain regression file, as users have them: no entity, no timestamp, targets at zero.

Trained once for the module through the command line (``init --data``, ``ingest``, ``features build``,
``train``); the tests read its registry, serve it and monitor what was served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.project import Project
from loopml.server import BackgroundServer, build_app

runner = CliRunner()
ROWS = 600
ZEROS = 30  # targets at exactly zero: a count of something, a refund, a quantity


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The trained project and its ``train --json`` document."""
    folder = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=ROWS), rng.uniform(0, 5, size=ROWS)
    y = np.round(np.clip(3 + 2 * x1 + x2 + rng.normal(size=ROWS), 0, None))
    y[:ZEROS] = 0
    lines = ["x1,x2,y", *(f"{a:.6f},{b:.6f},{c:g}" for a, b, c in zip(x1, x2, y, strict=True))]
    (folder / "sales.csv").write_text("\n".join(lines) + "\n")
    project = folder / "project"
    code, _, err = invoke("init", str(project), "--data", str(folder / "sales.csv"), "--label", "y", "--task", "regression")
    assert code == 0, err
    for command in (["ingest"], ["features", "build"]):
        code, _, err = invoke(*command, "--project", str(project))
        assert code == 0, err
    code, out, err = invoke("train", "--json", "--project", str(project))
    assert code == 0, err
    yield project, json.loads(out)


def test_models_list_shows_the_primary_metric_of_the_task(regression: tuple[Path, dict[str, Any]]) -> None:
    project, trained = regression
    code, out, err = invoke("models", "list", "--project", str(project))
    assert code == 0, err
    assert "average_precision" not in out and "test rmse" in out, out
    assert f"{trained['metrics']['test']['rmse']:.4f}" in out


def test_mape_is_not_reported_where_targets_are_zero(regression: tuple[Path, dict[str, Any]]) -> None:
    _, trained = regression
    for split in ("valid", "test"):
        assert trained["metrics"][split]["mape"] is None, trained["metrics"]
        assert trained["metrics"][split]["rmse"] is not None
    assert any("mape on test is undefined" in w and "zero" in w for w in trained["warnings"]), trained["warnings"]


def test_a_project_without_entities_is_served_without_them(regression: tuple[Path, dict[str, Any]]) -> None:
    project, _ = regression
    with BackgroundServer(build_app(Project.load(project))) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        plain = client.post("/v1/predict", json={"features": {"x1": 0.5, "x2": 2.0}})
        assert plain.status_code == 200, plain.text
        empty = client.post("/v1/predict", json={"entities": {}, "features": {"x1": 0.5, "x2": 2.0}})
        assert empty.status_code == 200 and empty.json()["score"] == plain.json()["score"]
        unknown = client.post("/v1/predict", json={"entities": {"store_id": 1}, "features": {"x1": 0.5, "x2": 2.0}})
        assert unknown.status_code == 422 and [d["field"] for d in unknown.json()["details"]] == ["entities.store_id"]
        assert "no entities" in unknown.json()["details"][0]["message"]
        batch = client.post("/v1/predict/batch", json={"instances": [{"features": {"x1": 0.1, "x2": 1.0}}]})
        assert batch.status_code == 200 and len(batch.json()["predictions"]) == 1
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
        assert "entities" not in schema.get("required", []), schema


def test_monitoring_a_regression_model_shows_no_classification_estimate_and_no_mape_at_zero(
    regression: tuple[Path, dict[str, Any]],
) -> None:
    project, _ = regression
    with (
        BackgroundServer(build_app(Project.load(project), admin_token="t")) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        for i in range(150):  # live traffic whose labels include zeros
            request = {"entities": {}, "features": {"x1": i / 100, "x2": 2.0}, "request_id": f"r{i}"}
            assert client.post("/v1/predict", json=request).status_code == 200
            label = {"request_id": f"r{i}", "label": 0 if i % 10 == 0 else 3.0}
            assert client.post("/v1/feedback", json=label).status_code == 202
        assert client.post("/v1/admin/flush", headers={"Authorization": "Bearer t"}).status_code == 200
    code, out, err = invoke("monitor", "--project", str(project))
    assert code == 0, err
    assert "rmse: live" in out and "CBPE" not in out and "estimated" not in out, out
    code, out, err = invoke("monitor", "--json", "--project", str(project))
    assert code == 0, err
    performance = json.loads(out)["performance"]
    assert performance["status"] == "ok" and performance["estimation"] is None and "estimated" not in performance
    assert performance["metrics"]["mape"] is None and performance["metrics"]["rmse"] is not None
    assert any("mape" in note and "zero" in note for note in performance["notes"]), performance["notes"]
