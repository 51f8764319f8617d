"""Categorical encodings: values, training-window-only fitting, unseen/null at serve time, spec checks, end to end."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.preprocessing import TargetEncoder
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import LoopmlError
from loopml.features.encodings import (
    OTHER,
    EncodingState,
    apply_encodings,
    encode_training_set,
    fit_encodings,
)
from loopml.layout import Layout
from loopml.loop.train import train
from loopml.project import Project
from loopml.registry import SqliteRegistry
from loopml.server import BackgroundServer, build_app
from loopml.spec.model import Spec
from loopml.train.split import split_rows
from specs import TEST_LATENCY_BUDGET_MS

START = np.datetime64("2025-03-01T00:00:00", "us")
CATEGORY_RISK = {"grocery": 0.01, "fuel": 0.02, "electronics": 0.12, "gift cards": 0.35, "travel": 0.05}


def strings(*values: Any) -> npt.NDArray[Any]:
    return np.array(values, dtype=object)


def spec_with(encodings: dict[str, Any], **features: Any) -> Spec:
    return Spec.model_validate(
        {
            "project": "shop",
            "entities": {"customer": {"key": "customer_id"}},
            "sources": {
                "tx": {
                    "path": "data/tx.parquet",
                    "timestamp": "ts",
                    "columns": {
                        "tx_id": {"type": "int"},
                        "ts": {"type": "timestamp"},
                        "customer_id": {"type": "int"},
                        "amount": {"type": "float"},
                        "merchant_category": {"type": "string"},
                        "is_fraud": {"type": "int"},
                    },
                }
            },
            "label": {"source": "tx", "column": "is_fraud", "delay": "1d"},
            "features": {
                "request": {"amount": {"type": "float"}, "merchant_category": {"type": "string", "required": False}},
                "encodings": encodings,
                **features,
            },
            "model": {"params": {"n_estimators": 40}},
            "split": {"valid_days": 7, "test_days": 7},
            "serving": {"latency_budget_ms": TEST_LATENCY_BUDGET_MS},  # a busy test machine must not fail the gate on latency
        }
    )


# -- values ------------------------------------------------------------------------------------


def test_values_match_hand_computed_expectations() -> None:
    spec = spec_with(
        {
            "te": {"input": "merchant_category", "op": "target", "smoothing": 2},
            "freq": {"input": "merchant_category", "op": "frequency"},
            "oh": {"input": "merchant_category", "op": "onehot", "min_frequency": 2},
        }
    )
    # rows 0-6 are the training window; row 7 ("c", label 0) must not count
    values = strings("a", "a", "a", "b", "b", None, "c", "c")
    labels = np.array([1, 0, 1, 0, 0, 1, 1, 0])
    state = fit_encodings(spec, {"merchant_category": values}, labels, np.arange(7))
    out = apply_encodings(state, {"merchant_category": strings("a", "b", "c", "zzz", None)})

    prior = Fraction(4, 7)  # four positives in seven training rows
    m = 2

    def te(total: int, n: int) -> float:
        return float((total + m * prior) / (n + m))

    assert out["te"].tolist() == pytest.approx(
        [te(2, 3), te(0, 2), te(1, 1), float(prior), te(1, 1)], rel=1e-15
    )  # unseen -> prior; null is its own category (one row, label 1)
    assert out["te"][0] == pytest.approx(22 / 35, rel=1e-15) and out["te"][1] == pytest.approx(2 / 7, rel=1e-15)
    assert out["freq"].tolist() == pytest.approx([3 / 7, 2 / 7, 1 / 7, 0.0, 1 / 7], rel=1e-15)
    # one-hot: a (3 rows) and b (2 rows) keep a column; c (1 row < min_frequency) and the unseen value go to
    # __other__; null sets no column
    assert state.columns == ["te", "freq", "oh=a", "oh=b", f"oh={OTHER}"]
    onehot = np.column_stack([out["oh=a"], out["oh=b"], out[f"oh={OTHER}"]])
    assert onehot.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]]


def test_onehot_keeps_the_most_frequent_categories_and_safe_unique_names() -> None:
    spec = spec_with({"oh": {"input": "merchant_category", "op": "onehot", "max_categories": 4}})
    values = strings(*(["gift cards"] * 5 + ["gift,cards"] * 4 + ["gift_cards"] * 3 + [OTHER] * 2 + ["rare"] * 1))
    state = fit_encodings(spec, {"merchant_category": values}, np.zeros(len(values)), np.arange(len(values)))
    columns = state.columns
    assert len(columns) == len(set(columns)) == 5  # 4 categories + __other__; "rare" is the 5th most frequent
    assert columns[-1] == f"oh={OTHER}"
    assert all(re.fullmatch(r"oh=[\w.\-]+", c) for c in columns)  # no spaces or JSON characters (LightGBM)
    out = apply_encodings(state, {"merchant_category": strings("gift cards", "gift,cards", "gift_cards", OTHER, "rare")})
    matrix = np.column_stack([out[c] for c in columns])
    # each kept category lands in its own column although three of them sanitise to the same text
    assert matrix.tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]


def test_target_encoding_equals_scikit_learn_target_encoder() -> None:
    rng = np.random.default_rng(7)
    values = np.array(["a", "b", "c", "d", "e", None], dtype=object)[rng.integers(0, 6, 3000)]
    labels = (rng.uniform(size=3000) < np.where(values == "c", 0.4, 0.1)).astype(np.int8)
    rows = np.arange(2000)
    spec = spec_with({"te": {"input": "merchant_category", "op": "target", "smoothing": 3.5}})
    state = fit_encodings(spec, {"merchant_category": values}, labels, rows)
    reference = TargetEncoder(smooth=3.5, target_type="binary").fit(values[rows].reshape(-1, 1), labels[rows])
    ours = apply_encodings(state, {"merchant_category": values[2000:]})["te"]
    theirs = reference.transform(values[2000:].reshape(-1, 1))[:, 0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


# -- the training window only ----------------------------------------------------------------------


def test_state_is_fitted_on_training_rows_only() -> None:
    spec = spec_with(
        {
            "te": {"input": "merchant_category", "op": "target"},
            "freq": {"input": "merchant_category", "op": "frequency"},
            "oh": {"input": "merchant_category", "op": "onehot"},
        }
    )
    rng = np.random.default_rng(1)
    values = np.array(list(CATEGORY_RISK), dtype=object)[rng.integers(0, 5, 1000)]
    labels = rng.integers(0, 2, 1000)
    train_rows = np.arange(600)
    base = fit_encodings(spec, {"merchant_category": values}, labels, train_rows).to_json()

    later = labels.copy()
    later[600:] = 1 - later[600:]  # every valid/test label flipped
    other_values = values.copy()
    other_values[600:] = "only-after-training"  # a category that appears after the training window
    assert fit_encodings(spec, {"merchant_category": other_values}, later, train_rows).to_json() == base

    changed = labels.copy()
    changed[:10] = 1 - changed[:10]  # training labels do matter
    assert fit_encodings(spec, {"merchant_category": values}, changed, train_rows).to_json() != base


def test_out_of_fold_keeps_a_training_rows_own_label_out_of_its_value() -> None:
    rng = np.random.default_rng(3)
    values = np.array([*CATEGORY_RISK, "rare"], dtype=object)[rng.integers(0, 6, 400)]
    labels = rng.integers(0, 2, 400)
    train_rows = np.arange(300)
    column = {"merchant_category": values}
    oof = spec_with({"te": {"input": "merchant_category", "op": "target", "folds": 5}})
    plain = spec_with({"te": {"input": "merchant_category", "op": "target", "folds": 0}})
    state, encoded = encode_training_set(oof, column, labels, train_rows, seed=0)
    # rows outside the training split get the state's values, like serving
    np.testing.assert_array_equal(encoded["te"][300:], apply_encodings(state, {"merchant_category": values[300:]})["te"])
    for i in rng.choice(300, 25, replace=False):
        flipped = labels.copy()
        flipped[i] = 1 - flipped[i]
        _, again = encode_training_set(oof, column, flipped, train_rows, seed=0)
        assert again["te"][i] == encoded["te"][i], f"row {i}'s own label moved its out-of-fold value"
        _, leaky = encode_training_set(plain, column, labels, train_rows, seed=0)
        _, leaky_flipped = encode_training_set(plain, column, flipped, train_rows, seed=0)
        assert leaky["te"][i] != leaky_flipped["te"][i]  # without folds it would leak


# -- serve-time values ------------------------------------------------------------------------------


def test_unseen_and_null_values_get_documented_values_never_an_error() -> None:
    spec = spec_with(
        {
            "te": {"input": "merchant_category", "op": "target"},
            "freq": {"input": "merchant_category", "op": "frequency"},
            "oh": {"input": "merchant_category", "op": "onehot"},
        }
    )
    values = strings("a", "b", "a", "b", "a")  # no null in training
    state = fit_encodings(spec, {"merchant_category": values}, np.array([1, 0, 0, 0, 1]), np.arange(5))
    odd = strings(None, float("nan"), "", "  a", "A", "日本", 42, "x" * 1000)
    out = apply_encodings(state, {"merchant_category": odd})
    prior = 2 / 5
    assert out["te"].tolist() == pytest.approx([prior] * len(odd), rel=1e-15)  # null without training nulls -> prior
    assert out["freq"].tolist() == [0.0] * len(odd)
    assert out[f"oh={OTHER}"].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]  # null sets no column, anything unseen is other
    assert out["oh=a"].sum() == 0 and out["oh=b"].sum() == 0


def test_a_large_batch_encodes_exactly_like_single_rows() -> None:
    """Training encodes millions of rows at once, serving a few: both must give the same numbers."""
    spec = spec_with(
        {
            "te": {"input": "merchant_category", "op": "target"},
            "freq": {"input": "merchant_category", "op": "frequency"},
            "oh": {"input": "merchant_category", "op": "onehot", "max_categories": 3},
        }
    )
    rng = np.random.default_rng(11)
    pool = np.array(["a", "b", "c", "d", None, "", 7, "never seen", "7", float("nan")], dtype=object)
    train_values = pool[rng.integers(0, 7, 500)]  # the first seven: no "never seen", 7 only as an int
    state = fit_encodings(spec, {"merchant_category": train_values}, rng.integers(0, 2, 500), np.arange(500))
    values = pool[rng.integers(0, len(pool), 1000)]
    whole = apply_encodings(state, {"merchant_category": values})
    for i in rng.choice(1000, 50, replace=False):
        single = apply_encodings(state, {"merchant_category": values[i : i + 1]})
        assert {c: v[0] for c, v in single.items()} == {c: v[i] for c, v in whole.items()}, values[i]
    seven = whole["freq"][values == "7"]
    assert len(seven) and (seven == np.mean(train_values == 7)).all()  # 7 and "7" are one category


def test_state_round_trips_through_json_and_rejects_a_broken_one() -> None:
    spec = spec_with({"te": {"input": "merchant_category", "op": "target"}, "oh": {"input": "merchant_category", "op": "onehot"}})
    values = strings("a", "b", None, "a")
    state = fit_encodings(spec, {"merchant_category": values}, np.array([1, 0, 1, 1]), np.arange(4))
    again = EncodingState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    body = state.to_json()
    body["encodings"][1]["levels"] = ["a"]  # one level too few for its columns
    with pytest.raises(LoopmlError, match=r"encodings\.1: key 'levels'"):
        EncodingState.from_json(body)


# -- loopml check -----------------------------------------------------------------------------------

SPEC_YAML = """\
project: shop
entities:
  customer: {key: customer_id}
sources:
  tx:
    path: data/tx.parquet
    timestamp: ts
    columns:
      tx_id: {type: int}
      ts: {type: timestamp}
      customer_id: {type: int}
      amount: {type: float}
      merchant_category: {type: string}
      is_fraud: {type: int}
label: {source: tx, column: is_fraud, delay: 1d}
features:
  request:
    amount: {type: float}
    ts: {type: timestamp}
    merchant_category: {type: string, required: false}
  transforms:
    hour: {op: hour, inputs: [ts]}
  encodings:
    mc_te:
      input: merchant_category
      op: target
      smoothing: 5
    mc_freq: {input: merchant_category, op: frequency}
    mc: {input: merchant_category, op: onehot, min_frequency: 30, max_categories: 6}
model:
  params: {n_estimators: 60}
split: {valid_days: 7, test_days: 7}
serving: {latency_budget_ms: 60000}  # specs.TEST_LATENCY_BUDGET_MS: latency never decides the gate here
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "message"),
    [
        (
            "      input: merchant_category\n",
            "      input: merchant\n",
            25,
            "features.encodings.mc_te.input",
            "unknown request feature",
        ),
        ("      op: target\n", "      op: woe\n", 26, "features.encodings.mc_te.op", "'onehot', 'frequency' or 'target'"),
        ("      input: merchant_category\n", "      input: amount\n", 25, "features.encodings.mc_te.input", "is float"),
        (
            "      smoothing: 5\n",
            "      smoothing: 5\n      max_categories: 3\n",
            28,
            "features.encodings.mc_te.max_categories",
            "onehot",
        ),
        ("      smoothing: 5\n", "      smoothing: 5\n      folds: 1\n", 28, "features.encodings.mc_te.folds", "at least 2"),
        ("    mc_freq:", "    hour:", 28, "features.encodings.hour", "already the name of another feature"),
    ],
)
def test_check_names_the_key_and_line(tmp_path: Path, old: str, new: str, line: int, key: str, message: str) -> None:
    assert SPEC_YAML.count(old) == 1
    (tmp_path / "loopml.yaml").write_text(SPEC_YAML.replace(old, new))
    result = CliRunner().invoke(app, ["check", "--project", str(tmp_path)])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert all(text.startswith(f"error: {tmp_path}/loopml.yaml:") for text in lines), lines
    assert any(text.startswith(f"error: {tmp_path}/loopml.yaml:{line}: {key}: ") and message in text for text in lines), lines


def test_the_example_spec_passes_check(tmp_path: Path) -> None:
    (tmp_path / "loopml.yaml").write_text(SPEC_YAML)
    result = CliRunner().invoke(app, ["check", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.stderr


def test_check_wants_the_input_in_the_label_source(tmp_path: Path) -> None:
    text = SPEC_YAML.replace("      merchant_category: {type: string}\n", "")
    (tmp_path / "loopml.yaml").write_text(text)
    result = CliRunner().invoke(app, ["check", "--project", str(tmp_path)])
    assert result.exit_code == 1
    assert "features.encodings.mc_te.input: column 'merchant_category' is not declared in source 'tx'" in result.stderr


# -- training and serving end to end ------------------------------------------------------------------


def shop_table(n: int = 6000, days: float = 45, seed: int = 0) -> pa.Table:
    """Card payments whose fraud rate depends on the merchant category (and a little on the amount)."""
    rng = np.random.default_rng(seed)
    ts = np.sort(START + rng.uniform(0, days * 86_400e6, n).astype("timedelta64[us]"))
    names = list(CATEGORY_RISK) + [f"rare-{i}" for i in range(40)]
    weights = np.array([0.3, 0.2, 0.15, 0.1, 0.15] + [0.1 / 40] * 40)
    category = np.array(names, dtype=object)[rng.choice(len(names), n, p=weights)]
    category[rng.uniform(size=n) < 0.04] = None
    amount = np.round(rng.lognormal(3.5, 1.0, n), 2)
    risk = np.array([CATEGORY_RISK.get(c, 0.2) if c is not None else 0.1 for c in category])
    y = (rng.uniform(size=n) < np.clip(risk * (1 + (amount > 100)), 0, 1)).astype(np.int64)
    return pa.table(
        {
            "tx_id": np.arange(n),
            "ts": pa.array(ts),
            "customer_id": rng.integers(0, 300, n),
            "amount": amount,
            "merchant_category": pa.array(category.tolist(), pa.string()),
            "is_fraud": y,
        }
    )


@pytest.fixture(scope="module")
def shop_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shop")
    (folder / "data").mkdir()
    pq.write_table(shop_table(), folder / "data" / "tx.parquet")
    (folder / "loopml.yaml").write_text(SPEC_YAML)
    project = Project.load(folder)
    project.ingest()
    project.build_features()
    result = project.train()
    assert result.promoted and result.model_version == 1
    return folder


def test_training_registers_the_state_and_encoded_columns(shop_project: Path) -> None:
    project = Project.load(shop_project)
    registry = project.registry()
    version = registry.get(1)
    reference = registry.reference_stats(1)
    state = EncodingState.from_reference(reference)
    assert [e.name for e in state.encodings] == ["mc_te", "mc_freq", "mc"]
    encoded = [c["name"] for c in version.signature if "encoding" in c]
    assert encoded == state.columns and version.feature_names[-len(encoded) :] == encoded  # after the other features
    assert state.columns[2:] == ["mc=grocery", "mc=fuel", "mc=electronics", "mc=travel", "mc=gift_cards", f"mc={OTHER}"]
    assert set(state.columns) <= set(reference["features"])  # monitoring covers encoded columns like any other
    # the state saw the training split only: its row count is the split's
    assert state.encodings[0].rows == version.lineage["split"]["train"]["rows"]
    risky, safe = state.encodings[0].values["gift cards"], state.encodings[0].values["grocery"]
    assert risky > state.encodings[0].unknown > safe  # the target encoding learned the category risk


def test_served_score_equals_offline_score(shop_project: Path) -> None:
    project = Project.load(shop_project)
    registry = project.registry()
    version = registry.get(1)
    state = EncodingState.from_reference(registry.reference_stats(1))
    predictor = registry.load_predictor(1)
    run_dir = project.runs().run_dir(version.run_id or "")
    sample = pq.read_table(run_dir / "predictions_sample.parquet").to_pylist()
    table = pq.read_table(project.training_set_path(project.snapshot()))
    rows = table.take([s["row"] for s in sample[:40]]).to_pylist()
    numeric = [n for n in version.feature_names if n not in state.columns]

    def body(row: dict[str, Any], category: Any) -> dict[str, Any]:
        return {
            "entities": {},
            "features": {"amount": row["amount"], "ts": row["ts"].isoformat(), "merchant_category": category},
        }

    def expected(row: dict[str, Any], encoded: dict[str, float]) -> float:
        x = [float(row[n]) for n in numeric] + [encoded[c] for c in state.columns]
        return float(predictor.predict(np.array([x]))[0])

    te, freq = state.encodings[0], state.encodings[1]
    other = {c: 0.0 for c in state.columns[2:]}
    with BackgroundServer(build_app(project)) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        batch = client.post("/v1/predict/batch", json={"instances": [body(r, r["merchant_category"]) for r in rows]})
        assert batch.status_code == 200, batch.text
        served = [p["score"] for p in batch.json()["predictions"]]
        offline = [s["score"] for s in sample[:40]]
        np.testing.assert_allclose(served, offline, rtol=1e-9, atol=1e-12)
        assert {r["merchant_category"] for r in rows} - {None}, "the sample should hold real categories"

        row = rows[0]
        unseen = client.post("/v1/predict", json=body(row, "a category never seen"))
        assert unseen.status_code == 200, unseen.text
        values = {"mc_te": float(te.unknown), "mc_freq": 0.0, **other, f"mc={OTHER}": 1.0}
        assert unseen.json()["score"] == pytest.approx(expected(row, values), rel=1e-9, abs=1e-12)

        for payload in (body(row, None), {"entities": {}, "features": {"amount": row["amount"], "ts": row["ts"].isoformat()}}):
            null = client.post("/v1/predict?explain=true", json=payload)
            assert null.status_code == 200, null.text
            values = {"mc_te": te.null, "mc_freq": freq.null, **other}
            assert null.json()["score"] == pytest.approx(expected(row, values), rel=1e-9, abs=1e-12)
            assert set(state.columns) <= set(null.json()["explanation"])


def test_retraining_state_ignores_labels_after_the_training_window(tmp_path: Path) -> None:
    """Change every label outside the training split: the registered encoding state stays the same."""
    spec = spec_with(
        {
            "te": {"input": "merchant_category", "op": "target"},
            "oh": {"input": "merchant_category", "op": "onehot", "min_frequency": 20},
        }
    )
    table = shop_table(n=3000, days=40, seed=5)
    y = table.column("is_fraud").to_numpy()
    ts = table.column("ts").to_numpy()
    split = split_rows(spec, y, ts)
    outside = np.setdiff1d(np.arange(len(y)), split.train)
    flipped = y.copy()
    flipped[outside] = 1 - flipped[outside]
    inside = y.copy()
    inside[split.train[:50]] = 1 - inside[split.train[:50]]

    layout = Layout.for_project(tmp_path, spec)
    registry = SqliteRegistry.for_layout(layout)
    states = []
    for i, labels in enumerate([y, flipped, inside]):
        path = tmp_path / f"set-{i}.parquet"
        pq.write_table(table.set_column(table.schema.get_field_index("is_fraud"), "is_fraud", pa.array(labels)), path)
        result = train(spec, layout, path, ["amount"], {"snapshot": f"s{i}"}, registry)
        states.append(registry.reference_stats(result.model_version)["encodings"])
        columns = EncodingState.from_json(states[-1]).columns
        assert registry.get(result.model_version).feature_names == ["amount", *columns]
    assert states[0] == states[1]
    assert states[0] != states[2]


def test_a_training_set_without_the_encoded_column_is_one_clear_error(tmp_path: Path) -> None:
    spec = spec_with({"te": {"input": "merchant_category", "op": "target"}})
    path = tmp_path / "set.parquet"
    pq.write_table(shop_table(n=500, days=40).drop_columns(["merchant_category"]), path)
    layout = Layout.for_project(tmp_path, spec)
    registry = SqliteRegistry.for_layout(layout)
    with pytest.raises(LoopmlError) as info:
        train(spec, layout, path, ["amount"], {"snapshot": "s"}, registry)
    message = str(info.value)
    assert message.startswith(f"{path}: column 'merchant_category' (features.encodings.te.input) is missing")
    assert "\n" not in message and registry.list() == []  # nothing registered
