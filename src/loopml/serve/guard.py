"""The HTTP API's outer layers: request metrics, and a body guard (size limit, no non-finite numbers).

* **Metrics**: :class:`RequestMetrics` reports each request's route, status
  and duration to a callback (the app's Prometheus counters).
* **Size**: a declared ``Content-Length`` over ``serving.max_body_bytes`` is a
  413 at once; a body without one (chunked transfer) is counted while it
  arrives and is a 413 as soon as it passes the limit, so no client can make
  the server buffer more than the limit. The excess is read and dropped (up
  to :data:`DRAIN_FACTOR` times the limit) before answering, so a client still
  sending gets the 413 instead of a reset connection.
* **NaN / Infinity**: Python's ``json`` accepts ``NaN``, ``Infinity`` and
  ``-Infinity`` (not JSON) and turns ``1e400`` into ``inf``. A body holding
  any of them is a 422 naming each field (``features.tx_amount``), so a
  non-finite number is never validated, scored or logged. The message says
  what to send instead: a finite number, or null where null is accepted (an
  optional request feature), never null where it would be refused next. Only
  bodies whose bytes contain such a token are parsed here (a regular
  expression decides), so ordinary requests pay one scan.

Both are hand-written pure ASGI middleware. Starlette's ``BaseHTTPMiddleware``
(``@app.middleware("http")``) runs every request through extra tasks and
memory streams, a measurable part of a sub-millisecond request; and
Starlette/FastAPI only gained a body limit in recent releases (the package
supports ``fastapi>=0.110``), theirs answers in FastAPI's error shape rather
than loopml's (``{"error", "details"}``), and neither rejects ``NaN``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loopml.serve.schemas import error_body

#: how much of an oversized body is read and dropped before the 413 (times the limit)
DRAIN_FACTOR = 8
_SUSPECT = re.compile(rb"NaN|Infinity|[0-9][eE]\+?[0-9]{3}")


class _NonFinite:
    def __init__(self, token: str) -> None:
        self.token = token


def suspect(body: bytes) -> bool:
    """Whether the body holds a token that may be a non-finite number (``NaN``, ``Infinity``, ``1e400``)."""
    return _SUSPECT.search(body) is not None


def _finite_number(_: str) -> str:
    return "send a finite number"


def non_finite_fields(body: bytes, advice: Callable[[str], str] = _finite_number) -> list[tuple[str, str]]:
    """(field path, message) for each ``NaN``, ``Infinity`` or out-of-range number in a JSON body; [] if none or not JSON.

    ``advice(field)`` says what to send instead (null only where the endpoint accepts null there).
    """
    if not suspect(body):
        return []
    seen: list[_NonFinite] = []

    def constant(token: str) -> _NonFinite:
        seen.append(_NonFinite(token))
        return seen[-1]

    def number(text: str) -> float | _NonFinite:
        value = float(text)
        return value if math.isfinite(value) else constant(text)

    try:
        document = json.loads(body, parse_constant=constant, parse_float=number)
    except (ValueError, RecursionError):  # not JSON: FastAPI answers that one
        return []
    if not seen:
        return []
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:  # iterative: the document may be nested as deep as json allows
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            what = "is not a JSON number" if value.token in ("NaN", "Infinity", "-Infinity") else "does not fit a float"
            found.append((path or "body", f"{value.token[:40]} {what}; {advice(path)}"))
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in reversed(list(enumerate(value))))
    return found


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then hands over to the real one."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def _answer(send: Send, status: int, message: str, details: list[tuple[str, str]]) -> None:
    payload = json.dumps(error_body(message, details)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyGuard:
    """ASGI middleware: 413 over ``max_body_bytes`` (declared or streamed), 422 for non-finite JSON numbers.

    ``advice(request path, field)``: what the 422 tells the client to send instead of the number.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, advice: Callable[[str, str], str] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.advice = advice

    async def _too_large(self, send: Send) -> None:
        limit = self.max_body_bytes
        await _answer(send, 413, f"body larger than {limit} bytes", [("body", f"too large (serving.max_body_bytes is {limit})")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > limit:
                while more and size <= DRAIN_FACTOR * limit:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    size += len(message.get("body", b""))
                    more = bool(message.get("more_body", False))
                await self._too_large(send)
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        advice, path = self.advice, str(scope.get("path", ""))
        bad = non_finite_fields(body) if advice is None else non_finite_fields(body, lambda field: advice(path, field))
        if bad:
            await _answer(send, 422, "invalid request: non-finite number", bad)
            return
        await self.app(scope, replay(body, receive), send)


class RequestMetrics:
    """ASGI middleware: ``observe(route path or "unmatched", status, seconds)`` after each HTTP request."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.observe(getattr(route, "path", "unmatched"), status, time.perf_counter() - started)
