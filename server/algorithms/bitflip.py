"""Federated bit-flip training, the coordinator's side: a majority vote of 1-/2-bit weights;
the input offset is fixed after round 0 to the agents' sample-weighted feature mean."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.bitflip import (
    INPUT_MEAN,
    OFFSET_FINAL,
    BitFlip,
    initial_global_model,
    voted_global_model,
)
from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.frames import Frame, FrameError, Tensor
from bitfleet.modelfile import bitmlp_from_frame, tensor_values
from bitfleet.protocol import OUTLIER
from bitfleet.server.algorithms.base import (
    Accumulator,
    Expected,
    JobAlgorithm,
    check_update_tensors,
    tally_specs,
)
from bitfleet.server.jobspec import JobSpec
from bitfleet.tally import ModelTally

# How far above a coin's half a layer's agreement must be to count as honest.
CHANCE_SIGMAS = 4


@dataclass
class BitFlipAccumulator(Accumulator):
    tally: ModelTally
    mean_sums: NDArray[np.int64]
    samples: int = 0

    def add(self, update: Frame, weight: int, samples: int) -> None:
        weights = {k: t for k, t in update.tensors.items() if k != INPUT_MEAN}
        self.tally.add_frame_tensors(weights, weight)
        self.mean_sums += np.asarray(update.tensors[INPUT_MEAN].data, np.int64) * samples
        self.samples += samples


class BitFlipJobs(JobAlgorithm):
    agent = BitFlip()

    def initial_model(self, spec: JobSpec) -> bytes:
        config = self.agent.config(
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
        offset = model.tensors["input_offset"]
        check_update_tensors(update, {**_voted(model), INPUT_MEAN: ("uint8", offset.shape)})

    def screen(self, model: Frame, update: Frame) -> str | None:
        """``outlier`` when some layer of the update agrees with the round's model on no more
        of its weights than a coin would (half, plus four standard deviations): an inverted
        layer agrees on the complement of what an honest one does, a random one on half.
        An honest agent moves from the model it was given, and keeps most of it."""
        for name, expected in _voted(model).items():
            agreement = _agreement(model.tensors[name], update.tensors[name])
            count = expected[1][0] * expected[1][1]
            if agreement <= 0.5 + CHANCE_SIGMAS * 0.5 / np.sqrt(count):
                return OUTLIER
        return None

    def accumulator(self, model: Frame) -> Accumulator:
        features = model.tensors["input_offset"].shape[0]
        return BitFlipAccumulator(
            ModelTally.for_tensors(tally_specs(_voted(model))), np.zeros(features, np.int64)
        )

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
            network.mean_rival_gap(dataset.x_test, dataset.y_test),
        )

    def round_hyperparameters(self, spec: JobSpec, round_index: int) -> dict[str, Any]:
        """The job's options, with the learning rate annealed per round of local epochs."""
        config = self.agent.config(
            spec.hyperparameters, spec.model.weights, spec.local_epochs, spec.seed
        )
        decay = config.lr_decay ** (round_index * spec.local_epochs)
        return {**spec.hyperparameters, "lr": config.lr * decay}


def _agreement(model: Tensor, update: Tensor) -> float:
    """The share of weights whose value the update keeps."""
    return float(np.mean(tensor_values(model) == tensor_values(update)))


def _voted(model: Frame) -> Expected:
    """The tensors agents vote on: the model's packed dense layers."""
    return {n: (t.encoding, t.shape) for n, t in model.tensors.items() if n.startswith("dense_")}
