"""Explanations of a trained model: global importance and partial dependence.

* **Global importance**, per feature: the model's own split gain (LightGBM
  ``feature_importance("gain")``, XGBoost ``total_gain``, a scikit-learn
  estimator's ``feature_importances_`` where it has one) and the mean absolute
  contribution over a sample of test rows, from the predictor's
  ``contributions`` (LightGBM ``pred_contrib`` = TreeSHAP, XGBoost
  ``pred_contribs``, linear ``coef x standardised value``). Features are
  ranked by mean |contribution|, or by gain where contributions are not
  available (``sklearn:`` models).
* **Per-prediction contributions** are the predictor's ``contributions``
  (served with ``?explain=true``).
* **Partial dependence** of the top features: the mean served score (after
  calibration) over a sample of rows when the feature is set to each point
  of a grid of its quantiles (2 %..98 %). It is computed on the predictor
  itself with one batched ``predict`` per feature rather than with
  scikit-learn's ``partial_dependence``, which needs a fitted scikit-learn
  estimator and would bypass the calibrated serving path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError
from loopml.train.artifact import CalibratedPredictor, LightGBMPredictor, Predictor, SklearnPredictor, XGBoostPredictor

FloatArray = npt.NDArray[np.float64]
GRID_POINTS = 20
TOP_FEATURES = 5


def _gain(predictor: Predictor) -> dict[str, float] | None:
    inner = predictor.inner if isinstance(predictor, CalibratedPredictor) else predictor
    if isinstance(inner, (LightGBMPredictor, XGBoostPredictor)):
        return inner.gain()
    if isinstance(inner, SklearnPredictor):
        values = getattr(inner.estimator, "feature_importances_", None)
        if values is not None and len(values) == len(inner.feature_names):
            return {n: float(v) for n, v in zip(inner.feature_names, values, strict=True)}
    return None


def global_importance(predictor: Predictor, X_sample: FloatArray) -> tuple[list[dict[str, Any]], str | None]:
    """Importance rows, most important first, and a note when something is unavailable."""
    names = predictor.feature_names
    note = None
    try:
        mean_abs: FloatArray | None = np.abs(predictor.contributions(X_sample)[:, : len(names)]).mean(axis=0)
    except LoopmlError as exc:
        mean_abs, note = None, f"importance: {exc}"
    gain = _gain(predictor)
    rows = [
        {
            "feature": name,
            "mean_abs_contribution": None if mean_abs is None else float(mean_abs[j]),
            "gain": None if gain is None else gain[name],
        }
        for j, name in enumerate(names)
    ]
    key = "mean_abs_contribution" if mean_abs is not None else "gain"
    rows.sort(key=lambda r: -float(r[key] or 0.0))
    return rows, note


def partial_dependence(
    predictor: Predictor, X_sample: FloatArray, features: list[str], points: int = GRID_POINTS
) -> list[dict[str, Any]]:
    """Mean score over ``X_sample`` with each feature set to each grid value (features without values are skipped)."""
    out = []
    n = len(X_sample)
    for name in features:
        j = predictor.feature_names.index(name)
        present = X_sample[~np.isnan(X_sample[:, j]), j]
        if len(present) == 0:
            continue
        grid = np.unique(np.quantile(present, np.linspace(0.02, 0.98, points)))
        batch = np.repeat(X_sample[None, :, :], len(grid), axis=0)
        batch[:, :, j] = grid[:, None]
        scores = predictor.predict(batch.reshape(len(grid) * n, -1)).reshape(len(grid), n)
        out.append({"feature": name, "grid": grid.tolist(), "mean_score": scores.mean(axis=1).tolist()})
    return out


def explain(predictor: Predictor, X_sample: FloatArray, top: int = TOP_FEATURES) -> dict[str, Any]:
    """Importance of every feature and partial dependence of the ``top`` ones, as JSON."""
    importance, note = global_importance(predictor, X_sample)
    chosen = [row["feature"] for row in importance[:top]]
    return {
        "rows": len(X_sample),
        "importance": importance,
        "partial_dependence": partial_dependence(predictor, X_sample, chosen) if len(X_sample) else [],
        "notes": [note] if note else [],
    }
