"""Experiment statistics and ``loopml experiment report``: numbers checked against scipy/statsmodels, end to end on a log.

The statistics are compared with the libraries an analyst would reach for
(statsmodels for proportions and power, scipy for Welch and chi-square); the
mSPRT, which no library has, is checked against a numerical integration of its
definition and by simulation (false-positive rate under peeking, power).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.metrics import average_precision_score, roc_auc_score
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power  # type: ignore[import-untyped]
from statsmodels.stats.proportion import (  # type: ignore[import-untyped]
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.predlog.parquet import PredictionLog
from loopml.predlog.records import Feedback, LoggedPrediction
from loopml.project import Project
from loopml.rollout import (
    MSPRT,
    experiment_report,
    msprt_test,
    proportion_z_test,
    sample_ratio_test,
    sample_size_means,
    sample_size_proportions,
    welch_t_test,
    welch_t_test_from_stats,
)
from loopml.rollout.report import parse_since
from loopml.rollout.stats import parse_weights

runner = CliRunner()
T0 = datetime(2024, 5, 1, 12, 0, 0)
NUMERIC = "score, model_version, latency_ms, label"


def one_line_error(exc: pytest.ExceptionInfo[LoopmlError]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


# --------------------------------------------------------------------------- two-proportion z-test
@pytest.mark.parametrize(
    ("x_a", "n_a", "x_b", "n_b", "alpha"),
    [(30, 1000, 45, 1000, 0.05), (120, 2400, 95, 1800, 0.05), (3, 40, 11, 37, 0.1), (0, 500, 4, 520, 0.01), (7, 7, 5, 9, 0.05)],
)
def test_z_test_matches_statsmodels(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float) -> None:
    result = proportion_z_test(x_a, n_a, x_b, n_b, alpha=alpha)
    z, p = proportions_ztest([x_b, x_a], [n_b, n_a])  # pooled standard error, treatment minus control
    low, high = confint_proportions_2indep(x_b, n_b, x_a, n_a, method="wald", compare="diff", alpha=alpha)
    assert result.estimate == pytest.approx(x_b / n_b - x_a / n_a, abs=1e-15)
    assert result.statistic == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.ci_low == pytest.approx(low, rel=1e-9) and result.ci_high == pytest.approx(high, rel=1e-9)
    assert result.significant == (p < alpha)


def test_z_test_without_variance_is_no_evidence() -> None:
    for x_a, x_b, n in ((0, 0, 100), (50, 50, 50)):
        result = proportion_z_test(x_a, n, x_b, n)
        assert (result.estimate, result.statistic, result.p_value, result.significant) == (0.0, 0.0, 1.0, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10, 3, 10), "successes_control must not be negative, got -1"),
        ((1, 0, 3, 10), "control group is empty (n_control = 0)"),
        ((1, 10, 3, 0), "treatment group is empty (n_treatment = 0)"),
        ((1, 10, 12, 10), "successes_treatment (12) is larger than n_treatment (10)"),
        ((1.5, 10, 3, 10), "successes_control must be a whole number, got 1.5"),
        ((1, -10, 3, 10), "n_control must not be negative, got -10"),
    ],
)
def test_z_test_rejects_bad_counts(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(LoopmlError) as exc:
        proportion_z_test(*args)
    assert one_line_error(exc) == message


def test_alpha_outside_zero_one_is_refused() -> None:
    for alpha in (0.0, 1.0, -0.1, 5.0):
        with pytest.raises(LoopmlError, match="alpha must be strictly between 0 and 1"):
            proportion_z_test(1, 10, 2, 10, alpha=alpha)


# --------------------------------------------------------------------------- Welch
@pytest.mark.parametrize(
    ("n_a", "n_b", "sd_a", "sd_b", "shift"), [(50, 80, 1.0, 3.0, 0.5), (12, 7, 2.0, 0.5, -1.0), (400, 400, 1.0, 1.0, 0.0)]
)
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_welch_matches_scipy(n_a: int, n_b: int, sd_a: float, sd_b: float, shift: float, alpha: float) -> None:
    rng = np.random.default_rng(n_a * 31 + n_b)
    a, b = rng.normal(10, sd_a, n_a), rng.normal(10 + shift, sd_b, n_b)
    result = welch_t_test(a, b, alpha=alpha)
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(confidence_level=1 - alpha)
    assert result.estimate == pytest.approx(b.mean() - a.mean(), rel=1e-12)
    assert result.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert result.df == pytest.approx(ref.df, rel=1e-10)
    assert result.ci_low == pytest.approx(ci.low, rel=1e-9) and result.ci_high == pytest.approx(ci.high, rel=1e-9)
    summary = welch_t_test_from_stats(a.mean(), a.var(ddof=1), n_a, b.mean(), b.var(ddof=1), n_b, alpha=alpha)
    assert summary.p_value == pytest.approx(result.p_value, rel=1e-12)


def test_welch_on_constant_groups_is_defined() -> None:
    same = welch_t_test([2.0, 2.0, 2.0], [2.0, 2.0])
    assert (same.estimate, same.statistic, same.p_value) == (0.0, 0.0, 1.0)
    apart = welch_t_test([2.0, 2.0, 2.0], [3.0, 3.0])
    assert apart.estimate == 1.0 and apart.statistic == math.inf and apart.p_value == 0.0 and apart.significant


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0], [1.0, 2.0], "Welch t-test: the control group needs at least 2 values, has 1"),
        ([1.0, 2.0], [], "Welch t-test: the treatment group needs at least 2 values, has 0"),
        ([1.0, float("nan")], [1.0, 2.0], "control: value 1 is nan (NaN and infinity are not allowed)"),
        ([1.0, 2.0], ["x", "y"], "treatment: expected numbers"),
        ([[1.0, 2.0]], [1.0, 2.0], "control: expected a one-dimensional sequence of numbers, got shape (1, 2)"),
    ],
)
def test_welch_rejects_bad_input(a: list[object], b: list[object], message: str) -> None:
    with pytest.raises(LoopmlError) as exc:
        welch_t_test(a, b)  # type: ignore[arg-type]
    assert one_line_error(exc) == message


def test_welch_from_stats_rejects_negative_variance() -> None:
    with pytest.raises(LoopmlError, match=r"var_treatment must be a finite number >= 0, got -1.0"):
        welch_t_test_from_stats(0.0, 1.0, 10, 0.0, -1.0, 10)


# --------------------------------------------------------------------------- mSPRT
def test_msprt_likelihood_ratio_is_the_normal_mixture_integral() -> None:
    """One look (``min_n`` = group sizes): Λ = ∫ N(Δ̂; θ, V) / N(Δ̂; 0, V) · N(θ; 0, τ²) dθ."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.0, 1.0, 60), rng.normal(0.3, 1.5, 60)
    values, treated = np.concatenate([a, b]), np.repeat([False, True], 60)
    result = msprt_test(values, treated, min_n=60, mixing_sd=0.4)
    v = a.var(ddof=1) / 60 + b.var(ddof=1) / 60
    tau2 = 0.4**2 * (a.var(ddof=1) + b.var(ddof=1)) / 2
    diff = b.mean() - a.mean()
    lr, _ = integrate.quad(
        lambda t: (
            stats.norm.pdf(diff, t, math.sqrt(v)) / stats.norm.pdf(diff, 0, math.sqrt(v)) * stats.norm.pdf(t, 0, math.sqrt(tau2))
        ),
        -50 * math.sqrt(tau2),
        50 * math.sqrt(tau2),
        points=[0.0, diff],
    )
    assert result.looks == 1
    assert result.statistic == pytest.approx(lr, rel=1e-7)
    assert result.p_value == pytest.approx(min(1.0, 1.0 / lr), rel=1e-7)
    assert result.estimate == pytest.approx(diff)
    # the always-valid interval is the set of differences θ its test of Δ = θ would not reject
    for edge in (result.ci_low, result.ci_high):
        shifted = msprt_test(np.concatenate([a + edge, b]), treated, min_n=60, mixing_sd=0.4)
        assert shifted.p_value == pytest.approx(result.alpha, rel=1e-6)


def _experiments(
    null: bool, kind: str, seed: int, n_experiments: int = 300, batches: int = 20, batch: int = 50
) -> tuple[float, float]:
    """(mSPRT false/true positive rate, naive repeated z/t-test rate), looking after every batch of ``batch`` per group."""
    rng = np.random.default_rng(seed)
    sequential = naive = 0
    for _ in range(n_experiments):
        test = MSPRT()
        seen_a: list[np.ndarray] = []
        seen_b: list[np.ndarray] = []
        hit_seq = hit_naive = False
        for _ in range(batches):
            if kind == "bernoulli":
                a = (rng.random(batch) < 0.1).astype(float)
                b = (rng.random(batch) < (0.1 if null else 0.16)).astype(float)
            else:
                a, b = rng.normal(0.0, 1.0, batch), rng.normal(0.0 if null else 0.25, 1.0, batch)
            seen_a.append(a)
            seen_b.append(b)
            hit_seq |= test.update(a, b).p_value < 0.05
            all_a, all_b = np.concatenate(seen_a), np.concatenate(seen_b)
            if kind == "bernoulli":
                hit_naive |= proportion_z_test(int(all_a.sum()), all_a.size, int(all_b.sum()), all_b.size).p_value < 0.05
            else:
                hit_naive |= welch_t_test(all_a, all_b).p_value < 0.05
        sequential += hit_seq
        naive += hit_naive
    return sequential / n_experiments, naive / n_experiments


@pytest.mark.parametrize("kind", ["bernoulli", "normal"])
def test_msprt_keeps_false_positives_under_alpha_when_peeking_after_every_batch(kind: str) -> None:
    """300 A/A experiments, 20 looks each: the mSPRT stays under alpha; the naive fixed-horizon test does not."""
    sequential, naive = _experiments(null=True, kind=kind, seed=11)
    assert sequential <= 0.05
    assert naive > 0.1  # why the sequential test exists: peeking at a fixed-horizon test inflates false positives


def test_msprt_detects_a_real_effect() -> None:
    power, _ = _experiments(null=False, kind="bernoulli", seed=12, n_experiments=100)
    assert power >= 0.8  # 10% -> 16% with up to 1,000 per group
    rng = np.random.default_rng(3)
    n = 4000
    values = np.where(np.arange(n) % 2 == 1, rng.random(n) < 0.15, rng.random(n) < 0.10).astype(float)
    result = msprt_test(values, np.arange(n) % 2 == 1)  # a look after every request from the 30th per group on
    assert result.significant and result.p_value < 0.01 and result.looks == n - 2 * 30 + 1
    assert 0 < result.ci_low < 0.05 < result.ci_high


def test_msprt_running_p_value_never_increases() -> None:
    rng = np.random.default_rng(8)
    test = MSPRT(min_n=10)
    p_values = [test.update(rng.normal(0, 1, 20), rng.normal(0.1, 1, 20)).p_value for _ in range(30)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(p_values))
    assert MSPRT().update([1.0], [0.0]).p_value == 1.0  # before min_n per group: no look, no evidence


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixing_sd": 0.0}, "mixing_sd must be a positive number, got 0.0"),
        ({"min_n": 1}, "min_n must be a whole number >= 2, got 1"),
        ({"alpha": 1.5}, "alpha must be strictly between 0 and 1, got 1.5"),
    ],
)
def test_msprt_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(LoopmlError) as exc:
        MSPRT(**kwargs)  # type: ignore[arg-type]
    assert one_line_error(exc) == message


def test_msprt_rejects_bad_data() -> None:
    with pytest.raises(LoopmlError, match="the treatment group needs at least 30 values, has 5"):
        msprt_test(np.zeros(40), np.arange(40) < 5)
    with pytest.raises(LoopmlError, match=r"treatment: expected one True/False per value \(40\), got shape \(39,\)"):
        msprt_test(np.zeros(40), np.zeros(39, dtype=bool))


# --------------------------------------------------------------------------- sample-ratio mismatch
def test_srm_matches_scipy_and_flags_below_one_in_a_thousand() -> None:
    fine = sample_ratio_test({"a": 5050, "b": 4950})
    assert fine.p_value == pytest.approx(stats.chisquare([5050, 4950]).pvalue) and not fine.mismatch
    broken = sample_ratio_test({"a": 5200, "b": 4800})
    assert broken.statistic == pytest.approx(16.0) and broken.p_value < 0.001 and broken.mismatch
    weighted = sample_ratio_test({"a": 905, "b": 95}, {"a": 0.9, "b": 0.1})
    assert weighted.p_value == pytest.approx(stats.chisquare([905, 95], [900, 100]).pvalue) and not weighted.mismatch
    assert weighted.expected == {"a": pytest.approx(900.0), "b": pytest.approx(100.0)}
    # a variant configured but never served counts as 0: the strongest mismatch there is
    missing = sample_ratio_test({"a": 300}, {"a": 1, "b": 1, "c": 1})
    assert missing.observed == {"a": 300, "b": 0, "c": 0} and missing.mismatch
    # traffic to a variant with weight 0 is a mismatch; no traffic to it is fine
    assert sample_ratio_test({"a": 50, "b": 50, "off": 1}, {"a": 1, "b": 1, "off": 0}).p_value == 0.0
    assert not sample_ratio_test({"a": 50, "b": 50}, {"a": 1, "b": 1, "off": 0}).mismatch


@pytest.mark.parametrize(
    ("observed", "weights", "message"),
    [
        ({"a": -3, "b": 10}, None, "observed count of 'a' must not be negative, got -3"),
        ({"a": 0, "b": 0}, None, "sample-ratio test: no observations"),
        ({"a": 10}, None, "sample-ratio test needs at least 2 variants with a positive weight, got 1"),
        ({"a": 10, "c": 3}, {"a": 1, "b": 1}, "variant(s) c got traffic but have no weight (weights: a, b)"),
        ({"a": 10, "b": 3}, {"a": 1, "b": -1}, "weight of variant 'b' must be a number >= 0, got -1"),
    ],
)
def test_srm_rejects_bad_input(observed: dict[str, int], weights: dict[str, float] | None, message: str) -> None:
    with pytest.raises(LoopmlError) as exc:
        sample_ratio_test(observed, weights)
    assert one_line_error(exc) == message


def test_parse_weights() -> None:
    assert parse_weights("a=0.5, b=0.5") == {"a": 0.5, "b": 0.5}
    assert parse_weights(None) is None and parse_weights(" ") is None
    for text, message in (("a=0.5,b", "'b': expected NAME=WEIGHT"), ("a=1,a=2", "variant 'a' is given twice"), ("=1", "'=1'")):
        with pytest.raises(LoopmlError, match=message):
            parse_weights(text)


# --------------------------------------------------------------------------- sample size
@pytest.mark.parametrize(
    ("p_c", "p_t", "alpha", "power", "ratio"),
    [(0.10, 0.12, 0.05, 0.8, 1.0), (0.02, 0.025, 0.05, 0.9, 1.0), (0.5, 0.4, 0.01, 0.8, 2.0), (0.3, 0.5, 0.1, 0.95, 0.5)],
)
def test_sample_size_for_proportions_matches_statsmodels_cohens_h(
    p_c: float, p_t: float, alpha: float, power: float, ratio: float
) -> None:
    size = sample_size_proportions(p_c, p_t, alpha=alpha, power=power, ratio=ratio)
    h = proportion_effectsize(p_t, p_c)
    expected = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=ratio, alternative="two-sided")
    assert size.effect_size == pytest.approx(h, rel=1e-12)
    assert size.exact_control == pytest.approx(expected, rel=1e-6)
    assert size.exact_treatment == pytest.approx(expected * ratio, rel=1e-6)
    assert size.n_control == math.ceil(size.exact_control) and size.n_treatment == math.ceil(size.exact_treatment)
    # and the sizes deliver the power asked for
    achieved = NormalIndPower().power(effect_size=h, nobs1=size.n_control, alpha=alpha, ratio=ratio)
    assert power <= achieved < power + 0.01


def test_sample_size_for_means_matches_statsmodels() -> None:
    size = sample_size_means(0.5, 4.0, alpha=0.05, power=0.8)
    assert size.exact_control == pytest.approx(zt_ind_solve_power(effect_size=0.125, alpha=0.05, power=0.8, ratio=1.0), rel=1e-6)
    assert size.n_control == size.n_treatment == 1005


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sample_size_proportions(0.0, 0.1), "rate_control must be strictly between 0 and 1, got 0.0"),
        (lambda: sample_size_proportions(0.1, 1.0), "rate_treatment must be strictly between 0 and 1, got 1.0"),
        (lambda: sample_size_proportions(0.1, -0.2), "rate_treatment must be strictly between 0 and 1, got -0.2"),
        (
            lambda: sample_size_proportions(0.1, 0.1),
            "rate_control and rate_treatment are equal (0.1): there is no effect to detect",
        ),
        (lambda: sample_size_proportions(0.1, 0.2, power=0.04), "power (0.04) must be larger than alpha (0.05)"),
        (
            lambda: sample_size_proportions(0.1, 0.2, ratio=0),
            "ratio (treatment size / control size) must be a positive number, got 0",
        ),
        (lambda: sample_size_means(1.0, 0.0), "sd must be a positive number, got 0.0"),
        (lambda: sample_size_means(0.0, 1.0), "difference must be a non-zero number, got 0.0"),
    ],
)
def test_sample_size_rejects_bad_input(call: object, message: str) -> None:
    with pytest.raises(LoopmlError) as exc:
        call()  # type: ignore[operator]
    assert one_line_error(exc) == message


# --------------------------------------------------------------------------- the report on a prediction log
def write_experiment(
    log: PredictionLog, rates: dict[str, float], n: int, seed: int = 0, labelled: float = 0.75
) -> list[dict[str, object]]:
    """``n`` requests alternating over the variants; a fraction of them labelled with a 0/1 outcome at ``rates``."""
    rng = np.random.default_rng(seed)
    names = list(rates)
    rows, feedback, truth = [], [], []
    for i in range(n):
        variant = names[i % len(names)]
        y = float(rng.random() < rates[variant])
        score = float(np.clip(0.4 * y + rng.normal(0.2 + 0.05 * names.index(variant), 0.1), 0.0, 1.0))
        rid = uuid.uuid4().hex
        ts = T0 + timedelta(seconds=i)
        version = 1 + names.index(variant)
        latency = float(rng.gamma(2.0, 0.5))
        rows.append(LoggedPrediction(rid, ts, {"customer_id": i}, {"tx_amount": 10.0}, score, version, variant, latency))
        has_label = rng.random() < labelled
        if has_label:
            feedback.append(Feedback(rid, y, ts + timedelta(minutes=5)))
        truth.append({"variant": variant, "score": score, "label": y if has_label else None, "latency": latency, "ts": ts})
    for start in range(0, n, 500):  # as the server flushes: several parts
        log.append(rows[start : start + 500])
    log.add_feedback(feedback)
    return truth


@pytest.fixture(params=["duckdb", "postgres"])
def prediction_log(request: pytest.FixtureRequest, tmp_path: Path) -> PredictionLog:
    """The report reads only ``connect()``'s views, so it must agree on both prediction-log backends."""
    if request.param == "duckdb":
        return PredictionLog(tmp_path / "predictions")
    pytest.importorskip("psycopg")
    from loopml.predlog.postgres import PostgresPredictionLog

    log = PostgresPredictionLog(request.getfixturevalue("postgres_url"))
    request.addfinalizer(log.close)
    return log  # type: ignore[return-value]


def test_report_per_variant_figures_and_tests(prediction_log: PredictionLog) -> None:
    truth = write_experiment(prediction_log, {"champion": 0.10, "challenger": 0.17}, 3000)
    report = experiment_report(prediction_log, task="binary")
    assert report.rows == 3000 and report.control == "champion"
    by_name = {v.variant: v for v in report.variants}
    for name, version in (("champion", 1), ("challenger", 2)):
        mine = [t for t in truth if t["variant"] == name]
        labelled = [t for t in mine if t["label"] is not None]
        y = np.array([t["label"] for t in labelled], dtype=float)
        s = np.array([t["score"] for t in labelled])
        v = by_name[name]
        assert (v.requests, v.model_versions, v.labelled) == (1500, [version], len(labelled))
        assert v.label_rate == pytest.approx(y.mean())
        assert v.mean_score == pytest.approx(np.mean([t["score"] for t in mine]))
        assert v.average_precision == pytest.approx(average_precision_score(y, s))
        assert v.roc_auc == pytest.approx(roc_auc_score(y, s))
        latency = np.array([t["latency"] for t in mine])
        assert v.latency_p50_ms == pytest.approx(np.quantile(latency, 0.5)) and v.latency_p99_ms == pytest.approx(
            np.quantile(latency, 0.99)
        )
    [comparison] = report.comparisons
    assert (comparison.variant, comparison.control) == ("challenger", "champion")
    a, b = by_name["champion"], by_name["challenger"]
    assert a.label_rate is not None and b.label_rate is not None and a.mean_score is not None and b.mean_score is not None
    expected = proportion_z_test(round(a.label_rate * a.labelled), a.labelled, round(b.label_rate * b.labelled), b.labelled)
    assert comparison.label_rate == expected and expected.significant
    assert not isinstance(comparison.label_rate_sequential, str) and comparison.label_rate_sequential.significant
    assert not isinstance(comparison.metric, str) and comparison.metric.estimate == pytest.approx(b.mean_score - a.mean_score)
    assert (
        not isinstance(report.srm, str)
        and not report.srm.mismatch
        and report.srm.observed == {"challenger": 1500, "champion": 1500}
    )
    json.dumps(report.to_json())  # JSON-ready as it is


def test_report_without_an_effect_finds_none_and_catches_a_broken_split(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    write_experiment(log, {"a": 0.1, "b": 0.1}, 2000, seed=4)
    report = experiment_report(log, control="b", weights={"a": 0.8, "b": 0.2}, metric="latency_ms")
    assert report.control == "b" and report.weights == {"a": 0.8, "b": 0.2}
    [c] = report.comparisons
    for test in (c.label_rate, c.label_rate_sequential, c.metric, c.metric_sequential):
        assert not isinstance(test, str) and not test.significant
    assert not isinstance(report.srm, str) and report.srm.mismatch  # 50/50 served where 80/20 was configured


def test_report_since_and_control_defaults(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    write_experiment(log, {"blue": 0.1, "green": 0.2, "red": 0.1}, 900)
    report = experiment_report(log, since=T0 + timedelta(seconds=600))
    assert report.rows == 300 and report.control == "blue"  # no champion variant: the first by name
    assert [c.variant for c in report.comparisons] == ["green", "red"]
    assert experiment_report(log, control_candidates=("nope", "red")).control == "red"
    assert experiment_report(log, control_candidates=(), champion_version=2).control == "green"


def test_report_with_too_little_data_says_so(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    empty = experiment_report(log)
    assert (empty.rows, empty.variants, empty.comparisons, empty.control) == (0, [], [], None)
    assert empty.srm == "not enough data: no predictions logged"
    write_experiment(log, {"champion": 0.5, "challenger": 0.5}, 3, labelled=1.0)
    report = experiment_report(log)
    [c] = report.comparisons
    assert c.label_rate == "not enough data: needs at least 2 labelled rows per variant (challenger has 1)"
    assert c.metric == "not enough data: needs at least 2 rows with a score per variant (challenger has 1)"
    assert isinstance(report.srm, str) and report.srm.startswith("not enough data")
    write_experiment(log, {"champion": 0.5, "challenger": 0.5}, 20, labelled=1.0)
    [c] = experiment_report(log).comparisons
    assert not isinstance(c.metric, str)  # enough for Welch ...
    assert (
        c.metric_sequential
        == "not enough data: needs at least 30 rows with a score per variant (champion has 12, challenger has 11)"
    )


def test_report_on_numeric_labels_points_to_welch(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions")
    rows = [LoggedPrediction(f"r{i}", T0 + timedelta(seconds=i), {}, {}, 0.5, 1, "ab"[i % 2], 1.0) for i in range(40)]
    log.append(rows)
    log.add_feedback([Feedback(f"r{i}", float(i) * 1.5, T0) for i in range(40)])
    report = experiment_report(log, task="regression", control="a", metric="label")
    [c] = report.comparisons
    assert c.label_rate == "labels are not all 0/1: compare them with --metric label (Welch) instead"
    assert not isinstance(c.metric, str) and c.metric.estimate == pytest.approx(1.5)
    assert report.variants[0].average_precision is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"control": "gold"}, "--control 'gold': no such variant in the prediction log (variants: a, b)"),
        (
            {"metric": "cost"},
            f"--metric 'cost': no such column in the prediction log (numeric columns: {NUMERIC})",
        ),
        (
            {"metric": "entities"},
            f"--metric 'entities': column is VARCHAR, not numeric (numeric: {NUMERIC})",
        ),
        ({"weights": {"a": 1.0}}, "--weights has no weight for variant(s) b (weights given: a)"),
        ({"task": "ranking"}, "task: unknown task 'ranking' (choices: binary, regression)"),
    ],
)
def test_report_rejects_bad_options(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    log = PredictionLog(tmp_path / "predictions")
    write_experiment(log, {"a": 0.1, "b": 0.1}, 10)
    with pytest.raises(LoopmlError) as exc:
        experiment_report(log, **kwargs)  # type: ignore[arg-type]
    assert one_line_error(exc) == message


def test_parse_since() -> None:
    assert parse_since("2024-05-01") == datetime(2024, 5, 1)
    assert parse_since(None) is None
    aware = parse_since("2024-05-01T12:00:00+00:00")
    assert aware is not None and aware.tzinfo is None  # the log's clock: naive local time
    with pytest.raises(LoopmlError, match="--since 'last week': expected an ISO date or time"):
        parse_since("last week")


# --------------------------------------------------------------------------- docs
def test_docs_examples_run_as_written() -> None:
    """Every ``python`` block of docs/experiments.md runs, and its asserts (the numbers the page quotes) hold."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "docs/experiments.md", "exec"), {})


# --------------------------------------------------------------------------- the command line
@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "p"
    result = runner.invoke(
        app, ["init", str(folder), "--example", "fraud", "--days", "3", "--customers", "50", "--terminals", "100"]
    )
    assert result.exit_code == 0, result.stderr
    return folder


def test_cli_report_json_and_table(project: Path) -> None:
    write_experiment(Project.load(project).prediction_log(), {"champion": 0.1, "challenger": 0.2}, 2000)  # type: ignore[arg-type]
    result = runner.invoke(app, ["experiment", "report", "--project", str(project), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"control", "variants", "comparisons", "sample_ratio", "rows", "metric"} <= set(data)
    assert data["control"] == "champion" and data["rows"] == 2000
    comparison = data["comparisons"][0]
    assert comparison["label_rate"]["z_test"]["significant"] is True
    assert {"estimate", "ci_low", "ci_high", "statistic", "p_value"} <= set(comparison["label_rate"]["sequential"])
    assert data["sample_ratio"]["mismatch"] is False
    result = runner.invoke(app, ["experiment", "report", "--project", str(project), "--weights", "champion=0.9,challenger=0.1"])
    assert result.exit_code == 0, result.stderr
    for text in ("label rate z-test", "label rate mSPRT", "score Welch", "champion (control)", "MISMATCH"):
        assert text in result.stdout
    since = (T0 + timedelta(seconds=1990)).isoformat()
    result = runner.invoke(app, ["experiment", "report", "--project", str(project), "--since", since, "--json"])
    data = json.loads(result.stdout)
    assert data["rows"] == 10 and data["comparisons"][0]["metric"]["sequential"]["skipped"].startswith("not enough data")


def test_cli_report_on_an_empty_log_and_bad_options(project: Path) -> None:
    result = runner.invoke(app, ["experiment", "report", "--project", str(project)])
    assert result.exit_code == 0 and result.stdout == "not enough data: no predictions logged\n"
    for args, message in (
        (["--control", "x"], "error: --control 'x': no such variant in the prediction log (variants: none)"),
        (["--weights", "a=1,b"], "error: --weights 'b': expected NAME=WEIGHT with a weight >= 0, e.g. a=0.5,b=0.5"),
        (["--since", "soon"], "error: --since 'soon': expected an ISO date or time, e.g. 2024-05-01 or 2024-05-01T12:00"),
        (["--alpha", "0"], "error: alpha must be strictly between 0 and 1, got 0.0"),
    ):
        result = runner.invoke(app, ["experiment", "report", "--project", str(project), *args])
        assert result.exit_code == 1 and result.stdout == "" and result.stderr.strip() == message


def test_cli_sample_size() -> None:
    result = runner.invoke(app, ["experiment", "size", "--rate-control", "0.1", "--rate-treatment", "0.12", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n_control"] == sample_size_proportions(0.1, 0.12).n_control == 3835
    result = runner.invoke(app, ["experiment", "size", "--difference", "0.5", "--sd", "4", "--power", "0.8"])
    assert result.exit_code == 0 and result.stdout.startswith("1,005 control + 1,005 treatment = 2,010 observations")
    result = runner.invoke(app, ["experiment", "size", "--rate-control", "0.1"])
    assert (
        result.exit_code == 1 and result.stderr.strip() == "error: experiment size: give both --rate-control and --rate-treatment"
    )
    result = runner.invoke(app, ["experiment", "size", "--rate-control", "0.1", "--rate-treatment", "1.2"])
    assert result.exit_code == 1 and "rate_treatment must be strictly between 0 and 1, got 1.2" in result.stderr
