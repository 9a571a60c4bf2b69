"""Round scheduling: open a job's round, wait for uploads or the deadline, retry, close.

Transport-free: it publishes through the :class:`~bitfleet.server.fanout.Fanout`; what agents
ask and tell about their tasks goes to :mod:`bitfleet.server.tasks`, their uploads to
:mod:`bitfleet.server.uploads`. Rounds open and close only in :meth:`tick`, which the
engine's own thread runs (:mod:`bitfleet.server.engine`): an upload or a decline that
completes a round rings ``wake`` and returns, so no transport thread ever votes, evaluates or
publishes.

Several coordinator workers may share one store (PostgreSQL) and split the uploads between
them (MQTT shared subscriptions, or a load balancer in front of HTTP). Each tick, a worker
renews the round engine's lease in the store: the one that holds it leads (opens, closes and
publishes rounds, as a lone coordinator does); the others follow the rounds it opens and
checkpoint their partial tallies for it to merge. A leader that dies stops renewing, and
another takes over once the lease runs out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bitfleet.jobstatus import CANCELLED, FAILED, RUNNING, transition
from bitfleet.server.closing import close_round
from bitfleet.server.context import Context
from bitfleet.server.datasets import DatasetCache
from bitfleet.server.jobs import Job
from bitfleet.server.rounds import OpenRound
from bitfleet.server.selection import select, waiting_reason
from bitfleet.server.state.base import StoreError
from bitfleet.server.tasks import task_of

log = logging.getLogger("bitfleet.rounds")
ENGINE_LEASE = "round-engine"


@dataclass(frozen=True)
class WorkerRole:
    """Who this coordinator is among the workers of one deployment: ``worker_id`` (unique
    per worker), how long its lead lasts unrenewed, how often it checkpoints its tally
    while following."""

    worker_id: str = "coordinator"
    lease_s: float = 10.0
    checkpoint_s: float = 1.0


class RoundScheduler:
    def __init__(self, context: Context, datasets: DatasetCache, role: WorkerRole) -> None:
        self._ctx = context
        self._datasets = datasets
        self._role = role
        self.leading = False
        self._renew_at = 0.0  # while leading, the lease is renewed from here on
        # Why an active job cannot open its round now (shown by the API, logged on change).
        self._waiting: dict[str, str] = {}
        self._checkpointed_at: dict[str, float] = {}

    # driving (the engine's thread)
    def recover(self) -> None:
        """Rebuild every open round from the store (the next tick closes those whose
        uploads are all in)."""
        with self._ctx.rounds.lock:
            for job in self._ctx.jobs.active():
                try:
                    self._ctx.rounds.synced(self._ctx.store, self._ctx.jobs, job)
                except Exception as error:  # one broken job must not keep the rest down
                    self._ctx.rounds.by_job.pop(job.job_id, None)
                    self._ctx.conditions.failing(f"job {job.job_id}", repr(error), traceback=True)

    def tick(self) -> None:
        """Lead or follow, as the lease says. Leading: open rounds that can open, close
        rounds that are ready (a close the disk refused is tried again) or whose deadline
        passed. Following: track the rounds the leader opens, checkpoint the tally."""
        try:
            self._ctx.registry.flush_presence()
            self._ctx.conditions.cleared("recording presence")
        except StoreError as error:
            self._ctx.conditions.failing("recording presence", str(error))
        with self._ctx.rounds.lock:
            took_lead = self._hold_lead()
            active = self._ctx.jobs.active()
            for gone in set(self._ctx.rounds.by_job).difference(job.job_id for job in active):
                del self._ctx.rounds.by_job[gone]  # ended while it was open
            if took_lead:  # publish the rounds another worker (or an earlier run) opened
                self.recover()
                self.republish()
            for job in active:
                try:
                    if self.leading:
                        self._tick_job(job)
                    else:
                        self._follow(job)
                    self._ctx.conditions.cleared(f"job {job.job_id}")
                except StoreError as error:
                    self._ctx.conditions.failing(f"job {job.job_id}", str(error))
                except Exception as error:  # one broken job must not stall the others
                    self._ctx.conditions.failing(f"job {job.job_id}", repr(error), traceback=True)

    def _hold_lead(self) -> bool:
        """Renew the round engine's lease once half of it has passed (a store write, so not
        every tick), or try to take it, once it ran out; True if this worker has just taken
        it."""
        role = self._role
        now = self._ctx.clock()
        if self.leading and now < self._renew_at:
            return False
        try:
            leading = self._ctx.store.hold_lease(ENGINE_LEASE, role.worker_id, role.lease_s)
        except StoreError as error:
            self._ctx.conditions.failing("round engine lease", str(error))
            leading = False
        if leading:
            self._renew_at = now + role.lease_s / 2
        if leading != self.leading:
            self.leading = leading
            self._ctx.metrics.lead_changes.inc()
            self._ctx.metrics.leading.set(int(leading))
            log.info(
                "worker %s %s the round engine", role.worker_id, "leads" if leading else "follows"
            )
            return leading
        return False

    def _tick_job(self, job: Job) -> None:
        state = self._ctx.rounds.synced(self._ctx.store, self._ctx.jobs, job)
        if state is None:
            self._try_open(job, self._waiting_attempt(job))
            return
        state.refresh(self._ctx.store)
        if state.accepted and state.ready():
            self._try_close(job, state)
        elif self._ctx.clock() >= state.record.deadline:
            self._deadline(job, state)

    def _follow(self, job: Job) -> None:
        """Track the job's open round; checkpoint this worker's tally when it grew, at most
        every ``checkpoint_s``, and at once when the round is ready to close."""
        state = self._ctx.rounds.synced(self._ctx.store, self._ctx.jobs, job)
        if state is None or state.saved == len(state.tallied):
            return
        state.refresh(self._ctx.store)
        now = self._ctx.clock()
        due = now - self._checkpointed_at.get(job.job_id, 0.0) >= self._role.checkpoint_s
        if due or state.ready() or now >= state.record.deadline:
            checkpoint = state.checkpoint(self._role.worker_id)
            self._ctx.store.save_tally(job.job_id, state.record.round, checkpoint)
            self._checkpointed_at[job.job_id] = now

    def _waiting_attempt(self, job: Job) -> int:
        """The attempt a job waiting for agents is at (a retry that found too few agents)."""
        record = self._ctx.store.get_open_round(job.job_id)
        if record is not None and record.round == job.round and not record.selected:
            return record.attempt
        return 0

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
        self._ctx.store.open_round(
            job.job_id,
            job.round,
            attempt,
            self._ctx.clock() + job.spec.round_deadline_s,
            chosen.selected,
            transition(job.status, RUNNING),
            chosen.vote_caps,
        )
        state = self._ctx.rounds.synced(self._ctx.store, self._ctx.jobs, job)
        assert state is not None, "a round just opened with agents selected"
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
        """Publish every open round again (after a transport reconnects), if leading."""
        with self._ctx.rounds.lock:
            if not self.leading:
                return
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
