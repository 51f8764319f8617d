"""The ``loopml`` command line: parse, call :class:`~loopml.project.Project`, render.

One module per command group: ``project`` (init, check, ingest), ``features``,
``training`` (train, runs, models), ``serving`` (serve, predict, stream),
``monitoring`` (monitor, feedback, alerts), ``loop`` (retrain, demo) and
``experiment``; ``common`` holds what they share (options, error handling,
progress, tables). This module holds the root app, the ``--debug`` switch and
the registration below, whose order is the order of ``loopml --help``.

The stages are imported inside the commands that use them, so that quick
commands (``--help``, ``runs list``, ``models list``...) do not pay for
importing scikit-learn, LightGBM and the serving stack.
"""

from __future__ import annotations

from typing import Annotated

import typer

from loopml.cli import experiment, features, loop, monitoring, project, serving, training
from loopml.cli.common import state

app = typer.Typer(
    name="loopml",
    help="The whole production ML loop for tabular and event data: ingest, features, train, serve, monitor, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of internal errors")] = False) -> None:
    state["debug"] = debug


# Commands first, then groups (Typer lists them in that order whatever the order of registration).
app.command("init")(project.init)
app.command("check")(project.check)
app.command("ingest")(project.ingest_cmd)
app.command("train")(training.train_cmd)
app.command("serve")(serving.serve)
app.command("predict")(serving.predict)
app.command("monitor")(monitoring.monitor)
app.command("feedback")(monitoring.feedback)
app.command("retrain")(loop.retrain)
app.command("demo")(loop.demo)
app.add_typer(features.features_app, name="features")
app.add_typer(training.runs_app, name="runs")
app.add_typer(training.models_app, name="models")
app.add_typer(monitoring.alerts_app, name="alerts")
app.add_typer(serving.stream_app, name="stream")
app.add_typer(experiment.experiment_app, name="experiment")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
