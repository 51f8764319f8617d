"""Rollout policies: the controller's logic, then A/B, shadow, canary, bandit and blue-green over real HTTP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from loopml.project import Project
from loopml.rollout.policy import CHALLENGER, CHAMPION, RolloutController, unit_hash
from loopml.server import BackgroundServer, build_app
from loopml.spec.model import Rollout
from served_fraud import add_version, body, live_rows
from waiting import wait_until

TOKEN = "rollout-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def controller(**settings: Any) -> RolloutController:
    return RolloutController(Rollout.model_validate(settings), latency_budget_ms=10.0, seed=7)


# --- the controller -------------------------------------------------------------------------


def test_ab_is_deterministic_and_follows_the_weights() -> None:
    ctl = controller(policy="ab", variants={"a": {"alias": "champion", "weight": 3}, "b": {"alias": "challenger", "weight": 1}})
    picks = [ctl.route(f"customer-{i}").primary for i in range(20_000)]
    share = Counter(picks)["a"] / len(picks)
    assert share == pytest.approx(0.75, abs=0.015)
    again = controller(policy="ab", variants={"a": {"alias": "champion", "weight": 3}, "b": {"alias": "challenger", "weight": 1}})
    assert [again.route(f"customer-{i}").primary for i in range(500)] == picks[:500]  # same unit, same variant
    assert ctl.weights() == {"a": 0.75, "b": 0.25}


def test_unit_hash_is_uniform() -> None:
    values = np.array([unit_hash(i) for i in range(10_000)])
    assert values.min() >= 0 and values.max() < 1
    assert np.histogram(values, bins=10, range=(0, 1))[0].min() > 900


def healthy(ctl: RolloutController, n: int, rng: np.random.Generator, shift: float = 0.0) -> list[Any]:
    decisions = []
    for i in range(n):
        route = ctl.route(f"u{rng.integers(1 << 30)}-{i}")
        score = float(np.clip(rng.beta(2, 20) + (shift if route.primary == CHALLENGER else 0.0), 0, 1))
        decision = ctl.record(route.primary, f"r{i}-{rng.integers(1 << 30)}", 1.0, score)
        if decision is not None:
            decisions.append(decision)
    return decisions


def test_canary_walks_the_steps_and_promotes() -> None:
    ctl = controller(policy="canary", canary={"steps": [0.1, 0.5, 1.0], "min_requests": 100})
    rng = np.random.default_rng(0)
    decisions = healthy(ctl, 5_000, rng)
    assert [d.action for d in decisions] == ["step", "step", "promote"]
    assert ctl.policy == "single" and ctl.weights() == {CHAMPION: 1.0}


def test_canary_rolls_back_a_failing_challenger_within_a_step() -> None:
    ctl = controller(policy="canary", canary={"steps": [0.5, 1.0], "min_requests": 200, "max_error_rate": 0.01})
    decision = None
    for i in range(400):
        route = ctl.route(f"c{i}")
        failed = route.primary == CHALLENGER
        decision = ctl.record(route.primary, str(i), 1.0, None if failed else 0.1) or decision
        if decision is not None:
            break
    assert decision is not None and decision.action == "rollback" and "error rate" in decision.reason
    assert ctl.policy == "single"


def test_canary_rolls_back_on_score_shift_and_latency() -> None:
    shifted = controller(policy="canary", canary={"steps": [0.5, 1.0], "min_requests": 300})
    decisions = healthy(shifted, 3_000, np.random.default_rng(1), shift=0.4)
    assert decisions[-1].action == "rollback" and "PSI" in decisions[-1].reason

    slow = controller(policy="canary", canary={"steps": [0.5, 1.0], "min_requests": 50, "max_p99_ms": 5})
    decision = None
    for i in range(400):
        route = slow.route(f"s{i}")
        latency = 50.0 if route.primary == CHALLENGER else 1.0
        decision = slow.record(route.primary, str(i), latency, 0.1) or decision
    assert decision is not None and decision.action == "rollback" and "p99" in decision.reason


def test_canary_rolls_back_when_labels_show_a_worse_model() -> None:
    ctl = controller(policy="canary", canary={"steps": [0.5, 1.0], "min_requests": 10_000, "min_labels": 200})
    rng = np.random.default_rng(2)
    decision = None
    for i in range(3_000):
        route = ctl.route(f"m{i}")
        label = float(rng.random() < 0.2)
        informative = 0.2 + 0.6 * label + rng.normal(0, 0.05)
        score = float(np.clip(rng.random() if route.primary == CHALLENGER else informative, 0, 1))
        ctl.record(route.primary, f"id{i}", 1.0, score)
        decision = ctl.feedback(f"id{i}", label) or decision
        if decision is not None:
            break
    assert decision is not None and decision.action == "rollback" and "average precision" in decision.reason


def test_bandit_moves_traffic_to_the_better_arm_and_keeps_the_floor() -> None:
    ctl = controller(
        policy="bandit", variants={"a": {"alias": "champion"}, "b": {"alias": "challenger"}}, bandit={"min_share": 0.05}
    )
    rng = np.random.default_rng(3)
    rate = {"a": 0.05, "b": 0.15}
    picks = []
    for i in range(6_000):
        arm = ctl.route(i).primary
        picks.append(arm)
        ctl.record(arm, f"b{i}", 1.0, 0.5)
        ctl.feedback(f"b{i}", float(rng.random() < rate[arm]))
    late = Counter(picks[-2_000:])
    assert late["b"] / 2_000 > 0.8
    assert late["a"] / 2_000 >= 0.02  # the floor: min_share (5 %) times ~half the draws that land on "a"
    assert ctl.weights()["a"] >= 0.05 - 1e-9


def test_bluegreen_switches_and_switches_back() -> None:
    ctl = controller(policy="bluegreen")
    assert ctl.route("x").primary == CHAMPION
    assert ctl.switch() == CHALLENGER and ctl.route("x").primary == CHALLENGER
    assert ctl.weights() == {CHAMPION: 0.0, CHALLENGER: 1.0}
    assert ctl.switch() == CHAMPION and ctl.route("x").primary == CHAMPION


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match=r"at least two rollout\.variants"):
        Rollout.model_validate({"policy": "ab", "variants": {"a": {"alias": "champion"}}})
    with pytest.raises(ValueError, match="steps must increase"):
        Rollout.model_validate({"policy": "canary", "canary": {"steps": [0.5, 0.1]}})


# --- over HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def served(trained_copy: Path) -> Iterator[tuple[httpx.Client, Project, int, BackgroundServer]]:
    project = Project.load(trained_copy)
    challenger = add_version(project.registry(), "challenger")
    app = build_app(project, admin_token=TOKEN)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client, project, challenger, srv


def rows(project: Project, n: int) -> list[dict[str, Any]]:
    return live_rows(project.layout.root, n)


def test_admin_needs_the_token(served: tuple[httpx.Client, Project, int, BackgroundServer]) -> None:
    client, *_ = served
    assert client.post("/v1/admin/rollout", json={"policy": "ab"}).status_code == 401
    assert client.get("/v1/admin/rollout", headers={"Authorization": "Bearer wrong"}).status_code == 401
    bad = client.post("/v1/admin/rollout", json={"policy": "sometimes"}, headers=AUTH)
    assert bad.status_code == 422 and "policy" in bad.text


def test_ab_over_http_is_sticky_per_customer(served: tuple[httpx.Client, Project, int, BackgroundServer]) -> None:
    client, project, challenger, _ = served
    ab = {"policy": "ab", "variants": {"control": {"alias": "champion"}, "treatment": {"alias": "challenger"}}}
    assert client.post("/v1/admin/rollout", json=ab, headers=AUTH).status_code == 200
    seen: dict[Any, set[str]] = {}
    versions = {}
    for row in rows(project, 200):
        data = client.post("/v1/predict", json=body(row)).json()
        seen.setdefault(row["customer_id"], set()).add(data["variant"])
        versions[data["variant"]] = data["model_version"]
    assert all(len(v) == 1 for v in seen.values())
    assert versions == {"control": 1, "treatment": challenger}
    traffic = client.get("/v1/models").json()["traffic"]
    assert traffic["control"]["weight"] == pytest.approx(0.5) and traffic["treatment"]["version"] == challenger


def test_shadow_scores_after_the_response_and_logs_both(served: tuple[httpx.Client, Project, int, BackgroundServer]) -> None:
    client, project, challenger, _ = served
    assert client.post("/v1/admin/rollout", json={"policy": "shadow"}, headers=AUTH).status_code == 200
    sent = rows(project, 30)
    for i, row in enumerate(sent):
        data = client.post("/v1/predict", json=body(row, request_id=f"s{i}")).json()
        assert data["variant"] == "champion" and data["model_version"] == 1

    def logged() -> list[Any]:
        assert client.post("/v1/admin/flush", headers=AUTH).status_code == 200
        with project.prediction_log().connect() as con:
            return con.execute("SELECT variant, model_version, count(*) FROM predictions GROUP BY 1, 2 ORDER BY 1").fetchall()

    wait_until(lambda: sum(n for *_, n in logged()) >= 60, message="the 30 shadow predictions, scored after the responses")
    assert logged() == [("challenger", challenger, 30), ("champion", 1, 30)]


def test_canary_over_http_rolls_back_a_broken_model_and_alerts(
    served: tuple[httpx.Client, Project, int, BackgroundServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, project, challenger, srv = served
    canary = {"policy": "canary", "canary": {"steps": [0.5, 1.0], "min_requests": 20}}
    assert client.post("/v1/admin/rollout", json=canary, headers=AUTH).status_code == 200
    service = srv.server.config.app.state.service
    broken = service.live_models[CHALLENGER]

    class Broken:
        feature_names = broken.predictor.feature_names

        def predict(self, matrix: Any) -> Any:
            return np.full(len(matrix), np.nan)

    monkeypatch.setitem(service.live_models, CHALLENGER, type(broken)(broken.version, Broken(), CHALLENGER, broken.inputs))  # type: ignore[arg-type]
    statuses = Counter()
    for row in rows(project, 60):
        response = client.post("/v1/predict", json=body(row))
        statuses[response.status_code] += 1
        if response.status_code == 503:
            assert "non-finite" in response.json()["error"]
    assert 0 < statuses[503] <= 3 and statuses[200] > 0  # rolled back after the first failures
    state = client.get("/v1/admin/rollout", headers=AUTH).json()
    assert state["policy"] == "single"
    assert any(e["action"] == "rollback" and e["version"] == challenger for e in state["events"])
    assert project.registry().alias("champion").version == 1  # type: ignore[union-attr]
    rules = {a.rule for a in project.alerts().active()}
    assert {"canary_rollback", "model_failure"} <= rules


def test_canary_over_http_promotes_a_healthy_challenger(served: tuple[httpx.Client, Project, int, BackgroundServer]) -> None:
    client, project, challenger, _ = served
    canary = {"policy": "canary", "canary": {"steps": [0.5, 1.0], "min_requests": 15, "max_score_psi": 5.0}}
    assert client.post("/v1/admin/rollout", json=canary, headers=AUTH).status_code == 200
    for row in rows(project, 200):
        assert client.post("/v1/predict", json=body(row)).status_code == 200
    assert project.registry().alias("champion").version == challenger  # type: ignore[union-attr]
    models = client.get("/v1/models").json()
    assert models["policy"] == "single" and models["live_version"] == challenger


def test_bluegreen_switch_over_http(served: tuple[httpx.Client, Project, int, BackgroundServer]) -> None:
    client, project, challenger, _ = served
    assert client.post("/v1/admin/rollout", json={"policy": "bluegreen"}, headers=AUTH).status_code == 200
    row = rows(project, 1)[0]
    assert client.post("/v1/predict", json=body(row)).json()["model_version"] == 1
    assert client.post("/v1/admin/switch", headers=AUTH).json()["live"] == "challenger"
    assert client.post("/v1/predict", json=body(row)).json()["model_version"] == challenger
    assert client.post("/v1/admin/switch", headers=AUTH).json()["live"] == "champion"
    assert client.post("/v1/predict", json=body(row)).json()["model_version"] == 1


def test_hot_swap_when_the_alias_moves_fails_no_request(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    registry = project.registry()
    second = add_version(registry, "next")
    app = build_app(project, admin_token=TOKEN)
    app.state.service.registry = registry
    failures = 0
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        sample = rows(project, 40)
        versions = []
        for i, row in enumerate(sample):
            if i == 20:
                registry.set_alias("champion", second, "test: move the alias")
                client.post("/v1/admin/reload", headers=AUTH)
            response = client.post("/v1/predict", json=body(row))
            failures += response.status_code != 200
            versions.append(response.json().get("model_version"))
    assert failures == 0
    assert versions[:20] == [1] * 20 and versions[20:] == [second] * 20


def test_no_token_is_a_401_even_with_a_bad_body(served: tuple[httpx.Client, Project, int, BackgroundServer]) -> None:
    client, *_ = served
    for path, payload in [("/v1/admin/rollout", {"policy": "sometimes"}), ("/v1/admin/rollback", [1, 2])]:
        response = client.post(path, json=payload)
        assert response.status_code == 401 and "Bearer" in response.json()["error"]
