"""``loopml monitor``, ``feedback`` and ``alerts``: the monitor report, labels for logged predictions, the alert store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import JsonOpt, ProjectOpt, emit_json, fmt, load_project, make_table, out, run_command, since_time
from loopml.errors import LoopmlError

alerts_app = typer.Typer(help="Alerts raised by monitoring and rollouts: list and resolve.", no_args_is_help=True)


def monitor(
    project: ProjectOpt = Path("."),
    since: Annotated[str | None, typer.Option(help="predictions from this ISO date/time, or this long ago (7d, 12h)")] = None,
    window: Annotated[str | None, typer.Option(help="window length, e.g. 1h or 1d (default: monitoring.window)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Drift, data quality, performance, latency and alerts over the prediction log."""

    def go() -> None:
        from loopml.spec.model import parse_duration

        try:
            length = None if window is None else parse_duration(window)
        except ValueError as exc:
            raise LoopmlError(f"--window {window!r}: {exc}") from None
        if length is not None and length.total_seconds() <= 0:
            raise LoopmlError(f"--window {window!r}: must be positive")
        report = load_project(project).monitor_report(since=since_time(since), window=length)
        if as_json:
            emit_json(report)
            return
        _print_monitor(report)

    run_command(go)


def _print_monitor(report: dict[str, Any]) -> None:
    period = report["period"]
    out.print(
        f"model version {report['model_version']}: {report['rows']:,} of {report['predictions']:,} predictions "
        f"({report['labelled']:,} labelled), {period['first'] or '-'} to {period['last'] or '-'}, "
        f"{period['windows']} window(s) of {period['window_s'] / 3600:g} h",
        highlight=False,
    )
    order = {"drift": 0, "ok": 1, "seasonal": 2, "not enough data": 3}
    drift = sorted(report["drift"], key=lambda d: (order.get(d["status"], 9), d["feature"]))
    rows = [[d["feature"], d["test"], fmt(d["statistic"]), fmt(d["p_value"]), f"{d['rows']:,}", d["status"]] for d in drift]
    out.print(make_table("drift over the period", ["column", "test", "statistic", "p-value", "rows", "status"], rows))
    quality = report["quality"]
    if quality["issues"]:
        issues = [[i["check"], i["subject"], i["message"]] for i in quality["issues"]]
        out.print(make_table("data quality issues", ["check", "subject", "detail"], issues))
    else:
        out.print("data quality: no issues", highlight=False)
    perf = report["performance"]
    if perf is not None:
        metric = perf.get("metric")
        live = (perf.get("metrics") or {}).get(metric) if perf.get("status") == "ok" else None
        base = (perf.get("baseline") or {}).get(metric)
        # the CBPE estimate exists for binary models only (and is skipped, with a reason, without a calibration map)
        estimated = f", estimated {fmt((perf.get('estimated') or {}).get(metric))} (CBPE)" if "estimated" in perf else ""
        out.print(
            f"{metric}: live {fmt(live)} on {perf['labelled']:,} labelled rows"
            f"{' (not enough labels)' if perf.get('status') != 'ok' else ''}{estimated}, training baseline {fmt(base)}",
            highlight=False,
        )
    system = report["system"]
    latency = system["latency_ms"]
    rate = system["throughput_per_s"]
    out.print(
        f"latency ms p50 {fmt(latency['p50'])}, p95 {fmt(latency['p95'])}, p99 {fmt(latency['p99'])}; throughput {fmt(rate)}/s",
        highlight=False,
    )
    alerts = report["alerts"]
    if alerts:
        lines = [[a["rule"], a["subject"], a["severity"], a["message"]] for a in alerts]
        out.print(make_table(f"{len(alerts)} alert(s)", ["rule", "subject", "severity", "message"], lines))
    else:
        out.print("no alerts", highlight=False)
    if report.get("resolved_alerts"):
        out.print(f"{len(report['resolved_alerts'])} alert(s) resolved", highlight=False)


def feedback(
    file: Annotated[Path, typer.Option("--file", "-f", help="CSV or Parquet with columns request_id,label (optional ts)")],
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Add labels from a file to the prediction log; they join their predictions by request id, however late."""

    def go() -> None:
        from loopml.layout import Layout
        from loopml.predlog.backends import open_prediction_log
        from loopml.predlog.labels import read_labels_file
        from loopml.spec.load import load_spec

        spec, _ = load_spec(project)
        items = read_labels_file(file)
        log = open_prediction_log(spec, Layout.for_project(project, spec))
        try:
            log.add_feedback(items)
            matched = len(log.known_request_ids([i.request_id for i in items]))
        finally:
            log.close()
        distinct = len({i.request_id for i in items})
        result = {"file": str(file), "labels": len(items), "request_ids": distinct, "matched": matched}
        result["pending"] = distinct - matched
        if as_json:
            emit_json(result)
            return
        out.print(
            f"{len(items):,} label(s) added from {file}: {matched:,} request id(s) joined with logged predictions, "
            f"{distinct - matched:,} pending until their predictions are logged",
            highlight=False,
            soft_wrap=True,
        )

    run_command(go)


def _alert_store(folder: Path) -> Any:
    """The alert store, without loading the stages (listing alerts stays fast)."""
    from loopml.layout import Layout
    from loopml.monitor.alerts import open_alert_store
    from loopml.spec.load import load_spec

    spec, _ = load_spec(folder)
    return open_alert_store(spec, Layout.for_project(folder, spec))


@alerts_app.command("list")
def alerts_list(
    show_all: Annotated[bool, typer.Option("--all", help="resolved alerts too (the newest first)")] = False,
    limit: Annotated[int, typer.Option(help="with --all: at most this many alerts")] = 100,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Active alerts (critical first), or with --all the history."""

    def go() -> None:
        store = _alert_store(project)
        alerts = store.history(limit) if show_all else store.active()
        if as_json:
            emit_json([a.to_json() for a in alerts])
            return
        if not alerts:
            out.print("no alerts" if show_all else "no active alerts")
            return
        out.print(f"{len(alerts)} alert(s)" if show_all else f"{len(alerts)} active alert(s)", highlight=False)
        for a in alerts:
            status = "" if a.resolved_at is None else f", resolved {a.resolved_at:%Y-%m-%d %H:%M:%S}"
            webhook = f"; webhook failed: {a.webhook_error}" if a.webhook_error else ""
            out.print(f"#{a.id} {a.severity} {a.rule} / {a.subject}: {a.message}", markup=False, highlight=False, soft_wrap=True)
            out.print(
                f"    value {fmt(a.value)}, threshold {fmt(a.threshold)}; seen {a.count}x from"
                f" {a.first_seen:%Y-%m-%d %H:%M:%S} to {a.last_seen:%Y-%m-%d %H:%M:%S} UTC{status}{webhook}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    run_command(go)


@alerts_app.command("resolve")
def alerts_resolve(
    alert_id: Annotated[int, typer.Argument(metavar="ID", help="the alert's id (see 'loopml alerts list')")],
    project: ProjectOpt = Path("."),
) -> None:
    """Mark an alert resolved; the next time its condition fires it opens a new alert."""

    def go() -> None:
        store = _alert_store(project)
        alert = store.get(alert_id)
        if alert is None:
            raise LoopmlError(f"alert {alert_id}: no such alert in {store.path}")
        if alert.resolved_at is not None:
            out.print(f"alert {alert_id} was already resolved at {alert.resolved_at:%Y-%m-%d %H:%M:%S} UTC")
            return
        store.resolve_id(alert_id)
        out.print(f"alert {alert_id} resolved ({alert.rule} {alert.subject})", highlight=False)

    run_command(go)
