"""Per-variant experiment report over the prediction log (``loopml experiment report``).

Reads only the ``predictions``/``labelled`` views of ``PredictionLog.connect()`` (so it works on
any backend behind that connection) and, per variant, counts requests, model versions and labels,
the label rate (mean of the label: the binary outcome or reward), the mean score, average precision
and ROC AUC for binary tasks when both classes are present, and p50/p99 latency. Each variant is
then compared with a control variant:

- the label rate: two-proportion z-test and its always-valid twin, the mSPRT;
- a numeric metric (``score`` by default, or ``latency_ms``/``label``...): Welch's t-test and the mSPRT;
- the traffic split: a sample-ratio-mismatch chi-square test against the expected weights.

A group with fewer than two usable rows (or fewer than the mSPRT's ``min_n``) gets a "not enough
data" note in place of the test, never an exception. The statistics live in :mod:`loopml.rollout.stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import duckdb
import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from loopml.errors import LoopmlError
from loopml.rollout.stats import (
    DEFAULT_MIN_N,
    DEFAULT_MIXING_SD,
    MeanTest,
    ProportionTest,
    SampleRatioTest,
    SequentialTest,
    check_alpha,
    msprt_test,
    proportion_z_test,
    sample_ratio_test,
    welch_t_test,
)
from loopml.tasks import task_of

#: fewer usable rows than this in a group: "not enough data" instead of a fixed-horizon test
MIN_ROWS = 2
#: the chi-square approximation of the sample-ratio test needs at least this expected count per variant
SRM_MIN_EXPECTED = 5
_NUMERIC = ("DOUBLE", "FLOAT", "REAL", "DECIMAL", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER")


class PredictionSource(Protocol):
    """Any prediction-log backend: ``connect(since)`` gives a DuckDB connection with the ``labelled`` view."""

    def connect(self, since: datetime | None = None) -> duckdb.DuckDBPyConnection: ...


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    requests: int
    model_versions: list[int]
    labelled: int
    labelled_fraction: float
    #: mean label over labelled rows: the positive rate of a binary outcome
    label_rate: float | None
    mean_score: float | None
    #: mean of the compared metric (same as ``mean_score`` for the default metric)
    mean_metric: float | None
    average_precision: float | None
    roc_auc: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


Outcome = ProportionTest | MeanTest | SequentialTest | str


def _outcome_json(value: Outcome | SampleRatioTest) -> dict[str, Any]:
    return {"skipped": value} if isinstance(value, str) else value.to_json()


@dataclass(frozen=True)
class Comparison:
    """One variant against the control; a test that could not run holds the reason as a string."""

    variant: str
    control: str
    label_rate: Outcome
    label_rate_sequential: Outcome
    metric: Outcome
    metric_sequential: Outcome

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "control": self.control,
            "label_rate": {"z_test": _outcome_json(self.label_rate), "sequential": _outcome_json(self.label_rate_sequential)},
            "metric": {"welch": _outcome_json(self.metric), "sequential": _outcome_json(self.metric_sequential)},
        }


@dataclass(frozen=True)
class ExperimentReport:
    task: str
    since: datetime | None
    control: str | None
    metric: str
    alpha: float
    rows: int
    variants: list[VariantSummary]
    comparisons: list[Comparison]
    srm: SampleRatioTest | str
    weights: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "since": self.since.isoformat() if self.since else None,
            "control": self.control,
            "metric": self.metric,
            "alpha": self.alpha,
            "rows": self.rows,
            "weights": self.weights,
            "variants": [v.to_json() for v in self.variants],
            "comparisons": [c.to_json() for c in self.comparisons],
            "sample_ratio": _outcome_json(self.srm),
        }


@dataclass(frozen=True)
class _Rows:
    variant: NDArray[Any]
    model_version: NDArray[np.int64]
    score: NDArray[np.float64]
    latency: NDArray[np.float64]
    label: NDArray[np.float64]  # NaN while unlabelled
    metric: NDArray[np.float64]  # NaN where NULL


def parse_since(text: str | None) -> datetime | None:
    """``--since``: an ISO date or time; a time with a UTC offset is converted to local time (the log's clock)."""
    if text is None:
        return None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise LoopmlError(f"--since {text!r}: expected an ISO date or time, e.g. 2024-05-01 or 2024-05-01T12:00") from None
    return ts.astimezone().replace(tzinfo=None) if ts.tzinfo else ts


def _metric_column(con: duckdb.DuckDBPyConnection, metric: str) -> str:
    columns = {str(r[0]): str(r[1]).upper() for r in con.execute("DESCRIBE labelled").fetchall()}
    numeric = [c for c, t in columns.items() if t.startswith(_NUMERIC)]
    if metric not in columns:
        raise LoopmlError(f"--metric {metric!r}: no such column in the prediction log (numeric columns: {', '.join(numeric)})")
    if metric not in numeric:
        raise LoopmlError(f"--metric {metric!r}: column is {columns[metric]}, not numeric (numeric: {', '.join(numeric)})")
    return '"' + metric.replace('"', '""') + '"'


def _load(source: PredictionSource, since: datetime | None, metric: str) -> _Rows:
    with source.connect(since=since) as con:
        column = _metric_column(con, metric)
        table = con.sql(
            f"""SELECT variant, model_version, score, latency_ms, label, CAST({column} AS DOUBLE) AS metric
                FROM labelled ORDER BY ts, request_id"""
        ).to_arrow_table()

    def floats(name: str) -> NDArray[np.float64]:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    versions = table.column("model_version").fill_null(-1).to_numpy(zero_copy_only=False)
    return _Rows(
        variant=np.asarray(table.column("variant").fill_null("(none)").to_numpy(zero_copy_only=False), dtype=object),
        model_version=np.asarray(versions, dtype=np.int64),
        score=floats("score"),
        latency=floats("latency_ms"),
        label=floats("label"),
        metric=floats("metric"),
    )


def _mean(x: NDArray[np.float64]) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _quantile(x: NDArray[np.float64], q: float) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if x.size else None


def _binary(labels: NDArray[np.float64]) -> bool:
    return bool(labels.size) and bool(np.all((labels == 0.0) | (labels == 1.0)))


def _summary(name: str, rows: _Rows, mask: NDArray[np.bool_], task: str) -> VariantSummary:
    labels = rows.label[mask]
    labelled = np.isfinite(labels)
    y, s = labels[labelled], rows.score[mask][labelled]
    ap = auc = None
    if task_of(task).thresholded and _binary(y) and 0 < y.sum() < y.size and np.all(np.isfinite(s)):
        ap, auc = float(average_precision_score(y, s)), float(roc_auc_score(y, s))
    requests = int(mask.sum())
    return VariantSummary(
        variant=name,
        requests=requests,
        model_versions=sorted({int(v) for v in rows.model_version[mask] if v >= 0}),
        labelled=int(labelled.sum()),
        labelled_fraction=float(labelled.sum() / requests) if requests else 0.0,
        label_rate=float(y.mean()) if y.size else None,
        mean_score=_mean(rows.score[mask]),
        mean_metric=_mean(rows.metric[mask]),
        average_precision=ap,
        roc_auc=auc,
        latency_p50_ms=_quantile(rows.latency[mask], 0.5),
        latency_p99_ms=_quantile(rows.latency[mask], 0.99),
    )


def _not_enough(what: str, counts: Mapping[str, int], need: int) -> str | None:
    short = [f"{name} has {n}" for name, n in counts.items() if n < need]
    return f"not enough data: needs at least {need} {what} per variant ({', '.join(short)})" if short else None


def _sequential(
    values: NDArray[np.float64], groups: NDArray[Any], control: str, variant: str, what: str, alpha: float, mixing_sd: float
) -> Outcome:
    keep = ((groups == control) | (groups == variant)) & np.isfinite(values)
    treated = groups[keep] == variant
    reason = _not_enough(what, {control: int((~treated).sum()), variant: int(treated.sum())}, DEFAULT_MIN_N)
    if reason:
        return reason
    return msprt_test(values[keep], treated, alpha=alpha, mixing_sd=mixing_sd)


def _compare(rows: _Rows, control: str, variant: str, metric: str, alpha: float, mixing_sd: float) -> Comparison:
    in_a, in_b = rows.variant == control, rows.variant == variant
    y_a, y_b = rows.label[in_a], rows.label[in_b]
    y_a, y_b = y_a[np.isfinite(y_a)], y_b[np.isfinite(y_b)]
    label_rate: Outcome
    label_seq: Outcome
    reason = _not_enough("labelled rows", {control: y_a.size, variant: y_b.size}, MIN_ROWS)
    if reason:
        label_rate = label_seq = reason
    elif not (_binary(y_a) and _binary(y_b)):
        label_rate = label_seq = "labels are not all 0/1: compare them with --metric label (Welch) instead"
    else:
        label_rate = proportion_z_test(int(y_a.sum()), y_a.size, int(y_b.sum()), y_b.size, alpha=alpha)
        label_seq = _sequential(rows.label, rows.variant, control, variant, "labelled rows", alpha, mixing_sd)
    m_a, m_b = rows.metric[in_a], rows.metric[in_b]
    m_a, m_b = m_a[np.isfinite(m_a)], m_b[np.isfinite(m_b)]
    metric_test: Outcome
    metric_seq: Outcome
    reason = _not_enough(f"rows with a {metric}", {control: m_a.size, variant: m_b.size}, MIN_ROWS)
    if reason:
        metric_test = metric_seq = reason
    else:
        metric_test = welch_t_test(m_a, m_b, alpha=alpha)
        metric_seq = _sequential(rows.metric, rows.variant, control, variant, f"rows with a {metric}", alpha, mixing_sd)
    return Comparison(variant, control, label_rate, label_seq, metric_test, metric_seq)


def _choose_control(
    names: list[str],
    control: str | None,
    candidates: Sequence[str],
    champion_version: int | None,
    summaries: list[VariantSummary],
) -> str | None:
    if control is not None:
        if control not in names:
            known = ", ".join(names) or "none"
            raise LoopmlError(f"--control {control!r}: no such variant in the prediction log (variants: {known})")
        return control
    if not names:
        return None
    for name in candidates:
        if name in names:
            return name
    if champion_version is not None:
        serving = [s.variant for s in summaries if s.model_versions == [champion_version]]
        if len(serving) == 1:
            return serving[0]
    return names[0]


def experiment_report(
    source: PredictionSource,
    *,
    task: str = "binary",
    since: datetime | None = None,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    metric: str = "score",
    control_candidates: Sequence[str] = ("champion",),
    champion_version: int | None = None,
    srm_skip: str | None = None,
    alpha: float = 0.05,
    mixing_sd: float = DEFAULT_MIXING_SD,
) -> ExperimentReport:
    """The report over predictions made at or after ``since`` (all when None).

    The control is ``control`` when given; otherwise the first of ``control_candidates`` (variant
    names, e.g. the champion's) that has predictions, else the only variant serving exactly
    ``champion_version``, else the first variant by name. ``weights`` (relative, per variant) are
    the expected traffic split for the sample-ratio test (default equal); ``srm_skip`` skips that
    test with this reason (e.g. a canary, whose split changes over time).
    """
    task_of(task)  # unknown names raise, naming the choices
    check_alpha(alpha)
    rows = _load(source, since, metric)
    names = sorted({str(v) for v in rows.variant})
    summaries = [_summary(n, rows, rows.variant == n, task) for n in names]
    chosen = _choose_control(names, control, control_candidates, champion_version, summaries)
    comparisons = [_compare(rows, chosen, n, metric, alpha, mixing_sd) for n in names if chosen is not None and n != chosen]
    expected = dict(weights) if weights else dict.fromkeys(names, 1.0)
    srm: SampleRatioTest | str
    if weights:
        unknown = sorted(set(names) - set(weights))
        if unknown:
            given = ", ".join(weights)
            raise LoopmlError(f"--weights has no weight for variant(s) {', '.join(unknown)} (weights given: {given})")
    positive = [w for w in expected.values() if w > 0]
    if not names:
        srm = "not enough data: no predictions logged"
    elif srm_skip is not None:
        srm = srm_skip
    elif len(positive) < 2:
        srm = "one variant only: nothing to split"
    else:
        counts = {s.variant: s.requests for s in summaries}
        total = sum(counts.values())
        smallest = total * min(positive) / sum(positive)
        if smallest < SRM_MIN_EXPECTED:
            srm = f"not enough data: {total} requests give an expected count under {SRM_MIN_EXPECTED} for some variant"
        else:
            srm = sample_ratio_test(counts, expected)
    weight_sum = float(sum(expected.values()))
    return ExperimentReport(
        task=task,
        since=since,
        control=chosen,
        metric=metric,
        alpha=alpha,
        rows=int(rows.variant.size),
        variants=summaries,
        comparisons=comparisons,
        srm=srm,
        weights={k: v / weight_sum for k, v in expected.items()} if weight_sum > 0 else {},
    )
