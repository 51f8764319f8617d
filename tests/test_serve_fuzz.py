"""The HTTP API under hostile input, over real HTTP on loopback.

* A property-based fuzz run (schemathesis over the server's own ``/openapi.json``,
  valid and invalid requests to every operation): no 5xx (a healthy server
  has no reason for a 503), every status and body as documented, every 4xx an
  ``{"error", "details"}`` body that names the bad fields.
* Explicit cases a client gets wrong: malformed JSON, wrong types, missing
  and unknown fields, NaN/Infinity, oversized bodies with and without a
  ``Content-Length``, deep nesting, huge strings, lone surrogates, empty and
  oversized batches. None is scored or logged; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from specs import configure

TOKEN = "fuzz-token"
FUZZ_EXAMPLES = 200  # per generation mode: keeps the whole file well under a minute on two cores


@pytest.fixture(scope="module")
def served(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    """One server for the module (the fuzz run and the explicit cases only read the project)."""
    folder = tmp_path_factory.mktemp("fuzz") / "project"
    shutil.copytree(trained_project, folder)
    with (
        BackgroundServer(build_app(Project.load(folder), admin_token=TOKEN)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        yield client, folder


def good_body(project: Path, **extra: Any) -> dict[str, Any]:
    row = pq.read_table(project / "data" / "live.parquet").slice(0, 1).to_pylist()[0]
    return {
        "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
        "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
        **extra,
    }


def fields(response: httpx.Response) -> list[str]:
    """The fields an error body names (and the body is the documented error shape)."""
    data = response.json()
    assert set(data) == {"error", "details"} and data["error"], data
    return [d["field"] for d in data["details"]]


def logged(client: httpx.Client, project: Path) -> int:
    assert client.post("/v1/admin/flush", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    return Project.load(project).prediction_log().count()


def error_bodies_name_fields(ctx: Any, response: Any, case: Any) -> None:
    """A client error is JSON ``{"error", "details"}``; a body error (400/413/422) names at least one field."""
    if 400 <= response.status_code < 500:
        data = json.loads(response.content)
        assert isinstance(data.get("error"), str) and data["error"], data
        if response.status_code in (400, 413, 422):
            assert data["details"] and all(d["field"] for d in data["details"]), data


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    error_bodies_name_fields,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_fuzz_every_operation_from_the_openapi_document(served: tuple[httpx.Client, Path], mode: GenerationMode) -> None:
    client, _ = served
    url = str(client.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses: Counter[tuple[str, int]] = Counter()
    with requests.Session() as session:

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(mode))
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(base_url=url, session=session, checks=CHECKS, timeout=30)
            statuses[(case.operation.label, response.status_code)] += 1

        run()
    scored = statuses[("POST /v1/predict", 200)] + statuses[("POST /v1/predict/batch", 200)]
    refused = sum(n for (_, status), n in statuses.items() if status in (400, 422))
    if mode is GenerationMode.POSITIVE:  # the project-specific request schema lets the fuzzer reach the model
        assert scored >= FUZZ_EXAMPLES // 10, statuses
    else:
        assert refused >= FUZZ_EXAMPLES // 4, statuses
    metrics = client.get("/metrics").text
    assert not re.search(r'status="5\d\d"', metrics), "a 5xx was answered during the fuzz run"


def test_fuzz_admin_operations_with_the_token(trained_copy: Path) -> None:
    """The same properties for the admin API with a valid token (its own server: the calls change the rollout)."""
    with BackgroundServer(build_app(Project.load(trained_copy), admin_token=TOKEN)) as srv, requests.Session() as session:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json").include(path_regex="^/v1/admin/")
        statuses: Counter[int] = Counter()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        cases = schema.as_strategy(GenerationMode.POSITIVE, headers=auth) | schema.as_strategy(
            GenerationMode.NEGATIVE, headers=auth
        )

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(base_url=srv.url, session=session, checks=CHECKS, timeout=30)
            statuses[response.status_code] += 1

        run()
        assert statuses[200] > 0 and statuses[422] > 0, statuses  # the token was accepted; bad bodies were refused


def test_openapi_document_describes_this_project(served: tuple[httpx.Client, Path]) -> None:
    client, _ = served
    doc = client.get("/openapi.json").json()
    body = doc["components"]["schemas"]["PredictRequest"]
    assert body["properties"]["entities"]["required"] == ["customer_id", "terminal_id"]
    assert body["properties"]["features"]["additionalProperties"] is False
    assert set(body["properties"]["features"]["properties"]) == {"tx_amount", "tx_datetime"}
    assert doc["components"]["schemas"]["PredictBatchRequest"]["properties"]["instances"]["maxItems"] == 1000
    for status in ("400", "413", "422"):
        answer = doc["paths"]["/v1/predict"]["post"]["responses"][status]
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"entities": {"customer_id": 1, "terminal_id": 2}, "features": {}', "not valid JSON"),
        (b'{"request_id": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"entities": ' + b"1" * 5000 + b"}", "not valid JSON"),  # an integer past Python's 4300-digit limit
    ],
    ids=["syntax", "truncated", "not-utf8", "deeply-nested", "huge-integer"],
)
def test_unparsable_bodies_are_400_naming_the_body(served: tuple[httpx.Client, Path], raw: bytes, reason: str) -> None:
    client, _ = served
    r = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fields(r) == ["body"] and reason in r.json()["details"][0]["message"], r.json()


E = {"customer_id": 1, "terminal_id": 2}
BAD_BODIES: list[tuple[str, dict[str, Any] | list[Any], str]] = [
    ("entities-a-list", {"entities": [1, 2], "features": {}}, "entities"),
    ("features-a-string", {"entities": E, "features": "tx_amount=3"}, "features"),
    ("entity-a-list", {"entities": {"customer_id": [1], "terminal_id": 2}}, "entities.customer_id"),
    ("entity-a-boolean", {"entities": {"customer_id": True, "terminal_id": 2}}, "entities.customer_id"),
    ("feature-an-object", {"entities": E, "features": {"tx_amount": {"v": 1}}}, "features.tx_amount"),
    ("request-id-a-number", {"entities": E, "request_id": 7}, "request_id"),
    ("not-an-object", [1, 2, 3], "body"),
    ("no-entities", {"features": {"tx_amount": 1.0}}, "entities"),
    ("missing-entity-key", {"entities": {"customer_id": 1}, "features": {"tx_amount": 1.0}}, "entities.terminal_id"),
    ("missing-feature", {"entities": E, "features": {"tx_datetime": "2025-06-01"}}, "features.tx_amount"),
    ("unknown-top-level", {"entities": E, "x": 1}, "x"),
    ("unknown-entity", {"entities": {**E, "shop": 3}}, "entities.shop"),
    ("unknown-feature", {"entities": E, "features": {"colour": "red"}}, "features.colour"),
    ("huge-request-id", {"entities": E, "request_id": "r" * 300_000}, "request_id"),
    ("huge-feature-string", {"entities": E, "features": {"tx_amount": "9" * 500_000}}, "features.tx_amount"),
    ("huge-entity-key", {"entities": {"k" * 10_000: 1}}, "entities"),
    ("nested-900-deep", {"entities": E, "features": {"tx_amount": json.loads("[" * 900 + "]" * 900)}}, "features.tx_amount"),
]


@pytest.mark.parametrize(("payload", "field"), [(b, f) for _, b, f in BAD_BODIES], ids=[i for i, _, _ in BAD_BODIES])
def test_invalid_bodies_are_422_naming_the_field(served: tuple[httpx.Client, Path], payload: Any, field: str) -> None:
    client, _ = served
    r = client.post("/v1/predict", json=payload)
    assert r.status_code == 422, r.text
    named = fields(r)
    assert any(f == field or f.startswith(field + ".") for f in named), named
    assert all(len(f) <= 200 for f in named) and len(r.content) < 20_000  # client text is echoed shortened


def test_unknown_features_are_named_in_a_batch(served: tuple[httpx.Client, Path]) -> None:
    client, project = served
    good = good_body(project)
    bad = {**good, "features": {**good["features"], "colour": "red", "size": 3}}
    r = client.post("/v1/predict/batch", json={"instances": [good, bad]})
    assert r.status_code == 422 and fields(r) == ["instances.1.features.colour", "instances.1.features.size"], r.text
    assert "expected: tx_amount, tx_datetime" in r.json()["details"][0]["message"]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_422_naming_the_field_and_never_scored(served: tuple[httpx.Client, Path], token: bytes) -> None:
    client, project = served
    before = logged(client, project)
    good = json.dumps(good_body(project)).encode()
    amount = re.compile(rb'"tx_amount": [^,}]+')
    cases = {
        "features.tx_amount": amount.sub(b'"tx_amount": ' + token, good),
        "entities.customer_id": re.sub(rb'"customer_id": \d+', b'"customer_id": ' + token, good),
        "instances.1.features.tx_amount": b'{"instances": [' + good + b", " + amount.sub(b'"tx_amount": ' + token, good) + b"]}",
        "label": b'{"request_id": "a", "label": ' + token + b"}",
    }
    for field, raw in cases.items():
        path = "/v1/feedback" if field == "label" else "/v1/predict/batch" if field.startswith("instances") else "/v1/predict"
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (field, r.text)
        assert fields(r) == [field], r.json()
        assert token.decode() in r.json()["details"][0]["message"]
    assert logged(client, project) == before
    as_text = client.post("/v1/predict", json=good_body(project, request_id="NaN"))  # the word inside a string is fine
    assert as_text.status_code == 200 and as_text.json()["request_id"] == "NaN"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"entities": {"customer_id": 1, "terminal_id": 2}, "request_id": "a\\ud800b"}', "request_id"),
        (b'{"entities": {"customer_id": "\\udfff", "terminal_id": 2}}', "entities.customer_id"),
        (b'{"entities": {"customer_id": 1, "terminal_id": 2}, "features": {"\\ud800": 1}}', "features."),
        (b'{"request_id": "\\ud800", "label": 1}', "request_id"),
    ],
    ids=["request-id", "entity-value", "feature-name", "feedback-id"],
)
def test_lone_surrogates_are_422_not_500(served: tuple[httpx.Client, Path], raw: bytes, field: str) -> None:
    """``"\\ud800"`` is valid JSON but not Unicode: it could not be written to the response or the prediction log."""
    client, _ = served
    path = "/v1/feedback" if b"label" in raw else "/v1/predict"
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(f.startswith(field) for f in fields(r)), r.json()


def chunks(total: int, size: int = 65_536) -> Iterator[bytes]:
    yield b'{"entities": {"customer_id": 1, "terminal_id": 2}, "request_id": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def test_oversized_bodies_are_413_with_or_without_a_content_length(served: tuple[httpx.Client, Path]) -> None:
    client, project = served
    declared = client.post("/v1/predict", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"})
    assert declared.status_code == 413 and fields(declared) == ["body"]
    chunked = client.post("/v1/predict", content=chunks(2_000_000), headers={"content-type": "application/json"})
    assert chunked.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and "1048576" in chunked.json()["error"], chunked.text
    # far past the drain allowance: a 413 or a closed socket, and the server goes on serving
    with httpx.Client(base_url=str(client.base_url), timeout=30) as other, contextlib.suppress(httpx.TransportError):
        assert other.post("/v1/predict", content=chunks(40_000_000)).status_code == 413
    assert client.post("/v1/predict", json=good_body(project)).status_code == 200


def test_empty_batch_and_other_methods(served: tuple[httpx.Client, Path]) -> None:
    client, _ = served
    assert client.post("/v1/predict/batch", json={"instances": []}).json() == {"predictions": []}
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and "/v1/nothing-here" in missing.json()["error"]
    wrong = client.get("/v1/predict")
    assert wrong.status_code == 405 and wrong.json()["error"]


def test_limits_come_from_loopml_yaml(trained_copy: Path) -> None:
    configure(trained_copy, serving={"max_batch": 3, "max_body_bytes": 4096})
    with (
        BackgroundServer(build_app(Project.load(trained_copy))) as srv,
        httpx.Client(base_url=srv.url, timeout=10) as client,
    ):
        one = good_body(trained_copy)
        assert client.post("/v1/predict/batch", json={"instances": [one] * 3}).status_code == 200
        over = client.post("/v1/predict/batch", json={"instances": [one] * 4})
        assert over.status_code == 422 and fields(over) == ["instances"] and "serving.max_batch" in over.text
        big = client.post("/v1/predict", json=good_body(trained_copy, request_id="r" * 5000))
        assert big.status_code == 413 and "4096" in big.json()["error"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert schema["PredictBatchRequest"]["properties"]["instances"]["maxItems"] == 3
