"""Probability calibration fitted on the validation split: isotonic or sigmoid (Platt).

``model.calibration: isotonic`` fits scikit-learn's :class:`IsotonicRegression`
(increasing, clipped to [0, 1] and to the fitted score range) on the model's
validation scores; ``sigmoid`` fits a logistic regression on the log-odds of
those scores (Platt scaling), nearly unpenalised (``C = 1e4``, so that a
perfectly separable validation split still gives finite parameters).

Only the fitted numbers are kept (isotonic breakpoints, or the slope and
intercept), as JSON inside the model artifact, and applied with numpy at
serving time: isotonic with ``np.interp`` (what ``IsotonicRegression.predict``
computes with ``out_of_bounds="clip"``), sigmoid with ``expit``. Both maps are
non-decreasing, so the ranking of rows changes at most by ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.errors import LoopmlError

FloatArray = npt.NDArray[np.float64]
METHODS = ("isotonic", "sigmoid")
PLATT_C = 1e4
_EPS = 1e-12  # keeps logit finite for scores of exactly 0 or 1


def expit(x: npt.ArrayLike) -> FloatArray:
    """scipy's ``expit``, imported on first use: loading a model (``loopml models list``, ``check``) must not load scipy."""
    from scipy.special import expit as scipy_expit

    return np.asarray(scipy_expit(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def logit(p: npt.ArrayLike) -> FloatArray:
    """scipy's ``logit``, imported on first use (see :func:`expit`)."""
    from scipy.special import logit as scipy_logit

    return np.asarray(scipy_logit(np.asarray(p, dtype=np.float64)), dtype=np.float64)


def _logit(p: npt.ArrayLike) -> FloatArray:
    return np.asarray(logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)), dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map from model scores to probabilities."""

    method: str
    x: tuple[float, ...] = ()  # isotonic breakpoints (scores), increasing
    y: tuple[float, ...] = ()  # isotonic values at the breakpoints
    slope: float = 1.0  # sigmoid: p' = expit(slope * logit(p) + intercept)
    intercept: float = 0.0

    def apply(self, scores: npt.ArrayLike) -> FloatArray:
        p = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.asarray(np.interp(p, self.x, self.y), dtype=np.float64)
        return np.asarray(expit(self.slope * _logit(p) + self.intercept), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        if self.method == "isotonic":
            return {"method": self.method, "x": list(self.x), "y": list(self.y)}
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_json(cls, body: Any, where: str = "calibration") -> Calibration:
        if not isinstance(body, dict) or body.get("method") not in METHODS:
            raise LoopmlError(f"{where}: key 'method' must be one of {', '.join(METHODS)}")
        if body["method"] == "isotonic":
            x, y = body.get("x"), body.get("y")
            ok = isinstance(x, list) and isinstance(y, list) and len(x) == len(y) > 0
            if not ok or not all(isinstance(v, (int, float)) for v in [*x, *y]):  # type: ignore[misc]
                raise LoopmlError(f"{where}: isotonic keys 'x' and 'y' must be lists of numbers of the same length")
            return cls("isotonic", tuple(float(v) for v in x), tuple(float(v) for v in y))  # type: ignore[union-attr]
        slope, intercept = body.get("slope"), body.get("intercept")
        if not isinstance(slope, (int, float)) or not isinstance(intercept, (int, float)):
            raise LoopmlError(f"{where}: sigmoid keys 'slope' and 'intercept' must be numbers")
        return cls("sigmoid", slope=float(slope), intercept=float(intercept))


def fit_calibration(method: str, y: npt.ArrayLike, scores: npt.ArrayLike) -> Calibration:
    """Fit ``method`` on validation labels (0/1) and scores; LoopmlError naming ``model.calibration`` if impossible."""
    if method not in METHODS:
        raise LoopmlError(f"model.calibration: unknown method {method!r} (choices: none, {', '.join(METHODS)})")
    labels = np.asarray(y, dtype=np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        raise LoopmlError("model.calibration: the validation split has a single class; a calibration map cannot be fitted")
    # scikit-learn is imported here, at fitting time only, so that applying a calibration never loads it
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, labels)
        xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
        ys = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return Calibration("isotonic", tuple(float(v) for v in xs), tuple(float(v) for v in ys))
    platt = LogisticRegression(C=PLATT_C, max_iter=1000).fit(_logit(p).reshape(-1, 1), labels)
    return Calibration("sigmoid", slope=float(platt.coef_[0, 0]), intercept=float(platt.intercept_[0]))


def calibration_curve(y: npt.ArrayLike, scores: npt.ArrayLike, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted vs observed positive rate in equal-width score bins (empty bins left out).

    The binning is scikit-learn's ``calibration_curve(strategy="uniform")``
    (which does not return the bin counts the report shows).
    """
    labels = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    predicted = np.bincount(which, weights=p, minlength=bins)
    observed = np.bincount(which, weights=labels, minlength=bins)
    keep = count > 0
    return {
        "predicted": (predicted[keep] / count[keep]).tolist(),
        "observed": (observed[keep] / count[keep]).tolist(),
        "count": count[keep].tolist(),
    }
