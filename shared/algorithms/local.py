"""How an agent turns a task into an update: the one path the edge agent and
``bitfleet simulate`` both take.

:class:`LocalJobs` holds an agent's training state per job (bit-flip keeps its counters
across rounds). :meth:`LocalJobs.plan` reads the task against the round's global model — the
algorithm, its config under the agent's own seed, the memory the round needs — so the agent
can decline before it trains; :meth:`LocalJobs.train` runs the local round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms import ALGORITHMS, Algorithm, LocalTraining, Update
from bitfleet.errors import BitfleetError
from bitfleet.federated import agent_seed
from bitfleet.frames import Frame
from bitfleet.protocol import Task


@dataclass(frozen=True)
class RoundPlan:
    """What a task asks of this agent, read before any training."""

    algorithm: Algorithm[Any]
    config: Any
    memory_needed: int


@dataclass
class LocalJobs:
    agent_id: str
    _jobs: dict[str, LocalTraining[Any]] = field(default_factory=dict)

    def plan(self, task: Task, global_frame: Frame) -> RoundPlan:
        """The task's algorithm and config (BitfleetError if this agent has no such
        algorithm, ConfigError if its hyperparameters are refused)."""
        algorithm = ALGORITHMS.get(task.algorithm)
        if algorithm is None:
            raise BitfleetError(f"algorithm {task.algorithm!r} is not supported by this agent")
        seed = agent_seed(task.seed, task.round, self.agent_id)
        weights = algorithm.model_weights(global_frame)
        config = algorithm.config(task.hyperparameters, weights, task.local_epochs, seed)
        return RoundPlan(algorithm, config, algorithm.memory_needed(global_frame, config))

    def train(
        self,
        task: Task,
        global_frame: Frame,
        plan: RoundPlan,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Update:
        """The local round on ``x, y``; the update's tensors and meta."""
        local = self._jobs.get(task.job_id)
        if local is None:
            local = self._jobs[task.job_id] = plan.algorithm.local(
                task.job_id, global_frame, plan.config
            )
        return local.train_round(
            global_frame, task.round, plan.config, x, y, should_stop=should_stop
        )
