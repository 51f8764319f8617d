"""The HTTP face of the prediction service (FastAPI), as in the shared contract.

Everything here translates between HTTP and :class:`PredictionService`: bad
input becomes a 4xx JSON body naming each field, a failing model a 503, and
nothing a client sends can produce a 5xx. Prometheus metrics live in a
registry owned by the app (no process globals), so several apps can coexist
in one process (tests, the demo).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from loopml.monitor.dashboard.board import Dashboard
from loopml.predlog.base import PredictionLogBackend
from loopml.predlog.records import Feedback
from loopml.predlog.writer import AsyncLogger
from loopml.serve.admin import admin_router
from loopml.serve.batcher import MicroBatcher
from loopml.serve.dashboard import render_page
from loopml.serve.errors import FeaturesUnavailable, ModelFailure, RequestError
from loopml.serve.fastpath import PredictLane
from loopml.serve.guard import BodyGuard, RequestMetrics
from loopml.serve.schemas import (
    ErrorResponse,
    FeedbackBatchRequest,
    FeedbackRequest,
    PredictBatchRequest,
    PredictBatchResponse,
    Prediction,
    PredictRequest,
    RequestShape,
    error_body,
    install_openapi,
)
from loopml.serve.service import PredictionService


@dataclass(frozen=True)
class ServeOptions:
    admin_token: str | None = None
    max_body_bytes: int = 1_048_576
    #: most instances in one POST /v1/predict/batch (serving.max_batch)
    max_batch: int = 1000
    #: seconds between checks of the registry aliases (hot swap); 0: only on POST /v1/admin/reload
    reload_seconds: float = 0.0
    #: most single predictions scored together (``serve/batcher.py``); 1 scores each alone
    micro_batch: int = 64


class _Watcher:
    """Reload the service's models every ``interval`` seconds, so a moved alias is served without a restart."""

    def __init__(self, service: PredictionService, interval: float) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._run, args=(service, interval), name="loopml-reload", daemon=True)
            self._thread.start()

    def _run(self, service: PredictionService, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                service.reload()
            except Exception:  # a registry hiccup must not stop serving the models already loaded
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Metrics:
    def __init__(self, service: PredictionService, logger: AsyncLogger | None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("loopml_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "loopml_request_latency_seconds",
            "request latency",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.predictions = Counter("loopml_predictions", "predictions served", ["variant"], registry=self.registry)
        self.model_errors = Counter("loopml_model_errors", "requests failed by the model", registry=self.registry)
        self.store_errors = Counter(
            "loopml_feature_store_errors", "requests failed because the online store was unreachable", registry=self.registry
        )
        version = Gauge("loopml_model_version", "live model version", registry=self.registry)
        version.set_function(lambda: float(service.live.version) if service.live else 0.0)
        dropped = Gauge("loopml_log_dropped", "prediction log records dropped", registry=self.registry)
        dropped.set_function(lambda: float(logger.dropped) if logger else 0.0)


_UNION_TAGS = {
    "int",
    "float",
    "bool",
    "str",
    "none",
    "constrained-str",
    "constrained-float",
    "json-or-python[json=float,python=float]",
}


def _errors_from_validation(exc: RequestValidationError) -> list[tuple[str, str]]:
    """One (field, message) per bad field; pydantic's union-member tags are folded into their field."""
    merged: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body" and str(p) not in _UNION_TAGS and "[" not in str(p)]
        messages = merged.setdefault(".".join(loc) or "body", [])
        msg = str(err.get("msg", "invalid"))
        if msg not in messages:
            messages.append(msg)
    return [(field, " or ".join(messages)) for field, messages in merged.items()]


_BATCH = "/v1/predict/batch"
_PREDICT_PATHS = ("/v1/predict", _BATCH)


def _merged(named: list[tuple[str, str]], more: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``named`` plus the problems of ``more`` about fields that neither ``named`` nor its parents name."""
    fields = {field for field, _ in named}
    if "body" in fields:
        return named
    out = list(named)
    for field, message in more:
        parts = field.split(".")
        if not any(".".join(parts[:n]) in fields for n in range(1, len(parts) + 1)):
            out.append((field, message))
            fields.add(field)
    return out


def _unparsable(exc: RequestValidationError) -> list[tuple[str, str]]:
    """(body, reason) when the body is not JSON at all (FastAPI reports that as a validation error), else []."""
    errors = exc.errors()
    if not errors or any(err.get("type") != "json_invalid" for err in errors):
        return []
    err = errors[0]
    where = [p for p in err.get("loc", ()) if isinstance(p, int)]
    reason = str((err.get("ctx") or {}).get("error", "invalid JSON"))
    return [("body", f"not valid JSON: {reason}" + (f" at character {where[0]}" if where else ""))]


def _parse_failure(exc: StarletteHTTPException) -> str:
    """Why FastAPI could not parse a body (its 400 names no reason; the cause does)."""
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        return "JSON nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text ({cause.reason} at byte {cause.start})"
    return f"not valid JSON ({type(cause).__name__}: {cause})" if cause is not None else "not valid JSON"


class _ServeApp(FastAPI):
    """FastAPI with the predict lane (``serve/fastpath.py``) in front of its own stack."""

    lane: PredictLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and lane.takes(scope):
            await lane.handle(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    service: PredictionService,
    log: PredictionLogBackend,
    logger: AsyncLogger | None,
    options: ServeOptions = ServeOptions(),
    dashboard: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The app; ``dashboard`` returns the JSON of ``GET /v1/dashboard`` (default: a :class:`Dashboard` without alerts or runs)."""
    metrics = _Metrics(service, logger)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if logger is not None:
            logger.start()
        watcher = _Watcher(service, options.reload_seconds)
        try:
            yield
        finally:
            watcher.stop()
            batcher.close()
            service.close()
            if logger is not None:
                logger.close()

    app = _ServeApp(title="loopml", version="0.1.0", lifespan=lifespan)
    app.state.service = service
    batcher = MicroBatcher(service, options.micro_batch)
    app.state.batcher = batcher
    shape = RequestShape(
        tuple(sorted(service.entity_keys)), service.spec.features.request, options.max_batch, service.entity_types
    )
    install_openapi(app, shape)

    def advice(path: str, field: str) -> str:
        """What to send instead of a non-finite number (null only where the predict body accepts it)."""
        return shape.non_finite_advice(field, batch=path == _BATCH) if path in _PREDICT_PATHS else "send a finite number"

    # added before the metrics middleware below, so it runs inside it and its 413s and 422s are counted
    app.add_middleware(BodyGuard, max_body_bytes=options.max_body_bytes, advice=advice)

    def observe(path: str, status: int, seconds: float) -> None:
        metrics.requests.labels(path, str(status)).inc()
        metrics.latency.labels(path).observe(seconds)

    app.add_middleware(RequestMetrics, observe=observe)

    def predicted(result: Prediction) -> None:
        metrics.predictions.labels(result.variant).inc()

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        unparsable = _unparsable(exc)
        if unparsable:
            return JSONResponse(error_body("the body is not JSON", unparsable), status_code=400)
        problems = _errors_from_validation(exc)
        if request.url.path in _PREDICT_PATHS:  # name the project's checks' findings too, not only pydantic's
            problems = _merged(problems, shape.check_raw(exc.body, batch=request.url.path == _BATCH))
        return JSONResponse(error_body("invalid request", problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(error_body("the body is not JSON", [("body", _parse_failure(exc))]), status_code=400)
        message = f"{exc.detail}: {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)

    def scoring_failure(exc: Exception) -> JSONResponse | None:
        """The answer to an error raised while scoring (None: not one of those)."""
        if isinstance(exc, RequestError):
            return JSONResponse(error_body("invalid request", exc.details), status_code=422)
        if isinstance(exc, ModelFailure):
            (metrics.store_errors if isinstance(exc, FeaturesUnavailable) else metrics.model_errors).inc()
            return JSONResponse(error_body(str(exc)), status_code=503)
        return None

    @app.exception_handler(RequestError)
    @app.exception_handler(ModelFailure)
    async def on_scoring_failure(_: Request, exc: Exception) -> JSONResponse:
        response = scoring_failure(exc)
        assert response is not None  # registered for these two classes only
        return response

    errors: dict[int | str, dict[str, Any]] = {422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    def readyz() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "model_version": service.live.version if service.live else None})
        return JSONResponse(error_body("no model loaded"), status_code=503)

    @app.post("/v1/predict", response_model=Prediction, response_model_exclude_none=True, responses=errors)
    async def predict(body: PredictRequest, explain: bool = False) -> Prediction:
        if problems := shape.check([body]):
            raise RequestError(problems)
        result = await batcher.predict(body, explain)
        predicted(result)
        return result

    @app.post("/v1/predict/batch", response_model=PredictBatchResponse, response_model_exclude_none=True, responses=errors)
    def predict_batch(body: PredictBatchRequest, explain: bool = False) -> PredictBatchResponse:
        if problems := shape.check(body.instances, batch=True):
            raise RequestError(problems)
        results = service.predict(body.instances, explain=explain, batch=True) if body.instances else []
        for r in results:
            metrics.predictions.labels(r.variant).inc()
        return PredictBatchResponse(predictions=results)

    def accept(items: list[FeedbackRequest]) -> None:
        now = datetime.now()
        records = [Feedback(request_id=i.request_id, label=float(i.label), ts=now) for i in items]
        if logger is None:
            log.add_feedback(records)
        else:  # journaled before the 202 (or, when the logger cannot take them, written to the log now)
            logger.submit_many(records, fallback=log.add_feedback)
        for item in items:
            service.feedback(item.request_id, float(item.label))

    @app.post("/v1/feedback", status_code=202, responses=errors)
    def feedback(body: FeedbackRequest) -> dict[str, str]:
        accept([body])
        return {"status": "accepted", "request_id": body.request_id}

    @app.post("/v1/feedback/batch", status_code=202, responses=errors)
    def feedback_batch(body: FeedbackBatchRequest) -> dict[str, Any]:
        accept(body.items)
        return {"status": "accepted", "labels": len(body.items)}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return service.models()

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    dashboard_data = dashboard or Dashboard(service, log).data
    page = render_page()

    @app.get("/ui", response_class=HTMLResponse)
    def ui() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/v1/dashboard")
    def dashboard_json() -> JSONResponse:
        return JSONResponse(dashboard_data(), headers={"Cache-Control": "no-store"})

    app.include_router(admin_router(service, logger, options.admin_token))

    app.lane = PredictLane(batcher, shape, options.max_body_bytes, observe, predicted, scoring_failure)
    return app
