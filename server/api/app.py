"""The FastAPI application: routers, error mapping, request limits, health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from bitfleet import __version__
from bitfleet.errors import BitfleetError
from bitfleet.jobstatus import JobConflict
from bitfleet.protocol import FLEET_PREFIX, FLEET_UPDATES, ProtocolError
from bitfleet.server import ui
from bitfleet.server.api import control, fleet
from bitfleet.server.api.auth import admin_guard, agent_of, is_admin
from bitfleet.server.api.limits import (
    ApiLimits,
    BodySizeLimit,
    CountRefusals,
    CredentialsBeforeBody,
)
from bitfleet.server.api.schemas import Health
from bitfleet.server.errors import NotFound
from bitfleet.server.metrics import CONTENT_TYPE
from bitfleet.server.service import Coordinator
from bitfleet.server.state.base import AlreadyExists, StoreError

# Our typed errors and the HTTP status each one means; anything else is a 500 (a bug).
ERROR_STATUS: list[tuple[type[BitfleetError], int]] = [
    (NotFound, 404),
    (JobConflict, 409),
    (AlreadyExists, 409),
    (StoreError, 503),
    (ProtocolError, 422),
    (BitfleetError, 422),
]
DEFAULT_LIMITS = ApiLimits()


def create_app(
    coordinator: Coordinator,
    admin_token: str | None,
    limits: ApiLimits = DEFAULT_LIMITS,
    background: bool = True,
) -> FastAPI:
    """The coordinator app; ``admin_token=None`` means --no-admin-token (no admin auth).

    ``background``: the app's lifespan starts the coordinator's engine thread and transports
    (and stops them); the in-process tests pass False and tick the scheduler themselves."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Coordinator]]:
        if background:
            coordinator.start()
        try:
            yield {"coordinator": coordinator}
        finally:
            if background:
                coordinator.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="bitfleet coordinator",
        version=__version__,
        description=(
            "Federated edge training of 1-2-bit networks. Control API (jobs, agents) with "
            "`Authorization: Bearer ADMIN_TOKEN`; fleet API for agents with "
            "`Authorization: Bearer AGENT_ID:SECRET`."
        ),
    )
    admin = [Depends(admin_guard(admin_token))]
    app.include_router(control.router, dependencies=admin)
    app.include_router(fleet.router)
    app.include_router(ui.router)
    uploads = {FLEET_PREFIX + FLEET_UPDATES: coordinator.uploads.max_frame_bytes}
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_request_bytes, routes=uploads)

    def admitted(path: str, authorization: str | None) -> bool:
        fleet_route = path.startswith(fleet.router.prefix)
        if admin_token is None and not fleet_route:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if fleet_route:
            return agent_of(token, coordinator.registry.secret) is not None
        return is_admin(token, admin_token)

    app.add_middleware(CredentialsBeforeBody, admitted=admitted)
    app.add_middleware(CountRefusals, counter=coordinator.metrics.http_refused)  # sees the 413s

    _map_errors(app)
    _health_routes(app, coordinator)
    return app


def _map_errors(app: FastAPI) -> None:
    """Typed errors to their status, and every 4xx body says what to change."""

    @app.exception_handler(BitfleetError)
    async def bitfleet_error(request: Request, error: BitfleetError) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS if isinstance(error, kind))
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 400:  # FastAPI's only 400: a body it could not decode
            error = HTTPException(
                400,
                "the body could not be decoded as JSON: send UTF-8 JSON, nested less than "
                "1000 levels deep, with numbers of at most 4300 digits",
            )
        return await http_exception_handler(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": _message(e)} for e in error.errors()]
        problems = [
            f"{'.'.join(p for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors
        ]
        return JSONResponse(
            {"detail": "invalid request: " + "; ".join(problems), "errors": errors},
            status_code=422,
        )


def _health_routes(app: FastAPI, coordinator: Coordinator) -> None:
    """/healthz (each transport link) and /metrics, served without a token."""

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Liveness and readiness: 503 while a transport link (the broker) is down",
        response_model=Health,
        responses={503: {"model": Health, "description": "a transport link is down"}},
    )
    def healthz() -> JSONResponse:
        links = coordinator.link_states()
        health = Health(
            status="ok" if all(links.values()) else "degraded",
            version=__version__,
            links={name: "connected" if up else "disconnected" for name, up in links.items()},
        )
        return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text format 0.0.4), without a token",
    )
    def metrics() -> Response:
        exposition = coordinator.metrics.render(lambda: len(coordinator.registry.online()))
        return Response(exposition, media_type=CONTENT_TYPE)


def _message(error: Mapping[str, Any]) -> str:
    """A validator's own message, without pydantic's "Value error, " in front of it."""
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return str(error["msg"])
