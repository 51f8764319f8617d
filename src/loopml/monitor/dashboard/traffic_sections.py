"""The dashboard's traffic sections: overview, rollout (champion, challenger, split) and system (latency, throughput).

They are built from the live service (its models, rollout state and events), the
traffic aggregated per time bucket (:func:`~loopml.monitor.dashboard.logdata.read_traffic`)
and, for the overview, the count of labelled predictions.
"""

from __future__ import annotations

from typing import Any

from loopml.monitor.dashboard.blocks import TABLE_ROWS, Json, chart, table
from loopml.monitor.dashboard.live import DropCounter
from loopml.monitor.dashboard.logdata import Traffic, first_row
from loopml.predlog.base import PredictionLogBackend


def overview_section(log: PredictionLogBackend, models: Json, traffic: Traffic) -> Json:
    with log.connect() as con:
        row = first_row(con, "SELECT count(label) FROM labelled")
    labelled = int(row[0]) if row else 0
    return {
        "summary": [
            ["live version", models.get("live_version")],
            ["policy", models.get("policy")],
            ["predictions logged", traffic.total],
            ["labelled", labelled],
            ["latency p99 (ms)", traffic.overall["p99"]],
        ]
    }


def rollout_section(models: Json, traffic: Traffic, state: Json, events: list[Json]) -> Json:
    """``state`` is the rollout controller's state, ``events`` the rollout events oldest first."""
    split = models.get("traffic") or {}
    bars = [[f"{name} (v{entry['version']})", 100.0 * float(entry["weight"])] for name, entry in split.items()]
    seconds = traffic.width_us / 1e6
    observed = [
        {"name": name, "points": [[t, c / seconds] for t, c in zip(traffic.starts_ms, counts, strict=True)]}
        for name, counts in traffic.by_variant.items()
    ]
    stats = state.get("stats", {})
    aliases = state.get("variants", {})
    variants = [
        [
            name,
            aliases.get(name),
            entry["version"],
            float(entry["weight"]),
            stats.get(name, {}).get("requests"),
            stats.get(name, {}).get("errors"),
            stats.get(name, {}).get("p99_ms"),
            stats.get(name, {}).get("labelled"),
        ]
        for name, entry in split.items()
    ]
    summary: list[list[Any]] = [["policy", state.get("policy")], ["live version", models.get("live_version")]]
    if state.get("policy") == "canary":
        steps = state.get("steps") or []
        step = int(state.get("step", 0))
        share = steps[step] if step < len(steps) else None
        summary.append(["canary step", f"{step + 1} of {len(steps)} ({share:.0%} of traffic)" if share is not None else step])
    rows = [
        [e.get("at"), e.get("action"), e.get("version"), e.get("reason") or e.get("policy")]
        for e in reversed(events[-TABLE_ROWS:])
    ]
    return {
        "summary": summary,
        "charts": [
            chart(
                "traffic",
                "bar",
                "Live traffic split",
                "variant (model version)",
                "share of traffic (%)",
                [{"name": "share", "points": bars}],
                x_type="category",
                empty="no model loaded",
            ),
            chart(
                "traffic_observed",
                "line",
                "Requests per variant over time",
                "time (as logged)",
                "requests / s",
                observed,
                empty="no predictions logged yet",
            ),
        ],
        "tables": [
            table(
                "variants",
                "Variants (the canary's guardrail statistics of the current step)",
                ["variant", "alias", "version", "weight", "requests", "errors", "p99 ms", "labels"],
                variants,
                "no model loaded",
            ),
            table("rollout_events", "Rollout events", ["at", "action", "version", "reason"], rows, "no rollout events yet"),
        ],
    }


def system_section(traffic: Traffic, budget: float, logger: DropCounter | None) -> Json:
    """``budget`` is the latency budget in ms; ``logger`` the prediction-log writer, if this server has one."""
    seconds = traffic.width_us / 1e6
    latency = [
        {"name": name, "points": [[t, v] for t, v in zip(traffic.starts_ms, values, strict=True)]}
        for name, values in (("p50", traffic.p50), ("p95", traffic.p95), ("p99", traffic.p99))
    ]
    throughput = [
        {
            "name": "all variants",
            "points": [[t, c / seconds] for t, c in zip(traffic.starts_ms, traffic.requests, strict=True)],
        }
    ]
    summary: list[list[Any]] = [
        ["predictions logged", traffic.total],
        ["latency p50 / p95 / p99 (ms)", " / ".join("-" if v is None else f"{v:.2f}" for v in traffic.overall.values())],
        ["latency budget (ms)", budget],
        ["bucket", f"{seconds:g} s"],
    ]
    if logger is not None:
        summary.append(["log records dropped", logger.dropped])
    return {
        "summary": summary,
        "charts": [
            chart(
                "latency",
                "line",
                "Latency over time (logged predictions)",
                "time (as logged)",
                "latency (ms)",
                latency,
                lines=[{"name": f"budget {budget:g} ms", "y": budget, "fit": False}],
                empty="no predictions logged yet",
            ),
            chart(
                "throughput",
                "bar",
                "Throughput over time",
                "time (as logged)",
                "requests / s",
                throughput,
                bar_width=traffic.width_us / 1000,
                empty="no predictions logged yet",
            ),
        ],
        "note": "the last bucket may still be filling" if traffic.total else None,
    }
