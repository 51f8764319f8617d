"""Grouped random splits, entity leakage, k-fold and rolling-origin folds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from loopml.errors import LoopmlError
from loopml.project import Project
from loopml.spec.load import parse_spec
from loopml.train.split import (
    SPLITS,
    SplitBounds,
    SplitResult,
    check_entity_leakage,
    group_split,
    kfold_splits,
    rolling_origin_splits,
)
from specs import REMOVE, configure

DAY = np.timedelta64(1, "D")


def test_group_split_keeps_each_entity_in_one_split_and_covers_every_row() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 300, size=5000)
    result = group_split(len(groups), 0.15, 0.15, seed=1, groups=groups)
    together = np.concatenate([result.train, result.valid, result.test])
    assert sorted(together.tolist()) == list(range(5000))
    owners = [set(groups[result.indices(name)].tolist()) for name in SPLITS]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    assert 0.1 < len(result.test) / 5000 < 0.2
    again = group_split(len(groups), 0.15, 0.15, seed=1, groups=groups)
    assert np.array_equal(again.test, result.test)


def test_leakage_check_names_the_entity_and_the_splits() -> None:
    groups = np.array([1, 1, 2, 3, 4, 5])
    bounds = {name: SplitBounds(rows=1) for name in SPLITS}
    leaky = SplitResult("random", np.array([0, 2]), np.array([3]), np.array([1, 4, 5]), bounds)
    with pytest.raises(LoopmlError, match=r"customer_id 1 \(and 0 more\) has rows in both the train and test splits"):
        check_entity_leakage(leaky, groups, "customer_id")


def test_kfold_folds_partition_the_rows() -> None:
    y = np.array([0] * 90 + [1] * 10)
    folds = kfold_splits(100, 5, seed=0, stratify=y)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(100))
    for fold in folds:
        assert not set(fold.train.tolist()) & set(fold.test.tolist())
        assert y[fold.test].sum() == 2  # stratified: every fold keeps the 10 % positives
    groups = np.repeat(np.arange(20), 5)
    for fold in kfold_splits(100, 4, seed=0, groups=groups):
        assert not set(groups[fold.train].tolist()) & set(groups[fold.test].tolist())
    with pytest.raises(LoopmlError, match="k >= 2"):
        kfold_splits(100, 1, seed=0)
    with pytest.raises(LoopmlError, match="cannot make 10 folds of 5 row"):
        kfold_splits(5, 10, seed=0)


def test_rolling_origin_moves_forward_with_a_gap_and_never_trains_on_the_future() -> None:
    start = np.datetime64("2025-01-01T00:00:00", "us")
    ts = start + (np.arange(60 * 24) * np.timedelta64(1, "h"))  # 60 days, hourly
    folds = rolling_origin_splits(ts, train_days=14, test_days=7, gap=timedelta(days=7))
    assert [f.bounds["test"].label()[:10] for f in folds] == [
        "2025-01-22",
        "2025-01-29",
        "2025-02-05",
        "2025-02-12",
        "2025-02-19",
    ]
    for fold in folds:
        assert ts[fold.train].max() < ts[fold.test].min() - np.timedelta64(7, "D")
        assert len(fold.test) == 7 * 24 and len(fold.train) == 14 * 24
    assert len(rolling_origin_splits(ts, 14, 7, timedelta(days=7), step_days=1, folds=3)) == 3
    with pytest.raises(LoopmlError, match="one rolling-origin fold needs 50 \\+ gap 7 \\+ 7 days"):
        rolling_origin_splits(ts, 50, 7, timedelta(days=7))


SPEC = """
project: p
entities: {customer: {key: customer_id}}
sources:
  s:
    path: data.csv
    timestamp: ts
    columns: {customer_id: {type: int}, ts: {type: timestamp}, y: {type: int}}
label: {source: s, column: y, positive: 1}
split: {method: METHOD, group: GROUP}
"""


@pytest.mark.parametrize(
    ("method", "group", "message"),
    [
        ("time", "customer_id", "split.group: group applies to method: random"),
        ("random", "shop_id", "split.group: column 'shop_id' is not declared in source 's'"),
    ],
)
def test_check_rejects_a_bad_split_group(method: str, group: str, message: str) -> None:
    with pytest.raises(LoopmlError, match=message):
        parse_spec(SPEC.replace("METHOD", method).replace("GROUP", group), "loopml.yaml")
    assert (
        parse_spec(SPEC.replace("METHOD", "random").replace("GROUP", "customer_id"), "loopml.yaml").split.group == "customer_id"
    )


@pytest.mark.slow
def test_training_with_a_grouped_random_split(trained_copy: Path) -> None:
    time_split = {"train_days": REMOVE, "valid_days": REMOVE, "test_days": REMOVE}  # the split is {method: random, group}
    configure(trained_copy, split={"method": "random", "group": "customer_id", **time_split})
    project = Project.load(trained_copy)
    result = project.train()
    assert result.split["method"] == "random"
    assert result.metrics["test"]["roc_auc"] > 0.7
    configure(trained_copy, split={"group": "no_such_column"})
    with pytest.raises(LoopmlError, match=r"split\.group: column 'no_such_column' is not declared"):
        Project.load(trained_copy)


@pytest.mark.slow
def test_training_records_a_rolling_origin_backtest(trained_copy: Path) -> None:
    configure(trained_copy, split={"backtest": {"folds": 3, "train_days": 14, "test_days": 7}})
    result = Project.load(trained_copy).train()
    assert len(result.backtest) == 3
    starts = [fold["test"]["start"] for fold in result.backtest]
    assert starts == sorted(starts) and len(set(starts)) == 3
    for fold in result.backtest:
        assert fold["train"]["end"] < fold["test"]["start"]  # the label-delay gap sits between them
        assert fold["metrics"]["roc_auc"] > 0.6
    run = Project.load(trained_copy).runs().get(result.run_id)
    assert run.metrics["backtest"] == result.backtest
