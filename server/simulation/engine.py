"""The simulated rounds: select, train, check and tally, vote — the service's own steps.

Each round builds what the coordinator would hold for it — the job (record + spec), the
selection with its vote caps, the task, the :class:`OpenRound` — and runs the agents'
updates through the upload desk's checks (signature, shape, sample bound) into its tally; the
vote and evaluation are :func:`bitfleet.server.closing.vote`. A selected agent drops out with
probability ``dropout``; a round no upload reached keeps its model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bitfleet.datasets import Dataset
from bitfleet.errors import BitfleetError
from bitfleet.frames import decode_frame
from bitfleet.jobstatus import RUNNING
from bitfleet.server.algorithms import JOB_ALGORITHMS
from bitfleet.server.closing import vote
from bitfleet.server.jobs import Job, round_zero_model
from bitfleet.server.jobspec import JobSpec
from bitfleet.server.rounds import OpenRound
from bitfleet.server.selection import select
from bitfleet.server.simulation.fleet import Fleet
from bitfleet.server.state.base import AgentRecord, JobRecord, RoundRecord
from bitfleet.server.tasks import task_of

log = logging.getLogger("bitfleet.simulate")
# A job id of the service's form ("job-" and 12 hex digits), so frames weigh what they would.
JOB_ID = "job-" + "0" * 12
# No model a simulation builds is refused for size: the machine running it is the limit.
NO_WEIGHT_LIMIT = 2**62


@dataclass(frozen=True)
class RoundResult:
    round: int
    test_accuracy: float
    loss: float
    # On the validation split carved from the training data, when the run has one: what
    # tuning may look at (the test split is only reported).
    val_accuracy: float | None
    selected: int
    uploads: int
    refused: int
    bytes_up: int
    bytes_down: int
    seconds: float


@dataclass
class Simulation:
    spec: JobSpec
    dataset: Dataset  # its test split scores each round's model
    fleet: Fleet
    dropout: float = 0.0
    validation: Dataset | None = None  # its test split is the carved validation split
    clock: Callable[[], float] = time.monotonic
    model: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.model = round_zero_model(self.spec, NO_WEIGHT_LIMIT, lambda _: self.dataset)
        self._algorithm = JOB_ALGORITHMS[self.spec.algorithm]
        self._records = {
            agent_id: AgentRecord(
                agent_id, 0.0, False, None, True, "simulated", {"samples": a.declared_samples}, 0
            )
            for agent_id, a in self.fleet.agents.items()
        }

    def run(self, on_round: Callable[[RoundResult], None] = lambda _: None) -> list[RoundResult]:
        results = []
        for round_index in range(self.spec.rounds):
            result = self.round(round_index)
            on_round(result)
            results.append(result)
        return results

    def round(self, round_index: int) -> RoundResult:
        opened = self.clock()
        record = JobRecord(JOB_ID, self.spec.model_dump(), RUNNING, round_index, 0.0, 0.0, None)
        job = Job(record, self.spec)
        chosen = select(job, 0, sorted(self._records), set(), self._records)
        round_record = RoundRecord(
            JOB_ID, round_index, 0, opened, float("inf"), chosen.selected, chosen.vote_caps
        )
        frame = decode_frame(self.model)
        published = self.published_model()
        state = OpenRound(
            round_record,
            self.spec,
            self._algorithm,
            frame,
            len(published),
            self._algorithm.accumulator(frame),
        )
        drops = np.random.default_rng([self.spec.seed, round_index, 1]).random(len(chosen.selected))
        uploading = [a for a, d in zip(chosen.selected, drops, strict=True) if d >= self.dropout]
        task = task_of(job, round_record)
        refused = 0
        for agent_id, data in sorted(self.fleet.updates(task, published, uploading).items()):
            if not self._accept(state, agent_id, data, round_index):
                refused += 1
        if state.accepted:
            self.model, metrics = vote(round_index, state, self.dataset, self.clock())
            accuracy, loss = metrics.test_accuracy, metrics.loss
        else:  # nothing reached the coordinator: the model stands
            accuracy, loss = self._algorithm.evaluate(frame, self.dataset)
        val_accuracy = None
        if self.validation is not None:
            val_accuracy, _ = self._algorithm.evaluate(decode_frame(self.model), self.validation)
        return RoundResult(
            round=round_index,
            test_accuracy=accuracy,
            loss=loss,
            val_accuracy=val_accuracy,
            selected=len(chosen.selected),
            uploads=len(state.accepted),
            refused=refused,
            bytes_up=state.bytes_up,
            bytes_down=state.model_bytes * len(chosen.selected),
            seconds=round(self.clock() - opened, 3),
        )

    def published_model(self) -> bytes:
        """The current global model as agents and users are given it."""
        return self._algorithm.published(self.model)

    def _accept(self, state: OpenRound, agent_id: str, data: bytes, round_index: int) -> bool:
        """The upload desk's checks and tally, without its store."""
        secret = self.fleet.agents[agent_id].secret
        try:
            update = decode_frame(data, secret_for=lambda meta: secret)
            if (update.meta.get("job_id"), update.meta.get("round")) != (JOB_ID, round_index):
                raise BitfleetError("the update names another job or round")
            if update.meta.get("agent_id") != agent_id:
                raise BitfleetError("the update names another agent")
            screened = state.check(update)
        except BitfleetError as error:
            log.info("round %d: update of %s refused: %s", round_index, agent_id, error)
            return False
        if screened is not None:
            log.info("round %d: update of %s refused: %s", round_index, agent_id, screened)
            return False
        state.add(agent_id, update, len(data))
        return True
