"""Row-level transforms: values, edge cases, and the spec errors ``loopml check`` reports for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopml.errors import LoopmlError, SpecError
from loopml.features import apply_transforms, build_training_set, feature_columns
from loopml.spec.load import parse_spec
from loopml.spec.model import Spec

SPEC = """\
project: t
entities:
  user: {key: user_id}
sources:
  events:
    path: events.parquet
    timestamp: ts
    columns:
      ts: {type: timestamp}
      user_id: {type: int}
      amount: {type: float}
      label: {type: int}
label: {source: events, column: label}
features:
  default: -1
  request:
    amount: {type: float}
    ts: {type: timestamp}
  views:
    user:
      entity: user
      source: events
      aggregations:
        - {column: amount, functions: [mean], windows: [1d]}
  transforms:
    log_amount: {op: log, inputs: [amount]}
    amount_band: {op: bucket, inputs: [amount], edges: [10, 50, 200]}
    dow: {op: day_of_week, inputs: [ts]}
    rel: {op: ratio, inputs: [amount, user_amount_mean_1d]}
    log_rel: {op: log1p, inputs: [rel]}
  exclude: [ts]
"""


def spec(**changes: str) -> Spec:
    text = SPEC
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    return parse_spec(text, "p/loopml.yaml")


def test_log_is_the_natural_log_and_undefined_at_or_below_zero() -> None:
    s = spec()
    amount = np.array([1.0, np.e, 100.0, 0.0, -3.0, np.nan, 1e-300])
    out = apply_transforms(s, {"amount": amount, "ts": np.zeros(7, "datetime64[us]"), "user_amount_mean_1d": np.ones(7)})
    np.testing.assert_allclose(out["log_amount"], [0.0, 1.0, np.log(100.0), -1.0, -1.0, -1.0, np.log(1e-300)])


def test_bucket_is_right_open_and_counts_from_zero() -> None:
    s = spec()
    amount = np.array([-5.0, 9.999, 10.0, 49.0, 50.0, 199.99, 200.0, 1e9, np.nan])
    out = apply_transforms(s, {"amount": amount, "ts": np.zeros(9, "datetime64[us]"), "user_amount_mean_1d": np.ones(9)})
    # [-inf, 10) -> 0, [10, 50) -> 1, [50, 200) -> 2, [200, inf) -> 3; NaN -> the default
    assert out["amount_band"].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, -1.0]


def test_transforms_chain_and_keep_spec_order() -> None:
    s = spec()
    ts = np.array(["2025-04-07T12:00", "2025-04-13T01:00", "NaT"], dtype="datetime64[us]")
    out = apply_transforms(s, {"amount": np.array([4.0, 6.0, 8.0]), "ts": ts, "user_amount_mean_1d": np.array([2.0, 0.0, 4.0])})
    assert list(out) == ["log_amount", "amount_band", "dow", "rel", "log_rel"]
    assert out["dow"].tolist() == [0.0, 6.0, -1.0]  # Monday, Sunday, no time
    assert out["rel"].tolist() == [2.0, -1.0, 2.0]  # ratio by 0 -> default
    np.testing.assert_allclose(out["log_rel"], [np.log(3.0), -1.0, np.log(3.0)])  # log1p(-1) is undefined -> default


def test_bad_edges_name_the_transform(tmp_path: Path) -> None:
    data: dict[str, Any] = spec().model_dump()
    data["features"]["transforms"]["amount_band"]["edges"] = [5.0, 5.0]
    bad = Spec.model_validate(data)
    message = r"features\.transforms\.amount_band\.edges: bucket needs finite, strictly increasing"
    with pytest.raises(LoopmlError, match=message):
        apply_transforms(bad, {"amount": np.ones(2), "ts": np.zeros(2, "datetime64[us]"), "user_amount_mean_1d": np.ones(2)})
    with pytest.raises(LoopmlError, match=message):  # and before any work, when a training set is built
        build_training_set(bad, {}, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_training_set_holds_the_same_values_as_apply_transforms(tmp_path: Path) -> None:
    s = spec()
    rng = np.random.default_rng(3)
    n = 200
    table = pa.table(
        {
            "ts": pa.array(
                np.datetime64("2025-04-01") + rng.integers(0, 10 * 86400, n).astype("timedelta64[s]"), pa.timestamp("us")
            ),
            "user_id": pa.array(rng.integers(0, 5, n)),
            "amount": pa.array(np.round(rng.gamma(1.0, 60.0, n), 2) * rng.choice([1, 0, -1], n, p=[0.8, 0.1, 0.1])),
            "label": pa.array(rng.integers(0, 2, n)),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    out = pq.read_table(build_training_set(s, {"events": tmp_path / "events.parquet"}, tmp_path / "t.parquet").path)
    assert feature_columns(s) == ["user_amount_mean_1d", "amount", "log_amount", "amount_band", "dow", "rel", "log_rel"]
    inputs = {
        "amount": table.column("amount").to_numpy(),
        "ts": table.column("ts").to_numpy(),
        "user_amount_mean_1d": out.column("user_amount_mean_1d").to_numpy(),
    }
    expected = apply_transforms(s, inputs)
    for name, values in expected.items():
        np.testing.assert_array_equal(out.column(name).to_numpy(), values, err_msg=name)
    assert (out.column("log_amount").to_numpy() == -1.0).sum() == (table.column("amount").to_numpy() <= 0).sum()


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(needle))


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("edges: [10, 50, 200]", "edges: []", "features.transforms.amount_band", "bucket needs edges"),
        ("edges: [10, 50, 200]", "edges: [10, 5]", "features.transforms.amount_band.edges", "strictly increasing"),
        (
            "{op: log, inputs: [amount]}",
            "{op: log, inputs: [amount], edges: [1]}",
            "features.transforms.log_amount.edges",
            "bucket",
        ),
        ("{op: log, inputs: [amount]}", "{op: log, inputs: [ts]}", "features.transforms.log_amount.inputs", "needs a number"),
        ("{op: log, inputs: [amount]}", "{op: log, inputs: [amount_usd]}", "features.transforms.log_amount.inputs", "amount_usd"),
        ("{op: log, inputs: [amount]}", "{op: logarithm, inputs: [amount]}", "features.transforms.log_amount.op", "log"),
        (
            "inputs: [amount, user_amount_mean_1d]",
            "inputs: [amount, user_amount_mean_7d]",
            "features.transforms.rel.inputs",
            "7d",
        ),
        ("{op: day_of_week, inputs: [ts]}", "{op: day_of_week, inputs: [amount]}", "features.transforms.dow.inputs", "timestamp"),
        ("    dow: {op:", "    amount: {op:", "features.transforms.amount", "already the name"),
    ],
)
def test_check_names_the_bad_transform_key_and_its_line(old: str, new: str, key: str, words: str) -> None:
    text = SPEC.replace(old, new)
    with pytest.raises(SpecError) as info:
        parse_spec(text, "p/loopml.yaml")
    transform = key.split(".")[2]  # every transform is one line: its problems point at that line
    line = _line(text, f"{transform}: {{op:")
    assert any(p.startswith(f"p/loopml.yaml:{line}: {key}:") and words in p for p in info.value.problems), info.value.problems
