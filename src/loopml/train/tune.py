"""Hyper-parameter tuning with Optuna: TPE sampling, median pruning, persisted studies.

``model.tuning`` (or ``loopml train --trials N``) runs a study whose trials fit
the model on the train split and score it on the validation split with the
tuning metric (``model.tuning.metric``, else ``gate.metric``). Settings:

* ``trials``: how many trials (``--trials`` wins over the spec); ``timeout_s``:
  a time budget in seconds (with ``trials: 0`` the budget alone bounds the study);
* ``n_jobs``: trials in parallel threads (Optuna's ``n_jobs``); LightGBM and
  XGBoost then get ``cores // n_jobs`` threads per trial so the machine is not
  oversubscribed, and one thread below ``SMALL_TRAIN_ROWS`` training rows (on
  small data OpenMP start-up and spinning cost more than they save: a
  100-tree model on 3,000 rows took 0.13 s on one thread and over 1 s on two,
  on this 2-core machine with other work running);
* ``max_rows`` (default 200,000): trials fit on a seeded random sample of at
  most that many training rows, scored on the whole validation split; the
  final model is then fitted on every training row with the best parameters.
  Hyper-parameters found on a large uniform sample carry over, and a 30-trial
  study on 500k rows otherwise costs minutes on two cores;
* the sampler is ``TPESampler(seed=model.seed)``: with ``n_jobs: 1`` the same
  seed and data give the same trials (and the same best parameters).

Pruning: ``MedianPruner`` stops a LightGBM trial whose validation loss, reported
every few boosting rounds by a callback, is worse than the median of earlier
trials at the same round. The per-round signal is LightGBM's own objective
loss (``binary_logloss`` / ``l2``), maintained incrementally and O(rows) per
round, where ranking metrics would re-sort the validation rows every round;
the trial's value is still the tuning metric. Each LightGBM trial also stops
early after ``EARLY_STOPPING_ROUNDS`` rounds without improvement, and the best
round count becomes ``n_estimators`` of the final fit. Other families have no
per-round signal and run their trials to the end.

The study runs in Optuna's in-memory storage and is then copied
(``optuna.copy_study``) to its RDB storage, ``sqlite:///<run folder>/study.sqlite``
(study name: the run id), where Optuna's own tools can inspect or resume it.
Running against SQLite directly costs a committed write per pruning report and
a read of every trial per pruning decision, about 13 ms each here: seconds per
study. The best parameters and the trial table also go into the run record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
import optuna

from loopml.errors import LoopmlError
from loopml.spec.model import Tuning
from loopml.tasks import task_of
from loopml.tasks.metrics import higher_is_better
from loopml.train.models import FitOptions, check_model_type, fit_model

FloatArray = npt.NDArray[np.float64]
Scorer = Callable[[FloatArray], float | None]
MAX_ROUNDS = 500
EARLY_STOPPING_ROUNDS = 30
REPORT_EVERY = 10  # boosting rounds between two pruning reports (each report is a write to the study storage)
STARTUP_TRIALS = 5
WARMUP_ROUNDS = 30
SMALL_TRAIN_ROWS = 100_000


@dataclass
class TuningResult:
    """What a study found: the best parameters, its value, and every trial."""

    metric: str
    direction: str
    best_params: dict[str, Any]
    best_value: float | None
    best_trial: int | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    storage: str | None = None
    study_name: str = ""
    seconds: float = 0.0
    n_jobs: int = 1
    timeout_s: float | None = None
    rows: int = 0  # training rows the trials were fitted on

    def to_json(self) -> dict[str, Any]:
        states = [t["state"] for t in self.trials]
        return {
            "metric": self.metric,
            "direction": self.direction,
            "best_params": self.best_params,
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "completed": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"),
            "storage": self.storage,
            "study_name": self.study_name,
            "seconds": self.seconds,
            "n_jobs": self.n_jobs,
            "timeout_s": self.timeout_s,
            "rows": self.rows,
            "trials": self.trials,
        }


def search_space(family: str, task: str, trial: optuna.Trial) -> dict[str, Any]:
    """The sampled parameters of one trial (LightGBM's ``n_estimators`` is set by early stopping)."""
    if family == "lightgbm":
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 8, 256, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 300, log=True),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "subsample_freq": 1,
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }
    if family == "xgboost":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 100, 500, step=50),
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            "max_depth": trial.suggest_int("max_depth", 3, 10),
            "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 50.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }
    if family == "logistic":
        if task_of(task).classifier:  # LogisticRegression's inverse regularisation
            return {"C": trial.suggest_float("C", 1e-3, 100.0, log=True)}
        return {"alpha": trial.suggest_float("alpha", 1e-3, 100.0, log=True)}
    raise LoopmlError(f"model.tuning: no search space for {family} models; set model.params instead, or trials: 0")


def _pruning_callback(trial: optuna.Trial, maximize: bool) -> Callable[[Any], None]:
    """Report the validation loss every REPORT_EVERY rounds; raise TrialPruned when the pruner says so."""

    def callback(env: Any) -> None:
        step = env.iteration + 1
        if step % REPORT_EVERY:
            return
        _, _, value, higher = env.evaluation_result_list[0]
        trial.report(float(value) if higher == maximize else -float(value), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at boosting round {step}")

    return callback


def _reporter(
    progress: Callable[[str, float], None], model_type: str, metric: str, n_trials: int | None, timeout_s: float | None
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """An Optuna callback saying, after each trial, how far the study is and the best value so far."""
    started = time.monotonic()
    done = 0

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal done
        done += 1  # trials end in any order when n_jobs > 1: count them rather than use their numbers
        fractions = [done / n_trials] if n_trials else []
        if timeout_s:
            fractions.append((time.monotonic() - started) / timeout_s)
        state = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed"}.get(trial.state.name, trial.state.name.lower())
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        best = f", best {metric} {study.best_value:.4g}" if complete else ""
        total = f"/{n_trials}" if n_trials else ""
        progress(f"tuning {model_type}: trial {done}{total} {state}{best}", min(1.0, max(fractions, default=0.0)))

    return report


def _trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration is not None else None
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": dict(t.params),
        "rounds": t.user_attrs.get("rounds"),
        "last_step": t.last_step,
        "duration_s": duration,
    }


def tune(
    model_type: str,
    task: str,
    train: tuple[FloatArray, npt.NDArray[Any]],
    valid: tuple[FloatArray, npt.NDArray[Any]],
    feature_names: list[str],
    base_params: dict[str, Any],
    seed: int,
    settings: Tuning,
    metric: str,
    score: Scorer,
    trials: int = 0,
    storage: Path | None = None,
    study_name: str = "loopml",
    progress: Callable[[str, float], None] | None = None,
) -> TuningResult:
    """Run the study; ``score`` maps validation scores to the tuning metric (None when undefined).

    ``progress(message, fraction)`` is called after each trial (fraction: trials done of ``trials``, or the
    time budget spent when only ``timeout_s`` bounds the study).
    """
    family = check_model_type(model_type, "model.type", task)
    n_trials = trials or settings.trials or None
    if n_trials is None and settings.timeout_s is None:
        raise LoopmlError("model.tuning: set trials (or --trials N) or timeout_s to tune")
    maximize = higher_is_better(metric)
    X_train, y_train = train
    X_valid, y_valid = valid
    if settings.max_rows is not None and len(X_train) > settings.max_rows:
        sample = np.sort(np.random.default_rng(seed).choice(len(X_train), settings.max_rows, replace=False))
        X_train, y_train = X_train[sample], y_train[sample]
    threads = 1 if len(X_train) < SMALL_TRAIN_ROWS else max(1, (os.cpu_count() or 1) // settings.n_jobs)

    errors: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except LoopmlError as exc:
            errors.append(str(exc))
            raise

    def run_trial(trial: optuna.Trial) -> float:
        params = {**base_params, **search_space(family, task, trial)}
        options = FitOptions(record_warnings=False)
        if family == "lightgbm":
            params.update(n_estimators=MAX_ROUNDS, n_jobs=threads)
            options.eval_set = (X_valid, y_valid)
            options.callbacks = [
                _pruning_callback(trial, maximize),
                lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False),
            ]
        elif family == "xgboost":
            params["n_jobs"] = threads
        model = fit_model(model_type, task, X_train, y_train, feature_names, params, seed, "model.tuning", options)
        if family == "lightgbm":
            trial.set_user_attr("rounds", int(model.estimator.best_iteration_ or model.estimator.n_estimators_))
        value = score(model.predict(X_valid))
        if value is None or not np.isfinite(value):
            raise LoopmlError(f"model.tuning: {metric} is undefined on the validation split")
        return float(value)

    url = f"sqlite:///{storage}" if storage is not None else None
    memory = optuna.storages.InMemoryStorage()
    callbacks = [] if progress is None else [_reporter(progress, model_type, metric, n_trials, settings.timeout_s)]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    try:
        study = optuna.create_study(
            storage=memory,
            study_name=study_name,
            direction="maximize" if maximize else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=WARMUP_ROUNDS),
            load_if_exists=False,
        )
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=settings.timeout_s,
            n_jobs=settings.n_jobs,
            catch=(LoopmlError,),
            callbacks=callbacks,
        )
        if url is not None:
            optuna.copy_study(from_study_name=study_name, from_storage=memory, to_storage=url)
    finally:
        optuna.logging.set_verbosity(verbosity)
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        reason = errors[0] if errors else "all were pruned or the budget was too short"
        raise LoopmlError(f"model.tuning: no trial completed ({reason})")
    best = study.best_trial
    best_params = {**best.params}
    if family == "lightgbm":
        best_params.update(subsample_freq=1, n_estimators=int(best.user_attrs["rounds"]))
    return TuningResult(
        metric=metric,
        direction="maximize" if maximize else "minimize",
        best_params=best_params,
        best_value=best.value,
        best_trial=best.number,
        trials=rows,
        storage=url,
        study_name=study_name,
        seconds=time.monotonic() - started,
        n_jobs=settings.n_jobs,
        timeout_s=settings.timeout_s,
        rows=len(X_train),
    )
