"""Closing a round: the whole tally, the vote, the evaluation on the test split, one store
transaction.

:func:`vote` is the part without a store (``bitfleet simulate`` closes its rounds with it);
:func:`close_round` is the coordinator's, which gathers every worker's part of the tally
(:func:`gather`) and stores its outcome at once.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from bitfleet.datasets import Dataset
from bitfleet.errors import BitfleetError
from bitfleet.frames import decode_frame
from bitfleet.jobstatus import COMPLETED, RUNNING, transition
from bitfleet.server.jobs import Job
from bitfleet.server.rounds import OpenRound
from bitfleet.server.state import StateStore
from bitfleet.server.state.base import RoundMetrics

log = logging.getLogger("bitfleet.rounds")


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
        uploads=len(state.tallied),
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
    next_model, metrics = vote(job.round, gather(store, state), dataset, now)
    final = job.round + 1 >= job.spec.rounds
    status = transition(job.status, COMPLETED if final else RUNNING)
    opened_with = store.get_model(job.job_id, job.round)
    slim = state.algorithm.published(opened_with) if opened_with is not None else None
    keep = slim if slim is not None and slim != opened_with else None
    store.close_round(job.job_id, job.round, next_model, metrics, status, keep)
    return metrics


def gather(store: StateStore, state: OpenRound) -> OpenRound:
    """The round with its whole tally: this worker's own, each other worker's checkpoint
    that counts no agent twice, and the stored uploads no tally holds (those of a worker
    that died, or of this one before it restarted). Every stored upload counts once; the
    round in memory is left as it was, so a close the store refuses can be tried again."""
    job_id, round_index = state.record.job_id, state.record.round
    stored = store.upload_agents(job_id, round_index)
    total = state.algorithm.accumulator(state.model)
    total.merge(state.accumulator)
    counted, bytes_up = set(state.tallied), state.bytes_up
    for checkpoint in store.list_tallies(job_id, round_index):
        agents = set(checkpoint.agents)
        if (
            checkpoint.attempt != state.record.attempt  # under other vote caps
            or agents & counted  # stale (its worker counted more since), or this worker's own
            or not agents.issubset(stored)
        ):
            continue
        partial = state.algorithm.accumulator(state.model)
        try:
            partial.load(checkpoint.tally)
        except BitfleetError as error:
            log.error(
                "job %s round %d: tally of worker %s skipped: %s",
                job_id,
                round_index,
                checkpoint.worker_id,
                error,
            )
            continue
        total.merge(partial)
        counted |= agents
        bytes_up += checkpoint.bytes_up
    rest = [agent_id for agent_id in stored if agent_id not in counted]
    for upload in store.iter_uploads(job_id, round_index, rest):
        try:
            state.count(total, upload.agent_id, decode_frame(upload.payload))
        except BitfleetError as error:  # stored by an older, laxer coordinator
            log.error(
                "job %s round %d: stored upload of %s skipped: %s",
                job_id,
                round_index,
                upload.agent_id,
                error,
            )
            continue
        counted.add(upload.agent_id)
        bytes_up += len(upload.payload)
    return replace(state, accumulator=total, tallied=counted, bytes_up=bytes_up)
