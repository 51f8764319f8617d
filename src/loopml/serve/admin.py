"""``/v1/admin/*``: run-time rollout changes and reloads, behind a bearer token.

Every endpoint needs ``Authorization: Bearer $LOOPML_ADMIN_TOKEN`` (compared
in constant time) and answers 401 without it; with no token configured the
admin API is closed.

* ``GET  /v1/admin/rollout``: the policy, traffic split, per-variant stats and recent decisions.
* ``POST /v1/admin/rollout``: a (partial) ``rollout`` section of ``loopml.yaml`` as JSON, merged
  over the current one; validated like the file (422 naming each bad field); the variants' models
  are loaded before traffic moves. Starting ``{"policy": "canary"}`` starts a canary at step 0.
* ``POST /v1/admin/switch``: blue-green switch (and switch back).
* ``POST /v1/admin/promote``: promote the challenger now; ``POST /v1/admin/rollback``: stop a canary
  or experiment (policy ``single`` on the champion), or with ``{"previous": true}`` move the champion
  alias back to its previous version.
* ``POST /v1/admin/reload``: re-read the registry aliases now; ``POST /v1/admin/flush``: write the
  queued prediction log.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from loopml.errors import LoopmlError
from loopml.predlog.writer import AsyncLogger
from loopml.rollout.policy import CHALLENGER
from loopml.serve.schemas import ErrorResponse, error_body
from loopml.serve.service import PredictionService
from loopml.spec.model import Rollout

_NEED_TOKEN = "admin endpoints need 'Authorization: Bearer $LOOPML_ADMIN_TOKEN'"


def _field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in err["loc"]) or "body", str(err["msg"])) for err in exc.errors()]


def admin_router(service: PredictionService, logger: AsyncLogger | None, token: str | None) -> APIRouter:
    def authorised(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return bool(token) and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())

    def require_token(request: Request) -> None:
        """A router dependency: FastAPI solves it before the body's parameters, so no token is a 401, never a 422."""
        if not authorised(request):
            raise HTTPException(401, _NEED_TOKEN)

    router = APIRouter(prefix="/v1/admin", responses={401: {"model": ErrorResponse}}, dependencies=[Depends(require_token)])

    def guarded(action: Callable[[], dict[str, Any]]) -> JSONResponse:
        """Run an admin action (the token was checked by the router); its errors become 422 or 409."""
        try:
            return JSONResponse(action())
        except ValidationError as exc:
            return JSONResponse(error_body("invalid rollout", _field_errors(exc)), status_code=422)
        except (LoopmlError, ValueError) as exc:
            return JSONResponse(error_body(str(exc)), status_code=409)

    @router.get("/rollout")
    def get_rollout() -> JSONResponse:
        return guarded(lambda: {**service.rollout.state(), "events": service.events()[-50:]})

    @router.post("/rollout", responses={422: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
    def set_rollout(changes: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
        def change() -> dict[str, Any]:
            current = service.rollout.settings.model_dump(mode="json")
            settings = Rollout.model_validate({**current, **changes})
            service.set_policy(settings)
            return service.rollout.state()

        return guarded(change)

    @router.post("/switch", responses={409: {"model": ErrorResponse}})
    def switch() -> JSONResponse:
        def flip() -> dict[str, Any]:
            live = service.rollout.switch()
            service.record_event({"action": "switch", "live": live})
            return {"status": "switched", "live": live, "traffic": service.models()["traffic"]}

        return guarded(flip)

    @router.post("/promote", responses={409: {"model": ErrorResponse}})
    def promote() -> JSONResponse:
        def go() -> dict[str, Any]:
            challenger = service.live_models.get(CHALLENGER)
            if challenger is None:
                raise LoopmlError(f"no challenger is loaded (alias {service.rollout.settings.challenger!r})")
            version = service.promote(challenger.version, "promoted through the admin API")
            return {"status": "promoted", "model_version": version}

        return guarded(go)

    @router.post("/rollback", responses={409: {"model": ErrorResponse}})
    def rollback(body: dict[str, Any] | None = Body(default=None)) -> JSONResponse:  # noqa: B008
        def go() -> dict[str, Any]:
            version = service.rollback(previous=bool((body or {}).get("previous")))
            return {"status": "rolled back", "model_version": version, "policy": service.rollout.policy}

        return guarded(go)

    @router.post("/reload")
    def reload() -> JSONResponse:
        def go() -> dict[str, Any]:
            live = service.reload()
            return {"status": "reloaded", "model_version": live.version if live else None}

        return guarded(go)

    @router.post("/flush")
    def flush() -> JSONResponse:
        return guarded(lambda: {"status": "flushed", "rows": logger.flush() if logger is not None else 0})

    return router
