"""The registry beyond its contract (tests/test_contract_registry.py): choosing the backend, PostgreSQL only, the gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.registry import (
    GateVerdict,
    Registry,
    SqliteRegistry,
    evaluate_gate,
    open_registry,
)
from loopml.registry.postgres import PostgresRegistry
from loopml.spec.environment import apply_environment
from loopml.spec.model import Spec
from loopml.train.artifact import LinearModel, sha256_file
from specs import minimal_spec_dict

SIGNATURE = [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}]
REFERENCE = {"bins": 10, "features": {"a": {"edges": [0.0], "fractions": [0.5, 0.5, 0.0]}}}

# The contract every backend keeps (register, aliases, rollback, hashes, crashes, concurrency, an
# unreachable registry) is tests/test_contract_registry.py; here: choosing the backend, what only
# PostgreSQL does, and the promotion gate.


def linear_artifact(folder: Path, coef: tuple[float, float] = (1.0, -1.0), name: str = "model.json") -> Path:
    model = LinearModel("binary", ["a", "b"], list(coef), 0.25, [0.0, 1.0], [1.0, 2.0], [0.0, 1.0])
    path = folder / name
    path.write_text(model.to_json(), encoding="utf-8")
    return path


def register(registry: Registry, tmp_path: Path) -> int:
    return registry.register(linear_artifact(tmp_path), "linear", {}, {}, SIGNATURE, {}).version


# -- PostgreSQL only: artifacts kept in the database too ----------------------------------------------------


def test_a_host_without_the_file_fetches_the_database_copy_hash_checked(postgres_url: str, tmp_path: Path) -> None:
    first = PostgresRegistry(postgres_url, tmp_path / "a")
    register(first, tmp_path)
    second = PostgresRegistry(postgres_url, tmp_path / "b")  # another host: an empty artifacts folder
    path = second.get(1).artifact_path
    assert not path.exists()
    assert second.load_predictor(1).predict(np.array([[1.0, 2.0]])).shape == (1,)
    assert sha256_file(path) == second.get(1).sha256
    path.write_text(path.read_text(encoding="utf-8").replace('"intercept": 0.25', '"intercept": 9.0'), encoding="utf-8")
    with pytest.raises(LoopmlError, match="does not match the registry's"):
        second.load_predictor(1)  # a local file that is there is checked, never silently replaced


# -- choosing the backend -----------------------------------------------------------------------------------


def test_open_registry_uses_the_spec_backend(tmp_path: Path) -> None:
    spec = Spec.model_validate(minimal_spec_dict())
    registry = open_registry(spec, Layout.for_project(tmp_path, spec))
    assert isinstance(registry, SqliteRegistry) and registry.path == tmp_path.resolve() / ".loopml" / "registry.sqlite"


def test_open_registry_postgres_from_spec_or_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = minimal_spec_dict(storage={"registry": "postgres"})
    spec = Spec.model_validate(raw)
    with pytest.raises(LoopmlError, match=r"storage\.registry_url: the postgres registry needs a URL"):
        open_registry(spec, Layout.for_project(tmp_path, spec))
    registry = open_registry(apply_environment(spec, {"LOOPML_REGISTRY_URL": postgres_url}), Layout.for_project(tmp_path, spec))
    assert isinstance(registry, PostgresRegistry) and registry.list() == []
    spec = Spec.model_validate({**raw, "storage": {"registry": "postgres", "registry_url": postgres_url}})
    assert register(open_registry(spec, Layout.for_project(tmp_path, spec)), tmp_path) == 1


# -- the promotion gate ---------------------------------------------------------------------------


def gate(candidate: float | None, champion: float | str | None, metric: str = "average_precision", **kw: Any) -> GateVerdict:
    args: dict[str, Any] = {"min_improvement": 0.0, "latency_p99_ms": 1.0, "budget_ms": 10.0, **kw}
    champ: dict[str, float | None] | None = None if isinstance(champion, str) else {metric: champion}
    return evaluate_gate({metric: candidate}, champ, metric, champion_version=3 if champ else None, **args)


def test_gate_rules() -> None:
    assert gate(0.5, "none").passed and "no champion yet" in gate(0.5, "none").reasons[-1]
    slow = gate(0.5, "none", latency_p99_ms=25.0)
    assert not slow.passed and "exceeds serving.latency_budget_ms 10 ms" in slow.reasons[0]
    assert gate(0.6, 0.5).passed
    same = gate(0.5, 0.5)  # retrained on unchanged data: the champion's twin is not promoted
    assert not same.passed and "no improvement, keeping the champion" in same.reasons[-1]
    assert gate(0.5, 0.5, min_improvement=-0.01).passed  # a negative margin accepts a tie on purpose
    worse = gate(0.4, 0.5)
    assert not worse.passed and "below gate.min_improvement" in worse.reasons[-1] and "champion v3" in worse.reasons[-1]
    assert not gate(0.52, 0.5, min_improvement=0.05).passed
    assert gate(0.3, 0.5, metric="log_loss").passed and not gate(0.6, 0.5, metric="log_loss").passed  # lower is better
    assert not gate(None, 0.5).passed and "undefined" in gate(None, 0.5).reasons[-1]
    assert gate(0.7, 0.5).numbers["improvement"] == pytest.approx(0.2)
    unsafe = evaluate_gate({"f1": 0.9}, None, "f1", 0.0, 1.0, 10.0, champion_version=2, champion_problem="needs column x")
    assert not unsafe.passed and "champion v2 could not be re-scored" in unsafe.reasons[-1]
    with pytest.raises(LoopmlError, match=r"gate.metric: unknown metric 'acc' \(choices: "):
        gate(0.5, "none", metric="acc")
    assert GateVerdict.from_json(json.loads(json.dumps(worse.to_json()))) == worse
