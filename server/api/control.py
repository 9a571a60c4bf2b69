"""Control API for administrators: jobs and agent enrollment (``/api/v1/jobs``, ``/agents``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response

from bitfleet.protocol import check_id
from bitfleet.server.api.schemas import (
    AUTH_ERRORS,
    INVALID,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    AgentView,
    Enrollment,
    EnrollRequest,
    Error,
    JobCreated,
    JobView,
)
from bitfleet.server.engine import NotFound, RoundEngine
from bitfleet.server.jobspec import EXAMPLE_JOB, MAX_ROUNDS, JobSpec

FRAME_MEDIA_TYPE = "application/vnd.bitfleet.frame"

router = APIRouter(prefix="/api/v1", responses=AUTH_ERRORS)


def _engine(request: Request) -> RoundEngine:
    engine: RoundEngine = request.app.state.engine
    return engine


def _view(engine: RoundEngine, job_id: str) -> JobView:
    job = engine.job(job_id)
    return JobView.of(
        job,
        engine.store.list_metrics(job_id),
        engine.store.list_declines(job_id),
        engine.round_progress(job_id),
        engine.waiting_reason(job_id),
    )


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    tags=["jobs"],
    summary="Submit a training job",
    responses=JSON_BODY_ERRORS,
)
def create_job(
    request: Request, spec: Annotated[JobSpec, Body(examples=[EXAMPLE_JOB])]
) -> JobCreated:
    job = _engine(request).create_job(spec)
    return JobCreated(id=job.job_id, status=job.status)


@router.get("/jobs", response_model=list[JobView], tags=["jobs"], summary="List jobs")
def list_jobs(request: Request) -> list[JobView]:
    engine = _engine(request)
    return [_view(engine, job.job_id) for job in engine.store.list_jobs()]


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    tags=["jobs"],
    summary="A job's status, current round and per-round metrics",
    responses={**NOT_FOUND, **INVALID},
)
def get_job(request: Request, job_id: str) -> JobView:
    return _view(_engine(request), job_id)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    tags=["jobs"],
    summary="Cancel a job",
    responses={
        **NOT_FOUND,
        409: {"model": Error, "description": "already finished"},
        **INVALID,
    },
)
def cancel_job(request: Request, job_id: str) -> JobView:
    engine = _engine(request)
    engine.cancel_job(job_id)
    return _view(engine, job_id)


@router.get(
    "/jobs/{job_id}/model",
    tags=["jobs"],
    summary="Download the current (or a given round's) global model as a .bfm frame",
    response_class=Response,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}}, **NOT_FOUND, **INVALID},
)
def download_model(
    request: Request,
    job_id: str,
    round: Annotated[
        int | None, Query(ge=0, le=MAX_ROUNDS, description="the model that opened this round")
    ] = None,
) -> Response:
    frame = _engine(request).model(job_id, round)
    return Response(
        frame,
        media_type=FRAME_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{job_id}.bfm"'},
    )


@router.post(
    "/agents",
    status_code=201,
    response_model=Enrollment,
    tags=["agents"],
    summary="Enroll an agent: returns its id and secret (shown once)",
    responses={409: {"model": Error, "description": "the id is taken"}, **JSON_BODY_ERRORS},
)
def enroll_agent(request: Request, body: EnrollRequest | None = None) -> Enrollment:
    agent_id = check_id(
        (body.agent_id if body and body.agent_id else None) or "agent-" + secrets.token_hex(4),
        "agent id",
    )
    # Hex, never "-...": a secret must not read as an option on a command line.
    secret = secrets.token_hex(24)
    _engine(request).enroll(agent_id, secret)
    return Enrollment(agent_id=agent_id, secret=secret)


@router.get("/agents", response_model=list[AgentView], tags=["agents"], summary="List agents")
def list_agents(request: Request) -> list[AgentView]:
    engine = _engine(request)
    online = set(engine.online_agents())
    return [AgentView.of(a, a.agent_id in online) for a in engine.store.list_agents()]


@router.post(
    "/agents/{agent_id}/revoke",
    response_model=AgentView,
    tags=["agents"],
    summary="Revoke an agent: its uploads and logins are refused from now on",
    responses={**NOT_FOUND, **INVALID},
)
def revoke_agent(request: Request, agent_id: str) -> AgentView:
    engine = _engine(request)
    agent = engine.revoke(agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id!r} does not exist")
    return AgentView.of(agent, False)
