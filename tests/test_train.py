"""Training: splits, metrics, reference statistics, models, run tracking and the pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from loopml.errors import DataError, LoopmlError
from loopml.layout import Layout
from loopml.loop.train import train
from loopml.registry import CHAMPION, SqliteRegistry
from loopml.spec.model import Spec
from loopml.tasks.metrics import binary_metrics, card_precision_at_k, choose_threshold, regression_metrics
from loopml.train import RunStore, psi, reference_stats, split_rows
from loopml.train.artifact import Predictor, sha256_file
from loopml.train.models import fit_model
from loopml.train.reference import reference_entry
from specs import TEST_LATENCY_BUDGET_MS

START = np.datetime64("2025-04-01T00:00:00", "us")
FEATURES = ["f1", "f2", "f3"]
LINEAGE = {"snapshot": "snap-1", "spec_hash": "abc123"}


def make_spec(**overrides: Any) -> Spec:
    body: dict[str, Any] = {
        "project": "synthetic",
        "entities": {"customer": {"key": "customer_id"}},
        "sources": {
            "events": {
                "path": "data/events.parquet",
                "timestamp": "ts",
                "columns": {
                    "event_id": {"type": "int"},
                    "ts": {"type": "timestamp"},
                    "customer_id": {"type": "int"},
                    "is_fraud": {"type": "int"},
                },
            }
        },
        "label": {"source": "events", "column": "is_fraud", "delay": "7d"},
        "serving": {"latency_budget_ms": TEST_LATENCY_BUDGET_MS},  # a busy test machine must not fail the gate on latency
    }
    for key, value in overrides.items():
        body[key] = value
    return Spec.model_validate(body)


def synthetic_table(n: int = 6000, days: float = 60, seed: int = 0, shuffle_before: np.datetime64 | None = None) -> pa.Table:
    """Label source columns then features; the label depends on f1 and f2, f3 is noise with NULLs."""
    rng = np.random.default_rng(seed)
    ts = START + rng.uniform(0, days * 86_400e6, n).astype("timedelta64[us]")
    f1, f2, f3 = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    f3[rng.uniform(size=n) < 0.1] = np.nan
    p = 1 / (1 + np.exp(-(2.5 * f1 - 2.0 * f2 - 3.0)))
    y = (rng.uniform(size=n) < p).astype(np.int8)
    if shuffle_before is not None:
        early = ts < shuffle_before
        y[early] = rng.permutation(y[early])
    return pa.table(
        {
            "event_id": np.arange(n),
            "ts": pa.array(ts),
            "customer_id": rng.integers(0, 150, n),
            "is_fraud": y,
            "f1": f1,
            "f2": f2,
            "f3": pa.array(f3, from_pandas=True),
        }
    )


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def project(tmp: Path, spec: Spec) -> tuple[Layout, SqliteRegistry]:
    layout = Layout.for_project(tmp, spec)
    return layout, SqliteRegistry.for_layout(layout)


def champion(registry: SqliteRegistry) -> int:
    holder = registry.alias(CHAMPION)
    assert holder is not None, "no champion"
    return holder.version


def days(values: list[float]) -> np.ndarray:
    return START + (np.asarray(values) * 86_400e6).astype("timedelta64[us]")


# -- splits ------------------------------------------------------------------------------


def test_time_split_windows_gap_and_no_overlap() -> None:
    spec = make_spec(split={"train_days": 28, "valid_days": 7, "test_days": 7})
    ts = days(list(np.linspace(0, 59.99, 6000)))  # 2025-04-01 .. 2025-05-30
    y = np.tile([0, 1], 3000)
    result = split_rows(spec, y, ts)
    d = np.datetime64
    assert result.bounds["test"].start == d("2025-05-24") and result.bounds["test"].end == d("2025-05-31")
    assert result.bounds["valid"].start == d("2025-05-10") and result.bounds["valid"].end == d("2025-05-17")
    assert result.bounds["train"].start == d("2025-04-05") and result.bounds["train"].end == d("2025-05-03")
    for name in ("train", "valid", "test"):
        b = result.bounds[name]
        chosen = ts[result.indices(name)]
        assert len(chosen) == b.rows > 0
        assert chosen.min() >= b.start and chosen.max() < b.end
    # nothing from the gaps (label delay 7d) or before the train window
    used = np.concatenate([result.train, result.valid, result.test])
    assert len(used) == len(set(used.tolist()))
    unused = np.setdiff1d(np.arange(len(ts)), used)
    gap1 = (ts >= d("2025-05-17")) & (ts < d("2025-05-24"))
    gap2 = (ts >= d("2025-05-03")) & (ts < d("2025-05-10"))
    gaps = gap1 | gap2 | (ts < d("2025-04-05"))
    assert set(unused.tolist()) == set(np.flatnonzero(gaps).tolist())
    assert result.bounds["train"].label() == "2025-04-05..2025-05-02"
    assert result.to_json()["gap_days"] == 7.0


def test_time_split_explicit_gap_and_all_history() -> None:
    spec = make_spec(split={"valid_days": 5, "test_days": 5, "gap": "1d"})
    ts = days(list(np.linspace(0, 29.5, 3000)))
    result = split_rows(spec, np.tile([0, 1], 1500), ts)
    assert result.bounds["test"].start == np.datetime64("2025-04-26")
    assert result.bounds["valid"].end == np.datetime64("2025-04-25")
    assert result.bounds["train"].end == np.datetime64("2025-04-19")
    assert ts[result.train].min() == ts.min()  # train_days unset: everything earlier


def test_time_split_too_short_names_days() -> None:
    spec = make_spec(split={"train_days": 28})
    ts = days(list(np.linspace(0, 19.5, 500)))
    expected = r"spans 20 days .*needs 56 \(train 28 \+ gap 7 \+ valid 7 \+ gap 7 \+ test 7\)"
    with pytest.raises(LoopmlError, match=expected) as info:
        split_rows(spec, np.tile([0, 1], 250), ts)
    assert "\n" not in str(info.value)


def test_time_split_without_train_days_needs_some_history() -> None:
    ts = days(list(np.linspace(0, 27.5, 500)))
    with pytest.raises(LoopmlError, match=r"spans 28 days .*needs more than 28"):
        split_rows(make_spec(), np.tile([0, 1], 250), ts)


def test_time_split_one_class_train_window() -> None:
    spec = make_spec(split={"train_days": 28})
    ts = days(list(np.linspace(0, 59.99, 6000)))
    y = (ts >= np.datetime64("2025-05-10")).astype(np.int8)  # positives only after the train window
    with pytest.raises(LoopmlError, match=r"train split \(2025-04-05\.\.2025-05-02\) has only label 0"):
        split_rows(spec, y, ts)


def test_time_split_empty_window() -> None:
    values = [*np.linspace(0, 30, 300), *np.linspace(46.5, 59.9, 300)]  # nothing in the valid window
    with pytest.raises(LoopmlError, match=r"valid split \(2025-05-10\.\.2025-05-16\) is empty"):
        split_rows(make_spec(), np.tile([0, 1], 300), days(values))


def test_random_split_is_seeded_stratified_and_disjoint() -> None:
    spec = make_spec(split={"method": "random", "valid_fraction": 0.2, "test_fraction": 0.2})
    y = (np.random.default_rng(1).uniform(size=2000) < 0.1).astype(np.int8)
    a, b = split_rows(spec, y, None), split_rows(spec, y, None)
    assert all(np.array_equal(a.indices(n), b.indices(n)) for n in ("train", "valid", "test"))
    parts = [set(a.indices(n).tolist()) for n in ("train", "valid", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(len(p) for p in parts) == 2000
    assert a.bounds["test"].rows == 400 and a.bounds["valid"].rows == 400
    for name in ("train", "valid", "test"):
        assert abs(y[a.indices(name)].mean() - y.mean()) < 0.01


def test_time_split_needs_a_timestamp() -> None:
    with pytest.raises(LoopmlError, match=r"split\.method"):
        split_rows(make_spec(), np.array([0, 1]), None)


# -- metrics ----------------------------------------------------------------------------


def test_binary_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=500) < 0.3).astype(int)
    s = np.clip(0.3 * y + rng.uniform(size=500) * 0.7, 0, 1)
    ev = binary_metrics(y, s, threshold=0.5)
    pred = (s >= 0.5).astype(int)
    expected = {
        "roc_auc": roc_auc_score(y, s),
        "average_precision": average_precision_score(y, s),
        "log_loss": log_loss(y, s),
        "brier": brier_score_loss(y, s),
        "precision": precision_score(y, pred),
        "recall": recall_score(y, pred),
        "f1": f1_score(y, pred),
    }
    assert ev.warnings == []
    for name, value in expected.items():
        assert ev.metrics[name] == pytest.approx(value, abs=1e-9), name


def test_regression_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(10, 2, size=300)
    p = y + rng.normal(size=300)
    ev = regression_metrics(y, p)
    assert ev.metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), abs=1e-9)
    assert ev.metrics["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-9)
    assert ev.metrics["r2"] == pytest.approx(r2_score(y, p), abs=1e-9)
    assert ev.metrics["mape"] == pytest.approx(mean_absolute_percentage_error(y, p), abs=1e-9)


def test_undefined_metrics_are_none_with_a_warning() -> None:
    y = np.zeros(50, dtype=int)
    ev = binary_metrics(y, np.linspace(0, 0.4, 50), threshold=0.5)
    assert ev.metrics["roc_auc"] is None and ev.metrics["average_precision"] is None
    assert ev.metrics["precision"] is None and ev.metrics["recall"] is None
    assert ev.metrics["brier"] is not None and ev.metrics["log_loss"] is not None
    assert any("roc_auc on test is undefined" in w for w in ev.warnings)
    assert not any(isinstance(v, float) and np.isnan(v) for v in ev.metrics.values())


def test_threshold_maximises_f1_on_validation() -> None:
    rng = np.random.default_rng(5)
    y = (rng.uniform(size=400) < 0.2).astype(int)
    s = np.clip(0.4 * y + rng.uniform(size=400) * 0.6, 0, 1)
    threshold, note = choose_threshold(y, s)
    assert note is None
    best = max(f1_score(y, (s >= t).astype(int)) for t in np.unique(s))
    assert f1_score(y, (s >= threshold).astype(int)) == pytest.approx(best)
    assert choose_threshold(np.zeros(10, dtype=int), s[:10])[0] == 0.5


def test_card_precision_at_k_hand_example() -> None:
    hours = ["2025-04-01T08", "2025-04-01T09", "2025-04-01T10", "2025-04-01T11", "2025-04-02T08", "2025-04-02T09"]
    ts = np.array(hours, "datetime64[us]")
    customer = np.array([1, 1, 2, 3, 1, 2])
    y = np.array([0, 1, 0, 0, 0, 1])
    score = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.6])
    # day 1: max scores c1 0.9 (fraud that day), c2 0.8, c3 0.2 -> top 2 = {c1, c2} -> 1/2
    # day 2: c1 0.7 (no fraud), c2 0.6 (fraud) -> top 2 = both -> 1/2; top 1 = {c1} -> 0
    assert card_precision_at_k(ts, customer, y, score, k=2) == pytest.approx(0.5)
    assert card_precision_at_k(ts, customer, y, score, k=1) == pytest.approx(0.5)  # (1 + 0) / 2
    assert card_precision_at_k(ts, customer, y, score, k=100) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert card_precision_at_k(ts[:0], customer[:0], y[:0], score[:0]) is None


# -- reference statistics and PSI -----------------------------------------------------------------


def test_psi_same_distribution_near_zero_and_shift_large() -> None:
    rng = np.random.default_rng(6)
    ref = reference_entry(rng.normal(size=20_000), bins=10)
    assert psi(ref, rng.normal(size=20_000)) < 0.01
    assert psi(ref, rng.normal(loc=1.0, size=20_000)) > 0.2
    more_nulls = rng.normal(size=20_000)
    more_nulls[:6000] = np.nan
    assert psi(ref, more_nulls) > 0.2  # NULLs are their own bin


def test_reference_stats_are_json_and_dedupe_edges() -> None:
    rng = np.random.default_rng(7)
    X = np.column_stack([rng.normal(size=1000), (rng.uniform(size=1000) < 0.3).astype(float), np.full(1000, np.nan)])
    stats = reference_stats(X, ["a", "flag", "empty"], rng.uniform(size=200), bins=10)
    json.dumps(stats, allow_nan=False)
    a, flag, empty = (stats["features"][k] for k in ("a", "flag", "empty"))
    assert len(a["edges"]) == 9 and len(a["fractions"]) == 11 and sum(a["fractions"]) == pytest.approx(1.0)
    assert flag["edges"] == [0.0, 1.0] and flag["mean"] == pytest.approx(X[:, 1].mean())
    assert empty["null_rate"] == 1.0 and empty["mean"] is None and empty["edges"] == []
    assert stats["score"]["count"] == 200 and stats["score"]["split"] == "test"
    assert psi(flag, X[:, 1]) == pytest.approx(0.0, abs=1e-9)


# -- models ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["lightgbm", "logistic"])
def test_saved_predictor_matches_in_memory_model(tmp_path: Path, model_type: str) -> None:
    table = synthetic_table(n=2000)
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in FEATURES]).astype(float)
    y = table.column("is_fraud").to_numpy()
    model = fit_model(model_type, "binary", X, y, FEATURES, {"n_estimators": 30} if model_type == "lightgbm" else {})
    predictor = model.predictor()
    path = tmp_path / f"model{predictor.suffix}"
    path.write_text(predictor.to_text(), encoding="utf-8")
    loaded = Predictor.load(path, sha256_file(path))
    assert loaded.feature_names == FEATURES
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=0, atol=1e-12)
    contributions = loaded.contributions(X[:50])
    assert contributions.shape == (50, len(FEATURES) + 1)
    np.testing.assert_allclose(contributions.sum(axis=1), loaded.raw_score(X[:50]), atol=1e-9)
    log_odds = np.log(loaded.predict(X[:50]) / (1 - loaded.predict(X[:50])))
    np.testing.assert_allclose(contributions.sum(axis=1), log_odds, atol=1e-6)
    with pytest.raises(LoopmlError, match="expected rows of 3 features"):
        loaded.predict(X[:, :2])


def test_logistic_imputes_train_medians() -> None:
    X = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, np.nan], [5.0, 40.0]] * 10)
    y = np.array([0, 1, 0, 1] * 10)
    model = fit_model("logistic", "binary", X, y, ["a", "b"])
    assert model.impute is not None and model.impute.tolist() == [3.0, 20.0]
    assert np.isfinite(model.predictor().predict(np.array([[np.nan, np.nan]]))).all()


def test_unknown_model_type_and_bad_params() -> None:
    X, y = np.zeros((10, 1)), np.array([0, 1] * 5)
    with pytest.raises(
        LoopmlError, match=r"model.type: unknown model type 'catboost' \(choices: lightgbm, logistic, linear, xgboost"
    ):
        fit_model("catboost", "binary", X, y, ["a"])
    with pytest.raises(LoopmlError, match=r"model.params: invalid parameter for logistic"):
        fit_model("logistic", "binary", X, y, ["a"], {"no_such_knob": 1})


# -- the pipeline end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two trainings in one project: good data, then data whose train-window labels are shuffled."""
    root = tmp_path_factory.mktemp("project")
    spec = make_spec()
    layout, registry = project(root, spec)
    good = write(synthetic_table(seed=0), root / "good.parquet")
    first = train(spec, layout, good, FEATURES, LINEAGE, registry, trials=5)
    bad = write(synthetic_table(seed=1, shuffle_before=np.datetime64("2025-05-17")), root / "bad.parquet")
    second = train(spec, layout, bad, FEATURES, {"snapshot": "snap-2", "spec_hash": "abc123"}, registry)
    return {"root": root, "spec": spec, "layout": layout, "registry": registry, "first": first, "second": second, "good": good}


def test_first_training_beats_random_and_is_champion(trained: dict[str, Any]) -> None:
    first, registry = trained["first"], trained["registry"]
    assert first.metrics["test"]["roc_auc"] > 0.7
    assert first.baseline_metrics is not None and first.baseline_metrics["test"]["roc_auc"] > 0.7
    assert first.model_version == 1 and first.promoted and first.gate.passed
    assert champion(registry) == 1
    body = first.to_json()
    assert {"run_id", "model_version", "promoted", "metrics"} <= body.keys()
    assert set(body["metrics"]) == {"test", "valid"}
    assert {"roc_auc", "average_precision", "log_loss", "brier", "precision", "recall", "f1", "card_precision@100"} <= set(
        body["metrics"]["test"]
    )
    json.dumps(body, allow_nan=False)


def test_registered_version_has_lineage_signature_and_reference(trained: dict[str, Any]) -> None:
    registry, first = trained["registry"], trained["first"]
    version = registry.get(1)
    lineage = version.lineage
    assert lineage["snapshot"] == "snap-1" and lineage["spec_hash"] == "abc123"
    assert lineage["code_version"].startswith("0.1.0+") and lineage["git_commit"]
    assert lineage["seed"] == 0 and lineage["run_id"] == first.run_id
    assert lineage["training_set"] == str(trained["good"].resolve())
    assert {"lightgbm", "scikit-learn", "numpy"} <= set(lineage["libraries"])
    assert lineage["split"]["test"]["start"] == "2025-05-24T00:00:00" and lineage["split"]["train"]["rows"] > 0
    assert [c["name"] for c in version.signature] == FEATURES and version.signature[0]["type"] == "float"
    assert 0 < version.metrics["threshold"] < 1 and version.metrics["latency_ms"]["p99"] > 0
    assert version.gate is not None and version.gate.passed
    stats = registry.reference_stats(1)
    assert set(stats["features"]) == set(FEATURES) and stats["score"]["count"] == lineage["split"]["test"]["rows"]
    # features' reference: the test split (the most recent rows, as live traffic), like the score's
    assert stats["features"]["f3"]["count"] == lineage["split"]["test"]["rows"]
    assert stats["features"]["f3"]["null_rate"] == pytest.approx(0.1, abs=0.06)


def test_worse_model_is_not_promoted_and_says_why(trained: dict[str, Any]) -> None:
    second, registry = trained["second"], trained["registry"]
    assert second.model_version == 2 and not second.promoted and not second.gate.passed
    assert second.champion_version == 1
    reason = " ".join(second.gate.reasons)
    assert "average_precision" in reason and "champion v1" in reason and "below gate.min_improvement" in reason
    assert second.gate.numbers["candidate"] < second.gate.numbers["champion"] - 0.1
    assert champion(registry) == 1
    stored = registry.get(2).gate
    assert stored is not None and not stored.passed and stored.reasons == second.gate.reasons


def test_registry_predictor_matches_the_run(trained: dict[str, Any]) -> None:
    registry, layout, first = trained["registry"], trained["layout"], trained["first"]
    sample = pq.read_table(layout.runs / first.run_id / "predictions_sample.parquet")
    table = pq.read_table(trained["good"])
    rows = sample.column("row").to_numpy()
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False)[rows] for c in FEATURES]).astype(float)
    np.testing.assert_allclose(registry.load_predictor(1).predict(X), sample.column("score").to_numpy(), atol=1e-12)


def test_runs_are_tracked(trained: dict[str, Any]) -> None:
    store = RunStore(trained["layout"].runs)
    first, second = trained["first"], trained["second"]
    listed = store.list()
    assert [r.run_id for r in listed][:2] == sorted([first.run_id, second.run_id], reverse=True)
    summary = next(r for r in listed if r.run_id == first.run_id)
    assert summary.status == "finished" and summary.model_version == 1 and summary.promoted is True
    assert summary.metric == "average_precision" and summary.value == pytest.approx(first.metrics["test"]["average_precision"])
    assert len(store.list(limit=1, offset=1)) == 1
    record = store.get(first.run_id)
    assert record.params["trials"] == 5 and len(record.params["tuning"]["trials"]) == 5
    selected = record.params["selection"]
    assert selected["model_type"] == record.lineage["model_type"] and selected["metric"] == "average_precision"
    if selected["model_type"] == "lightgbm":  # the tuned model was registered: with the study's best parameters
        assert record.params["tuning"]["best_params"]["n_estimators"] == record.lineage["model_params"]["n_estimators"]
    assert record.lineage["snapshot"] == "snap-1" and record.duration_s is not None and record.seed == 0
    assert record.baseline_metrics is not None and ("model.txt" in record.artifacts or "model.json" in record.artifacts)
    with pytest.raises(LoopmlError, match="no run '20990101T000000-000000'"):
        store.get("20990101T000000-000000")
    with pytest.raises(LoopmlError, match="no run"):
        store.get("../../etc")


def test_champion_needing_missing_features_fails_safe(trained: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path
    spec = trained["spec"]
    layout, registry = project(root, spec)
    write(synthetic_table(seed=0), root / "full.parquet")
    assert train(spec, layout, root / "full.parquet", FEATURES, LINEAGE, registry).promoted
    narrow = write(synthetic_table(seed=0).drop_columns(["f3"]), root / "narrow.parquet")
    result = train(spec, layout, narrow, ["f1", "f2"], LINEAGE, registry)
    assert not result.promoted
    assert any("f3" in r and "lacks" in r for r in result.gate.reasons)
    assert champion(registry) == 1


def test_unknown_model_type_fails_the_run_and_registers_nothing(tmp_path: Path) -> None:
    spec = make_spec(model={"type": "catboost"})
    layout, registry = project(tmp_path, spec)
    data = write(synthetic_table(n=500), tmp_path / "t.parquet")
    with pytest.raises(LoopmlError, match=r"model.type: unknown model type 'catboost'"):
        train(spec, layout, data, FEATURES, LINEAGE, registry)
    assert registry.list() == []
    [run] = RunStore(layout.runs).list()
    assert run.status == "failed" and "catboost" in (RunStore(layout.runs).get(run.run_id).error or "")


def test_bad_training_set_errors_name_file_and_column(tmp_path: Path) -> None:
    spec = make_spec()
    layout, registry = project(tmp_path, spec)
    data = write(synthetic_table(n=500).append_column("name", pa.array(["x"] * 500)), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: feature column 'missing' is missing"):
        train(spec, layout, data, ["f1", "missing"], LINEAGE, registry)
    with pytest.raises(DataError, match=r"feature column 'name' has type string; features must be numeric"):
        train(spec, layout, data, ["f1", "name"], LINEAGE, registry)
    with pytest.raises(DataError, match=r"cannot read the training set"):
        train(spec, layout, tmp_path / "nope.parquet", FEATURES, LINEAGE, registry)


def test_label_positive_that_never_occurs(tmp_path: Path) -> None:
    spec = make_spec(label={"source": "events", "column": "is_fraud", "positive": "yes"})
    layout, registry = project(tmp_path, spec)
    data = write(synthetic_table(n=500), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"column 'is_fraud': label.positive 'yes' never occurs \(values seen: 0, 1\)"):
        train(spec, layout, data, FEATURES, LINEAGE, registry)


def test_null_and_nan_labels_are_set_aside_with_a_warning(tmp_path: Path) -> None:
    spec = make_spec(model={"type": "logistic", "baseline": None})
    layout, registry = project(tmp_path, spec)
    table = synthetic_table(n=3000)
    labels = table.column("is_fraud").to_pylist()
    labels[::10] = [None] * 300
    data = write(table.set_column(3, "is_fraud", pa.array(labels, pa.int8())), tmp_path / "t.parquet")
    result = train(spec, layout, data, FEATURES, LINEAGE, registry)
    assert any("300 of 3000 row(s) have no label 'is_fraud'" in w and "uses the 2700 labelled" in w for w in result.warnings)
    assert result.baseline_metrics is None and registry.get(1).kind == "linear"
    # a regression label written NaN (not NULL) is set aside too, instead of reaching the model (issue 12, case 4)
    spec = make_spec(task="regression", label={"source": "events", "column": "amount"}, model={"baseline": None})
    layout, registry = project(tmp_path / "regression", spec)
    amount = 50 + 10 * table.column("f1").to_numpy()
    amount[::7] = np.nan
    data = write(table.append_column("amount", pa.array(amount)), tmp_path / "r.parquet")
    result = train(spec, layout, data, FEATURES, LINEAGE, registry)
    assert any("429 of 3000 row(s) have no label 'amount' (blank, NaN or not known yet)" in w for w in result.warnings)


def test_regression_pipeline(tmp_path: Path) -> None:
    spec = make_spec(task="regression", label={"source": "events", "column": "amount", "delay": "1d"})
    layout, registry = project(tmp_path, spec)
    table = synthetic_table(n=3000)
    f1 = table.column("f1").to_numpy()
    amount = 50 + 10 * f1 + np.random.default_rng(0).normal(size=3000)
    data = write(table.append_column("amount", pa.array(amount)), tmp_path / "t.parquet")
    result = train(spec, layout, data, FEATURES, LINEAGE, registry)
    assert set(result.metrics["test"]) == {"rmse", "mae", "r2", "mape"}
    r2 = result.metrics["test"]["r2"]
    assert r2 is not None and r2 > 0.8 and result.threshold is None
    assert result.gate.numbers["metric"] == "rmse" and result.promoted
