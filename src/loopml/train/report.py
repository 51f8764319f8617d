"""The evaluation report of one run: ``report.json`` + ``report.html`` + PNG plots in the run folder.

Sections (binary / regression as they apply):

* metrics on valid and test, the baseline's, and the threshold with its objective;
* the confusion matrix at the threshold (test);
* ranking metrics on test (:mod:`loopml.train.ranking`: ``precision@k, map,
  ndcg@k, mrr``; per day over entities for event data, or per
  ``evaluation.group``);
* bootstrap confidence intervals (:mod:`loopml.train.bootstrap`) for the
  headline metric (``evaluation.metric``, else ``gate.metric``) and, for
  event data, card precision@100;
* the calibration curve (test) of the model and the baseline;
* per-segment metrics and the largest gap for ``evaluation.segments``;
* explanations (:mod:`loopml.train.explain`) and the tuning study, if any;
* every warning of the run.

The HTML page is static: tables and ``<img>`` tags pointing at the PNG files
next to it, so the folder can be copied or served as is.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loopml.spec.model import Evaluation
from loopml.tasks.metrics import CARD_PRECISION_K, Metrics, confusion
from loopml.train import plots
from loopml.train.artifact import Predictor
from loopml.train.bootstrap import bootstrap_difference, bootstrap_interval
from loopml.train.calibrate import calibration_curve
from loopml.train.explain import explain
from loopml.train.ranking import Queries, queries_by_day, queries_by_group, ranking_metrics
from loopml.train.segments import segment_metrics
from loopml.train.threshold import ThresholdChoice

FloatArray = npt.NDArray[np.float64]
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


@dataclass
class SplitData:
    """Labels and scores of one split, with what the ranking and segment sections need."""

    y: npt.NDArray[Any]
    scores: FloatArray
    timestamps: npt.NDArray[np.datetime64] | None = None
    entities: npt.NDArray[Any] | None = None
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


@dataclass
class ReportInputs:
    run_id: str
    task: str
    model_type: str
    metric: str
    metrics: dict[str, Metrics]
    test: SplitData
    predictor: Predictor
    X_sample: FloatArray
    threshold: ThresholdChoice | None = None
    baseline_metrics: dict[str, Metrics] | None = None
    #: what the comparison's other side is called (the baseline, or the main model when the baseline was registered)
    comparator: str = "baseline"
    baseline_test_scores: FloatArray | None = None
    baseline_threshold: float | None = None
    calibration: str = "none"
    tuning: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seed: int = 0


def _queries(inputs: ReportInputs, evaluation: Evaluation) -> Queries | None:
    test = inputs.test
    if evaluation.group is not None:
        return queries_by_group(test.columns[evaluation.group], test.y, test.scores, evaluation.group)
    if test.timestamps is not None and test.entities is not None:
        return queries_by_day(test.timestamps, test.entities, test.y, test.scores)
    return None


def _comparison(
    inputs: ReportInputs, evaluation: Evaluation, metrics: list[str], threshold: float | None
) -> list[dict[str, Any]]:
    """Model vs baseline on the same bootstrap resamples of the test split (see ``bootstrap_difference``)."""
    test = inputs.test
    if inputs.baseline_test_scores is None or evaluation.bootstrap < 1:
        return []
    out = []
    for name in dict.fromkeys(metrics):
        paired = bootstrap_difference(
            name,
            inputs.task,
            test.y,
            test.scores,
            inputs.baseline_test_scores,
            (threshold, inputs.baseline_threshold),
            evaluation.bootstrap,
            inputs.seed,
            timestamps=test.timestamps,
            entity_ids=test.entities,
        )
        if paired is not None:
            out.append(paired)
    return out


def build_report(inputs: ReportInputs, evaluation: Evaluation) -> dict[str, Any]:
    """Every section of the report as JSON (no files written)."""
    test, binary = inputs.test, inputs.task == "binary"
    threshold = inputs.threshold.threshold if inputs.threshold is not None else None
    report: dict[str, Any] = {
        "run_id": inputs.run_id,
        "task": inputs.task,
        "model_type": inputs.model_type,
        "headline": inputs.metric,
        "rows": {"test": len(test.y)},
        "metrics": inputs.metrics,
        "baseline_metrics": inputs.baseline_metrics,
        "comparator": inputs.comparator,
        "threshold": inputs.threshold.to_json() if inputs.threshold is not None else None,
        "calibration": {"method": inputs.calibration},
        "gate": inputs.gate,
        "tuning": inputs.tuning,
    }
    wanted = [inputs.metric]
    if binary and test.timestamps is not None and test.entities is not None:
        wanted.append(f"card_precision@{CARD_PRECISION_K}")
    intervals = []
    for name in dict.fromkeys(wanted) if evaluation.bootstrap > 0 else ():
        interval = bootstrap_interval(
            name,
            inputs.task,
            test.y,
            test.scores,
            threshold,
            evaluation.bootstrap,
            inputs.seed,
            0.95,
            test.timestamps,
            test.entities,
        )
        if interval is not None:
            intervals.append(interval.to_json())
    report["confidence_intervals"] = intervals
    report["comparison"] = _comparison(inputs, evaluation, wanted, threshold)
    if binary and len(test.y):
        report["confusion_matrix"] = {"test": confusion(test.y, test.scores, threshold if threshold is not None else 0.5)}
        curves = {"model": calibration_curve(test.y, test.scores)}
        if inputs.baseline_test_scores is not None:
            curves["baseline"] = calibration_curve(test.y, inputs.baseline_test_scores)
        report["calibration"]["curve"] = curves
        queries = _queries(inputs, evaluation)
        report["ranking"] = {"test": ranking_metrics(queries, evaluation.k)} if queries is not None else None
    report["segments"] = [
        segment_metrics(inputs.task, col, test.columns[col], test.y, test.scores, threshold, inputs.metric)
        for col in evaluation.segments
    ]
    report["explanations"] = explain(inputs.predictor, inputs.X_sample)
    report["warnings"] = list(inputs.warnings) + report["explanations"]["notes"]
    return report


def _plots(folder: Path, inputs: ReportInputs, report: dict[str, Any]) -> dict[str, str]:
    test = inputs.test
    out: dict[str, str] = {}
    if inputs.task == "binary" and len(np.unique(test.y)) == 2:
        curves = {inputs.model_type: test.scores}
        if inputs.baseline_test_scores is not None:
            curves["baseline"] = inputs.baseline_test_scores
        out["roc_pr"] = plots.roc_pr(folder / "roc_pr.png", test.y, curves)
        out["calibration"] = plots.calibration(folder / "calibration.png", report["calibration"]["curve"])
        out["confusion"] = plots.confusion(
            folder / "confusion.png", report["confusion_matrix"]["test"], report["threshold"]["threshold"]
        )
    elif inputs.task == "regression" and len(test.y):
        out["regression"] = plots.regression(folder / "regression.png", np.asarray(test.y, dtype=np.float64), test.scores)
    explanations = report["explanations"]
    if explanations["importance"]:
        out["importance"] = plots.importance(folder / "importance.png", explanations["importance"])
    if explanations["partial_dependence"]:
        out["partial_dependence"] = plots.partial_dependence(
            folder / "partial_dependence.png", explanations["partial_dependence"]
        )
    for i, section in enumerate(report["segments"]):
        out[f"segments_{section['column']}"] = plots.segments(folder / f"segments_{i}.png", section)
    if inputs.tuning is not None:
        out["tuning"] = plots.tuning(folder / "tuning.png", inputs.tuning["trials"], inputs.tuning["metric"])
    return out


def write_report(folder: Path, inputs: ReportInputs, evaluation: Evaluation) -> tuple[dict[str, Any], list[str]]:
    """Write the report files into ``folder``; returns the report and the file names written."""
    report = build_report(inputs, evaluation)
    report["plots"] = _plots(folder, inputs, report)
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    (folder / REPORT_HTML).write_text(render_html(report), encoding="utf-8")
    return report, [REPORT_JSON, REPORT_HTML, *report["plots"].values()]


# -- HTML -----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(report: dict[str, Any], key: str) -> str:
    name = report["plots"].get(key)
    return f'<img src="{html.escape(name)}" alt="{html.escape(key)}">' if name else ""


def render_html(report: dict[str, Any]) -> str:
    """The static HTML page of a report."""
    parts = [f"<h1>run {html.escape(report['run_id'])}: {html.escape(report['model_type'])} ({report['task']})</h1>"]
    metrics, baseline = report["metrics"], report["baseline_metrics"] or {}
    names = list(metrics.get("test", {}))
    rows = [[n, metrics["valid"].get(n), metrics["test"].get(n), (baseline.get("test") or {}).get(n)] for n in names]
    parts += ["<h2>Metrics</h2>", _table(["metric", "valid", "test", f"{report['comparator']} (test)"], rows)]
    if report["threshold"]:
        t = report["threshold"]
        parts.append(f"<p>threshold {_cell(t['threshold'])} chosen on valid by {html.escape(t['objective'])}</p>")
    if report["confidence_intervals"]:
        ci = report["confidence_intervals"]
        parts += ["<h2>Bootstrap confidence intervals (test, 95 %)</h2>"]
        ci_rows = [[c["metric"], c["value"], c["low"], c["high"], c["resamples"], c["unit"]] for c in ci]
        parts.append(_table(["metric", "value", "low", "high", "resamples", "resampled"], ci_rows))
    if report["comparison"]:
        parts.append(f"<h2>{report['model_type']} vs {report['comparator']} (test, paired bootstrap, 95 %)</h2>")
        rows = [
            [c["metric"], c["model"]["value"], c["baseline"]["value"], c["difference"], c["difference_low"], c["difference_high"]]
            for c in report["comparison"]
        ]
        parts.append(_table(["metric", report["model_type"], report["comparator"], "difference", "low", "high"], rows))
    if report.get("ranking") and report["ranking"]["test"]:
        ranking = report["ranking"]["test"]
        parts += [f"<h2>Ranking (test, {html.escape(ranking['query'])})</h2>", _table(["metric", "value"], list(ranking.items()))]
    parts += [
        "<h2>Curves</h2>",
        _img(report, "roc_pr"),
        _img(report, "regression"),
        _img(report, "calibration"),
        _img(report, "confusion"),
    ]
    for section in report["segments"]:
        metric = section["metric"]
        seg_rows = [[s["value"], s["rows"], s.get("positives"), s["metrics"].get(metric)] for s in section["segments"]]
        gap = section["gap"]
        gap_text = (
            f"gap {_cell(gap['gap'])} ({_cell(gap['highest']['value'])} vs {_cell(gap['lowest']['value'])})" if gap else "no gap"
        )
        parts += [f"<h2>Segments of {html.escape(section['column'])}: {gap_text}</h2>"]
        parts += [_table(["value", "rows", "positives", metric], seg_rows), _img(report, f"segments_{section['column']}")]
    explanations = report["explanations"]
    imp_rows = [[r["feature"], r["mean_abs_contribution"], r["gain"]] for r in explanations["importance"][:20]]
    parts += ["<h2>Explanations</h2>", _table(["feature", "mean |contribution|", "gain"], imp_rows)]
    parts += [_img(report, "importance"), "<h3>Partial dependence of the top features</h3>", _img(report, "partial_dependence")]
    if report["tuning"]:
        tuning = report["tuning"]
        parts.append(
            f"<h2>Tuning</h2><p>{tuning['completed']} completed, {tuning['pruned']} pruned, {tuning['failed']} failed; "
            f"best {html.escape(tuning['metric'])} {_cell(tuning['best_value'])} (trial {tuning['best_trial']})</p>"
        )
        parts += [_table(["parameter", "value"], list(tuning["best_params"].items())), _img(report, "tuning")]
    if report["warnings"]:
        parts += ["<h2>Warnings</h2><ul>", *(f"<li>{html.escape(w)}</li>" for w in report["warnings"]), "</ul>"]
    style = "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
    style += "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}img{max-width:100%;margin:.5em 0}"
    title = f"loopml run {html.escape(report['run_id'])}"
    head = f"<head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>\n"
