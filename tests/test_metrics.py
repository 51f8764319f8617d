"""Metrics: ranking metrics, bootstrap intervals, thresholds, calibration curves and segments against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve as sk_calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    ndcg_score,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from loopml.errors import LoopmlError
from loopml.spec.model import Threshold
from loopml.tasks import task_of
from loopml.tasks.metrics import card_precision_at_k, confusion
from loopml.train.bootstrap import bootstrap_difference, bootstrap_interval, count_blocks, weighted_metric
from loopml.train.calibrate import calibration_curve
from loopml.train.ranking import Queries, per_query, queries_by_day, queries_by_group, ranking_metrics
from loopml.train.segments import segment_labels, segment_metrics
from loopml.train.threshold import select_threshold

RNG = np.random.default_rng(11)


def _binary(n: int, rate: float = 0.15, seed: int = 0, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < rate).astype(np.int64)
    s = np.clip(0.35 * y + rng.uniform(size=n) * 0.65, 0, 1)
    return y, (np.round(s, decimals) if decimals is not None else s)


# -- ranking metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many tied scores inside each query
def test_ranking_metrics_per_query_equal_scikit_learn(decimals: int | None) -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(2, 40, size=60)
    query = np.repeat(np.arange(60), sizes)
    y = (rng.uniform(size=len(query)) < 0.2).astype(np.int64)
    scores = rng.uniform(size=len(query))
    if decimals is not None:
        scores = np.round(scores, decimals)
    order = rng.permutation(len(query))  # items of a query need not be contiguous
    q = Queries(query[order], y[order], scores[order], "test")
    k = 5
    got = per_query(q, k)
    for i in range(60):
        yi, si = y[query == i], scores[query == i]
        if yi.sum() == 0:
            assert np.isnan(got["map"][i]) and np.isnan(got["ndcg@k"][i]) and np.isnan(got["mrr"][i])
            continue
        assert got["map"][i] == pytest.approx(average_precision_score(yi, si), abs=1e-9)
        assert got["ndcg@k"][i] == pytest.approx(ndcg_score(yi[None, :], si[None, :], k=k), abs=1e-9)
        if decimals is None:  # precision@k and mrr break ties by row order; without ties they are exact
            top = np.argsort(-si, kind="stable")
            assert got["precision@k"][i] == pytest.approx(yi[top[:k]].mean(), abs=1e-12)
            assert got["mrr"][i] == pytest.approx(1 / (np.flatnonzero(yi[top])[0] + 1), abs=1e-12)
    summary = ranking_metrics(q, k)
    has = got["relevant"] > 0
    assert summary["map"] == pytest.approx(got["map"][has].mean()) and summary["queries"] == 60
    assert summary["queries_with_relevant"] == int(has.sum()) < 60


def test_ranking_by_day_matches_card_precision() -> None:
    n = 4000
    y, s = _binary(n, 0.03, seed=2)
    ts = np.datetime64("2025-04-01T00:00:00", "us") + RNG.integers(0, 7 * 86_400, n).astype("timedelta64[s]")
    customers = RNG.integers(0, 300, n)
    q = queries_by_day(ts, customers, y, s)
    assert q.described == "entities per day" and q.query.max() == 6
    metrics = ranking_metrics(q, 100)
    assert metrics["precision@100"] == pytest.approx(card_precision_at_k(ts, customers, y, s, 100), abs=1e-12)
    grouped = queries_by_group(np.array(["a", "b", None, "a"], dtype=object), [1, 0, 1, 0], [0.9, 0.2, 0.5, 0.1], "g")
    assert sorted(set(grouped.query.tolist())) == [0, 1, 2]  # NULL is a query of its own


# -- bootstrap --------------------------------------------------------------------------------


def test_weighted_metrics_equal_scikit_learn_with_sample_weight() -> None:
    y, s = _binary(3000, decimals=2)  # ties exercise the tie handling of the curve metrics
    W = next(count_blocks(len(y), 4, np.random.default_rng(3)))
    flagged = (s >= 0.5).astype(int)
    expected = {
        "average_precision": lambda w: average_precision_score(y, s, sample_weight=w),
        "roc_auc": lambda w: roc_auc_score(y, s, sample_weight=w),
        "log_loss": lambda w: log_loss(y, s, sample_weight=w),
        "brier": lambda w: brier_score_loss(y, s, sample_weight=w),
        "precision": lambda w: precision_score(y, flagged, sample_weight=w),
        "recall": lambda w: recall_score(y, flagged, sample_weight=w),
        "f1": lambda w: f1_score(y, flagged, sample_weight=w),
    }
    for name, fn in expected.items():
        np.testing.assert_allclose(weighted_metric(name, y, s, 0.5, W), [fn(w) for w in W], rtol=0, atol=1e-9, err_msg=name)
    t = RNG.normal(10, 3, size=3000)
    p = t + RNG.normal(size=3000)
    regression = {
        "rmse": lambda w: root_mean_squared_error(t, p, sample_weight=w),
        "mae": lambda w: mean_absolute_error(t, p, sample_weight=w),
        "mape": lambda w: mean_absolute_percentage_error(t, p, sample_weight=w),
        "r2": lambda w: r2_score(t, p, sample_weight=w),
    }
    for name, fn in regression.items():
        np.testing.assert_allclose(weighted_metric(name, t, p, 0.5, W), [fn(w) for w in W], rtol=0, atol=1e-9, err_msg=name)


def test_bootstrap_interval_is_seeded_and_brackets_the_value() -> None:
    y, s = _binary(5000, 0.05, seed=4)
    a = bootstrap_interval("average_precision", "binary", y, s, 0.5, 200, seed=7)
    b = bootstrap_interval("average_precision", "binary", y, s, 0.5, 200, seed=7)
    c = bootstrap_interval("average_precision", "binary", y, s, 0.5, 200, seed=8)
    assert a is not None and b is not None and c is not None
    assert a == b and (a.low, a.high) != (c.low, c.high)
    assert a.value == pytest.approx(average_precision_score(y, s))
    assert a.low is not None and a.high is not None and a.low < a.value < a.high and a.unit == "rows"
    small = bootstrap_interval("average_precision", "binary", y[:500], s[:500], 0.5, 200, seed=7)
    assert small is not None and small.low is not None and small.high is not None
    assert small.high - small.low > a.high - a.low  # ten times fewer rows: a wider interval


def test_card_precision_interval_resamples_entities() -> None:
    n = 6000
    y, s = _binary(n, 0.04, seed=5)
    ts = np.datetime64("2025-04-01T00:00:00", "us") + RNG.integers(0, 7 * 86_400, n).astype("timedelta64[s]")
    customers = RNG.integers(0, 800, n)
    ci = bootstrap_interval("card_precision@50", "binary", y, s, 0.5, 100, 0, timestamps=ts, entity_ids=customers)
    assert ci is not None and ci.unit == "entities" and ci.resamples == 100
    assert ci.value == pytest.approx(card_precision_at_k(ts, customers, y, s, 50))
    assert ci.low is not None and ci.high is not None and ci.low <= ci.value <= ci.high and ci.high - ci.low > 0.01
    assert bootstrap_interval("card_precision@50", "binary", y, s, 0.5, 100, 0) is None  # no time/entity: no interval


def test_paired_difference_between_two_models() -> None:
    n = 6000
    y, good = _binary(n, 0.05, seed=12)
    noisy = np.clip(good + np.random.default_rng(13).normal(0, 0.3, n), 0, 1)
    ts = np.datetime64("2025-04-01T00:00:00", "us") + RNG.integers(0, 7 * 86_400, n).astype("timedelta64[s]")
    customers = RNG.integers(0, 900, n)
    for metric in ("average_precision", "card_precision@100"):
        paired = bootstrap_difference(metric, "binary", y, good, noisy, (0.5, 0.5), 100, 3, timestamps=ts, entity_ids=customers)
        assert paired is not None and paired["difference"] == pytest.approx(
            paired["model"]["value"] - paired["baseline"]["value"]
        )
        assert paired["difference_low"] > 0  # better with 95 % confidence
        single = bootstrap_interval(metric, "binary", y, good, 0.5, 100, 3, timestamps=ts, entity_ids=customers)
        assert single is not None and (single.low, single.high) == (paired["model"]["low"], paired["model"]["high"])
        same = bootstrap_difference(
            metric, "binary", y, good, good.copy(), (0.5, 0.5), 50, 3, timestamps=ts, entity_ids=customers
        )
        assert same is not None and same["difference_low"] == same["difference_high"] == 0.0  # paired: identical resamples


# -- thresholds, confusion, calibration curve, metric names -------------------------------------------------


def _by_threshold(y: np.ndarray, s: np.ndarray) -> list[tuple[float, float, float, int, int]]:
    """(threshold, precision, recall, fp, fn) for every distinct score, by brute force."""
    out = []
    for t in np.unique(s):
        f = s >= t
        tp, fp, fn = int((f & (y == 1)).sum()), int((f & (y == 0)).sum()), int((~f & (y == 1)).sum())
        out.append((float(t), tp / (tp + fp), tp / (tp + fn), fp, fn))
    return out


def test_threshold_objectives_match_brute_force() -> None:
    y, s = _binary(1500, 0.2, seed=6, decimals=3)
    table = _by_threshold(y, s)
    chosen = select_threshold(y, s, Threshold(objective="precision", target=0.8))
    assert chosen.threshold == min(t for t, p, *_ in table if p >= 0.8) and chosen.value is not None and chosen.value >= 0.8
    chosen = select_threshold(y, s, Threshold(objective="recall", target=0.9))
    reached = [(p, t) for t, p, r, *_ in table if r >= 0.9]
    assert chosen.threshold == max(reached)[1]
    chosen = select_threshold(y, s, Threshold(objective="cost", cost_fp=1, cost_fn=20))
    costs = {t: fp + 20 * fn for t, _, _, fp, fn in table}
    assert chosen.value == min(min(costs.values()), 20 * int(y.sum())) and costs[chosen.threshold] == chosen.value
    best_f1 = max(f1_score(y, s >= t) for t, *_ in table)
    chosen = select_threshold(y, s)
    assert chosen.objective == "f1" and f1_score(y, s >= chosen.threshold) == pytest.approx(best_f1)
    assert chosen.value == pytest.approx(best_f1)


def test_threshold_fallbacks_are_explained() -> None:
    y, s = _binary(400, 0.2, seed=7)
    unreachable = select_threshold(y, s * 0 + 0.5, Threshold(objective="precision", target=0.99))
    assert unreachable.note is not None and "no threshold reaches precision 0.99" in unreachable.note
    one_class = select_threshold(np.zeros(20, dtype=int), s[:20], Threshold(objective="cost"))
    assert one_class.threshold == 0.5 and one_class.note is not None and "single class" in one_class.note
    never = select_threshold(np.array([0, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1]), Threshold(objective="cost", cost_fn=0.1))
    assert never.threshold > 0.9  # flagging nothing is cheapest: the threshold sits above every score


def test_confusion_and_calibration_curve_equal_scikit_learn() -> None:
    y, s = _binary(2000, 0.3, seed=8)
    counts = confusion(y, s, 0.4)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.4).ravel()
    assert counts == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    curve = calibration_curve(y, s, bins=10)
    observed, predicted = sk_calibration_curve(y, s, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve["observed"], observed, atol=1e-12)
    np.testing.assert_allclose(curve["predicted"], predicted, atol=1e-12)
    assert sum(curve["count"]) == 2000


def test_single_metric_equals_the_full_evaluation() -> None:
    y, s = _binary(1000, 0.2, seed=10)
    full = task_of("binary").evaluate(y, s, 0.4, "valid").metrics
    for name in ("roc_auc", "average_precision", "log_loss", "brier", "precision", "recall", "f1"):
        assert task_of("binary").metric_value(name, y, s, 0.4) == pytest.approx(full[name], abs=1e-12), name
    t = RNG.normal(5, 1, size=500)
    p = t + RNG.normal(size=500)
    regression = task_of("regression").evaluate(t, p, None, "valid").metrics
    for name in ("rmse", "mae", "r2", "mape"):
        assert task_of("regression").metric_value(name, t, p, 0.5) == pytest.approx(regression[name], abs=1e-12), name
    assert task_of("binary").metric_value("average_precision", np.zeros(10), s[:10], 0.5) is None
    assert task_of("binary").metric_value("precision", y, s, 2.0) is None  # nothing flagged: undefined, not 0 or NaN


def test_mape_is_none_with_the_reason_where_targets_are_at_or_near_zero() -> None:
    """MAPE divides by the target: a zero (or a target under MAPE_FLOOR of the mean |y|) makes it meaningless."""
    t = RNG.normal(5, 1, size=500)
    p = t + RNG.normal(size=500)
    assert task_of("regression").evaluate(t, p, None, "test").metrics["mape"] == pytest.approx(
        mean_absolute_percentage_error(t, p)
    )
    for near in (0.0, 1e-9, -1e-4):
        y = t.copy()
        y[[3, 7]] = near
        evaluation = task_of("regression").evaluate(y, p, None, "test")
        assert evaluation.metrics["mape"] is None and evaluation.metrics["rmse"] is not None
        assert any(w.startswith("mape on test is undefined: 2 target(s) are zero or near zero") for w in evaluation.warnings), (
            evaluation.warnings
        )
        assert task_of("regression").metric_value("mape", y, p, 0.5) is None
        W = next(count_blocks(len(y), 3, np.random.default_rng(0)))
        assert np.isnan(weighted_metric("mape", y, p, 0.5, W)).all()
    assert task_of("regression").evaluate(np.zeros(10), np.ones(10), None, "test").metrics["mape"] is None


def test_unknown_metric_names_the_key() -> None:
    assert task_of("binary").check_metric("card_precision@50", "evaluation.metric") == "card_precision@50"
    with pytest.raises(LoopmlError, match=r"^evaluation\.metric: unknown binary metric 'auc' \(choices: roc_auc, "):
        task_of("binary").check_metric("auc", "evaluation.metric")
    with pytest.raises(LoopmlError, match=r"model\.tuning\.metric: unknown regression metric 'average_precision'"):
        task_of("regression").check_metric("average_precision", "model.tuning.metric")


# -- segments ---------------------------------------------------------------------------------


def test_segments_report_metrics_per_value_and_the_gap() -> None:
    n = 3000
    rng = np.random.default_rng(9)
    group = np.where(rng.uniform(size=n) < 0.5, "a", "b").astype(object)
    group[:5] = None
    y = (rng.uniform(size=n) < 0.2).astype(int)
    noise = np.where(group == "a", 0.1, 0.9)  # group b's scores are mostly noise
    s = np.clip((1 - noise) * y + noise * rng.uniform(size=n), 0, 1)
    section = segment_metrics("binary", "group", group, y, s, 0.5, "average_precision")
    by_value = {row["value"]: row for row in section["segments"]}
    assert set(by_value) == {"a", "b", "null"} and by_value["null"]["rows"] == 5
    mask = group == "a"
    assert by_value["a"]["metrics"]["average_precision"] == pytest.approx(average_precision_score(y[mask], s[mask]))
    gap = section["gap"]
    assert gap["highest"]["value"] == "a" and gap["lowest"]["value"] == "b" and gap["gap"] > 0.3
    assert section["left_out"] == ["null"]  # 5 rows: below the minimum, listed rather than dropped silently
    labels, order = segment_labels(rng.normal(size=1000))
    assert len(order) == 5 and order[0].startswith("[") and order[-1].endswith("]")
    assert {lab: int((labels == lab).sum()) for lab in order} == {lab: 200 for lab in order}
