"""Typed dependencies: each route names the handler it uses, never the app's state.

The app's lifespan yields the :class:`~bitfleet.server.service.Coordinator` as lifespan
state; these are the only functions that read it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from bitfleet.server.jobs import JobBook
from bitfleet.server.refusals import RefusalCounts
from bitfleet.server.registry import AgentRegistry
from bitfleet.server.rounds import OpenRounds
from bitfleet.server.scheduler import RoundScheduler
from bitfleet.server.service import Coordinator
from bitfleet.server.tasks import TaskDesk
from bitfleet.server.uploads import UploadDesk


def coordinator(request: Request) -> Coordinator:
    found: Coordinator = request.state.coordinator
    return found


def _jobs(request: Request) -> JobBook:
    return coordinator(request).jobs


def _registry(request: Request) -> AgentRegistry:
    return coordinator(request).registry


def _scheduler(request: Request) -> RoundScheduler:
    return coordinator(request).scheduler


def _rounds(request: Request) -> OpenRounds:
    return coordinator(request).rounds


def _tasks(request: Request) -> TaskDesk:
    return coordinator(request).tasks


def _uploads(request: Request) -> UploadDesk:
    return coordinator(request).uploads


def _refusals(request: Request) -> RefusalCounts:
    return coordinator(request).refusals


Jobs = Annotated[JobBook, Depends(_jobs)]
Registry = Annotated[AgentRegistry, Depends(_registry)]
Scheduler = Annotated[RoundScheduler, Depends(_scheduler)]
Rounds = Annotated[OpenRounds, Depends(_rounds)]
Tasks = Annotated[TaskDesk, Depends(_tasks)]
Uploads = Annotated[UploadDesk, Depends(_uploads)]
Refusals = Annotated[RefusalCounts, Depends(_refusals)]
