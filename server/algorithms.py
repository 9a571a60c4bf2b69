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

from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.federated import (
    INPUT_MEAN,
    OFFSET_FINAL,
    bitflip_config,
    initial_global_model,
    voted_global_model,
)
from bitfleet.federated_forward import apply_votes, qzo_config
from bitfleet.frames import Frame, FrameError
from bitfleet.modelfile import bitmlp_from_frame, fixedmlp_from_frame, fixedmlp_to_frame
from bitfleet.protocol import MAX_SAMPLES
from bitfleet.qzo import hinge_sum
from bitfleet.server.jobspec import JobSpec
from bitfleet.tally import ModelTally


class Accumulator(ABC):
    """The running aggregate of one round's accepted updates."""

    @abstractmethod
    def add(self, update: Frame, weight: int, samples: int) -> None:
        """Add a checked update: its vote counts ``weight`` times; ``samples`` is its
        bounded sample count (for sample-weighted means)."""


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

    def add(self, update: Frame, weight: int, samples: int) -> None:
        weights = {k: t for k, t in update.tensors.items() if k != INPUT_MEAN}
        self.tally.add_frame_tensors(weights, weight)
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

    def _voted(self, model: Frame) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The tensors agents vote on: the model's packed dense layers."""
        return {
            n: (t.encoding, t.shape) for n, t in model.tensors.items() if n.startswith("dense_")
        }

    def check_update(self, model: Frame, update: Frame) -> None:
        offset = model.tensors["input_offset"]
        _check_update(update, {**self._voted(model), INPUT_MEAN: ("uint8", offset.shape)})

    def accumulator(self, model: Frame) -> Accumulator:
        features = model.tensors["input_offset"].shape[0]
        return BitFlipAccumulator(
            ModelTally.for_tensors(_tally_specs(self._voted(model))), np.zeros(features, np.int64)
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
        config = bitflip_config(
            spec.hyperparameters, spec.model.weights, spec.local_epochs, spec.seed
        )
        decay = config.lr_decay ** (round_index * spec.local_epochs)
        return {**spec.hyperparameters, "lr": config.lr * decay}


@dataclass
class ForwardAccumulator(Accumulator):
    tally: ModelTally
    step_sums: dict[str, int]
    samples: int = 0

    def add(self, update: Frame, weight: int, samples: int) -> None:
        self.tally.add_frame_tensors(update.tensors, weight)
        for name, step in update.meta["steps"].items():
            self.step_sums[name] += int(step) * samples
        self.samples += samples

    def steps(self) -> dict[str, int]:
        """Per tensor, the sample-weighted mean of the agents' typical change."""
        total = max(1, self.samples)
        return {name: (2 * value + total) // (2 * total) for name, value in self.step_sums.items()}


class Forward(JobAlgorithm):
    """Sign-of-change votes on a pretrained fixed-point model (QZO-FF on the agents)."""

    def initial_model(self, spec: JobSpec) -> bytes:
        raise ConfigError(
            "forward jobs adapt a pretrained fixed-point model: pass initial_model (base64 of "
            "a .bfm from 'bitfleet pretrain'; 'bitfleet jobs submit --initial-model FILE')"
        )

    def check_initial(self, model: Frame, spec: JobSpec) -> None:
        try:
            network = fixedmlp_from_frame(model)
        except FrameError as error:
            raise ConfigError(f"initial_model is not a fixed-point network: {error}") from None
        if (
            network.layer_sizes != spec.model.layers
            or f"int{network.weight_bits}" != spec.model.weights
        ):
            raise ConfigError(
                f"initial_model is int{network.weight_bits} {network.layer_sizes}, the job asks "
                f"for {spec.model.weights} {spec.model.layers}"
            )
        qzo_config(spec.hyperparameters, spec.local_epochs, spec.seed).validate(network)

    def _voted(self, model: Frame) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Sign-of-change planes, one per weight and bias tensor (biases as one row), read
        off the frame's shapes without decoding the model (this runs for every upload)."""
        return {
            name: ("ternary", t.shape if name.startswith("weight_") else (1, t.shape[0]))
            for name, t in model.tensors.items()
            if name.startswith(("weight_", "bias_"))
        }

    def check_update(self, model: Frame, update: Frame) -> None:
        expected = self._voted(model)
        _check_update(update, expected)
        steps = update.meta.get("steps")
        if (
            not isinstance(steps, dict)
            or set(steps) != set(expected)
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
                for v in steps.values()
            )
        ):
            raise FrameError("shape", "update meta needs a non-negative integer step per tensor")

    def accumulator(self, model: Frame) -> Accumulator:
        shapes = _tally_specs(self._voted(model))
        return ForwardAccumulator(ModelTally.for_tensors(shapes), dict.fromkeys(shapes, 0))

    def next_model(self, model: Frame, accumulator: Accumulator, round_index: int) -> bytes:
        assert isinstance(accumulator, ForwardAccumulator)
        network = fixedmlp_from_frame(model)
        moved = apply_votes(network, accumulator.tally.step_votes(), accumulator.steps())
        return fixedmlp_to_frame(moved, {"round": round_index + 1})

    def evaluate(self, model: Frame, dataset: Dataset) -> tuple[float, float]:
        network = fixedmlp_from_frame(model)
        scores = network.scores(dataset.x_test)
        margin = max(1, round(2.0**network.score_exp))  # 1.0 in score units
        loss = hinge_sum(scores, dataset.y_test, margin) / max(1, len(scores)) / margin
        return network.accuracy(dataset.x_test, dataset.y_test), loss

    def round_hyperparameters(self, spec: JobSpec, round_index: int) -> dict[str, Any]:
        return dict(spec.hyperparameters)


def _check_update(update: Frame, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """The update holds exactly the expected tensors and a positive sample count."""
    got = {name: (t.encoding, t.shape) for name, t in update.tensors.items()}
    if got != expected:
        raise FrameError("shape", f"update tensors {got} do not match the model's {expected}")
    samples = update.meta.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_SAMPLES:
        raise FrameError(
            "samples", f"update meta needs an integer 'samples' between 1 and {MAX_SAMPLES}"
        )


def _tally_specs(voted: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, tuple[str, int, int]]:
    return {name: (encoding, shape[0], shape[1]) for name, (encoding, shape) in voted.items()}


ALGORITHMS: dict[str, JobAlgorithm] = {"bitflip": BitFlip(), "forward": Forward()}
