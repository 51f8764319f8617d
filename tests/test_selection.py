"""The best candidate wins: the baseline is registered when it is better on validation; no twin champion on unchanged data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from loopml.cli.training import selection_lines
from loopml.loop.train import train
from test_train import FEATURES, LINEAGE, make_spec, project, synthetic_table, write


def xor_table(n: int = 6000, seed: int = 0) -> pa.Table:
    """A label no linear model can learn (the sign of f1 * f2), so trees must win."""
    table = synthetic_table(n=n, seed=seed)
    f1 = table.column("f1").to_numpy()
    f2 = table.column("f2").to_numpy()
    rng = np.random.default_rng(seed + 1)
    y = ((f1 * f2 > 0) ^ (rng.uniform(size=n) < 0.1)).astype(np.int8)
    return table.set_column(table.schema.get_field_index("is_fraud"), "is_fraud", pa.array(y))


@pytest.fixture(scope="module")
def linear_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The label is a logistic function of f1 and f2: the logistic baseline is the true model."""
    root = tmp_path_factory.mktemp("linear")
    spec = make_spec(model={"params": {"n_estimators": 300, "learning_rate": 0.1, "num_leaves": 63, "min_child_samples": 2}})
    layout, registry = project(root, spec)
    data = write(synthetic_table(n=3000), root / "t.parquet")
    first = train(spec, layout, data, FEATURES, LINEAGE, registry)
    again = train(spec, layout, data, FEATURES, LINEAGE, registry)
    return {"spec": spec, "registry": registry, "first": first, "again": again, "data": data, "root": root}


def test_the_baseline_is_registered_when_it_is_better_on_validation(linear_world: dict[str, Any]) -> None:
    first, registry = linear_world["first"], linear_world["registry"]
    selection = first.selection
    assert selection is not None and selection.chosen == "baseline" and selection.model_type == "logistic"
    assert selection.valid["logistic"] > selection.valid["lightgbm"]  # chosen on valid, by the gate metric
    assert first.metrics == first.baseline_metrics  # the registered model is the baseline
    version = registry.get(first.model_version)
    assert version.kind == "linear" and version.lineage["model_type"] == "logistic" and first.promoted
    body = first.to_json()
    assert body["selection"]["chosen"] == "baseline" and body["selection"]["comparison"]["metric"] == "average_precision"
    comparison = body["selection"]["comparison"]
    assert comparison["model"]["value"] == pytest.approx(first.metrics["test"]["average_precision"])
    assert comparison["difference_low"] <= comparison["difference"] <= comparison["difference_high"]


def test_train_prints_model_against_baseline_and_the_gate(linear_world: dict[str, Any]) -> None:
    lines = selection_lines(linear_world["first"].to_json()["selection"])
    assert lines[0].startswith("registered logistic (valid average_precision: lightgbm ")
    assert "the baseline is better and is registered" in lines[0]
    assert lines[1].startswith("test average_precision: logistic ") and " vs lightgbm " in lines[1]
    assert "difference" in lines[1] and "% paired bootstrap" in lines[1] and "[" in lines[1]


def test_retraining_on_unchanged_data_makes_no_new_champion(linear_world: dict[str, Any]) -> None:
    first, again, registry = linear_world["first"], linear_world["again"], linear_world["registry"]
    assert again.metrics["test"] == pytest.approx(first.metrics["test"], rel=1e-9)  # the same data, the same model
    assert not again.promoted and "no improvement, keeping the champion" in again.gate.reasons[-1]
    assert registry.alias("champion").version == first.model_version  # type: ignore[union-attr]


def test_trees_win_where_the_label_is_not_linear(tmp_path: Path) -> None:
    spec = make_spec()
    layout, registry = project(tmp_path, spec)
    result = train(spec, layout, write(xor_table(), tmp_path / "t.parquet"), FEATURES, LINEAGE, registry)
    assert result.selection is not None and result.selection.chosen == "model" and result.selection.model_type == "lightgbm"
    assert registry.get(result.model_version).kind == "lightgbm"
    assert result.metrics["test"]["roc_auc"] > result.baseline_metrics["test"]["roc_auc"] + 0.2  # type: ignore[index]


def test_select_model_always_registers_the_model_type(linear_world: dict[str, Any], tmp_path: Path) -> None:
    spec = make_spec(model={"select": "model"})
    layout, registry = project(tmp_path, spec)
    result = train(spec, layout, linear_world["data"], FEATURES, LINEAGE, registry)
    assert result.selection is not None and result.selection.model_type == "lightgbm"
    assert "model.select: model registers lightgbm" in result.selection.reason
    assert registry.get(result.model_version).kind == "lightgbm"
