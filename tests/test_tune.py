"""Tuning: Optuna TPE + median pruning, reproducible for a seed, persisted next to the run, wired into training."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import pytest
from sklearn.metrics import average_precision_score

from loopml.errors import LoopmlError
from loopml.loop.train import train
from loopml.spec.model import Tuning
from loopml.train import RunStore
from loopml.train.tune import TuningResult, tune
from test_train import FEATURES, LINEAGE, make_spec, project, synthetic_table, write
from waiting import wait_until

NAMES = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def split_data() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12_000, 5))
    y = (rng.uniform(size=12_000) < 1 / (1 + np.exp(-(2 * X[:, 0] - X[:, 1] - 3)))).astype(np.int64)
    return {"train": (X[:8000], y[:8000]), "valid": (X[8000:], y[8000:])}


def run(split_data: dict[str, Any], settings: Tuning, trials: int = 0, storage: Path | None = None, **kw: Any) -> TuningResult:
    y_valid = split_data["valid"][1]
    return tune(
        kw.get("model_type", "lightgbm"),
        "binary",
        split_data["train"],
        split_data["valid"],
        NAMES,
        kw.get("params", {}),
        kw.get("seed", 0),
        settings,
        "average_precision",
        lambda s: float(average_precision_score(y_valid, s)),
        trials=trials,
        storage=storage,
        study_name="study-under-test",
    )


def test_same_seed_same_study_and_it_is_persisted(split_data: dict[str, Any], tmp_path: Path) -> None:
    first = run(split_data, Tuning(), trials=14, storage=tmp_path / "a.sqlite")
    second = run(split_data, Tuning(), trials=14, storage=tmp_path / "b.sqlite")
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]
    assert [t["value"] for t in first.trials] == [t["value"] for t in second.trials]
    assert first.best_params == second.best_params and first.direction == "maximize"
    other_seed = run(split_data, Tuning(), trials=3, seed=1)
    assert other_seed.trials[0]["params"] != first.trials[0]["params"]
    states = [t["state"] for t in first.trials]
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 5  # median pruning stopped some trials early
    completed = [t["value"] for t in first.trials if t["state"] == "COMPLETE"]
    assert first.best_value == max(completed)
    assert first.best_params["n_estimators"] == first.trials[first.best_trial or 0]["rounds"]  # early-stopped rounds
    stored = optuna.load_study(study_name="study-under-test", storage=f"sqlite:///{tmp_path / 'a.sqlite'}")
    assert (
        len(stored.trials) == 14
        and stored.best_value == first.best_value
        and stored.best_params.items() <= first.best_params.items()
    )
    pruned = next(t for t in stored.trials if t.state == optuna.trial.TrialState.PRUNED)
    assert pruned.intermediate_values  # the per-round reports that led to the pruning are kept


def test_parallel_trials_and_time_budget(split_data: dict[str, Any]) -> None:
    parallel = run(split_data, Tuning(n_jobs=2), trials=6)
    assert len(parallel.trials) == 6 and parallel.n_jobs == 2 and parallel.best_value is not None
    done: list[TuningResult] = []  # no trial count: the budget alone stops the study (else it runs until killed)
    study = threading.Thread(target=lambda: done.append(run(split_data, Tuning(timeout_s=2.0))), daemon=True)
    study.start()
    wait_until(lambda: not study.is_alive(), timeout=300, interval=0.1, message="the 2 s time budget to stop the study")
    (budget,) = done
    assert len(budget.trials) >= 1 and budget.timeout_s == 2.0


def test_trials_fit_on_a_seeded_sample_of_large_training_sets(split_data: dict[str, Any]) -> None:
    full = run(split_data, Tuning(), trials=2, model_type="logistic")
    sampled = run(split_data, Tuning(max_rows=2000), trials=2, model_type="logistic")
    again = run(split_data, Tuning(max_rows=2000), trials=2, model_type="logistic")
    assert full.rows == 8000 and sampled.rows == 2000 and sampled.to_json()["rows"] == 2000
    assert [t["value"] for t in sampled.trials] == [t["value"] for t in again.trials]  # the sample is seeded
    assert [t["value"] for t in sampled.trials] != [t["value"] for t in full.trials]


def test_other_families_and_errors(split_data: dict[str, Any]) -> None:
    logistic = run(split_data, Tuning(), trials=4, model_type="logistic")
    assert set(logistic.best_params) == {"C"} and all(t["state"] == "COMPLETE" for t in logistic.trials)
    with pytest.raises(LoopmlError, match=r"model\.tuning: no search space for sklearn models"):
        run(split_data, Tuning(), trials=2, model_type="sklearn:sklearn.ensemble.HistGradientBoostingClassifier")
    with pytest.raises(LoopmlError, match=r"model\.tuning: no trial completed \(model\.tuning: invalid parameter for logistic"):
        run(split_data, Tuning(), trials=2, model_type="logistic", params={"no_such_knob": 1})
    with pytest.raises(LoopmlError, match=r"model\.tuning: set trials \(or --trials N\) or timeout_s"):
        run(split_data, Tuning())


def test_training_with_trials_records_the_study(tmp_path: Path) -> None:
    spec = make_spec(model={"tuning": {"trials": 4, "metric": "roc_auc"}, "baseline": None})
    layout, registry = project(tmp_path, spec)
    data = write(synthetic_table(n=5000), tmp_path / "t.parquet")
    result = train(spec, layout, data, FEATURES, LINEAGE, registry, trials=6)  # --trials wins over the spec
    record = RunStore(layout.runs).get(result.run_id)
    tuning = record.params["tuning"]
    assert tuning["metric"] == "roc_auc" and len(tuning["trials"]) == 6
    assert "study.sqlite" in record.artifacts and "tuning.png" in record.artifacts
    study = optuna.load_study(study_name=result.run_id, storage=f"sqlite:///{layout.runs / result.run_id / 'study.sqlite'}")
    assert len(study.trials) == 6
    final = registry.get(result.model_version).lineage["model_params"]
    assert {k: final[k] for k in tuning["best_params"]} == tuning["best_params"]  # the final model uses the best trial
    assert result.metrics["valid"]["roc_auc"] == pytest.approx(tuning["best_value"], abs=1e-9)  # and reproduces it


def test_training_reports_each_trial_and_each_candidate_fit(tmp_path: Path) -> None:
    """``loopml train`` shows progress: one message per tuning trial, one per candidate fitted, fractions that only grow."""
    spec = make_spec(model={"baseline": "logistic"})
    layout, registry = project(tmp_path, spec)
    data = write(synthetic_table(n=3000), tmp_path / "t.parquet")
    said: list[tuple[str, float]] = []
    train(spec, layout, data, FEATURES, LINEAGE, registry, trials=3, progress=lambda m, f: said.append((m, f)))
    messages = [m for m, _ in said]
    trials = [m for m in messages if m.startswith("tuning lightgbm: trial")]
    assert len(trials) == 3 and all(f"trial {i}/3" in m for i, m in enumerate(trials, 1)), messages
    assert "best average_precision" in trials[-1], trials
    assert any(m.startswith("fitting lightgbm") for m in messages), messages
    assert any(m.startswith("fitting baseline logistic") for m in messages), messages
    fractions = [f for _, f in said]
    assert fractions == sorted(fractions) and fractions[0] >= 0.0 and fractions[-1] <= 1.0, said


def test_tuning_on_a_single_class_validation_split_fails_clearly(tmp_path: Path) -> None:
    spec = make_spec(model={"baseline": None})
    layout, registry = project(tmp_path, spec)
    table = synthetic_table(n=3000)
    ts = table.column("ts").to_numpy()
    labels = table.column("is_fraud").to_numpy().copy()
    labels[(ts >= np.datetime64("2025-05-10")) & (ts < np.datetime64("2025-05-17"))] = 0  # the valid window
    data = write(table.set_column(3, "is_fraud", pa.array(labels)), tmp_path / "t.parquet")
    with pytest.raises(LoopmlError, match=r"model\.tuning: the validation split has a single class"):
        train(spec, layout, data, FEATURES, LINEAGE, registry, trials=3)
    assert registry.list() == []
