"""Closing a round: the vote, the evaluation on the test split, one store transaction.

:func:`vote` is the part without a store (``bitfleet simulate`` closes its rounds with it);
:func:`close_round` is the coordinator's, which stores its outcome at once.
"""

from __future__ import annotations

from bitfleet.datasets import Dataset
from bitfleet.frames import decode_frame
from bitfleet.jobstatus import COMPLETED, RUNNING, transition
from bitfleet.server.jobs import Job
from bitfleet.server.rounds import OpenRound
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import RoundMetrics


def vote(
    round_index: int, state: OpenRound, dataset: Dataset, now: float
) -> tuple[bytes, RoundMetrics]:
    """The round's tally turned into the next global model, and that model's metrics on the
    data set's test split."""
    next_model = state.algorithm.next_model(state.model, state.accumulator, round_index)
    accuracy, loss = state.algorithm.evaluate(decode_frame(next_model), dataset)
    metrics = RoundMetrics(
        round=round_index,
        test_accuracy=accuracy,
        loss=loss,
        uploads=len(state.accepted),
        bytes_up=state.bytes_up,
        bytes_down=state.model_bytes * len(state.record.selected),
        seconds=round(now - state.record.opened_at, 3),
    )
    return next_model, metrics


def close_round(
    store: StateStore, job: Job, state: OpenRound, dataset: Dataset, now: float
) -> RoundMetrics:
    """Vote, score, and store model, metrics and the job's next round at once (a refused
    write leaves the round open). The closed round's own model is kept as agents were given
    it: state only the coordinator reads (bit-flip's int32 counters, 1.6 MB a round for
    784-512-10) is needed from the latest model alone, so storage grows by the slim model."""
    next_model, metrics = vote(job.round, state, dataset, now)
    final = job.round + 1 >= job.spec.rounds
    status = transition(job.status, COMPLETED if final else RUNNING)
    opened_with = store.get_model(job.job_id, job.round)
    slim = state.algorithm.published(opened_with) if opened_with is not None else None
    keep = slim if slim is not None and slim != opened_with else None
    store.close_round(job.job_id, job.round, next_model, metrics, status, keep)
    return metrics
