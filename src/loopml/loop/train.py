"""The training pipeline: from a training set to a registered, gated model version.

Steps: load the training set -> split -> fit the model and the baseline ->
evaluate both on valid and test (decision threshold chosen on valid) ->
reference statistics for monitoring -> single-row latency -> re-score the
current champion on the candidate's test split -> promotion gate -> register
the version with its lineage -> move the champion alias when the gate passes.
Every run is tracked (:mod:`loopml.train.tracking`), failed ones included.

This is the one module of ``train`` that talks to the registry: it is the
hand-over from training to the rest of the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import LoopmlError
from loopml.layout import Layout
from loopml.registry.base import ModelVersion, Registry
from loopml.registry.gate import GateVerdict, evaluate_gate, higher_is_better
from loopml.spec.model import Spec
from loopml.train.artifact import Predictor, sha256_file
from loopml.train.dataset import TrainingData, load_training_set
from loopml.train.metrics import DEFAULT_THRESHOLD, Metrics, choose_threshold, evaluate, metric_names
from loopml.train.models import FittedModel, check_model_type, fit_model
from loopml.train.reference import reference_stats
from loopml.train.split import SPLITS, SplitResult, split_rows
from loopml.train.tracking import RunRecord, RunStore, git_commit, library_versions, new_run_id

FloatArray = npt.NDArray[np.float64]
Progress = Callable[[str, float], None]
LATENCY_CALLS = 300
SAMPLE_ROWS = 5000
REGRESSION_GATE_METRIC = "rmse"  # used when gate.metric is left at its (binary) default on a regression task
_ROUND_TRIP_TOLERANCE = 1e-9


@dataclass
class TrainResult:
    """What one ``loopml train`` produced."""

    run_id: str
    model_version: int
    promoted: bool
    metrics: dict[str, Metrics]
    baseline_metrics: dict[str, Metrics] | None
    gate: GateVerdict
    warnings: list[str] = field(default_factory=list)
    threshold: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    champion_version: int | None = None
    split: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "metrics": self.metrics,
            "baseline_metrics": self.baseline_metrics,
            "gate": self.gate.to_json(),
            "warnings": list(self.warnings),
            "threshold": self.threshold,
            "latency_ms": self.latency_ms,
            "champion_version": self.champion_version,
            "split": self.split,
        }


def gate_metric(spec: Spec) -> str:
    """``gate.metric``, defaulting to rmse for regression; LoopmlError if it does not fit the task."""
    metric = spec.gate.metric
    if spec.task == "regression" and "metric" not in spec.gate.model_fields_set:
        metric = REGRESSION_GATE_METRIC
    higher_is_better(metric)  # unknown names raise, naming gate.metric
    if metric not in metric_names(spec.task) and not (spec.task == "binary" and metric.startswith("card_precision@")):
        raise LoopmlError(f"gate.metric: {metric!r} is not a {spec.task} metric (choices: {', '.join(metric_names(spec.task))})")
    return metric


def measure_latency(predictor: Predictor, X: FloatArray, calls: int = LATENCY_CALLS) -> dict[str, float]:
    """p50/p99 in milliseconds of ``predictor.predict`` on one row at a time (the serving path)."""
    rows = X[np.arange(calls) % len(X)]
    for i in range(min(20, calls)):
        predictor.predict(rows[i : i + 1])
    elapsed = np.empty(calls, dtype=np.float64)
    for i in range(calls):
        row = rows[i : i + 1]
        start = time.perf_counter_ns()
        predictor.predict(row)
        elapsed[i] = time.perf_counter_ns() - start
    p50, p99 = np.percentile(elapsed / 1e6, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "calls": float(calls)}


def _evaluate_model(
    spec: Spec, scores: dict[str, FloatArray], data: TrainingData, split: SplitResult, threshold: float | None
) -> tuple[dict[str, Metrics], list[str]]:
    out: dict[str, Metrics] = {}
    notes: list[str] = []
    for name in ("valid", "test"):
        rows = split.indices(name)
        ev = evaluate(
            spec.task,
            data.y[rows],
            scores[name],
            threshold,
            name,
            timestamps=data.timestamps[rows] if data.timestamps is not None else None,
            entity_ids=data.entity_ids[rows] if data.entity_ids is not None else None,
        )
        out[name] = ev.metrics
        notes.extend(ev.warnings)
    return out, notes


def _fit_and_score(
    spec: Spec, model_type: str, key: str, data: TrainingData, split: SplitResult, params: dict[str, Any]
) -> tuple[FittedModel, dict[str, FloatArray], float | None, list[str]]:
    names = data.feature_names
    X_train, y_train = data.matrix(names, split.train), data.y[split.train]
    model = fit_model(model_type, spec.task, X_train, y_train, names, params, spec.model.seed, key)
    scores = {name: model.predict(data.matrix(names, split.indices(name))) for name in SPLITS}
    notes = list(model.warnings)
    threshold = None
    if spec.task == "binary":
        threshold, note = choose_threshold(data.y[split.valid], scores["valid"])
        if note:
            notes.append(f"{model.type}: {note}")
    return model, scores, threshold, notes


def _rescore_champion(
    spec: Spec, registry: Registry, champion: ModelVersion, data: TrainingData, split: SplitResult
) -> tuple[Metrics | None, str | None]:
    """The champion's metrics on the candidate's test split, or why they cannot be computed."""
    missing = [name for name in champion.feature_names if name not in data.columns]
    if missing:
        return None, f"it needs feature column(s) {', '.join(missing)} that the new training set lacks"
    try:
        predictor = registry.load_predictor(champion.version)
        scores = predictor.predict(data.matrix(champion.feature_names, split.test))
    except LoopmlError as exc:
        return None, str(exc)
    threshold = champion.metrics.get("threshold")
    rows = split.test
    ev = evaluate(
        spec.task,
        data.y[rows],
        scores,
        float(threshold) if isinstance(threshold, (int, float)) else DEFAULT_THRESHOLD,
        "test",
        timestamps=data.timestamps[rows] if data.timestamps is not None else None,
        entity_ids=data.entity_ids[rows] if data.entity_ids is not None else None,
    )
    return ev.metrics, None


def _write_sample(path: Path, data: TrainingData, rows: npt.NDArray[np.int64], scores: FloatArray, seed: int) -> None:
    """A seeded sample of test-split predictions, for inspection and reports."""
    pick = np.arange(len(rows))
    if len(pick) > SAMPLE_ROWS:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), SAMPLE_ROWS, replace=False))
    columns: dict[str, Any] = {"row": rows[pick], "label": data.y[rows[pick]], "score": scores[pick]}
    if data.timestamps is not None:
        columns["timestamp"] = pa.array(data.timestamps[rows[pick]])
    if data.entity_ids is not None and data.entity_key is not None:
        columns[data.entity_key] = pa.array(data.entity_ids[rows[pick]])
    pq.write_table(pa.table(columns), path)


def _loopml_version() -> str:
    try:
        return metadata.version("loopml")
    except metadata.PackageNotFoundError:
        return "unknown"


def train(
    spec: Spec,
    layout: Layout,
    training_set: Path,
    feature_columns: list[str],
    lineage: dict[str, str],
    registry: Registry,
    trials: int = 0,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, evaluate, register and gate one model version; see the module docstring."""
    say: Progress = progress or (lambda _message, _fraction: None)
    store = RunStore(layout.runs)
    started = time.monotonic()
    run = RunRecord(
        run_id=new_run_id(),
        status="running",
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=spec.model.seed,
        library_versions=library_versions(),
        params={
            "model_type": spec.model.type,
            "model_params": dict(spec.model.params),
            "baseline": spec.model.baseline,
            "trials": trials,
            "split": spec.split.model_dump(mode="json"),
            "feature_columns": list(feature_columns),
        },
    )
    metric = gate_metric(spec)
    store.record(run, metric)
    try:
        result = _run(spec, layout, training_set, feature_columns, lineage, registry, trials, say, store, run, metric)
    except BaseException as exc:
        run.status, run.error = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        run.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        run.duration_s = time.monotonic() - started
        store.record(run, metric)
        raise
    run.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    run.duration_s = time.monotonic() - started
    store.record(run, metric)
    return result


def _groups(spec: Spec, training_set: Path) -> npt.NDArray[Any] | None:
    """The ``split.group`` column of the training set (random splits keep each value in one split)."""
    if spec.split.group is None or spec.split.method != "random":
        return None
    if spec.split.group not in pq.read_schema(training_set).names:
        raise LoopmlError(f"{training_set}: split.group column {spec.split.group!r} is not in the training set")
    return np.asarray(pq.read_table(training_set, columns=[spec.split.group]).column(0).to_numpy(zero_copy_only=False))


def _run(
    spec: Spec,
    layout: Layout,
    training_set: Path,
    feature_columns: list[str],
    caller_lineage: dict[str, str],
    registry: Registry,
    trials: int,
    say: Progress,
    store: RunStore,
    run: RunRecord,
    metric: str,
) -> TrainResult:
    check_model_type(spec.model.type, "model.type")
    if spec.model.baseline is not None:
        check_model_type(spec.model.baseline, "model.baseline")
    notes: list[str] = []
    if trials > 0:
        notes.append(f"trials={trials} requested, but tuning is not implemented yet; trained once with model.params")

    alias = spec.rollout.alias
    champion = registry.alias(alias)
    say(f"loading {training_set}", 0.0)
    data = load_training_set(spec, training_set, feature_columns, champion.feature_names if champion else ())
    notes.extend(data.warnings)
    say("splitting", 0.1)
    split = split_rows(spec, data.y, data.timestamps, _groups(spec, training_set))

    say(f"fitting {spec.model.type}", 0.15)
    model, scores, threshold, fit_notes = _fit_and_score(spec, spec.model.type, "model.type", data, split, spec.model.params)
    notes.extend(fit_notes)
    metrics, eval_notes = _evaluate_model(spec, scores, data, split, threshold)
    notes.extend(eval_notes)
    baseline_metrics: dict[str, Metrics] | None = None
    if spec.model.baseline is not None:
        say(f"fitting baseline {spec.model.baseline}", 0.5)
        _, base_scores, base_threshold, base_notes = _fit_and_score(spec, spec.model.baseline, "model.baseline", data, split, {})
        baseline_metrics, base_eval_notes = _evaluate_model(spec, base_scores, data, split, base_threshold)
        notes.extend(f"baseline: {n}" for n in base_notes + base_eval_notes)

    say("writing the artifact and measuring latency", 0.7)
    folder = store.run_dir(run.run_id)
    predictor = model.predictor()
    artifact = folder / f"model{predictor.suffix}"
    artifact.write_text(predictor.to_text(), encoding="utf-8")
    served = Predictor.load(artifact, sha256_file(artifact))
    X_test = data.matrix(data.feature_names, split.test)
    served_scores = served.predict(X_test)
    if not np.allclose(served_scores, scores["test"], rtol=0.0, atol=_ROUND_TRIP_TOLERANCE):
        raise LoopmlError(f"{artifact}: the saved model does not reproduce the trained model's scores; not registering it")
    latency = measure_latency(served, X_test)
    X_train = data.matrix(data.feature_names, split.train)
    reference = reference_stats(X_train, data.feature_names, served_scores, spec.monitoring.psi_bins)
    _write_sample(folder / "predictions_sample.parquet", data, split.test, served_scores, spec.model.seed)

    say("gating against the champion", 0.8)
    champion_metrics, problem = (None, None)
    if champion is not None:
        champion_metrics, problem = _rescore_champion(spec, registry, champion, data, split)
    verdict = evaluate_gate(
        metrics["test"],
        champion_metrics,
        metric,
        spec.gate.min_improvement,
        latency["p99"],
        spec.serving.latency_budget_ms,
        champion_version=champion.version if champion is not None else None,
        champion_problem=problem,
    )
    if champion_metrics is not None:
        verdict = GateVerdict(verdict.passed, verdict.reasons, {**verdict.numbers, "champion_metrics": champion_metrics})

    commit = git_commit(layout.root)
    lineage: dict[str, Any] = {
        **caller_lineage,
        "run_id": run.run_id,
        "code_version": f"{_loopml_version()}+{commit}",
        "git_commit": commit,
        "libraries": run.library_versions,
        "seed": spec.model.seed,
        "training_set": str(training_set.resolve()),
        "split": split.to_json(),
        "model_type": spec.model.type,
        "model_params": model.params,
    }
    say("registering", 0.9)
    version = registry.register(
        artifact,
        predictor.kind,
        metrics={
            "valid": metrics["valid"],
            "test": metrics["test"],
            "baseline": baseline_metrics,
            "threshold": threshold,
            "latency_ms": latency,
        },
        lineage=lineage,
        signature=data.signature,
        reference_stats=reference,
        tags={"run_id": run.run_id, "model_type": spec.model.type},
        run_id=run.run_id,
    )
    registry.record_gate(version.version, verdict)
    if verdict.passed:
        registry.set_alias(alias, version.version, f"run {run.run_id}: promotion gate passed ({verdict.reasons[-1]})")

    run.status = "finished"
    run.metrics = {"valid": metrics["valid"], "test": metrics["test"], "threshold": threshold, "latency_ms": latency}
    run.baseline_metrics = baseline_metrics
    run.lineage = lineage
    run.warnings = notes
    run.model_version = version.version
    run.promoted = verdict.passed
    run.gate = verdict.to_json()
    run.artifacts = [artifact.name, "predictions_sample.parquet"]
    return TrainResult(
        run_id=run.run_id,
        model_version=version.version,
        promoted=verdict.passed,
        metrics={"test": metrics["test"], "valid": metrics["valid"]},
        baseline_metrics=baseline_metrics,
        gate=verdict,
        warnings=notes,
        threshold=threshold,
        latency_ms=latency,
        champion_version=champion.version if champion is not None else None,
        split=split.to_json(),
    )
