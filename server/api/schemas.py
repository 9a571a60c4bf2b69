"""Response and request bodies of the REST API (the job spec is in ``bitfleet.server.jobspec``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from pydantic import BaseModel, Field

from bitfleet.client import Agent, Decline, Round
from bitfleet.server.state.base import AgentRecord, DeclineRecord, JobRecord, RoundMetrics


class Error(BaseModel):
    detail: str = Field(description="what is wrong and how to fix it")


class Problem(BaseModel):
    loc: list[str] = Field(description="where: body, path, query or header, then the field")
    msg: str


class Invalid(Error):
    errors: list[Problem] = Field(
        default_factory=list,
        description="each problem of a request that failed validation (none when the "
        "request was well-formed but its content was refused)",
    )


# OpenAPI declarations of the errors routes share, merged into their ``responses=``.
Responses = dict[int | str, dict[str, Any]]
AUTH_ERRORS: Responses = {
    401: {"model": Error, "description": "no credentials: send an Authorization header"},
    403: {"model": Error, "description": "the credentials are not valid here"},
}
INVALID: Responses = {
    422: {"model": Invalid, "description": "invalid request: the detail says what to change"}
}
TOO_LARGE: Responses = {
    413: {"model": Error, "description": "the body is larger than the coordinator accepts"}
}
JSON_BODY_ERRORS: Responses = {
    400: {"model": Error, "description": "the body could not be decoded as JSON"},
    **TOO_LARGE,
    **INVALID,
}
NOT_FOUND: Responses = {404: {"model": Error, "description": "no such job, round or agent"}}


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: a transport link is down")
    version: str
    links: dict[str, Literal["connected", "disconnected"]] = Field(
        description="each transport link (mqtt) and its state; none on an HTTP-only coordinator"
    )


class JobCreated(BaseModel):
    id: str = Field(examples=["job-3f9a1c2b7d4e"])
    status: str = Field(examples=["pending"])


class JobView(BaseModel):
    id: str
    name: str
    algorithm: str
    status: str = Field(description="pending, running, completed, failed or cancelled")
    round: int = Field(description="the round in progress (= rounds done)")
    rounds: int
    reason: str | None = Field(
        None,
        description="why the job failed, was cancelled or waits: a job that cannot start its "
        "round says what it waits for",
        examples=["waiting for 3 agents, 1 online"],
    )
    round_uploads: int = Field(0, description="uploads accepted so far in the open round")
    round_agents: int = Field(0, description="agents selected for the open round")
    created_at: float
    updated_at: float
    metrics: list[Round] = Field(default_factory=list)
    declines: list[Decline] = Field(
        default_factory=list, description="agents that could not take the job, and why"
    )
    spec: dict[str, Any]

    @classmethod
    def of(
        cls,
        job: JobRecord,
        metrics: list[RoundMetrics],
        declines: list[DeclineRecord],
        progress: tuple[int, int] = (0, 0),
        waiting: str | None = None,
    ) -> JobView:
        """``waiting``: what the engine says the job waits for, else the stored reason."""
        return cls.model_validate(
            {
                "id": job.job_id,
                "name": job.spec["name"],
                "algorithm": job.spec["algorithm"],
                "status": job.status,
                "round": job.round,
                "rounds": job.spec["rounds"],
                "reason": waiting or job.reason,
                "round_uploads": progress[0],
                "round_agents": progress[1],
                "created_at": job.created_at,
                "updated_at": job.updated_at,
                "metrics": [m.as_dict() for m in metrics],  # validation drops the extra keys
                "declines": [vars(d) for d in declines],
                "spec": job.spec,
            }
        )


class EnrollRequest(BaseModel):
    agent_id: str | None = Field(
        None,
        description="a name for the agent (lowercase, digits, '-', '_'); default: generated",
        examples=["pi-kitchen"],
    )


class Enrollment(BaseModel):
    agent_id: str
    secret: str = Field(description="shown once: the agent's key for signing and the broker")


def agent_view(agent: AgentRecord, online: bool) -> Agent:
    """An agent as the API shows it, in the client's own type: its record, and whether it
    counts as online now."""
    shown = {field.name for field in fields(Agent)}
    return Agent(**{**{k: v for k, v in vars(agent).items() if k in shown}, "online": online})


class RefusalsView(BaseModel):
    """Refused uploads since this coordinator started: per job and per agent, by reason."""

    jobs: dict[str, dict[str, int]] = Field(examples=[{"job-1a2b3c4d5e6f": {"late": 2}}])
    agents: dict[str, dict[str, int]] = Field(examples=[{"pi-kitchen": {"late": 2}}])


class Receipt(BaseModel):
    job_id: str
    round: int
    agent_id: str
    accepted: bool
    reason: str = Field("", description="why an upload was refused (empty when accepted)")
