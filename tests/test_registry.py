"""The model registry contract (parametrised over backends), artifacts and the promotion gate."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest

from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.registry import (
    CHAMPION,
    GateVerdict,
    Registry,
    SqliteRegistry,
    evaluate_gate,
    open_registry,
)
from loopml.registry.postgres import PostgresRegistry
from loopml.serve.runner import free_port
from loopml.spec.model import Spec
from loopml.train.artifact import LinearModel, LinearPredictor, Predictor, sha256_file
from specs import minimal_spec_dict

SIGNATURE = [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}]
REFERENCE = {"bins": 10, "features": {"a": {"edges": [0.0], "fractions": [0.5, 0.5, 0.0]}}}

# -- backends ---------------------------------------------------------------------------
# Every backend gets the same contract tests: SQLite in a file, PostgreSQL on a real
# server started for the session (tests/postgres_server.py), one empty database per test.
BACKENDS = ("postgres", "sqlite")


def make_registry(backend: str, request: pytest.FixtureRequest, tmp: Path) -> SqliteRegistry:
    if backend == "postgres":
        return PostgresRegistry(request.getfixturevalue("postgres_url"), tmp / "state" / "artifacts")
    return SqliteRegistry(tmp / "state" / "registry.sqlite", tmp / "state" / "artifacts")


@pytest.fixture(params=BACKENDS)
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    return make_registry(request.param, request, tmp_path)


def linear_artifact(folder: Path, coef: tuple[float, float] = (1.0, -1.0), name: str = "model.json") -> Path:
    model = LinearModel("binary", ["a", "b"], list(coef), 0.25, [0.0, 1.0], [1.0, 2.0], [0.0, 1.0])
    path = folder / name
    path.write_text(model.to_json(), encoding="utf-8")
    return path


def register(registry: Registry, tmp_path: Path, coef: tuple[float, float] = (1.0, -1.0), ap: float = 0.5) -> int:
    artifact = linear_artifact(tmp_path, coef, name=f"model-{coef[0]}-{coef[1]}.json")
    version = registry.register(
        artifact,
        "linear",
        metrics={"test": {"average_precision": ap}},
        lineage={"snapshot": "s1", "spec_hash": "h"},
        signature=SIGNATURE,
        reference_stats=REFERENCE,
        tags={"team": "fraud"},
        run_id="20261123T193012-ab12cd",
    )
    return version.version


def champion(registry: Registry, alias: str = CHAMPION) -> int:
    holder = registry.alias(alias)
    assert holder is not None, f"alias {alias} is not set"
    return holder.version


def state(registry: Registry) -> tuple[list[dict[str, Any]], list[Any]]:
    """Everything observable, to check that a failed call changed nothing."""
    return [v.to_json() for v in registry.list()], [e.to_json() for e in registry.alias_history(CHAMPION)]


# -- registry contract --------------------------------------------------------------------


def test_register_get_list(registry: Registry, tmp_path: Path) -> None:
    assert registry.list() == [] and registry.alias(CHAMPION) is None
    versions = [register(registry, tmp_path, (float(i), 1.0)) for i in range(1, 4)]
    assert versions == [1, 2, 3]
    v2 = registry.get(2)
    assert v2.kind == "linear" and v2.lineage == {"snapshot": "s1", "spec_hash": "h"} and v2.tags == {"team": "fraud"}
    assert v2.signature == SIGNATURE and v2.feature_names == ["a", "b"] and v2.run_id == "20261123T193012-ab12cd"
    assert re.fullmatch(r"2-[0-9a-f]{16}\.json", v2.artifact_path.name) and v2.sha256.startswith(v2.artifact_path.name[2:18])
    assert registry.reference_stats(2) == REFERENCE
    body = v2.to_json()
    assert {"version", "aliases", "metrics", "created_at"} <= body.keys() and body["aliases"] == []
    json.dumps([v.to_json() for v in registry.list()], allow_nan=False)
    assert [v.version for v in registry.list()] == [1, 2, 3]
    with pytest.raises(LoopmlError, match=r"model version 9 does not exist \(versions 1\.\.3\)"):
        registry.get(9)


def test_predictor_loads_hash_checked(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, (2.0, 0.0))
    predictor = registry.load_predictor(1)
    assert predictor.feature_names == ["a", "b"]
    # impute NaN with 0.0 for a, standardise: (x - mean) / scale; logit = 2 * a + 0.25
    assert predictor.predict(np.array([[1.0, 5.0]]))[0] == pytest.approx(1 / (1 + np.exp(-2.25)))
    assert predictor.predict(np.array([[np.nan, 5.0]]))[0] == pytest.approx(1 / (1 + np.exp(-0.25)))


def test_tampered_artifact_is_refused(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    path = registry.get(1).artifact_path
    path.write_text(path.read_text(encoding="utf-8").replace('"intercept": 0.25', '"intercept": 9.0'), encoding="utf-8")
    with pytest.raises(LoopmlError, match="does not match the registry's"):
        registry.load_predictor(1)
    path.unlink()
    if isinstance(registry, PostgresRegistry):
        # a host without the file fetches the database's copy, checked against the same hash
        assert registry.load_predictor(1).predict(np.array([[1.0, 2.0]])).shape == (1,)
        assert path.is_file()
    else:
        with pytest.raises(LoopmlError, match="cannot read model artifact"):
            registry.load_predictor(1)


def test_aliases_and_history(registry: Registry, tmp_path: Path) -> None:
    for i in range(3):
        register(registry, tmp_path, (float(i), 1.0))
    assert registry.set_alias(CHAMPION, 1, "first").aliases == [CHAMPION]
    registry.set_alias(CHAMPION, 2, "better")
    registry.set_alias("challenger", 3, "try it")
    assert champion(registry) == 2 and champion(registry, "challenger") == 3
    assert registry.get(1).aliases == [] and registry.get(2).aliases == [CHAMPION]
    history = registry.alias_history(CHAMPION)
    assert [(e.version, e.previous, e.action, e.reason) for e in history] == [(1, None, "set", "first"), (2, 1, "set", "better")]
    registry.set_alias(CHAMPION, 2, "again")  # already holds it: no new history entry
    assert len(registry.alias_history(CHAMPION)) == 2
    with pytest.raises(LoopmlError, match="alias 'bad name!'"):
        registry.set_alias("bad name!", 1, "x")


def test_promote_unknown_version_changes_nothing(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    registry.set_alias(CHAMPION, 1, "first")
    before = state(registry)
    with pytest.raises(LoopmlError, match="model version 7 does not exist"):
        registry.set_alias(CHAMPION, 7, "typo")
    assert state(registry) == before


def test_rollback_walks_back_through_holders(registry: Registry, tmp_path: Path) -> None:
    for i in range(3):
        register(registry, tmp_path, (float(i), 1.0))
        registry.set_alias(CHAMPION, i + 1, f"v{i + 1}")
    assert registry.rollback().version == 2
    assert champion(registry) == 2
    assert registry.rollback(CHAMPION).version == 1
    before = state(registry)
    with pytest.raises(LoopmlError, match=r"alias 'champion' \(v1\) has no previous holder"):
        registry.rollback()
    assert state(registry) == before
    assert registry.alias_history(CHAMPION)[-1].action == "rollback"


def test_rollback_without_previous_champion_changes_nothing(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(LoopmlError, match="alias 'champion' is not set"):
        registry.rollback()
    register(registry, tmp_path)
    registry.set_alias(CHAMPION, 1, "only one")
    before = state(registry)
    with pytest.raises(LoopmlError, match="no previous holder"):
        registry.rollback()
    assert state(registry) == before and champion(registry) == 1


def test_gate_verdict_is_stored(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    assert registry.get(1).gate is None
    verdict = GateVerdict(False, ["average_precision 0.1 vs champion v0 0.2"], {"metric": "average_precision"})
    registry.record_gate(1, verdict)
    assert registry.get(1).gate == verdict
    with pytest.raises(LoopmlError, match="model version 2 does not exist"):
        registry.record_gate(2, verdict)


def test_register_rejects_bad_input(registry: Registry, tmp_path: Path) -> None:
    artifact = linear_artifact(tmp_path)
    with pytest.raises(LoopmlError, match="unknown artifact kind 'pickle'"):
        registry.register(artifact, "pickle", {}, {}, SIGNATURE, {})
    with pytest.raises(LoopmlError, match="does not exist"):
        registry.register(tmp_path / "nope.json", "linear", {}, {}, SIGNATURE, {})
    with pytest.raises(LoopmlError, match="metrics is not plain JSON"):
        registry.register(artifact, "linear", {"auc": float("nan")}, {}, SIGNATURE, {})
    assert registry.list() == []


# -- crash safety (SQLite backend) ---------------------------------------------------------------

_CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from loopml.registry.postgres import PostgresRegistry
    from loopml.registry.store import SqliteRegistry

    if sys.argv[1].startswith("postgresql://"):
        registry = PostgresRegistry(sys.argv[1], Path(sys.argv[2]))
    else:
        registry = SqliteRegistry(Path(sys.argv[1]), Path(sys.argv[2]))
    staged = registry._stage(Path(sys.argv[3]), "linear")
    if sys.argv[4] == "after-stage":
        os._exit(1)
    with registry._transaction() as con:
        version = registry._next_version(con)
        registry._place(staged, version)
        os._exit(1)  # the process dies holding the write lock, after the rename, before the row
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("moment", ["after-stage", "after-rename"])
def test_crash_mid_register_leaves_a_consistent_registry(
    request: pytest.FixtureRequest, tmp_path: Path, moment: str, backend: str
) -> None:
    registry = make_registry(backend, request, tmp_path)
    where = registry.url if isinstance(registry, PostgresRegistry) else str(registry.path)
    register(registry, tmp_path, (1.0, 1.0))
    artifact = linear_artifact(tmp_path, (5.0, 5.0), name="crash.json")
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, where, str(registry.artifacts), str(artifact), moment],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert [v.version for v in registry.list()] == [1]  # readable, and no row for the crashed registration
    assert len(registry.orphans()) == 1  # at most an orphan file
    for version in registry.list():
        assert version.artifact_path.is_file()
        registry.load_predictor(version.version)
    assert register(registry, tmp_path, (5.0, 5.0)) == 2  # the version number is reused, the file is fine
    assert registry.load_predictor(2).predict(np.array([[1.0, 1.0]])).shape == (1,)
    if backend == "sqlite":
        with sqlite3.connect(registry.path) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_postgres_unreachable_is_one_clear_line(tmp_path: Path) -> None:
    registry = PostgresRegistry(f"postgresql://u:secret@127.0.0.1:{free_port()}/x", tmp_path)
    with pytest.raises(LoopmlError, match=r"^registry postgresql://u:\*\*\*@127\.0\.0\.1:\d+/x: cannot connect") as err:
        registry.list()
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_two_processes_registering_at_once_get_distinct_versions(postgres_url: str, tmp_path: Path) -> None:
    first = PostgresRegistry(postgres_url, tmp_path / "a")
    second = PostgresRegistry(postgres_url, tmp_path / "b")
    register(first, tmp_path)
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from loopml.registry.postgres import PostgresRegistry
        registry = PostgresRegistry(sys.argv[1], Path(sys.argv[2]))
        for _ in range(5):
            registry.register(Path(sys.argv[3]), "linear", {}, {}, [{"name": "a", "type": "float"}], {})
        """
    )
    artifact = linear_artifact(tmp_path, (2.0, 2.0), name="both.json")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, postgres_url, str(tmp_path / name), str(artifact)]) for name in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert [v.version for v in second.list()] == list(range(1, 12))
    assert second.load_predictor(1).predict(np.array([[1.0, 2.0]])).shape == (1,)  # fetched from the database


def test_open_registry_uses_the_spec_backend(tmp_path: Path) -> None:
    spec = Spec.model_validate(minimal_spec_dict())
    registry = open_registry(spec, Layout.for_project(tmp_path, spec))
    assert isinstance(registry, SqliteRegistry) and registry.path == tmp_path.resolve() / ".loopml" / "registry.sqlite"


def test_open_registry_postgres_from_spec_or_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = minimal_spec_dict(storage={"registry": "postgres"})
    spec = Spec.model_validate(raw)
    monkeypatch.delenv("LOOPML_REGISTRY_URL", raising=False)
    with pytest.raises(LoopmlError, match=r"storage\.registry_url: the postgres registry needs a URL"):
        open_registry(spec, Layout.for_project(tmp_path, spec))
    monkeypatch.setenv("LOOPML_REGISTRY_URL", postgres_url)
    registry = open_registry(spec, Layout.for_project(tmp_path, spec))
    assert isinstance(registry, PostgresRegistry) and registry.list() == []
    monkeypatch.delenv("LOOPML_REGISTRY_URL")
    spec = Spec.model_validate({**raw, "storage": {"registry": "postgres", "registry_url": postgres_url}})
    assert register(open_registry(spec, Layout.for_project(tmp_path, spec)), tmp_path) == 1


# -- artifacts --------------------------------------------------------------------------------


def test_lightgbm_artifact_round_trip_and_contributions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] > 0.3).astype(int)
    params = {"objective": "binary", "verbose": -1, "seed": 0}
    booster = lightgbm.train(params, lightgbm.Dataset(X, y, feature_name=["a", "b"]), 10)
    path = tmp_path / "m.txt"
    path.write_text(booster.model_to_string(), encoding="utf-8")
    predictor = Predictor.load(path, sha256_file(path))
    assert predictor.kind == "lightgbm" and predictor.task == "binary" and predictor.feature_names == ["a", "b"]
    np.testing.assert_array_equal(predictor.predict(X), np.asarray(booster.predict(X)))
    raw = np.asarray(booster.predict(X, raw_score=True))
    np.testing.assert_allclose(predictor.contributions(X).sum(axis=1), raw, atol=1e-9)


def test_malformed_artifacts_are_one_line_errors(tmp_path: Path) -> None:
    cases = {"bad.json": "{not json", "wrong.json": json.dumps({"format": "other"}), "bad.txt": "tree\nnonsense", "m.pkl": "x"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(LoopmlError) as info:
            Predictor.load(path, sha256_file(path))
        assert name in str(info.value) and "\n" not in str(info.value)


def test_linear_contributions_sum_to_the_log_odds() -> None:
    predictor = LinearPredictor(LinearModel("binary", ["a", "b"], [0.5, -2.0], 0.1, [1.0, 0.0], [2.0, 1.0], [1.0, 0.0]))
    X = np.array([[3.0, 1.0], [np.nan, -1.0]])
    contributions = predictor.contributions(X)
    np.testing.assert_allclose(contributions, [[0.5, -2.0, 0.1], [0.0, 2.0, 0.1]])
    p = predictor.predict(X)
    np.testing.assert_allclose(contributions.sum(axis=1), np.log(p / (1 - p)))


# -- the promotion gate ---------------------------------------------------------------------------


def gate(candidate: float | None, champion: float | str | None, metric: str = "average_precision", **kw: Any) -> GateVerdict:
    args: dict[str, Any] = {"min_improvement": 0.0, "latency_p99_ms": 1.0, "budget_ms": 10.0, **kw}
    champ: dict[str, float | None] | None = None if isinstance(champion, str) else {metric: champion}
    return evaluate_gate({metric: candidate}, champ, metric, champion_version=3 if champ else None, **args)


def test_gate_rules() -> None:
    assert gate(0.5, "none").passed and "no champion yet" in gate(0.5, "none").reasons[-1]
    slow = gate(0.5, "none", latency_p99_ms=25.0)
    assert not slow.passed and "exceeds serving.latency_budget_ms 10 ms" in slow.reasons[0]
    assert gate(0.6, 0.5).passed and gate(0.5, 0.5).passed
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
