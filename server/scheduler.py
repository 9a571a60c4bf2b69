"""Round scheduling: open a job's round, wait for uploads or the deadline, retry, close.

Transport-free: it publishes through the :class:`~bitfleet.server.fanout.Fanout`; what agents
ask and tell about their tasks goes to :mod:`bitfleet.server.tasks`, their uploads to
:mod:`bitfleet.server.uploads`. Rounds open and close only in :meth:`tick`, which the
engine's own thread runs (:mod:`bitfleet.server.engine`): an upload or a decline that
completes a round rings ``wake`` and returns, so no transport thread ever votes, evaluates or
publishes.
"""

from __future__ import annotations

import logging

from bitfleet.jobstatus import CANCELLED, FAILED, RUNNING, transition
from bitfleet.server.closing import close_round
from bitfleet.server.context import Context
from bitfleet.server.datasets import DatasetCache
from bitfleet.server.jobs import Job
from bitfleet.server.rounds import OpenRound
from bitfleet.server.selection import select, waiting_reason
from bitfleet.server.state.base import RoundRecord, StoreError
from bitfleet.server.tasks import task_of

log = logging.getLogger("bitfleet.rounds")


class RoundScheduler:
    def __init__(self, context: Context, datasets: DatasetCache) -> None:
        self._ctx = context
        self._datasets = datasets
        # Why an active job cannot open its round now (shown by the API, logged on change).
        self._waiting: dict[str, str] = {}

    # driving (the engine's thread)
    def recover(self) -> None:
        """Rebuild every open round from the store (the next tick closes those whose
        uploads are all in)."""
        with self._ctx.rounds.lock:
            for job in self._ctx.jobs.active():
                try:
                    record = self._ctx.store.get_open_round(job.job_id)
                    if record is not None and record.round == job.round and record.selected:
                        self._restore(job, record)
                except Exception as error:  # one broken job must not keep the rest down
                    self._ctx.rounds.by_job.pop(job.job_id, None)
                    self._ctx.conditions.failing(f"job {job.job_id}", repr(error), traceback=True)

    def tick(self) -> None:
        """Open rounds that can open, close rounds that are ready (a close the disk refused
        is tried again) or whose deadline passed."""
        with self._ctx.rounds.lock:
            active = self._ctx.jobs.active()
            for gone in set(self._ctx.rounds.by_job).difference(job.job_id for job in active):
                del self._ctx.rounds.by_job[gone]  # failed while it was open (its stored spec)
            for job in active:
                try:
                    self._tick_job(job)
                    self._ctx.conditions.cleared(f"job {job.job_id}")
                except StoreError as error:
                    self._ctx.conditions.failing(f"job {job.job_id}", str(error))
                except Exception as error:  # one broken job must not stall the others
                    self._ctx.conditions.failing(f"job {job.job_id}", repr(error), traceback=True)

    def _tick_job(self, job: Job) -> None:
        state = self._ctx.rounds.by_job.get(job.job_id)
        if state is None:
            self._try_open(job, self._waiting_attempt(job))
        elif state.accepted and state.ready():
            self._try_close(job, state)
        elif self._ctx.clock() >= state.record.deadline:
            self._deadline(job, state)

    def _waiting_attempt(self, job: Job) -> int:
        """The attempt a job waiting for agents is at (a retry that found too few agents)."""
        record = self._ctx.store.get_open_round(job.job_id)
        if record is not None and record.round == job.round and not record.selected:
            return record.attempt
        return 0

    def _restore(self, job: Job, record: RoundRecord) -> OpenRound:
        model = self._ctx.jobs.stored_model(job.job_id, record.round)
        published = job.algorithm.published(model)
        state = OpenRound.restore(self._ctx.store, job, record, model, len(published))
        self._ctx.rounds.by_job[job.job_id] = state
        log.info(
            "job %s round %d (re)opened with %d accepted uploads",
            job.job_id,
            record.round,
            len(state.accepted),
        )
        return state

    def _try_open(self, job: Job, attempt: int) -> None:
        """Select agents and open the round; agents whose upload an earlier attempt of this
        round accepted stay selected and counted."""
        prior = set(self._ctx.store.upload_agents(job.job_id, job.round))
        declined = {d.agent_id for d in self._ctx.store.list_declines(job.job_id)}
        present = self._ctx.registry.online()
        online = [a for a in present if a not in declined and a not in prior]
        reason = waiting_reason(job, len(online) + len(prior), len(declined.intersection(present)))
        if reason is not None:
            if self._waiting.get(job.job_id) != reason:
                self._waiting[job.job_id] = reason
                log.info("job %s is %s", job.job_id, reason)
            return
        self._waiting.pop(job.job_id, None)
        agents = {agent.agent_id: agent for agent, _ in self._ctx.registry.all()}
        chosen = select(job, attempt, online, prior, agents)
        record = self._ctx.store.open_round(
            job.job_id,
            job.round,
            attempt,
            self._ctx.clock() + job.spec.round_deadline_s,
            chosen.selected,
            transition(job.status, RUNNING),
            chosen.vote_caps,
        )
        state = self._restore(job, record)
        self._ctx.metrics.rounds_opened.inc()
        self._publish(job, state, [a for a in chosen.selected if a not in state.accepted])

    def _deadline(self, job: Job, state: OpenRound) -> None:
        if len(state.accepted) >= job.spec.min_agents:
            self._try_close(job, state)
            return
        del self._ctx.rounds.by_job[job.job_id]
        self._ctx.fanout.withdraw(state.record.selected)
        attempt = state.record.attempt
        if job.spec.on_insufficient == "retry" and attempt < job.spec.max_retries:
            log.warning(
                "job %s round %d: %d of %d uploads by the deadline; retrying",
                job.job_id,
                job.round,
                len(state.accepted),
                job.spec.min_agents,
            )
            self._ctx.metrics.rounds_retried.inc()
            self._try_open(job, attempt + 1)
            if (
                job.job_id not in self._ctx.rounds.by_job
            ):  # too few agents online: wait, as attempt N
                self._ctx.store.open_round(
                    job.job_id, job.round, attempt + 1, float("inf"), [], RUNNING
                )
                self._ctx.jobs.set_status(job.record, RUNNING, "waiting for agents")
            return
        reason = (
            f"round {job.round} received {len(state.accepted)} uploads by its deadline, fewer "
            f"than min_agents={job.spec.min_agents}, after {attempt + 1} attempts"
        )
        self._ctx.jobs.set_status(job.record, FAILED, reason)
        self._ctx.metrics.jobs_failed.inc()
        log.error("job %s failed: %s", job.job_id, reason)

    def _try_close(self, job: Job, state: OpenRound) -> None:
        """Close the round, or leave it open (tried again each tick) if the store refuses."""
        try:
            metrics = close_round(
                self._ctx.store, job, state, self._datasets.get(job.spec.dataset), self._ctx.clock()
            )
            self._ctx.conditions.cleared(f"closing {job.job_id}")
        except StoreError as error:
            self._ctx.conditions.failing(
                f"closing {job.job_id}", f"round {job.round} stays open: {error}"
            )
            return
        del self._ctx.rounds.by_job[job.job_id]
        self._ctx.fanout.withdraw([a for a in state.record.selected if a not in state.accepted])
        self._ctx.metrics.rounds_closed.inc()
        self._ctx.metrics.round_seconds.observe(metrics.seconds)
        log.info(
            "job %s round %d closed: %d uploads, test accuracy %.4f",
            job.job_id,
            job.round,
            metrics.uploads,
            metrics.test_accuracy,
        )
        if job.round + 1 >= job.spec.rounds:
            self._ctx.metrics.jobs_completed.inc()
            log.info("job %s completed", job.job_id)
        else:
            self._try_open(self._ctx.jobs.get(job.job_id), attempt=0)

    # what operators and transports ask (any thread)
    def cancel(self, job_id: str) -> None:
        """Cancel the job and withdraw its open round's tasks (JobConflict if it ended)."""
        with self._ctx.rounds.lock:
            self._ctx.jobs.set_status(
                self._ctx.jobs.record(job_id), CANCELLED, "cancelled by the operator"
            )
            self._waiting.pop(job_id, None)
            state = self._ctx.rounds.by_job.pop(job_id, None)
            if state is not None:
                self._ctx.fanout.withdraw(state.record.selected)

    def republish(self) -> None:
        """Publish every open round again (after a transport reconnects)."""
        with self._ctx.rounds.lock:
            for job_id, state in list(self._ctx.rounds.by_job.items()):
                waiting = [a for a in state.record.selected if a not in state.accepted]
                try:
                    self._publish(self._ctx.jobs.get(job_id), state, waiting)
                except Exception as error:
                    self._ctx.conditions.failing(f"job {job_id}", f"not republished: {error}")

    def waiting_reason(self, job_id: str) -> str | None:
        """What an active job waits for to start its round; None if it waits for nothing."""
        return self._waiting.get(job_id)

    def _publish(self, job: Job, state: OpenRound, agents: list[str]) -> None:
        model = self._ctx.jobs.model(job.job_id, state.record.round)
        tasks = dict.fromkeys(agents, task_of(job, state.record))
        self._ctx.metrics.bytes_out.inc(len(model) * len(tasks))
        self._ctx.fanout.publish_round(job.job_id, state.record.round, model, tasks)
