"""The fast lane of ``POST /v1/predict``: an ordinary single prediction skips FastAPI's request machinery.

Profiled under load on the fraud model, the event-loop thread spent about
three times as long in FastAPI's stack (middleware chain, route matching,
query and dependency solving, validation of already-parsed Python objects,
re-validating the response model, ``jsonable_encoder``, ``json.dumps``) as
the whole scoring did on the micro-batch thread: on two cores that stack was
what capped throughput. The lane parses the bytes straight into
:class:`PredictRequest` with pydantic's JSON validator (one Rust call),
hands it to the :class:`MicroBatcher` and writes the :class:`Prediction` with
pydantic's JSON serializer.

Only requests that are ordinary take the lane; anything else goes through
the full app, untouched (its body replayed), so every error answer stays
exactly what the app gives: another path or method, a query string other
than ``explain=true|false``, no ``Content-Length`` or one over the limit
(413, chunked bodies), a body holding a token the guard inspects (``NaN``,
``Infinity``, huge exponents), a body that does not validate, or a feature
name the project does not declare. What the lane answers itself: the
prediction, and the errors raised while scoring (a 422
:class:`RequestError`, a 503 :class:`ModelFailure`), in the app's own
bodies (``on_error``). It reports each answer to the same metrics callback
as :class:`~loopml.serve.guard.RequestMetrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from loopml.serve.batcher import MicroBatcher
from loopml.serve.guard import replay, suspect
from loopml.serve.schemas import Prediction, PredictRequest, RequestShape

PATH = "/v1/predict"
_EXPLAIN = {b"": False, b"explain=false": False, b"explain=true": True}
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictLane:
    def __init__(
        self,
        batcher: MicroBatcher,
        shape: RequestShape,
        max_body_bytes: int,
        observe: Callable[[str, int, float], None],
        on_prediction: Callable[[Prediction], None],
        on_error: Callable[[Exception], Response | None],
    ) -> None:
        self.batcher = batcher
        self.shape = shape
        self.max_body_bytes = max_body_bytes
        self.observe = observe
        self.on_prediction = on_prediction
        self.on_error = on_error

    def takes(self, scope: Scope) -> bool:
        """Whether the request may take the lane (decided from its head alone)."""
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return False
        if scope["query_string"] not in _EXPLAIN:
            return False
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        return declared is not None and declared.isdigit() and int(declared) <= self.max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Answer a request :meth:`takes`, or pass it (body replayed) to ``app``, the full stack."""
        started = time.perf_counter()
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        request = self._parse(body)
        if request is None:
            await app(scope, replay(body, receive), send)
            return
        try:
            result = await self.batcher.predict(request, _EXPLAIN[scope["query_string"]])
        except Exception as exc:
            response = self.on_error(exc)
            if response is None:
                raise
            await response(scope, receive, send)
            self.observe(PATH, response.status_code, time.perf_counter() - started)
            return
        payload = result.model_dump_json(exclude_none=True).encode()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self.on_prediction(result)
        self.observe(PATH, 200, time.perf_counter() - started)

    def _parse(self, body: bytes) -> PredictRequest | None:
        """The request, or None when the full stack must answer it (its error messages are the reference)."""
        if suspect(body):
            return None
        try:
            request = PredictRequest.model_validate_json(body)
        except ValidationError:
            return None
        return None if self.shape.check([request]) else request
