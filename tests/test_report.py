"""The evaluation report of a training run, calibration and thresholds end to end, and bad evaluation input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, precision_score
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.loop.train import train
from loopml.train import RunStore
from test_train import FEATURES, LINEAGE, make_spec, project, synthetic_table, write

PNG = b"\x89PNG\r\n\x1a\n"


def with_columns(n: int = 8000) -> pa.Table:
    """The synthetic events plus a segment column (the model is much better on 'high' than on 'low') and a group column."""
    table = synthetic_table(n=n)
    f1 = table.column("f1").to_numpy()
    table = table.append_column("band", pa.array(np.where(f1 > 0.5, "high", "low")))
    return table.append_column("merchant", pa.array(np.arange(n) % 37))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("calibrated")
    spec = make_spec(
        model={
            "calibration": "isotonic",
            "threshold": {"objective": "precision", "target": 0.7},
            "params": {"n_estimators": 60},
            "select": "model",  # the report of a tree model (gain importance), compared with the baseline
        },
        evaluation={"segments": ["band", "f2"], "bootstrap": 100},
    )
    layout, registry = project(root, spec)
    data = write(with_columns(), root / "t.parquet")
    result = train(spec, layout, data, FEATURES, LINEAGE, registry)
    folder = layout.runs / result.run_id
    return {"result": result, "registry": registry, "folder": folder, "report": json.loads((folder / "report.json").read_text())}


def test_report_files_exist_and_the_html_shows_them(calibrated: dict[str, Any]) -> None:
    folder, result, report = calibrated["folder"], calibrated["result"], calibrated["report"]
    assert result.report == str(folder / "report.html")
    record = RunStore(folder.parent).get(result.run_id)
    page = (folder / "report.html").read_text()
    for name in ("roc_pr", "calibration", "confusion", "importance", "partial_dependence", "segments_band", "segments_f2"):
        file = report["plots"][name]
        assert (folder / file).read_bytes().startswith(PNG) and f'src="{file}"' in page and file in record.artifacts
    assert {"report.json", "report.html", "model.zip"} <= set(record.artifacts)
    assert "Bootstrap confidence intervals" in page and "Segments of band" in page and "partial dependence" in page.lower()


def test_report_metrics_match_the_run_and_scikit_learn(calibrated: dict[str, Any]) -> None:
    result, report, folder = calibrated["result"], calibrated["report"], calibrated["folder"]
    assert report["metrics"]["test"] == result.metrics["test"] and report["headline"] == "average_precision"
    sample = pq.read_table(folder / "predictions_sample.parquet")  # every test row (fewer than 5000)
    y, s = sample.column("label").to_numpy(), sample.column("score").to_numpy()
    assert report["rows"]["test"] == len(y)
    assert result.metrics["test"]["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    threshold = report["threshold"]["threshold"]
    assert result.metrics["test"]["precision"] == pytest.approx(precision_score(y, s >= threshold), abs=1e-9)
    counts = report["confusion_matrix"]["test"]
    assert counts["tp"] == int(((s >= threshold) & (y == 1)).sum()) and sum(counts.values()) == len(y)
    [ap, card] = report["confidence_intervals"]
    assert ap["metric"] == "average_precision" and ap["low"] < ap["value"] < ap["high"] and ap["resamples"] == 100
    assert card["metric"] == "card_precision@100" and card["unit"] == "entities"
    comparison = {c["metric"]: c for c in report["comparison"]}
    assert set(comparison) == {"average_precision", "card_precision@100"}
    assert comparison["average_precision"]["model"]["value"] == result.metrics["test"]["average_precision"]
    assert comparison["average_precision"]["baseline"]["value"] == result.baseline_metrics["test"]["average_precision"]
    ranking = report["ranking"]["test"]
    assert ranking["query"] == "entities per day" and ranking["precision@100"] == pytest.approx(card["value"], abs=1e-12)


def test_calibrated_threshold_is_stored_and_served(calibrated: dict[str, Any]) -> None:
    result, registry, report, folder = calibrated["result"], calibrated["registry"], calibrated["report"], calibrated["folder"]
    version = registry.get(result.model_version)
    assert version.kind == "calibrated" and version.metrics["calibration"] == "isotonic"
    assert version.metrics["threshold"] == report["threshold"]["threshold"] == result.threshold
    choice = version.metrics["threshold_choice"]
    assert choice["objective"] == "precision" and choice["value"] >= 0.7 and result.metrics["valid"]["precision"] >= 0.7
    sample = pq.read_table(folder / "predictions_sample.parquet")
    table = pq.read_table(Path(version.lineage["training_set"]))
    rows = sample.column("row").to_numpy()
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False)[rows] for c in FEATURES]).astype(float)
    served = registry.load_predictor(result.model_version).predict(X)
    np.testing.assert_allclose(served, sample.column("score").to_numpy(), atol=1e-12)  # the served scores are calibrated ones
    curve = report["calibration"]["curve"]["model"]
    weights = np.asarray(curve["count"])
    gap = np.abs(np.asarray(curve["predicted"]) - np.asarray(curve["observed"]))
    assert float((weights * gap).sum() / weights.sum()) < 0.05  # calibrated on valid, still close on test


def test_segments_show_the_gap(calibrated: dict[str, Any]) -> None:
    band, f2 = calibrated["report"]["segments"]
    assert band["column"] == "band" and {s["value"] for s in band["segments"]} == {"high", "low"}
    assert band["gap"]["highest"]["value"] == "high" and band["gap"]["gap"] > 0.1
    assert len(f2["segments"]) == 5 and sum(s["rows"] for s in f2["segments"]) == calibrated["report"]["rows"]["test"]


def test_explanations_in_the_report(calibrated: dict[str, Any]) -> None:
    explanations = calibrated["report"]["explanations"]
    ranked = [row["feature"] for row in explanations["importance"]]
    assert ranked[2] == "f3" and all(r["gain"] is not None for r in explanations["importance"])
    assert [c["feature"] for c in explanations["partial_dependence"]] == ranked[:5][: len(explanations["partial_dependence"])]


def test_regression_report_and_group_ranking(tmp_path: Path) -> None:
    spec = make_spec(
        task="regression",
        label={"source": "events", "column": "amount", "delay": "1d"},
        evaluation={"segments": ["band"], "group": "merchant"},
    )
    layout, registry = project(tmp_path, spec)
    table = with_columns(4000)
    amount = 50 + 10 * table.column("f1").to_numpy() + np.random.default_rng(0).normal(size=4000)
    data = write(table.append_column("amount", pa.array(amount)), tmp_path / "t.parquet")
    result = train(spec, layout, data, FEATURES, LINEAGE, registry)
    report = json.loads((layout.runs / result.run_id / "report.json").read_text())
    assert report["threshold"] is None and "confusion_matrix" not in report and "regression" in report["plots"]
    [rmse] = report["confidence_intervals"]
    assert rmse["metric"] == "rmse" and rmse["low"] < result.metrics["test"]["rmse"] < rmse["high"]
    assert report["segments"][0]["metric"] == "rmse"


def test_group_ranking_for_binary(tmp_path: Path) -> None:
    spec = make_spec(evaluation={"group": "merchant", "k": 5, "bootstrap": 0}, model={"baseline": None})
    layout, registry = project(tmp_path, spec)
    result = train(spec, layout, write(with_columns(), tmp_path / "t.parquet"), FEATURES, LINEAGE, registry)
    report = json.loads((layout.runs / result.run_id / "report.json").read_text())
    ranking = report["ranking"]["test"]
    assert ranking["query"] == "rows grouped by merchant" and ranking["queries"] == 37 and "ndcg@5" in ranking
    assert report["confidence_intervals"] == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"evaluation": {"metric": "auc"}}, r"^evaluation\.metric: unknown binary metric 'auc' \(choices: "),
        ({"evaluation": {"segments": ["band", "nope"]}}, r"^evaluation\.segments\[1\]: column 'nope' is not in the training set"),
        ({"evaluation": {"group": "nope"}}, r"^evaluation\.group: column 'nope' is not in the training set"),
        ({"model": {"tuning": {"metric": "rmse", "trials": 2}}}, r"^model\.tuning\.metric: unknown binary metric 'rmse'"),
        ({"gate": {"metric": "accuracy"}}, r"^gate\.metric: unknown metric 'accuracy'"),
        (
            {"task": "regression", "model": {"calibration": "sigmoid"}},
            r"^model\.calibration: 'sigmoid' applies to binary tasks only",
        ),
        ({"model": {"type": "sklearn:sklearn.nope.Model"}}, r"^model\.type: cannot import module 'sklearn\.nope'"),
    ],
)
def test_bad_evaluation_and_model_settings_fail_before_anything_is_registered(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    if overrides.get("task") == "regression":
        overrides = {**overrides, "label": {"source": "events", "column": "f1", "delay": "1d"}}
    spec = make_spec(**overrides)
    layout, registry = project(tmp_path, spec)
    data = write(with_columns(3000), tmp_path / "t.parquet")
    with pytest.raises(LoopmlError, match=message) as info:
        train(spec, layout, data, ["f2", "f3"] if overrides.get("task") else FEATURES, LINEAGE, registry)
    assert "\n" not in str(info.value) and registry.list() == []


def test_constant_feature_is_a_recorded_warning(tmp_path: Path) -> None:
    spec = make_spec(model={"baseline": None})
    layout, registry = project(tmp_path, spec)
    table = with_columns(4000).append_column("flat", pa.array(np.full(4000, 7.0)))
    result = train(spec, layout, write(table, tmp_path / "t.parquet"), [*FEATURES, "flat"], LINEAGE, registry)
    expected = "feature 'flat' is constant (7) on the train split; kept, but the model cannot learn from it"
    assert expected in result.warnings and expected in RunStore(layout.runs).get(result.run_id).warnings
    assert registry.get(result.model_version).feature_names == [*FEATURES, "flat"]
    assert all(v is None or np.isfinite(v) for v in result.metrics["test"].values())


@pytest.mark.parametrize("model_type", ["xgboost", "sklearn:sklearn.ensemble.HistGradientBoostingClassifier"])
def test_other_families_register_and_serve(tmp_path: Path, model_type: str) -> None:
    spec = make_spec(model={"type": model_type, "baseline": None, "calibration": "sigmoid"})
    layout, registry = project(tmp_path, spec)
    result = train(spec, layout, write(synthetic_table(n=5000), tmp_path / "t.parquet"), FEATURES, LINEAGE, registry)
    version = registry.get(result.model_version)
    assert version.kind == "calibrated" and result.metrics["test"]["roc_auc"] > 0.8
    assert result.promoted, result.gate.reasons  # the gate says why when it refuses
    X = np.array([[2.0, -1.0, 0.0], [-2.0, 1.0, np.nan]])
    high, low = registry.load_predictor(result.model_version).predict(X)
    assert high > low


runner = CliRunner()


def test_cli_runs_show_prints_where_the_report_is(trained_copy: Path) -> None:
    listed = runner.invoke(app, ["runs", "list", "--json", "--project", str(trained_copy)])
    run_id = json.loads(listed.stdout)[0]["run_id"]
    shown = runner.invoke(app, ["runs", "show", run_id, "--project", str(trained_copy)])
    assert shown.exit_code == 0
    report = Path(shown.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.name == "report.html" and report.is_file() and report.parent.name == run_id
    as_json = json.loads(runner.invoke(app, ["runs", "show", run_id, "--json", "--project", str(trained_copy)]).stdout)
    assert as_json["report"] == str(report) and as_json["run_id"] == run_id and "report.json" in as_json["artifacts"]
