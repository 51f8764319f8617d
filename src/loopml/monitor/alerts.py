"""The alert store: one row per alert in a SQLite file, deduplicated while its condition persists.

Rules (the monitor's drift and performance checks, the canary's guardrails)
call :meth:`AlertStore.fire` every time they find a problem and
:meth:`AlertStore.resolve` when it is gone. An alert is identified by
``(rule, subject)`` — e.g. ``("psi", "tx_amount")``: firing an unresolved one
again only bumps its ``last_seen`` and ``count`` (and keeps the latest message
and value); after it is resolved, the next ``fire`` opens a new alert.

A new alert is POSTed as JSON (:meth:`Alert.to_json`) to the optional webhook
(``monitoring.webhook_url``, or ``LOOPML_WEBHOOK_URL``) once, after the row is
committed. A webhook failure (unreachable, timeout, non-2xx answer) is recorded
in the alert's ``webhook_error`` and never raised: monitoring must not stop
because a chat server is down.

Several processes (the server's canary, ``loopml monitor``, the retraining
loop) share the file: WAL mode, a busy timeout, and every change inside
``BEGIN IMMEDIATE``; a partial unique index allows at most one unresolved alert
per ``(rule, subject)``. Times are UTC.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.layout import Layout
    from loopml.spec.model import Spec

SEVERITIES = ("warning", "critical")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    severity TEXT NOT NULL,
    value REAL,
    threshold REAL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    resolved_at TEXT,
    count INTEGER NOT NULL,
    webhook_error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (rule, subject) WHERE resolved_at IS NULL;
"""
_COLUMNS = "id, rule, subject, message, severity, value, threshold, first_seen, last_seen, resolved_at, count, webhook_error"


@dataclass(frozen=True)
class Alert:
    id: int
    rule: str
    subject: str
    message: str
    severity: str  # "warning" | "critical"
    value: float | None
    threshold: float | None
    first_seen: datetime
    last_seen: datetime
    resolved_at: datetime | None
    count: int
    #: why the webhook POST of this alert failed (None: delivered, or no webhook configured)
    webhook_error: str | None = None

    @property
    def active(self) -> bool:
        return self.resolved_at is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("first_seen", "last_seen", "resolved_at"):
            data[key] = None if data[key] is None else data[key].isoformat()
        data["status"] = "active" if self.active else "resolved"
        return data


def _now() -> datetime:
    return datetime.now(UTC)


def _finite(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LoopmlError(f"alert {what}: expected a number, got {value!r}") from None
    return number if math.isfinite(number) else None  # JSON has no NaN: an undefined value is null


def _alert(row: tuple[Any, ...]) -> Alert:
    return Alert(
        id=int(row[0]),
        rule=row[1],
        subject=row[2],
        message=row[3],
        severity=row[4],
        value=row[5],
        threshold=row[6],
        first_seen=datetime.fromisoformat(row[7]),
        last_seen=datetime.fromisoformat(row[8]),
        resolved_at=None if row[9] is None else datetime.fromisoformat(row[9]),
        count=int(row[10]),
        webhook_error=row[11],
    )


class AlertStore:
    """Alerts in a SQLite file (e.g. ``<state>/alerts.sqlite``), with an optional webhook for new ones."""

    def __init__(self, path: Path, webhook_url: str | None = None, timeout: float = 2.0) -> None:
        self.path = path
        self.webhook_url = webhook_url or None
        self.timeout = timeout
        self._ready = False

    # -- storage -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LoopmlError(f"alerts {self.path}: cannot open ({exc})") from None
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            if not self._ready:
                con.execute("PRAGMA journal_mode = WAL")
                con.executescript(_SCHEMA)
                self._ready = True
        except sqlite3.Error as exc:
            con.close()
            raise LoopmlError(f"alerts {self.path}: cannot create the alerts table ({exc})") from None
        return con

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Alert]:
        if not self.path.exists():
            return []  # nothing fired yet; reading does not create the file
        with closing(self._connect()) as con:
            return [_alert(r) for r in con.execute(sql, params).fetchall()]

    # -- the API the rules use -----------------------------------------------------------------
    def fire(
        self,
        rule: str,
        subject: str,
        message: str,
        value: float | None = None,
        threshold: float | None = None,
        severity: str = "warning",
    ) -> tuple[Alert, bool]:
        """Record that the condition ``(rule, subject)`` holds; ``(alert, is_new)``.

        A new alert is POSTed to the webhook; a repeat of an unresolved one is not.
        """
        if severity not in SEVERITIES:
            raise LoopmlError(f"alert {rule}/{subject}: severity must be 'warning' or 'critical', got {severity!r}")
        if not rule or not subject:
            raise LoopmlError(f"alert: rule and subject must not be empty (rule={rule!r}, subject={subject!r})")
        number, limit = _finite(value, "value"), _finite(threshold, "threshold")
        now = _now().isoformat()
        with self._transaction() as con:
            row = con.execute(
                "SELECT id FROM alerts WHERE rule = ? AND subject = ? AND resolved_at IS NULL", (rule, subject)
            ).fetchone()
            if row is not None:
                con.execute(
                    "UPDATE alerts SET last_seen = ?, count = count + 1, message = ?, value = ?, threshold = ?, severity = ?"
                    " WHERE id = ?",
                    (now, message, number, limit, severity, row[0]),
                )
                alert_id, is_new = int(row[0]), False
            else:
                cur = con.execute(
                    "INSERT INTO alerts (rule, subject, message, severity, value, threshold, first_seen, last_seen, count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (rule, subject, message, severity, number, limit, now, now),
                )
                alert_id, is_new = int(cur.lastrowid or 0), True
            alert = _alert(con.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone())
        if is_new and self.webhook_url:
            error = self._post(alert)
            if error is not None:
                with self._transaction() as con:
                    con.execute("UPDATE alerts SET webhook_error = ? WHERE id = ?", (error, alert.id))
                alert = Alert(**{**asdict(alert), "webhook_error": error})
        return alert, is_new

    def _post(self, alert: Alert) -> str | None:
        """POST the alert; the reason it failed, or None. Never raises."""
        assert self.webhook_url is not None
        try:
            response = httpx.post(self.webhook_url, json=alert.to_json(), timeout=self.timeout)
        except Exception as exc:  # unreachable, timeout, bad URL: recorded on the alert, never raised
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return f"{type(exc).__name__}: {reason}".rstrip(": ")
        if response.status_code >= 300:
            return f"HTTP {response.status_code} from the webhook"
        return None

    def resolve(self, rule: str, subject: str) -> bool:
        """The condition cleared: resolve the open alert of ``(rule, subject)``; False if none was open."""
        if not self.path.exists():
            return False
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE alerts SET resolved_at = ? WHERE rule = ? AND subject = ? AND resolved_at IS NULL",
                (_now().isoformat(), rule, subject),
            )
            return cur.rowcount > 0

    def resolve_id(self, alert_id: int) -> bool:
        """Resolve one alert by id (``loopml alerts resolve``); False if it is unknown or already resolved."""
        if not self.path.exists():
            return False
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE alerts SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL", (_now().isoformat(), alert_id)
            )
            return cur.rowcount > 0

    def get(self, alert_id: int) -> Alert | None:
        found = self._query(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
        return found[0] if found else None

    def active(self) -> list[Alert]:
        """Unresolved alerts, critical first, then the oldest first."""
        return self._query(
            f"SELECT {_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY severity = 'critical' DESC, first_seen, id"
        )

    def history(self, limit: int = 100) -> list[Alert]:
        """All alerts, resolved or not, the newest first."""
        return self._query(f"SELECT {_COLUMNS} FROM alerts ORDER BY id DESC LIMIT ?", (max(0, int(limit)),))


def open_alert_store(spec: Spec, layout: Layout) -> AlertStore:
    """The project's alert store: ``<state>/alerts.sqlite``, webhook from ``LOOPML_WEBHOOK_URL`` or ``monitoring.webhook_url``."""
    return AlertStore(layout.alerts, webhook_url=spec.monitoring.webhook_url)
