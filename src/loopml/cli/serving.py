"""``loopml serve``, ``predict`` and ``stream score``: the online service, batch scoring of a file, scoring of a Redis Stream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from loopml.cli.common import (
    JsonOpt,
    ProjectOpt,
    consume_until_stopped,
    emit_json,
    err,
    load_project,
    out,
    progress_bar,
    run_command,
)

stream_app = typer.Typer(help="Score a Redis Stream of events into an output stream.", no_args_is_help=True)


def serve(
    project: ProjectOpt = Path("."),
    host: Annotated[str | None, typer.Option(help="bind address (default: serving.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serving.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (default: serving.workers)")] = None,
) -> None:
    """Run the online prediction service (FastAPI + uvicorn); says where it listens, and when it stops (Ctrl-C)."""

    def go() -> None:
        p = load_project(project)
        from loopml.server import run_server

        run_server(
            p,
            host or p.spec.serving.host,
            port or p.spec.serving.port,
            workers or p.spec.serving.workers,
            admin_token=os.environ.get("LOOPML_ADMIN_TOKEN"),
            announce=lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True),
        )

    run_command(go)


def predict(
    input: Annotated[Path, typer.Option("--input", "-i", help="Parquet or CSV: entity keys, time, request features")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the scored rows: .parquet or .csv")],
    model: Annotated[int | None, typer.Option("--model", help="model version (default: the champion alias)")] = None,
    chunk_rows: Annotated[int, typer.Option(help="rows scored at a time (memory is bounded by this)")] = 100_000,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Batch scoring, file to file: point-in-time features as of each row's time, the input's columns + score + model_version."""

    def go() -> None:
        p = load_project(project)
        with progress_bar(not as_json) as progress:
            result = p.predict_file(input, output, version=model, chunk_rows=chunk_rows, progress=progress)
        if as_json:
            emit_json(result.to_json())
            return
        out.print(
            f"{result.rows:,} rows scored by model version {result.model_version} in {result.seconds:.1f}s "
            f"(features {result.feature_seconds:.1f}s, model {result.score_seconds:.1f}s) -> {result.output}",
            highlight=False,
            soft_wrap=True,
        )

    run_command(go)


@stream_app.command("score")
def stream_score(
    input: Annotated[str, typer.Option("--input", help="the Redis stream of source events (at storage.redis_url)")],
    output: Annotated[str, typer.Option("--output", help="the stream the scores go to (entry id = the input entry's id)")],
    group: Annotated[str, typer.Option(help="consumer group on the input stream")] = "loopml-score",
    consumer: Annotated[str | None, typer.Option(help="consumer name (default: <host>-scorer)")] = None,
    source: Annotated[str | None, typer.Option(help="the source the stream carries (default: the label source)")] = None,
    model: Annotated[int | None, typer.Option("--model", help="model version (default: follow the champion alias)")] = None,
    batch: Annotated[int, typer.Option(help="entries read at a time")] = 200,
    max_entries: Annotated[int | None, typer.Option(help="stop after this many entries")] = None,
    until_idle: Annotated[bool, typer.Option(help="stop when the stream has nothing new")] = False,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Score each event with the live model (before applying it), apply it to the online store, write the score.

    Input entries are source rows, as for 'features consume': field = column, value = text.
    Output entries: request_id, score, model_version, variant, under the input entry's id.
    At least once, written once: an entry is acknowledged only after its score
    is in the output stream and its event in the online store; a restarted
    scorer redoes unacknowledged entries, and Redis refuses the second copy of
    an output entry. Entries that cannot be scored go to OUTPUT:quarantine.
    """

    def go() -> None:
        p = load_project(project)
        consume_until_stopped(
            lambda report: p.score_stream(
                input,
                output,
                group=group,
                consumer=consumer,
                source=source,
                version=model,
                batch=batch,
                max_entries=max_entries,
                until_idle=until_idle,
                report=report,
            ),
            as_json,
            lambda stats: (
                f"{stats.messages:,} entries, {stats.written:,} scores written to {output}, "
                f"{stats.quarantined:,} quarantined (in {output}:quarantine)"
            ),
        )

    run_command(go)
