"""Model families: LightGBM (the default), a standardised linear baseline, XGBoost, any scikit-learn estimator.

``model.type`` / ``model.baseline`` choose a family; the task (:mod:`loopml.tasks`) picks the estimator:

==============================  ====================================  ============================
type                            binary                                regression
==============================  ====================================  ============================
``lightgbm``                    ``LGBMClassifier``                    ``LGBMRegressor``
``logistic``                    ``LogisticRegression(balanced)``      ``Ridge`` (``linear`` is an alias)
``xgboost`` (extra)             ``XGBClassifier``                     ``XGBRegressor``
``sklearn:<module>.<Class>``    that class (needs ``predict_proba``)  that class
==============================  ====================================  ============================

``model.params`` go to the main model only; the baseline keeps its defaults.
The ``sklearn:`` form imports the named class at training time: it is the one
place a dotted path is resolved, because the estimator is the user's choice,
not one of ours; its artifact is a pickle, loaded only when its hash matches
(see :mod:`loopml.train.artifact`). It receives the features with NaN for
missing values (HistGradientBoosting handles them; others may refuse, and the
error says so) and ``random_state = model.seed`` when it has that parameter.

Class imbalance (LightGBM and XGBoost, binary): ``scale_pos_weight =
sqrt(negatives / positives)`` of the train split, unless ``model.params``
already sets ``scale_pos_weight``, ``is_unbalance`` or ``class_weight``.
Measured on the simulated fraud world (~2 % fraud, two seeds, test AP of the
example ``model.params``): no weighting 0.601/0.601, square root
0.591/0.594, full ``negatives/positives`` (what ``is_unbalance`` does)
0.588/0.571. The square root keeps ranking on par with no weighting, still
lifts the rare class, and distorts the probabilities far less than full
balancing (``model.calibration`` corrects the rest). The logistic baseline
keeps ``class_weight="balanced"``; an ``sklearn:`` estimator gets what its
``model.params`` say (e.g. ``class_weight``).

Missing values: LightGBM and XGBoost handle NaN natively; the linear family
replaces NaN with the train-split median of each column (stored in the artifact).

Constant and all-NULL features (on the train split) are **kept**, with a
warning recorded in the run: the model's input signature must stay the
feature definitions' (serving assembles exactly those columns), trees never
split on a constant column, and the linear family's scaler leaves it at zero
weight in effect. Dropping it would make the signature depend on the data
window and break the champion/challenger comparison on the same columns.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.preprocessing import StandardScaler

from loopml.errors import LoopmlError
from loopml.tasks import task_of
from loopml.train.artifact import (
    LightGBMPredictor,
    LinearModel,
    LinearPredictor,
    Predictor,
    SklearnPredictor,
    XGBoostPredictor,
    lightgbm_name,
    optional_module,
    original_name,
)

FloatArray = npt.NDArray[np.float64]
MODEL_TYPES = ("lightgbm", "logistic", "linear", "xgboost", "sklearn:<module>.<Class>")
SKLEARN_PREFIX = "sklearn:"
_KINDS = {"lightgbm": "lightgbm", "logistic": "linear", "xgboost": "xgboost", "sklearn": "sklearn"}
_EVAL_XY = "eval_X" in inspect.signature(lightgbm.LGBMModel.fit).parameters


@dataclass
class FitOptions:
    """Extra fit arguments used while tuning (LightGBM: a validation set, a metric and per-round callbacks)."""

    eval_set: tuple[FloatArray, npt.NDArray[Any]] | None = None
    eval_metric: str | None = None
    callbacks: list[Callable[..., Any]] = field(default_factory=list)
    #: ``warnings.catch_warnings`` changes process-wide state: parallel tuning trials (threads) must not use it
    record_warnings: bool = True


@dataclass
class FittedModel:
    """A fitted estimator plus what is needed to score with it and to export it."""

    type: str
    task: str
    feature_names: list[str]
    estimator: Any
    params: dict[str, Any]
    scaler: StandardScaler | None = None
    impute: FloatArray | None = None
    warnings: list[str] = field(default_factory=list)
    class_path: str | None = None
    _predictor: Predictor | None = None

    @property
    def kind(self) -> str:
        """The artifact kind: ``lightgbm``, ``linear``, ``xgboost`` or ``sklearn``."""
        return _KINDS[self.type]

    def _linear_input(self, X: FloatArray) -> FloatArray:
        assert self.scaler is not None and self.impute is not None
        filled = np.where(np.isnan(X), self.impute, X)
        scaled: FloatArray = self.scaler.transform(filled)
        return scaled

    def predict(self, X: FloatArray) -> FloatArray:
        """In-memory scores (positive-class probability for binary)."""
        if self.kind == "lightgbm":
            frame = pd.DataFrame(X, columns=[lightgbm_name(n) for n in self.feature_names])
            return task_of(self.task).predict(self.estimator, frame)
        if self.kind == "linear":
            return task_of(self.task).predict(self.estimator, self._linear_input(X))
        return self.predictor().predict(X)

    def predictor(self) -> Predictor:
        """The serving-side predictor, built from exactly what the artifact file will hold."""
        if self._predictor is None:
            self._predictor = self._make_predictor()
        return self._predictor

    def _make_predictor(self) -> Predictor:
        if self.kind == "lightgbm":
            booster: lightgbm.Booster = self.estimator.booster_
            return LightGBMPredictor(booster, booster.model_to_string())
        if self.kind == "xgboost":
            xgb_booster = self.estimator.get_booster()
            xgb_booster.feature_names = list(self.feature_names)
            return XGBoostPredictor(xgb_booster, bytes(xgb_booster.save_raw(raw_format="json")))
        if self.kind == "sklearn":
            return SklearnPredictor(self.estimator, self.feature_names, self.task, self.class_path or "sklearn")
        assert self.scaler is not None and self.impute is not None
        coef = np.ravel(self.estimator.coef_)
        intercept = float(np.ravel(self.estimator.intercept_)[0])  # (1,) for logistic, a scalar for ridge
        return LinearPredictor(
            LinearModel(
                task=self.task,
                feature_names=list(self.feature_names),
                coef=[float(c) for c in coef],
                intercept=intercept,
                mean=[float(m) for m in self.scaler.mean_],
                scale=[float(s) for s in self.scaler.scale_],
                impute=[float(v) for v in self.impute],
            )
        )


def sklearn_class(name: str, task: str, key: str) -> type[Any]:
    """The estimator class of ``sklearn:<module>.<Class>``, checked to fit and predict for ``task``."""
    path = name[len(SKLEARN_PREFIX) :]
    module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise LoopmlError(f"{key}: {name!r} must name a class as sklearn:<module>.<Class>")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoopmlError(f"{key}: cannot import module {module_name!r} of {name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise LoopmlError(f"{key}: module {module_name!r} has no class {class_name!r}")
    needed = task_of(task).sklearn_methods
    missing = [m for m in needed if not callable(getattr(cls, m, None))]
    if missing:
        raise LoopmlError(f"{key}: {path} has no {' or '.join(missing)}(); a {task} model needs {', '.join(needed)}")
    return cls


def check_model_type(name: str, key: str = "model.type", task: str = "binary") -> str:
    """The family of a model type name (``lightgbm``, ``logistic``, ``xgboost``, ``sklearn``), or raise naming the key."""
    if name.startswith(SKLEARN_PREFIX):
        sklearn_class(name, task, key)
        return "sklearn"
    if name not in ("lightgbm", "logistic", "linear", "xgboost"):
        raise LoopmlError(f"{key}: unknown model type {name!r} (choices: {', '.join(MODEL_TYPES)})")
    if name == "xgboost":
        optional_module("xgboost", "xgboost", key)
    return "logistic" if name == "linear" else name


def train_medians(X: FloatArray) -> FloatArray:
    """Per-column median of the non-NaN values (0.0 for an all-NaN column)."""
    out = np.zeros(X.shape[1], dtype=np.float64)
    for j in range(X.shape[1]):
        present = X[~np.isnan(X[:, j]), j]
        if len(present):
            out[j] = float(np.median(present))
    return out


def feature_warnings(X: FloatArray, names: list[str], where: str = "train split") -> list[str]:
    """Warnings for all-NULL and constant feature columns (they are kept; see the module docstring)."""
    notes = []
    present = ~np.isnan(X)
    counts = present.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        low, high = np.nanmin(np.where(present, X, np.inf), axis=0), np.nanmax(np.where(present, X, -np.inf), axis=0)
    for j, name in enumerate(names):
        if counts[j] == 0:
            notes.append(f"feature {name!r} is NULL on every row of the {where}; kept, but the model cannot learn from it")
        elif low[j] == high[j]:
            notes.append(f"feature {name!r} is constant ({low[j]:g}) on the {where}; kept, but the model cannot learn from it")
    return notes


def _build(
    family: str, name: str, task: str, params: dict[str, Any], seed: int, y: npt.NDArray[Any], key: str
) -> tuple[Any, dict[str, Any]]:
    kind = task_of(task)
    cls: Any
    if family == "lightgbm":
        effective: dict[str, Any] = {"random_state": seed, "verbose": -1, **params, **kind.weights(params, y)}
        cls = kind.lightgbm_class(lightgbm)
    elif family == "xgboost":
        xgb = optional_module("xgboost", "xgboost", key)
        effective = {"random_state": seed, "tree_method": "hist", "verbosity": 0, **params, **kind.weights(params, y)}
        cls = kind.xgboost_class(xgb)
    elif family == "sklearn":
        cls = sklearn_class(name, task, key)
        effective = dict(params)
    else:
        cls, effective = kind.linear(params, seed)
    params_key = "model.params" if key == "model.type" else key
    try:
        estimator = cls(**effective)
    except TypeError as exc:
        raise LoopmlError(f"{params_key}: invalid parameter for {name} ({exc})") from None
    if family == "sklearn" and "random_state" not in params and "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
        effective["random_state"] = seed
    return estimator, effective


def fit_model(
    model_type: str,
    task: str,
    X: FloatArray,
    y: npt.NDArray[Any],
    feature_names: list[str],
    params: dict[str, Any] | None = None,
    seed: int = 0,
    key: str = "model.type",
    options: FitOptions | None = None,
) -> FittedModel:
    """Fit one model family on ``X`` (NaN = missing) and ``y`` (0/1 for binary)."""
    family = check_model_type(model_type, key, task)
    params_key = "model.params" if key == "model.type" else key
    unusable = int(np.count_nonzero(~np.isfinite(y))) if np.issubdtype(np.asarray(y).dtype, np.floating) else 0
    if unusable:
        raise LoopmlError(f"label.column: {unusable} training row(s) have a label that is NaN or infinite; a model needs numbers")
    estimator, effective = _build(family, model_type, task, dict(params or {}), seed, y, key)
    options = options or FitOptions()
    notes: list[str] = []
    scaler: StandardScaler | None = None
    impute: FloatArray | None = None
    with warnings.catch_warnings(record=True) if options.record_warnings else nullcontext([]) as caught:
        if options.record_warnings:
            warnings.simplefilter("always")
        try:
            if family == "lightgbm":
                extra: dict[str, Any] = {}
                if options.eval_set is not None:
                    X_eval, y_eval = options.eval_set
                    # LightGBM 4.7 renamed eval_set=[(X, y)] to eval_X=(X,), eval_y=(y,) and warns on the old name
                    extra = {"eval_X": (X_eval,), "eval_y": (y_eval,)} if _EVAL_XY else {"eval_set": [options.eval_set]}
                    extra.update(eval_metric=options.eval_metric, callbacks=options.callbacks)
                estimator.fit(X, y, feature_name=[lightgbm_name(n) for n in feature_names], **extra)
            elif family == "xgboost":
                estimator.fit(pd.DataFrame(X, columns=feature_names), y, verbose=False)
            elif family == "sklearn":
                estimator.fit(X, y)
            else:
                impute = train_medians(X)
                scaler = StandardScaler()
                estimator.fit(scaler.fit_transform(np.where(np.isnan(X), impute, X)), y)
        except (ValueError, TypeError, lightgbm.basic.LightGBMError) as exc:
            raise LoopmlError(f"{params_key}: {model_type} could not be fitted ({str(exc).splitlines()[0]})") from None
    notes.extend(f"{model_type}: {w.message}".splitlines()[0] for w in caught or [])
    if family == "lightgbm" and [original_name(n) for n in estimator.booster_.feature_name()] != list(feature_names):
        bad = [n for n, b in zip(feature_names, estimator.booster_.feature_name(), strict=True) if n != original_name(b)]
        raise LoopmlError(f"feature column {bad[0]!r}: LightGBM changed its name to {lightgbm_name(bad[0])!r}")
    class_path = model_type[len(SKLEARN_PREFIX) :] if family == "sklearn" else None
    return FittedModel(family, task, list(feature_names), estimator, effective, scaler, impute, notes, class_path)
