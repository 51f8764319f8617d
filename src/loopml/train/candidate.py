"""One candidate model from split data: tune -> fit -> calibrate -> choose the threshold.

The order is fixed and every step uses the validation split only, never test:

1. **tune** (main model only, when ``--trials N``, ``model.tuning.trials`` or
   ``model.tuning.timeout_s`` asks for it): an Optuna study
   (:mod:`loopml.train.tune`) on train/valid; its best parameters override
   ``model.params``;
2. **fit** on the train split (:mod:`loopml.train.models`); LightGBM without
   ``n_estimators`` in ``model.params`` stops adding rounds when the validation
   loss has not improved for 50 rounds (at most 2,000, learning rate 0.05 unless
   set), and records the rounds it kept in its parameters;
3. **calibrate** (``model.calibration``, binary only) on the validation scores
   (:mod:`loopml.train.calibrate`); the predictor that will be saved and
   served applies the calibration, so every later score is calibrated;
4. **threshold** (``model.threshold``, binary only) on the calibrated
   validation scores (:mod:`loopml.train.threshold`).

``scores`` holds each split's served-path scores (after calibration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.spec.model import Spec
from loopml.tasks import task_of
from loopml.tasks.metrics import DEFAULT_THRESHOLD, card_k, card_precision_at_k
from loopml.train.artifact import CalibratedPredictor, Predictor
from loopml.train.calibrate import fit_calibration
from loopml.train.models import FitOptions, FittedModel, fit_model
from loopml.train.threshold import ThresholdChoice, select_threshold
from loopml.train.tune import TuningResult, tune

FloatArray = npt.NDArray[np.float64]
Split = tuple[FloatArray, npt.NDArray[Any]]
_THRESHOLD_METRICS = ("precision", "recall", "f1")
#: LightGBM without ``n_estimators`` in ``model.params``: rounds chosen by early stopping on the validation loss
#: (LightGBM's fixed default of 100 rounds at 0.1 overfits small tables and underfits large ones)
AUTO_MAX_ROUNDS = 2000
AUTO_PATIENCE = 50
AUTO_LEARNING_RATE = 0.05
#: the part of a tuned candidate's progress the trials take (the final fit and scoring take the rest)
TUNING_SHARE = 0.9


@dataclass
class Candidate:
    """A fitted (possibly tuned and calibrated) model, its scores per split and its threshold."""

    model: FittedModel
    predictor: Predictor
    scores: dict[str, FloatArray]
    threshold: ThresholdChoice | None
    tuning: TuningResult | None = None
    calibration: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        return self.model.params


@dataclass(frozen=True)
class ValidContext:
    """What a tuning metric may need of the validation split besides labels (card precision: time and entity)."""

    timestamps: npt.NDArray[np.datetime64] | None = None
    entity_ids: npt.NDArray[Any] | None = None


def tuning_requested(spec: Spec, trials: int) -> bool:
    return trials > 0 or spec.model.tuning.trials > 0 or spec.model.tuning.timeout_s is not None


def _scorer(spec: Spec, metric: str, y_valid: npt.NDArray[Any], context: ValidContext) -> Any:
    k = card_k(metric)
    task = task_of(spec.task)

    def score(scores: FloatArray) -> float | None:
        if k is not None:
            if context.timestamps is None or context.entity_ids is None:
                raise LoopmlError(f"model.tuning.metric: {metric} needs a timestamp and an entity column in the training set")
            return card_precision_at_k(context.timestamps, context.entity_ids, y_valid, scores, k)
        threshold = DEFAULT_THRESHOLD
        if task.thresholded and metric in _THRESHOLD_METRICS:
            threshold = select_threshold(y_valid, scores, spec.model.threshold).threshold
        return task.metric_value(metric, y_valid, scores, threshold)

    return score


def fit_candidate(
    spec: Spec,
    model_type: str,
    key: str,
    splits: Mapping[str, Split],
    feature_names: list[str],
    params: dict[str, Any],
    trials: int = 0,
    tuning_metric: str | None = None,
    study: Path | None = None,
    study_name: str = "loopml",
    context: ValidContext | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Candidate:
    """Tune (main model), fit, calibrate and choose the threshold; see the module docstring.

    ``progress(message, fraction of this candidate's work)``: each tuning trial, then the final fit.
    """
    say = progress or (lambda _message, _fraction: None)
    method = spec.model.calibration
    task = task_of(spec.task)
    if method != "none" and not task.calibrated:
        raise LoopmlError(f"model.calibration: {method!r} applies to binary tasks only; use none for {spec.task}")
    (X_train, y_train), (X_valid, y_valid) = splits["train"], splits["valid"]
    tuning = None
    if key == "model.type" and tuning_requested(spec, trials):
        metric = tuning_metric or spec.gate.metric
        if task.classifier and len(np.unique(y_valid)) < 2:
            raise LoopmlError(f"model.tuning: the validation split has a single class; {metric} cannot be tuned on it")
        tuning = tune(
            model_type,
            spec.task,
            (X_train, y_train),
            (X_valid, y_valid),
            feature_names,
            dict(params),
            spec.model.seed,
            spec.model.tuning,
            metric,
            _scorer(spec, metric, y_valid, context or ValidContext()),
            trials=trials,
            storage=study,
            study_name=study_name,
            progress=lambda message, fraction: say(message, TUNING_SHARE * fraction),
        )
        params = {**params, **tuning.best_params}
    best = " with the best trial's parameters" if tuning is not None else ""
    say(f"fitting {model_type} on {len(y_train):,} training rows{best}", TUNING_SHARE if tuning is not None else 0.0)
    options = None
    if model_type == "lightgbm" and "n_estimators" not in params and len(y_valid):
        # rounds not set (nor tuned): as many as the validation loss keeps improving, up to AUTO_MAX_ROUNDS
        params = {"learning_rate": AUTO_LEARNING_RATE, **params, "n_estimators": AUTO_MAX_ROUNDS}
        options = FitOptions(
            eval_set=(X_valid, y_valid),
            callbacks=[lightgbm.early_stopping(AUTO_PATIENCE, first_metric_only=True, verbose=False)],
        )
    model = fit_model(model_type, spec.task, X_train, y_train, feature_names, params, spec.model.seed, key, options)
    if options is not None:
        rounds = int(model.estimator.best_iteration_ or model.estimator.n_estimators_)
        model.params["n_estimators"] = rounds  # what a refit (backtest, lineage) reproduces without the validation set
    notes = list(model.warnings)
    predictor = model.predictor()
    scores = {name: model.predict(X) for name, (X, _) in splits.items()}
    if method != "none":
        calibration = fit_calibration(method, y_valid, scores["valid"])
        predictor = CalibratedPredictor(predictor, calibration)
        scores = {name: calibration.apply(values) for name, values in scores.items()}
    threshold = None
    if task.thresholded:
        threshold = select_threshold(y_valid, scores["valid"], spec.model.threshold)
        if threshold.note:
            notes.append(f"{model_type}: {threshold.note}")
    return Candidate(model, predictor, scores, threshold, tuning, method, notes)
