"""A simulated card-payment network with labelled fraud.

The world follows the reference simulator of the *Reproducible Machine
Learning for Credit Card Fraud Detection* handbook: customers and terminals
live on a 100 x 100 grid, each customer pays at terminals near home, and
three fraud scenarios are injected on top of the legitimate traffic:

1. any transaction above ``amount_threshold`` is fraud;
2. each day a few terminals are compromised and every transaction at them
   during the next 28 days is fraud;
3. each day a few cards are compromised and, over the next 14 days, a random
   third of their transactions are inflated five-fold and are fraud.

A fourth scenario, card testing, can be switched on at ``drift_start_day`` to
give a model trained on earlier data a pattern it has never seen: bursts of
tiny payments at brand-new terminals.

It is written by hand because no well-kept library simulates this world: the
handbook's own generator is tutorial notebook code that loops over customers
and days in pandas, is slow, and is not a maintained package. This one draws
everything with vectorised numpy from one ``numpy.random.default_rng(seed)``
(no Python loop over customers, days or transactions), so the default world
(~1.8 M transactions) is built in a couple of seconds and the same
configuration always yields the same table. Scenario 4 draws its randomness
last, so switching drift on leaves every earlier transaction unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

__all__ = ["TRANSACTION_SCHEMA", "FraudWorldConfig", "simulate", "write_world"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Progress = Callable[[str, float], None]

SECONDS_PER_DAY = 86_400
GRID_SIZE = 100.0
TERMINAL_COMPROMISE_DAYS = 28
CARD_COMPROMISE_DAYS = 14
CARD_COMPROMISE_MULTIPLIER = 5.0

TRANSACTION_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.int64()),
        ("tx_datetime", pa.timestamp("us")),
        ("customer_id", pa.int64()),
        ("terminal_id", pa.int64()),
        ("tx_amount", pa.float64()),
        ("tx_fraud", pa.int8()),
        ("tx_fraud_scenario", pa.int8()),
    ]
)


@dataclass(frozen=True)
class FraudWorldConfig:
    """Parameters of the simulated world; the defaults give the reference world."""

    n_customers: int = 5000
    n_terminals: int = 10000
    days: int = 183
    start_date: str = "2025-04-01"  # ISO date of day 0; timestamps are naive
    radius: float = 5.0  # customers pay at terminals within this distance of home (grid 0..100 x 0..100)
    seed: int = 0
    amount_threshold: float = 220.0  # scenario 1
    compromised_terminals_per_day: int = 2  # scenario 2: fraud there for 28 days
    compromised_customers_per_day: int = 3  # scenario 3: a third of the next 14 days' transactions, amount x5
    drift_start_day: int | None = None  # scenario 4 (card testing) from this 0-based day index on
    card_testing_customers_per_day: int = 8  # scenario 4 intensity
    # The per-day counts may be 0 (scenario off); above the population they mean "everyone".

    def __post_init__(self) -> None:
        for name in ("n_customers", "n_terminals", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("compromised_terminals_per_day", "compromised_customers_per_day", "card_testing_customers_per_day"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)!r}")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius!r}")
        if not self.amount_threshold > 0:
            raise ValueError(f"amount_threshold must be positive, got {self.amount_threshold!r}")
        if self.drift_start_day is not None and not 0 <= self.drift_start_day < self.days:
            raise ValueError(f"drift_start_day must be None or a day index in [0, {self.days}), got {self.drift_start_day!r}")
        try:
            date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(f"start_date must be an ISO date like '2025-04-01', got {self.start_date!r}") from None


def simulate(config: FraudWorldConfig, progress: Progress | None = None) -> pa.Table:
    """Simulate the world and return its transactions, sorted by time."""
    return _simulate_world(config, progress)[0]


def write_world(config: FraudWorldConfig, folder: Path) -> dict[str, Path]:
    """Simulate the world and write transactions, customers and terminals as Parquet."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = dict(zip(("transactions", "customers", "terminals"), _simulate_world(config, None), strict=True))
    paths: dict[str, Path] = {}
    for name, table in tables.items():
        paths[name] = folder / f"{name}.parquet"
        pq.write_table(table, paths[name])
    return paths


def _simulate_world(config: FraudWorldConfig, progress: Progress | None) -> tuple[pa.Table, pa.Table, pa.Table]:
    report: Progress = progress if progress is not None else (lambda _stage, _fraction: None)
    rng = np.random.default_rng(config.seed)
    n_cust, n_term, days = config.n_customers, config.n_terminals, config.days

    report("profiles", 0.0)
    cust_xy = rng.uniform(0.0, GRID_SIZE, size=(n_cust, 2))
    mean_amount = rng.uniform(5.0, 100.0, size=n_cust)
    std_amount = mean_amount / 2.0
    mean_tx_per_day = rng.uniform(0.0, 4.0, size=n_cust)
    term_xy = rng.uniform(0.0, GRID_SIZE, size=(n_term, 2))

    report("terminals in range", 0.15)
    pair_cust, pair_term = _neighbour_pairs(cust_xy, term_xy, config.radius)
    n_available = np.bincount(pair_cust, minlength=n_cust)
    first_pair = np.concatenate(([0], np.cumsum(n_available)[:-1]))

    report("transactions", 0.3)
    # One Poisson count per (day, customer) cell, expanded with np.repeat.
    counts = rng.poisson(mean_tx_per_day, size=(days, n_cust))
    counts[:, n_available == 0] = 0
    cell = np.repeat(np.arange(days * n_cust, dtype=np.int64), counts.ravel())
    day, cust = cell // n_cust, cell % n_cust
    seconds = rng.normal(SECONDS_PER_DAY / 2, 20_000.0, size=cell.size)
    keep = (seconds >= 0) & (seconds < SECONDS_PER_DAY)
    day, cust, seconds = day[keep], cust[keep], np.floor(seconds[keep]).astype(np.int64)
    amount = rng.normal(mean_amount[cust], std_amount[cust])
    negative = amount < 0
    amount[negative] = rng.uniform(0.0, 2.0 * mean_amount[cust[negative]])
    amount = np.round(amount, 2)
    term = pair_term[first_pair[cust] + rng.integers(0, n_available[cust])]

    report("fraud scenarios", 0.6)
    scenario = np.where(amount > config.amount_threshold, 1, 0).astype(np.int8)
    # Scenario 2: compromised terminals, all their transactions for 28 days.
    picks = _daily_picks(rng, days, n_term, config.compromised_terminals_per_day)
    _, members = _compromise_members(term, day, days, picks, TERMINAL_COMPROMISE_DAYS)
    scenario[members] = 2
    # Scenario 3: compromised cards, a random third of their next 14 days.
    picks = _daily_picks(rng, days, n_cust, config.compromised_customers_per_day)
    event, members = _compromise_members(cust, day, days, picks, CARD_COMPROMISE_DAYS)
    size = np.bincount(event, minlength=picks.size)
    shuffled = np.lexsort((rng.random(event.size), event))
    rank = np.arange(event.size) - (np.cumsum(size) - size)[event[shuffled]]
    hit = np.zeros(day.size, dtype=np.bool_)
    hit[members[shuffled[rank < size[event[shuffled]] // 3]]] = True
    scenario[hit] = 3
    amount[hit] = np.round(amount[hit] * CARD_COMPROMISE_MULTIPLIER, 2)

    # Scenario 4: card testing bursts at brand-new terminals.
    burst = _card_testing(rng, config, n_term)
    if burst is not None:
        b_day, b_cust, b_term, b_seconds, b_amount, new_xy = burst
        day = np.concatenate((day, b_day))
        cust = np.concatenate((cust, b_cust))
        term = np.concatenate((term, b_term))
        seconds = np.concatenate((seconds, b_seconds))
        amount = np.concatenate((amount, b_amount))
        scenario = np.concatenate((scenario, np.full(b_day.size, 4, dtype=np.int8)))
        term_xy = np.concatenate((term_xy, new_xy))

    report("table", 0.85)
    offset = day * SECONDS_PER_DAY + seconds
    order = np.argsort(offset, kind="stable")
    start_us = np.datetime64(date.fromisoformat(config.start_date), "us").astype(np.int64)
    timestamps = (start_us + offset[order] * 1_000_000).astype("datetime64[us]")
    transactions = pa.Table.from_arrays(
        [
            pa.array(np.arange(order.size, dtype=np.int64)),
            pa.array(timestamps, type=pa.timestamp("us")),
            pa.array(cust[order]),
            pa.array(term[order]),
            pa.array(amount[order]),
            pa.array((scenario[order] > 0).astype(np.int8)),
            pa.array(scenario[order]),
        ],
        schema=TRANSACTION_SCHEMA,
    )
    customers = pa.table(
        {
            "customer_id": np.arange(n_cust, dtype=np.int64),
            "x": cust_xy[:, 0],
            "y": cust_xy[:, 1],
            "mean_amount": mean_amount,
            "std_amount": std_amount,
            "mean_tx_per_day": mean_tx_per_day,
        }
    )
    terminals = pa.table(
        {
            "terminal_id": np.arange(term_xy.shape[0], dtype=np.int64),
            "x": term_xy[:, 0],
            "y": term_xy[:, 1],
        }
    )
    report("done", 1.0)
    return transactions, customers, terminals


def _neighbour_pairs(cust_xy: FloatArray, term_xy: FloatArray, radius: float) -> tuple[IntArray, IntArray]:
    """All (customer, terminal) index pairs within ``radius``, sorted by customer then terminal."""
    found = cKDTree(cust_xy).sparse_distance_matrix(cKDTree(term_xy), radius, output_type="ndarray")
    cust = np.asarray(found["i"], dtype=np.int64)
    term = np.asarray(found["j"], dtype=np.int64)
    order = np.lexsort((term, cust))
    return cust[order], term[order]


def _daily_picks(rng: np.random.Generator, days: int, population: int, k: int) -> IntArray:
    """``k`` distinct indices out of ``population`` for each day (all of them if fewer), shape ``(days, k)``."""
    k = min(k, population)
    if k == 0 or days == 0:
        return np.empty((days, 0), dtype=np.int64)
    # Random keys, a few million at a time; the k smallest keys of a day are its picks.
    rows = max(1, 4_000_000 // population)
    parts = [
        np.argpartition(rng.random((min(rows, days - first), population)), k - 1, axis=1)[:, :k] for first in range(0, days, rows)
    ]
    return np.concatenate(parts).astype(np.int64)


def _compromise_members(entity: IntArray, day: IntArray, days: int, picks: IntArray, length: int) -> tuple[IntArray, IntArray]:
    """Transactions hit by each compromise, as (event, transaction index) pairs grouped by event.

    Event ``e`` is entity ``picks.ravel()[e]`` compromised on day ``e // picks.shape[1]``; it
    covers that entity's transactions on that day and the ``length - 1`` following days, which
    form one contiguous range once transactions are sorted by (entity, day).
    """
    key = entity * days + day
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    ev_entity = picks.ravel()
    ev_day = np.repeat(np.arange(days, dtype=np.int64), picks.shape[1])
    lo = np.searchsorted(sorted_key, ev_entity * days + ev_day, side="left")
    hi = np.searchsorted(sorted_key, ev_entity * days + np.minimum(ev_day + length, days), side="left")
    size = hi - lo
    event = np.repeat(np.arange(size.size, dtype=np.int64), size)
    position = lo[event] + np.arange(event.size) - (np.cumsum(size) - size)[event]
    return event, by_key[position].astype(np.int64)


def _card_testing(
    rng: np.random.Generator, config: FraudWorldConfig, n_term: int
) -> tuple[IntArray, IntArray, IntArray, IntArray, FloatArray, FloatArray] | None:
    """Scenario 4 transactions (day, customer, terminal, seconds, amount) and new terminal x,y."""
    if config.drift_start_day is None or config.card_testing_customers_per_day == 0:
        return None
    test_days = np.arange(config.drift_start_day, config.days, dtype=np.int64)
    victims = _daily_picks(rng, test_days.size, config.n_customers, config.card_testing_customers_per_day)
    n_bursts = victims.size
    burst_day = np.repeat(test_days, victims.shape[1])
    burst_size = rng.integers(3, 9, size=n_bursts)
    burst_start = rng.integers(0, SECONDS_PER_DAY - 600, size=n_bursts)
    new_xy = rng.uniform(0.0, GRID_SIZE, size=(n_bursts, 2))
    burst = np.repeat(np.arange(n_bursts), burst_size)
    # Attempts follow each other 5-59 s apart: a burst lasts at most ~7 minutes.
    gaps = rng.integers(5, 60, size=burst.size)
    first = np.cumsum(burst_size) - burst_size
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[first][burst]
    amount = np.round(rng.uniform(0.5, 5.0, size=burst.size), 2)
    return (
        burst_day[burst],
        victims.ravel()[burst],
        n_term + burst,
        burst_start[burst] + elapsed,
        amount,
        new_xy,
    )
