"""``loopml monitor`` on a trained fraud project: drift per window, quality, performance, system metrics, alerts."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.monitor.alerts import AlertStore
from loopml.monitor.drift import column_references, summarise
from loopml.monitor.live_rows import LiveData
from loopml.monitor.performance import estimate_binary, performance
from loopml.monitor.quality import column_quality
from loopml.monitor.rules import Breach, apply, metric_drop_rule, throughput_rule
from loopml.predlog.records import Feedback, LoggedPrediction
from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from loopml.spec.model import Quality
from loopml.tasks.metrics import binary_metrics
from loopml.train.reference import reference_stats
from specs import configure

DAY = datetime(2026, 3, 1)
runner = CliRunner()
Change = Callable[[dict[str, Any]], dict[str, Any]]


def same(features: dict[str, Any]) -> dict[str, Any]:
    return features


def fraud_shift(features: dict[str, Any]) -> dict[str, Any]:
    """Amounts far above anything seen in training, and one aggregate missing."""
    return dict(features, tx_amount=features["tx_amount"] * 4 + 1_000, amount_over_customer_mean_30d=None)


def log_days(folder: Path, days: list[tuple[int, Change, bool]], latency: list[float] | None = None, seed: int = 0) -> int:
    """Log real model scores of test-split rows, ``n`` rows per day spread over the day; labels when asked."""
    project = Project.load(folder)
    registry = project.registry()
    champion = registry.alias("champion")
    assert champion is not None
    predictor = registry.load_predictor(champion.version)
    names = predictor.feature_names
    table = pq.read_table(project.training_set_path(project.snapshot())).sort_by("tx_datetime")
    total = sum(n for n, _, _ in days)
    test_start = datetime.fromisoformat(champion.lineage["split"]["test"]["start"])
    first = table.num_rows - int(np.sum(table.column("tx_datetime").to_numpy() >= np.datetime64(test_start)))
    # rows of the test split, which the reference statistics describe
    pick = first + np.random.default_rng(seed).choice(table.num_rows - first, size=total, replace=False)
    rows = table.take(pa.array(pick)).to_pylist()
    log = project.prediction_log()
    labels: list[tuple[str, float]] = []
    logged: list[LoggedPrediction] = []
    offset = 0
    for d, (n, change, labelled) in enumerate(days):
        for i in range(n):
            row = rows[offset + i]
            features = change({name: row[name] for name in names})
            vector = np.array([[v if isinstance(v := features.get(k), float | int) else np.nan for k in names]], dtype=float)
            request_id = f"d{d}-{i}"
            logged.append(
                LoggedPrediction(
                    request_id=request_id,
                    ts=DAY + timedelta(days=d, seconds=i * 86_000 / n),
                    entities={"customer_id": row["customer_id"]},
                    features=features,
                    score=float(predictor.predict(vector)[0]),
                    model_version=champion.version,
                    variant="champion",
                    latency_ms=(latency or [2.0] * len(days))[d],
                )
            )
            if labelled:
                labels.append((request_id, float(row["tx_fraud"])))
        offset += n
    log.append(logged)
    log.add_feedback([Feedback(r, y, DAY + timedelta(days=8)) for r, y in labels])
    return total


@pytest.fixture
def drifting(trained_copy: Path) -> Path:
    """Two ordinary labelled days, then two of shifted amounts and missing values; the last one quiet and slow."""
    days = [(500, same, True), (500, same, True), (700, fraud_shift, False), (200, fraud_shift, False)]
    log_days(trained_copy, days, latency=[2.0, 2.0, 2.0, 60.0])
    configure(trained_copy, serving={"latency_budget_ms": 10})  # the example's budget: the slow day breaches it
    return trained_copy


def by_feature(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["feature"]: d for d in items}


def test_report_finds_the_drift_window_and_raises_alerts(drifting: Path) -> None:
    project = Project.load(drifting)
    report = project.monitor_report()
    assert report["model_version"] == 1 and report["predictions"] == report["rows"] == 1900 and report["labelled"] == 1000
    assert {"drift", "alerts", "quality", "performance", "system", "windows"} <= set(report)
    drift = by_feature(report["drift"])
    for entry in report["drift"]:
        assert {"feature", "test", "statistic", "p_value", "drifted"} <= set(entry)
    assert set(drift) == {*project.registry().get(1).feature_names, "score"}
    amount = drift["tx_amount"]
    assert amount["drifted"] and amount["test"] == "psi" and amount["statistic"] > 0.2, amount
    assert not drift["tx_hour"]["drifted"]

    windows = report["windows"]
    assert [w["start"][:10] for w in windows] == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    assert [w["rows"] for w in windows] == [500, 500, 700, 200]
    assert [w["drift"]["tx_amount"]["drifted"] for w in windows] == [False, False, True, True]
    assert windows[3]["drift"]["tx_amount"]["test"] == "ks"  # 200 rows: a p-value test, corrected across columns
    assert windows[3]["drift"]["tx_amount"]["p_value"] < 0.001

    quality = report["quality"]
    checks = {(i["check"], i["subject"]) for i in quality["issues"]}
    assert ("null_rate", "amount_over_customer_mean_30d") in checks and ("out_of_range", "tx_amount") in checks
    assert by_feature(quality["columns"])["amount_over_customer_mean_30d"]["null_rate"] == pytest.approx(900 / 1900)

    perf = report["performance"]
    baseline = project.registry().get(1).metrics["test"]
    assert perf["labelled"] == 1000 and perf["baseline"] == baseline and perf["metric"] == "average_precision"
    assert 0 < perf["metrics"]["average_precision"] <= 1 and perf["estimation"] == {"method": "cbpe", "calibration": "reference"}
    assert windows[0]["performance"]["status"] == "ok" and windows[2]["performance"]["status"] == "not enough data"
    assert 0 < windows[2]["performance"]["estimated"]["average_precision"] <= 1  # an estimate before any label

    system = report["system"]
    assert system["latency_ms"]["p99"] == pytest.approx(60.0) and windows[0]["latency_ms"]["p50"] == pytest.approx(2.0)
    assert windows[0]["throughput_per_s"] == pytest.approx(500 / 86_400)

    fired = {(a["rule"], a["subject"]): a for a in report["alerts"]}
    assert {("psi", "tx_amount"), ("null_rate", "amount_over_customer_mean_30d"), ("latency_p99", "p99")} <= set(fired)
    assert ("throughput_drop", "throughput") in fired and all(a["new"] for a in fired.values())
    store = project.alerts()
    assert {(a.rule, a.subject) for a in store.active()} == set(fired)
    json.dumps(report, allow_nan=False)

    again = project.monitor_report()  # the condition persists: the same alerts, not new ones
    assert all(not a["new"] and a["count"] == 2 for a in again["alerts"])
    assert len(store.active()) == len(fired)

    calm = project.monitor_report(until=DAY + timedelta(days=2))  # the two ordinary days only: drift clears
    assert not any(d["drifted"] for d in calm["drift"]), [d for d in calm["drift"] if d["drifted"]]
    resolved = {(r["rule"], r["subject"]) for r in calm["resolved_alerts"]}
    assert {("psi", "tx_amount"), ("latency_p99", "p99"), ("null_rate", "amount_over_customer_mean_30d")} <= resolved
    assert ("psi", "tx_amount") not in {(a.rule, a.subject) for a in store.active()}


def test_cli_monitor_json_windows_and_summary(drifting: Path) -> None:
    result = runner.invoke(app, ["monitor", "--json", "--window", "12h", "--project", str(drifting)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["period"]["windows"] == 8 and len(report["windows"]) == 8  # 2026-03-01 00:00 .. 03-04 12:00
    assert by_feature(report["drift"])["tx_amount"]["drifted"]
    since = runner.invoke(app, ["monitor", "--json", "--since", "2026-03-02", "--project", str(drifting)])
    assert json.loads(since.stdout)["predictions"] == 1400
    text = runner.invoke(app, ["monitor", "--project", str(drifting)])
    assert text.exit_code == 0
    assert "drift over the period" in text.stdout and "tx_amount" in text.stdout and "score" in text.stdout
    assert "alert(s)" in text.stdout and "p99" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "banana"], "--window 'banana': expected a duration"),
        (["--window", "0s"], "--window '0s': must be positive"),
        (["--since", "last tuesday"], "--since 'last tuesday': expected an ISO date or time"),
        (["--window", "1s"], "windows (at most 1,000); use a larger --window or a later --since"),
    ],
)
def test_cli_monitor_bad_options_give_one_line(drifting: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["monitor", *args, "--project", str(drifting)])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_small_or_empty_log_is_not_enough_data_never_drift(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    empty = project.monitor_report()
    assert empty["predictions"] == 0 and empty["windows"] == [] and empty["alerts"] == []
    assert all(d["status"] == "not enough data" and not d["drifted"] for d in empty["drift"])
    log_days(trained_copy, [(60, fraud_shift, True)])
    small = project.monitor_report()
    assert small["predictions"] == 60 and all(d["status"] == "not enough data" for d in small["drift"])
    assert small["performance"]["status"] == "not enough data"
    assert not [a for a in small["alerts"] if a["rule"] in ("psi", "ks", "chi2")]


def test_wrong_types_missing_and_extra_keys_are_schema_issues(trained_copy: Path) -> None:
    def broken(features: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in features.items() if k != "tx_hour"}
        return out | {"tx_amount": "12,50", "coupon": 1.0}

    log_days(trained_copy, [(150, same, False), (150, broken, False)])
    report = Project.load(trained_copy).monitor_report()
    quality = report["quality"]
    assert by_feature(quality["columns"])["tx_amount"]["type_errors"] == 150
    assert quality["schema"]["missing"] == ["tx_hour"] and quality["schema"]["extra"] == ["coupon"]
    issues = {(i["check"], i["subject"]) for i in quality["issues"]}
    assert {("schema", "tx_amount"), ("schema", "tx_hour"), ("schema", "coupon")} <= issues


def test_served_predictions_are_monitored_over_http(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    rows = pq.read_table(trained_copy / "data" / "live.parquet").slice(0, 150).to_pylist()
    token = "t"
    with (
        BackgroundServer(build_app(project, admin_token=token)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for row in rows:
            body = {
                "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
                "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
            }
            assert client.post("/v1/predict", json=body).status_code == 200
        client.post("/v1/admin/flush", headers={"Authorization": f"Bearer {token}"})
    report = project.monitor_report()
    assert report["rows"] == 150 and report["system"]["latency_ms"]["p50"] > 0
    drift = by_feature(report["drift"])
    assert drift["score"]["rows"] == 150 and drift["score"]["status"] in ("ok", "drift")
    assert report["quality"]["schema"]["missing"] == []


# -- pure parts: CBPE, performance windows, rules, categorical quality -----------------------------------------


def test_cbpe_estimate_is_close_to_the_realised_metrics_on_calibrated_scores() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(0.4, 6.0, size=60_000)
    y = (rng.uniform(size=p.size) < p).astype(np.int64)
    estimated = estimate_binary(p, 0.3)
    realised = binary_metrics(y, p, 0.3).metrics
    for name in ("roc_auc", "average_precision", "precision", "recall", "f1", "brier", "log_loss"):
        assert estimated[name] == pytest.approx(realised[name], abs=0.015), name
    shifted = estimate_binary(np.clip(p * 3, 0, 1), 0.3)  # more confident scores: higher expected precision
    assert shifted["precision"] is not None and estimated["precision"] is not None
    assert shifted["precision"] > estimated["precision"]
    assert estimate_binary(np.zeros(0), 0.5)["roc_auc"] is None


def test_performance_per_window_and_metric_drop() -> None:
    rng = np.random.default_rng(6)
    n = 4_000
    scores = rng.uniform(size=n)
    labels = (rng.uniform(size=n) < scores).astype(float)
    labels[3_000:] = np.nan  # the last window's labels have not arrived
    window = np.repeat(np.arange(4), 1_000)
    baseline = {"average_precision": 0.95, "roc_auc": 0.9}
    overall, windows = performance("binary", scores, labels, window, 4, baseline, 0.5, 100, None, "no map")
    assert overall["labelled"] == 3_000 and [w["status"] for w in windows] == ["ok", "ok", "ok", "not enough data"]
    assert overall["estimation_skipped"] == "no map" and "estimated" not in windows[0]
    ap = overall["metrics"]["average_precision"]
    assert overall["drop"]["average_precision"] == pytest.approx((0.95 - ap) / 0.95)
    breaches, checked = metric_drop_rule(overall, "average_precision", 0.05)
    assert [b.rule for b in breaches] == ["metric_drop"] and checked == {("metric_drop", "average_precision")}
    assert breaches[0].severity == "critical" and "worse than the training" in breaches[0].message
    assert metric_drop_rule(overall, "average_precision", 0.5) == ([], checked)


def test_throughput_rule_against_the_median_of_earlier_windows() -> None:
    def windows(*rates: float | None) -> list[dict[str, Any]]:
        return [{"throughput_per_s": r} for r in rates]

    breaches, checked = throughput_rule(windows(10.0, 12.0, 11.0, 7.0), 0.2)
    assert breaches and breaches[0].value == pytest.approx(4.0 / 11.0) and checked == {("throughput_drop", "throughput")}
    assert throughput_rule(windows(10.0, 12.0, 11.0, 9.5), 0.2) == ([], checked)
    assert throughput_rule(windows(7.0), 0.2) == ([], set())  # nothing to compare with


def test_unseen_categories_are_flagged_with_examples() -> None:
    strings = {"merchant": np.array(["shop", "bar", "shop", None] * 500, dtype=object)}
    reference = reference_stats(np.zeros((2_000, 0)), [], np.linspace(0, 1, 100), bins=10, strings=strings)
    references = column_references(reference)
    values = pa.chunked_array([pa.array(["shop"] * 300 + ["casino"] * 40 + ["kiosk"] * 10 + [None] * 50)])
    live = LiveData(
        ts_us=np.arange(400, dtype=np.int64),
        score=np.linspace(0, 1, 400),
        label=np.full(400, np.nan),
        latency_ms=np.ones(400),
        numeric={},
        categorical={"merchant": values},
    )
    summaries = summarise(references, live, np.zeros(400, dtype=np.int64), 1)
    columns, issues, _ = column_quality(summaries, references, live, Quality())
    merchant = by_feature(columns)["merchant"]
    assert merchant["unseen"] == pytest.approx(50 / 350) and merchant["unseen_examples"] == ["casino", "kiosk"]
    assert [(i.check, i.subject) for i in issues] == [("unseen_categories", "merchant")]


def test_apply_resolves_only_the_pairs_the_rules_checked(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    store.fire("canary_error_rate", "v2", "guardrail")  # another component's alert: never touched by the monitor
    store.fire("ks", "tx_amount", "the column was tested with KS last time")
    checked = {("ks", "tx_amount"), ("psi", "tx_amount")}
    fired, resolved = apply(store, [Breach("psi", "tx_amount", "drift", 0.4, 0.2)], checked)
    assert [(f["rule"], f["new"]) for f in fired] == [("psi", True)] and resolved == [{"rule": "ks", "subject": "tx_amount"}]
    assert {(a.rule, a.subject) for a in store.active()} == {("canary_error_rate", "v2"), ("psi", "tx_amount")}
