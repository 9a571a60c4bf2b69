"""The coordinator's side of each training algorithm, by the name jobs give it.

A new algorithm is a module here (its :class:`~bitfleet.server.algorithms.base.JobAlgorithm`),
its agents' side in :mod:`bitfleet.algorithms`, and one line in each registry.
"""

from __future__ import annotations

from bitfleet.server.algorithms.base import Accumulator, JobAlgorithm
from bitfleet.server.algorithms.bitflip import BitFlipJobs
from bitfleet.server.algorithms.forward import ForwardJobs

JOB_ALGORITHMS: dict[str, JobAlgorithm] = {
    algorithm.agent.name: algorithm for algorithm in (BitFlipJobs(), ForwardJobs())
}

__all__ = ["JOB_ALGORITHMS", "Accumulator", "JobAlgorithm"]
