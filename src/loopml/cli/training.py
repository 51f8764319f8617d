"""``loopml train``, ``runs`` and ``models``: train a model version, read tracked runs, move registry aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import (
    JsonOpt,
    ProjectOpt,
    emit_json,
    err,
    fmt,
    load_project,
    load_spec_only,
    make_table,
    open_registry_only,
    out,
    progress_bar,
    run_command,
    run_store,
)


def selection_lines(selection: dict[str, Any] | None) -> list[str]:
    """The model-vs-baseline lines ``loopml train`` prints: which candidate was registered, and the test comparison."""
    if not selection or not selection.get("reason") or selection["reason"] == "no baseline configured":
        return []
    lines = [f"registered {selection['model_type']} ({selection['reason']})"]
    c = selection.get("comparison")
    if c:
        low, high = c.get("difference_low"), c.get("difference_high")
        interval = f" [{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""
        other = next((name for name in selection.get("valid", {}) if name != selection["model_type"]), "baseline")
        lines.append(
            f"test {c['metric']}: {selection['model_type']} {fmt(c['model']['value'])} vs {other} {fmt(c['baseline']['value'])}, "
            f"difference {fmt(c['difference'])}{interval} ({int(100 * c.get('level', 0.95))} % paired bootstrap)"
        )
    return lines


runs_app = typer.Typer(help="Tracked training runs.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: versions, aliases, promotion and rollback.", no_args_is_help=True)


def train_cmd(
    project: ProjectOpt = Path("."),
    trials: Annotated[int, typer.Option(help="hyper-parameter tuning trials (0: spec params)")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train, evaluate and register a model version, then apply the promotion gate."""

    def go() -> None:
        p = load_project(project)
        with progress_bar(not as_json) as progress:
            result = p.train(trials=trials, progress=progress)
        data = result.to_json()
        if as_json:
            emit_json(data)
            return
        for warning in data["warnings"]:
            err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
        metrics = data["metrics"]
        rows = [[name, fmt(metrics["valid"].get(name)), fmt(value)] for name, value in metrics["test"].items()]
        out.print(make_table(f"run {data['run_id']} -> model version {data['model_version']}", ["metric", "valid", "test"], rows))
        for line in selection_lines(data.get("selection")):
            out.print(line, soft_wrap=True, highlight=False)
        verdict = "promoted to champion" if data["promoted"] else "not promoted"
        out.print(f"gate: {verdict}: {'; '.join(data.get('gate', {}).get('reasons', []))}", soft_wrap=True, highlight=False)
        if data.get("report"):
            out.print(f"report: {data['report']}", soft_wrap=True, highlight=False)

    run_command(go)


@runs_app.command("list")
def runs_list(
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option(help="rows per page")] = 20,
    page: Annotated[int, typer.Option(help="page number, from 1")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """List tracked runs, newest first."""

    def go() -> None:
        runs = run_store(project).list(limit=limit, offset=(max(page, 1) - 1) * limit)
        data = [r.to_json() for r in runs]
        if as_json:
            emit_json(data)
        else:
            rows = [[d.get("run_id"), d.get("started_at"), d.get("status"), d.get("model_version")] for d in data]
            out.print(make_table("runs", ["run", "started", "status", "model version"], rows))

    run_command(go)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="run id")], project: ProjectOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Everything recorded about one run."""

    def go() -> None:
        store = run_store(project)
        record = store.get(run)
        report = store.root / record.run_id / "report.html"
        data = {**record.to_json(), "report": str(report) if "report.html" in record.artifacts else None}
        if as_json:
            emit_json(data)
        else:
            out.print_json(json.dumps(data, default=str))
            if data["report"]:
                out.print(f"report: {data['report']}", soft_wrap=True, highlight=False)

    run_command(go)


@models_app.command("list")
def models_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Model versions with their aliases and the test value of the project's primary metric (gate.metric)."""

    def go() -> None:
        spec, _ = load_spec_only(project)
        data = [v.to_json() for v in open_registry_only(project).list()]
        if as_json:
            emit_json(data)
            return
        # the task's primary metric: the one the newest version's gate judged on (train resolves the task's
        # default), else gate.metric; read from the registry so that listing loads no training code
        gated = [d["gate"]["numbers"]["metric"] for d in data if (d.get("gate") or {}).get("numbers", {}).get("metric")]
        metric = gated[0] if gated else spec.gate.metric
        rows = []
        for d in data:
            test = d["metrics"].get("test", d["metrics"])
            rows.append([d["version"], ", ".join(d["aliases"]), d["created_at"], fmt(test.get(metric))])
        out.print(make_table("model versions", ["version", "aliases", "created", f"test {metric}"], rows))

    run_command(go)


@models_app.command("promote")
def models_promote(
    version: Annotated[int, typer.Argument(help="model version")],
    alias: Annotated[str, typer.Option(help="alias to move")] = "champion",
    project: ProjectOpt = Path("."),
) -> None:
    """Point an alias (default champion) at a version."""

    def go() -> None:
        v = open_registry_only(project).set_alias(alias, version, reason="promoted by hand (loopml models promote)")
        out.print(f"{alias} -> version {v.version}")

    run_command(go)


@models_app.command("rollback")
def models_rollback(
    alias: Annotated[str, typer.Option(help="alias to move back")] = "champion", project: ProjectOpt = Path(".")
) -> None:
    """Move an alias back to the version it pointed at before."""

    def go() -> None:
        v = open_registry_only(project).rollback(alias)
        out.print(f"{alias} -> version {v.version}")

    run_command(go)
