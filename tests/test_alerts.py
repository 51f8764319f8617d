"""The alert store: deduplication, resolution, the webhook over real loopback HTTP, several processes, the CLI."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loopml.cli import app
from loopml.errors import SpecError
from loopml.layout import Layout
from loopml.monitor.alerts import Alert, AlertStore, open_alert_store
from loopml.server import free_port
from loopml.spec.environment import apply_environment
from loopml.spec.model import Spec
from specs import minimal_spec_dict


class Webhook:
    """A real HTTP server on loopback recording every POSTed JSON body; answers ``status``, or only once closed if ``hang``."""

    def __init__(self, status: int = 200, hang: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        self.hang = hang
        self.closing = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                hook.bodies.append(json.loads(self.rfile.read(length)))
                if hook.hang:
                    hook.closing.wait(timeout=120)
                self.send_response(hook.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


# The sink contract (deduplication, resolving, bad alerts, the rules' use, concurrent handles) is
# tests/test_contract_alerts.py; here: what only the SQLite AlertStore does.


def test_repeats_keep_the_latest_reading_active_lists_critical_first_history_newest_first(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    assert store.active() == [] and store.history() == [] and not (tmp_path / "alerts.sqlite").exists()
    first, _ = store.fire("psi", "tx_amount", "PSI 0.31 > 0.2", value=0.31, threshold=0.2)
    assert first.first_seen == first.last_seen and first.resolved_at is None
    other, _ = store.fire("psi", "score", "PSI 0.25 > 0.2", value=0.25, threshold=0.2)
    again, _ = store.fire("psi", "tx_amount", "PSI 0.45 > 0.2", value=0.45, threshold=0.2, severity="critical")
    assert again.last_seen >= first.last_seen and again.first_seen == first.first_seen
    assert (again.message, again.value, again.severity) == ("PSI 0.45 > 0.2", 0.45, "critical")  # the latest reading
    assert [a.subject for a in store.active()] == ["tx_amount", "score"]  # critical first
    store.fire("psi", "score", "PSI 0.26 > 0.2", value=0.26, threshold=0.2, severity="critical")
    assert [a.subject for a in store.active()] == ["tx_amount", "score"]  # then the oldest first
    store.resolve("psi", "tx_amount")
    reopened, _ = store.fire("psi", "tx_amount", "PSI 0.22 > 0.2", value=0.22, threshold=0.2)
    history = store.history()
    assert [a.id for a in history] == [reopened.id, other.id, first.id]  # newest first
    resolved = history[-1]
    assert resolved.resolved_at is not None and resolved.resolved_at.tzinfo is not None and resolved.count == 2
    assert [a.id for a in store.history(limit=1)] == [reopened.id]


def test_resolve_by_id_and_get(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    assert store.resolve_id(1) is False and store.get(1) is None
    alert, _ = store.fire("latency_p99", "service", "p99 31 ms > 10 ms", value=31.0, threshold=10.0)
    assert store.resolve_id(alert.id) is True and store.resolve_id(alert.id) is False
    assert store.resolve_id(999) is False
    got = store.get(alert.id)
    assert got is not None and not got.active and store.active() == []


def test_to_json_is_plain_json(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    alert, _ = store.fire("metric_drop", "average_precision", "AP dropped 12 %", value=math.nan, threshold=math.inf)
    data = json.loads(json.dumps(alert.to_json(), allow_nan=False))
    assert data["value"] is None and data["threshold"] is None  # undefined numbers are null
    assert data["status"] == "active" and data["severity"] == "warning" and data["count"] == 1
    assert datetime.fromisoformat(data["first_seen"]).tzinfo == UTC
    assert set(data) >= {"id", "rule", "subject", "message", "severity", "value", "threshold", "first_seen", "last_seen"}
    assert {"resolved_at", "count", "webhook_error"} <= set(data)
    now = datetime.now(UTC)  # the fields the canary and the monitor construct positionally
    made = Alert(1, "psi", "x", "m", "warning", 0.3, 0.2, now, now, None, 1)
    assert made.active and made.webhook_error is None and made.to_json()["first_seen"] == now.isoformat()


# -- the webhook -------------------------------------------------------------------------------------------


def test_the_webhook_gets_each_new_alert_once(tmp_path: Path, webhook: Webhook) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite", webhook_url=webhook.url)
    alert, _ = store.fire("psi", "tx_amount", "PSI 0.31 > 0.2", value=0.31, threshold=0.2, severity="critical")
    for _ in range(5):
        store.fire("psi", "tx_amount", "PSI 0.33 > 0.2", value=0.33, threshold=0.2)
    assert len(webhook.bodies) == 1
    body = webhook.bodies[0]
    expected = (alert.id, "psi", "tx_amount", "critical", 0.31)
    assert (body["id"], body["rule"], body["subject"], body["severity"], body["value"]) == expected
    assert body["status"] == "active" and body["count"] == 1
    store.resolve("psi", "tx_amount")
    store.fire("psi", "tx_amount", "PSI 0.4 > 0.2", value=0.4, threshold=0.2)  # a new alert: posted again
    assert len(webhook.bodies) == 2 and webhook.bodies[1]["id"] != alert.id
    assert all(a.webhook_error is None for a in store.history())


def test_an_unreachable_webhook_never_breaks_fire(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite", webhook_url=f"http://127.0.0.1:{free_port()}/hook", timeout=1.0)
    alert, new = store.fire("psi", "tx_amount", "PSI 0.31 > 0.2", value=0.31, threshold=0.2)
    assert new
    assert alert.webhook_error is not None and alert.webhook_error.startswith("ConnectError")
    stored = store.get(alert.id)
    assert stored is not None and stored.webhook_error == alert.webhook_error  # recorded on the alert
    again, new = store.fire("psi", "tx_amount", "PSI 0.32 > 0.2")
    assert not new and again.count == 2


@pytest.mark.parametrize(("status", "hang", "error"), [(500, False, "HTTP 500 from the webhook"), (200, True, "ReadTimeout")])
def test_a_failing_or_slow_webhook_is_recorded(tmp_path: Path, status: int, hang: bool, error: str) -> None:
    hook = Webhook(status=status, hang=hang)
    try:
        store = AlertStore(tmp_path / "alerts.sqlite", webhook_url=hook.url, timeout=0.5)
        # a webhook that never answers: fire returns when its timeout fires (else it would wait until close)
        alert, _ = store.fire("throughput_drop", "service", "throughput -35 %", value=-0.35, threshold=-0.2)
        assert alert.webhook_error is not None and alert.webhook_error.startswith(error)
        assert store.active()[0].webhook_error == alert.webhook_error
    finally:
        hook.close()


# -- several processes -------------------------------------------------------------------------------------

_FIRER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from loopml.monitor.alerts import AlertStore

    store = AlertStore(Path(sys.argv[1]), webhook_url=sys.argv[2])
    new = sum(store.fire("psi", "tx_amount", "PSI high", value=0.3, threshold=0.2)[1] for _ in range(15))
    print(new)
    """
)


def test_processes_firing_at_once_share_one_alert_and_one_webhook_call(tmp_path: Path, webhook: Webhook) -> None:
    path = tmp_path / "alerts.sqlite"
    command = [sys.executable, "-c", _FIRER, str(path), webhook.url]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum(int(o) for o in outputs) == 1  # exactly one process opened the alert
    alerts = AlertStore(path).history()
    assert len(alerts) == 1 and alerts[0].count == 45
    assert len(webhook.bodies) == 1
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- configuration and the CLI -----------------------------------------------------------------------------

RAW_SPEC = minimal_spec_dict()


def test_the_project_store_uses_the_spec_webhook_or_the_environment(tmp_path: Path) -> None:
    spec = Spec.model_validate(RAW_SPEC)
    store = open_alert_store(spec, Layout.for_project(tmp_path, spec))
    assert store.path == tmp_path.resolve() / ".loopml" / "alerts.sqlite" and store.webhook_url is None
    spec = Spec.model_validate({**RAW_SPEC, "monitoring": {"webhook_url": "https://hooks.example.com/T1"}})
    assert open_alert_store(spec, Layout.for_project(tmp_path, spec)).webhook_url == "https://hooks.example.com/T1"
    overridden = apply_environment(spec, {"LOOPML_WEBHOOK_URL": "http://127.0.0.1:9/secret"})
    assert open_alert_store(overridden, Layout.for_project(tmp_path, spec)).webhook_url == "http://127.0.0.1:9/secret"
    with pytest.raises(SpecError, match=r"^environment variable LOOPML_WEBHOOK_URL: monitoring\.webhook_url: "):
        apply_environment(spec, {"LOOPML_WEBHOOK_URL": "not a url"})
    with pytest.raises(ValueError, match=r"monitoring\.webhook_url"):
        Spec.model_validate({**RAW_SPEC, "monitoring": {"webhook_url": "hooks.example.com"}})


runner = CliRunner()


def test_cli_lists_and_resolves_alerts(tmp_path: Path) -> None:
    (tmp_path / "loopml.yaml").write_text(json.dumps(RAW_SPEC))
    spec = Spec.model_validate(RAW_SPEC)
    store = open_alert_store(spec, Layout.for_project(tmp_path, spec))
    result = runner.invoke(app, ["alerts", "list", "--project", str(tmp_path)])
    assert result.exit_code == 0 and "no active alerts" in result.stdout
    drift, _ = store.fire("psi", "tx_amount", "PSI 0.31 > 0.2", value=0.31, threshold=0.2)
    latency, _ = store.fire("latency_p99", "service", "p99 31 ms > 10 ms", value=31.0, threshold=10.0, severity="critical")
    store.fire("psi", "tx_amount", "PSI 0.35 > 0.2", value=0.35, threshold=0.2)

    result = runner.invoke(app, ["alerts", "list", "--json", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(a["id"], a["rule"], a["count"]) for a in listed] == [(latency.id, "latency_p99", 1), (drift.id, "psi", 2)]
    result = runner.invoke(app, ["alerts", "list", "--project", str(tmp_path)])
    assert result.exit_code == 0 and "tx_amount" in result.stdout and "critical" in result.stdout

    result = runner.invoke(app, ["alerts", "resolve", str(drift.id), "--project", str(tmp_path)])
    assert result.exit_code == 0 and f"alert {drift.id} resolved" in result.stdout
    result = runner.invoke(app, ["alerts", "resolve", str(drift.id), "--project", str(tmp_path)])
    assert result.exit_code == 0 and "already resolved" in result.stdout
    result = runner.invoke(app, ["alerts", "resolve", "77", "--project", str(tmp_path)])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: alert 77: no such alert in {store.path}"
    result = runner.invoke(app, ["alerts", "resolve", "x", "--project", str(tmp_path)])
    assert result.exit_code != 0

    active = json.loads(runner.invoke(app, ["alerts", "list", "--json", "--project", str(tmp_path)]).stdout)
    assert [a["id"] for a in active] == [latency.id]
    everything = json.loads(runner.invoke(app, ["alerts", "list", "--all", "--json", "--project", str(tmp_path)]).stdout)
    assert [(a["id"], a["status"]) for a in everything] == [(latency.id, "active"), (drift.id, "resolved")]
