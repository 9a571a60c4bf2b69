"""One open round in memory: its model, the running tally, who uploaded and who declined.

The only in-memory state of the coordinator: the store holds every upload, so a round is
rebuilt from it when it (re)opens or another worker opened it, and a coordinator killed at
any point resumes every round where it was.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from bitfleet.frames import Frame, decode_frame
from bitfleet.server.algorithms import Accumulator, JobAlgorithm
from bitfleet.server.jobs import Job, JobBook
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import RoundRecord, TallyCheckpoint

log = logging.getLogger("bitfleet.rounds")


@dataclass
class OpenRound:
    """``spec`` is the job's (it never changes); the job's status and round live in the
    store. ``accumulator`` counts the uploads this coordinator accepted (``tallied``, their
    ``bytes_up``); ``accepted`` is every upload the store holds for the round as last seen,
    whichever worker took it; ``saved`` how many of ``tallied`` the last checkpoint held."""

    record: RoundRecord
    spec: JobSpec
    algorithm: JobAlgorithm
    model: Frame
    model_bytes: int
    accumulator: Accumulator
    bytes_up: int = 0
    tallied: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    saved: int = 0

    @classmethod
    def restore(
        cls, store: StateStore, job: Job, record: RoundRecord, model: bytes, model_bytes: int
    ) -> OpenRound:
        """The round with the uploads and declines the store holds for it, an empty tally
        (the uploads are read when it closes); ``model`` as stored, ``model_bytes`` the
        size agents download."""
        frame = decode_frame(model)
        state = cls(
            record, job.spec, job.algorithm, frame, model_bytes, job.algorithm.accumulator(frame)
        )
        state.refresh(store)
        return state

    def refresh(self, store: StateStore) -> None:
        """Learn the uploads and declines other workers (or an earlier run) stored."""
        job_id, round_index = self.record.job_id, self.record.round
        self.accepted.update(store.upload_agents(job_id, round_index))
        self.declined = {
            d.agent_id
            for d in store.list_declines(job_id)
            if d.round == round_index and d.agent_id in self.record.selected
        }

    def check(self, update: Frame) -> str | None:
        """FrameError for an update that does not fit the round's model; the refusal reason
        of one the job's screening turns away; None for one to count."""
        self.algorithm.check_update(self.model, update)
        return self.algorithm.screen(self.model, update) if self.spec.screen_updates else None

    def waiting_for(self, agent_id: str) -> bool:
        """Selected, and has neither uploaded nor declined."""
        return (
            agent_id in self.record.selected
            and agent_id not in self.accepted
            and agent_id not in self.declined
        )

    def ready(self) -> bool:
        """Enough uploads to close now: the quorum, or every selected agent that did not
        decline (never fewer than min_agents)."""
        remaining = len(self.record.selected) - len(self.declined)
        return len(self.accepted) >= max(min(self.spec.close_at, remaining), self.spec.min_agents)

    def add(self, agent_id: str, update: Frame, payload_bytes: int) -> None:
        """Tally one verified update of ``payload_bytes``."""
        self.count(self.accumulator, agent_id, update)
        self.tallied.add(agent_id)
        self.accepted.add(agent_id)
        self.bytes_up += payload_bytes

    def count(self, accumulator: Accumulator, agent_id: str, update: Frame) -> None:
        """Add ``agent_id``'s ``update`` to ``accumulator``, its weight bounded by the
        round's vote cap."""
        claimed = int(update.meta["samples"])
        samples = min(claimed, self.record.vote_caps.get(agent_id, claimed))
        accumulator.add(update, samples if self.spec.weighted_votes else 1, samples)

    def checkpoint(self, worker_id: str) -> TallyCheckpoint:
        """This worker's tally as a checkpoint for the worker that closes the round."""
        self.saved = len(self.tallied)
        return TallyCheckpoint(
            worker_id,
            self.record.attempt,
            sorted(self.tallied),
            self.bytes_up,
            self.accumulator.to_bytes(),
        )


class OpenRounds:
    """The open round of each job, behind the one lock the scheduler and the upload desk
    share: a round is read, tallied and closed by one of them at a time. Hold ``lock``
    while touching ``by_job``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.by_job: dict[str, OpenRound] = {}

    def progress(self, job_id: str) -> tuple[int, int]:
        """(uploads accepted, agents selected) in the job's open round; (0, 0) if none."""
        with self.lock:
            state = self.by_job.get(job_id)
            return (len(state.accepted), len(state.record.selected)) if state else (0, 0)

    def synced(self, store: StateStore, jobs: JobBook, job: Job) -> OpenRound | None:
        """The job's open round as the store has it (hold ``lock``): the one in memory while
        it is that round and attempt, else rebuilt (another worker opened it, or this one
        just started); None if the job has no round open to agents."""
        record = store.get_open_round(job.job_id)
        state = self.by_job.get(job.job_id)
        if record is None or record.round != job.round or not record.selected:
            self.by_job.pop(job.job_id, None)
            return None
        if state is not None and (state.record.round, state.record.attempt) == (
            record.round,
            record.attempt,
        ):
            return state
        model = jobs.stored_model(job.job_id, record.round)
        published = job.algorithm.published(model)
        state = OpenRound.restore(store, job, record, model, len(published))
        self.by_job[job.job_id] = state
        log.info(
            "job %s round %d attempt %d followed: %d uploads stored",
            job.job_id,
            record.round,
            record.attempt,
            len(state.accepted),
        )
        return state
