"""``loopml init``, ``check`` and ``ingest``: create a project, validate its spec, snapshot its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.cli.common import (
    JsonOpt,
    ProjectOpt,
    emit_json,
    err,
    load_project,
    load_spec_only,
    make_table,
    out,
    progress_bar,
    run_command,
)
from loopml.errors import LoopmlError


def init(
    folder: Annotated[Path, typer.Argument(help="folder to create the project in")],
    example: Annotated[str | None, typer.Option(help="built-in example world: fraud")] = None,
    data: Annotated[Path | None, typer.Option(help="CSV/Parquet/JSONL file to scaffold a project from")] = None,
    label: Annotated[str | None, typer.Option(help="label column (with --data)")] = None,
    positive: Annotated[str | None, typer.Option(help="positive label value (binary)")] = None,
    task: Annotated[str | None, typer.Option(help="binary or regression (inferred when omitted)")] = None,
    timestamp: Annotated[str | None, typer.Option(help="event-time column")] = None,
    entity: Annotated[list[str] | None, typer.Option(help="entity key column (repeatable)")] = None,
    days: Annotated[int, typer.Option(help="fraud example: days to simulate (the time split is scaled to fit them)")] = 183,
    seed: Annotated[int, typer.Option(help="fraud example: random seed")] = 0,
    drift_day: Annotated[int | None, typer.Option(help="fraud example: day a new fraud pattern starts")] = None,
    live_days: Annotated[int, typer.Option(help="fraud example: last days written to data/live.parquet")] = 0,
    customers: Annotated[int, typer.Option(help="fraud example: number of customers")] = 5000,
    terminals: Annotated[int, typer.Option(help="fraud example: number of terminals")] = 10000,
    force: Annotated[bool, typer.Option(help="overwrite an existing loopml.yaml")] = False,
) -> None:
    """Write a ready project: the fraud example world, or a scaffold from your own data file."""

    def go() -> None:
        if (example is None) == (data is None):
            raise LoopmlError("init: give exactly one of --example fraud or --data FILE")
        if example is not None:
            if example != "fraud":
                raise LoopmlError(f"init: unknown example {example!r} (available: fraud)")
            warnings: list[str] = []
            with progress_bar() as progress:
                from loopml.scaffold import init_example

                rows = init_example(
                    folder,
                    days=days,
                    seed=seed,
                    drift_day=drift_day,
                    live_days=live_days,
                    customers=customers,
                    terminals=terminals,
                    force=force,
                    progress=progress,
                    warn=warnings.append,
                )
            err.print(f"wrote {folder / 'loopml.yaml'} and {rows:,} simulated transactions under {folder / 'data'}")
            for warning in warnings:
                err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
        else:
            assert data is not None
            if label is None:
                raise LoopmlError("init: --data needs --label COL")
            from loopml.scaffold import init_from_data

            path, notes = init_from_data(folder, data, label, positive, task, timestamp, entity or [], force=force)
            for note in notes:
                err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
            err.print(f"wrote {path}; review it, then run 'loopml check' and 'loopml ingest'", soft_wrap=True)

    run_command(go)


def check(project: ProjectOpt = Path(".")) -> None:
    """Validate loopml.yaml; every error names its key and line."""

    def go() -> None:
        s, layout = load_spec_only(project)
        n_features = sum(len(v.outputs(k)) for k, v in s.features.views.items()) + len(s.features.transforms)
        err.print(f"ok: {layout.root / 'loopml.yaml'} is valid ({len(s.sources)} source(s), {n_features} derived features)")

    run_command(go)


def ingest_cmd(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Read the sources, validate them, store a content-hashed snapshot; bad rows go to quarantine."""

    def go() -> None:
        p = load_project(project)
        with progress_bar(not as_json) as progress:
            result = p.ingest(progress)
        if as_json:
            emit_json(result.to_json())
            return
        failing = [c for c in result.checks if not c.passed]
        rows = [[c.source, c.column or "", c.rule, c.severity, c.failed_rows, c.message] for c in failing]
        if rows:
            err.print(make_table("checks that found problems", ["source", "column", "rule", "severity", "rows", "message"], rows))
        out.print(
            f"snapshot {result.snapshot}: {result.rows_in:,} rows in, {result.rows_valid:,} valid, "
            f"{result.rows_quarantined:,} quarantined"
        )

    run_command(go)
