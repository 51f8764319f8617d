"""The model registry contract: every implementation of ``Registry`` passes these same tests, unchanged.

The implementations are found by ``tests/contracts.py`` (every class of ``loopml`` with the
protocol's verbs): today SQLite in a file and PostgreSQL on a real server started for the session
(tests/postgres_server.py, one empty database per test). A new one fails
``test_every_implementation_has_a_factory`` and every test here until it gets a factory. Openers
are picklable (``functools.partial`` of the class), so that child processes open the same registry.
"""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contracts import SECRET, Backend, Factory, check_factories, factory_for, ids, implementations
from loopml.errors import LoopmlError
from loopml.registry import CHAMPION, GateVerdict, Registry, SqliteRegistry
from loopml.registry.postgres import PostgresRegistry
from loopml.server import free_port
from loopml.train.artifact import LinearModel, sha256_file

SIGNATURE = [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}]
REFERENCE = {"bins": 10, "features": {"a": {"edges": [0.0], "fractions": [0.5, 0.5, 0.0]}}}
SUITE = "tests/test_contract_registry.py"


# -- the implementations ------------------------------------------------------------------------------------


def blocked_folder(tmp: Path) -> Path:
    blocker = tmp / "blocker"
    blocker.write_text("a file where the registry's folder should be")
    return blocker


def sqlite_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[Registry]:
    blocker = blocked_folder(tmp)
    return Backend(
        open=partial(SqliteRegistry, tmp / "state" / "registry.sqlite", tmp / "state" / "artifacts"),
        unreachable=partial(SqliteRegistry, blocker / "registry.sqlite", blocker / "artifacts"),
        names=str(blocker),
    )


def postgres_backend(request: pytest.FixtureRequest, tmp: Path) -> Backend[Registry]:
    port = free_port()  # nothing listens there
    return Backend(
        open=partial(PostgresRegistry, request.getfixturevalue("postgres_url"), tmp / "state" / "artifacts"),
        unreachable=partial(PostgresRegistry, f"postgresql://u:{SECRET}@127.0.0.1:{port}/x", tmp / "state" / "artifacts"),
        names=f"postgresql://u:***@127.0.0.1:{port}/x",
    )


FACTORIES: dict[type, Factory[Backend[Registry]]] = {SqliteRegistry: sqlite_backend, PostgresRegistry: postgres_backend}
IMPLEMENTATIONS = implementations(Registry)


def test_every_implementation_has_a_factory() -> None:
    check_factories(Registry, FACTORIES, SUITE)


@pytest.fixture(params=IMPLEMENTATIONS, ids=ids(IMPLEMENTATIONS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend[Registry]:
    return factory_for(FACTORIES, request.param, SUITE)(request, tmp_path)


@pytest.fixture
def registry(backend: Backend[Registry]) -> Registry:
    return backend.open()


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


def run_child(script: str, backend: Backend[Registry], *args: str) -> subprocess.Popen[str]:
    """A Python child process running ``script`` with ``registry`` opened by the backend's (pickled) opener."""
    prelude = "import pickle, sys\nregistry = pickle.loads(bytes.fromhex(sys.argv[1]))()\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(script), pickle.dumps(backend.open).hex(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the contract -------------------------------------------------------------------------------------------


def test_register_get_list(registry: Registry, tmp_path: Path) -> None:
    assert registry.list() == [] and registry.alias(CHAMPION) is None
    versions = [register(registry, tmp_path, (float(i), 1.0)) for i in range(1, 4)]
    assert versions == [1, 2, 3]
    v2 = registry.get(2)
    assert v2.kind == "linear" and v2.lineage == {"snapshot": "s1", "spec_hash": "h"} and v2.tags == {"team": "fraud"}
    assert v2.signature == SIGNATURE and v2.feature_names == ["a", "b"] and v2.run_id == "20261123T193012-ab12cd"
    assert re.fullmatch(r"2-[0-9a-f]{16}\.json", v2.artifact_path.name) and v2.sha256.startswith(v2.artifact_path.name[2:18])
    assert v2.sha256 == sha256_file(v2.artifact_path) == sha256_file(tmp_path / "model-2.0-1.0.json")  # a copy, hashed
    assert registry.reference_stats(2) == REFERENCE
    body = v2.to_json()
    assert {"version", "aliases", "metrics", "created_at"} <= body.keys() and body["aliases"] == []
    json.dumps([v.to_json() for v in registry.list()], allow_nan=False)
    assert [v.version for v in registry.list()] == [1, 2, 3]
    with pytest.raises(LoopmlError, match=r"model version 9 does not exist \(versions 1\.\.3\)"):
        registry.get(9)


def test_every_verb_on_an_unknown_version_is_one_error_and_changes_nothing(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(LoopmlError, match=r"model version 1 does not exist \(the registry is empty\)"):
        registry.get(1)
    register(registry, tmp_path)
    registry.set_alias(CHAMPION, 1, "first")
    before = state(registry)
    verdict = GateVerdict(True, ["ok"], {})
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: registry.get(7),
        "reference_stats": lambda: registry.reference_stats(7),
        "load_predictor": lambda: registry.load_predictor(7),
        "record_gate": lambda: registry.record_gate(7, verdict),
        "set_alias": lambda: registry.set_alias(CHAMPION, 7, "typo"),
    }
    for verb, call in calls.items():
        with pytest.raises(LoopmlError, match=r"model version 7 does not exist \(versions 1\.\.1\)") as err:
            call()
        assert "\n" not in str(err.value), verb
    assert state(registry) == before


def test_predictor_loads_hash_checked(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, (2.0, 0.0))
    predictor = registry.load_predictor(1)
    assert predictor.kind == "linear" and predictor.feature_names == ["a", "b"]
    # impute NaN with 0.0 for a, standardise: (x - mean) / scale; logit = 2 * a + 0.25
    assert predictor.predict(np.array([[1.0, 5.0]]))[0] == pytest.approx(1 / (1 + np.exp(-2.25)))
    assert predictor.predict(np.array([[np.nan, 5.0]]))[0] == pytest.approx(1 / (1 + np.exp(-0.25)))


def test_tampered_artifact_is_refused(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    model = registry.get(1)
    path = model.artifact_path
    path.write_text(path.read_text(encoding="utf-8").replace('"intercept": 0.25', '"intercept": 9.0'), encoding="utf-8")
    with pytest.raises(LoopmlError, match="does not match the registry's"):
        registry.load_predictor(1)
    path.unlink()
    # a host without the file either refuses, or restores a copy the backend keeps, checked against the same hash
    try:
        restored = registry.load_predictor(1)
    except LoopmlError as err:
        assert "cannot read model artifact" in str(err) or "missing" in str(err)
        assert not path.exists()
    else:
        assert sha256_file(path) == model.sha256 and restored.predict(np.array([[1.0, 2.0]])).shape == (1,)


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


def test_register_rejects_bad_input(registry: Registry, tmp_path: Path) -> None:
    artifact = linear_artifact(tmp_path)
    with pytest.raises(LoopmlError, match="unknown artifact kind 'pickle'"):
        registry.register(artifact, "pickle", {}, {}, SIGNATURE, {})
    with pytest.raises(LoopmlError, match="does not exist"):
        registry.register(tmp_path / "nope.json", "linear", {}, {}, SIGNATURE, {})
    with pytest.raises(LoopmlError, match="metrics is not plain JSON"):
        registry.register(artifact, "linear", {"auc": float("nan")}, {}, SIGNATURE, {})
    assert registry.list() == []


def test_an_unreachable_registry_is_one_line_naming_it(backend: Backend[Registry], tmp_path: Path) -> None:
    registry = backend.unreachable()
    calls: dict[str, Callable[[], object]] = {
        "list": registry.list,
        "get": lambda: registry.get(1),
        "alias": lambda: registry.alias(CHAMPION),
        "register": lambda: registry.register(linear_artifact(tmp_path), "linear", {}, {}, SIGNATURE, {}),
    }
    for verb, call in calls.items():
        with pytest.raises(LoopmlError) as err:
            call()
        message = str(err.value)
        assert backend.names in message and SECRET not in message and "\n" not in message, (verb, message)


def test_two_processes_registering_at_once_get_distinct_versions(backend: Backend[Registry], tmp_path: Path) -> None:
    registry = backend.open()
    register(registry, tmp_path)
    script = """
        from pathlib import Path
        for _ in range(5):
            registry.register(Path(sys.argv[2]), "linear", {}, {}, [{"name": "a", "type": "float"}], {})
        """
    artifact = linear_artifact(tmp_path, (2.0, 2.0), name="both.json")
    children = [run_child(script, backend, str(artifact)) for _ in range(2)]
    outcomes = [(child.wait(timeout=120), child.communicate()[1]) for child in children]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert [v.version for v in backend.open().list()] == list(range(1, 12))
    assert all(registry.load_predictor(v).predict(np.array([[1.0, 2.0]])).shape == (1,) for v in range(1, 12))


_CRASH = """
    import os
    from pathlib import Path

    staged = registry._stage(Path(sys.argv[2]), "linear")
    if sys.argv[3] == "after-stage":
        os._exit(1)
    with registry._transaction() as con:
        version = registry._next_version(con)
        registry._place(staged, version)
        os._exit(1)  # the process dies holding the write lock, after the rename, before the row
    """
#: The steps of a registration the crash test stops between (the staged register of ``SqliteRegistry``).
CRASH_HOOKS = ("_stage", "_transaction", "_next_version", "_place", "orphans")


@pytest.mark.parametrize("moment", ["after-stage", "after-rename"])
def test_crash_mid_register_leaves_a_consistent_registry(backend: Backend[Registry], tmp_path: Path, moment: str) -> None:
    registry = backend.open()
    missing = [hook for hook in CRASH_HOOKS if not hasattr(registry, hook)]
    assert not missing, f"{type(registry).__qualname__} has no {', '.join(missing)}: give it a crash test of its own here"
    register(registry, tmp_path, (1.0, 1.0))
    artifact = linear_artifact(tmp_path, (5.0, 5.0), name="crash.json")
    child = run_child(_CRASH, backend, str(artifact), moment)
    code, errors = child.wait(timeout=60), child.communicate()[1]
    assert code == 1, errors
    assert [v.version for v in registry.list()] == [1]  # readable, and no row for the crashed registration
    assert len(registry.orphans()) == 1  # type: ignore[attr-defined]  # at most an orphan file
    for version in registry.list():
        assert version.artifact_path.is_file()
        registry.load_predictor(version.version)
    assert register(registry, tmp_path, (5.0, 5.0)) == 2  # the version number is reused, the file is fine
    assert registry.load_predictor(2).predict(np.array([[1.0, 1.0]])).shape == (1,)
    if type(registry) is SqliteRegistry:  # the SQLite file itself is sound
        with sqlite3.connect(registry.path) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
