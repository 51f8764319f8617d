"""Build the serving app for a project and run it with uvicorn.

``build_app`` wires the project's backends into a :class:`PredictionService`;
``run_server`` runs it in the foreground (the ``loopml serve`` command) and
``BackgroundServer`` runs it on a thread with a free port (the demo, tests and
benchmarks talk to it over real HTTP on loopback).

With ``--workers N > 1`` uvicorn starts N processes that each build the app
from the project folder named in ``LOOPML_PROJECT`` (set by the entry point
for its child processes only; uvicorn's multi-process mode needs an import
string and passes nothing else).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from loopml.errors import LoopmlError
from loopml.features.vector import FeatureAssembler
from loopml.loop.schedule import RetrainScheduler
from loopml.monitor.dashboard.board import Dashboard
from loopml.predlog.writer import AsyncLogger
from loopml.project import Project
from loopml.serve.app import ServeOptions, create_app
from loopml.serve.service import PredictionService

_PROJECT_ENV = "LOOPML_PROJECT"
_TOKEN_ENV = "LOOPML_ADMIN_TOKEN"
#: seconds a thread may hold the GIL while another waits for it (Python's default: 0.005)
SWITCH_INTERVAL = 0.0005


def build_app(project: Project, admin_token: str | None = None) -> FastAPI:
    spec = project.spec
    log = project.prediction_log()
    journal = project.prediction_journal()
    logger = AsyncLogger(log, max_queue=spec.serving.log_queue_size, flush_rows=spec.serving.log_flush_rows, journal=journal)
    assembler = FeatureAssembler(spec, project.online_store(), project.online_fallback())
    alerts = project.alerts()
    service = PredictionService(spec, assembler, project.registry(), logger, alerts=alerts, rollout_dir=project.layout.rollout)
    service.reload()
    options = ServeOptions(
        admin_token=admin_token,
        max_body_bytes=spec.serving.max_body_bytes,
        max_batch=spec.serving.max_batch,
        reload_seconds=spec.serving.reload_seconds,
        micro_batch=spec.serving.micro_batch,
    )
    dashboard = Dashboard(service, log, alerts=alerts, runs=project.runs())
    return create_app(service, log, logger, options, dashboard=dashboard.data)


def _serving_process() -> None:
    """Tune the interpreter of a process that serves: hand the GIL over every 0.5 ms instead of every 5 ms.

    A request crosses threads twice (event loop -> micro-batch thread -> event loop); while the
    prediction-log writer runs Python code, each crossing waited up to the 5 ms default interval.
    Measured on the fraud model at 500 requests/s: p99 7-10 ms with the default, 4-5 ms with 0.5 ms.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


def app_from_environment() -> FastAPI:
    """uvicorn factory for multi-worker mode."""
    _serving_process()
    folder = os.environ.get(_PROJECT_ENV)
    if not folder:
        raise LoopmlError(f"{_PROJECT_ENV} is not set")
    return build_app(Project.load(Path(folder)), os.environ.get(_TOKEN_ENV))


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server that calls ``on_listening(port)`` once its socket listens (the port it got, for port 0)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[int], None]) -> None:
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            listeners = [s for server in getattr(self, "servers", []) for s in (server.sockets or [])]
            self.on_listening(int(listeners[0].getsockname()[1]) if listeners else self.config.port)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_port(host: str, port: int) -> None:
    """LoopmlError naming the address when ``host:port`` cannot be bound (before worker processes are started)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LoopmlError(f"serve: cannot listen on {_url(host, port)}: {exc.strerror or exc}") from None


def run_server(
    project: Project,
    host: str,
    port: int,
    workers: int = 1,
    admin_token: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """``loopml serve``: uvicorn in the foreground; with ``retraining.enabled``, the loop on its schedule beside it.

    ``announce`` gets one line once the server listens (its address, workers and model version) and one when it
    has stopped (Ctrl-C, SIGTERM).
    """
    say = announce or (lambda _line: None)
    live = project.registry().alias(project.spec.rollout.alias)
    model = f"model version {live.version}" if live is not None else "no model yet (train one, then POST /v1/admin/reload)"
    bound: list[int] = []

    def listening(at: int) -> None:
        bound.append(at)
        count = f"{workers} worker{'s' if workers > 1 else ''}"
        say(f"loopml serve: listening on {_url(host, at)} ({count}), {model}; Ctrl-C to stop")

    _check_port(host, port)  # a port in use is one error line here, not uvicorn's log (once per worker) and an exit
    scheduler = None
    if project.spec.retraining.enabled:
        interval = project.spec.retraining.check_every.total_seconds()
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        scheduler = RetrainScheduler(project.layout.root, interval, url, admin_token).start()
    try:
        if workers > 1:  # each worker process tunes itself (app_from_environment)
            os.environ[_PROJECT_ENV] = str(project.layout.root)
            if admin_token:
                os.environ[_TOKEN_ENV] = admin_token
            listening(port)
            uvicorn.run(
                "loopml.server:app_from_environment",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
            )
        else:
            _serving_process()
            config = uvicorn.Config(build_app(project, admin_token), host=host, port=port, log_level="warning")
            server = _AnnouncingServer(config, listening)
            try:
                server.run()
            except SystemExit:
                if not server.started:  # uvicorn logged why (address in use, a failed startup) and exits
                    where = _url(host, port)
                    raise LoopmlError(f"serve: could not start listening on {where} (uvicorn's error is above)") from None
                raise
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed Ctrl-C on
        pass
    finally:
        if scheduler is not None:
            scheduler.stop()
    if bound:
        say(f"loopml serve: stopped listening on {_url(host, bound[0])}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """Run an app with uvicorn on a thread, on a free loopback port."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="loopml-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise LoopmlError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
