"""Training: splits, models and their artifacts, reference statistics and run tracking (metrics: :mod:`loopml.tasks`).

The names below are loaded on first use (PEP 562), so that importing one light
module of this package (``loopml.train.tracking`` for ``loopml runs list``)
does not import LightGBM and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopml.train.artifact import LightGBMPredictor, LinearModel, LinearPredictor, Predictor
    from loopml.train.reference import psi, reference_stats
    from loopml.train.split import SplitResult, split_rows
    from loopml.train.tracking import RunRecord, RunStore, RunSummary

_HOMES = {
    "LightGBMPredictor": "artifact",
    "LinearModel": "artifact",
    "LinearPredictor": "artifact",
    "Predictor": "artifact",
    "psi": "reference",
    "reference_stats": "reference",
    "SplitResult": "split",
    "split_rows": "split",
    "RunRecord": "tracking",
    "RunStore": "tracking",
    "RunSummary": "tracking",
}

__all__ = [
    "LightGBMPredictor",
    "LinearModel",
    "LinearPredictor",
    "Predictor",
    "RunRecord",
    "RunStore",
    "RunSummary",
    "SplitResult",
    "psi",
    "reference_stats",
    "split_rows",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'loopml.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"loopml.train.{home}"), name)
