"""One contract for every task of :data:`loopml.tasks.TASKS` (the river way: each task passes the same checks)."""

from __future__ import annotations

from typing import Any

import lightgbm
import numpy as np
import pytest

from loopml.errors import LoopmlError
from loopml.tasks import TASKS, Task, task_of
from loopml.tasks.metrics import higher_is_better

RNG = np.random.default_rng(3)


def labelled(task: Task, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    X = RNG.normal(size=(n, 3))
    signal = X[:, 0] - 0.5 * X[:, 1]
    y = (signal + RNG.normal(scale=0.5, size=n) > 0).astype(np.int64) if task.classifier else signal + RNG.normal(size=n)
    return X, y


@pytest.fixture(params=sorted(TASKS), ids=sorted(TASKS))
def task(request: pytest.FixtureRequest) -> Task:
    return TASKS[request.param]


def test_task_is_found_by_name_and_unknown_names_are_refused(task: Task) -> None:
    assert task_of(task.name) is task
    with pytest.raises(LoopmlError, match=r"^task: unknown task 'nope' \(choices: "):
        task_of("nope")


def test_metrics_default_and_directions(task: Task) -> None:
    assert task.metrics and task.default_metric in task.metrics
    for name in task.metrics:
        assert task.check_metric(name, "gate.metric") == name
        assert task.higher_is_better(name) == higher_is_better(name)
    with pytest.raises(LoopmlError, match=rf"^gate\.metric: unknown {task.name} metric 'nope' \(choices: "):
        task.check_metric("nope", "gate.metric")


def test_every_metric_is_evaluated_and_equals_its_single_form(task: Task) -> None:
    _, y = labelled(task)
    scores = 1 / (1 + np.exp(-RNG.normal(size=len(y)))) if task.classifier else y + RNG.normal(size=len(y))
    evaluation = task.evaluate(y, scores, 0.5, "valid")
    assert set(task.metrics) <= set(evaluation.metrics)
    for name in task.metrics:
        assert task.metric_value(name, y, scores, 0.5) == pytest.approx(evaluation.metrics[name], abs=1e-12), name


@pytest.mark.parametrize("family", ["lightgbm", "linear"])
def test_each_family_learns_the_task(task: Task, family: str) -> None:
    X, y = labelled(task)
    params: dict[str, Any] = {"n_estimators": 20, "verbose": -1, **task.weights({}, y)} if family == "lightgbm" else {}
    cls, effective = (task.lightgbm_class(lightgbm), params) if family == "lightgbm" else task.linear(params, 0)
    estimator = cls(**effective).fit(X, y)
    for method in task.sklearn_methods:
        assert callable(getattr(estimator, method))
    scores = task.predict(estimator, X)
    assert scores.shape == (len(y),) and np.isfinite(scores).all()
    if task.classifier:
        assert ((scores >= 0) & (scores <= 1)).all()
    learned = task.metric_value(task.default_metric, y, scores, 0.5)
    constant = task.metric_value(task.default_metric, y, np.full(len(y), float(np.mean(y))), 0.5)
    assert learned is not None and constant is not None
    assert (learned > constant) if task.higher_is_better(task.default_metric) else (learned < constant)
    assert task.weights({"class_weight": "balanced", "scale_pos_weight": 2.0}, y) == {}
