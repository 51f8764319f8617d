"""Experiment statistics on plain numbers and arrays: fixed-horizon tests, a sequential test, SRM and sample sizes.

Every comparison is *treatment minus control* and returns a small frozen
dataclass with the estimate, its confidence interval, the test statistic and
the p-value:

- :func:`proportion_z_test` — two-proportion z-test: pooled standard error for
  the test, unpooled (Wald) standard error for the interval (the same as
  statsmodels ``proportions_ztest`` and ``confint_proportions_2indep(method="wald")``).
- :func:`welch_t_test` / :func:`welch_t_test_from_stats` — Welch's unequal-variance
  t-test with a t interval on Welch–Satterthwaite degrees of freedom (the same as
  scipy ``ttest_ind(equal_var=False)`` and its ``confidence_interval()``).
- :func:`msprt_test` and :class:`MSPRT` — the mixture sequential probability
  ratio test (Johari, Pekelis, Walsh 2017, "Peeking at A/B tests"): an
  always-valid p-value and confidence interval that stay valid however often
  the data are looked at.
- :func:`sample_ratio_test` — sample-ratio mismatch: chi-square goodness of fit
  of the observed counts per variant against the configured weights (scipy
  ``chisquare``), flagged at p < 0.001.
- :func:`sample_size_proportions` / :func:`sample_size_means` — observations per
  group for a two-sided test at ``alpha`` and ``power`` (normal approximation;
  for proportions on Cohen's h, as statsmodels ``NormalIndPower``).

Why by hand: statsmodels has the z-test and the power calculation but is a
large dependency the package does not otherwise need (it is only a test
dependency, to check these numbers); the formulas are a few lines each. The
Welch test is computed from summary statistics so that it also works from
counts, means and variances, and so that zero-variance groups get a defined
answer instead of scipy's NaN plus a RuntimeWarning. No maintained Python
library implements the mSPRT.

Bad input (negative counts, empty groups, rates outside (0, 1)...) raises
:class:`~loopml.errors.LoopmlError` with a one-line message naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, stats

from loopml.errors import LoopmlError

#: the default standard deviation of the mSPRT's normal mixing distribution, in units of the
#: per-observation standard deviation of the outcome (so the mixing variance is ``(0.1 * sigma)**2``)
DEFAULT_MIXING_SD = 0.1
#: the default number of observations each group needs before the mSPRT starts looking
DEFAULT_MIN_N = 30
#: sample-ratio mismatch is flagged below this p-value
SRM_THRESHOLD = 0.001


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class _Comparison:
    """What every comparison of two groups reports: the estimate, its interval, the test statistic and p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


@dataclass(frozen=True)
class ProportionTest(_Comparison):
    """Two-proportion z-test: ``estimate`` is ``rate_treatment - rate_control``."""

    rate_control: float
    rate_treatment: float
    n_control: int
    n_treatment: int
    test: str = "two-proportion z-test"


@dataclass(frozen=True)
class MeanTest(_Comparison):
    """Welch's t-test: ``estimate`` is ``mean_treatment - mean_control``; ``df`` the Welch–Satterthwaite degrees of freedom."""

    df: float
    mean_control: float
    mean_treatment: float
    n_control: int
    n_treatment: int
    test: str = "Welch t-test"


@dataclass(frozen=True)
class SequentialTest(_Comparison):
    """mSPRT: ``statistic`` is the largest mixture likelihood ratio seen, ``p_value`` the always-valid p-value.

    ``ci_low``/``ci_high`` is the always-valid confidence interval at the latest look; ``looks`` counts
    the looks taken (those with at least ``min_n`` observations per group).
    """

    mixing_sd: float
    looks: int
    n_control: int
    n_treatment: int
    test: str = "mSPRT (always valid)"


@dataclass(frozen=True)
class SampleRatioTest:
    """Chi-square goodness of fit of observed counts to the expected shares; ``mismatch`` when ``p_value < threshold``."""

    statistic: float
    p_value: float
    observed: dict[str, int]
    expected: dict[str, float]
    threshold: float = SRM_THRESHOLD
    test: str = "sample-ratio mismatch (chi-square)"

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.threshold

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mismatch": self.mismatch}


@dataclass(frozen=True)
class SampleSize:
    """Observations per group for a two-sided test; ``n_*`` rounded up, ``exact_*`` before rounding."""

    n_control: int
    n_treatment: int
    exact_control: float
    exact_treatment: float
    effect_size: float
    alpha: float
    power: float
    formula: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- input checks
def check_alpha(alpha: float, name: str = "alpha") -> None:
    """``alpha`` (or the probability called ``name``) must lie strictly between 0 and 1."""
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise LoopmlError(f"{name} must be strictly between 0 and 1, got {alpha!r}")


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        else:
            raise LoopmlError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise LoopmlError(f"{name} must not be negative, got {value}")
    return int(value)


def _values(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LoopmlError(f"{name}: expected numbers") from None
    if array.ndim != 1:
        raise LoopmlError(f"{name}: expected a one-dimensional sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise LoopmlError(f"{name}: value {bad} is {array[bad]} (NaN and infinity are not allowed)")
    return array


# --------------------------------------------------------------------------- fixed-horizon tests
def proportion_z_test(
    successes_control: int, n_control: int, successes_treatment: int, n_treatment: int, *, alpha: float = 0.05
) -> ProportionTest:
    """Two-sided two-proportion z-test of ``rate_treatment - rate_control``.

    The test statistic uses the pooled standard error (the rates are equal under the null); the
    ``1 - alpha`` interval uses the unpooled (Wald) standard error. When both groups have all
    successes or none the difference is exactly 0 with no variance: statistic 0, p-value 1.
    """
    check_alpha(alpha)
    x_a, n_a = _check_count(successes_control, "successes_control"), _check_count(n_control, "n_control")
    x_b, n_b = _check_count(successes_treatment, "successes_treatment"), _check_count(n_treatment, "n_treatment")
    for name, x, n in (("control", x_a, n_a), ("treatment", x_b, n_b)):
        if n == 0:
            raise LoopmlError(f"{name} group is empty (n_{name} = 0)")
        if x > n:
            raise LoopmlError(f"successes_{name} ({x}) is larger than n_{name} ({n})")
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    z = diff / se_pooled if se_pooled > 0 else 0.0
    p_value = float(2.0 * stats.norm.sf(abs(z))) if se_pooled > 0 else 1.0
    se = math.sqrt(p_a * (1.0 - p_a) / n_a + p_b * (1.0 - p_b) / n_b)
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
    return ProportionTest(
        estimate=diff,
        ci_low=diff - half,
        ci_high=diff + half,
        statistic=z,
        p_value=p_value,
        alpha=alpha,
        rate_control=p_a,
        rate_treatment=p_b,
        n_control=n_a,
        n_treatment=n_b,
    )


def welch_t_test_from_stats(
    mean_control: float,
    var_control: float,
    n_control: int,
    mean_treatment: float,
    var_treatment: float,
    n_treatment: int,
    *,
    alpha: float = 0.05,
) -> MeanTest:
    """Welch's two-sided t-test of ``mean_treatment - mean_control`` from means, sample variances (ddof=1) and sizes.

    Both groups with zero variance: the difference is known exactly; a zero difference gives
    statistic 0 and p-value 1, any other an infinite statistic and p-value 0.
    """
    check_alpha(alpha)
    n_a, n_b = _check_count(n_control, "n_control"), _check_count(n_treatment, "n_treatment")
    for name, n in (("control", n_a), ("treatment", n_b)):
        if n < 2:
            raise LoopmlError(f"Welch t-test: the {name} group needs at least 2 values, has {n}")
    for name, v in (("var_control", var_control), ("var_treatment", var_treatment)):
        if not math.isfinite(v) or v < 0:
            raise LoopmlError(f"{name} must be a finite number >= 0, got {v!r}")
    for name, m in (("mean_control", mean_control), ("mean_treatment", mean_treatment)):
        if not math.isfinite(m):
            raise LoopmlError(f"{name} must be finite, got {m!r}")
    diff = float(mean_treatment - mean_control)
    u_a, u_b = var_control / n_a, var_treatment / n_b
    se = math.sqrt(u_a + u_b)
    if se == 0.0:
        df = float(n_a + n_b - 2)
        t = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        return MeanTest(diff, diff, diff, t, 1.0 if diff == 0.0 else 0.0, alpha, df, mean_control, mean_treatment, n_a, n_b)
    df = (u_a + u_b) ** 2 / (u_a**2 / (n_a - 1) + u_b**2 / (n_b - 1))
    t = diff / se
    p_value = float(2.0 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1.0 - alpha / 2.0, df)) * se
    return MeanTest(
        estimate=diff,
        ci_low=diff - half,
        ci_high=diff + half,
        statistic=t,
        p_value=p_value,
        alpha=alpha,
        df=df,
        mean_control=float(mean_control),
        mean_treatment=float(mean_treatment),
        n_control=n_a,
        n_treatment=n_b,
    )


def welch_t_test(control: ArrayLike, treatment: ArrayLike, *, alpha: float = 0.05) -> MeanTest:
    """Welch's two-sided t-test of ``mean(treatment) - mean(control)`` on raw values."""
    a, b = _values(control, "control"), _values(treatment, "treatment")
    for name, x in (("control", a), ("treatment", b)):
        if x.size < 2:
            raise LoopmlError(f"Welch t-test: the {name} group needs at least 2 values, has {x.size}")
    return welch_t_test_from_stats(
        float(a.mean()), float(a.var(ddof=1)), a.size, float(b.mean()), float(b.var(ddof=1)), b.size, alpha=alpha
    )


# --------------------------------------------------------------------------- mSPRT
def _msprt_log_lr(
    n_a: NDArray[np.float64],
    s_a: NDArray[np.float64],
    q_a: NDArray[np.float64],
    n_b: NDArray[np.float64],
    s_b: NDArray[np.float64],
    q_b: NDArray[np.float64],
    mixing_sd: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Log mixture likelihood ratio at each look from running counts, sums and sums of squares.

    With ``V`` the variance of the difference of means (plug-in, unpooled) and ``tau2`` the mixing
    variance, ``log Λ = ½·log(V / (V + tau2)) + tau2·Δ² / (2·V·(V + tau2))`` (Johari et al. 2017,
    normal mixing centred on 0). Returns ``(log Λ, Δ, V, tau2)``; looks with ``V = 0`` get ``log Λ = 0``.
    """
    mean_a, mean_b = s_a / n_a, s_b / n_b
    var_a = np.maximum(q_a - n_a * mean_a**2, 0.0) / (n_a - 1.0)
    var_b = np.maximum(q_b - n_b * mean_b**2, 0.0) / (n_b - 1.0)
    pooled = ((n_a - 1.0) * var_a + (n_b - 1.0) * var_b) / (n_a + n_b - 2.0)
    tau2 = mixing_sd**2 * pooled
    v = var_a / n_a + var_b / n_b
    diff = mean_b - mean_a
    ok = (v > 0) & (tau2 > 0)
    v_safe = np.where(ok, v, 1.0)
    t_safe = np.where(ok, tau2, 1.0)
    log_lr = 0.5 * np.log(v_safe / (v_safe + t_safe)) + t_safe * diff**2 / (2.0 * v_safe * (v_safe + t_safe))
    return np.where(ok, log_lr, 0.0), diff, v, tau2


def _confidence_halfwidth(v: float, tau2: float, alpha: float) -> float:
    """Half-width of the always-valid interval: the differences ``θ`` the mSPRT of ``Δ = θ`` would not reject."""
    if v <= 0 or tau2 <= 0:
        return math.inf if v > 0 else 0.0
    return math.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + math.log((v + tau2) / v)))


def _check_sequential(alpha: float, mixing_sd: float, min_n: int) -> None:
    check_alpha(alpha)
    if not (math.isfinite(mixing_sd) and mixing_sd > 0):
        raise LoopmlError(f"mixing_sd must be a positive number, got {mixing_sd!r}")
    if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 2:
        raise LoopmlError(f"min_n must be a whole number >= 2, got {min_n!r}")


def msprt_test(
    values: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    mixing_sd: float = DEFAULT_MIXING_SD,
    min_n: int = DEFAULT_MIN_N,
) -> SequentialTest:
    """The mSPRT of ``mean(treatment) - mean(control)`` over observations in arrival order.

    ``values`` are the outcomes in the order they arrived (0/1 for a proportion), ``treatment`` a
    boolean per value (True: treatment group). The test looks after every observation once both
    groups have ``min_n`` values; the always-valid p-value is ``min(1, 1 / max Λ)`` over all looks,
    so it may be read at any time, as often as wanted, and stopping when it drops below ``alpha``
    keeps the false-positive rate at most ``alpha``. The mixing distribution is ``N(0, tau2)`` with
    ``tau2 = (mixing_sd · σ)²`` and σ the pooled standard deviation of one observation: the default
    ``mixing_sd = 0.1`` puts the test's power where effects of about a tenth of a standard deviation are.
    """
    _check_sequential(alpha, mixing_sd, min_n)
    x = _values(values, "values")
    try:
        group = np.asarray(treatment, dtype=bool)
    except (TypeError, ValueError):
        raise LoopmlError("treatment: expected one True/False per value") from None
    if group.shape != x.shape:
        raise LoopmlError(f"treatment: expected one True/False per value ({x.size}), got shape {group.shape}")
    is_a, is_b = ~group, group
    n_a = np.cumsum(is_a, dtype=np.float64)
    n_b = np.cumsum(is_b, dtype=np.float64)
    total_a, total_b = int(n_a[-1]) if x.size else 0, int(n_b[-1]) if x.size else 0
    for name, n in (("control", total_a), ("treatment", total_b)):
        if n < min_n:
            raise LoopmlError(f"mSPRT: the {name} group needs at least {min_n} values, has {n}")
    looks = (n_a >= min_n) & (n_b >= min_n)
    s_a, s_b = np.cumsum(np.where(is_a, x, 0.0)), np.cumsum(np.where(is_b, x, 0.0))
    q_a, q_b = np.cumsum(np.where(is_a, x * x, 0.0)), np.cumsum(np.where(is_b, x * x, 0.0))
    idx = np.flatnonzero(looks)
    log_lr, diff, v, tau2 = _msprt_log_lr(n_a[idx], s_a[idx], q_a[idx], n_b[idx], s_b[idx], q_b[idx], mixing_sd)
    best = float(log_lr.max())
    last_v, last_tau2, estimate = float(v[-1]), float(tau2[-1]), float(diff[-1])
    half = _confidence_halfwidth(last_v, last_tau2, alpha)
    return SequentialTest(
        estimate=estimate,
        ci_low=estimate - half,
        ci_high=estimate + half,
        statistic=math.exp(min(best, 700.0)),
        p_value=min(1.0, math.exp(-best)),
        alpha=alpha,
        mixing_sd=mixing_sd,
        looks=int(idx.size),
        n_control=total_a,
        n_treatment=total_b,
    )


class MSPRT:
    """The mSPRT fed in batches: call :meth:`update` with each new batch and read the always-valid result.

    Same test as :func:`msprt_test`, but it looks only after each batch (the running sums are kept,
    not the data), as a dashboard refreshed every few minutes would.
    """

    def __init__(self, *, alpha: float = 0.05, mixing_sd: float = DEFAULT_MIXING_SD, min_n: int = DEFAULT_MIN_N) -> None:
        _check_sequential(alpha, mixing_sd, min_n)
        self.alpha = alpha
        self.mixing_sd = mixing_sd
        self.min_n = min_n
        self._sums = np.zeros((2, 3))  # rows: control, treatment; columns: n, sum, sum of squares
        self._best = 0.0
        self._looks = 0

    def update(self, control: ArrayLike, treatment: ArrayLike) -> SequentialTest:
        """Add a batch of control and treatment outcomes (either may be empty); one look at the result."""
        for row, (name, batch) in enumerate((("control", control), ("treatment", treatment))):
            x = _values(batch, name)
            self._sums[row] += (x.size, x.sum(), (x * x).sum())
        (n_a, s_a, q_a), (n_b, s_b, q_b) = ([np.array([v]) for v in r] for r in self._sums)
        estimate, half = math.nan, math.inf
        if n_a[0] >= self.min_n and n_b[0] >= self.min_n:
            log_lr, diff, v, tau2 = _msprt_log_lr(n_a, s_a, q_a, n_b, s_b, q_b, self.mixing_sd)
            self._best = max(self._best, float(log_lr[0]))
            self._looks += 1
            estimate, half = float(diff[0]), _confidence_halfwidth(float(v[0]), float(tau2[0]), self.alpha)
        return SequentialTest(
            estimate=estimate,
            ci_low=estimate - half,
            ci_high=estimate + half,
            statistic=math.exp(min(self._best, 700.0)),
            p_value=min(1.0, math.exp(-self._best)),
            alpha=self.alpha,
            mixing_sd=self.mixing_sd,
            looks=self._looks,
            n_control=int(self._sums[0, 0]),
            n_treatment=int(self._sums[1, 0]),
        )


# --------------------------------------------------------------------------- sample-ratio mismatch
def sample_ratio_test(
    observed: Mapping[str, int], weights: Mapping[str, float] | None = None, *, threshold: float = SRM_THRESHOLD
) -> SampleRatioTest:
    """Chi-square test that the counts per variant match the traffic weights (default: equal weights).

    Every observed variant needs a weight and every weighted variant counts (0 when it got no
    traffic). Weights are relative: ``{"a": 1, "b": 1}`` is the same as ``{"a": 0.5, "b": 0.5}``.
    A variant with weight 0 is left out while it gets no traffic; any traffic to it is a mismatch
    (infinite statistic, p-value 0).
    """
    check_alpha(threshold, "threshold")
    counts = {str(k): _check_count(v, f"observed count of {k!r}") for k, v in observed.items()}
    if weights is None:
        weights = dict.fromkeys(counts, 1.0)
    for name, w in weights.items():
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise LoopmlError(f"weight of variant {name!r} must be a number >= 0, got {w!r}")
    unweighted = sorted(set(counts) - set(weights))
    if unweighted:
        raise LoopmlError(f"variant(s) {', '.join(unweighted)} got traffic but have no weight (weights: {', '.join(weights)})")
    names = [n for n, w in weights.items() if w > 0]
    if len(names) < 2:
        raise LoopmlError(f"sample-ratio test needs at least 2 variants with a positive weight, got {len(names)}")
    obs = np.array([counts.get(n, 0) for n in names], dtype=np.float64)
    total = obs.sum()
    if total <= 0:
        raise LoopmlError("sample-ratio test: no observations")
    share = np.array([float(weights[n]) for n in names])
    share /= share.sum()
    observed_all = {n: counts.get(n, 0) for n in weights}
    expected_all = {n: 0.0 for n in weights} | {n: float(e) for n, e in zip(names, share * total, strict=True)}
    if any(counts.get(n, 0) > 0 for n, w in weights.items() if w == 0):
        return SampleRatioTest(math.inf, 0.0, observed_all, expected_all, threshold)
    result = stats.chisquare(obs, f_exp=share * total)
    return SampleRatioTest(float(result.statistic), float(result.pvalue), observed_all, expected_all, threshold)


# --------------------------------------------------------------------------- sample size
def _check_power(alpha: float, power: float, ratio: float) -> None:
    check_alpha(alpha)
    check_alpha(power, "power")
    if power <= alpha:
        raise LoopmlError(f"power ({power}) must be larger than alpha ({alpha})")
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0):
        raise LoopmlError(f"ratio (treatment size / control size) must be a positive number, got {ratio!r}")


def _solve_normal(effect: float, alpha: float, power: float, ratio: float, formula: str) -> SampleSize:
    """Sizes where a two-sided z-test on a standardized ``effect`` has the requested power.

    The power of both rejection tails counts (as in statsmodels ``NormalIndPower``):
    ``Φ(|e|·√m − z) + Φ(−|e|·√m − z)`` with ``z = Φ⁻¹(1 − alpha/2)`` and ``m = 1 / (1/n_control + 1/n_treatment)``.
    """
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))

    def gap(x: float) -> float:
        return float(stats.norm.cdf(x - z) + stats.norm.cdf(-x - z)) - power

    x = float(optimize.brentq(gap, 0.0, z + float(stats.norm.ppf(power)) + 10.0, xtol=1e-12, rtol=1e-14))
    m = (x / abs(effect)) ** 2
    n_a = m * (1.0 + ratio) / ratio
    n_b = n_a * ratio
    return SampleSize(
        n_control=math.ceil(n_a - 1e-9),
        n_treatment=math.ceil(n_b - 1e-9),
        exact_control=n_a,
        exact_treatment=n_b,
        effect_size=effect,
        alpha=alpha,
        power=power,
        formula=formula,
    )


def sample_size_proportions(
    rate_control: float, rate_treatment: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Observations per group to detect ``rate_control -> rate_treatment`` with a two-sided test.

    Uses Cohen's effect size ``h = 2·asin(√p_t) − 2·asin(√p_c)`` (the arcsine transform makes the
    variance ``1/n`` whatever the rate), the formula of statsmodels ``NormalIndPower`` with
    ``proportion_effectsize``. ``ratio`` is treatment size over control size.
    """
    for name, p in (("rate_control", rate_control), ("rate_treatment", rate_treatment)):
        if not (isinstance(p, int | float) and 0.0 < p < 1.0):
            raise LoopmlError(f"{name} must be strictly between 0 and 1, got {p!r}")
    if rate_control == rate_treatment:
        raise LoopmlError(f"rate_control and rate_treatment are equal ({rate_control}): there is no effect to detect")
    _check_power(alpha, power, ratio)
    h = 2.0 * math.asin(math.sqrt(rate_treatment)) - 2.0 * math.asin(math.sqrt(rate_control))
    return _solve_normal(h, alpha, power, ratio, "normal approximation on Cohen's h (arcsine)")


def sample_size_means(difference: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> SampleSize:
    """Observations per group to detect a difference of means with a two-sided z-test (known, common ``sd``).

    The standardized effect is Cohen's ``d = difference / sd`` (statsmodels ``zt_ind_solve_power``).
    """
    if not (isinstance(sd, int | float) and math.isfinite(sd) and sd > 0):
        raise LoopmlError(f"sd must be a positive number, got {sd!r}")
    if not (isinstance(difference, int | float) and math.isfinite(difference) and difference != 0):
        raise LoopmlError(f"difference must be a non-zero number, got {difference!r}")
    _check_power(alpha, power, ratio)
    return _solve_normal(difference / sd, alpha, power, ratio, "normal approximation on Cohen's d")


def parse_weights(text: str | None, source: str = "--weights") -> dict[str, float] | None:
    """``"a=0.5,b=0.5"`` -> ``{"a": 0.5, "b": 0.5}``; None or empty -> None (equal weights)."""
    if text is None or not text.strip():
        return None
    weights: dict[str, float] = {}
    items: Sequence[str] = [t for t in text.split(",") if t.strip()]
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            weight = float(value) if sep and name else math.nan
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise LoopmlError(f"{source} {item.strip()!r}: expected NAME=WEIGHT with a weight >= 0, e.g. a=0.5,b=0.5")
        if name in weights:
            raise LoopmlError(f"{source}: variant {name!r} is given twice")
        weights[name] = weight
    return weights
