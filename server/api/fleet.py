"""Fleet API for agents that cannot reach the broker: the MQTT protocol over HTTP.

Same frames, same JSON messages, same handlers: an agent polls for its task, downloads the
round's model, and posts its signed update; the receipt is the response.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from bitfleet.protocol import (
    FLEET_DECLINE,
    FLEET_MODEL,
    FLEET_PREFIX,
    FLEET_STATUS,
    FLEET_TASK,
    FLEET_UPDATES,
    FLEET_WHOAMI,
    REFUSAL_STATUS,
    AgentStatus,
    Decline,
    ProtocolError,
    Task,
    encode_message,
    parse_message,
)
from bitfleet.server.api.auth import agent_identity
from bitfleet.server.api.control import FRAME_MEDIA_TYPE
from bitfleet.server.api.deps import Registry, Tasks, Uploads
from bitfleet.server.api.schemas import AUTH_ERRORS, INVALID, NOT_FOUND, TOO_LARGE, Error, Receipt
from bitfleet.server.jobspec import MAX_ROUNDS

router = APIRouter(prefix=FLEET_PREFIX, tags=["fleet"], responses=AUTH_ERRORS)
Agent = Annotated[str, Depends(agent_identity)]
RoundIndex = Annotated[int, Path(ge=0, le=MAX_ROUNDS)]


def _json_body(message: type[Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses a protocol message itself."""
    schema = TypeAdapter(message).json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.get(FLEET_WHOAMI, summary="Check agent credentials")
def whoami(agent_id: Agent) -> dict[str, str]:
    return {"agent_id": agent_id}


@router.post(
    FLEET_STATUS,
    summary="Announce presence and capabilities (heartbeat)",
    responses={**TOO_LARGE, **INVALID},
    openapi_extra=_json_body(AgentStatus),
)
async def post_status(request: Request, agent_id: Agent, registry: Registry) -> dict[str, str]:
    try:
        status = parse_message(AgentStatus, await request.body())
    except ProtocolError as error:
        raise ProtocolError(f"status message: {error}") from None
    if status.agent_id != agent_id:
        raise ProtocolError("status agent_id differs from the authenticated agent")
    online = status.state != "offline"
    registry.presence(agent_id, online, "http", status.capabilities)
    return {"state": status.state}


@router.get(
    FLEET_TASK,
    summary="The agent's current task (204 when there is none); counts as a heartbeat",
    responses={
        200: {"content": {"application/json": {"schema": TypeAdapter(Task).json_schema()}}},
        204: {"description": "no task"},
    },
)
def get_task(agent_id: Agent, registry: Registry, tasks: Tasks) -> Response:
    registry.presence(agent_id, True, "http", None)
    task = tasks.task_for(agent_id)
    if task is None:
        return Response(status_code=204)
    return Response(encode_message(task), media_type="application/json")


@router.get(
    FLEET_MODEL,
    summary="Download the global model of a round the agent is selected for",
    response_class=Response,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}}, **NOT_FOUND, **INVALID},
)
def get_model(job_id: str, round_index: RoundIndex, agent_id: Agent, tasks: Tasks) -> Response:
    # Counted once per selected agent when the round opens, whichever transport serves it.
    model = tasks.model(job_id, round_index, agent_id)
    return Response(model, media_type=FRAME_MEDIA_TYPE)


@router.post(
    FLEET_DECLINE,
    summary="Decline a task the agent cannot take (e.g. not enough memory), with the reason",
    responses={**TOO_LARGE, **INVALID},
    openapi_extra=_json_body(Decline),
)
async def post_decline(
    request: Request, job_id: str, round_index: RoundIndex, agent_id: Agent, tasks: Tasks
) -> dict[str, bool]:
    decline = parse_message(Decline, await request.body())
    if (decline.job_id, decline.round, decline.agent_id) != (job_id, round_index, agent_id):
        raise ProtocolError("decline names another job, round or agent than its URL")
    return {"recorded": tasks.decline(job_id, round_index, agent_id, decline.reason)}


@router.post(
    FLEET_UPDATES,
    summary="Upload a signed update frame; the response is the receipt",
    response_model=Receipt,
    responses={
        400: {"model": Receipt, "description": "the frame is refused"},
        403: {"model": Receipt | Error, "description": "credentials or signature refused"},
        404: {"model": Receipt, "description": "no such job"},
        409: {"model": Receipt, "description": "not for this round, or already uploaded"},
        413: {"model": Receipt | Error, "description": "the body or the frame header is too large"},
        503: {"model": Receipt, "description": "not now (storage, busy): keep it and resend"},
        **INVALID,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FRAME_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def post_update(
    request: Request, job_id: str, round_index: RoundIndex, agent_id: Agent, uploads: Uploads
) -> JSONResponse:
    # Bodies over the desk's max_frame_bytes never get here (bitfleet.server.api.limits).
    body = await request.body()
    # Verifying and tallying is CPU work: off the event loop, so one upload never stalls
    # every other request.
    receipt = await run_in_threadpool(uploads.handle, job_id, round_index, agent_id, body, "http")
    status = 200 if receipt.accepted else REFUSAL_STATUS.get(receipt.reason, 400)
    return JSONResponse(Receipt(**receipt.__dict__).model_dump(), status)
