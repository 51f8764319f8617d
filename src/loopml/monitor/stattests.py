"""Drift tests on arrays, against reference statistics stored at training time.

Every column of live traffic is first reduced to a **profile**: counts per
window over a fine partition of the value axis (:func:`numeric_profile`,
:func:`categorical_profile`). Profiles are small, add up across windows (the
whole period is the sum of its windows) and hold everything the tests need, so
the raw values are read once, in a few vectorised numpy passes per column
(a bucketed :class:`Locator` in place of ``np.searchsorted``, then
``np.bincount``), whatever the number of windows.

The partition of a numeric column is the reference's points ``u_0 < .. <
u_{K-1}`` (its CDF sketch, which contains the PSI edges, plus the
out-of-range bounds): cell ``2j`` is the open interval ``(u_{j-1}, u_j)``,
cell ``2j+1`` the value ``u_j`` itself, cell ``2K`` everything above
``u_{K-1}``, the last cell NULL. A categorical column's cells are its
reference categories, then "other" (any value not among them: unseen or
rare), then NULL.

The tests (the ``fit(reference) / score(profile)`` verbs of :class:`DriftTest`)
return one statistic per window, all windows at once:

* :class:`PSI` — population stability index on the reference's PSI bins (and
  NULL bin), every fraction floored at ``epsilon`` (1e-4): see
  :mod:`loopml.train.reference`.
* :class:`KolmogorovSmirnov` — two-sample KS of the current values against the
  reference sketch: ``D`` is the largest CDF gap at the sketch points (both
  sides of each point), exact for a column with at most ``SKETCH_SIZE + 1``
  distinct values and otherwise a lower bound of scipy's ``ks_2samp`` statistic
  on the full training data, below it by at most the largest ``min(r, c)`` over
  the open cells between two sketch points (``r``/``c``: the reference/current
  share inside the cell; so at most ``1/SKETCH_SIZE`` = 0.001 for a continuous
  column; :func:`ks_error_bound` computes it). The
  p-value is scipy's asymptotic one for ``D`` (``kstwo.sf(D, round(m n / (m +
  n)))`` with ``m`` the reference and ``n`` the current non-null count), what
  ``ks_2samp(method="asymp")`` returns.
* :class:`ChiSquare` — Pearson's chi-square of the current counts against the
  reference fractions on the PSI bins (numeric) or categories (categorical);
  expected fractions are floored at ``epsilon`` and renormalised (so a value
  never seen in training gives a large but finite statistic), and cells empty
  in both are dropped; ``k - 1`` degrees of freedom, as
  ``scipy.stats.chisquare``.
* :class:`JensenShannon` — Jensen-Shannon *distance* (square root of the
  divergence, base 2, so in ``[0, 1]``) on the same bins, as
  ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.
* :class:`Wasserstein` — first Wasserstein distance divided by the reference
  standard deviation (so 0.1 means "moved by a tenth of a standard
  deviation", Evidently's normalisation), computed as ``∫|F_cur - F_ref|`` over
  the sketch cells: exact outside the reference range and at the sketch
  points, linear inside each cell; the error is at most ``Σ_j width_j *
  max(r_j, c_j)`` (reference/current mass of open cell ``j``) over the standard
  deviation.

Why hand-written: scipy's tests need both samples in full (the training data
would have to be re-read at every check), and the drift libraries bin on the
combined reference+current data (Evidently), so none of them can score live
traffic against statistics stored with the model. Agreement with scipy is
asserted in ``tests/test_drift.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from loopml.train.reference import DEFAULT_EPSILON

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TEST_NAMES = ("psi", "ks", "chi2", "jensenshannon", "wasserstein")
#: tests whose decision is a p-value (corrected for multiple testing across columns)
P_VALUE_TESTS = frozenset({"ks", "chi2"})


# -- references ----------------------------------------------------------------------------------


#: most vectorised compare passes the bucketed lookup may need before plain binary search is faster
_MAX_PASSES = 6


@dataclass(frozen=True)
class Locator:
    """``np.searchsorted(points, values, side="left")`` for millions of values, about four times faster.

    Why hand-written: numpy's binary search costs about ten unpredictable branches per value. Here the
    range of the points is cut into ``B`` equal buckets; a value's bucket (one multiply) gives, from a
    small table, a lower bound of its answer (the first point of the *previous* bucket, which absorbs any
    rounding), and a few vectorised ``idx += points[idx] < value`` passes finish it. The number of passes
    is the most points two neighbouring buckets hold, plus one; when even ``65536`` buckets need more than
    ``_MAX_PASSES`` (points bunched in a tiny part of the range) or the range is too narrow for its
    magnitude, it falls back to ``np.searchsorted``. ``tests/test_drift.py`` checks both give the same answer.
    """

    points: FloatArray
    low: float = 0.0
    scale: float = 0.0
    start: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    passes: int = 0  # 0: np.searchsorted

    @classmethod
    def build(cls, points: FloatArray) -> Locator:
        k = len(points)
        if k < 8 or not (np.isfinite(points[0]) and np.isfinite(points[-1])):
            return cls(points)
        low, high = float(points[0]), float(points[-1])
        with np.errstate(over="ignore"):
            span = high - low
        if not np.isfinite(span):
            return cls(points)
        for buckets in (4096, 16384, 65536):
            if span / buckets < 64 * np.spacing(max(abs(low), abs(high))):
                break  # buckets narrower than the rounding of the values: no sure lower bound
            scale = buckets / span
            edges = low + np.arange(buckets + 1) / scale
            first = np.append(np.searchsorted(points, edges, side="left"), k)  # points below each edge, then all
            start = np.concatenate([[0], first[: buckets - 1]])  # bucket b starts at the first point of bucket b-1
            passes = int((first[np.minimum(np.arange(buckets) + 2, buckets + 1)] - start).max()) + 1
            if passes <= _MAX_PASSES:
                return cls(points, low, scale, start.astype(np.int64), passes)
        return cls(points)

    def __call__(self, values: FloatArray, null: npt.NDArray[np.bool_] | None = None) -> IntArray:
        """Positions of ``values``; ``null`` (``np.isnan(values)``, when the caller has it) saves a pass."""
        if not self.passes:
            return np.asarray(np.searchsorted(self.points, values, side="left"), dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            position = np.fmin(np.fmax((values - self.low) * self.scale, 0.0), len(self.start) - 1)  # NaN -> 0
        idx = self.start[position.astype(np.int64)]
        ext = np.append(self.points, np.inf)
        for _ in range(self.passes):
            idx += ext[idx] < values
        idx[np.isnan(values) if null is None else null] = len(self.points)  # NaN sorts last, as in numpy
        return idx


@dataclass(frozen=True)
class NumericReference:
    """A numeric column's stored reference, prepared for binning and testing."""

    name: str
    points: FloatArray  # sorted distinct cut points
    cdf: FloatArray  # reference share of finite values <= each point (None-equivalent: empty when no sketch)
    cdf_below: FloatArray  # ... < each point
    has_sketch: bool
    psi_fractions: FloatArray  # reference fractions of the PSI bins, NULL bin last
    psi_bin: IntArray  # cell -> PSI bin
    non_null: int
    null_rate: float
    std: float | None
    low: float | None  # out-of-range bounds (reference min/max widened by the tolerance)
    high: float | None
    locate: Locator  # where values fall among ``points``

    kind = "numeric"

    @property
    def cells(self) -> int:
        return 2 * len(self.points) + 2

    @classmethod
    def from_entry(cls, name: str, entry: dict[str, Any], tolerance: float = 0.0) -> NumericReference:
        edges = np.asarray(entry.get("edges", []), dtype=np.float64)
        fractions = np.asarray(entry.get("fractions", []), dtype=np.float64)
        null_rate = float(entry.get("null_rate", fractions[-1] if len(fractions) else 0.0))
        sketch = entry.get("sketch") or {}
        values = np.asarray(sketch.get("values", []), dtype=np.float64)
        has_sketch = len(values) > 0
        lo_ref, hi_ref = entry.get("min"), entry.get("max")
        low = high = None
        if lo_ref is not None and hi_ref is not None:
            span = float(hi_ref) - float(lo_ref)
            low, high = float(lo_ref) - tolerance * span, float(hi_ref) + tolerance * span
        extra = [v for v in (low, high) if v is not None]
        points = np.unique(np.concatenate([values, edges, np.asarray(extra, dtype=np.float64)]))
        if has_sketch:
            cdf_le = np.asarray(sketch["cdf"], dtype=np.float64)
            cdf_lt = np.asarray(sketch["cdf_below"], dtype=np.float64)
            cdf, cdf_below = _cdf_at(points, values, cdf_le, cdf_lt)
        else:  # an old reference: the PSI bins only (KS and Wasserstein need the sketch)
            cdf = cdf_below = np.zeros(0)
        upper = np.append(points, np.inf)  # cell 2j and 2j+1 lie at/below upper[j]
        psi_bin = np.searchsorted(edges, upper, side="left")
        cell_bin = np.empty(2 * len(points) + 2, dtype=np.int64)
        cell_bin[0:-1:2] = psi_bin
        cell_bin[1:-1:2] = psi_bin[:-1]
        cell_bin[-1] = len(edges) + 1
        std = entry.get("std")
        count = int(entry.get("count", 0))
        return cls(
            name=name,
            points=points,
            cdf=cdf,
            cdf_below=cdf_below,
            has_sketch=has_sketch,
            psi_fractions=fractions if len(fractions) == len(edges) + 2 else np.full(len(edges) + 2, np.nan),
            psi_bin=cell_bin,
            non_null=int(entry.get("non_null", round(count * (1.0 - null_rate)))),
            null_rate=null_rate,
            std=float(std) if std is not None else None,
            low=low,
            high=high,
            locate=Locator.build(points),
        )


def _cdf_at(points: FloatArray, values: FloatArray, cdf_le: FloatArray, cdf_lt: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Reference CDF (``<=``, ``<``) at ``points``: exact at sketch values, 0 below and 1 above them.

    Between two sketch values ``u_j < x < u_{j+1}`` the reference has no atom, so both are the linear
    interpolation from ``cdf_le[j]`` (just right of ``u_j``) to ``cdf_lt[j+1]`` (just left of ``u_{j+1}``).
    """
    le = np.zeros(len(points))
    lt = np.zeros(len(points))
    j = np.searchsorted(values, points, side="right") - 1  # last sketch value <= point
    exact = (j >= 0) & (values[np.maximum(j, 0)] == points)
    le[exact], lt[exact] = cdf_le[j[exact]], cdf_lt[j[exact]]
    above = j >= len(values) - 1
    le[above & ~exact] = lt[above & ~exact] = 1.0
    between = ~exact & (j >= 0) & ~above
    if between.any():
        a, b = j[between], j[between] + 1
        frac = (points[between] - values[a]) / (values[b] - values[a])
        le[between] = lt[between] = cdf_le[a] + frac * (cdf_lt[b] - cdf_le[a])
    return le, lt


@dataclass(frozen=True)
class CategoricalReference:
    """A string column's stored category frequencies."""

    name: str
    values: list[str]
    fractions: FloatArray  # per category, then other, then NULL
    count: int

    kind = "categorical"

    @property
    def cells(self) -> int:
        return len(self.values) + 2

    @classmethod
    def from_entry(cls, name: str, entry: dict[str, Any]) -> CategoricalReference:
        values = [str(v) for v in entry.get("values", [])]
        fractions = np.asarray([*entry.get("fractions", []), entry.get("other", 0.0), entry.get("null_rate", 0.0)], dtype=float)
        return cls(name=name, values=values, fractions=fractions, count=int(entry.get("count", 0)))


ColumnReference = NumericReference | CategoricalReference


# -- profiles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Counts per window and cell of one column; ``tails`` (numeric): summed distance beyond the outer points."""

    counts: IntArray  # [windows, cells]
    below: FloatArray  # [windows] sum of (points[0] - v) over v < points[0]
    above: FloatArray  # [windows] sum of (v - points[-1]) over v > points[-1]

    @property
    def rows(self) -> IntArray:
        return np.asarray(self.counts.sum(axis=1), dtype=np.int64)

    @property
    def nulls(self) -> IntArray:
        return np.asarray(self.counts[:, -1], dtype=np.int64)

    def total(self) -> Profile:
        """The whole period: one window, the sum of all."""
        return Profile(self.counts.sum(axis=0, keepdims=True), self.below.sum(keepdims=True), self.above.sum(keepdims=True))

    def with_total(self) -> Profile:
        """Each window, then the whole period as the last row."""
        t = self.total()
        return Profile(
            np.vstack([self.counts, t.counts]), np.concatenate([self.below, t.below]), np.concatenate([self.above, t.above])
        )


def numeric_profile(ref: NumericReference, values: FloatArray, window: IntArray, n_windows: int) -> Profile:
    """Bin ``values`` (NaN = NULL) into ``ref``'s cells, per window (``window[i]`` in ``[0, n_windows)``)."""
    values = np.asarray(values, dtype=np.float64)
    k = len(ref.points)
    null = np.isnan(values)
    idx = ref.locate(values, null)
    ext = np.append(ref.points, np.inf)
    code = 2 * idx + (ext[idx] == values)
    code[null] = 2 * k + 1
    cells = 2 * k + 2
    counts = np.bincount(code + window * cells, minlength=n_windows * cells).reshape(n_windows, cells)
    below = np.zeros(n_windows)
    above = np.zeros(n_windows)
    if k:
        low = code == 0
        if low.any():
            below = np.asarray(np.bincount(window[low], weights=ref.points[0] - values[low], minlength=n_windows), dtype=float)
        high = code == 2 * k
        if high.any():
            above = np.asarray(np.bincount(window[high], weights=values[high] - ref.points[-1], minlength=n_windows), dtype=float)
    return Profile(counts.astype(np.int64), below, above)


def categorical_profile(
    ref: CategoricalReference, values: pa.Array | pa.ChunkedArray, window: IntArray, n_windows: int
) -> Profile:
    """Count string ``values`` per reference category (then other, then NULL), per window."""
    k = len(ref.values)
    strings = pc.cast(values, pa.string())
    idx = pc.index_in(strings, value_set=pa.array(ref.values, type=pa.string()))
    code = np.asarray(pc.fill_null(idx, k).to_numpy(zero_copy_only=False), dtype=np.int64)
    code[np.asarray(pc.is_null(strings).to_numpy(zero_copy_only=False), dtype=bool)] = k + 1
    cells = k + 2
    counts = np.bincount(code + window * cells, minlength=n_windows * cells).reshape(n_windows, cells)
    return Profile(counts.astype(np.int64), np.zeros(n_windows), np.zeros(n_windows))


def binned(ref: ColumnReference, profile: Profile) -> tuple[IntArray, FloatArray]:
    """Current counts ``[windows, bins]`` and reference fractions ``[bins]`` on the PSI bins / categories (NULL last)."""
    if isinstance(ref, CategoricalReference):
        return profile.counts, ref.fractions
    out = np.zeros((profile.counts.shape[0], len(ref.psi_fractions)), dtype=np.int64)
    np.add.at(out.T, ref.psi_bin, profile.counts.T)
    return out, ref.psi_fractions


# -- tests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """One statistic (and p-value, for p-value tests) per window; NaN where undefined."""

    statistic: FloatArray
    p_value: FloatArray | None = None


class DriftTest(Protocol):
    """The verbs every drift test offers."""

    name: str

    def applies_to(self, ref: ColumnReference) -> bool:
        """Whether the test can score this column (KS and Wasserstein: numeric columns with a sketch)."""
        ...

    def fit(self, ref: ColumnReference) -> DriftTest:
        """Keep what the test needs of the reference; returns the fitted test."""
        ...

    def score(self, profile: Profile) -> Scores:
        """Statistics per window of a profile binned on the fitted reference."""
        ...


class _Binned:
    """Shared by the tests on PSI bins / categories."""

    name = ""

    def __init__(self, epsilon: float = DEFAULT_EPSILON) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        self.epsilon = epsilon
        self._ref: ColumnReference | None = None

    def applies_to(self, ref: ColumnReference) -> bool:
        return True

    def fit(self, ref: ColumnReference) -> Self:
        fitted = type(self)(self.epsilon)
        fitted._ref = ref
        return fitted

    def score(self, profile: Profile) -> Scores:
        raise NotImplementedError

    def _bins(self, profile: Profile) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Current fractions ``[W, B]``, reference fractions ``[B]``, rows ``[W]``."""
        if self._ref is None:
            raise ValueError(f"{self.name}: fit() the test on a reference first")
        counts, ref = binned(self._ref, profile)
        n = counts.sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cur = counts / n[:, None]
        return cur, ref, n


class PSI(_Binned):
    name = "psi"

    def score(self, profile: Profile) -> Scores:
        cur, ref, _ = self._bins(profile)
        r = np.maximum(ref, self.epsilon)
        c = np.maximum(cur, self.epsilon)
        return Scores(np.sum((c - r) * np.log(c / r), axis=1))


class ChiSquare(_Binned):
    name = "chi2"

    def score(self, profile: Profile) -> Scores:
        cur, ref, n = self._bins(profile)
        statistic = np.full(len(n), np.nan)
        p_value = np.full(len(n), np.nan)
        for w in range(len(n)):
            keep = (ref > 0) | (cur[w] > 0)
            if n[w] <= 0 or keep.sum() < 2:
                continue
            expected = np.maximum(ref[keep], self.epsilon)
            expected = expected / expected.sum() * n[w]
            observed = cur[w][keep] * n[w]
            statistic[w] = float(np.sum((observed - expected) ** 2 / expected))
            p_value[w] = float(stats.chi2.sf(statistic[w], keep.sum() - 1))
        return Scores(statistic, p_value)


class JensenShannon(_Binned):
    name = "jensenshannon"

    def score(self, profile: Profile) -> Scores:
        cur, ref, _ = self._bins(profile)
        p = ref / ref.sum() if ref.sum() > 0 else ref
        m = (cur + p) / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            left = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=1)
            right = np.where(cur > 0, cur * np.log2(np.where(cur > 0, cur, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=1)
        divergence = np.maximum((left + right) / 2.0, 0.0)
        return Scores(np.sqrt(divergence))


class _Sketch:
    """Shared by the tests that need the reference CDF sketch (numeric columns)."""

    name = ""

    def __init__(self) -> None:
        self._ref: NumericReference | None = None

    def applies_to(self, ref: ColumnReference) -> bool:
        return isinstance(ref, NumericReference) and ref.has_sketch

    def fit(self, ref: ColumnReference) -> Self:
        if not self.applies_to(ref):
            raise ValueError(f"{self.name}: column {ref.name!r} has no reference CDF sketch (a numeric column is needed)")
        assert isinstance(ref, NumericReference)
        fitted = type(self)()
        fitted._ref = ref
        return fitted

    def score(self, profile: Profile) -> Scores:
        raise NotImplementedError

    def _cdfs(self, profile: Profile) -> tuple[NumericReference, FloatArray, FloatArray, FloatArray]:
        """Reference, current share ``< u_j`` and ``<= u_j`` per window ``[W, K]``, present rows ``[W]``."""
        ref = self._ref
        if ref is None:
            raise ValueError(f"{self.name}: fit() the test on a reference first")
        present = profile.counts[:, :-1]
        n = present.sum(axis=1).astype(np.float64)
        cum = np.cumsum(present, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            lt = cum[:, 0:-1:2] / n[:, None]
            le = cum[:, 1::2] / n[:, None]
        return ref, lt, le, n


class KolmogorovSmirnov(_Sketch):
    name = "ks"

    def score(self, profile: Profile) -> Scores:
        ref, lt, le, n = self._cdfs(profile)
        gaps = np.maximum(np.abs(lt - ref.cdf_below), np.abs(le - ref.cdf))
        d = gaps.max(axis=1) if gaps.shape[1] else np.zeros(len(n))
        m = float(ref.non_null)
        with np.errstate(invalid="ignore", divide="ignore"):
            en = np.round(m * n / (m + n))
        p = np.full(len(n), np.nan)
        ok = (n > 0) & (en > 0)
        p[ok] = stats.kstwo.sf(d[ok], en[ok])
        d = np.where(n > 0, d, np.nan)
        return Scores(d, np.clip(p, 0.0, 1.0))


class Wasserstein(_Sketch):
    name = "wasserstein"

    def score(self, profile: Profile) -> Scores:
        ref, lt, le, n = self._cdfs(profile)
        width = np.diff(ref.points)
        left = le[:, :-1] - ref.cdf[:-1]  # just right of u_{j-1}
        right = lt[:, 1:] - ref.cdf_below[1:]  # just left of u_j
        with np.errstate(invalid="ignore", divide="ignore"):
            same = np.sign(left) * np.sign(right) >= 0
            mixed = (left**2 + right**2) / (2.0 * (np.abs(left) + np.abs(right)))
            inside = np.where(same, (np.abs(left) + np.abs(right)) / 2.0, np.nan_to_num(mixed))
            distance = (inside * width).sum(axis=1) + (profile.below + profile.above) / n
        std = ref.std
        if std is None or not std > 0:
            return Scores(np.full(len(n), np.nan))
        return Scores(np.where(n > 0, distance / std, np.nan))


def ks_error_bound(ref: NumericReference, profile: Profile) -> FloatArray:
    """Per window: how much scipy's KS statistic on the full reference can exceed the sketch's (see the module doc).

    Inside an open cell both CDFs rise (by ``r`` and ``c``), so the gap can exceed its value at the cell's ends
    by at most ``min(r, c)``; where either is flat the gap is monotone and the ends, which are checked, hold its
    extremes. Below the first point and above the last the reference is flat (0 and 1).
    """
    present = profile.counts[:, :-1].astype(np.float64)
    n = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cur_open = present[:, 2:-1:2] / n[:, None]  # open cells (u_{j-1}, u_j), j = 1 .. K-1
    ref_open = ref.cdf_below[1:] - ref.cdf[:-1]
    if not ref_open.size:
        return np.zeros(len(n))
    return np.asarray(np.minimum(cur_open, ref_open).max(axis=1), dtype=np.float64)


def wasserstein_error_bound(ref: NumericReference, profile: Profile) -> FloatArray:
    """Per window: the most the normalised Wasserstein estimate can differ from the exact one (see the module doc)."""
    present = profile.counts[:, :-1].astype(np.float64)
    n = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cur_open = present[:, 2:-1:2] / n[:, None]  # the open cells between two points
    ref_open = ref.cdf_below[1:] - ref.cdf[:-1]
    std = ref.std if ref.std else np.nan
    return np.asarray(2.0 * (np.maximum(cur_open, ref_open) * np.diff(ref.points)).sum(axis=1) / std, dtype=np.float64)


def make_test(name: str, epsilon: float = DEFAULT_EPSILON) -> DriftTest:
    """A drift test by name (one of :data:`TEST_NAMES`)."""
    if name == "psi":
        return PSI(epsilon)
    if name == "chi2":
        return ChiSquare(epsilon)
    if name == "jensenshannon":
        return JensenShannon(epsilon)
    if name == "ks":
        return KolmogorovSmirnov()
    if name == "wasserstein":
        return Wasserstein()
    raise ValueError(f"unknown drift test {name!r} (choices: {', '.join(TEST_NAMES)})")


def adjust_p_values(p: FloatArray, method: str) -> FloatArray:
    """Multiple-testing correction across columns: ``bh`` (Benjamini-Hochberg), ``bonferroni`` or ``none``."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any() or method == "none":
        return np.where(ok, p, np.nan)
    if method == "bonferroni":
        out[ok] = np.minimum(p[ok] * ok.sum(), 1.0)
    elif method == "bh":
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    else:
        raise ValueError(f"unknown multiple-testing correction {method!r} (choices: bh, bonferroni, none)")
    return out


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: an undefined statistic is None."""
    return float(value) if value is not None and math.isfinite(value) else None
