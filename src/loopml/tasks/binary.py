"""Binary classification: labels 0/1, scores are the positive class's probability, a decision threshold applies.

Metrics: ``roc_auc, average_precision, log_loss, brier, precision, recall,
f1`` (the last three at the threshold chosen on validation) plus
``card_precision@K`` when entities and times are known. Class imbalance for
LightGBM and XGBoost: ``scale_pos_weight = sqrt(negatives / positives)`` of
the train split unless ``model.params`` sets its own (measured in
:mod:`loopml.train.models`); the logistic baseline is ``class_weight="balanced"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from loopml.errors import LoopmlError
from loopml.tasks.metrics import (
    BINARY_METRICS,
    CARD_PRECISION_K,
    DEFAULT_THRESHOLD,
    LINEAR_MAX_ITER,
    LOWER_IS_BETTER,
    Evaluation,
    FloatArray,
    binary_metrics,
    card_precision_at_k,
    confusion_guard,
)

_IMBALANCE_KEYS = ("scale_pos_weight", "is_unbalance", "class_weight")
_CARD = re.compile(r"card_precision@[1-9][0-9]*")


class Binary:
    name = "binary"
    metrics: tuple[str, ...] = BINARY_METRICS
    default_metric = "average_precision"
    classifier = True
    thresholded = True
    calibrated = True
    sklearn_methods: tuple[str, ...] = ("fit", "predict_proba")

    def check_metric(self, name: str, key: str) -> str:
        if name in self.metrics or _CARD.fullmatch(name):
            return name
        choices = [*self.metrics, f"card_precision@{CARD_PRECISION_K}"]
        raise LoopmlError(f"{key}: unknown binary metric {name!r} (choices: {', '.join(choices)})")

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
        evaluation = binary_metrics(y, scores, DEFAULT_THRESHOLD if threshold is None else threshold, where)
        if timestamps is not None and entity_ids is not None:
            name = f"card_precision@{CARD_PRECISION_K}"
            evaluation.metrics[name] = card_precision_at_k(timestamps, entity_ids, y, scores, CARD_PRECISION_K)
            if evaluation.metrics[name] is None:
                evaluation.warnings.append(f"{name} on {where} is undefined: no row")
        return evaluation

    def metric_value(self, name: str, y: npt.NDArray[Any], scores: FloatArray, threshold: float) -> float | None:
        s = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(y, dtype=np.int64)
        flagged = (s >= threshold).astype(np.int64)
        undefined = {
            "roc_auc": len(np.unique(labels)) < 2,
            "average_precision": len(np.unique(labels)) < 2,
            **{k: True for k in confusion_guard(labels.astype(np.float64), flagged.astype(np.float64))},
        }
        if undefined.get(name) or len(labels) == 0:
            return None
        computed: dict[str, Callable[[], float]] = {
            "roc_auc": lambda: roc_auc_score(labels, s),
            "average_precision": lambda: average_precision_score(labels, s),
            "log_loss": lambda: log_loss(labels, np.clip(s, 0.0, 1.0), labels=[0, 1]),
            "brier": lambda: brier_score_loss(labels, s, labels=[0, 1]),
            "precision": lambda: precision_score(labels, flagged, zero_division=0.0),
            "recall": lambda: recall_score(labels, flagged, zero_division=0.0),
            "f1": lambda: f1_score(labels, flagged, zero_division=0.0),
        }
        if name not in computed:
            return None
        value = float(computed[name]())
        return value if np.isfinite(value) else None

    def lightgbm_class(self, lightgbm: ModuleType) -> type[Any]:
        cls: type[Any] = lightgbm.LGBMClassifier
        return cls

    def xgboost_class(self, xgboost: ModuleType) -> type[Any]:
        cls: type[Any] = xgboost.XGBClassifier
        return cls

    def linear(self, params: dict[str, Any], seed: int) -> tuple[type[Any], dict[str, Any]]:
        return LogisticRegression, {"class_weight": "balanced", "max_iter": LINEAR_MAX_ITER, "random_state": seed, **params}

    def weights(self, params: dict[str, Any], y: npt.NDArray[Any]) -> dict[str, Any]:
        if any(k in params for k in _IMBALANCE_KEYS):
            return {}
        positives = int(np.sum(y == 1))
        return {"scale_pos_weight": float(np.sqrt((len(y) - positives) / max(positives, 1)))}

    def predict(self, estimator: Any, X: Any) -> FloatArray:
        return np.asarray(estimator.predict_proba(X)[:, 1], dtype=np.float64)
