"""``loopml demo``: the whole loop, end to end, on the simulated card-fraud world.

The story (../shared/contract.md): simulate history with live days held back
-> ingest and validate -> build point-in-time features -> train, evaluate,
register, gate -> materialize the online store -> serve over real HTTP on a
free loopback port -> replay the live days as traffic, day by day, in time
order (``/v1/predict/batch``, then each scored payment is pushed to the
online store, as the event stream would, so later requests see it in their
windows) -> each day's labels arrive a day later (``/v1/feedback/batch``,
the chargeback file) -> part-way through, a new fraud pattern appears (card
testing: bursts of tiny payments at new terminals) -> after each day
``loopml monitor`` runs over that day -> when the retraining triggers fire,
the closed loop (``loopml retrain``) runs in the background while traffic
keeps flowing: ingest the payments that landed in the warehouse, build
features, train, gate against the champion, canary through the live service,
promote or roll back -> the remaining days are served by the result -> a
summary and an HTML report with plots.

Each step calls the same :class:`~loopml.project.Project` methods the CLI
commands use, so the demo is also an end-to-end check of the CLI's plumbing.
The demo's world is smaller than the default one, and its labels arrive after
one day instead of seven, so the story fits in a few minutes on two cores;
both are set in the demo project's ``loopml.yaml``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from ruamel.yaml import YAML
from sklearn.metrics import average_precision_score, roc_auc_score

from loopml.errors import LoopmlError
from loopml.features.push import push_events
from loopml.loop.retrain import LoopRun, LoopStore
from loopml.project import Project, materialize_summary
from loopml.scaffold import init_example
from loopml.server import BackgroundServer, build_app

ADMIN_TOKEN = "demo-admin-token"
BATCH = 250

#: the demo project's settings on top of the example's loopml.yaml (see the module doc)
DEMO_SETTINGS: dict[str, Any] = {
    "label": {"delay": "1d"},
    # short splits so a retrained model has seen the new pattern a few days after it appears
    "split": {"valid_days": 1, "test_days": 1, "gap": "0s"},
    "evaluation": {"bootstrap": 50},
    "monitoring": {"window": "1d"},
    "rollout": {
        # a model retrained for a new fraud pattern is meant to score differently: the score-shift
        # guardrail is loosened, errors, latency and the labelled metric still guard the canary
        "canary": {"steps": [0.1, 0.5, 1.0], "min_requests": 150, "max_score_psi": 2.0},
    },
    # retrain when the alarms ring, and whenever two days of new payments have landed (the gate decides)
    "retraining": {
        "triggers": ["drift", "performance", "volume"],
        "drift_columns": 2,
        "min_new_rows": 8000,
        "canary_timeout": "3m",
    },
    "gate": {"min_improvement": 0.02},
}


def configure(folder: Path, updates: dict[str, Any]) -> None:
    """Merge ``updates`` into ``folder/loopml.yaml``, section by section (comments kept)."""
    yaml = YAML(typ="rt")
    path = folder / "loopml.yaml"
    doc = yaml.load(path.read_text())
    for section, values in updates.items():
        if isinstance(values, dict) and isinstance(doc.get(section), dict):
            for key, value in values.items():
                doc[section][key] = value
        else:
            doc[section] = values
    with path.open("w") as fh:
        yaml.dump(doc, fh)


@dataclass
class _Clock:
    console: Console
    started: float = 0.0

    def step(self, text: str) -> None:
        self.started = self.started or time.perf_counter()
        self.console.print(f"[{time.perf_counter() - self.started:6.1f}s] {text}", highlight=False)


@dataclass
class _Day:
    day: str
    requests: int = 0
    fraud: int = 0
    new_pattern: int = 0
    versions: dict[int, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    monitor: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        y, s = np.array(self.labels), np.array(self.scores)
        both = 0 < y.sum() < len(y)
        return {
            "day": self.day,
            "requests": self.requests,
            "fraud": self.fraud,
            "new-pattern fraud": self.new_pattern,
            "versions": {str(k): v for k, v in sorted(self.versions.items())},
            "average_precision": float(average_precision_score(y, s)) if both else None,
            "roc_auc": float(roc_auc_score(y, s)) if both else None,
            "score_psi": self.monitor.get("score_psi"),
            "drifted": self.monitor.get("drifted", []),
            "alerts": self.monitor.get("alerts", []),
        }


class _Loop:
    """``loopml retrain`` on a background thread (it waits for a canary that needs the traffic the demo keeps sending)."""

    def __init__(self, project: Project, url: str) -> None:
        self.project, self.url = project, url
        self.thread: threading.Thread | None = None
        self.runs: list[LoopRun] = []
        self.reported = 0
        self.error: str | None = None

    def take_events(self, day: str) -> list[dict[str, Any]]:
        """Runs that finished since the last call, as report events (runs where no trigger fired are left out)."""
        new, self.reported = self.runs[self.reported :], len(self.runs)
        return [
            {"day": day, "event": f"retraining: {', '.join(_fired(r))} -> {r.outcome}"}
            for r in new
            if r.status != "not triggered"
        ]

    def wait_for_canary(self, timeout: float = 600) -> None:
        """Block until the running loop is done or has reached its canary step (which needs live traffic)."""
        store = LoopStore(self.project.layout.loop)
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            run = store.unfinished()
            if run is not None and any(step.name == "canary" for step in run.steps):
                return
            time.sleep(0.2)

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        def go() -> None:
            try:
                self.runs.append(self.project.retrain(service_url=self.url, admin_token=ADMIN_TOKEN))
            except LoopmlError as exc:
                self.error = str(exc)

        self.thread = threading.Thread(target=go, name="loopml-demo-retrain", daemon=True)
        self.thread.start()


def _fired(run: LoopRun) -> list[str]:
    return [t["trigger"] for t in run.triggers if t["fired"]]


def _body(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "entities": {"customer_id": row["customer_id"], "terminal_id": row["terminal_id"]},
        "features": {"tx_amount": row["tx_amount"], "tx_datetime": row["tx_datetime"].isoformat()},
        "request_id": f"tx-{row['transaction_id']}",
    }


def _post(client: httpx.Client, path: str, body: dict[str, Any], ok: int) -> dict[str, Any]:
    response = client.post(path, json=body)
    if response.status_code != ok:
        raise LoopmlError(f"demo: {path} answered {response.status_code}: {response.text[:200]}")
    data: dict[str, Any] = response.json()
    return data


def _land(project: Project, rows: list[dict[str, Any]]) -> None:
    """The day's payments land in the warehouse (the source file the next ingest reads)."""
    path = project.layout.root / "data" / "transactions.parquet"
    history = pq.read_table(path)
    table = pa.Table.from_pylist(rows, schema=history.schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.concat_tables([history, table]), tmp)
    tmp.replace(path)


def _monitor(project: Project, start: datetime) -> dict[str, Any]:
    local = start.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)  # payment times are UTC, the log's clock local
    report = project.monitor_report(since=local, until=local + timedelta(days=1))
    drift = report.get("drift", [])
    return {
        "score_psi": next((d["statistics"].get("psi") for d in drift if d["feature"] == "score"), None),
        "drifted": sorted(d["feature"] for d in drift if d.get("drifted")),
        "alerts": sorted({a["rule"] for a in report.get("alerts", [])}),
    }


def run_demo(
    workdir: Path,
    days: int = 60,
    live_days: int = 16,
    drift_after: int = 4,
    customers: int = 2000,
    terminals: int = 4000,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the story in ``workdir`` (recreated); return the summary that is also written to ``summary.json``."""
    console = console or Console(stderr=True)
    clock = _Clock(console)
    if workdir.exists():
        shutil.rmtree(workdir)
    if not 0 < drift_after < live_days:
        raise LoopmlError(f"demo: the new fraud pattern must start inside the {live_days} live days, not on day {drift_after}")
    clock.step(f"simulating {days} days of card payments ({live_days} held back as live traffic)")
    drift_day = days - live_days + drift_after
    history_rows = init_example(
        workdir, days=days, seed=7, drift_day=drift_day, live_days=live_days, customers=customers, terminals=terminals
    )
    configure(workdir, DEMO_SETTINGS)
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
    clock.step(f"materialized online features: {materialize_summary(materialized)['rows']}")

    live = pq.read_table(workdir / "data" / "live.parquet")
    live = live.sort_by([("tx_datetime", "ascending"), ("transaction_id", "ascending")])
    first = live.column("tx_datetime")[0].as_py().replace(hour=0, minute=0, second=0, microsecond=0)
    day_starts = [first + timedelta(days=d) for d in range(live_days)]
    new_pattern_start = day_starts[drift_after]
    days_json: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = [{"day": new_pattern_start.date().isoformat(), "event": "new fraud pattern starts"}]
    latencies: list[float] = []
    pending: list[dict[str, Any]] = []

    with (
        BackgroundServer(build_app(project, admin_token=ADMIN_TOKEN)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        clock.step(f"serving on {server.url}; replaying {live.num_rows:,} live payments over {live_days} days")
        loop = _Loop(project, server.url)
        store = project.online_store()
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        try:
            for start in day_starts:
                mask = pc.and_(
                    pc.greater_equal(live["tx_datetime"], pa.scalar(start, pa.timestamp("us"))),
                    pc.less(live["tx_datetime"], pa.scalar(start + timedelta(days=1), pa.timestamp("us"))),
                )
                rows = live.filter(mask).to_pylist()
                day = _Day(day=start.date().isoformat())
                for i in range(0, len(rows), BATCH):
                    chunk = rows[i : i + BATCH]
                    began = time.perf_counter()
                    predictions = _post(client, "/v1/predict/batch", {"instances": [_body(r) for r in chunk]}, 200)["predictions"]
                    latencies.append((time.perf_counter() - began) * 1000 / len(chunk))
                    for row, p in zip(chunk, predictions, strict=True):
                        day.scores.append(p["score"])
                        day.labels.append(int(row["tx_fraud"]))
                        day.versions[p["model_version"]] = day.versions.get(p["model_version"], 0) + 1
                    push_events(project.spec, store, "transactions", chunk)
                day.requests = len(rows)
                day.fraud = sum(day.labels)
                day.new_pattern = sum(1 for r in rows if r["tx_fraud_scenario"] == 4)
                # yesterday's labels arrive (the chargeback file), and with them yesterday's payments land in the
                # warehouse the next ingest reads
                if pending:
                    labels = [{"request_id": f"tx-{r['transaction_id']}", "label": int(r["tx_fraud"])} for r in pending]
                    _post(client, "/v1/feedback/batch", {"items": labels}, 202)
                    _land(project, pending)
                pending = rows
                client.post("/v1/admin/flush", headers=auth)
                day.monitor = _monitor(project, start)
                row = day.row()
                days_json.append(row)
                ap = row["average_precision"]
                clock.step(
                    f"day {day.day}: {day.requests:,} payments, {day.fraud} fraud ({day.new_pattern} new pattern), "
                    f"AP {'-' if ap is None else f'{ap:.3f}'}, served by {row['versions']}, "
                    f"drifted: {', '.join(day.monitor['drifted'][:4]) or 'none'}"
                )
                if loop.busy and loop.thread is not None and client.get("/v1/models").json()["policy"] != "canary":
                    loop.thread.join(timeout=60)  # the canary has decided: let the loop record it before the next check
                if not loop.busy:
                    events.extend(loop.take_events(day.day))
                    if start < day_starts[-2]:  # a canary needs days of traffic left
                        loop.start()
                        loop.wait_for_canary()  # retraining takes "a while": the next day's traffic waits for it
            if loop.busy:  # the traffic ended before the canary did: stop it rather than wait for its timeout
                client.post("/v1/admin/rollback", headers=auth)
                events.append({"day": days_json[-1]["day"], "event": "replay over: the canary in progress was stopped"})
            if loop.thread is not None:
                loop.thread.join(timeout=600)
            events.extend(loop.take_events(days_json[-1]["day"]))
        finally:
            store.close()
        models = client.get("/v1/models").json()

    before = [d["average_precision"] for d in days_json[:drift_after] if d["average_precision"] is not None]
    hit = [d for d in days_json[drift_after:] if d["versions"].get("1")]
    after = [d for d in days_json if set(d["versions"]) - {"1"} and d["versions"].get("1", 0) == 0]
    triggered = [r for r in loop.runs if r.status != "not triggered"]
    summary = {
        "history transactions": history_rows,
        "features": len(built.features),
        "model v1 test average_precision": test["average_precision"],
        "live payments": sum(d["requests"] for d in days_json),
        "live p50 latency ms per row (batch)": float(np.percentile(latencies, 50)),
        "AP before the new pattern (v1)": float(np.mean(before)) if before else None,
        "AP under the new pattern, v1": _mean([d["average_precision"] for d in hit]),
        "drift detected on": next(
            (d["day"] for d in days_json if len(d["drifted"]) > 0 and d["day"] >= new_pattern_start.date().isoformat()), None
        ),
        "retraining runs": len(triggered),
        "loop outcome": triggered[-1].outcome if triggered else "no trigger fired",
        "champion now": models.get("live_version"),
        "AP after promotion": _mean([d["average_precision"] for d in after]),
    }
    result = {"summary": summary, "days": days_json, "events": events, "train": trained.to_json(), "ingest": ingested.to_json()}
    result["loop"] = [r.to_json() for r in loop.runs]
    if loop.error:
        result["loop_error"] = loop.error
    (workdir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    report_path = workdir / "report.html"
    report_path.write_text(_report_html(summary, days_json, events, new_pattern_start.date().isoformat()))
    summary["report"] = str(report_path)
    clock.step(f"done; report at {report_path}")
    return result


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return float(np.mean(numbers)) if numbers else None


def _plot(days: list[dict[str, Any]], pattern_day: str) -> str:
    """AP per day, the score's PSI per day and the share served by each version, as one PNG (base64)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(days)))
    labels = [d["day"][5:] for d in days]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ap = [np.nan if d["average_precision"] is None else d["average_precision"] for d in days]
    axes[0].plot(x, ap, marker="o", color="#1f77b4")
    axes[0].set_ylabel("average precision (live)")
    psi = [np.nan if d["score_psi"] is None else d["score_psi"] for d in days]
    axes[1].bar(x, psi, color="#ff7f0e")
    axes[1].axhline(0.2, color="#888", linestyle="--", linewidth=1)
    axes[1].set_ylabel("score PSI vs training")
    versions = sorted({v for d in days for v in d["versions"]}, key=int)
    bottom = np.zeros(len(days))
    for v in versions:
        share = np.array([d["versions"].get(v, 0) / max(d["requests"], 1) for d in days])
        axes[2].bar(x, share, bottom=bottom, label=f"v{v}")
        bottom += share
    axes[2].set_ylabel("traffic share")
    axes[2].legend(loc="upper left")
    for ax in axes:
        if pattern_day in [d["day"] for d in days]:
            ax.axvline([d["day"] for d in days].index(pattern_day) - 0.5, color="#d62728", linestyle=":", linewidth=1.5)
    axes[2].set_xticks(x, labels, rotation=45)
    axes[0].set_title("new fraud pattern (red dotted line) -> drift -> retrain -> canary -> promotion")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _report_html(summary: dict[str, Any], days: list[dict[str, Any]], events: list[dict[str, Any]], pattern_day: str) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{fmt(v)}</td></tr>" for k, v in summary.items())
    per_day = "".join(
        "<tr>"
        + "".join(
            f"<td>{fmt(d[k])}</td>" for k in ("day", "requests", "fraud", "new-pattern fraud", "average_precision", "score_psi")
        )
        + f"<td>{html.escape(json.dumps(d['versions']))}</td><td>{html.escape(', '.join(d['drifted'][:6]))}</td>"
        + f"<td>{html.escape(', '.join(d['alerts']))}</td></tr>"
        for d in days
    )
    timeline = "".join(f"<tr><td>{html.escape(e['day'])}</td><td>{html.escape(e['event'])}</td></tr>" for e in events)
    image = _plot(days, pattern_day)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>loopml demo</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
        "text-align:left}table{border-collapse:collapse;margin-bottom:1.5rem}</style></head><body><h1>loopml demo</h1>"
        f"<table>{rows}</table><h2>The story, day by day</h2><img alt='live metrics per day' src='data:image/png;base64,{image}'>"
        "<h2>Events</h2><table><tr><th>day</th><th>event</th></tr>"
        f"{timeline}</table><h2>Per day</h2><table><tr><th>day</th><th>payments</th><th>fraud</th><th>new pattern</th>"
        "<th>average precision</th><th>score PSI</th><th>served by (version: requests)</th><th>drifted</th><th>alerts</th></tr>"
        f"{per_day}</table></body></html>"
    )
