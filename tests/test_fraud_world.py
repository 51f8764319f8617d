"""The simulated card-fraud world: schema, determinism, the four fraud scenarios, Parquet output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.datasets import FraudWorldConfig, simulate, write_world

SMALL = FraudWorldConfig(n_customers=300, n_terminals=600, days=30, seed=7)
DRIFT_DAY = 20
SMALL_DRIFT = FraudWorldConfig(n_customers=300, n_terminals=600, days=30, seed=7, drift_start_day=DRIFT_DAY)

EXPECTED_SCHEMA = pa.schema(
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


def _frame(table: pa.Table, config: FraudWorldConfig) -> pd.DataFrame:
    df: pd.DataFrame = table.to_pandas()
    df["day"] = (df["tx_datetime"] - pd.Timestamp(config.start_date)).dt.days
    return df


@pytest.fixture(scope="module")
def small() -> pa.Table:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def small_df(small: pa.Table) -> pd.DataFrame:
    return _frame(small, SMALL)


@pytest.fixture(scope="module")
def drift_df() -> pd.DataFrame:
    return _frame(simulate(SMALL_DRIFT), SMALL_DRIFT)


def test_schema_order_and_values(small: pa.Table, small_df: pd.DataFrame) -> None:
    assert small.schema == EXPECTED_SCHEMA
    assert small.schema.field("tx_datetime").type.tz is None
    assert small.num_rows > 10_000
    assert np.array_equal(small_df["transaction_id"].to_numpy(), np.arange(len(small_df)))
    assert small_df["tx_datetime"].is_monotonic_increasing
    assert small_df["day"].min() >= 0 and small_df["day"].max() < SMALL.days
    assert small_df["tx_datetime"].min() >= pd.Timestamp("2025-04-01")
    cents = small_df["tx_amount"].to_numpy() * 100
    assert np.allclose(cents, np.round(cents))
    assert (small_df["tx_amount"] >= 0).all()
    assert set(small_df["tx_fraud_scenario"].unique()) == {0, 1, 2, 3}
    assert (small_df["tx_fraud"] == (small_df["tx_fraud_scenario"] > 0)).all()
    assert small_df["customer_id"].between(0, SMALL.n_customers - 1).all()
    assert small_df["terminal_id"].between(0, SMALL.n_terminals - 1).all()


def test_same_seed_same_table_other_seed_other_table(small: pa.Table, tmp_path: Path) -> None:
    assert simulate(SMALL).equals(small)
    other = simulate(FraudWorldConfig(n_customers=300, n_terminals=600, days=30, seed=8))
    assert not other.equals(small)
    first = write_world(SMALL, tmp_path / "a")
    second = write_world(SMALL, tmp_path / "b")
    for name in ("transactions", "customers", "terminals"):
        assert first[name].read_bytes() == second[name].read_bytes()


def test_scenario_1_is_amount_over_threshold(small_df: pd.DataFrame) -> None:
    s1 = small_df[small_df["tx_fraud_scenario"] == 1]
    assert len(s1) > 0
    assert (s1["tx_amount"] > SMALL.amount_threshold).all()
    # Every big amount is fraud; only scenario 2/3 labels can take its place.
    big = small_df[small_df["tx_amount"] > SMALL.amount_threshold]
    assert (big["tx_fraud"] == 1).all()


def test_scenario_2_fraud_comes_from_few_28_day_terminal_windows() -> None:
    # Three months with one compromise a day: long enough for the 28-day windows to matter.
    config = FraudWorldConfig(n_customers=300, n_terminals=600, days=90, seed=7, compromised_terminals_per_day=1)
    df = _frame(simulate(config), config)
    s2 = df[df["tx_fraud_scenario"] == 2]
    compromises = config.compromised_terminals_per_day * config.days
    terminals = s2["terminal_id"].unique()
    assert 0 < len(terminals) <= compromises
    # The fewest 28-day windows covering each terminal's scenario-2 days (a greedy cover is
    # optimal) can not exceed the number of compromises that happened.
    windows = 0
    for fraud_days in s2.groupby("terminal_id")["day"].unique():
        end = -1
        for d in sorted(fraud_days):
            if d >= end:
                windows, end = windows + 1, d + 28
    assert windows <= compromises
    # A compromised terminal is compromised all day: on a day with scenario-2 fraud every
    # transaction at that terminal is fraud (scenario 3 may overwrite the label).
    fraud_cells = s2[["terminal_id", "day"]].drop_duplicates()
    same_cells = df.merge(fraud_cells, on=["terminal_id", "day"])
    assert same_cells["tx_fraud_scenario"].isin([2, 3]).all()


def test_scenario_3_hits_few_cards(small_df: pd.DataFrame) -> None:
    s3 = small_df[small_df["tx_fraud_scenario"] == 3]
    assert 0 < s3["customer_id"].nunique() <= SMALL.compromised_customers_per_day * SMALL.days


def test_fraud_rate_of_a_medium_world_is_plausible() -> None:
    table = simulate(FraudWorldConfig(days=60, seed=3))
    rate = float(np.mean(table.column("tx_fraud").to_numpy()))
    assert 300_000 < table.num_rows < 800_000
    assert 0.002 < rate < 0.02


def test_no_card_testing_without_drift(small_df: pd.DataFrame, tmp_path: Path) -> None:
    assert not (small_df["tx_fraud_scenario"] == 4).any()
    terminals = pq.read_table(write_world(SMALL, tmp_path)["terminals"])
    assert terminals.num_rows == SMALL.n_terminals


def test_card_testing_starts_on_drift_day_at_unseen_terminals(
    small_df: pd.DataFrame, drift_df: pd.DataFrame, tmp_path: Path
) -> None:
    s4 = drift_df[drift_df["tx_fraud_scenario"] == 4]
    assert len(s4) > 0
    assert s4["day"].min() == DRIFT_DAY
    assert (s4["tx_fraud"] == 1).all()
    assert s4["tx_amount"].between(0.5, 5.0).all()
    assert (s4["terminal_id"] >= SMALL_DRIFT.n_terminals).all()
    before = drift_df[drift_df["day"] < DRIFT_DAY]
    assert not s4["terminal_id"].isin(before["terminal_id"]).any()
    # Each day, card_testing_customers_per_day distinct cards, each a 3-8 attempt burst within minutes.
    per_day = s4.groupby("day")["customer_id"].nunique()
    assert (per_day == SMALL_DRIFT.card_testing_customers_per_day).all()
    assert len(per_day) == SMALL_DRIFT.days - DRIFT_DAY
    bursts = s4.groupby("terminal_id").agg(
        n=("transaction_id", "size"),
        cards=("customer_id", "nunique"),
        start=("tx_datetime", "min"),
        end=("tx_datetime", "max"),
    )
    assert bursts["n"].between(3, 8).all()
    assert (bursts["cards"] == 1).all()
    assert (bursts["end"] - bursts["start"]).max() <= pd.Timedelta(minutes=10)
    # Everything else is the world without drift, untouched.
    rest = drift_df[drift_df["tx_fraud_scenario"] != 4].drop(columns="transaction_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, small_df.drop(columns="transaction_id").reset_index(drop=True))
    # The new terminals are listed with a location.
    terminals = pq.read_table(write_world(SMALL_DRIFT, tmp_path)["terminals"]).to_pandas()
    assert len(terminals) == SMALL_DRIFT.n_terminals + len(bursts)
    assert s4["terminal_id"].isin(terminals["terminal_id"]).all()
    assert terminals[["x", "y"]].stack().between(0, 100).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_customers", 0),
        ("n_terminals", -5),
        ("days", 0),
        ("radius", 0.0),
        ("radius", -1.0),
        ("amount_threshold", 0.0),
        ("compromised_terminals_per_day", -1),
        ("compromised_customers_per_day", -1),
        ("card_testing_customers_per_day", -1),
        ("drift_start_day", 30),
        ("drift_start_day", -1),
        ("start_date", "April 1st"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"days": 30, field: value}
    with pytest.raises(ValueError, match=field):
        FraudWorldConfig(**kwargs)  # type: ignore[arg-type]


def test_write_world_writes_readable_parquet(small: pa.Table, tmp_path: Path) -> None:
    paths = write_world(SMALL, tmp_path / "world")
    assert set(paths) == {"transactions", "customers", "terminals"}
    assert all(path.parent == tmp_path / "world" and path.suffix == ".parquet" for path in paths.values())
    assert pq.read_table(paths["transactions"]).equals(small)
    customers = pq.read_table(paths["customers"]).to_pandas()
    assert list(customers.columns) == ["customer_id", "x", "y", "mean_amount", "std_amount", "mean_tx_per_day"]
    assert len(customers) == SMALL.n_customers
    assert np.allclose(customers["std_amount"], customers["mean_amount"] / 2)
    terminals = pq.read_table(paths["terminals"]).to_pandas()
    assert list(terminals.columns) == ["terminal_id", "x", "y"]
    # Customers pay at terminals near home.
    tx = small.to_pandas()
    joined = tx.merge(customers, on="customer_id").merge(terminals, on="terminal_id", suffixes=("_c", "_t"))
    distance = np.hypot(joined["x_c"] - joined["x_t"], joined["y_c"] - joined["y_t"])
    assert (distance <= SMALL.radius + 1e-9).all()


def test_customers_without_terminals_in_range_make_no_transactions() -> None:
    table = simulate(FraudWorldConfig(n_customers=50, n_terminals=50, days=5, radius=1e-6))
    assert table.num_rows == 0
    assert table.schema == EXPECTED_SCHEMA


def test_progress_is_reported() -> None:
    calls: list[tuple[str, float]] = []
    simulate(FraudWorldConfig(n_customers=50, n_terminals=100, days=5), progress=lambda s, f: calls.append((s, f)))
    fractions = [fraction for _, fraction in calls]
    assert 3 <= len(calls) <= 10
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
