"""The ``Task`` protocol: what differs by kind of supervised problem, asked by every stage instead of ``if task == ...``.

A task owns its metric set (names, directions, the gate's default metric, how
each is computed), whether a decision threshold and probability calibration
apply, what its labels must look like, and which estimator of each model family
learns it (LightGBM, XGBoost, the linear baseline, a scikit-learn class) and how
scores are read from it. Like scikit-learn's estimator tags and river's
per-task checks: stages stay the same, tasks plug in (:mod:`loopml.tasks`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from loopml.tasks.metrics import Evaluation

FloatArray = npt.NDArray[np.float64]


class Task(Protocol):
    #: the spec's ``task`` value
    name: str
    #: the metric names of ``train --json`` ``metrics.test`` (extras such as ``card_precision@100`` aside)
    metrics: tuple[str, ...]
    #: ``gate.metric`` when the spec leaves it unset
    default_metric: str
    #: labels are classes (stratified random splits; a split with one class cannot rank)
    classifier: bool
    #: a decision threshold is chosen on validation and applied when answering
    thresholded: bool
    #: probability calibration (``model.calibration``) applies
    calibrated: bool

    def check_metric(self, name: str, key: str) -> str:
        """``name`` if it is one of this task's metrics, else a LoopmlError naming ``key`` and the choices."""
        ...

    def higher_is_better(self, name: str) -> bool:
        """The direction of a metric :meth:`check_metric` accepts."""
        ...

    def evaluate(
        self,
        y: npt.NDArray[Any],
        scores: FloatArray,
        threshold: float | None,
        where: str,
        timestamps: npt.NDArray[np.datetime64] | None = None,
        entity_ids: npt.NDArray[Any] | None = None,
    ) -> Evaluation:
        """The task's metric set on one split (and what could not be computed)."""
        ...

    def metric_value(self, name: str, y: npt.NDArray[Any], scores: FloatArray, threshold: float) -> float | None:
        """One metric alone, never touching process-wide warning state (tuning trials run in threads)."""
        ...

    def lightgbm_class(self, lightgbm: ModuleType) -> type[Any]:
        """The LightGBM estimator that learns this task."""
        ...

    def xgboost_class(self, xgboost: ModuleType) -> type[Any]:
        """The XGBoost estimator that learns this task."""
        ...

    def linear(self, params: dict[str, Any], seed: int) -> tuple[type[Any], dict[str, Any]]:
        """The linear baseline's estimator class and its effective parameters."""
        ...

    def weights(self, params: dict[str, Any], y: npt.NDArray[Any]) -> dict[str, Any]:
        """Parameters added to LightGBM/XGBoost for the labels' balance (empty when the user set their own)."""
        ...

    #: the methods a ``sklearn:<module>.<Class>`` estimator needs for this task
    sklearn_methods: tuple[str, ...]

    def predict(self, estimator: Any, X: Any) -> FloatArray:
        """In-memory scores of a fitted estimator (binary: the positive class's probability)."""
        ...
