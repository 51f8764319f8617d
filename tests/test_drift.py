"""Drift tests on arrays against stored reference statistics: agreement with scipy, windows, decisions, many columns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from loopml.features.transforms import CALENDAR_CYCLE_US
from loopml.monitor.drift import ColumnSummary, chosen_test, column_references, decide, summarise, summarise_column, window_spans
from loopml.monitor.live_rows import LiveData
from loopml.monitor.stattests import (
    PSI,
    TEST_NAMES,
    CategoricalReference,
    ChiSquare,
    JensenShannon,
    KolmogorovSmirnov,
    Locator,
    NumericReference,
    Profile,
    Wasserstein,
    adjust_p_values,
    binned,
    categorical_profile,
    ks_error_bound,
    make_test,
    numeric_profile,
    wasserstein_error_bound,
)
from loopml.spec.model import Monitoring
from loopml.train.reference import SKETCH_SIZE, categorical_entry, psi, reference_entry, reference_stats

RNG = np.random.default_rng(42)


def one_window(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int64)


def numeric(reference_values: np.ndarray, current: np.ndarray, tolerance: float = 0.0) -> tuple[NumericReference, Profile]:
    ref = NumericReference.from_entry("x", reference_entry(reference_values, bins=10), tolerance)
    return ref, numeric_profile(ref, current, one_window(len(current)), 1)


def present(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


# -- agreement with scipy --------------------------------------------------------------------------------------


def test_psi_from_the_profile_is_the_stored_reference_psi() -> None:
    ref_values = RNG.lognormal(size=30_000)
    current = RNG.lognormal(mean=0.3, size=8_000)
    current[:400] = np.nan
    ref, profile = numeric(ref_values, current)
    assert PSI().fit(ref).score(profile).statistic[0] == pytest.approx(
        psi(reference_entry(ref_values, bins=10), current), rel=1e-12
    )


def test_ks_on_a_continuous_column_is_within_the_sketch_bound_of_scipy() -> None:
    ref_values = RNG.normal(size=60_000)
    ref_values[:600] = np.nan
    for shift in (0.0, 0.05, 0.3):
        current = RNG.normal(loc=shift, size=5_000)
        ref, profile = numeric(ref_values, current)
        scores = KolmogorovSmirnov().fit(ref).score(profile)
        exact = stats.ks_2samp(present(ref_values), current, method="asymp")
        d, bound = scores.statistic[0], ks_error_bound(ref, profile)[0]
        assert d <= exact.statistic + 1e-12 and exact.statistic <= d + bound  # documented: a lower bound, within the cell mass
        assert bound <= 1.5 / SKETCH_SIZE
        # the p-value is scipy's asymptotic one for the sketch's D and the two sample sizes
        n_eff = round(len(present(ref_values)) * len(current) / (len(present(ref_values)) + len(current)))
        assert scores.p_value is not None and scores.p_value[0] == pytest.approx(stats.kstwo.sf(d, n_eff), rel=1e-9)
        assert np.log10(max(scores.p_value[0], 1e-300)) == pytest.approx(np.log10(max(exact.pvalue, 1e-300)), abs=0.5)


def test_ks_on_a_discrete_column_equals_scipy_exactly() -> None:
    ref_values = RNG.poisson(4, size=20_000).astype(float)
    current = RNG.poisson(4.6, size=3_000).astype(float)
    ref, profile = numeric(ref_values, current)
    scores = KolmogorovSmirnov().fit(ref).score(profile)
    exact = stats.ks_2samp(ref_values, current, method="asymp")
    assert scores.statistic[0] == pytest.approx(exact.statistic, abs=1e-12)
    assert scores.p_value is not None and scores.p_value[0] == pytest.approx(exact.pvalue, rel=1e-6)
    assert ks_error_bound(ref, profile)[0] == 0.0  # every value is a sketch point: no open cell holds mass


def test_wasserstein_is_scipy_over_the_reference_std_within_the_bound() -> None:
    ref_values = RNG.gamma(2.0, 3.0, size=50_000)
    for current in (RNG.gamma(2.0, 3.0, size=10_000), RNG.gamma(2.0, 3.6, size=10_000) + 1.0):
        ref, profile = numeric(ref_values, current)
        mine = Wasserstein().fit(ref).score(profile).statistic[0]
        exact = stats.wasserstein_distance(ref_values, current) / ref_values.std()
        assert abs(mine - exact) <= wasserstein_error_bound(ref, profile)[0]
        assert mine == pytest.approx(exact, abs=0.005)  # in practice far inside the bound
    discrete_ref = RNG.integers(0, 30, size=20_000).astype(float)
    discrete_cur = RNG.integers(2, 35, size=4_000).astype(float)  # values beyond the reference max: the exact tail
    ref, profile = numeric(discrete_ref, discrete_cur)
    exact = stats.wasserstein_distance(discrete_ref, discrete_cur) / discrete_ref.std()
    assert Wasserstein().fit(ref).score(profile).statistic[0] == pytest.approx(exact, rel=1e-9)


def test_chi_square_and_jensen_shannon_equal_scipy_on_the_same_bins() -> None:
    ref_values = RNG.normal(size=20_000)
    current = RNG.normal(0.2, 1.0, size=3_000)
    current[:150] = np.nan  # nulls are a bin of their own, in the reference (none) and now
    ref, profile = numeric(ref_values, current)
    counts, fractions = binned(ref, profile)
    chi = ChiSquare().fit(ref).score(profile)
    keep = (fractions > 0) | (counts[0] > 0)
    expected = np.maximum(fractions[keep], 1e-4)
    expected = expected / expected.sum() * counts[0].sum()
    exact = stats.chisquare(counts[0][keep], expected)
    assert chi.statistic[0] == pytest.approx(exact.statistic, rel=1e-12)
    assert chi.p_value is not None and chi.p_value[0] == pytest.approx(exact.pvalue, rel=1e-9, abs=1e-300)
    js = JensenShannon().fit(ref).score(profile).statistic[0]
    assert js == pytest.approx(jensenshannon(fractions, counts[0], base=2), rel=1e-12)


def test_categorical_column_bins_unseen_and_null_values_apart() -> None:
    entry = categorical_entry(np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 100 + [None] * 0, dtype=object))
    ref = CategoricalReference.from_entry("merchant", entry)
    values = pa.chunked_array([pa.array(["a"] * 50 + ["b"] * 30 + ["zzz"] * 15 + [None] * 5)])
    profile = categorical_profile(ref, values, one_window(100), 1)
    assert profile.counts.tolist() == [[50, 30, 0, 15, 5]]  # a, b, c, other (unseen), NULL
    observed = profile.counts[0]
    expected = np.maximum(ref.fractions, 1e-4)
    keep = (ref.fractions > 0) | (observed > 0)
    expected = expected[keep] / expected[keep].sum() * 100
    chi = ChiSquare().fit(ref).score(profile)
    assert chi.statistic[0] == pytest.approx(stats.chisquare(observed[keep], expected).statistic, rel=1e-12)
    assert JensenShannon().fit(ref).score(profile).statistic[0] == pytest.approx(jensenshannon(ref.fractions, observed, base=2))
    assert not KolmogorovSmirnov().applies_to(ref) and not Wasserstein().applies_to(ref)
    with pytest.raises(ValueError, match="no reference CDF sketch"):
        KolmogorovSmirnov().fit(ref)


@pytest.mark.parametrize(
    "reference",
    [
        RNG.normal(size=20_000),
        RNG.lognormal(sigma=2.5, size=20_000),
        RNG.pareto(0.5, size=20_000),  # points bunched near 0, a range up to ~1e8
        RNG.poisson(3, size=20_000).astype(float),
        1e12 + RNG.uniform(size=20_000) * 1e-3,  # a range narrower than a bucket can resolve at this magnitude
        np.concatenate([RNG.normal(size=10_000) * 1e-300, RNG.normal(size=10_000) * 1e300]),
    ],
    ids=["normal", "lognormal", "pareto", "poisson", "narrow", "extreme"],
)
def test_the_bucketed_locator_is_searchsorted(reference: np.ndarray) -> None:
    points = NumericReference.from_entry("x", reference_entry(reference, bins=10)).points
    locate = Locator.build(points)
    values = np.concatenate(
        [RNG.choice(reference, 50_000), RNG.choice(points, 5_000), np.nextafter(points, np.inf), np.nextafter(points, -np.inf)]
    )
    values = np.concatenate([values, values * 1.5, [np.nan, np.inf, -np.inf, 0.0, -1e308, 1e308]])
    assert np.array_equal(locate(values), np.searchsorted(points, values, side="left"))


# -- the shared contract of every test --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEST_NAMES)
def test_every_test_tells_same_from_shifted_and_scores_windows_independently(name: str) -> None:
    ref_values = RNG.normal(size=40_000)
    ref = NumericReference.from_entry("x", reference_entry(ref_values, bins=10))
    same = RNG.normal(size=4_000)
    shifted = RNG.normal(loc=0.8, size=4_000)
    values = np.concatenate([same, shifted])
    window = np.repeat([0, 1], 4_000)
    test = make_test(name).fit(ref)
    both = test.score(numeric_profile(ref, values, window, 2))
    alone = [test.score(numeric_profile(ref, part, one_window(len(part)), 1)) for part in (same, shifted)]
    assert both.statistic.tolist() == pytest.approx([a.statistic[0] for a in alone], rel=1e-12)
    settings = Monitoring()
    limit = {"psi": settings.psi_threshold, "jensenshannon": 0.1, "wasserstein": 0.1}.get(name)
    if both.p_value is not None:
        assert both.p_value[0] > settings.p_value and both.p_value[1] < settings.p_value
    else:
        assert limit is not None and both.statistic[0] < limit < both.statistic[1]
    with pytest.raises(ValueError, match="fit"):
        make_test(name).score(numeric_profile(ref, same, one_window(len(same)), 1))


def test_unknown_test_and_correction_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown drift test 'kss'"):
        make_test("kss")
    with pytest.raises(ValueError, match="correction 'holm'"):
        adjust_p_values(np.array([0.1, 0.2]), "holm")


# -- reference statistics ------------------------------------------------------------------------------------------


def test_reference_stats_are_json_with_sketch_categories_and_calibration() -> None:
    X = np.column_stack([RNG.normal(size=2_000), RNG.integers(0, 3, size=2_000).astype(float)])
    scores = RNG.uniform(size=500)
    labels = (RNG.uniform(size=500) < scores).astype(float)
    strings = {"merchant": np.array(["m1", "m2", None, "m1"] * 500, dtype=object)}
    stats_ = reference_stats(X, ["a", "b"], scores, bins=10, strings=strings, labels=labels)
    json.dumps(stats_, allow_nan=False)
    a = stats_["features"]["a"]
    assert {"edges", "fractions", "count", "mean", "std", "min", "max", "null_rate", "non_null", "sketch"} <= set(a)
    assert set(a["edges"]) <= set(a["sketch"]["values"])  # the PSI edges are sketch points
    assert a["sketch"]["values"][0] == a["min"] and a["sketch"]["values"][-1] == a["max"]
    assert {0.0, 1.0, 2.0} <= set(stats_["features"]["b"]["sketch"]["values"])  # a discrete column is stored exactly
    merchant = stats_["categorical"]["merchant"]
    assert merchant["values"] == ["m1", "m2"] and merchant["null_rate"] == pytest.approx(0.25) and merchant["other"] == 0.0
    calibration = stats_["score"]["calibration"]
    assert calibration["x"] == sorted(calibration["x"]) and all(0 <= y <= 1 for y in calibration["y"])


def test_an_old_reference_without_sketch_still_gets_psi() -> None:
    entry = reference_entry(RNG.normal(size=5_000), bins=10)
    old = {k: v for k, v in entry.items() if k not in ("sketch", "non_null")}
    references = column_references({"features": {"x": old}, "score": old})
    assert set(references) == {"x", "score"}
    ref = references["x"]
    assert isinstance(ref, NumericReference) and not ref.has_sketch
    current = RNG.normal(loc=1.0, size=3_000)
    summary = summarise_column(ref, current, one_window(3_000), 1, 1e-4)
    assert set(summary.scores) == {"psi", "chi2", "jensenshannon"}
    assert summary.scores["psi"].statistic[-1] == pytest.approx(psi(old, current))
    assert chosen_test(summary, 200, Monitoring()) == "psi"  # KS wanted for few rows, but needs the sketch


# -- decisions -------------------------------------------------------------------------------------------------------


def live_of(columns: dict[str, np.ndarray], score: np.ndarray) -> LiveData:
    n = len(score)
    return LiveData(
        ts_us=np.arange(n, dtype=np.int64),
        score=score,
        label=np.full(n, np.nan),
        latency_ms=np.ones(n),
        numeric=columns,
        categorical={},
    )


def summaries_for(
    n_rows: int, shifted: dict[str, float], window: np.ndarray | None = None, n_windows: int = 1
) -> list[ColumnSummary]:
    names = [f"f{i}" for i in range(20)]
    X = RNG.normal(size=(20_000, 20))
    reference = reference_stats(X, names, RNG.uniform(size=5_000), bins=10)
    current = {name: RNG.normal(loc=shifted.get(name, 0.0), size=n_rows) for name in names}
    references = column_references(reference)
    w = one_window(n_rows) if window is None else window
    return summarise(references, live_of(current, RNG.uniform(size=n_rows)), w, n_windows)


def test_default_test_by_type_and_rows_and_overrides() -> None:
    settings = Monitoring()
    numeric_summary = ColumnSummary(
        "x", "numeric", np.zeros(1, np.int64), np.zeros(1, np.int64), None, None, {t: None for t in TEST_NAMES}
    )  # type: ignore[misc]
    categorical_summary = ColumnSummary(
        "c",
        "categorical",
        np.zeros(1, np.int64),
        np.zeros(1, np.int64),
        None,
        None,
        {"psi": None, "chi2": None, "jensenshannon": None},
    )  # type: ignore[misc]
    assert chosen_test(numeric_summary, 999, settings) == "ks" and chosen_test(numeric_summary, 1000, settings) == "psi"
    assert chosen_test(categorical_summary, 10, settings) == "chi2" and chosen_test(categorical_summary, 10**6, settings) == "psi"
    custom = Monitoring(tests={"x": "wasserstein", "c": "ks"}, large_sample=50)
    assert chosen_test(numeric_summary, 10, custom) == "wasserstein"
    assert chosen_test(categorical_summary, 10, custom) == "psi"  # KS cannot score a categorical column


def test_ks_with_correction_flags_only_the_shifted_columns() -> None:
    results = decide(summaries_for(600, {"f3": 0.6, "f7": -0.6}), Monitoring())[-1]
    by_name = {r.feature: r for r in results}
    assert {r.test for r in results} == {"ks"}  # 600 rows < large_sample
    assert {r.feature for r in results if r.drifted} == {"f3", "f7"}
    raw = np.array([r.statistics["ks_p"] for r in results])
    assert [r.p_value for r in results] == pytest.approx(stats.false_discovery_control(raw, method="bh").tolist())
    bonferroni = decide(summaries_for(600, {}), Monitoring(correction="bonferroni"))[-1]
    assert not any(r.drifted for r in bonferroni)
    assert by_name["f3"].status == "drift" and by_name["f0"].status == "ok"
    assert json.loads(json.dumps(by_name["f3"].to_json()))["p_value"] == by_name["f3"].p_value


def test_windows_with_too_few_rows_are_not_enough_data_never_drift() -> None:
    n = 3_000
    window = np.r_[np.zeros(2_950, dtype=np.int64), np.ones(50, dtype=np.int64)]
    shifted = summaries_for(n, {f"f{i}": 5.0 for i in range(20)}, window, 2)
    per_window = decide(shifted, Monitoring(min_rows=100))
    assert all(r.drifted and r.test == "psi" for r in per_window[0] if r.feature != "score")  # 2,950 rows: PSI
    assert all(r.status == "not enough data" and not r.drifted and r.statistic is None for r in per_window[1])
    assert all(r.drifted and r.rows == n for r in per_window[2] if r.feature != "score")  # the whole period
    empty = decide(summaries_for(0, {}), Monitoring())
    assert all(r.status == "not enough data" for r in empty[-1])


def test_calendar_features_are_seasonal_in_windows_shorter_than_their_cycle() -> None:
    """A daily window of ``is_weekend`` is all weekend or all weekdays: not drift; two weeks are tested like any column."""
    day_us, week = 86_400_000_000, CALENDAR_CYCLE_US["is_weekend"]
    ts = np.sort(RNG.integers(0, 14 * day_us, size=14_000)).astype(np.int64)  # 1970-01-01 was a Thursday
    weekend = (((ts // day_us) + 3) % 7 >= 5).astype(np.float64)
    other = RNG.normal(size=len(ts))
    reference = reference_stats(np.c_[weekend, other], ["wknd", "other"], RNG.uniform(size=5_000), bins=10)
    references = column_references(reference)
    window = (ts // day_us).astype(np.int64)
    n = len(ts)
    live = LiveData(ts, RNG.uniform(size=n), np.full(n, np.nan), np.ones(n), {"wknd": weekend, "other": other}, {})
    summaries = summarise(references, live, window, 14)
    spans = window_spans(ts, window, 14)
    assert spans[-1] == ts[-1] - ts[0] and all(spans[:-1] < day_us)
    naive = decide(summaries, Monitoring())
    assert any(r.drifted for w in naive[:-1] for r in w if r.feature == "wknd")  # what a week-mixed reference says per day
    aware = decide(summaries, Monitoring(), spans, {"wknd": week})
    for results in aware[:-1]:
        by_name = {r.feature: r for r in results}
        assert by_name["wknd"].status == "seasonal" and not by_name["wknd"].drifted and by_name["wknd"].statistic is not None
        assert by_name["other"].status == "ok"
    assert {r.feature: r.status for r in aware[-1]}["wknd"] == "ok"  # two full weeks: tested, and no drift
    shifted = np.where(RNG.uniform(size=len(ts)) < 0.9, 1.0, 0.0)  # a real change: nine tenths of the traffic on weekends
    moved_live = LiveData(ts, live.score, live.label, live.latency_ms, {"wknd": shifted, "other": other}, {})
    moved = summarise(references, moved_live, window, 14)
    assert {r.feature: r.drifted for r in decide(moved, Monitoring(), spans, {"wknd": week})[-1]}["wknd"]


def test_window_counts_add_up_to_the_period() -> None:
    window = RNG.integers(0, 5, size=10_000)
    window.sort()
    summaries = summaries_for(10_000, {"f1": 0.3}, window, 5)
    for s in summaries:
        assert s.rows[-1] == s.rows[:-1].sum() == 10_000


def test_fifty_columns_in_one_pass_are_each_judged_on_their_own() -> None:
    """How fast: benchmarks/drift.py (1 M rows x 50 columns). Here: every column gets its own, right answer."""
    rng = np.random.default_rng(50)  # its own generator: the answer must not depend on the tests run before
    n, k = 100_000, 50
    names = [f"f{i}" for i in range(k)]
    reference = reference_stats(rng.normal(size=(20_000, k)), names, rng.uniform(size=5_000), bins=10)
    references = column_references(reference)
    columns: dict[str, Any] = {name: rng.normal(size=n) for name in names}
    shifted = {"f3", "f17", "f42"}
    for name in shifted:
        columns[name] += 1.0
    live = live_of(columns, rng.uniform(size=n))
    window = np.repeat(np.arange(10), n // 10)
    results = decide(summarise(references, live, window, 10), Monitoring())
    assert len(results) == 11 and all(len(r) == k + 1 for r in results)
    assert {r.feature for r in results[-1] if r.drifted} == shifted
    assert all({r.feature for r in one if r.drifted} == shifted for one in results[:-1])  # every window too


def test_the_drift_docs_example_runs() -> None:
    """Every ``python`` block of the Drift, Data quality, Performance and Alert rules sections of docs/monitoring.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    mine = [s for s in sections if s.split("\n", 1)[0].strip() in ("Drift", "Data quality", "Performance", "Alert rules")]
    blocks = [b for s in mine for b in re.findall(r"```python\n(.*?)```", s, flags=re.S)]
    assert len(mine) == 4 and blocks
    for block in blocks:
        exec(compile(block, "docs/monitoring.md", "exec"), {})
