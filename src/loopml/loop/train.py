"""The training pipeline: from a training set to a registered, gated model version.

Steps: load the training set -> split -> fit the categorical encodings on
the training split only (:mod:`loopml.features.encodings`; their columns go
after the other features) -> fit the model and the baseline ->
evaluate both on valid and test (decision threshold chosen on valid) ->
reference statistics for monitoring (the fitted encoding state is stored with
them, so the version serves with exactly its own encodings) -> single-row
latency -> re-score the current champion, with its own encodings, on the
candidate's test split -> promotion gate -> register
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

from loopml.errors import DataError, LoopmlError
from loopml.features.encodings import REFERENCE_KEY, EncodingState, apply_encodings, encode_training_set
from loopml.layout import Layout
from loopml.registry.base import ModelVersion, Registry
from loopml.registry.gate import GateVerdict, evaluate_gate, higher_is_better
from loopml.spec.model import Spec
from loopml.tasks import task_of
from loopml.tasks.metrics import DEFAULT_THRESHOLD, Metrics
from loopml.train.artifact import Predictor, sha256_file
from loopml.train.backtest import rolling_backtest
from loopml.train.bootstrap import bootstrap_difference
from loopml.train.candidate import Candidate, ValidContext, fit_candidate, tuning_requested
from loopml.train.dataset import TrainingData, column_type, load_training_set
from loopml.train.models import check_model_type, feature_warnings
from loopml.train.reference import reference_stats
from loopml.train.report import REPORT_HTML, ReportInputs, SplitData, write_report
from loopml.train.selection import BASELINE, Selection, select_candidate, with_comparison
from loopml.train.split import SPLITS, SplitResult, split_rows
from loopml.train.tracking import RunRecord, RunStore, git_commit, library_versions, new_run_id

FloatArray = npt.NDArray[np.float64]
Progress = Callable[[str, float], None]
LATENCY_CALLS = 300
SAMPLE_ROWS = 5000
EXPLAIN_ROWS = 1000  # test rows the explanations (importance, partial dependence) are computed on
STUDY_FILE = "study.sqlite"
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
    report: str | None = None
    backtest: list[dict[str, Any]] = field(default_factory=list)
    selection: Selection | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "metrics": self.metrics,
            "baseline_metrics": self.baseline_metrics,
            "gate": self.gate.to_json(),
            "selection": self.selection.to_json() if self.selection is not None else None,
            "warnings": list(self.warnings),
            "threshold": self.threshold,
            "latency_ms": self.latency_ms,
            "champion_version": self.champion_version,
            "split": self.split,
            "report": self.report,
            "backtest": self.backtest,
        }


def gate_metric(spec: Spec) -> str:
    """``gate.metric``, defaulting to the task's own metric when unset; LoopmlError if it does not fit the task."""
    task = task_of(spec.task)
    if "metric" not in spec.gate.model_fields_set:
        return task.default_metric
    higher_is_better(spec.gate.metric)  # unknown names raise, naming gate.metric
    if spec.gate.metric not in task.metrics and not (task.thresholded and spec.gate.metric.startswith("card_precision@")):
        raise LoopmlError(f"gate.metric: {spec.gate.metric!r} is not a {task.name} metric (choices: {', '.join(task.metrics)})")
    return spec.gate.metric


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
        ev = task_of(spec.task).evaluate(
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
    spec: Spec,
    model_type: str,
    key: str,
    data: TrainingData,
    split: SplitResult,
    params: dict[str, Any],
    trials: int = 0,
    study: Path | None = None,
    tuning_metric: str | None = None,
    progress: Progress | None = None,
) -> Candidate:
    """Tune (main model), fit, calibrate and choose the threshold: :mod:`loopml.train.candidate`."""
    names = data.feature_names
    splits = {name: (data.matrix(names, split.indices(name)), data.y[split.indices(name)]) for name in SPLITS}
    context = ValidContext(
        data.timestamps[split.valid] if data.timestamps is not None else None,
        data.entity_ids[split.valid] if data.entity_ids is not None else None,
    )
    study_name = study.parent.name if study is not None else "loopml"
    args = (trials, tuning_metric, study, study_name, context, progress)
    return fit_candidate(spec, model_type, key, splits, names, params, *args)


def _compare(
    spec: Spec, data: TrainingData, split: SplitResult, metric: str, chosen: Candidate, other: Candidate | None
) -> dict[str, Any] | None:
    """The chosen candidate against the other on the test split: paired bootstrap of ``metric`` (None without a baseline)."""
    if other is None:
        return None
    rows = split.test
    return bootstrap_difference(
        metric,
        spec.task,
        data.y[rows],
        chosen.scores["test"],
        other.scores["test"],
        (_threshold(chosen), _threshold(other)),
        max(spec.evaluation.bootstrap, 1),
        spec.model.seed,
        timestamps=data.timestamps[rows] if data.timestamps is not None else None,
        entity_ids=data.entity_ids[rows] if data.entity_ids is not None else None,
    )


def _threshold(candidate: Candidate) -> float | None:
    return candidate.threshold.threshold if candidate.threshold is not None else None


def _evaluation_columns(spec: Spec, training_set: Path) -> tuple[list[str], list[str]]:
    """Numeric and string columns ``evaluation.segments`` / ``evaluation.group`` read; LoopmlError naming the key if absent."""
    wanted = [(f"evaluation.segments[{i}]", c) for i, c in enumerate(spec.evaluation.segments)]
    if spec.evaluation.group is not None:
        wanted.append(("evaluation.group", spec.evaluation.group))
    if not wanted:
        return [], []
    schema = pq.read_schema(training_set)
    numeric: list[str] = []
    strings: list[str] = []
    for key, column in wanted:
        if column not in schema.names:
            raise LoopmlError(f"{key}: column {column!r} is not in the training set {training_set}")
        (numeric if column_type(schema.field(column).type) else strings).append(column)
    return numeric, strings


def _report(
    spec: Spec,
    folder: Path,
    run: RunRecord,
    data: TrainingData,
    split: SplitResult,
    candidate: Candidate,
    metrics: dict[str, Metrics],
    baseline: tuple[dict[str, Metrics] | None, FloatArray | None, float | None],
    headline: str,
    verdict: GateVerdict,
    notes: list[str],
    names: tuple[str, str | None] = ("model", "baseline"),
) -> tuple[str, list[str]]:
    """Write report.json / report.html / PNGs into the run folder; returns the HTML path and the files."""
    rows = split.test
    columns = [*spec.evaluation.segments, *([spec.evaluation.group] if spec.evaluation.group else [])]
    test = SplitData(
        y=data.y[rows],
        scores=candidate.scores["test"],
        timestamps=data.timestamps[rows] if data.timestamps is not None else None,
        entities=data.entity_ids[rows] if data.entity_ids is not None else None,
        columns={c: (data.columns[c] if c in data.columns else data.strings[c])[rows] for c in columns},
    )
    pick = np.random.default_rng(spec.model.seed).permutation(len(rows))[:EXPLAIN_ROWS]
    inputs = ReportInputs(
        run_id=run.run_id,
        task=spec.task,
        model_type=names[0],
        comparator=names[1] or "baseline",
        metric=headline,
        metrics=metrics,
        test=test,
        predictor=candidate.predictor,
        X_sample=data.matrix(data.feature_names, rows[np.sort(pick)]),
        threshold=candidate.threshold,
        baseline_metrics=baseline[0],
        baseline_test_scores=baseline[1],
        baseline_threshold=baseline[2],
        calibration=candidate.calibration,
        tuning=candidate.tuning.to_json() if candidate.tuning is not None else None,
        gate=verdict.to_json(),
        warnings=notes,
        seed=spec.model.seed,
    )
    _, files = write_report(folder, inputs, spec.evaluation)
    return str(folder / REPORT_HTML), files


def _encode(spec: Spec, data: TrainingData, split: SplitResult) -> EncodingState:
    """Fit ``features.encodings`` on the training split only and append the encoded columns to ``data``."""
    needed = {enc.input: name for name, enc in spec.features.encodings.items()}
    for column, name in needed.items():
        if column not in data.strings:
            raise DataError(f"{data.path}: column {column!r} (features.encodings.{name}.input) is missing from the training set")
    if not needed:
        return EncodingState()
    state, encoded = encode_training_set(spec, data.strings, data.y, split.train, spec.model.seed)
    data.add_encoded(encoded, state.encoding_of())
    return state


def _champion_inputs(registry: Registry, champion: ModelVersion) -> list[str]:
    """String columns the champion's encodings read (none when its state cannot be read; the gate says why)."""
    try:
        return EncodingState.from_reference(registry.reference_stats(champion.version)).inputs
    except LoopmlError:
        return []


def _champion_matrix(champion: ModelVersion, state: EncodingState, data: TrainingData, rows: npt.NDArray[np.int64]) -> FloatArray:
    """The champion's own model input for ``rows``: its encodings (its fitted state) and the shared columns."""
    encoded = apply_encodings(state, {name: data.strings[name][rows] for name in state.inputs})
    return np.column_stack([encoded[n] if n in encoded else data.columns[n][rows] for n in champion.feature_names])


def _rescore_champion(
    spec: Spec, registry: Registry, champion: ModelVersion, data: TrainingData, split: SplitResult
) -> tuple[Metrics | None, str | None]:
    """The champion's metrics on the candidate's test split, or why they cannot be computed."""
    try:
        state = EncodingState.from_reference(registry.reference_stats(champion.version), f"model version {champion.version}")
    except LoopmlError as exc:
        return None, str(exc)
    missing = [name for name in champion.feature_names if name not in data.columns and name not in state.columns]
    missing += [f"{name} (encoded)" for name in state.inputs if name not in data.strings]
    if missing:
        return None, f"it needs feature column(s) {', '.join(missing)} that the new training set lacks"
    rows = split.test
    try:
        predictor = registry.load_predictor(champion.version)
        scores = predictor.predict(_champion_matrix(champion, state, data, rows))
    except LoopmlError as exc:
        return None, str(exc)
    threshold = champion.metrics.get("threshold")
    ev = task_of(spec.task).evaluate(
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
    promote_to: str | None = None,
) -> TrainResult:
    """Train, evaluate, register and gate one model version; see the module docstring.

    A version that passes the gate gets the champion alias, or ``promote_to`` (the closed loop names the
    challenger alias, which then goes through a canary before it becomes champion).
    """
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
            "encodings": {name: enc.model_dump(mode="json") for name, enc in spec.features.encodings.items()},
        },
    )
    metric = gate_metric(spec)
    store.record(run, metric)
    try:
        result = _run(spec, layout, training_set, feature_columns, lineage, registry, trials, say, store, run, metric, promote_to)
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
    promote_to: str | None = None,
) -> TrainResult:
    check_model_type(spec.model.type, "model.type", spec.task)
    if spec.model.baseline is not None:
        check_model_type(spec.model.baseline, "model.baseline", spec.task)
    task = task_of(spec.task)
    headline = task.check_metric(spec.evaluation.metric or metric, "evaluation.metric")
    tuning_metric = task.check_metric(spec.model.tuning.metric or metric, "model.tuning.metric")
    numeric_eval, string_eval = _evaluation_columns(spec, training_set)
    notes: list[str] = []

    alias = spec.rollout.alias
    champion = registry.alias(alias)
    say(f"loading {training_set}", 0.0)
    strings = [enc.input for enc in spec.features.encodings.values()]
    if champion is not None:
        strings += _champion_inputs(registry, champion)
    optional = [*(champion.feature_names if champion else ()), *numeric_eval]
    data = load_training_set(spec, training_set, feature_columns, optional, [*strings, *string_eval])
    notes.extend(data.warnings)
    say("splitting", 0.1)
    split = split_rows(spec, data.y, data.timestamps, _groups(spec, training_set))
    say("fitting encodings on the training split", 0.12)
    encodings = _encode(spec, data, split)

    notes.extend(feature_warnings(data.matrix(data.feature_names, split.train), data.feature_names))

    folder = store.run_dir(run.run_id)
    say(f"{'tuning and ' if tuning_requested(spec, trials) else ''}fitting {spec.model.type}", 0.15)
    args = (trials, folder / STUDY_FILE, tuning_metric)

    def fitting(message: str, fraction: float) -> None:  # each trial and the final fit, between 15 % and 50 %
        say(message, 0.15 + 0.35 * fraction)

    candidate = _fit_and_score(spec, spec.model.type, "model.type", data, split, spec.model.params, *args, progress=fitting)
    model, scores, threshold = candidate.model, candidate.scores, _threshold(candidate)
    notes.extend(candidate.notes)
    if candidate.tuning is not None:
        run.params["tuning"] = candidate.tuning.to_json()
    metrics, eval_notes = _evaluate_model(spec, scores, data, split, threshold)
    notes.extend(eval_notes)
    baseline_metrics: dict[str, Metrics] | None = None
    base: Candidate | None = None
    if spec.model.baseline is not None:
        say(f"fitting baseline {spec.model.baseline}", 0.5)
        base = _fit_and_score(spec, spec.model.baseline, "model.baseline", data, split, {})
        baseline_metrics, base_eval_notes = _evaluate_model(spec, base.scores, data, split, _threshold(base))
        notes.extend(f"baseline: {n}" for n in base.notes + base_eval_notes)
    selection = select_candidate(
        metric,
        spec.model.type,
        metrics["valid"],
        spec.model.baseline,
        baseline_metrics["valid"] if baseline_metrics else None,
        fixed=spec.model.select == "model",
    )
    other, other_metrics = base, baseline_metrics
    if selection.chosen == BASELINE and base is not None and baseline_metrics is not None:
        candidate, other, metrics, other_metrics = base, candidate, baseline_metrics, metrics
        model, scores, threshold = candidate.model, candidate.scores, _threshold(candidate)
    selection = with_comparison(selection, _compare(spec, data, split, metric, candidate, other))
    other_type = None if other is None else (spec.model.type if selection.chosen == BASELINE else spec.model.baseline)

    say("writing the artifact and measuring latency", 0.7)
    predictor = candidate.predictor
    artifact = folder / f"model{predictor.suffix}"
    artifact.write_bytes(predictor.to_bytes())
    served = Predictor.load(artifact, sha256_file(artifact))
    X_test = data.matrix(data.feature_names, split.test)
    served_scores = served.predict(X_test)
    if not np.allclose(served_scores, scores["test"], rtol=0.0, atol=_ROUND_TRIP_TOLERANCE):
        raise LoopmlError(f"{artifact}: the saved model does not reproduce the trained model's scores; not registering it")
    latency = measure_latency(served, X_test)
    # features' reference: the test split, the most recent rows, as live traffic is (the early training rows'
    # windows are still filling up, which would read as drift on day one); the score's reference is the same rows
    reference = reference_stats(
        X_test,
        data.feature_names,
        served_scores,
        spec.monitoring.psi_bins,
        strings={name: values[split.test] for name, values in data.strings.items()},
        labels=data.y[split.test] if task.thresholded else None,
        feature_split="test",
    )
    if encodings.encodings:
        reference[REFERENCE_KEY] = encodings.to_json()
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
    say("writing the evaluation report", 0.85)
    comparator = (other_metrics, other.scores["test"] if other else None, _threshold(other) if other else None)
    report_args = (metrics, comparator, headline, verdict, notes)
    report_path, report_files = _report(
        spec, folder, run, data, split, candidate, *report_args, names=(selection.model_type, other_type)
    )

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
        "model_type": selection.model_type,
        "model_params": model.params,
        "selection": selection.to_json(),
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
            "threshold_choice": candidate.threshold.to_json() if candidate.threshold is not None else None,
            "calibration": candidate.calibration,
            "latency_ms": latency,
        },
        lineage=lineage,
        signature=data.signature,
        reference_stats=reference,
        tags={"run_id": run.run_id, "model_type": selection.model_type},
        run_id=run.run_id,
    )
    registry.record_gate(version.version, verdict)
    if verdict.passed:
        target = promote_to or alias
        registry.set_alias(target, version.version, f"run {run.run_id}: promotion gate passed ({verdict.reasons[-1]})")

    backtest = rolling_backtest(spec, data, model.params, say, model_type=selection.model_type)
    run.status = "finished"
    run.metrics = {"valid": metrics["valid"], "test": metrics["test"], "threshold": threshold, "latency_ms": latency}
    if backtest:
        run.metrics["backtest"] = backtest
    run.baseline_metrics = baseline_metrics
    run.params["selection"] = selection.to_json()
    run.lineage = lineage
    run.warnings = notes
    run.model_version = version.version
    run.promoted = verdict.passed
    run.gate = verdict.to_json()
    run.artifacts = [artifact.name, "predictions_sample.parquet", *report_files]
    if candidate.tuning is not None:
        run.artifacts.append(STUDY_FILE)
    return TrainResult(
        run_id=run.run_id,
        model_version=version.version,
        promoted=verdict.passed,
        metrics={"test": metrics["test"], "valid": metrics["valid"]},
        baseline_metrics=baseline_metrics,
        gate=verdict,
        selection=selection,
        warnings=notes,
        threshold=threshold,
        latency_ms=latency,
        champion_version=champion.version if champion is not None else None,
        split=split.to_json(),
        report=report_path,
        backtest=backtest,
    )
