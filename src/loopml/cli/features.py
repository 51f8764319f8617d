"""``loopml features``: point-in-time features offline (build, list) and the online store (materialize, get, consume)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import (
    JsonOpt,
    ProjectOpt,
    as_of_time,
    consume_until_stopped,
    emit_json,
    err,
    fmt,
    load_project,
    make_table,
    out,
    progress_bar,
    run_command,
)
from loopml.errors import LoopmlError

features_app = typer.Typer(help="Point-in-time features offline, and the online store.", no_args_is_help=True)


@features_app.command("build")
def features_build(
    project: ProjectOpt = Path("."),
    spine: Annotated[Path | None, typer.Option(help="Parquet/CSV of entity keys + time: one output row per spine row")] = None,
    spine_time: Annotated[str | None, typer.Option(help="the spine's time column (default: the label source's)")] = None,
    output: Annotated[Path | None, typer.Option(help="where to write the Parquet (default: under .loopml/features)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compute point-in-time-correct features for every event of the label source, or every row of a spine."""

    def go() -> None:
        p = load_project(project)
        with progress_bar(not as_json) as progress:
            result = p.build_features(progress, spine=spine, spine_time=spine_time, output=output)
        data = {"path": str(result.path), "rows": result.rows, "features": result.features, "seconds": result.seconds}
        if spine is not None:
            data["filled"] = list(result.filled)
        if as_json:
            emit_json(data)
            return
        if result.filled:
            missing = ", ".join(result.filled)
            err.print(f"note: the spine has no column for request feature(s) {missing}: filled (see docs/features.md)")
        out.print(f"{result.rows:,} rows x {len(result.features)} features in {result.seconds:.1f}s -> {result.path}")

    run_command(go)


@features_app.command("list")
def features_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """The feature catalogue: each feature, its definition, owner view and freshness."""

    def go() -> None:
        catalog = load_project(project).feature_catalog()
        if as_json:
            emit_json({"features": catalog})
            return
        rows = []
        for entry in catalog:
            d = entry["definition"]
            if entry["kind"] in ("aggregation", "indicator"):
                text = f"{d['function']}({d['column'] or '*'}) over {d['window']}, delay {d['delay']}, ttl {d['ttl'] or '-'}"
            elif entry["kind"] == "transform":
                text = f"{d['op']}({', '.join(d['inputs'])})" + (f" edges {d['edges']}" if "edges" in d else "")
            else:
                text = f"request {d['type']}" + ("" if d["required"] else " (optional)")
            fresh = entry["freshness"]
            fresh_cells = [fresh["latest_event"] or "-", fresh["materialized_at"] or "-"]
            rows.append([entry["name"], entry["view"] or "-", text, *fresh_cells, "yes" if entry["in_model"] else "no"])
        table = make_table("features", ["feature", "view", "definition", "latest event", "materialized", "model input"], rows)
        table.columns[0].no_wrap = True  # names are what users copy; let the other columns wrap
        out.print(table)

    run_command(go)


@features_app.command("materialize")
def features_materialize(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Load every entity's recent events, per view, from the latest snapshot into the online store."""

    def go() -> None:
        p = load_project(project)
        with progress_bar(not as_json) as progress:
            result = p.materialize(progress=progress)
        from loopml.project import materialize_summary

        data = materialize_summary(result)
        if as_json:
            emit_json(data)
        else:
            for view, rows in data["rows"].items():
                out.print(f"{view}: {rows:,} entities, {data['events'][view]:,} events, as of {data['as_of'][view]}")

    run_command(go)


@features_app.command("get")
def features_get(
    entity: Annotated[list[str], typer.Option(help="KEY=VALUE, e.g. customer_id=42 (repeatable)")],
    project: ProjectOpt = Path("."),
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="ISO time or epoch seconds (default: the end of the data in the store)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read online feature values for entities, computed from their events as of a time."""

    def go() -> None:
        p = load_project(project)
        pairs = {}
        for item in entity:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise LoopmlError(f"--entity {item!r}: expected KEY=VALUE")
            pairs[key] = value
        data = p.online_features(pairs, as_of_time(as_of))
        if as_json:
            emit_json(data)
        else:
            out.print(make_table("online features", ["view", "feature", "value"], [[v, f, fmt(x)] for v, f, x in _flat(data)]))

    run_command(go)


@features_app.command("consume")
def features_consume(
    stream: Annotated[str, typer.Option(help="the Redis stream of source events (at storage.redis_url)")],
    group: Annotated[str, typer.Option(help="consumer group")] = "loopml",
    consumer: Annotated[str | None, typer.Option(help="consumer name (default: host-pid)")] = None,
    source: Annotated[str | None, typer.Option(help="the source the stream carries (default: the label source)")] = None,
    max_messages: Annotated[int | None, typer.Option(help="stop after this many entries")] = None,
    until_idle: Annotated[bool, typer.Option(help="stop when the stream has nothing new")] = False,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Apply a Redis Stream of events to the online store (consumer group, ack after the write)."""

    def go() -> None:
        p = load_project(project)
        consume_until_stopped(
            lambda report: p.consume(
                stream,
                group=group,
                consumer=consumer,
                source=source,
                max_messages=max_messages,
                until_idle=until_idle,
                report=report,
            ),
            as_json,
            lambda stats: (
                f"{stats.messages:,} entries, {stats.written:,} new events, {stats.quarantined:,} quarantined "
                f"(in {stream}:quarantine)"
            ),
        )

    run_command(go)


def _flat(data: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for view, entry in data.items():
        if entry is None:
            yield view, "(unknown entity)", None
            continue
        for name, value in entry["values"].items():
            yield view, name, value
