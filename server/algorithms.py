"""What the round engine needs to know about each training algorithm.

A :class:`JobAlgorithm` builds round 0's model, checks that an update fits the model,
accumulates updates one at a time (additive tallies: nothing holds every payload), turns the
tally into the next global model, and evaluates a model on held-out data. The engine is the
same for every algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.jobspec import JobSpec
from shared.datasets import Dataset
from shared.errors import ConfigError
from shared.federated import (
    INPUT_MEAN,
    OFFSET_FINAL,
    bitflip_config,
    initial_global_model,
    voted_global_model,
)
from shared.frames import Frame, FrameError
from shared.modelfile import bitmlp_from_frame
from shared.tally import ModelTally


class Accumulator(ABC):
    """The running aggregate of one round's accepted updates."""

    @abstractmethod
    def add(self, update: Frame, weight: int) -> None: ...


class JobAlgorithm(ABC):
    @abstractmethod
    def initial_model(self, spec: JobSpec) -> bytes: ...

    @abstractmethod
    def check_initial(self, model: Frame, spec: JobSpec) -> None:
        """Raise ConfigError unless a user-supplied initial model fits the job."""

    @abstractmethod
    def check_update(self, model: Frame, update: Frame) -> None:
        """Raise FrameError('shape', ...) unless ``update`` fits ``model``."""

    @abstractmethod
    def accumulator(self, model: Frame) -> Accumulator: ...

    @abstractmethod
    def next_model(self, model: Frame, accumulator: Accumulator, round_index: int) -> bytes: ...

    @abstractmethod
    def evaluate(self, model: Frame, dataset: Dataset) -> tuple[float, float]:
        """(accuracy, loss) on the data set's test split."""

    @abstractmethod
    def round_hyperparameters(self, spec: JobSpec, round_index: int) -> dict[str, Any]: ...


@dataclass
class BitFlipAccumulator(Accumulator):
    tally: ModelTally
    mean_sums: NDArray[np.int64]
    samples: int = 0

    def add(self, update: Frame, weight: int) -> None:
        weights = {k: t for k, t in update.tensors.items() if k != INPUT_MEAN}
        self.tally.add_frame_tensors(weights, weight)
        samples = int(update.meta["samples"])
        self.mean_sums += np.asarray(update.tensors[INPUT_MEAN].data, np.int64) * samples
        self.samples += samples


class BitFlip(JobAlgorithm):
    """Majority vote of 1-/2-bit weights; the input offset is fixed after round 0."""

    def initial_model(self, spec: JobSpec) -> bytes:
        config = bitflip_config(
            spec.hyperparameters, spec.model.weights, spec.local_epochs, spec.seed
        )
        return initial_global_model(spec.model.layers, config)

    def check_initial(self, model: Frame, spec: JobSpec) -> None:
        try:
            network = bitmlp_from_frame(model)
        except FrameError as error:
            raise ConfigError(f"initial_model is not a bit network: {error}") from None
        if network.layer_sizes != spec.model.layers or network.encoding != spec.model.weights:
            raise ConfigError(
                f"initial_model is {network.encoding} {network.layer_sizes}, the job asks for "
                f"{spec.model.weights} {spec.model.layers}"
            )

    def check_update(self, model: Frame, update: Frame) -> None:
        expected = {
            name: (t.encoding, t.shape)
            for name, t in model.tensors.items()
            if name.startswith("dense_")
        }
        expected[INPUT_MEAN] = ("uint8", model.tensors["input_offset"].shape)
        got = {name: (t.encoding, t.shape) for name, t in update.tensors.items()}
        if got != expected:
            raise FrameError("shape", f"update tensors {got} do not match the model's {expected}")
        samples = update.meta.get("samples")
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise FrameError("shape", "update meta needs a positive integer 'samples'")

    def accumulator(self, model: Frame) -> Accumulator:
        shapes = {
            name: (t.encoding, t.shape[0], t.shape[1])
            for name, t in model.tensors.items()
            if name.startswith("dense_")
        }
        features = model.tensors["input_offset"].shape[0]
        return BitFlipAccumulator(ModelTally.for_tensors(shapes), np.zeros(features, np.int64))

    def next_model(self, model: Frame, accumulator: Accumulator, round_index: int) -> bytes:
        assert isinstance(accumulator, BitFlipAccumulator)
        previous = bitmlp_from_frame(model)
        values = accumulator.tally.result(
            {f"dense_{i}": layer.values() for i, layer in enumerate(previous.layers)}
        )
        offset = None
        if not model.meta.get(OFFSET_FINAL, True) and accumulator.samples:
            total = accumulator.samples
            offset = ((2 * accumulator.mean_sums + total) // (2 * total)).astype(np.uint8)
        ordered = [values[f"dense_{i}"] for i in range(len(previous.layers))]
        return voted_global_model(previous, ordered, offset, round_index + 1)

    def evaluate(self, model: Frame, dataset: Dataset) -> tuple[float, float]:
        network = bitmlp_from_frame(model)
        return (
            network.accuracy(dataset.x_test, dataset.y_test),
            network.hinge_loss(dataset.x_test, dataset.y_test),
        )

    def round_hyperparameters(self, spec: JobSpec, round_index: int) -> dict[str, Any]:
        """The job's options, with the learning rate annealed per round of local epochs."""
        config = bitflip_config(
            spec.hyperparameters, spec.model.weights, spec.local_epochs, spec.seed
        )
        decay = config.lr_decay ** (round_index * spec.local_epochs)
        return {**spec.hyperparameters, "lr": config.lr * decay}


ALGORITHMS: dict[str, JobAlgorithm] = {"bitflip": BitFlip()}
