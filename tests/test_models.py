"""Model families, their artifacts, calibration and explanations, on real fitted models and real files."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from loopml.errors import LoopmlError
from loopml.train.artifact import CalibratedPredictor, LinearModel, LinearPredictor, Predictor, kind_of, sha256_file
from loopml.train.calibrate import Calibration, fit_calibration
from loopml.train.explain import explain
from loopml.train.models import check_model_type, feature_warnings, fit_model

NAMES = ["f1", "f2", "f3", "f4"]
HGB = "sklearn:sklearn.ensemble.HistGradientBoostingClassifier"


def data(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """f1 raises the fraud odds, f2 lowers them, f3 is noise with NULLs, f4 is noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[rng.uniform(size=n) < 0.1, 2] = np.nan
    p = 1 / (1 + np.exp(-(2.5 * X[:, 0] - 1.5 * X[:, 1] - 3.0)))
    return X, (rng.uniform(size=n) < p).astype(np.int64)


def save(tmp: Path, predictor: Predictor) -> Path:
    path = tmp / f"model{predictor.suffix}"
    path.write_bytes(predictor.to_bytes())
    return path


def round_trip(tmp: Path, predictor: Predictor) -> Predictor:
    path = save(tmp, predictor)
    assert kind_of(path) == predictor.kind
    return Predictor.load(path, sha256_file(path))


# -- XGBoost -----------------------------------------------------------------------------------


def test_xgboost_artifact_is_native_json_and_round_trips(tmp_path: Path) -> None:
    X, y = data()
    model = fit_model("xgboost", "binary", X, y, NAMES, {"n_estimators": 40})
    assert model.kind == "xgboost" and model.params["scale_pos_weight"] > 1  # the same imbalance policy as LightGBM
    path = save(tmp_path, model.predictor())
    assert path.name == "model.xgb.json"
    native = xgboost.Booster()
    native.load_model(str(path))  # XGBoost itself reads the file: it is its own JSON format
    assert native.feature_names == NAMES and json.loads(path.read_text())["learner"]["feature_names"] == NAMES
    loaded = Predictor.load(path, sha256_file(path))
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=0, atol=1e-12)
    contributions = loaded.contributions(X[:100])
    assert contributions.shape == (100, 5)
    np.testing.assert_allclose(contributions.sum(axis=1), loaded.raw_score(X[:100]), atol=1e-4)  # float32 sums
    assert roc_auc_score(y, loaded.predict(X)) > 0.85


def test_xgboost_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    X, y = data(500)
    path = save(tmp_path, fit_model("xgboost", "binary", X, y, NAMES, {"n_estimators": 5}).predictor())
    monkeypatch.setitem(sys.modules, "xgboost", None)  # what an environment without the extra looks like to import
    with pytest.raises(
        LoopmlError, match=r"^model\.type: xgboost is not installed; install the extra: pip install 'loopml\[xgboost\]'$"
    ):
        fit_model("xgboost", "binary", X, y, NAMES)
    with pytest.raises(LoopmlError, match=r"model\.xgb\.json: xgboost is not installed; .*loopml\[xgboost\]"):
        Predictor.load(path, sha256_file(path))


# -- any scikit-learn estimator ------------------------------------------------------------------


def test_sklearn_estimator_by_import_path(tmp_path: Path) -> None:
    X, y = data()
    model = fit_model(HGB, "binary", X, y, NAMES, {"max_iter": 50})
    assert model.kind == "sklearn" and model.params == {"max_iter": 50, "random_state": 0}
    loaded = round_trip(tmp_path, model.predictor())
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=0, atol=1e-12)
    assert roc_auc_score(y, loaded.predict(X)) > 0.85
    with pytest.raises(LoopmlError, match=r"contributions are not available for sklearn\.ensemble\.HistGradientBoosting"):
        loaded.contributions(X[:2])
    regression = fit_model("sklearn:sklearn.linear_model.LinearRegression", "regression", X[:, :2], X[:, 0] * 3, ["a", "b"])
    np.testing.assert_allclose(round_trip(tmp_path, regression.predictor()).predict(X[:5, :2]), X[:5, 0] * 3, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("sklearn:no_such_module.Model", r"model\.type: cannot import module 'no_such_module'"),
        ("sklearn:sklearn.ensemble.NoSuchModel", r"model\.type: module 'sklearn\.ensemble' has no class 'NoSuchModel'"),
        ("sklearn:sklearn.linear_model.LinearRegression", r"model\.type: .*LinearRegression has no predict_proba\(\)"),
        ("sklearn:HistGradientBoostingClassifier", r"must name a class as sklearn:<module>\.<Class>"),
    ],
)
def test_sklearn_bad_import_paths_name_the_key(name: str, message: str) -> None:
    with pytest.raises(LoopmlError, match=message):
        check_model_type(name, "model.type", "binary")


def test_sklearn_fit_error_is_one_line() -> None:
    X, y = data(300)  # f3 has NULLs, which LogisticRegression refuses
    with pytest.raises(
        LoopmlError, match=r"^model\.params: sklearn:sklearn\.linear_model\.LogisticRegression could not be fitted"
    ):
        fit_model("sklearn:sklearn.linear_model.LogisticRegression", "binary", X, y, NAMES)


class _Exploit:
    """Unpickling this writes a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_artifacts_load_only_with_the_recorded_hash(tmp_path: Path) -> None:
    X, y = data(500)
    good = save(tmp_path, fit_model(HGB, "binary", X, y, NAMES, {"max_iter": 5}).predictor())
    recorded = sha256_file(good)
    marker = tmp_path / "marker.txt"
    good.write_bytes(pickle.dumps(_Exploit(marker)))  # someone swaps the file after registration
    with pytest.raises(LoopmlError, match=r"artifact hash .* does not match the registry's .*; refusing to load it"):
        Predictor.load(good, recorded)
    with pytest.raises(LoopmlError, match="loaded only with the hash the registry recorded"):
        Predictor.from_bytes("sklearn", good.read_bytes())
    assert not marker.exists()  # never unpickled


def test_a_pickle_inside_a_calibrated_bundle_also_needs_the_recorded_hash(tmp_path: Path) -> None:
    """The bundle's manifest names its inner file's hash, but the manifest is in the same unchecked file."""
    marker = tmp_path / "marker.txt"
    payload = pickle.dumps(_Exploit(marker))
    manifest = {
        "format": "loopml.calibrated/1",
        "kind": "sklearn",
        "member": "model.joblib",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "calibration": {"method": "sigmoid", "slope": 1.0, "intercept": 0.0},
    }
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("model.joblib", payload)
    with pytest.raises(LoopmlError, match="loaded only with the hash the registry recorded"):
        Predictor.from_bytes("calibrated", bundle.getvalue())
    assert not marker.exists()  # never unpickled


# -- calibration -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_is_stored_with_the_artifact_and_applied_when_served(tmp_path: Path, method: str) -> None:
    X, y = data(9000)
    train, valid, test = slice(0, 5000), slice(5000, 7000), slice(7000, 9000)
    model = fit_model("lightgbm", "binary", X[train], y[train], NAMES, {"n_estimators": 60, "scale_pos_weight": 8.0})
    raw_valid = model.predict(X[valid])
    calibration = fit_calibration(method, y[valid], raw_valid)
    predictor = CalibratedPredictor(model.predictor(), calibration)
    loaded = round_trip(tmp_path, predictor)
    assert isinstance(loaded, CalibratedPredictor) and loaded.calibration == calibration
    served = loaded.predict(X[test])
    np.testing.assert_allclose(served, calibration.apply(model.predict(X[test])), rtol=0, atol=1e-12)
    # scale_pos_weight=8 inflates the probabilities; calibration on valid repairs them on test
    assert brier_score_loss(y[test], served) < 0.8 * brier_score_loss(y[test], model.predict(X[test]))
    assert abs(served.mean() - y[test].mean()) < 0.02
    np.testing.assert_allclose(loaded.contributions(X[:10]).sum(axis=1), loaded.raw_score(X[:10]), atol=1e-9)
    with zipfile.ZipFile(tmp_path / "model.zip") as bundle:  # the native model file is inside, unchanged
        manifest = json.loads(bundle.read("manifest.json"))
        native = lightgbm.Booster(model_str=bundle.read("model.txt").decode())
    assert manifest["kind"] == "lightgbm" and manifest["calibration"]["method"] == method
    np.testing.assert_allclose(native.predict(X[test]), model.predict(X[test]), atol=1e-12)
    assert predictor.to_bytes() == CalibratedPredictor(model.predictor(), calibration).to_bytes()  # same model, same hash


def test_isotonic_map_equals_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=3000)
    y = (rng.uniform(size=3000) < scores**2).astype(int)
    calibration = fit_calibration("isotonic", y, scores)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, y)
    probe = np.r_[-0.5, np.linspace(0, 1, 500), 1.5]
    np.testing.assert_allclose(calibration.apply(probe), reference.predict(probe), atol=1e-12)
    assert Calibration.from_json(json.loads(json.dumps(calibration.to_json()))) == calibration


def test_calibration_bad_input(tmp_path: Path) -> None:
    with pytest.raises(LoopmlError, match=r"model\.calibration: the validation split has a single class"):
        fit_calibration("isotonic", np.zeros(10), np.linspace(0, 1, 10))
    X, y = data(500)
    good = CalibratedPredictor(
        fit_model("logistic", "binary", X, y, NAMES).predictor(), fit_calibration("sigmoid", y, X[:, 0] > 0)
    )
    with zipfile.ZipFile(io.BytesIO(good.to_bytes())) as bundle:
        manifest, inner = json.loads(bundle.read("manifest.json")), bundle.read("model.json")
    for change, message in [
        (
            {"calibration": {"method": "platt"}},
            r"bad\.zip: manifest\.json calibration: key 'method' must be one of isotonic, sigmoid",
        ),
        ({"sha256": "0" * 64}, r"bad\.zip:model\.json: artifact hash .* does not match"),
        ({"kind": "calibrated"}, r"bad\.zip: manifest\.json needs 'kind'"),
    ]:
        broken = io.BytesIO()
        with zipfile.ZipFile(broken, "w") as bundle:
            bundle.writestr("manifest.json", json.dumps({**manifest, **change}))
            bundle.writestr("model.json", inner)
        with pytest.raises(LoopmlError, match=message):
            Predictor.from_bytes("calibrated", broken.getvalue(), "bad.zip")
    with pytest.raises(LoopmlError, match=r"bad\.zip: not a calibrated model bundle"):
        Predictor.from_bytes("calibrated", b"not a zip", "bad.zip")


# -- feature warnings and explanations ----------------------------------------------------------------


def test_constant_and_null_features_are_kept_with_a_warning() -> None:
    X, y = data(2000)
    X = np.column_stack([X, np.full(2000, 3.0), np.full(2000, np.nan)])
    names = [*NAMES, "always_3", "never_set"]
    notes = feature_warnings(X, names)
    assert notes == [
        "feature 'always_3' is constant (3) on the train split; kept, but the model cannot learn from it",
        "feature 'never_set' is NULL on every row of the train split; kept, but the model cannot learn from it",
    ]
    for model_type in ("lightgbm", "logistic"):
        model = fit_model(model_type, "binary", X, y, names, {"n_estimators": 20} if model_type == "lightgbm" else {})
        scores = model.predictor().predict(X)
        assert np.isfinite(scores).all() and model.predictor().feature_names == names


@pytest.mark.parametrize("model_type", ["lightgbm", "logistic", "xgboost", HGB])
def test_explanations_rank_the_informative_features_first(model_type: str) -> None:
    X, y = data(5000)
    params: dict[str, Any] = {"n_estimators": 40} if model_type in ("lightgbm", "xgboost") else {}
    model = fit_model(model_type, "binary", X, y, NAMES, params)
    result = explain(model.predictor(), X[:800], top=2)
    ranked = [row["feature"] for row in result["importance"]]
    assert set(ranked[:2]) == {"f1", "f2"}
    if model_type == "logistic":
        predictor = model.predictor()
        z = (np.where(np.isnan(X[:800]), model.impute, X[:800]) - model.scaler.mean_) / model.scaler.scale_  # type: ignore[union-attr]
        expected = np.abs(z * np.ravel(model.estimator.coef_)).mean(axis=0)
        got = {r["feature"]: r["mean_abs_contribution"] for r in result["importance"]}
        np.testing.assert_allclose([got[n] for n in predictor.feature_names], expected, atol=1e-12)
    if model_type == HGB:
        assert result["notes"] and result["importance"][0]["mean_abs_contribution"] is None
    else:
        assert result["importance"][0]["mean_abs_contribution"] > 0
    curves = {c["feature"]: c for c in result["partial_dependence"]}
    f1, f2 = curves["f1"]["mean_score"], curves["f2"]["mean_score"]
    assert f1[-1] > f1[0] + 0.1 and f2[-1] < f2[0] - 0.05  # f1 raises the score, f2 lowers it
    assert len(curves["f1"]["grid"]) == 20 and curves["f1"]["grid"] == sorted(curves["f1"]["grid"])


# -- one kind at a time (what every kind does is tests/test_contract_predictors.py) ---------------------------


def test_linear_contributions_are_the_standardised_terms_and_sum_to_the_log_odds() -> None:
    predictor = LinearPredictor(LinearModel("binary", ["a", "b"], [0.5, -2.0], 0.1, [1.0, 0.0], [2.0, 1.0], [1.0, 0.0]))
    X = np.array([[3.0, 1.0], [np.nan, -1.0]])
    contributions = predictor.contributions(X)
    np.testing.assert_allclose(contributions, [[0.5, -2.0, 0.1], [0.0, 2.0, 0.1]])
    p = predictor.predict(X)
    np.testing.assert_allclose(contributions.sum(axis=1), np.log(p / (1 - p)))


def test_malformed_artifacts_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    cases = {
        "bad.json": ("{not json", "not valid JSON"),
        "wrong.json": (json.dumps({"format": "other"}), "not a loopml.linear/1 model"),
        "bad.txt": ("tree\nnonsense", "not a LightGBM model"),
        "m.pkl": ("x", "not a model artifact"),
    }
    for name, (text, reason) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(LoopmlError, match=reason) as info:
            Predictor.load(path, sha256_file(path))
        assert name in str(info.value) and "\n" not in str(info.value)


_CUT_OFF = """
import subprocess
import sys
from pathlib import Path
from loopml.errors import LoopmlError
from loopml.train.artifact import Predictor

kind, whole = sys.argv[1], Path(sys.argv[2]).read_bytes()
marks = [whole.find(m.encode()) for m in ("Tree=0", "end of trees", "parameters:", "end of parameters", "pandas_categorical")]
for cut in sorted({*(m + d for m in marks if m >= 0 for d in (-1, 0, 1, 7)), len(whole) // 3, 0}):
    try:
        Predictor.from_bytes(kind, whole[:cut])
    except LoopmlError as err:
        assert "\\n" not in str(err), str(err)
print("ok")
"""


@pytest.mark.parametrize("kind", ["lightgbm", "xgboost"])
def test_a_cut_off_native_model_is_an_error_not_a_dead_process(tmp_path: Path, kind: str) -> None:
    """LightGBM aborts or segfaults on a model text cut off in its trees or parameters (LightGBM issue 3733) and
    XGBoost aborts on an empty buffer: the loader refuses those before the library sees them. In a child process,
    so that a regression fails this test rather than killing the test session."""
    X, y = data(500)
    path = save(tmp_path, fit_model(kind, "binary", X, y, NAMES, {"n_estimators": 5}).predictor())
    child = subprocess.run([sys.executable, "-c", _CUT_OFF, kind, str(path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and child.stdout.strip() == "ok", (child.returncode, child.stderr[-2000:])
