"""Regression: numeric labels, scores are the predicted value; no threshold, no calibration.

Metrics: ``rmse, mae, r2, mape``; the gate's default metric is ``rmse``. The
linear baseline is ``Ridge`` (``logistic`` and ``linear`` name the same family).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error, r2_score

from loopml.errors import LoopmlError
from loopml.tasks.metrics import LOWER_IS_BETTER, REGRESSION_METRICS, Evaluation, FloatArray, mape_problem, regression_metrics


class Regression:
    name = "regression"
    metrics: tuple[str, ...] = REGRESSION_METRICS
    default_metric = "rmse"
    classifier = False
    thresholded = False
    calibrated = False
    sklearn_methods: tuple[str, ...] = ("fit", "predict")

    def check_metric(self, name: str, key: str) -> str:
        if name in self.metrics:
            return name
        raise LoopmlError(f"{key}: unknown regression metric {name!r} (choices: {', '.join(self.metrics)})")

    def higher_is_better(self, name: str) -> bool:
        return name not in LOWER_IS_BETTER

    def evaluate(
        self,
        y: npt.NDArray[Any],
        scores: FloatArray,
        threshold: float | None,
        where: str,
        timestamps: npt.NDArray[np.datetime64] | None = None,
        entity_ids: npt.NDArray[Any] | None = None,
    ) -> Evaluation:
        return regression_metrics(y, scores, where)

    def metric_value(self, name: str, y: npt.NDArray[Any], scores: FloatArray, threshold: float) -> float | None:
        s = np.asarray(scores, dtype=np.float64)
        t = np.asarray(y, dtype=np.float64)
        computed: dict[str, Callable[[], float]] = {
            "rmse": lambda: float(np.sqrt(mean_squared_error(t, s))),
            "mae": lambda: mean_absolute_error(t, s),
            "r2": lambda: r2_score(t, s),
            "mape": lambda: mean_absolute_percentage_error(t, s),
        }
        if len(t) < 2 or name not in computed or (name == "mape" and mape_problem(t) is not None):
            return None
        value = float(computed[name]())
        return value if np.isfinite(value) else None

    def lightgbm_class(self, lightgbm: ModuleType) -> type[Any]:
        cls: type[Any] = lightgbm.LGBMRegressor
        return cls

    def xgboost_class(self, xgboost: ModuleType) -> type[Any]:
        cls: type[Any] = xgboost.XGBRegressor
        return cls

    def linear(self, params: dict[str, Any], seed: int) -> tuple[type[Any], dict[str, Any]]:
        return Ridge, dict(params)

    def weights(self, params: dict[str, Any], y: npt.NDArray[Any]) -> dict[str, Any]:
        return {}

    def predict(self, estimator: Any, X: Any) -> FloatArray:
        return np.asarray(estimator.predict(X), dtype=np.float64)
