"""What a request may cost before the API reads it, and a count of every refusal.

Pure ASGI middleware, not ``BaseHTTPMiddleware``: the body check must see the bytes as they
arrive. FastAPI reads a whole body to parse it before it runs the route's dependencies, so
without this an unauthenticated client could make the coordinator buffer any amount.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitfleet.server.metrics import Counter

# Admits a job carrying the largest model EngineSettings.max_model_weights allows as a
# base64 int16 initial_model (4M weights: about 11 MB of JSON).
DEFAULT_MAX_REQUEST_BYTES = 16 << 20

# The reason label bitfleet_http_refused_total gives each 4xx status.
REFUSAL_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    422: "invalid",
}


@dataclass(frozen=True)
class ApiLimits:
    """Limits of the REST API. Update uploads have their own limit, the engine's
    ``max_frame_bytes``: a bigger body could not be a valid frame anyway."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


class _BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes its limit (the 413 is already sent)."""


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {
            "detail": f"the request body is larger than {limit} bytes, the limit of this route: "
            "send a smaller body (the operator sets the limit with the coordinator's "
            "--max-request-bytes, or --max-frame-bytes for update uploads)"
        },
        status_code=413,
    )


class BodySizeLimit:
    """Refuses a request body above its route's limit with 413, unread: at once when its
    Content-Length says so, else as soon as the streamed bytes pass the limit. A request
    then costs at most its limit in memory, however much the client sends."""

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Mapping[str, int]) -> None:
        """``routes`` maps path templates (``/jobs/{job_id}``) to their own limits."""
        self.app = app
        self.max_bytes = max_bytes
        self.routes = [(compile_path(path)[0], limit) for path, limit in routes.items()]

    def limit(self, path: str) -> int:
        return next((limit for regex, limit in self.routes if regex.match(path)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                if not started:  # else the client sees the connection drop
                    await _too_large(limit)(scope, receive, send)
                refused = True
                raise _BodyTooLarge
            return message

        async def send_unless_refused(message: Message) -> None:
            # After the 413, the app's own answer (to the error it was handed) is dropped.
            nonlocal started
            if not refused:
                started = started or message["type"] == "http.response.start"
                await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, send_unless_refused)


class CredentialsBeforeBody:
    """Answers 401 to a request that carries a body but no valid credentials, before the
    body is read: FastAPI parses a JSON body before the route's auth dependency runs, so a
    stranger could otherwise make the coordinator parse up to the body limit for nothing."""

    def __init__(self, app: ASGIApp, admitted: Callable[[str, str | None], bool]) -> None:
        """``admitted(path, authorization header)``: do these credentials fit this path?"""
        self.app = app
        self.admitted = admitted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH")
            and scope["path"].startswith("/api/")
            and not self.admitted(scope["path"], Headers(scope=scope).get("authorization"))
        ):
            refusal = JSONResponse(
                {"detail": "missing or refused credentials: send 'Authorization: Bearer TOKEN'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class CountRefusals:
    """Counts every 4xx answer by reason (REFUSAL_REASONS): a probe, a misconfigured
    agent or a stale token shows up in /metrics as a rising count."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                status = message["status"]
                self.counter.inc(reason=REFUSAL_REASONS.get(status, f"http_{status}"))
            await send(message)

        await self.app(scope, receive, counted_send)
