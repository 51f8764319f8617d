"""Rolling-origin (prequential) backtest of a training run (``split.backtest``).

The folds come from :func:`loopml.train.split.rolling_origin_splits`; each is
refitted with the run's final model parameters and scored with
:func:`loopml.tasks.metrics.evaluate`, and the list is recorded with the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from loopml.errors import LoopmlError
from loopml.spec.model import Spec
from loopml.tasks import task_of
from loopml.train.dataset import TrainingData
from loopml.train.models import fit_model
from loopml.train.split import rolling_origin_splits


def rolling_backtest(
    spec: Spec, data: TrainingData, params: dict[str, Any], say: Callable[[str, float], None], model_type: str | None = None
) -> list[dict[str, Any]]:
    """Rolling-origin evaluation (``split.backtest``): refit the chosen model per fold, score the fold's test window.

    Each fold trains on ``[origin - gap - train_days, origin - gap)`` and is
    scored on ``[origin, origin + test_days)`` with the final model's
    parameters (tuning is not repeated per fold) at the default threshold.
    """
    options = spec.split.backtest
    if options is None:
        return []
    if spec.split.method != "time" or data.timestamps is None:
        raise LoopmlError("split.backtest: rolling-origin folds need split.method: time and a timestamp column")
    if spec.features.encodings:
        raise LoopmlError("split.backtest: not available with features.encodings (their state is fitted on one training window)")
    gap = spec.split.gap if spec.split.gap is not None else spec.label.delay
    folds = rolling_origin_splits(data.timestamps, options.train_days, options.test_days, gap, options.step_days, options.folds)
    out: list[dict[str, Any]] = []
    for i, fold in enumerate(folds):
        say(f"backtest fold {i + 1}/{len(folds)}", 0.9 + 0.1 * i / len(folds))  # after registering (0.9)
        names = data.feature_names
        if task_of(spec.task).classifier and len(np.unique(data.y[fold.train])) < 2:
            out.append(
                {
                    "train": fold.bounds["train"].to_json(),
                    "test": fold.bounds["test"].to_json(),
                    "metrics": None,
                    "warning": "the fold's training window has a single class",
                }
            )
            continue
        fitted = fit_model(
            model_type or spec.model.type,
            spec.task,
            data.matrix(names, fold.train),
            data.y[fold.train],
            names,
            params,
            spec.model.seed,
        )
        ev = task_of(spec.task).evaluate(
            data.y[fold.test],
            fitted.predict(data.matrix(names, fold.test)),
            None,
            f"backtest fold {i + 1}",
            timestamps=data.timestamps[fold.test],
            entity_ids=data.entity_ids[fold.test] if data.entity_ids is not None else None,
        )
        out.append(
            {
                "train": fold.bounds["train"].to_json(),
                "test": fold.bounds["test"].to_json(),
                "metrics": ev.metrics,
                "warnings": ev.warnings,
            }
        )
    return out
