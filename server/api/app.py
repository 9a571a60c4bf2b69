"""The FastAPI application: routers, error mapping, health and metrics."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from server.api import control, fleet
from server.api.auth import admin_guard
from server.engine import JobConflict, NotFound, RoundEngine
from server.state.base import AlreadyExists, StoreError
from shared import __version__
from shared.errors import BitfleetError
from shared.protocol import ProtocolError

# Our typed errors and the HTTP status each one means; anything else is a 500 (a bug).
ERROR_STATUS: list[tuple[type[BitfleetError], int]] = [
    (NotFound, 404),
    (JobConflict, 409),
    (AlreadyExists, 409),
    (StoreError, 503),
    (ProtocolError, 422),
    (BitfleetError, 422),
]


def create_app(engine: RoundEngine, admin_token: str | None) -> FastAPI:
    """The coordinator app; ``admin_token=None`` means --insecure (no admin auth)."""
    app = FastAPI(
        title="bitfleet coordinator",
        version=__version__,
        description=(
            "Federated edge training of 1-2-bit networks. Control API (jobs, agents) with "
            "`Authorization: Bearer ADMIN_TOKEN`; fleet API for agents with "
            "`Authorization: Bearer AGENT_ID:SECRET`."
        ),
    )
    app.state.engine = engine
    admin = [Depends(admin_guard(admin_token))]
    app.include_router(control.router, dependencies=admin)
    app.include_router(fleet.router)

    @app.exception_handler(BitfleetError)
    async def bitfleet_error(request: Request, error: BitfleetError) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS if isinstance(error, kind))
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"])} for e in error.errors()]
        problems = [
            f"{'.'.join(p for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors
        ]
        return JSONResponse(
            {"detail": "invalid request: " + "; ".join(problems), "errors": errors},
            status_code=422,
        )

    @app.get("/healthz", tags=["health"], summary="Liveness and readiness")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, summary="Prometheus")
    def metrics() -> str:
        return engine.metrics.render(lambda: len(engine.online_agents()))

    return app
