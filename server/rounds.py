"""One open round in memory: its model, the running tally, who uploaded and who declined.

The only in-memory state of the coordinator. It is rebuilt from the stored uploads when a
round (re)opens, so a coordinator killed at any point resumes every round where it was.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from bitfleet.errors import BitfleetError
from bitfleet.frames import Frame, decode_frame
from bitfleet.server.algorithms import Accumulator, JobAlgorithm
from bitfleet.server.jobs import Job
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import RoundRecord

log = logging.getLogger("bitfleet.rounds")


@dataclass
class OpenRound:
    """``spec`` is the job's (it never changes); the job's status and round live in the
    store."""

    record: RoundRecord
    spec: JobSpec
    algorithm: JobAlgorithm
    model: Frame
    model_bytes: int
    accumulator: Accumulator
    bytes_up: int = 0
    accepted: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)

    @classmethod
    def restore(
        cls, store: StateStore, job: Job, record: RoundRecord, model: bytes, model_bytes: int
    ) -> OpenRound:
        """The round with the uploads and declines the store holds for it; ``model`` as
        stored, ``model_bytes`` the size agents download."""
        frame = decode_frame(model)
        state = cls(
            record, job.spec, job.algorithm, frame, model_bytes, job.algorithm.accumulator(frame)
        )
        state.declined = {
            d.agent_id
            for d in store.list_declines(job.job_id)
            if d.round == record.round and d.agent_id in record.selected
        }
        for upload in store.iter_uploads(job.job_id, record.round):
            try:
                state.add(upload.agent_id, decode_frame(upload.payload))
            except BitfleetError as error:  # stored by an older, laxer coordinator
                log.error(
                    "job %s round %d: stored upload of %s skipped: %s",
                    job.job_id,
                    record.round,
                    upload.agent_id,
                    error,
                )
                continue
            state.bytes_up += len(upload.payload)
        return state

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

    def add(self, agent_id: str, update: Frame) -> None:
        """Tally one verified update, its weight bounded by the round's vote cap."""
        claimed = int(update.meta["samples"])
        samples = min(claimed, self.record.vote_caps.get(agent_id, claimed))
        self.accumulator.add(update, samples if self.spec.weighted_votes else 1, samples)
        self.accepted.add(agent_id)


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
