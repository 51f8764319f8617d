"""The dashboard at ``/ui``: its JSON (``/v1/dashboard``) and the page drawn by a real headless Chromium.

The served project gets a few hundred real predictions and their labels over
HTTP and one alert, then Chromium (Debian ``chromium``, installed by ``make
test``) loads ``/ui`` and dumps the DOM its script built: every chart must be
an SVG with data marks, the tables must list the alert and version 1. A fresh
server shows "no data yet" in every chart; a broken prediction log shows the
error in the sections that need it while the rest still renders.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, precision_score, r2_score, roc_auc_score

from loopml.monitor.dashboard.windows import bucket_width_us, window_metrics, windows_by_count
from loopml.project import Project
from loopml.server import BackgroundServer, build_app
from served_fraud import add_version, body, live_rows

TOKEN = "dashboard-token"
ROWS = 400
CHARTS = ("traffic", "traffic_observed", "drift", "performance_average_precision", "performance_roc_auc", "latency", "throughput")
SECTIONS = ["overview", "rollout", "drift", "performance", "system", "alerts", "versions", "runs"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def serve(folder: Path) -> BackgroundServer:
    return BackgroundServer(build_app(Project.load(folder), admin_token=TOKEN))


@pytest.fixture(scope="module")
def busy(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    """A served project with ROWS predictions, all labelled, and one active alert."""
    folder = tmp_path_factory.mktemp("dashboard") / "project"
    shutil.copytree(trained_project, folder)
    Project.load(folder).alerts().fire(
        "psi", "tx_amount", "PSI of tx_amount 0.31 over 0.2", value=0.31, threshold=0.2, severity="critical"
    )
    rows = pq.read_table(folder / "data" / "live.parquet").slice(0, ROWS).to_pylist()
    with serve(folder) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        for start in range(0, ROWS, 100):
            batch = [body(r, request_id=f"r{start + i}") for i, r in enumerate(rows[start : start + 100])]
            assert client.post("/v1/predict/batch", json={"instances": batch}).status_code == 200
        for i, row in enumerate(rows):
            assert client.post("/v1/feedback", json={"request_id": f"r{i}", "label": row["tx_fraud"]}).status_code == 202
        flushed = client.post("/v1/admin/flush", headers={"Authorization": f"Bearer {TOKEN}"})
        assert flushed.status_code == 200, flushed.text
        yield client, srv.url


def sections(client: httpx.Client) -> dict[str, dict[str, Any]]:
    r = client.get("/v1/dashboard")
    assert r.status_code == 200, r.text
    data = r.json()
    assert [s["id"] for s in data["sections"]] == SECTIONS
    return {s["id"]: s for s in data["sections"]}


def charts(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in section.get("charts", [])}


def points(chart: dict[str, Any]) -> list[Any]:
    return [p for s in chart["series"] for p in s["points"] if p[1] is not None]


def table_rows(section: dict[str, Any], table_id: str) -> list[list[Any]]:
    rows: list[list[Any]] = next(t for t in section["tables"] if t["id"] == table_id)["rows"]
    return rows


# -- the JSON (no browser) ------------------------------------------------------------------------------


def test_dashboard_json_reports_traffic_drift_performance_latency_alerts_and_versions(busy: tuple[httpx.Client, str]) -> None:
    client, _ = busy
    got = sections(client)
    assert not [s["error"] for s in got.values() if "error" in s]
    overview = dict(got["overview"]["summary"])
    assert overview["predictions logged"] == ROWS and overview["labelled"] == ROWS and overview["live version"] == 1

    traffic = charts(got["rollout"])["traffic"]
    assert traffic["series"][0]["points"] == [["champion (v1)", 100.0]]
    assert table_rows(got["rollout"], "variants")[0][:4] == ["champion", "champion", 1, 1.0]

    # ROWS rows at monitoring.min_rows = 100: four equal-count windows, each with a PSI per column
    drift = charts(got["drift"])["drift"]
    assert drift["lines"][0]["y"] == 0.2 and 0 < len(drift["series"]) <= 8
    assert all(len([p for p in s["points"] if p[1] is not None]) == 4 for s in drift["series"])
    columns = {r[0]: r for r in table_rows(got["drift"], "drift_columns")}
    assert {"tx_amount", "score"} <= set(columns)
    calendar = {"tx_hour", "tx_is_night", "tx_is_weekend"} & set(columns)
    assert all(r[5] in ("ok", "drift") and r[8] == ROWS for name, r in columns.items() if name not in calendar)
    # the rows span less than a week: weekend shares differ from the week-mixed reference by design
    assert calendar and all(columns[name][5] in ("ok", "drift", "seasonal") for name in calendar)
    assert "tx_is_weekend" not in columns or columns["tx_is_weekend"][5] == "seasonal"

    performance = charts(got["performance"])
    ap = performance["performance_average_precision"]
    assert ap["lines"] and 0 < ap["lines"][0]["y"] <= 1  # the training baseline
    realised = [p[1] for p in ap["series"][0]["points"]]
    assert len(realised) == 4 and all(v is None or 0 <= v <= 1 for v in realised) and any(v is not None for v in realised)

    latency = charts(got["system"])["latency"]
    assert [s["name"] for s in latency["series"]] == ["p50", "p95", "p99"] and points(latency)
    p50, p99 = latency["series"][0]["points"], latency["series"][2]["points"]
    assert all(a[1] <= b[1] for a, b in zip(p50, p99, strict=True) if a[1] is not None)
    throughput = charts(got["system"])["throughput"]
    width_s = throughput["bar_width"] / 1000
    assert sum(p[1] * width_s for p in throughput["series"][0]["points"]) == pytest.approx(ROWS)

    alerts = table_rows(got["alerts"], "alerts")
    assert [(a[1], a[2], a[3]) for a in alerts] == [("critical", "psi", "tx_amount")]
    assert 1 in [v[0] for v in table_rows(got["versions"], "versions")]
    runs = table_rows(got["runs"], "runs")
    assert runs and runs[0][2] == "finished" and runs[0][4] == 1


def test_dashboard_json_shows_a_canary_champion_and_challenger(trained_copy: Path) -> None:
    project = Project.load(trained_copy)
    assert add_version(project.registry(), "challenger") == 2  # the champion's artifact again, behind the challenger alias
    rows = live_rows(trained_copy, 200)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve(trained_copy) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        canary = {"policy": "canary", "canary": {"steps": [0.25, 1.0], "min_requests": 10_000}}
        assert client.post("/v1/admin/rollout", json=canary, headers=auth).status_code == 200
        batch = [body(r, request_id=f"c{i}") for i, r in enumerate(rows)]
        variants = [p["variant"] for p in client.post("/v1/predict/batch", json={"instances": batch}).json()["predictions"]]
        assert client.post("/v1/admin/flush", headers=auth).status_code == 200
        got = sections(client)
    assert dict(got["rollout"]["summary"])["canary step"] == "1 of 2 (25% of traffic)"
    split = charts(got["rollout"])["traffic"]["series"][0]["points"]
    assert split == [["champion (v1)", 75.0], ["challenger (v2)", 25.0]]
    table = {r[0]: r for r in table_rows(got["rollout"], "variants")}
    assert table["challenger"][1:4] == ["challenger", 2, 0.25] and table["challenger"][4] == variants.count("challenger") > 0
    assert table["champion"][4] == variants.count("champion") > 0
    observed = charts(got["rollout"])["traffic_observed"]
    assert {s["name"] for s in observed["series"]} == {"champion", "challenger"}
    newest = table_rows(got["rollout"], "rollout_events")[0]
    assert (newest[1], newest[3]) == ("policy", "canary")
    versions = {v[0]: v[1] for v in table_rows(got["versions"], "versions")}
    assert versions == {2: ["challenger"], 1: ["champion"]}


def test_window_and_bucket_choices() -> None:
    window, n = windows_by_count(450, 100, 48)
    assert n == 4 and window[0] == 0 and window[-1] == 3 and min(list(window).count(w) for w in range(4)) >= 100
    assert windows_by_count(50, 100, 48)[1] == 1  # too few rows: one window, reported as not enough data
    assert windows_by_count(10**6, 100, 48)[1] == 48  # capped
    assert windows_by_count(0, 100, 48)[1] == 0
    assert bucket_width_us(3_600_000_000, 48) == 120_000_000  # one hour in 2-minute buckets
    assert bucket_width_us(0, 48) == 10_000


def test_window_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(500) < 0.1).astype(float)
    scores = np.asarray(np.round(0.3 * y + rng.random(500) * 0.7, 2), dtype=np.float64)  # rounded: many ties
    names = ["roc_auc", "average_precision", "log_loss", "brier", "precision"]
    got = window_metrics("binary", names, y, scores, 0.5)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert got["average_precision"] == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    assert got["log_loss"] == pytest.approx(log_loss(y, scores), abs=1e-12)
    assert got["brier"] == pytest.approx(brier_score_loss(y, scores), abs=1e-12)
    assert got["precision"] == pytest.approx(precision_score(y, scores >= 0.5), abs=1e-12)
    # a window without a positive: the ranking metrics are undefined, not 0
    assert window_metrics("binary", ["roc_auc", "average_precision"], np.zeros(50), scores[:50], 0.5) == {
        "roc_auc": None,
        "average_precision": None,
    }
    target = rng.normal(size=200)
    predicted = target + rng.normal(scale=0.5, size=200)
    regression = window_metrics("regression", ["rmse", "mae", "r2"], target, predicted, 0.5)
    assert regression["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted - target) ** 2))))
    assert regression["mae"] == pytest.approx(float(np.mean(np.abs(predicted - target))))
    assert regression["r2"] == pytest.approx(r2_score(target, predicted))


# -- the page in headless Chromium ---------------------------------------------------------------------


@dataclass
class Dom(HTMLParser):
    """What the dumped DOM holds: data marks per chart, empty charts, table body rows, section errors."""

    marks: dict[str, list[str]] = field(default_factory=dict)
    empty: dict[str, bool] = field(default_factory=dict)
    rows: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    chart_text: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()
        self._chart: str | None = None
        self._table: str | None = None
        self._section: str | None = None
        self._row: list[str] | None = None
        self._body = False
        self._error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("data-section")
        elif tag == "svg" and a.get("data-chart"):
            self._chart = str(a["data-chart"])
            self.marks[self._chart] = []
            self.empty[self._chart] = a.get("data-empty") == "true"
        elif self._chart and a.get("data-mark"):
            self.marks[self._chart].append(str(a["data-mark"]))
        elif tag == "table" and a.get("id"):
            self._table = str(a["id"])
            self.rows[self._table] = []
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._table and self._body:
            self._row = []
        elif tag == "p" and "data-error" in a:
            self._error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        elif tag == "table":
            self._table = None
        elif tag == "tbody":
            self._body = False
        elif tag == "tr" and self._table and self._row is not None:
            self.rows[self._table].append(" | ".join(self._row))
            self._row = None
        elif tag == "p":
            self._error = False

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self._row.append(data.strip())
        if self._chart:
            self.chart_text[self._chart] = self.chart_text.get(self._chart, "") + data
        if self._error and self._section:
            self.errors[self._section] = self.errors.get(self._section, "") + data


def browse(url: str, tmp_path: Path) -> Dom:
    """Load ``url`` in headless Chromium, let its script fetch and draw, and parse the resulting DOM."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (make test installs the Debian chromium package)")
    command = [
        binary,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-loaded="true"' in done.stdout, f"the page did not load its data:\n{done.stdout[-3000:]}"
    dom = Dom()
    dom.feed(done.stdout)
    return dom


def test_chromium_draws_every_chart_with_data_and_the_tables(busy: tuple[httpx.Client, str], tmp_path: Path) -> None:
    client, url = busy
    sections(client)  # computed once; the page gets the cached answer
    dom = browse(f"{url}/ui", tmp_path)
    assert not dom.errors
    for name in CHARTS:
        assert name in dom.marks, f"no chart {name} on the page"
        assert not dom.empty[name], f"chart {name} says it has no data"
    assert dom.marks["traffic"].count("bar") == 1
    assert dom.marks["drift"].count("point") >= 4 and "line" in dom.marks["drift"] and "ref" in dom.marks["drift"]
    assert dom.marks["performance_average_precision"].count("point") >= 1 and "ref" in dom.marks["performance_average_precision"]
    assert dom.marks["latency"].count("line") == 3 and dom.marks["latency"].count("point") >= 3
    assert dom.marks["throughput"].count("bar") >= 1
    alert_rows = [r for r in dom.rows["alerts"] if "tx_amount" in r]
    assert len(alert_rows) == 1 and "critical" in alert_rows[0] and "PSI of tx_amount 0.31 over 0.2" in alert_rows[0]
    assert any(r.split(" | ")[0] == "1" and "champion" in r for r in dom.rows["versions"])


def test_chromium_shows_no_data_yet_on_a_fresh_server(trained_copy: Path, tmp_path: Path) -> None:
    with serve(trained_copy) as srv:
        dom = browse(f"{srv.url}/ui", tmp_path)
    assert not dom.errors
    for name in ("drift", "performance_average_precision", "latency", "throughput", "traffic_observed"):
        assert dom.empty[name] and "no data yet" in dom.chart_text[name], name
        assert not [m for m in dom.marks[name] if m in ("point", "bar", "line")]
    assert "labels arrive through POST /v1/feedback" in dom.chart_text["performance_average_precision"]
    assert not dom.empty["traffic"] and dom.marks["traffic"] == ["bar"]  # the split is known before any request
    assert dom.rows["alerts"] == ["no active alerts"]


def test_a_broken_prediction_log_shows_its_error_where_it_is_needed(trained_copy: Path, tmp_path: Path) -> None:
    broken = Project.load(trained_copy).layout.prediction_log / "log"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "part-00000000T000000000000-deadbeef.parquet").write_bytes(b"not a parquet file")
    with serve(trained_copy) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        got = sections(client)  # still 200
        failed = {name for name, s in got.items() if "error" in s}
        assert {"drift", "performance", "system"} <= failed
        assert "parquet" in got["drift"]["error"].lower() and "\n" not in got["drift"]["error"]
        assert {"alerts", "versions", "runs"}.isdisjoint(failed)
        dom = browse(f"{srv.url}/ui", tmp_path)
    assert "Could not load this section" in dom.errors["drift"] and "Could not load this section" in dom.errors["system"]
    assert any(r.startswith("1 |") for r in dom.rows["versions"])
