"""The :class:`Dashboard`: the JSON behind ``GET /v1/dashboard``, section by section, cached.

Each section is built by its own function; what several sections share (the
live service's models, the traffic per bucket, the champion's latest rows) is
read once per refresh, on first use, and a failure becomes the ``error`` of the
sections that needed it (see :mod:`loopml.monitor.dashboard`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loopml.monitor.dashboard.blocks import Json, plain
from loopml.monitor.dashboard.drift_section import drift_section
from loopml.monitor.dashboard.live import LiveService
from loopml.monitor.dashboard.logdata import read_monitored, read_traffic
from loopml.monitor.dashboard.performance_section import performance_section
from loopml.monitor.dashboard.table_sections import alerts_section, runs_section, versions_section
from loopml.monitor.dashboard.traffic_sections import overview_section, rollout_section, system_section
from loopml.predlog.base import PredictionLogBackend

if TYPE_CHECKING:
    from loopml.monitor.alerts import AlertStore
    from loopml.train.tracking import RunStore

MAX_POINTS = 48  # points per time series
MAX_ROWS = 100_000  # latest predictions the drift and performance sections read (1.4-3 s with 18 columns here)


class Dashboard:
    """Assembles the dashboard's JSON from the live service, the prediction log and the project's stores."""

    def __init__(
        self,
        service: LiveService,
        log: PredictionLogBackend,
        alerts: AlertStore | None = None,
        runs: RunStore | None = None,
        *,
        max_rows: int = MAX_ROWS,
        max_points: int = MAX_POINTS,
        cache_seconds: float = 15.0,
    ) -> None:
        self.service = service
        self.log = log
        self.alerts = alerts
        self.runs = runs
        self.max_rows = max_rows
        self.max_points = max_points
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, Json] | None = None

    def data(self) -> Json:
        """The dashboard JSON; recomputed at most every ``cache_seconds``, by one thread at a time."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            result = self.collect()
            self._cached = (time.monotonic(), result)
            return result

    def collect(self) -> Json:
        started = time.perf_counter()
        service, spec = self.service, self.service.spec
        models = _Lazy(service.models)
        traffic = _Lazy(lambda: read_traffic(self.log, self.max_points))
        monitored = _Lazy(lambda: read_monitored(service, self.log, self.max_rows))
        sections = [
            _section("overview", "Overview", lambda: overview_section(self.log, models.get(), traffic.get())),
            _section(
                "rollout",
                "Champion, challenger and traffic",
                lambda: rollout_section(models.get(), traffic.get(), service.rollout.state(), service.events()),
            ),
            _section(
                "drift",
                "Drift per feature over time",
                lambda: drift_section(spec, monitored.get(), self.max_points, self.max_rows),
            ),
            _section(
                "performance",
                "Performance over time",
                lambda: performance_section(spec, monitored.get(), self.max_points, self.max_rows),
            ),
            _section(
                "system",
                "Latency and throughput",
                lambda: system_section(traffic.get(), spec.serving.latency_budget_ms, service.logger),
            ),
            _section("alerts", "Active alerts", lambda: alerts_section(self.alerts)),
            _section("versions", "Model versions", lambda: versions_section(models.get(), spec.gate.metric)),
            _section("runs", "Training runs", lambda: runs_section(self.runs)),
        ]
        out = {
            "project": spec.project,
            "generated_at": datetime.now().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
            "sections": sections,
        }
        return plain(out)  # type: ignore[no-any-return]


class _Lazy:
    """A value computed on first use and shared by the sections (an error is re-raised to each)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def get(self) -> Any:
        if not self._done:
            self._done = True
            try:
                self._value = self._make()
            except Exception as exc:  # kept and re-raised to every section that needs it
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value


def _section(section_id: str, title: str, build: Callable[[], Json]) -> Json:
    """One section; any failure becomes its ``error`` (the dashboard must never answer 500)."""
    try:
        body = build()
    except Exception as exc:  # a broken source (log, registry, store) must not take the whole page down
        return {"id": section_id, "title": title, "error": _one_line(exc)}
    return {"id": section_id, "title": title, **{k: v for k, v in body.items() if v is not None}}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
