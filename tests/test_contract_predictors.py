"""The predictor contract: every kind of model artifact (every concrete ``Predictor``) passes these same tests.

The kinds are found by ``tests/contracts.py`` (every concrete class of ``loopml`` with the verbs of
``train/artifact.py:Predictor``): today LightGBM's native text, the linear JSON, XGBoost's native
JSON, pickled scikit-learn estimators and calibrated bundles. Each gets one or more *cases*: a
small model fitted the way training fits it (``fit_model``), per task it supports. A new kind fails
``test_every_implementation_has_a_factory`` and every test here until it gets cases. What only one
kind does (XGBoost's own reader, import paths of estimators, calibration maps) is in
``tests/test_models.py``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from contracts import check_factories, factory_for, implementations, qualified
from loopml.errors import LoopmlError
from loopml.registry import SqliteRegistry
from loopml.train.artifact import (
    CalibratedPredictor,
    LightGBMPredictor,
    LinearPredictor,
    Predictor,
    SklearnPredictor,
    XGBoostPredictor,
    kind_of,
    sha256_file,
)
from loopml.train.calibrate import fit_calibration
from loopml.train.models import fit_model

NAMES = ["f1", "f2", "f3", "f4"]
SUITE = "tests/test_contract_predictors.py"


@cache
def data(task: str) -> tuple[np.ndarray, np.ndarray]:
    """f1 raises the odds (or the value), f2 lowers them, f3 and f4 are noise."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 4))
    margin = 2.5 * X[:, 0] - 1.5 * X[:, 1] - 1.0
    if task == "regression":
        return X, margin + rng.normal(scale=0.3, size=800)
    return X, (rng.uniform(size=800) < 1 / (1 + np.exp(-margin))).astype(np.int64)


def fitted(model_type: str, task: str, **params: object) -> Predictor:
    X, y = data(task)
    return fit_model(model_type, task, X, y, NAMES, dict(params)).predictor()


def calibrated(inner: Predictor, method: str) -> Predictor:
    X, y = data("binary")
    return CalibratedPredictor(inner, fit_calibration(method, y, inner.predict(X)))


HGB = "sklearn:sklearn.ensemble.HistGradientBoostingClassifier"

#: Per kind, its cases: a name and how to build a fitted predictor of that kind.
FACTORIES: dict[type, dict[str, Callable[[], Predictor]]] = {
    LightGBMPredictor: {
        "binary": lambda: fitted("lightgbm", "binary", n_estimators=20),
        "regression": lambda: fitted("lightgbm", "regression", n_estimators=20),
    },
    LinearPredictor: {
        "binary": lambda: fitted("logistic", "binary"),
        "regression": lambda: fitted("linear", "regression"),
    },
    XGBoostPredictor: {
        "binary": lambda: fitted("xgboost", "binary", n_estimators=20),
        "regression": lambda: fitted("xgboost", "regression", n_estimators=20),
    },
    SklearnPredictor: {
        "binary": lambda: fitted(HGB, "binary", max_iter=20),
        "regression": lambda: fitted("sklearn:sklearn.linear_model.LinearRegression", "regression"),
    },
    CalibratedPredictor: {
        "isotonic-lightgbm": lambda: calibrated(fitted("lightgbm", "binary", n_estimators=20), "isotonic"),
        "sigmoid-sklearn": lambda: calibrated(fitted(HGB, "binary", max_iter=20), "sigmoid"),
    },
}
IMPLEMENTATIONS = implementations(Predictor)
#: (kind's class, case name); a class without cases gets one, which fails naming what to add
CASES = [(cls, name) for cls in IMPLEMENTATIONS for name in list(FACTORIES.get(cls, {})) or ["no factory"]]


def test_every_implementation_has_a_factory() -> None:
    check_factories(Predictor, FACTORIES, SUITE)


@cache
def build(cls: type, name: str) -> Predictor:
    predictor = factory_for(FACTORIES, cls, SUITE)[name]()
    assert type(predictor) is cls, f"the {name!r} case of {qualified(cls)} builds a {type(predictor).__qualname__}"
    return predictor


@pytest.fixture(params=CASES, ids=[f"{cls.__qualname__}-{name}" for cls, name in CASES])
def predictor(request: pytest.FixtureRequest) -> Predictor:
    cls, name = request.param
    return build(cls, name)


def save(folder: Path, predictor: Predictor) -> Path:
    path = folder / f"model{predictor.suffix}"
    path.write_bytes(predictor.to_bytes())
    return path


def rows(n: int = 200, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES)))


# -- the contract -------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_through_the_registry(predictor: Predictor, tmp_path: Path) -> None:
    content = predictor.to_bytes()
    assert predictor.to_bytes() == content  # the same model, the same bytes: the same hash
    path = save(tmp_path, predictor)
    assert kind_of(path) == predictor.kind
    X = rows()
    loaded = Predictor.load(path, sha256_file(path))
    assert type(loaded) is type(predictor) and (loaded.kind, loaded.task) == (predictor.kind, predictor.task)
    np.testing.assert_array_equal(loaded.predict(X), predictor.predict(X))
    np.testing.assert_array_equal(loaded.raw_score(X), predictor.raw_score(X))
    registry = SqliteRegistry(tmp_path / "registry.sqlite", tmp_path / "artifacts")
    version = registry.register(path, predictor.kind, {}, {}, [{"name": n, "type": "float"} for n in NAMES], {})
    assert version.kind == predictor.kind and version.sha256 == sha256_file(path) and version.artifact_path.suffix
    assert version.artifact_path.name.endswith(predictor.suffix)
    served = registry.load_predictor(version.version)
    assert type(served) is type(predictor) and served.feature_names == NAMES
    np.testing.assert_array_equal(served.predict(X), predictor.predict(X))


def test_feature_names_and_task(predictor: Predictor) -> None:
    assert predictor.feature_names == NAMES and all(isinstance(n, str) for n in predictor.feature_names)
    assert predictor.task in ("binary", "regression")
    assert predictor.suffix.startswith(".") and kind_of(Path(f"m{predictor.suffix}")) == predictor.kind


def test_predict_shape_range_and_determinism(predictor: Predictor) -> None:
    X = rows()
    scores = predictor.predict(X)
    assert scores.shape == (len(X),) and scores.dtype == np.float64 and np.isfinite(scores).all()
    if predictor.task == "binary":
        assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_array_equal(predictor.predict(X), scores)  # the same input, the same scores
    # a row scores the same alone (the request path) as in a batch of any size (batch scoring), up to the
    # rounding of a matrix product's blocking (linear models: 1e-16 relative)
    alone = np.array([predictor.predict(X[i : i + 1])[0] for i in range(0, len(X), 17)])
    np.testing.assert_allclose(alone, scores[::17], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(predictor.predict(X[:40]), scores[:40], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(predictor.predict(X.tolist()), scores)  # any array-like of rows


def test_raw_score_is_what_the_score_is_computed_from(predictor: Predictor) -> None:
    X = rows()
    raw, scores = predictor.raw_score(X), predictor.predict(X)
    assert raw.shape == (len(X),) and np.isfinite(raw).all()
    if predictor.task == "regression":
        np.testing.assert_allclose(raw, scores, rtol=0, atol=1e-9)
    else:  # the score is a non-decreasing function of the raw score (the link, then any calibration)
        order = np.argsort(raw, kind="stable")
        assert (np.diff(scores[order]) >= -1e-12).all()


def test_contributions_sum_to_the_raw_score_or_are_refused_as_documented(predictor: Predictor) -> None:
    X = rows(30)
    try:
        contributions = predictor.contributions(X)
    except LoopmlError as err:
        assert "contributions are not available" in str(err) and "\n" not in str(err)
        return
    assert contributions.shape == (len(X), len(NAMES) + 1)  # the last column is the bias
    np.testing.assert_allclose(contributions.sum(axis=1), predictor.raw_score(X), rtol=0, atol=1e-4)  # XGBoost sums float32
    np.testing.assert_array_equal(predictor.contributions(X), contributions)


def test_rows_of_the_wrong_shape_are_one_line_errors(predictor: Predictor) -> None:
    for bad in (rows()[:, :3], rows()[0], np.zeros((2, 5))):
        with pytest.raises(LoopmlError, match=r"expected rows of 4 features \(f1, f2, f3, f4\)") as err:
            predictor.predict(bad)
        assert "\n" not in str(err.value)


def test_a_tampered_file_is_refused(predictor: Predictor, tmp_path: Path) -> None:
    path = save(tmp_path, predictor)
    recorded = sha256_file(path)
    registry = SqliteRegistry(tmp_path / "registry.sqlite", tmp_path / "artifacts")
    version = registry.register(path, predictor.kind, {}, {}, [], {})
    for target in (path, version.artifact_path):
        content = bytearray(target.read_bytes())
        content[len(content) // 2] ^= 0x01  # one bit
        target.write_bytes(bytes(content))
    with pytest.raises(LoopmlError, match=r"artifact hash \w+ does not match the registry's \w+; refusing to load it"):
        Predictor.load(path, recorded)
    with pytest.raises(LoopmlError, match="does not match the registry's"):
        registry.load_predictor(version.version)


def test_a_damaged_file_with_a_matching_hash_is_one_line_naming_it(predictor: Predictor, tmp_path: Path) -> None:
    """What a truncated copy or a file of another format gives, hashed as it is: an error, never a half-model."""
    whole = predictor.to_bytes()
    for name, content in {"truncated": whole[: len(whole) // 3], "garbage": b"\x00not a model\xff" * 10, "empty": b""}.items():
        path = tmp_path / f"{name}{predictor.suffix}"
        path.write_bytes(content)
        with pytest.raises(LoopmlError) as err:
            Predictor.load(path, sha256_file(path))
        assert str(path) in str(err.value) and "\n" not in str(err.value), (name, str(err.value))


@pytest.fixture
def unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every unpickling (joblib's unpickler is pickle's Python one; ``pickle.loads`` too) without doing it."""
    seen: list[str] = []

    def refuse(*args: object, **kwargs: object) -> object:
        seen.append("unpickled")
        raise pickle.UnpicklingError("the test forbids unpickling here")

    monkeypatch.setattr(pickle._Unpickler, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    yield seen


def test_without_the_registrys_hash_nothing_is_unpickled(predictor: Predictor, unpickling: list[str]) -> None:
    """The rule of ``train/artifact.py``: no unpickling of bytes the registry did not write and hash."""
    content = predictor.to_bytes()
    try:
        loaded = Predictor.from_bytes(predictor.kind, content)  # no expected hash: bytes from anywhere
    except LoopmlError as err:
        assert "loaded only with the hash the registry recorded" in str(err)
    else:
        assert loaded.feature_names == NAMES
    assert unpickling == []
