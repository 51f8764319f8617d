"""Model artifacts on disk and the :class:`Predictor` that serves them.

One file per model version, its kind named by its suffix:

* ``lightgbm`` (``.txt``): LightGBM's own model text
  (``Booster.model_to_string()``), loaded with ``lightgbm.Booster(model_str=...)``;
* ``linear`` (``.json``): a standardised linear model (logistic or ridge)
  written by :meth:`LinearModel.to_json`: feature names, coefficients,
  intercept, scaler mean/scale and the train medians used to impute NULLs;
* ``xgboost`` (``.xgb.json``): XGBoost's native JSON model
  (``Booster.save_raw("json")``, feature names inside); needs the ``xgboost``
  extra to load;
* ``sklearn`` (``.joblib``): any scikit-learn-compatible estimator
  (``model.type: sklearn:<module>.<Class>``), pickled with joblib together
  with its feature names and task. An arbitrary estimator has no portable
  format, and unpickling runs code chosen by whoever wrote the file, so these
  bytes are unpickled **only** after their SHA-256 matched the hash the
  registry recorded when it wrote them (:meth:`Predictor.load`, or
  :meth:`Predictor.from_bytes` with ``expected_sha256``); never otherwise;
* ``calibrated`` (``.zip``): a model of any kind above plus its probability
  calibration (:mod:`loopml.train.calibrate`): ``manifest.json`` (the inner
  kind, the inner file's SHA-256, the calibration map) and the inner model
  file unchanged, so ``unzip`` gives back the native model file. Entries have
  fixed timestamps, so the same model gives the same bytes and hash.

A predictor is only ever built from a file whose SHA-256 matches the
registry's record (:meth:`Predictor.load`). Scoring calls the LightGBM Booster,
the XGBoost Booster or numpy directly, not scikit-learn wrappers, so a single
row costs tens of microseconds.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.train.calibrate import Calibration, expit, logit

if TYPE_CHECKING:
    import lightgbm

FloatArray = npt.NDArray[np.float64]
LINEAR_FORMAT = "loopml.linear/1"
SKLEARN_FORMAT = "loopml.sklearn/1"
CALIBRATED_FORMAT = "loopml.calibrated/1"
SUFFIXES = {"lightgbm": ".txt", "linear": ".json", "xgboost": ".xgb.json", "sklearn": ".joblib", "calibrated": ".zip"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SMALL_BATCH = 64  # up to this many rows LightGBM predicts on one thread (no thread start-up cost)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(path: Path) -> str:
    """The artifact kind of a file name (the longest matching suffix wins: ``.xgb.json`` before ``.json``)."""
    for kind, suffix in sorted(SUFFIXES.items(), key=lambda item: -len(item[1])):
        if path.name.endswith(suffix):
            return kind
    raise LoopmlError(f"{path}: not a model artifact (expected a {' or '.join(SUFFIXES.values())} file)")


def optional_module(name: str, extra: str, key: str = "model.type") -> ModuleType:
    """Import an optional dependency, or raise naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise LoopmlError(f"{key}: {name} is not installed; install the extra: pip install 'loopml[{extra}]'") from None


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
        return Predictor.from_bytes(kind_of(path), data, str(path), expected_sha256)

    @staticmethod
    def from_bytes(kind: str, data: bytes, where: str = "model artifact", expected_sha256: str | None = None) -> Predictor:
        """Build a predictor from an artifact's bytes; ``sklearn`` content needs a matching ``expected_sha256``."""
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                mismatch = f"artifact hash {actual[:16]} does not match the registry's {expected_sha256[:16]}"
                raise LoopmlError(f"{where}: {mismatch}; refusing to load it")
        if kind == "sklearn":
            if expected_sha256 is None:
                raise LoopmlError(f"{where}: a pickled (sklearn) artifact is loaded only with the hash the registry recorded")
            return SklearnPredictor.from_joblib(data, where)
        if kind == "calibrated":
            return CalibratedPredictor.from_zip(data, where, hashed=expected_sha256 is not None)
        if kind not in SUFFIXES:
            raise LoopmlError(f"{where}: unknown artifact kind {kind!r} (known: {', '.join(SUFFIXES)})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise LoopmlError(f"{where}: model artifact is not UTF-8 text") from None
        return Predictor.from_text(kind, text, where)

    @staticmethod
    def from_text(kind: str, text: str, where: str = "model artifact") -> Predictor:
        if kind == "lightgbm":
            return LightGBMPredictor.from_model_text(text, where)
        if kind == "linear":
            return LinearPredictor(LinearModel.from_json(text, where))
        if kind == "xgboost":
            return XGBoostPredictor.from_json_text(text, where)
        if kind in SUFFIXES:
            raise LoopmlError(f"{where}: a {kind} artifact is binary; use Predictor.from_bytes")
        raise LoopmlError(f"{where}: unknown artifact kind {kind!r} (known: {', '.join(SUFFIXES)})")

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.kind]

    def to_bytes(self) -> bytes:
        """The artifact's file content (text kinds: UTF-8 of :meth:`to_text`)."""
        return self.to_text().encode("utf-8")

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


_LIGHTGBM_REFUSES = re.compile(r'[%\s",:\[\]{}]')  # JSON characters (refused), whitespace (renamed '_'), and '%' itself


def lightgbm_name(name: str) -> str:
    """The name LightGBM is given for feature ``name``: every character it refuses or renames as ``%XX`` (UTF-8 bytes).

    LightGBM refuses JSON characters in feature names and turns spaces into ``_``; a column of a user's file can
    hold any of them (a header ``"a""b"``). :class:`LightGBMPredictor` reads the names back with
    :func:`original_name`, so the model's feature names are the columns as the user wrote them.
    """
    return _LIGHTGBM_REFUSES.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


def original_name(stored: str) -> str:
    """Inverse of :func:`lightgbm_name`; a name it did not produce (an older model's) is returned unchanged."""
    name = unquote(stored, errors="replace") if "%" in stored else stored
    return name if lightgbm_name(name) == stored else stored


def _cut_off_lightgbm(text: str) -> bool:
    """A LightGBM model text cut off inside its trees or parameters, which LightGBM's parser aborts or crashes the
    whole process on (it parses trees on several threads; LightGBM issue 3733) instead of raising."""
    trees_end = text.find("\nend of trees\n")
    if trees_end < 0:
        return True
    parameters = text.find("\nparameters:\n", trees_end)
    return parameters >= 0 and text.find("\nend of parameters", parameters) < 0


class LightGBMPredictor(Predictor):
    kind: ClassVar[str] = "lightgbm"

    def __init__(self, booster: lightgbm.Booster, text: str) -> None:
        self._booster = booster
        self._text = text
        self.feature_names = [original_name(n) for n in booster.feature_name()]
        objective = next((line[10:] for line in text.splitlines() if line.startswith("objective=")), "")
        self.task = "binary" if objective.startswith(("binary", "cross_entropy")) else "regression"

    @classmethod
    def from_model_text(cls, text: str, where: str = "model artifact") -> LightGBMPredictor:
        if _cut_off_lightgbm(text):
            raise LoopmlError(f"{where}: not a LightGBM model (cut off: no 'end of trees' or 'end of parameters' line)")
        import lightgbm  # on first use, so that reading the registry (loopml models list) does not load LightGBM

        try:
            booster = lightgbm.Booster(model_str=text)
        except (lightgbm.basic.LightGBMError, ValueError) as exc:  # ValueError: its pandas_categorical JSON line
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

    def gain(self) -> dict[str, float]:
        """Total split gain per feature."""
        values = self._booster.feature_importance(importance_type="gain")
        return {name: float(v) for name, v in zip(self.feature_names, values, strict=True)}


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


class XGBoostPredictor(Predictor):
    kind: ClassVar[str] = "xgboost"

    def __init__(self, booster: Any, raw: bytes) -> None:
        self._xgb = optional_module("xgboost", "xgboost", "xgboost artifact")
        self._booster = booster
        self._raw = raw
        self.feature_names = list(booster.feature_names or [])
        config = json.loads(booster.save_config())
        objective = str(config["learner"]["objective"]["name"])
        self.task = "binary" if objective.startswith("binary:") else "regression"

    @classmethod
    def from_json_text(cls, text: str, where: str = "model artifact") -> XGBoostPredictor:
        xgb = optional_module("xgboost", "xgboost", where)
        if not text:  # XGBoost aborts the whole process on an empty buffer instead of raising
            raise LoopmlError(f"{where}: not an XGBoost model (the file is empty)")
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(text.encode("utf-8")))
        except xgb.core.XGBoostError as exc:
            raise LoopmlError(f"{where}: not an XGBoost model ({str(exc).splitlines()[0]})") from None
        if not booster.feature_names:
            raise LoopmlError(f"{where}: the XGBoost model has no feature names")
        return cls(booster, text.encode("utf-8"))

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        return np.asarray(self._booster.inplace_predict(self._check(X)), dtype=np.float64)

    def raw_score(self, X: npt.ArrayLike) -> FloatArray:
        return np.asarray(self._booster.inplace_predict(self._check(X), predict_type="margin"), dtype=np.float64)

    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        matrix = self._xgb.DMatrix(self._check(X), feature_names=self.feature_names)
        return np.asarray(self._booster.predict(matrix, pred_contribs=True), dtype=np.float64)

    def to_text(self) -> str:
        return self._raw.decode("utf-8")

    def gain(self) -> dict[str, float]:
        """Total split gain per feature (0 for features never split on)."""
        scores = self._booster.get_score(importance_type="total_gain")
        return {name: float(scores.get(name, 0.0)) for name in self.feature_names}


class SklearnPredictor(Predictor):
    """A scikit-learn-compatible estimator; ``predict_proba`` (binary) or ``predict`` (regression)."""

    kind: ClassVar[str] = "sklearn"

    def __init__(self, estimator: Any, feature_names: list[str], task: str, class_path: str) -> None:
        self.estimator = estimator
        self.feature_names = list(feature_names)
        self.task = task
        self.class_path = class_path

    @classmethod
    def from_joblib(cls, data: bytes, where: str = "model artifact") -> SklearnPredictor:
        """Unpickle; callers have checked the bytes' hash against the registry's record first."""
        import joblib  # on first use: it imports asyncio and more, which quick commands must not pay for

        try:
            body = joblib.load(io.BytesIO(data))
        except Exception as exc:  # unpickling can raise anything; the message names the file
            raise LoopmlError(f"{where}: cannot load the scikit-learn model ({type(exc).__name__}: {exc})") from None
        if not isinstance(body, dict) or body.get("format") != SKLEARN_FORMAT:
            raise LoopmlError(f"{where}: not a {SKLEARN_FORMAT} artifact")
        return cls(body["estimator"], list(body["feature_names"]), str(body["task"]), str(body["class"]))

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        arr = self._check(X)
        if self.task == "binary":
            return np.asarray(self.estimator.predict_proba(arr)[:, 1], dtype=np.float64)
        return np.asarray(self.estimator.predict(arr), dtype=np.float64)

    def raw_score(self, X: npt.ArrayLike) -> FloatArray:
        if self.task != "binary":
            return self.predict(X)
        return np.asarray(logit(np.clip(self.predict(X), 1e-12, 1 - 1e-12)), dtype=np.float64)

    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        raise LoopmlError(f"per-feature contributions are not available for {self.class_path} (an sklearn: model)")

    def to_text(self) -> str:
        raise LoopmlError("an sklearn artifact is binary; use to_bytes()")

    def to_bytes(self) -> bytes:
        import joblib
        import sklearn  # loaded already (the estimator was fitted in this process); not at import, for quick commands

        buffer = io.BytesIO()
        body = {
            "format": SKLEARN_FORMAT,
            "class": self.class_path,
            "task": self.task,
            "feature_names": self.feature_names,
            "estimator": self.estimator,
            "sklearn_version": sklearn.__version__,
        }
        joblib.dump(body, buffer)
        return buffer.getvalue()


class CalibratedPredictor(Predictor):
    """A binary model whose probabilities go through a calibration map.

    ``raw_score`` and ``contributions`` are the inner model's (they explain the
    uncalibrated margin; the calibration is a non-decreasing map on top).
    """

    kind: ClassVar[str] = "calibrated"

    def __init__(self, inner: Predictor, calibration: Calibration) -> None:
        self.inner = inner
        self.calibration = calibration
        self.feature_names = list(inner.feature_names)
        self.task = inner.task

    @classmethod
    def from_zip(cls, data: bytes, where: str = "model artifact", hashed: bool = False) -> CalibratedPredictor:
        """Read a bundle; an inner ``sklearn`` (pickled) model only when the bundle's bytes matched the registry's hash."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                manifest = json.loads(bundle.read("manifest.json"))
                if not isinstance(manifest, dict) or manifest.get("format") != CALIBRATED_FORMAT:
                    raise LoopmlError(f"{where}: manifest.json is not a {CALIBRATED_FORMAT} manifest")
                kind, member, sha = manifest.get("kind"), manifest.get("member"), manifest.get("sha256")
                if kind not in SUFFIXES or kind == "calibrated" or not isinstance(member, str) or not isinstance(sha, str):
                    raise LoopmlError(f"{where}: manifest.json needs 'kind' (a model kind), 'member' and 'sha256'")
                if kind == "sklearn" and not hashed:  # the manifest's hash is inside the same, unchecked, file
                    raise LoopmlError(f"{where}: a pickled (sklearn) artifact is loaded only with the hash the registry recorded")
                inner_bytes = bundle.read(member)
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise LoopmlError(f"{where}: not a calibrated model bundle ({exc})") from None
        inner = Predictor.from_bytes(kind, inner_bytes, f"{where}:{member}", sha)
        return cls(inner, Calibration.from_json(manifest.get("calibration"), f"{where}: manifest.json calibration"))

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        return self.calibration.apply(self.inner.predict(X))

    def raw_score(self, X: npt.ArrayLike) -> FloatArray:
        return self.inner.raw_score(X)

    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        return self.inner.contributions(X)

    def to_text(self) -> str:
        raise LoopmlError("a calibrated artifact is a zip file; use to_bytes()")

    def to_bytes(self) -> bytes:
        inner = self.inner.to_bytes()
        member = f"model{self.inner.suffix}"
        manifest = {
            "format": CALIBRATED_FORMAT,
            "kind": self.inner.kind,
            "member": member,
            "sha256": hashlib.sha256(inner).hexdigest(),
            "calibration": self.calibration.to_json(),
        }
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name, content in (("manifest.json", json.dumps(manifest, indent=1).encode("utf-8")), (member, inner)):
                bundle.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), content, compress_type=zipfile.ZIP_DEFLATED)
        return buffer.getvalue()
