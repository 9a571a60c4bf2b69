"""What agents ask and tell about their tasks: the task they hold, its model, a decline.

Transport-free, like the other handlers: the HTTP routes and the MQTT bridge adapt to it.
Reads the open rounds under their lock; never opens or closes one (the scheduler does, on
the engine's thread, woken by ``wake`` when a decline may complete a round).
"""

from __future__ import annotations

import logging

from bitfleet.protocol import Task
from bitfleet.server.context import Context
from bitfleet.server.errors import NotFound
from bitfleet.server.jobs import Job
from bitfleet.server.state.base import RoundRecord

log = logging.getLogger("bitfleet.rounds")
MAX_DECLINE_REASON = 500


def task_of(job: Job, record: RoundRecord) -> Task:
    """The task every agent selected for ``record`` (an open round of ``job``) is given."""
    return Task(
        job_id=job.job_id,
        round=record.round,
        algorithm=job.spec.algorithm,
        deadline=record.deadline,
        attempt=record.attempt,
        local_epochs=job.spec.local_epochs,
        seed=job.spec.seed,
        hyperparameters=job.algorithm.round_hyperparameters(job.spec, record.round),
    )


class TaskDesk:
    def __init__(self, context: Context) -> None:
        self._ctx = context

    def task_for(self, agent_id: str) -> Task | None:
        """The agent's current task, if it is selected for an open round and has neither
        uploaded nor declined."""
        with self._ctx.rounds.lock:
            for job_id, state in self._ctx.rounds.by_job.items():
                if state.waiting_for(agent_id):
                    return task_of(self._ctx.jobs.get(job_id), state.record)
        return None

    def model(self, job_id: str, round_index: int, agent_id: str) -> bytes:
        """The model of an open round for an agent selected for it; NotFound for anyone
        else (an agent sees only the jobs and rounds it was selected for)."""
        with self._ctx.rounds.lock:
            state = self._ctx.rounds.by_job.get(job_id)
            if (
                state is None
                or state.record.round != round_index
                or agent_id not in state.record.selected
            ):
                raise NotFound(
                    f"no model of job {job_id!r} round {round_index} for agent {agent_id!r}: "
                    "it is not selected for that round"
                )
        return self._ctx.jobs.model(job_id, round_index)

    def decline(self, job_id: str, round_index: int, agent_id: str, reason: str) -> bool:
        """An agent cannot take a job: record why, never select it for this job again; the
        round closes once everyone else has answered. False if the agent was not asked."""
        reason = reason[:MAX_DECLINE_REASON]
        with self._ctx.rounds.lock:
            state = self._ctx.rounds.by_job.get(job_id)
            if state is None or state.record.round != round_index:
                return False
            if agent_id not in state.record.selected or agent_id in state.accepted:
                return False
            self._ctx.store.add_decline(job_id, round_index, agent_id, reason)
            state.declined.add(agent_id)
        self._ctx.metrics.declines.inc()
        log.warning("job %s round %d: %s declined: %r", job_id, round_index, agent_id, reason)
        self._ctx.wake()  # the round may be complete now
        return True
