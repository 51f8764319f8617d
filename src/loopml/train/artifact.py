"""Model artifacts on disk and the :class:`Predictor` that serves them.

Two formats, both plain text and neither executable (no pickle anywhere):

* ``lightgbm`` (``.txt``): LightGBM's own model text
  (``Booster.model_to_string()``), loaded with ``lightgbm.Booster(model_str=...)``;
* ``linear`` (``.json``): a standardised linear model (logistic or ridge)
  written by :meth:`LinearModel.to_json`: feature names, coefficients,
  intercept, scaler mean/scale and the train medians used to impute NULLs.

A predictor is only ever built from a file whose SHA-256 matches the
registry's record (:meth:`Predictor.load`). Scoring calls the LightGBM Booster
or numpy directly, not scikit-learn wrappers, so a single row costs tens of
microseconds.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightgbm
import numpy as np
import numpy.typing as npt
from scipy.special import expit

from loopml.errors import LoopmlError

FloatArray = npt.NDArray[np.float64]
LINEAR_FORMAT = "loopml.linear/1"
SUFFIXES = {"lightgbm": ".txt", "linear": ".json"}
_SMALL_BATCH = 64  # up to this many rows LightGBM predicts on one thread (no thread start-up cost)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(path: Path) -> str:
    for kind, suffix in SUFFIXES.items():
        if path.suffix == suffix:
            return kind
    raise LoopmlError(f"{path}: not a model artifact (expected a {' or '.join(SUFFIXES.values())} file)")


class Predictor(ABC):
    """Scores feature rows for one model version: the serving-side model."""

    kind: ClassVar[str]
    feature_names: list[str]
    task: str

    @staticmethod
    def load(path: Path, expected_sha256: str) -> Predictor:
        """Read an artifact, refusing it unless its SHA-256 is ``expected_sha256``."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LoopmlError(f"{path}: cannot read model artifact ({exc.strerror or exc})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise LoopmlError(
                f"{path}: artifact hash {actual[:16]} does not match the registry's {expected_sha256[:16]}; refusing to load it"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise LoopmlError(f"{path}: model artifact is not UTF-8 text") from None
        return Predictor.from_text(kind_of(path), text, str(path))

    @staticmethod
    def from_text(kind: str, text: str, where: str = "model artifact") -> Predictor:
        if kind == "lightgbm":
            return LightGBMPredictor.from_model_text(text, where)
        if kind == "linear":
            return LinearPredictor(LinearModel.from_json(text, where))
        raise LoopmlError(f"{where}: unknown artifact kind {kind!r} (known: {', '.join(SUFFIXES)})")

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.kind]

    def _check(self, X: npt.ArrayLike) -> FloatArray:
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.feature_names):
            raise LoopmlError(
                f"predict: expected rows of {len(self.feature_names)} features ({', '.join(self.feature_names[:5])}"
                f"{', ...' if len(self.feature_names) > 5 else ''}), got an array of shape {arr.shape}"
            )
        return arr

    @abstractmethod
    def predict(self, X: npt.ArrayLike) -> FloatArray:
        """Probability of the positive class (binary) or the predicted value (regression)."""

    @abstractmethod
    def raw_score(self, X: npt.ArrayLike) -> FloatArray:
        """The score before the link function (log-odds for binary)."""

    @abstractmethod
    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        """Per-feature contributions to the raw score, ``n x (features + 1)``; the last column is the bias."""

    @abstractmethod
    def to_text(self) -> str:
        """The artifact's file content."""


class LightGBMPredictor(Predictor):
    kind: ClassVar[str] = "lightgbm"

    def __init__(self, booster: lightgbm.Booster, text: str) -> None:
        self._booster = booster
        self._text = text
        self.feature_names = list(booster.feature_name())
        objective = next((line[10:] for line in text.splitlines() if line.startswith("objective=")), "")
        self.task = "binary" if objective.startswith(("binary", "cross_entropy")) else "regression"

    @classmethod
    def from_model_text(cls, text: str, where: str = "model artifact") -> LightGBMPredictor:
        try:
            booster = lightgbm.Booster(model_str=text)
        except lightgbm.basic.LightGBMError as exc:
            raise LoopmlError(f"{where}: not a LightGBM model ({str(exc).splitlines()[0]})") from None
        return cls(booster, text)

    def _threads(self, n: int) -> dict[str, Any]:
        return {"num_threads": 1} if n <= _SMALL_BATCH else {}

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        arr = self._check(X)
        return np.asarray(self._booster.predict(arr, **self._threads(len(arr))), dtype=np.float64)

    def raw_score(self, X: npt.ArrayLike) -> FloatArray:
        arr = self._check(X)
        return np.asarray(self._booster.predict(arr, raw_score=True, **self._threads(len(arr))), dtype=np.float64)

    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        arr = self._check(X)
        return np.asarray(self._booster.predict(arr, pred_contrib=True, **self._threads(len(arr))), dtype=np.float64)

    def to_text(self) -> str:
        return self._text


@dataclass(frozen=True)
class LinearModel:
    """A linear model on standardised, median-imputed features."""

    task: str
    feature_names: list[str]
    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    impute: list[float]

    def to_json(self) -> str:
        body = {
            "format": LINEAR_FORMAT,
            "task": self.task,
            "feature_names": self.feature_names,
            "coef": self.coef,
            "intercept": self.intercept,
            "mean": self.mean,
            "scale": self.scale,
            "impute": self.impute,
        }
        return json.dumps(body, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "model artifact") -> LinearModel:
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoopmlError(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(body, dict) or body.get("format") != LINEAR_FORMAT:
            raise LoopmlError(f"{where}: not a {LINEAR_FORMAT} model (key 'format')")
        names = body.get("feature_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LoopmlError(f"{where}: key 'feature_names' must be a list of strings")
        vectors: dict[str, list[float]] = {}
        for key in ("coef", "mean", "scale", "impute"):
            value = body.get(key)
            if not isinstance(value, list) or len(value) != len(names) or not all(isinstance(v, (int, float)) for v in value):
                raise LoopmlError(f"{where}: key {key!r} must be a list of {len(names)} numbers")
            vectors[key] = [float(v) for v in value]
        intercept = body.get("intercept")
        if not isinstance(intercept, (int, float)) or body.get("task") not in ("binary", "regression"):
            raise LoopmlError(f"{where}: keys 'intercept' (a number) and 'task' (binary|regression) are required")
        return cls(body["task"], names, vectors["coef"], float(intercept), vectors["mean"], vectors["scale"], vectors["impute"])


class LinearPredictor(Predictor):
    kind: ClassVar[str] = "linear"

    def __init__(self, model: LinearModel) -> None:
        self.model = model
        self.feature_names = list(model.feature_names)
        self.task = model.task
        self._coef = np.asarray(model.coef, dtype=np.float64)
        self._mean = np.asarray(model.mean, dtype=np.float64)
        self._scale = np.asarray(model.scale, dtype=np.float64)
        self._impute = np.asarray(model.impute, dtype=np.float64)

    def _standardised(self, X: npt.ArrayLike) -> FloatArray:
        arr = self._check(X)
        arr = np.where(np.isnan(arr), self._impute, arr)
        z: FloatArray = (arr - self._mean) / self._scale
        return z

    def raw_score(self, X: npt.ArrayLike) -> FloatArray:
        result: FloatArray = self._standardised(X) @ self._coef + self.model.intercept
        return result

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        raw = self.raw_score(X)
        return np.asarray(expit(raw), dtype=np.float64) if self.task == "binary" else raw

    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        z = self._standardised(X)
        bias = np.full((len(z), 1), self.model.intercept)
        return np.hstack([z * self._coef, bias])

    def to_text(self) -> str:
        return self.model.to_json()
