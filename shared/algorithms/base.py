"""What every training algorithm brings to the agent's side of a round.

An :class:`Algorithm` turns a job's hyperparameters into its config (the same check the
coordinator runs at submission, so a job every agent would refuse is refused there), says
how much memory a local round needs (so an agent can decline with the reason), and starts a
:class:`LocalTraining`: the agent's state for one job, which trains one round on local data
and returns the update's tensors and meta. The coordinator's side of the same algorithm
(accumulator, next model, evaluation) is in :mod:`bitfleet.server.algorithms`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from bitfleet.frames import Frame, Tensor

Config = TypeVar("Config")
Update = tuple[list[Tensor], dict[str, Any]]


class LocalTraining(ABC, Generic[Config]):
    """An agent's work for one job; it may keep state across rounds (bit-flip's counters)."""

    @abstractmethod
    def train_round(
        self,
        global_frame: Frame,
        round_index: int,
        config: Config,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Update:
        """Adopt the round's global model, train on local data; the update's tensors and
        meta (with ``samples``, ``round`` and ``job_id``). ``should_stop`` is checked between
        batches: when it turns true the round is given up with
        :class:`~bitfleet.federated.TrainingInterrupted`."""


class Algorithm(ABC, Generic[Config]):
    """One training algorithm, as agents (and the job checks) see it."""

    name: str  # its name on the wire and in job specs
    weights: tuple[str, ...]  # the model weight encodings it trains

    @abstractmethod
    def config(
        self, hyperparameters: dict[str, Any], weights: str, epochs: int, seed: int
    ) -> Config:
        """The config from a job's hyperparameters, every name, type and model-free range
        checked (ConfigError says which and how to fix it)."""

    @abstractmethod
    def model_weights(self, model: Frame) -> str:
        """The weight encoding a global model frame of this algorithm holds."""

    @abstractmethod
    def memory_needed(self, model: Frame, config: Config) -> int:
        """An upper estimate of the bytes a local round allocates beyond the loaded data."""

    @abstractmethod
    def local(self, job_id: str, model: Frame, config: Config) -> LocalTraining[Config]:
        """The agent's state for a job it trains for the first time."""
