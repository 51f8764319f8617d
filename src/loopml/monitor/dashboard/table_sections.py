"""The dashboard's record tables: active alerts (the alert store), model versions (the registry) and training runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopml.monitor.dashboard.blocks import TABLE_ROWS, Json, table

if TYPE_CHECKING:
    from loopml.monitor.alerts import AlertStore
    from loopml.train.tracking import RunStore


def alerts_section(store: AlertStore | None) -> Json:
    if store is None:
        return {"note": "this server has no alert store"}
    active = [a.to_json() for a in store.active()]
    rows = [
        [
            a["id"],
            a["severity"],
            a["rule"],
            a["subject"],
            a["message"],
            a["value"],
            a["threshold"],
            a["first_seen"],
            a["last_seen"],
            a["count"],
        ]
        for a in active
    ]
    return {
        "summary": [["active alerts", len(rows)], ["critical", sum(1 for a in active if a["severity"] == "critical")]],
        "tables": [
            table(
                "alerts",
                "Active alerts (critical first)",
                ["id", "severity", "rule", "subject", "message", "value", "threshold", "first seen", "last seen", "count"],
                rows,
                "no active alerts",
            )
        ],
    }


def versions_section(models: Json, metric: str) -> Json:
    """``models`` as the live service reports them; ``metric`` the promotion gate's (its test value is shown)."""
    rows = []
    for v in sorted(models.get("versions", []), key=lambda v: -int(v["version"]))[:TABLE_ROWS]:
        test = (v.get("metrics") or {}).get("test") or {}
        gate = v.get("gate") or {}
        rows.append(
            [
                v["version"],
                v.get("aliases", []),
                v.get("created_at"),
                v.get("kind"),
                gate.get("passed"),
                test.get(metric),
                v.get("run_id"),
            ]
        )
    return {
        "tables": [
            table(
                "versions",
                "Registered versions (newest first)",
                ["version", "aliases", "created", "kind", "gate passed", f"test {metric}", "run"],
                rows,
                "no model registered yet: run loopml train",
            )
        ]
    }


def runs_section(store: RunStore | None) -> Json:
    if store is None:
        return {"note": "this server has no run store"}
    runs = [r.to_json() for r in store.list(limit=TABLE_ROWS)]
    rows = [
        [
            r["run_id"],
            r["started_at"],
            r["status"],
            r["model_type"],
            r["model_version"],
            r["promoted"],
            r["metric"],
            r["value"],
            r["duration_s"],
        ]
        for r in runs
    ]
    return {
        "tables": [
            table(
                "runs",
                "Training runs (newest first)",
                ["run", "started", "status", "model", "version", "promoted", "metric", "test value", "seconds"],
                rows,
                "no training run yet",
            )
        ]
    }
