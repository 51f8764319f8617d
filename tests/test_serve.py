"""The online service over real HTTP on loopback: contract endpoints, bad input, admin, hot swap."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from served_fraud import add_version, body, live_rows
from specs import REMOVE, configure, write_fraud_project
from waiting import wait_until

TOKEN = "test-token"


@pytest.fixture
def server(trained_copy: Path) -> Iterator[tuple[httpx.Client, Path]]:
    with (
        BackgroundServer(build_app(Project.load(trained_copy), admin_token=TOKEN)) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        yield client, trained_copy


def test_health_ready_and_predict(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    row = live_rows(project, 1)[0]
    r = client.post("/v1/predict", json=body(row, request_id="abc"))
    assert r.status_code == 200
    data = r.json()
    assert data["request_id"] == "abc" and data["model_version"] == 1 and data["variant"] == "champion"
    assert 0.0 <= data["score"] <= 1.0 and "explanation" not in data


def test_explanation_adds_up_to_the_score(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    data = client.post("/v1/predict?explain=true", json=body(live_rows(project, 1)[0])).json()
    logit = math.log(data["score"] / (1 - data["score"]))
    assert sum(data["explanation"].values()) == pytest.approx(logit, rel=1e-6, abs=1e-6)
    assert "customer_count_7d" in data["explanation"]


def test_batch_keeps_order_and_matches_single(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    rows = live_rows(project, 20)
    batch = client.post("/v1/predict/batch", json={"instances": [body(r, request_id=str(i)) for i, r in enumerate(rows)]})
    assert batch.status_code == 200
    preds = batch.json()["predictions"]
    assert [p["request_id"] for p in preds] == [str(i) for i in range(20)]
    single = client.post("/v1/predict", json=body(rows[7])).json()
    assert single["score"] == pytest.approx(preds[7]["score"], rel=1e-12)


def test_fast_lane_answers_as_the_full_app_does(server: tuple[httpx.Client, Path]) -> None:
    """The same body sent with a Content-Length (fast lane) and chunked (full app) gets the same answer, both counted."""
    client, project = server
    rows = live_rows(project, 5)
    for i, row in enumerate(rows):
        raw = json.dumps(body(row, request_id=f"r{i}")).encode()
        lane = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
        full = client.post("/v1/predict", content=iter([raw[:10], raw[10:]]), headers={"content-type": "application/json"})
        assert "content-length" not in full.request.headers  # chunked: the lane leaves it to the full app
        assert lane.status_code == full.status_code == 200
        assert lane.json() == full.json() and lane.headers["content-type"] == full.headers["content-type"]
    explained = client.post("/v1/predict?explain=true", json=body(rows[0])).json()
    assert explained["score"] == pytest.approx(client.post("/v1/predict?explain=1", json=body(rows[0])).json()["score"])
    metrics = client.get("/metrics").text
    assert 'loopml_requests_total{endpoint="/v1/predict",status="200"} 12.0' in metrics  # 5 + 5 + 2
    assert 'loopml_predictions_total{variant="champion"} 12.0' in metrics


def test_unknown_entity_gets_defaults_and_a_flag(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    row = dict(live_rows(project, 1)[0], customer_id=10**9)
    data = client.post("/v1/predict", json=body(row)).json()
    assert data["missing_entities"] == ["customer"] and 0 <= data["score"] <= 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (
            {"entities": {"customer_id": 1}, "features": {"tx_amount": 1.0, "tx_datetime": "2025-06-01T00:00:00"}},
            "entities.terminal_id",
        ),
        (
            {
                "entities": {"customer_id": 1, "terminal_id": 2, "shop": 3},
                "features": {"tx_amount": 1.0, "tx_datetime": "2025-06-01"},
            },
            "entities.shop",
        ),
        ({"entities": {"customer_id": [1], "terminal_id": 2}, "features": {}}, "entities.customer_id"),
        (
            {"entities": {"customer_id": 1, "terminal_id": 2}, "features": {"tx_datetime": "2025-06-01T00:00:00"}},
            "features.tx_amount",
        ),
        (
            {"entities": {"customer_id": 1, "terminal_id": 2}, "features": {"tx_amount": "lots", "tx_datetime": "2025-06-01"}},
            "features.tx_amount",
        ),
        (
            {"entities": {"customer_id": 1, "terminal_id": 2}, "features": {"tx_amount": 1.0, "tx_datetime": "yesterday"}},
            "features.tx_datetime",
        ),
        (
            {
                "entities": {"customer_id": 1, "terminal_id": 2},
                "features": {"tx_amount": 1.0, "tx_datetime": "2025-06-01"},
                "x": 1,
            },
            "x",
        ),
        ({"features": {}}, "entities"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(server: tuple[httpx.Client, Path], payload: dict[str, Any], field: str) -> None:
    client, _ = server
    r = client.post("/v1/predict", json=payload)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["details"]], r.json()


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"entities": {"customer_id": 1, "terminal_id": 2}, "features": {"tx_amount": NaN}}', b"[]", b""]
)
def test_malformed_json_and_nan_are_4xx(server: tuple[httpx.Client, Path], raw: bytes) -> None:
    client, _ = server
    r = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["error"]


def test_oversized_body_is_413(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    r = client.post("/v1/predict", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_feedback_is_logged_and_joined(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    rows = live_rows(project, 5)
    ids = [client.post("/v1/predict", json=body(r)).json()["request_id"] for r in rows]
    for request_id in ids:
        assert client.post("/v1/feedback", json={"request_id": request_id, "label": 1}).status_code == 202
    assert client.post("/v1/feedback", json={"request_id": "x"}).status_code == 422
    assert client.post("/v1/admin/flush", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with Project.load(project).prediction_log().connect() as con:
        labelled = con.execute("SELECT count(*) FROM labelled WHERE label = 1").fetchone()
    assert labelled == (5,)


def test_admin_needs_the_token(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_models_metrics_openapi_and_ui(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    client.post("/v1/predict", json=body(live_rows(project, 1)[0]))
    models = client.get("/v1/models").json()
    assert models["live_version"] == 1 and models["traffic"]["champion"]["version"] == 1
    metrics = client.get("/metrics").text
    assert 'loopml_requests_total{endpoint="/v1/predict",status="200"}' in metrics and "loopml_model_version 1.0" in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/predict/batch", "/v1/feedback", "/v1/models"} <= set(paths)
    assert "Model versions" in client.get("/ui").text


def test_hot_swap_fails_no_request(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    rows = live_rows(project, 50)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as c:
            while not stop.is_set():
                for r in rows:
                    statuses.append(c.post("/v1/predict", json=body(r)).status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        registry = Project.load(project).registry()
        assert add_version(registry, "next") == 2  # a second version, as a training run would register it
        wait_until(lambda: len(statuses) >= 20, message="requests before the swap")
        registry.set_alias("champion", 2, reason="test")
        assert client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).json()["model_version"] == 2
        swapped = len(statuses)
        wait_until(lambda: len(statuses) >= swapped + 20, message="requests after the swap")
    finally:
        stop.set()
        worker.join()
    assert set(statuses) == {200}
    assert client.post("/v1/predict", json=body(rows[0])).json()["model_version"] == 2


def test_not_ready_without_a_model(tmp_path: Path) -> None:
    write_fraud_project(tmp_path / "p", world={"days": 5, "customers": 50, "terminals": 100, "seed": 0, "live_days": 0})
    with BackgroundServer(build_app(Project.load(tmp_path / "p"))) as srv:
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503
        p = httpx.post(srv.url + "/v1/predict", json={"entities": {"customer_id": 1, "terminal_id": 1}, "features": {}})
        assert p.status_code == 503 and "no model" in p.json()["error"]


def test_explain_on_a_model_without_contributions_is_a_4xx(trained_copy: Path) -> None:
    configure(
        trained_copy, model={"type": "sklearn:sklearn.linear_model.LogisticRegression", "params": REMOVE, "select": "model"}
    )
    project = Project.load(trained_copy)
    project.registry().set_alias("champion", project.train().model_version, "test: an sklearn champion")
    with (
        BackgroundServer(build_app(Project.load(trained_copy), admin_token=TOKEN)) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        row = live_rows(trained_copy, 1)[0]
        assert client.post("/v1/predict", json=body(row)).status_code == 200
        answer = client.post("/v1/predict?explain=true", json=body(row))
        assert answer.status_code == 422, answer.text
        assert "query.explain" in answer.text and "cannot explain" in answer.text


def _lane_and_full(client: httpx.Client, payload: dict[str, Any]) -> httpx.Response:
    """POST /v1/predict with a Content-Length (the fast lane) and chunked (the full app): the same answer, returned."""
    raw = json.dumps({"request_id": "same", **payload}).encode()
    headers = {"content-type": "application/json"}
    lane = client.post("/v1/predict", content=raw, headers=headers)
    full = client.post("/v1/predict", content=iter([raw[:10], raw[10:]]), headers=headers)
    assert (lane.status_code, lane.json()) == (full.status_code, full.json())
    return lane


def test_an_entity_value_of_the_wrong_type_is_422_not_a_missing_entity(server: tuple[httpx.Client, Path]) -> None:
    """customer_id is an int column: "abc" can name no customer, so it is a bad field, not an unknown customer."""
    client, project = server
    row = live_rows(project, 1)[0]
    wrong = body(row)
    wrong["entities"]["customer_id"] = "abc"
    r = _lane_and_full(client, wrong)
    assert r.status_code == 422, r.text
    assert [d["field"] for d in r.json()["details"]] == ["entities.customer_id"]
    assert "integer" in r.json()["details"][0]["message"] and "'abc'" in r.json()["details"][0]["message"]
    as_text = body(row)
    as_text["entities"]["customer_id"] = str(row["customer_id"])  # an integer sent as text is the same customer
    answer = _lane_and_full(client, as_text)
    assert answer.status_code == 200 and answer.json()["missing_entities"] == []
    assert answer.json()["score"] == client.post("/v1/predict", json=body(row)).json()["score"]


def test_every_bad_field_is_named_at_once(server: tuple[httpx.Client, Path]) -> None:
    client, project = server
    everything = {
        "entities": {"customer_id": "abc", "shop": 1},
        "features": {"tx_amount": "lots", "tx_datetime": "yesterday", "colour": "red"},
    }
    r = _lane_and_full(client, everything)
    assert r.status_code == 422
    named = {d["field"] for d in r.json()["details"]}
    expected = {"entities.customer_id", "entities.terminal_id", "entities.shop"}
    assert named == expected | {"features.tx_amount", "features.tx_datetime", "features.colour"}, r.json()
    values = body(live_rows(project, 1)[0])
    values["features"] = {"tx_amount": "lots", "tx_datetime": "yesterday"}  # both only found while assembling
    r = _lane_and_full(client, values)
    assert r.status_code == 422 and [d["field"] for d in r.json()["details"]] == ["features.tx_amount", "features.tx_datetime"]
    rows = [body(row) for row in live_rows(project, 3)]
    rows[0]["features"]["tx_amount"] = "lots"
    rows[2]["features"]["tx_datetime"] = "yesterday"
    r = client.post("/v1/predict/batch", json={"instances": rows})
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["details"]] == ["instances.0.features.tx_amount", "instances.2.features.tx_datetime"]
    mixed = {"entities": {"customer_id": [1], "terminal_id": 2}, "features": {"tx_amount": "lots", "tx_datetime": "2025-06-01"}}
    r = client.post("/v1/predict", json=mixed)  # a type error pydantic finds and a value error found later: both named
    assert r.status_code == 422 and {d["field"] for d in r.json()["details"]} == {"entities.customer_id", "features.tx_amount"}


def test_the_advice_for_a_number_too_large_is_one_the_server_accepts(trained_copy: Path) -> None:
    """1e400 is refused; the answer suggests null for a missing value only where null is accepted (optional features)."""
    spec = trained_copy / "loopml.yaml"
    spec.write_text(spec.read_text().replace("tx_amount: {type: float}", "tx_amount: {type: float, required: false}"))
    with (
        BackgroundServer(build_app(Project.load(trained_copy))) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        good = json.dumps(body(live_rows(trained_copy, 1)[0])).encode()
        optional = re.sub(rb'"tx_amount": [^,}]+', b'"tx_amount": 1e400', good)
        r = client.post("/v1/predict", content=optional, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "features.tx_amount"
        assert "null for a missing value" in r.json()["details"][0]["message"]
        followed = re.sub(rb'"tx_amount": [^,}]+', b'"tx_amount": null', good)
        assert client.post("/v1/predict", content=followed, headers={"content-type": "application/json"}).status_code == 200
        required = re.sub(rb'"tx_datetime": "[^"]+"', b'"tx_datetime": 1e400', good)
        r = client.post("/v1/predict", content=required, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["details"][0]["field"] == "features.tx_datetime"
        message = r.json()["details"][0]["message"]
        assert "null" not in message and "required" in message, message
        entity = re.sub(rb'"customer_id": \d+', b'"customer_id": 1e400', good)
        r = client.post("/v1/predict", content=entity, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "null" not in r.json()["details"][0]["message"]
