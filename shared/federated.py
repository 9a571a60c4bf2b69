"""What every algorithm's federated round shares on the agent's side: the signed update
frame, the per-agent seed, and giving up a round between batches.

The algorithms themselves (their local rounds, configs and memory needs) are in
:mod:`bitfleet.algorithms`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from bitfleet.frames import KIND_UPDATE, Tensor, encode_frame
from bitfleet.training import OnBatch


def update_frame(
    tensors: list[Tensor], meta: dict[str, Any], agent_id: str, secret: bytes
) -> bytes:
    """A signed update frame from ``agent_id``."""
    return encode_frame(KIND_UPDATE, {**meta, "agent_id": agent_id}, tensors, secret)


def agent_seed(job_seed: int, round_index: int, agent_id: str) -> int:
    """Distinct, reproducible randomness per (job, round, agent)."""
    return (job_seed * 1_000_003 + round_index * 7919 + zlib.crc32(agent_id.encode())) % 2**32


class TrainingInterrupted(Exception):
    """Raised between batches when the agent is asked to stop (SIGTERM)."""


def interrupt_when(should_stop: Callable[[], bool]) -> OnBatch:
    """An ``on_batch`` callback giving up a local round (:class:`TrainingInterrupted`) as
    soon as ``should_stop()`` turns true: the agent stops between batches, never inside one."""

    def check_stop(done: int, total: int) -> None:
        if should_stop():
            raise TrainingInterrupted(f"stopped after {done} of {total} batches")

    return check_stop
