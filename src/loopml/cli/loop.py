"""``loopml retrain`` and ``demo``: one pass of the closed loop, and the whole story end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from loopml.cli.common import JsonOpt, ProjectOpt, emit_json, err, fmt, load_project, make_table, out, progress_bar, run_command


def retrain(
    project: ProjectOpt = Path("."),
    force: Annotated[bool, typer.Option("--force", help="run the loop even if no trigger fires")] = False,
    service_url: Annotated[
        str | None, typer.Option("--service-url", help="the live service to canary through (default: retraining.service_url)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate the retraining triggers and, if one fires, run the loop: ingest, features, train, gate, canary, promote.

    A run that crashed is resumed from its first unfinished step. The canary uses the live
    service's admin API with the bearer token in LOOPML_ADMIN_TOKEN.
    """

    def go() -> None:
        p = load_project(project)
        with progress_bar(not as_json) as progress:
            token = os.environ.get("LOOPML_ADMIN_TOKEN")
            run = p.retrain(force=force, service_url=service_url, admin_token=token, progress=progress)
        if as_json:
            emit_json(run.to_json())
            return
        rows = [[t["trigger"], "fired" if t["fired"] else "-", t["detail"]] for t in run.triggers]
        out.print(make_table("triggers", ["trigger", "", "detail"], rows))
        if run.steps:
            steps = [[s.name, s.status, json.dumps(s.outputs, default=str)[:100]] for s in run.steps]
            out.print(make_table(f"loop run {run.id}", ["step", "status", "outputs"], steps))
        out.print(f"{run.status}: {run.outcome or 'no trigger fired'}")

    run_command(go)


def demo(
    workdir: Annotated[Path, typer.Option(help="folder for the demo project (recreated)")] = Path("demo-run"),
    days: Annotated[int, typer.Option(help="days to simulate, live days included")] = 60,
    live_days: Annotated[int, typer.Option(help="days replayed as live traffic")] = 16,
    drift_after: Annotated[int, typer.Option(help="live day on which the new fraud pattern starts")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop end to end on the simulated card-fraud world: train, serve, drift, retrain, canary, promote."""

    def go() -> None:
        from loopml.demo import run_demo

        summary = run_demo(workdir, days=days, live_days=live_days, drift_after=drift_after, console=err)
        if as_json:
            emit_json(summary)
            return
        rows = [[k, fmt(v)] for k, v in summary["summary"].items() if k != "report"]
        out.print(make_table("loopml demo", ["step", "result"], rows))
        out.print(f"report: {summary['summary']['report']}", soft_wrap=True, highlight=False)

    run_command(go)
