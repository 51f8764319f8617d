"""``loopml demo``: the whole loop, end to end, on the simulated card-fraud world.

simulate history (with live days held back) -> ingest and validate -> build
point-in-time features -> train, evaluate, register, gate -> materialize the
online store -> serve over real HTTP on a free loopback port -> replay the
held-back live transactions as requests -> send their labels as feedback ->
push each replayed transaction to the online store as the event stream would, so the next
request's windows include it -> monitor drift (PSI) over the prediction log -> write a summary and a report.

Each step calls the same :class:`~loopml.project.Project` methods the CLI
commands use, so the demo is also an end-to-end check of the CLI's plumbing.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from sklearn.metrics import average_precision_score, roc_auc_score

from loopml.errors import LoopmlError
from loopml.features.push import push_events
from loopml.project import Project, materialize_summary
from loopml.scaffold import init_example
from loopml.serve.runner import BackgroundServer, build_app

ADMIN_TOKEN = "demo-admin-token"


@dataclass
class _Clock:
    console: Console
    started: float = 0.0

    def step(self, text: str) -> None:
        self.started = self.started or time.perf_counter()
        self.console.print(f"[{time.perf_counter() - self.started:6.1f}s] {text}", highlight=False)


def _replay(
    url: str, live: list[dict[str, Any]], console: Console, push: Callable[[dict[str, Any]], object]
) -> tuple[list[str], list[float], list[float]]:
    """Send each live transaction to ``/v1/predict``, then ``push`` it to the online store (the event stream)."""
    ids, scores, latencies = [], [], []
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for row in live:
            body = {
                "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
                "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
                "request_id": f"tx-{row['transaction_id']}",
            }
            started = time.perf_counter()
            response = client.post("/v1/predict", json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise LoopmlError(f"demo: /v1/predict answered {response.status_code}: {response.text[:200]}")
            ids.append(response.json()["request_id"])
            scores.append(response.json()["score"])
            push(row)  # the payment happened: later requests see it in their windows
        for row, request_id in zip(live, ids, strict=True):
            response = client.post("/v1/feedback", json={"request_id": request_id, "label": int(row["tx_fraud"])})
            if response.status_code != 202:
                raise LoopmlError(f"demo: /v1/feedback answered {response.status_code}: {response.text[:200]}")
        client.post("/v1/admin/flush", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    return ids, scores, latencies


def run_demo(
    workdir: Path, days: int = 90, requests: int = 2000, live_days: int = 14, console: Console | None = None
) -> dict[str, Any]:
    """Run the story in ``workdir`` (recreated); return the summary that is also written to ``summary.json``."""
    console = console or Console(stderr=True)
    clock = _Clock(console)
    if workdir.exists():
        shutil.rmtree(workdir)
    clock.step(f"simulating {days} days of card payments ({live_days} held back as live traffic)")
    history_rows = init_example(workdir, days=days, seed=7, drift_day=days - live_days // 2, live_days=live_days)
    project = Project.load(workdir)

    clock.step("ingesting and validating")
    ingested = project.ingest()
    clock.step(f"snapshot {ingested.snapshot}: {ingested.rows_valid:,} valid rows, {ingested.rows_quarantined:,} quarantined")
    built = project.build_features()
    clock.step(f"built {len(built.features)} point-in-time features for {built.rows:,} events in {built.seconds:.1f}s")
    trained = project.train()
    test = trained.metrics["test"]
    clock.step(
        f"trained model version {trained.model_version}: test average precision {test['average_precision']:.3f}, "
        f"ROC AUC {test['roc_auc']:.3f}; promoted: {trained.promoted}"
    )
    materialized = project.materialize()
    clock.step(f"materialized online features: {materialize_summary(materialized)}")

    live_table = pq.read_table(workdir / "data" / "live.parquet")
    live = live_table.slice(0, min(requests, live_table.num_rows)).to_pylist()
    with BackgroundServer(build_app(project, admin_token=ADMIN_TOKEN)) as server:
        clock.step(f"serving on {server.url}; replaying {len(live):,} live transactions")
        store = project.online_store()
        try:
            _, scores, latencies = _replay(
                server.url, live, console, lambda row: push_events(project.spec, store, "transactions", [row])
            )
        finally:
            store.close()
    labels = np.array([int(r["tx_fraud"]) for r in live])
    report = project.monitor_report()
    clock.step(f"prediction log: {report['predictions']:,} predictions, {report['labelled']:,} labelled")

    live_metrics: dict[str, float | None] = {"roc_auc": None, "average_precision": None}
    if 0 < labels.sum() < len(labels):
        live_metrics = {
            "roc_auc": float(roc_auc_score(labels, scores)),
            "average_precision": float(average_precision_score(labels, scores)),
        }
    score_psi = next((d["statistic"] for d in report["drift"] if d["feature"] == "score"), None)
    summary = {
        "history transactions": history_rows,
        "snapshot": ingested.snapshot,
        "features": len(built.features),
        "model version": trained.model_version,
        "test average_precision": test["average_precision"],
        "test roc_auc": test["roc_auc"],
        "live requests": len(live),
        "live p50 latency ms (client)": float(np.percentile(latencies, 50)),
        "live p99 latency ms (client)": float(np.percentile(latencies, 99)),
        "live average_precision": live_metrics["average_precision"],
        "score PSI (live vs test)": score_psi,
        "drifted features": sum(1 for d in report["drift"] if d["drifted"]),
        "alerts": len(report["alerts"]),
    }
    result = {"summary": summary, "train": trained.to_json(), "ingest": ingested.to_json(), "monitor": report}
    (workdir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    report_path = workdir / "report.html"
    report_path.write_text(_report_html(summary, report))
    summary["report"] = str(report_path)
    clock.step(f"done; report at {report_path}")
    return result


def _report_html(summary: dict[str, Any], monitor: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{fmt(v)}</td></tr>" for k, v in summary.items())
    drift = "".join(
        f"<tr><td>{html.escape(d['feature'])}</td><td>{fmt(d['statistic'])}</td><td>{d['rows']}</td><td>{d['status']}</td></tr>"
        for d in monitor["drift"]
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>loopml demo</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
        "text-align:left}table{border-collapse:collapse}</style></head><body><h1>loopml demo</h1>"
        f"<table>{rows}</table><h2>Drift (PSI against the training reference)</h2>"
        f"<table><tr><th>feature</th><th>PSI</th><th>rows</th><th>status</th></tr>{drift}</table></body></html>"
    )
