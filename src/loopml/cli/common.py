"""What every command shares: the consoles, the ``--project``/``--json`` options, error handling, progress, tables.

Every command takes ``--project DIR``; ``--json`` prints one JSON document on
stdout and nothing else (progress and logs go to stderr). Each command runs its
body through :func:`run_command`: a :class:`~loopml.errors.LoopmlError` becomes
one line on stderr and exit code 1; anything else is reported as an internal
error in one line (exit code 2), with the traceback only under ``--debug``.

Nothing here imports a stage at module level: :func:`load_project`,
:func:`load_spec_only`, :func:`open_registry_only` and :func:`run_store`
import what they need when called; the quick commands (``check``, ``runs``,
``models``) use the last three, which load neither the stages nor LightGBM,
scikit-learn, DuckDB or pandas (``tests/test_cli.py`` checks it).
"""

from __future__ import annotations

import json
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
    from loopml.features.stream import ConsumeStats
    from loopml.layout import Layout
    from loopml.project import Project
    from loopml.registry.base import Registry
    from loopml.spec.model import Spec
    from loopml.train.tracking import RunStore

err = Console(stderr=True)
out = Console()

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="project folder holding loopml.yaml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
state = {"debug": False}


def load_project(folder: Path) -> Project:
    from loopml.project import Project

    return Project.load(folder)


def load_spec_only(folder: Path) -> tuple[Spec, Layout]:
    """The validated spec and the folder layout, without loading the stages (``check`` stays fast)."""
    from loopml.layout import Layout
    from loopml.spec.load import load_spec

    spec, _ = load_spec(folder)
    return spec, Layout.for_project(folder, spec)


def open_registry_only(folder: Path) -> Registry:
    """The configured registry, without loading the stages (``models list``, ``promote``, ``rollback`` stay fast)."""
    from loopml.registry.backends import open_registry

    return open_registry(*load_spec_only(folder))


def run_store(folder: Path) -> RunStore:
    """The run store, without loading the stages (listing runs stays fast)."""
    from loopml.train.tracking import RunStore

    return RunStore(load_spec_only(folder)[1].runs)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, float], None]]:
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


def run_command(fn: Callable[[], None]) -> None:
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
        if state["debug"]:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"internal error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)", markup=False)
        raise typer.Exit(2) from None


def consume_until_stopped(
    consume: Callable[[Callable[[str], None]], ConsumeStats], as_json: bool, summary: Callable[[ConsumeStats], str]
) -> None:
    """Run a stream consumer (``consume(report)``, its progress lines to stderr) until it ends or Ctrl-C, then print
    its totals: ``--json`` or the ``summary`` line."""
    try:
        stats = consume(lambda line: err.print(line, markup=False, highlight=False))
    except KeyboardInterrupt:
        err.print("stopped")
        return
    if as_json:
        emit_json(stats.to_json())
    else:
        out.print(summary(stats), highlight=False)


def make_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    return table


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def as_of_time(text: str | None) -> datetime | None:
    """``--as-of``: an ISO time or epoch seconds, as the online store reads times."""
    if text is None:
        return None
    try:
        from loopml.features.online.base import datetime_from_us, timestamp_us

        return datetime_from_us(timestamp_us(text))
    except (ValueError, OverflowError) as exc:
        raise LoopmlError(f"--as-of {text!r}: {exc}") from None


def since_time(text: str | None) -> datetime | None:
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
