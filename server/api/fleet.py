"""Fleet API for agents that cannot reach the broker: the MQTT protocol over HTTP.

Same frames, same JSON messages, same engine: an agent polls for its task, downloads the
round's model, and posts its signed update; the receipt is the response.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from server.api.auth import agent_identity
from server.api.control import FRAME_MEDIA_TYPE
from server.api.schemas import Error, Receipt
from server.engine import RoundEngine
from shared.protocol import (
    AgentStatus,
    Decline,
    ProtocolError,
    encode_message,
    parse_message,
)

router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"], responses={403: {"model": Error}})
Agent = Annotated[str, Depends(agent_identity)]

# Refusal reasons and the HTTP status that carries them.
REFUSAL_STATUS = {
    "duplicate": 409,
    "late": 409,
    "wrong_round": 409,
    "not_selected": 409,
    "job_not_running": 409,
    "unknown_job": 404,
    "forged": 403,
    "unsigned": 403,
    "mismatch": 403,
    "unknown_agent": 403,
    "oversized": 413,
}


def _engine(request: Request) -> RoundEngine:
    engine: RoundEngine = request.app.state.engine
    return engine


@router.get("/whoami", summary="Check agent credentials")
def whoami(agent_id: Agent) -> dict[str, str]:
    return {"agent_id": agent_id}


@router.post("/status", summary="Announce presence and capabilities (heartbeat)")
async def post_status(request: Request, agent_id: Agent) -> dict[str, str]:
    try:
        status = parse_message(AgentStatus, await request.body())
    except ProtocolError as error:
        raise ProtocolError(f"status message: {error}") from None
    if status.agent_id != agent_id:
        raise ProtocolError("status agent_id differs from the authenticated agent")
    online = status.state != "offline"
    _engine(request).agent_presence(agent_id, online, "http", status.capabilities)
    return {"state": status.state}


@router.get(
    "/task",
    summary="The agent's current task (204 when there is none); counts as a heartbeat",
    responses={204: {"description": "no task"}},
)
def get_task(request: Request, agent_id: Agent) -> Response:
    engine = _engine(request)
    engine.store.record_presence(agent_id, True, "http", None)
    found = engine.task_for(agent_id)
    if found is None:
        return Response(status_code=204)
    return Response(encode_message(found[0]), media_type="application/json")


@router.get(
    "/jobs/{job_id}/rounds/{round_index}/model",
    summary="Download a round's global model frame",
    response_class=Response,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}}, 404: {"model": Error}},
)
def get_model(request: Request, job_id: str, round_index: int, agent_id: Agent) -> Response:
    # Counted once per selected agent when the round opens, whichever transport serves it.
    return Response(_engine(request).model(job_id, round_index), media_type=FRAME_MEDIA_TYPE)


@router.post(
    "/jobs/{job_id}/rounds/{round_index}/decline",
    summary="Decline a task the agent cannot take (e.g. not enough memory), with the reason",
)
async def post_decline(
    request: Request, job_id: str, round_index: int, agent_id: Agent
) -> dict[str, bool]:
    decline = parse_message(Decline, await request.body())
    if (decline.job_id, decline.round, decline.agent_id) != (job_id, round_index, agent_id):
        raise ProtocolError("decline names another job, round or agent than its URL")
    return {"recorded": _engine(request).decline(job_id, round_index, agent_id, decline.reason)}


@router.post(
    "/jobs/{job_id}/rounds/{round_index}/updates",
    summary="Upload a signed update frame; the response is the receipt",
    response_model=Receipt,
    responses={409: {"model": Receipt}, 400: {"model": Receipt}, 404: {"model": Receipt}},
)
async def post_update(
    request: Request, job_id: str, round_index: int, agent_id: Agent
) -> JSONResponse:
    engine = _engine(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > engine.settings.max_frame_bytes:
        receipt = engine.receipt(job_id, round_index, agent_id, "oversized", "http")
    else:
        body = await request.body()
        receipt = engine.handle_upload(job_id, round_index, agent_id, body, "http")
    status = 200 if receipt.accepted else REFUSAL_STATUS.get(receipt.reason, 400)
    return JSONResponse(Receipt(**receipt.__dict__).model_dump(), status)
