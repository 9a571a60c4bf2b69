"""Closing a round: the vote, the evaluation on the test split, one store transaction."""

from __future__ import annotations

from bitfleet.datasets import Dataset
from bitfleet.frames import decode_frame
from bitfleet.jobstatus import COMPLETED, RUNNING, transition
from bitfleet.server.jobs import Job
from bitfleet.server.rounds import OpenRound
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import RoundMetrics


def close_round(
    store: StateStore, job: Job, state: OpenRound, dataset: Dataset, now: float
) -> RoundMetrics:
    """Turn the round's tally into the next global model, score it, and store model,
    metrics and the job's next round at once (a refused write leaves the round open)."""
    next_model = job.algorithm.next_model(state.model, state.accumulator, job.round)
    accuracy, loss = job.algorithm.evaluate(decode_frame(next_model), dataset)
    metrics = RoundMetrics(
        round=job.round,
        test_accuracy=accuracy,
        loss=loss,
        uploads=len(state.accepted),
        bytes_up=state.bytes_up,
        bytes_down=state.model_bytes * len(state.record.selected),
        seconds=round(now - state.record.opened_at, 3),
    )
    final = job.round + 1 >= job.spec.rounds
    status = transition(job.status, COMPLETED if final else RUNNING)
    store.close_round(job.job_id, job.round, next_model, metrics, status)
    return metrics
