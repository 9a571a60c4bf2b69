"""The round engine: jobs, rounds, agent selection, uploads, aggregation, evaluation.

Transports (MQTT, HTTP) hand every upload to :meth:`RoundEngine.handle_upload` and every
presence change to :meth:`RoundEngine.agent_presence`; the engine answers with receipts and
publishes rounds through the :class:`Publisher` interface. All state lives in the store;
the only in-memory state is each open round's tally, rebuilt from stored uploads on start,
so a coordinator killed at any point resumes every job at its current round.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from pydantic import ValidationError

from bitfleet.datasets import Dataset, load_dataset
from bitfleet.errors import BitfleetError, ConfigError
from bitfleet.frames import DEFAULT_MAX_FRAME_BYTES, Frame, FrameError, decode_frame
from bitfleet.protocol import RESENT, RESERVED_AGENT_IDS, Task, UploadReceipt, check_agent_id
from bitfleet.server.algorithms import ALGORITHMS, Accumulator, JobAlgorithm
from bitfleet.server.conditions import ConditionLog
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.jobstatus import ACTIVE, TERMINAL
from bitfleet.server.metrics import Metrics
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import AgentRecord, JobRecord, RoundMetrics, RoundRecord, StoreError
from bitfleet.server.voting import declared_samples, vote_caps

log = logging.getLogger("bitfleet.engine")
DATASET_CACHE = 4


class NotFound(BitfleetError):
    """A job, round model or agent that does not exist."""


class JobConflict(BitfleetError):
    """An operation the job's state does not allow (e.g. cancelling a finished job)."""


class Publisher(Protocol):
    """Pushes rounds and receipts to agents (the MQTT bridge); HTTP agents poll instead."""

    def publish_round(
        self, job_id: str, round_index: int, model: bytes, tasks: dict[str, Task]
    ) -> None: ...

    def withdraw_tasks(self, agent_ids: list[str]) -> None: ...

    def publish_receipt(self, receipt: UploadReceipt) -> None: ...


@dataclass
class EngineSettings:
    presence_timeout_s: float = 30.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    # Largest model a job may ask for, in dense weights: 10x a 784-512-10 network, about
    # 80 MB of bit-flip training state on an agent, 8 MB as an int16 model file.
    max_model_weights: int = 4_000_000
    tick_s: float = 0.25
    data_dir: str | None = None


@dataclass
class _OpenRound:
    record: RoundRecord
    model: Frame
    accumulator: Accumulator
    bytes_up: int = 0
    accepted: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)

    def ready(self, spec: JobSpec) -> bool:
        """Enough uploads to close now: the quorum, or every selected agent that did not
        decline (never fewer than min_agents)."""
        remaining = len(self.record.selected) - len(self.declined)
        return len(self.accepted) >= max(min(spec.close_at, remaining), spec.min_agents)

    def add(self, spec: JobSpec, agent_id: str, update: Frame) -> None:
        """Tally one verified update, its weight bounded by the round's vote cap."""
        claimed = int(update.meta["samples"])
        samples = min(claimed, self.record.vote_caps.get(agent_id, claimed))
        self.accumulator.add(update, samples if spec.weighted_votes else 1, samples)
        self.accepted.add(agent_id)


class RoundEngine:
    def __init__(
        self,
        store: StateStore,
        settings: EngineSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or EngineSettings()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.publishers: list[Publisher] = []
        self.credential_listeners: list[Callable[[], None]] = []
        # Ids no agent may enroll under (the coordinator adds its broker user).
        self.reserved_agent_ids: set[str] = set(RESERVED_AGENT_IDS)
        # Transport links whose state /healthz reports (name -> is it up?).
        self.links: dict[str, Callable[[], bool]] = {}
        self._lock = threading.RLock()
        self._open: dict[str, _OpenRound] = {}
        # Why an active job cannot open its round now (shown by the API, logged on change).
        self._waiting: dict[str, str] = {}
        self._datasets: dict[str, Dataset] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.conditions = ConditionLog(log)

    # lifecycle
    def start(self) -> None:
        """Rebuild open rounds from the store, then drive rounds on a timer thread."""
        self.recover()
        self._thread = threading.Thread(target=self._run, name="round-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.tick_s):
            try:
                self.tick()
                self.conditions.cleared("round engine")
            except Exception as error:  # keep ticking; logged once per distinct failure
                self.conditions.failing("round engine", f"tick failed: {error}", traceback=True)

    def recover(self) -> None:
        """Rebuild every open round from the store; close those whose uploads are all in."""
        with self._lock:
            for job in self.store.list_jobs(ACTIVE):
                try:
                    self._recover_job(job)
                except Exception as error:  # one broken job must not keep the rest down
                    self._open.pop(job.job_id, None)
                    self.conditions.failing(f"job {job.job_id}", repr(error), traceback=True)

    def _recover_job(self, job: JobRecord) -> None:
        if not self._spec_still_valid(job):
            return
        record = self.store.get_open_round(job.job_id)
        if record is not None and record.round == job.round and record.selected:
            state = self._restore(job, record)
            if state.ready(JobSpec.model_validate(job.spec)):
                self._try_close(job, state)

    def _spec_still_valid(self, job: JobRecord) -> bool:
        """A job stored by an older, laxer coordinator whose spec this one refuses fails
        with the reason instead of stopping the start."""
        try:
            JobSpec.model_validate(job.spec)
            return True
        except ValidationError as error:
            reason = f"its stored spec is not valid here: {error.errors()[0]['msg']}"
            self.store.set_job_status(job.job_id, "failed", reason)
            log.error("job %s failed: %s", job.job_id, reason)
            return False

    def _restore(self, job: JobRecord, record: RoundRecord) -> _OpenRound:
        spec = JobSpec.model_validate(job.spec)
        state = self._new_round(spec, job.job_id, record)
        state.declined = {
            d.agent_id
            for d in self.store.list_declines(job.job_id)
            if d.round == record.round and d.agent_id in record.selected
        }
        self._open[job.job_id] = state
        log.info(
            "job %s resumed at round %d with %d accepted uploads",
            job.job_id,
            record.round,
            len(state.accepted),
        )
        return state

    def _new_round(self, spec: JobSpec, job_id: str, record: RoundRecord) -> _OpenRound:
        """An open round with the uploads the store holds for it already tallied."""
        model = self._model_frame(job_id, record.round)
        state = _OpenRound(record, model, ALGORITHMS[spec.algorithm].accumulator(model))
        for upload in self.store.iter_uploads(job_id, record.round):
            try:
                state.add(spec, upload.agent_id, decode_frame(upload.payload))
            except BitfleetError as error:  # stored by an older, laxer coordinator
                log.error(
                    "job %s round %d: stored upload of %s skipped: %s",
                    job_id,
                    record.round,
                    upload.agent_id,
                    error,
                )
                continue
            state.bytes_up += len(upload.payload)
        return state

    # jobs
    def create_job(self, spec: JobSpec) -> JobRecord:
        # Checked before anything is built: the initial model alone would allocate this much.
        if spec.model.weight_count > self.settings.max_model_weights:
            raise ConfigError(
                f"model layers {spec.model.layers} have {spec.model.weight_count} weights, more "
                f"than this coordinator's limit of {self.settings.max_model_weights}: use smaller "
                "layers, or restart the coordinator with a larger --max-model-weights"
            )
        algorithm = ALGORITHMS.get(spec.algorithm)
        if algorithm is None:
            raise ConfigError(f"algorithm {spec.algorithm!r} is not available on this coordinator")
        dataset = self.dataset(spec.dataset)
        layers = spec.model.layers
        if layers[0] != dataset.num_features or layers[-1] < dataset.num_classes:
            raise ConfigError(
                f"model layers {layers} do not fit {spec.dataset}: it has "
                f"{dataset.num_features} features and {dataset.num_classes} classes, so use "
                f"[{dataset.num_features}, ..., {dataset.num_classes}]"
            )
        model = self._initial_model(spec, algorithm)
        job_id = "job-" + secrets.token_hex(6)
        job = self.store.create_job(job_id, spec.model_dump(), model)
        log.info("job %s created: %s, %d rounds", job_id, spec.name, spec.rounds)
        return job

    def _initial_model(self, spec: JobSpec, algorithm: JobAlgorithm) -> bytes:
        if spec.initial_model is None:
            return algorithm.initial_model(spec)
        try:
            frame_bytes = base64.b64decode(spec.initial_model, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("initial_model must be base64 of a .bfm model file") from None
        algorithm.check_initial(decode_frame(frame_bytes), spec)
        return frame_bytes

    def cancel_job(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self.job(job_id)
            if job.status in TERMINAL:
                raise JobConflict(f"job {job_id} is already {job.status}")
            self.store.set_job_status(job_id, "cancelled", "cancelled by the operator")
            self._waiting.pop(job_id, None)
            state = self._open.pop(job_id, None)
            if state is not None:
                self._withdraw(state.record.selected)
            return self.job(job_id)

    def job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return job

    def dataset(self, name: str) -> Dataset:
        """The evaluation data set, from a small cache (a few names are in use at a time;
        an admin naming many shifted variants must not grow memory without bound)."""
        dataset = self._datasets.pop(name, None) or load_dataset(
            name, data_dir=self.settings.data_dir
        )
        self._datasets[name] = dataset  # most recently used last
        while len(self._datasets) > DATASET_CACHE:
            del self._datasets[next(iter(self._datasets))]
        return dataset

    # agents
    def enroll(self, agent_id: str, secret: str) -> AgentRecord:
        """Enroll a new agent; reserved ids (the coordinator's broker user among them) are
        refused, since an agent's id is also its broker login."""
        check_agent_id(agent_id, self.reserved_agent_ids)
        agent = self.store.create_agent(agent_id, secret)
        self._credentials_changed()
        log.info("agent %s enrolled", agent_id)
        return agent

    def revoke(self, agent_id: str) -> AgentRecord | None:
        """Revoke an agent; it is dropped from open rounds. None if it does not exist."""
        if self.store.get_agent(agent_id) is None:
            return None
        with self._lock:
            self.store.revoke_agent(agent_id)
            self._withdraw([agent_id])
        self._credentials_changed()
        log.info("agent %s revoked", agent_id)
        return self.store.get_agent(agent_id)

    def _credentials_changed(self) -> None:
        for listener in self.credential_listeners:
            listener()

    def online_agents(self) -> list[str]:
        cutoff = self.clock() - self.settings.presence_timeout_s
        return [
            agent.agent_id
            for agent in self.store.list_agents()
            if not agent.revoked
            and agent.online
            and (agent.transport == "mqtt" or (agent.last_seen or 0) >= cutoff)
        ]

    def agent_presence(
        self, agent_id: str, online: bool, transport: str, capabilities: dict[str, object] | None
    ) -> bool:
        """Record presence of an enrolled agent; False for unknown or revoked ones."""
        if self.store.agent_secret(agent_id) is None:
            return False
        self.store.record_presence(agent_id, online, transport, capabilities)
        return True

    def task_for(self, agent_id: str) -> tuple[Task, bytes] | None:
        """The agent's current task and model, if it is selected for an open round."""
        with self._lock:
            for job_id, state in self._open.items():
                waiting = state.accepted | state.declined
                if agent_id in state.record.selected and agent_id not in waiting:
                    job = self.job(job_id)
                    return self._task(job, state.record), self._model_bytes(
                        job_id, state.record.round
                    )
        return None

    # rounds
    def tick(self) -> None:
        """Open rounds that can open, close rounds that are ready (a close the disk refused
        is tried again) or whose deadline passed."""
        with self._lock:
            for job in self.store.list_jobs(ACTIVE):
                try:
                    self._tick_job(job)
                    self.conditions.cleared(f"job {job.job_id}")
                except StoreError as error:
                    self.conditions.failing(f"job {job.job_id}", str(error))
                except Exception as error:  # one broken job must not stall the others
                    self.conditions.failing(f"job {job.job_id}", repr(error), traceback=True)

    def _tick_job(self, job: JobRecord) -> None:
        if not self._spec_still_valid(job):
            self._open.pop(job.job_id, None)
            self._waiting.pop(job.job_id, None)
            return
        state = self._open.get(job.job_id)
        if state is None:
            self._try_open(job, self._waiting_attempt(job))
        elif state.accepted and state.ready(JobSpec.model_validate(job.spec)):
            self._try_close(job, state)
        elif self.clock() >= state.record.deadline:
            self._deadline(job, state)

    def _waiting_attempt(self, job: JobRecord) -> int:
        """The attempt a job waiting for agents is at (a retry that found too few agents)."""
        record = self.store.get_open_round(job.job_id)
        if record is not None and record.round == job.round and not record.selected:
            return record.attempt
        return 0

    def _try_open(self, job: JobRecord, attempt: int) -> None:
        """Select agents and open the round; agents whose upload an earlier attempt of this
        round accepted stay selected and counted."""
        spec = JobSpec.model_validate(job.spec)
        prior = set(self.store.upload_agents(job.job_id, job.round))
        declined = {d.agent_id for d in self.store.list_declines(job.job_id)}
        present = self.online_agents()
        online = [a for a in present if a not in declined and a not in prior]
        if len(online) + len(prior) < spec.min_agents:
            refused = len(declined.intersection(present))
            self._wait(
                job.job_id,
                f"waiting for {spec.min_agents} agents, {len(online) + len(prior)} online"
                + (f" ({refused} more declined this job)" if refused else ""),
            )
            return
        self._waiting.pop(job.job_id, None)
        rng = np.random.default_rng([spec.seed, job.round, attempt])
        count = max(0, min(spec.agents_per_round - len(prior), len(online)))
        chosen = rng.choice(sorted(online), size=count, replace=False).tolist()
        selected = sorted(prior | set(chosen))
        agents = {agent.agent_id: agent for agent in self.store.list_agents()}
        declared = {
            a: declared_samples(agents[a].capabilities) if a in agents else None for a in selected
        }
        caps = vote_caps(declared, spec.max_vote_share)
        deadline = self.clock() + spec.round_deadline_s
        record = self.store.open_round(job.job_id, job.round, attempt, deadline, selected, caps)
        state = self._new_round(spec, job.job_id, record)
        self._open[job.job_id] = state
        self.metrics.rounds_opened.inc()
        log.info(
            "job %s round %d opened (attempt %d) with %s", job.job_id, job.round, attempt, selected
        )
        self._publish(job, record, [a for a in selected if a not in state.accepted])

    def _wait(self, job_id: str, reason: str) -> None:
        """Note why the job cannot start its round; logged once per change, not per tick."""
        if self._waiting.get(job_id) != reason:
            self._waiting[job_id] = reason
            log.info("job %s is %s", job_id, reason)

    def waiting_reason(self, job_id: str) -> str | None:
        """What an active job waits for to start its round; None if it waits for nothing."""
        return self._waiting.get(job_id)

    def republish(self) -> None:
        """Publish every open round again (after a transport reconnects)."""
        with self._lock:
            for job_id, state in list(self._open.items()):
                waiting = [a for a in state.record.selected if a not in state.accepted]
                try:
                    self._publish(self.job(job_id), state.record, waiting)
                except BitfleetError as error:
                    self.conditions.failing(f"job {job_id}", f"not republished: {error}")

    def _publish(self, job: JobRecord, record: RoundRecord, agents: list[str]) -> None:
        model = self._model_bytes(job.job_id, record.round)
        task = self._task(job, record)
        tasks = {agent: task for agent in agents}
        self.metrics.bytes_out.inc(len(model) * len(tasks))
        for publisher in self.publishers:
            publisher.publish_round(job.job_id, record.round, model, tasks)

    def _task(self, job: JobRecord, record: RoundRecord) -> Task:
        spec = JobSpec.model_validate(job.spec)
        return Task(
            job_id=job.job_id,
            round=record.round,
            algorithm=spec.algorithm,
            deadline=record.deadline,
            attempt=record.attempt,
            local_epochs=spec.local_epochs,
            seed=spec.seed,
            hyperparameters=ALGORITHMS[spec.algorithm].round_hyperparameters(spec, record.round),
        )

    def _deadline(self, job: JobRecord, state: _OpenRound) -> None:
        spec = JobSpec.model_validate(job.spec)
        if len(state.accepted) >= spec.min_agents:
            self._try_close(job, state)
            return
        del self._open[job.job_id]
        self._withdraw(state.record.selected)
        if spec.on_insufficient == "retry" and state.record.attempt < spec.max_retries:
            log.warning(
                "job %s round %d: %d of %d uploads by the deadline; retrying",
                job.job_id,
                job.round,
                len(state.accepted),
                spec.min_agents,
            )
            self.metrics.rounds_retried.inc()
            self._retry(job, state.record.attempt + 1)
            return
        reason = (
            f"round {job.round} received {len(state.accepted)} uploads by its deadline, fewer "
            f"than min_agents={spec.min_agents}, after {state.record.attempt + 1} attempts"
        )
        self.store.set_job_status(job.job_id, "failed", reason)
        self.metrics.jobs_failed.inc()
        log.error("job %s failed: %s", job.job_id, reason)

    def _retry(self, job: JobRecord, attempt: int) -> None:
        self._try_open(job, attempt)
        if job.job_id not in self._open:  # too few agents online: wait for them, as attempt N
            self.store.open_round(job.job_id, job.round, attempt, float("inf"), [])
            self.store.set_job_status(job.job_id, "running", "waiting for agents")

    def _try_close(self, job: JobRecord, state: _OpenRound) -> None:
        """Close the round, or leave it open (tried again each tick) if the store refuses."""
        try:
            self._close(job, state)
            self.conditions.cleared(f"closing {job.job_id}")
        except StoreError as error:
            self.conditions.failing(
                f"closing {job.job_id}", f"round {job.round} stays open: {error}"
            )

    def _close(self, job: JobRecord, state: _OpenRound) -> None:
        spec = JobSpec.model_validate(job.spec)
        algorithm = ALGORITHMS[spec.algorithm]
        started = self.clock()
        next_model = algorithm.next_model(state.model, state.accumulator, job.round)
        accuracy, loss = algorithm.evaluate(decode_frame(next_model), self.dataset(spec.dataset))
        metrics = RoundMetrics(
            round=job.round,
            test_accuracy=accuracy,
            loss=loss,
            uploads=len(state.accepted),
            bytes_up=state.bytes_up,
            bytes_down=len(self._model_bytes(job.job_id, job.round)) * len(state.record.selected),
            seconds=round(started - state.record.opened_at, 3),
        )
        final = job.round + 1 >= spec.rounds
        self.store.close_round(job.job_id, job.round, next_model, metrics, final)
        del self._open[job.job_id]
        self._withdraw([a for a in state.record.selected if a not in state.accepted])
        self.metrics.rounds_closed.inc()
        self.metrics.round_seconds.observe(metrics.seconds)
        log.info(
            "job %s round %d closed: %d uploads, test accuracy %.4f",
            job.job_id,
            job.round,
            metrics.uploads,
            accuracy,
        )
        if final:
            self.metrics.jobs_completed.inc()
            log.info("job %s completed", job.job_id)
        else:
            self._try_open(self.job(job.job_id), attempt=0)

    def _withdraw(self, agent_ids: list[str]) -> None:
        for publisher in self.publishers:
            publisher.withdraw_tasks(agent_ids)

    # uploads
    def handle_upload(
        self, job_id: str, round_index: int, agent_id: str, data: bytes, transport: str
    ) -> UploadReceipt:
        """Verify, store and tally one upload; refusals are receipts, never exceptions.

        A full disk refuses with ``storage`` (the agent keeps the upload and resends it),
        logged once while the condition lasts."""
        self.metrics.bytes_in.inc(len(data))
        try:
            reason = self._accept(job_id, round_index, agent_id, data)
            if reason == "":  # stored: the disk takes uploads again
                self.conditions.cleared("storing uploads")
        except FrameError as error:
            reason = error.reason
            log.warning("upload from %s refused (%s): %s", agent_id, reason, error)
        except StoreError as error:
            reason = "storage"
            self.conditions.failing("storing uploads", f"uploads refused: {error}")
        except BitfleetError as error:
            reason = "invalid"
            log.warning("upload from %s refused (%s): %s", agent_id, reason, error)
        except Exception as error:  # a bug: the agent retries, the operator sees it once
            reason = "internal"
            self.conditions.failing("handling uploads", repr(error), traceback=True)
        return self.receipt(job_id, round_index, agent_id, reason, transport)

    def receipt(
        self, job_id: str, round_index: int, agent_id: str, reason: str, transport: str
    ) -> UploadReceipt:
        """Count and announce the outcome of an upload (reason '' = accepted)."""
        receipt = UploadReceipt(job_id, round_index, agent_id, reason in ("", RESENT), reason)
        if reason == RESENT:
            self.metrics.uploads_resent.inc(transport=transport)
        elif receipt.accepted:
            self.metrics.uploads_accepted.inc(transport=transport)
        else:
            self.metrics.uploads_refused.inc(reason=reason)
        for publisher in self.publishers:
            publisher.publish_receipt(receipt)
        return receipt

    def _accept(self, job_id: str, round_index: int, agent_id: str, data: bytes) -> str:
        """'' when accepted, else the refusal reason."""
        frame = decode_frame(
            data, secret_for=self._secret_lookup(agent_id), max_bytes=self.settings.max_frame_bytes
        )
        if (frame.meta.get("job_id"), frame.meta.get("round")) != (job_id, round_index):
            return "mismatch"
        with self._lock:
            job = self.store.get_job(job_id)
            if job is None:
                return "unknown_job"
            state = self._open.get(job_id)
            open_round = state.record.round if state is not None else None
            if round_index != open_round and self.store.counted(job_id, round_index, agent_id):
                return RESENT  # counted before its round closed; the receipt was lost
            if job.status not in ACTIVE:
                return "job_not_running"
            if round_index < job.round or (state is None and round_index == job.round):
                return "late"
            if state is None or round_index > job.round:
                return "wrong_round"
            if agent_id not in state.record.selected:
                return "not_selected"
            if agent_id in state.accepted:
                return RESENT
            spec = JobSpec.model_validate(job.spec)
            ALGORITHMS[spec.algorithm].check_update(state.model, frame)
            samples = int(frame.meta["samples"])
            if not self.store.add_upload(job_id, round_index, agent_id, samples, data):
                return RESENT
            state.add(spec, agent_id, frame)
            state.bytes_up += len(data)
            log.info(
                "job %s round %d: upload from %s accepted (%d/%d)",
                job_id,
                round_index,
                agent_id,
                len(state.accepted),
                spec.close_at,
            )
            if state.ready(spec):
                self._try_close(job, state)
        return ""

    def decline(self, job_id: str, round_index: int, agent_id: str, reason: str) -> bool:
        """An agent cannot take a job: record why, never select it for this job again, and
        close the round if everyone else has answered. False if the agent was not asked."""
        with self._lock:
            state = self._open.get(job_id)
            if state is None or state.record.round != round_index:
                return False
            if agent_id not in state.record.selected or agent_id in state.accepted:
                return False
            self.store.add_decline(job_id, round_index, agent_id, reason[:500])
            state.declined.add(agent_id)
            self.metrics.declines.inc()
            log.warning("job %s round %d: %s declined: %s", job_id, round_index, agent_id, reason)
            spec = JobSpec.model_validate(self.job(job_id).spec)
            if state.accepted and state.ready(spec):
                self._try_close(self.job(job_id), state)
            return True

    def _secret_lookup(self, agent_id: str) -> Callable[[dict[str, object]], bytes]:
        def lookup(meta: dict[str, object]) -> bytes:
            if meta.get("agent_id") != agent_id:
                raise FrameError("mismatch", "frame sender differs from the uploading agent")
            secret = self.store.agent_secret(agent_id)
            if secret is None:
                raise FrameError("unknown_agent", f"agent {agent_id!r} is not enrolled")
            return secret.encode()

        return lookup

    # models
    def _model_bytes(self, job_id: str, round_index: int | None = None) -> bytes:
        model = self.store.get_model(job_id, round_index)
        if model is None:
            raise NotFound(f"job {job_id!r} has no model for round {round_index}")
        return model

    def _model_frame(self, job_id: str, round_index: int) -> Frame:
        return decode_frame(self._model_bytes(job_id, round_index))

    def round_progress(self, job_id: str) -> tuple[int, int]:
        """(uploads accepted, agents selected) in the job's open round; (0, 0) if none."""
        with self._lock:
            state = self._open.get(job_id)
            return (len(state.accepted), len(state.record.selected)) if state else (0, 0)

    def link_states(self) -> dict[str, bool]:
        """Each registered transport link and whether it is up now."""
        return {name: up() for name, up in self.links.items()}

    def agent_model(self, job_id: str, round_index: int, agent_id: str) -> bytes:
        """The model of an open round for an agent selected for it; NotFound for anyone
        else (an agent sees only the jobs and rounds it was selected for)."""
        with self._lock:
            state = self._open.get(job_id)
            if (
                state is None
                or state.record.round != round_index
                or agent_id not in state.record.selected
            ):
                raise NotFound(
                    f"no model of job {job_id!r} round {round_index} for agent {agent_id!r}: "
                    "it is not selected for that round"
                )
        return self._model_bytes(job_id, round_index)

    def model(self, job_id: str, round_index: int | None = None) -> bytes:
        self.job(job_id)
        return self._model_bytes(job_id, round_index)
