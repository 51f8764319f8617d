"""The ``loopml`` command line: parse, call :class:`~loopml.project.Project`, render.

Every command takes ``--project DIR``; ``--json`` prints one JSON document on
stdout and nothing else (progress and logs go to stderr). A
:class:`~loopml.errors.LoopmlError` becomes one line on stderr and exit code
1; anything else is reported as an internal error in one line, with the
traceback only under ``--debug``.

The stages are imported inside the commands that use them, so that quick
commands (``--help``, ``runs list``, ``models list``...) do not pay for
importing scikit-learn, LightGBM and the serving stack.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loopml.errors import LoopmlError, SpecError

if TYPE_CHECKING:
    from loopml.project import Project
    from loopml.train.tracking import RunStore

app = typer.Typer(
    name="loopml",
    help="The whole production ML loop for tabular and event data: ingest, features, train, serve, monitor, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(help="Point-in-time features offline, and the online store.", no_args_is_help=True)
runs_app = typer.Typer(help="Tracked training runs.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: versions, aliases, promotion and rollback.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
alerts_app = typer.Typer(help="Alerts raised by monitoring and rollouts: list and resolve.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


def _load(folder: Path) -> Project:
    from loopml.project import Project

    return Project.load(folder)


def _runs(folder: Path) -> RunStore:
    """The run store, without loading the stages (listing runs stays fast)."""
    from loopml.layout import Layout
    from loopml.spec.load import load_spec
    from loopml.train.tracking import RunStore

    spec, _ = load_spec(folder)
    return RunStore(Layout.for_project(folder, spec).runs)


err = Console(stderr=True)
out = Console()

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="project folder holding loopml.yaml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of internal errors")] = False) -> None:
    _state["debug"] = debug


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Callable[[str, float], None]]:
    """A Rich progress bar on stderr driven by ``progress(stage, fraction)`` callbacks."""
    if not enabled or not err.is_terminal:

        def quiet(stage: str, fraction: float) -> None:
            return None

        yield quiet
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=1.0)

        def update(stage: str, fraction: float) -> None:
            bar.update(task, description=stage, completed=max(0.0, min(1.0, fraction)))

        yield update


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except SpecError as exc:
        for problem in exc.problems:
            err.print(f"error: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except LoopmlError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _state["debug"]:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"internal error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)", markup=False)
        raise typer.Exit(2) from None


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    return table


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


# --------------------------------------------------------------------------- project set-up
@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="folder to create the project in")],
    example: Annotated[str | None, typer.Option(help="built-in example world: fraud")] = None,
    data: Annotated[Path | None, typer.Option(help="CSV/Parquet/JSONL file to scaffold a project from")] = None,
    label: Annotated[str | None, typer.Option(help="label column (with --data)")] = None,
    positive: Annotated[str | None, typer.Option(help="positive label value (binary)")] = None,
    task: Annotated[str | None, typer.Option(help="binary or regression (inferred when omitted)")] = None,
    timestamp: Annotated[str | None, typer.Option(help="event-time column")] = None,
    entity: Annotated[list[str] | None, typer.Option(help="entity key column (repeatable)")] = None,
    days: Annotated[int, typer.Option(help="fraud example: days to simulate")] = 183,
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
            with _progress() as progress:
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
                )
            err.print(f"wrote {folder / 'loopml.yaml'} and {rows:,} simulated transactions under {folder / 'data'}")
        else:
            assert data is not None
            if label is None:
                raise LoopmlError("init: --data needs --label COL")
            from loopml.scaffold import init_from_data

            path = init_from_data(folder, data, label, positive, task, timestamp, entity or [], force=force)
            err.print(f"wrote {path}; review it, then run 'loopml check' and 'loopml ingest'")

    _run(go)


@app.command()
def check(project: ProjectOpt = Path(".")) -> None:
    """Validate loopml.yaml; every error names its key and line."""

    def go() -> None:
        p = _load(project)
        s = p.spec
        n_features = sum(len(v.outputs(k)) for k, v in s.features.views.items()) + len(s.features.transforms)
        err.print(f"ok: {p.layout.root / 'loopml.yaml'} is valid ({len(s.sources)} source(s), {n_features} derived features)")

    _run(go)


@app.command("ingest")
def ingest_cmd(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Read the sources, validate them, store a content-hashed snapshot; bad rows go to quarantine."""

    def go() -> None:
        p = _load(project)
        with _progress(not as_json) as progress:
            result = p.ingest(progress)
        if as_json:
            _emit_json(result.to_json())
            return
        failing = [c for c in result.checks if not c.passed]
        rows = [[c.source, c.column or "", c.rule, c.severity, c.failed_rows, c.message] for c in failing]
        if rows:
            err.print(_table("checks that found problems", ["source", "column", "rule", "severity", "rows", "message"], rows))
        out.print(
            f"snapshot {result.snapshot}: {result.rows_in:,} rows in, {result.rows_valid:,} valid, "
            f"{result.rows_quarantined:,} quarantined"
        )

    _run(go)


# --------------------------------------------------------------------------- features
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
        p = _load(project)
        with _progress(not as_json) as progress:
            result = p.build_features(progress, spine=spine, spine_time=spine_time, output=output)
        data = {"path": str(result.path), "rows": result.rows, "features": result.features, "seconds": result.seconds}
        if spine is not None:
            data["filled"] = list(result.filled)
        if as_json:
            _emit_json(data)
            return
        if result.filled:
            missing = ", ".join(result.filled)
            err.print(f"note: the spine has no column for request feature(s) {missing}: filled (see docs/features.md)")
        out.print(f"{result.rows:,} rows x {len(result.features)} features in {result.seconds:.1f}s -> {result.path}")

    _run(go)


@features_app.command("list")
def features_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """The feature catalogue: each feature, its definition, owner view and freshness."""

    def go() -> None:
        catalog = _load(project).feature_catalog()
        if as_json:
            _emit_json({"features": catalog})
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
        table = _table("features", ["feature", "view", "definition", "latest event", "materialized", "model input"], rows)
        table.columns[0].no_wrap = True  # names are what users copy; let the other columns wrap
        out.print(table)

    _run(go)


@features_app.command("materialize")
def features_materialize(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Load every entity's recent events, per view, from the latest snapshot into the online store."""

    def go() -> None:
        p = _load(project)
        with _progress(not as_json) as progress:
            result = p.materialize(progress=progress)
        from loopml.project import materialize_summary

        data = materialize_summary(result)
        if as_json:
            _emit_json(data)
        else:
            for view, rows in data["rows"].items():
                out.print(f"{view}: {rows:,} entities, {data['events'][view]:,} events, as of {data['as_of'][view]}")

    _run(go)


def _as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        from loopml.features.online import datetime_from_us, timestamp_us

        return datetime_from_us(timestamp_us(text))
    except (ValueError, OverflowError) as exc:
        raise LoopmlError(f"--as-of {text!r}: {exc}") from None


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
        p = _load(project)
        pairs = {}
        for item in entity:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise LoopmlError(f"--entity {item!r}: expected KEY=VALUE")
            pairs[key] = value
        data = p.online_features(pairs, _as_of(as_of))
        if as_json:
            _emit_json(data)
        else:
            out.print(_table("online features", ["view", "feature", "value"], [[v, f, _fmt(x)] for v, f, x in _flat(data)]))

    _run(go)


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
        p = _load(project)

        def report(line: str) -> None:
            err.print(line, markup=False, highlight=False)

        try:
            stats = p.consume(
                stream,
                group=group,
                consumer=consumer,
                source=source,
                max_messages=max_messages,
                until_idle=until_idle,
                report=report,
            )
        except KeyboardInterrupt:
            err.print("stopped")
            return
        if as_json:
            _emit_json(stats.to_json())
        else:
            out.print(
                f"{stats.messages:,} entries, {stats.written:,} new events, {stats.quarantined:,} quarantined "
                f"(in {stream}:quarantine)"
            )

    _run(go)


def _flat(data: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for view, entry in data.items():
        if entry is None:
            yield view, "(unknown entity)", None
            continue
        for name, value in entry["values"].items():
            yield view, name, value


# --------------------------------------------------------------------------- training and registry
@app.command("train")
def train_cmd(
    project: ProjectOpt = Path("."),
    trials: Annotated[int, typer.Option(help="hyper-parameter tuning trials (0: spec params)")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train, evaluate and register a model version, then apply the promotion gate."""

    def go() -> None:
        p = _load(project)
        with _progress(not as_json) as progress:
            result = p.train(trials=trials, progress=progress)
        data = result.to_json()
        if as_json:
            _emit_json(data)
            return
        metrics = data["metrics"]
        rows = [[name, _fmt(metrics["valid"].get(name)), _fmt(value)] for name, value in metrics["test"].items()]
        out.print(_table(f"run {data['run_id']} -> model version {data['model_version']}", ["metric", "valid", "test"], rows))
        verdict = "promoted to champion" if data["promoted"] else "not promoted"
        out.print(f"{verdict}: {'; '.join(data.get('gate', {}).get('reasons', []))}")
        if data.get("report"):
            out.print(f"report: {data['report']}", soft_wrap=True, highlight=False)

    _run(go)


@runs_app.command("list")
def runs_list(
    project: ProjectOpt = Path("."),
    limit: Annotated[int, typer.Option(help="rows per page")] = 20,
    page: Annotated[int, typer.Option(help="page number, from 1")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """List tracked runs, newest first."""

    def go() -> None:
        runs = _runs(project).list(limit=limit, offset=(max(page, 1) - 1) * limit)
        data = [r.to_json() for r in runs]
        if as_json:
            _emit_json(data)
        else:
            rows = [[d.get("run_id"), d.get("started_at"), d.get("status"), d.get("model_version")] for d in data]
            out.print(_table("runs", ["run", "started", "status", "model version"], rows))

    _run(go)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="run id")], project: ProjectOpt = Path("."), as_json: JsonOpt = False
) -> None:
    """Everything recorded about one run."""

    def go() -> None:
        store = _runs(project)
        record = store.get(run)
        report = store.root / record.run_id / "report.html"
        data = {**record.to_json(), "report": str(report) if "report.html" in record.artifacts else None}
        if as_json:
            _emit_json(data)
        else:
            out.print_json(json.dumps(data, default=str))
            if data["report"]:
                out.print(f"report: {data['report']}", soft_wrap=True, highlight=False)

    _run(go)


@models_app.command("list")
def models_list(project: ProjectOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Model versions with their aliases and test metrics."""

    def go() -> None:
        data = [v.to_json() for v in _load(project).registry().list()]
        if as_json:
            _emit_json(data)
            return
        rows = []
        for d in data:
            test = d["metrics"].get("test", d["metrics"])
            rows.append([d["version"], ", ".join(d["aliases"]), d["created_at"], _fmt(test.get("average_precision"))])
        out.print(_table("model versions", ["version", "aliases", "created", "test average_precision"], rows))

    _run(go)


@models_app.command("promote")
def models_promote(
    version: Annotated[int, typer.Argument(help="model version")],
    alias: Annotated[str, typer.Option(help="alias to move")] = "champion",
    project: ProjectOpt = Path("."),
) -> None:
    """Point an alias (default champion) at a version."""

    def go() -> None:
        v = _load(project).registry().set_alias(alias, version, reason="promoted by hand (loopml models promote)")
        out.print(f"{alias} -> version {v.version}")

    _run(go)


@models_app.command("rollback")
def models_rollback(
    alias: Annotated[str, typer.Option(help="alias to move back")] = "champion", project: ProjectOpt = Path(".")
) -> None:
    """Move an alias back to the version it pointed at before."""

    def go() -> None:
        v = _load(project).registry().rollback(alias)
        out.print(f"{alias} -> version {v.version}")

    _run(go)


# --------------------------------------------------------------------------- serving and monitoring
@app.command()
def serve(
    project: ProjectOpt = Path("."),
    host: Annotated[str | None, typer.Option(help="bind address (default: serving.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serving.port)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (default: serving.workers)")] = None,
) -> None:
    """Run the online prediction service (FastAPI + uvicorn)."""

    def go() -> None:
        p = _load(project)
        from loopml.serve.runner import run_server

        run_server(
            p,
            host or p.spec.serving.host,
            port or p.spec.serving.port,
            workers or p.spec.serving.workers,
            admin_token=os.environ.get("LOOPML_ADMIN_TOKEN"),
        )

    _run(go)


@app.command()
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
        p = _load(project)
        with _progress(not as_json) as progress:
            result = p.predict_file(input, output, version=model, chunk_rows=chunk_rows, progress=progress)
        if as_json:
            _emit_json(result.to_json())
            return
        out.print(
            f"{result.rows:,} rows scored by model version {result.model_version} in {result.seconds:.1f}s "
            f"(features {result.feature_seconds:.1f}s, model {result.score_seconds:.1f}s) -> {result.output}",
            highlight=False,
            soft_wrap=True,
        )

    _run(go)


stream_app = typer.Typer(help="Score a Redis Stream of events into an output stream.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")


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
        p = _load(project)

        def report(line: str) -> None:
            err.print(line, markup=False, highlight=False)

        try:
            stats = p.score_stream(
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
            )
        except KeyboardInterrupt:
            err.print("stopped")
            return
        if as_json:
            _emit_json(stats.to_json())
        else:
            out.print(
                f"{stats.messages:,} entries, {stats.written:,} scores written to {output}, "
                f"{stats.quarantined:,} quarantined (in {output}:quarantine)",
                highlight=False,
            )

    _run(go)


def _since(text: str | None) -> datetime | None:
    """``--since``: an ISO date/time (local, as the log's clock) or a duration back from now (``7d``, ``12h``)."""
    if text is None:
        return None
    from loopml.spec.model import parse_duration

    try:
        return datetime.now() - parse_duration(text)
    except ValueError:
        pass
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        expected = "an ISO date or time (2026-05-01, 2026-05-01T12:00) or a duration (7d, 12h)"
        raise LoopmlError(f"--since {text!r}: expected {expected}") from None
    return ts.astimezone().replace(tzinfo=None) if ts.tzinfo else ts


@app.command()
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
        report = _load(project).monitor_report(since=_since(since), window=length)
        if as_json:
            _emit_json(report)
            return
        _print_monitor(report)

    _run(go)


def _print_monitor(report: dict[str, Any]) -> None:
    period = report["period"]
    out.print(
        f"model version {report['model_version']}: {report['rows']:,} of {report['predictions']:,} predictions "
        f"({report['labelled']:,} labelled), {period['first'] or '-'} to {period['last'] or '-'}, "
        f"{period['windows']} window(s) of {period['window_s'] / 3600:g} h",
        highlight=False,
    )
    order = {"drift": 0, "ok": 1, "not enough data": 2}
    drift = sorted(report["drift"], key=lambda d: (order.get(d["status"], 9), d["feature"]))
    rows = [[d["feature"], d["test"], _fmt(d["statistic"]), _fmt(d["p_value"]), f"{d['rows']:,}", d["status"]] for d in drift]
    out.print(_table("drift over the period", ["column", "test", "statistic", "p-value", "rows", "status"], rows))
    quality = report["quality"]
    if quality["issues"]:
        issues = [[i["check"], i["subject"], i["message"]] for i in quality["issues"]]
        out.print(_table("data quality issues", ["check", "subject", "detail"], issues))
    else:
        out.print("data quality: no issues", highlight=False)
    perf = report["performance"]
    if perf is not None:
        metric = perf.get("metric")
        live = (perf.get("metrics") or {}).get(metric) if perf.get("status") == "ok" else None
        estimated = (perf.get("estimated") or {}).get(metric)
        base = (perf.get("baseline") or {}).get(metric)
        out.print(
            f"{metric}: live {_fmt(live)} on {perf['labelled']:,} labelled rows"
            f"{' (not enough labels)' if perf.get('status') != 'ok' else ''}, estimated {_fmt(estimated)} (CBPE), "
            f"training baseline {_fmt(base)}",
            highlight=False,
        )
    system = report["system"]
    latency = system["latency_ms"]
    rate = system["throughput_per_s"]
    out.print(
        f"latency ms p50 {_fmt(latency['p50'])}, p95 {_fmt(latency['p95'])}, p99 {_fmt(latency['p99'])}; "
        f"throughput {_fmt(rate)}/s",
        highlight=False,
    )
    alerts = report["alerts"]
    if alerts:
        lines = [[a["rule"], a["subject"], a["severity"], a["message"]] for a in alerts]
        out.print(_table(f"{len(alerts)} alert(s)", ["rule", "subject", "severity", "message"], lines))
    else:
        out.print("no alerts", highlight=False)
    if report.get("resolved_alerts"):
        out.print(f"{len(report['resolved_alerts'])} alert(s) resolved", highlight=False)


@app.command()
def feedback(
    file: Annotated[Path, typer.Option("--file", "-f", help="CSV or Parquet with columns request_id,label (optional ts)")],
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Add labels from a file to the prediction log; they join their predictions by request id, however late."""

    def go() -> None:
        from loopml.layout import Layout
        from loopml.monitor.predlog import open_prediction_log, read_labels_file
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
            _emit_json(result)
            return
        out.print(
            f"{len(items):,} label(s) added from {file}: {matched:,} request id(s) joined with logged predictions, "
            f"{distinct - matched:,} pending until their predictions are logged",
            highlight=False,
            soft_wrap=True,
        )

    _run(go)


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
            _emit_json([a.to_json() for a in alerts])
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
                f"    value {_fmt(a.value)}, threshold {_fmt(a.threshold)}; seen {a.count}x from"
                f" {a.first_seen:%Y-%m-%d %H:%M:%S} to {a.last_seen:%Y-%m-%d %H:%M:%S} UTC{status}{webhook}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    _run(go)


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

    _run(go)


@app.command()
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
        p = _load(project)
        with _progress(not as_json) as progress:
            token = os.environ.get("LOOPML_ADMIN_TOKEN")
            run = p.retrain(force=force, service_url=service_url, admin_token=token, progress=progress)
        if as_json:
            _emit_json(run.to_json())
            return
        rows = [[t["trigger"], "fired" if t["fired"] else "-", t["detail"]] for t in run.triggers]
        out.print(_table("triggers", ["trigger", "", "detail"], rows))
        if run.steps:
            steps = [[s.name, s.status, json.dumps(s.outputs, default=str)[:100]] for s in run.steps]
            out.print(_table(f"loop run {run.id}", ["step", "status", "outputs"], steps))
        out.print(f"{run.status}: {run.outcome or 'no trigger fired'}")

    _run(go)


@app.command()
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
            _emit_json(summary)
            return
        rows = [[k, _fmt(v)] for k, v in summary["summary"].items() if k != "report"]
        out.print(_table("loopml demo", ["step", "result"], rows))
        out.print(f"report: {summary['summary']['report']}", soft_wrap=True, highlight=False)

    _run(go)


# --------------------------------------------------------------------------- experiments
experiment_app = typer.Typer(help="A/B experiment statistics over the prediction log, and sample sizes.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _experiment_defaults(p: Project) -> tuple[list[str], dict[str, float] | None, str | None]:
    """Control candidates, expected weights and a reason to skip the sample-ratio test, from ``rollout``."""
    rollout = p.spec.rollout
    candidates = [name for name, v in rollout.variants.items() if v.alias == rollout.alias] + [rollout.alias, "champion"]
    if rollout.policy == "ab":
        return candidates, {name: v.weight for name, v in rollout.variants.items()}, None
    if rollout.policy in ("canary", "bandit", "bluegreen"):
        return candidates, None, f"the {rollout.policy} policy changes the split over time: give --weights to test a fixed split"
    return candidates, None, None


def _g(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _test_row(label: str, result: Any) -> list[str]:
    if isinstance(result, str):
        return [label, result, "", "", ""]
    verdict = "significant" if result.significant else "-"
    ci = f"{result.ci_low:+.3g} .. {result.ci_high:+.3g}"
    return [label, f"{result.estimate:+.3g}", ci, f"{result.p_value:.3g}", verdict]


@experiment_app.command("report")
def experiment_report_cmd(
    project: ProjectOpt = Path("."),
    since: Annotated[str | None, typer.Option(help="only predictions at or after this ISO date/time")] = None,
    control: Annotated[str | None, typer.Option(help="control variant (default: the champion's, else the first)")] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="expected split for the sample-ratio test, e.g. a=0.5,b=0.5 (default: rollout weights, else equal)"),
    ] = None,
    metric: Annotated[str, typer.Option(help="numeric prediction-log column compared with Welch's t-test")] = "score",
    alpha: Annotated[float, typer.Option(help="significance level of the tests and intervals")] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Per-variant counts and metrics, and each variant against the control: z-test, Welch, mSPRT, SRM."""

    def go() -> None:
        from loopml.experiment.report import experiment_report, parse_since
        from loopml.experiment.stats import parse_weights

        p = _load(project)
        candidates, default_weights, srm_skip = _experiment_defaults(p)
        given = parse_weights(weights)
        log = p.prediction_log()
        try:
            report = experiment_report(
                log,
                task=p.spec.task,
                since=parse_since(since),
                control=control,
                weights=given or default_weights,
                metric=metric,
                control_candidates=candidates,
                srm_skip=None if given else srm_skip,
                alpha=alpha,
            )
        finally:
            log.close()
        if as_json:
            _emit_json(report.to_json())
            return
        since_text = f" since {report.since:%Y-%m-%d %H:%M}" if report.since else ""
        if not report.variants:
            out.print(f"not enough data: no predictions logged{since_text}", highlight=False)
            return
        vs = report.variants  # one column per variant: a few variants, many figures
        lines: list[list[Any]] = [
            ["requests", *(f"{v.requests:,}" for v in vs)],
            ["model versions", *(",".join(map(str, v.model_versions)) for v in vs)],
            ["labelled", *(f"{v.labelled:,} ({v.labelled_fraction:.0%})" for v in vs)],
            ["label rate", *(_g(v.label_rate, ".2%") for v in vs)],
            ["mean score", *(_g(v.mean_score) for v in vs)],
        ]
        lines += [[f"mean {metric}", *(_g(v.mean_metric) for v in vs)]] if metric != "score" else []
        lines += [
            ["average precision", *(_g(v.average_precision) for v in vs)],
            ["ROC AUC", *(_g(v.roc_auc) for v in vs)],
            ["latency p50 / p99 ms", *(f"{_g(v.latency_p50_ms)} / {_g(v.latency_p99_ms)}" for v in vs)],
        ]
        names = [f"{v.variant} (control)" if v.variant == report.control else v.variant for v in vs]
        out.print(_table(f"experiment: {report.rows:,} predictions{since_text}", ["", *names], lines))
        for c in report.comparisons:
            tests = [
                _test_row("label rate z-test", c.label_rate),
                _test_row("label rate mSPRT", c.label_rate_sequential),
                _test_row(f"{metric} Welch", c.metric),
                _test_row(f"{metric} mSPRT", c.metric_sequential),
            ]
            title = f"{c.variant} minus {c.control} (mSPRT: valid however often you look)"
            out.print(_table(title, ["test", "difference", f"{1 - report.alpha:.0%} CI", "p-value", "verdict"], tests))
        if isinstance(report.srm, str):
            out.print(f"sample ratio: {report.srm}", highlight=False, soft_wrap=True)
        else:
            verdict = "MISMATCH: the split is not what was configured; fix assignment before trusting the tests"
            ok = verdict if report.srm.mismatch else "ok"
            out.print(
                f"sample ratio: chi-square {report.srm.statistic:.3f}, p = {report.srm.p_value:.4g} "
                f"(flag below {report.srm.threshold:g}): {ok}",
                highlight=False,
                soft_wrap=True,
            )

    _run(go)


@experiment_app.command("size")
def experiment_size_cmd(
    rate_control: Annotated[float | None, typer.Option(help="proportions: the control's rate, e.g. 0.05")] = None,
    rate_treatment: Annotated[float | None, typer.Option(help="proportions: the rate to detect, e.g. 0.06")] = None,
    difference: Annotated[float | None, typer.Option(help="means: the difference to detect")] = None,
    sd: Annotated[float | None, typer.Option(help="means: the standard deviation of one observation")] = None,
    alpha: Annotated[float, typer.Option(help="two-sided significance level")] = 0.05,
    power: Annotated[float, typer.Option(help="probability of detecting the effect")] = 0.8,
    ratio: Annotated[float, typer.Option(help="treatment size / control size")] = 1.0,
    project: ProjectOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Observations per group for a two-sided test: two proportions (Cohen's h) or two means."""

    def go() -> None:
        from loopml.experiment.stats import sample_size_means, sample_size_proportions

        props = rate_control is not None or rate_treatment is not None
        means = difference is not None or sd is not None
        if props == means:
            raise LoopmlError("experiment size: give --rate-control and --rate-treatment, or --difference and --sd")
        if props:
            if rate_control is None or rate_treatment is None:
                raise LoopmlError("experiment size: give both --rate-control and --rate-treatment")
            size = sample_size_proportions(rate_control, rate_treatment, alpha=alpha, power=power, ratio=ratio)
        else:
            if difference is None or sd is None:
                raise LoopmlError("experiment size: give both --difference and --sd")
            size = sample_size_means(difference, sd, alpha=alpha, power=power, ratio=ratio)
        if as_json:
            _emit_json(size.to_json())
            return
        out.print(
            f"{size.n_control:,} control + {size.n_treatment:,} treatment = {size.n_control + size.n_treatment:,} observations "
            f"(alpha {alpha:g}, power {power:g}; {size.formula}, effect size {size.effect_size:.4f})",
            highlight=False,
            soft_wrap=True,
        )

    _run(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
