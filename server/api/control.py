"""Control API for administrators: jobs and agent enrollment (``/api/v1/jobs``, ``/agents``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from bitfleet.client import Agent
from bitfleet.protocol import check_id
from bitfleet.server.api.deps import Jobs, Refusals, Registry, Rounds, Scheduler
from bitfleet.server.api.schemas import (
    AUTH_ERRORS,
    INVALID,
    JSON_BODY_ERRORS,
    NOT_FOUND,
    Enrollment,
    EnrollRequest,
    Error,
    JobCreated,
    JobView,
    RefusalsView,
    agent_view,
)
from bitfleet.server.jobs import JobBook
from bitfleet.server.jobspec import EXAMPLE_JOB, MAX_ROUNDS, JobSpec
from bitfleet.server.rounds import OpenRounds
from bitfleet.server.scheduler import RoundScheduler

FRAME_MEDIA_TYPE = "application/vnd.bitfleet.frame"

router = APIRouter(prefix="/api/v1", responses=AUTH_ERRORS)


def _view(job_id: str, jobs: JobBook, scheduler: RoundScheduler, rounds: OpenRounds) -> JobView:
    return JobView.of(
        jobs.record(job_id),
        jobs.metrics(job_id),
        jobs.declines(job_id),
        rounds.progress(job_id),
        scheduler.waiting_reason(job_id),
    )


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    tags=["jobs"],
    summary="Submit a training job",
    responses=JSON_BODY_ERRORS,
)
def create_job(jobs: Jobs, spec: Annotated[JobSpec, Body(examples=[EXAMPLE_JOB])]) -> JobCreated:
    job = jobs.create(spec)
    return JobCreated(id=job.job_id, status=job.status)


@router.get("/jobs", response_model=list[JobView], tags=["jobs"], summary="List jobs")
def list_jobs(jobs: Jobs, scheduler: Scheduler, rounds: Rounds) -> list[JobView]:
    return [_view(job.job_id, jobs, scheduler, rounds) for job in jobs.records()]


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    tags=["jobs"],
    summary="A job's status, current round and per-round metrics",
    responses={**NOT_FOUND, **INVALID},
)
def get_job(job_id: str, jobs: Jobs, scheduler: Scheduler, rounds: Rounds) -> JobView:
    return _view(job_id, jobs, scheduler, rounds)


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
def cancel_job(job_id: str, jobs: Jobs, scheduler: Scheduler, rounds: Rounds) -> JobView:
    scheduler.cancel(job_id)
    return _view(job_id, jobs, scheduler, rounds)


@router.get(
    "/jobs/{job_id}/model",
    tags=["jobs"],
    summary="Download the current (or a given round's) global model as a .bfm frame",
    response_class=Response,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}}, **NOT_FOUND, **INVALID},
)
def download_model(
    jobs: Jobs,
    job_id: str,
    round: Annotated[
        int | None, Query(ge=0, le=MAX_ROUNDS, description="the model that opened this round")
    ] = None,
) -> Response:
    frame = jobs.model(job_id, round)
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
def enroll_agent(registry: Registry, body: EnrollRequest | None = None) -> Enrollment:
    agent_id = check_id(
        (body.agent_id if body and body.agent_id else None) or "agent-" + secrets.token_hex(4),
        "agent id",
    )
    # Hex, never "-...": a secret must not read as an option on a command line.
    secret = secrets.token_hex(24)
    registry.enroll(agent_id, secret)
    return Enrollment(agent_id=agent_id, secret=secret)


@router.get("/agents", response_model=list[Agent], tags=["agents"], summary="List agents")
def list_agents(registry: Registry) -> list[Agent]:
    return [agent_view(agent, online) for agent, online in registry.all()]


@router.post(
    "/agents/{agent_id}/revoke",
    response_model=Agent,
    tags=["agents"],
    summary="Revoke an agent: its uploads and logins are refused from now on",
    responses={**NOT_FOUND, **INVALID},
)
def revoke_agent(registry: Registry, agent_id: str) -> Agent:
    return agent_view(registry.revoke(agent_id), False)


@router.get(
    "/refusals",
    response_model=RefusalsView,
    tags=["agents"],
    summary="Refused uploads since this coordinator started, per job and per agent, by reason",
)
def refusals(counts: Refusals) -> RefusalsView:
    return RefusalsView(jobs=counts.by_job(), agents=counts.by_agent())
