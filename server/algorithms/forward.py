"""Federated forward-gradient training, the coordinator's side: sign-of-change votes move a
pretrained fixed-point model by the agents' typical step."""

from __future__ import annotations

from dataclasses import dataclass

from bitfleet.algorithms.forward import Forward, apply_votes, forward_config
from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.forwardgrad import hinge_sum
from bitfleet.frames import Frame, FrameError
from bitfleet.modelfile import fixedmlp_from_frame, fixedmlp_to_frame
from bitfleet.server.algorithms.base import (
    Accumulator,
    Expected,
    JobAlgorithm,
    check_update_tensors,
    pack_accumulator,
    side_int,
    tally_specs,
    unpack_accumulator,
)
from bitfleet.server.jobspec import JobSpec
from bitfleet.tally import ModelTally, TallyError

MAX_STEP = 2**31


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

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, ForwardAccumulator)
        self.tally.merge(other.tally)
        for name, value in other.step_sums.items():
            self.step_sums[name] += value
        self.samples += other.samples

    def to_bytes(self) -> bytes:
        return pack_accumulator({"step_sums": self.step_sums, "samples": self.samples}, self.tally)

    def load(self, blob: bytes) -> None:
        side, tally = unpack_accumulator(blob)
        sums = side.get("step_sums")
        if not (
            isinstance(sums, dict)
            and sums.keys() == self.step_sums.keys()
            and all(type(v) is int for v in sums.values())
        ):
            raise TallyError("accumulator blob's step sums do not fit the model")
        self.tally.merge(tally)  # checks the tensors are the model's
        self.step_sums = dict(sums)
        self.samples = side_int(side, "samples")

    def steps(self) -> dict[str, int]:
        """Per tensor, the sample-weighted mean of the agents' typical change."""
        total = max(1, self.samples)
        return {name: (2 * value + total) // (2 * total) for name, value in self.step_sums.items()}


class ForwardJobs(JobAlgorithm):
    agent = Forward()

    def initial_model(self, spec: JobSpec) -> bytes:
        raise ConfigError(
            "forward jobs adapt a pretrained fixed-point model: pass initial_model (base64 of "
            "a .bfm from 'bitfleet pretrain'; 'bitfleet jobs submit --initial-model FILE')"
        )

    def start_from(self, model: Frame, raw: bytes, spec: JobSpec) -> bytes:
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
        forward_config(spec.hyperparameters, spec.local_epochs, spec.seed).validate(network)
        return raw

    def check_update(self, model: Frame, update: Frame) -> None:
        expected = _voted(model)
        check_update_tensors(update, expected)
        steps = update.meta.get("steps")
        if (
            not isinstance(steps, dict)
            or set(steps) != set(expected)
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_STEP
                for v in steps.values()
            )
        ):
            raise FrameError("shape", "update meta needs a non-negative integer step per tensor")

    def accumulator(self, model: Frame) -> Accumulator:
        shapes = tally_specs(_voted(model))
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


def _voted(model: Frame) -> Expected:
    """Sign-of-change planes, one per weight and bias tensor (biases as one row), read off
    the frame's shapes without decoding the model (this runs for every upload)."""
    return {
        name: ("ternary", t.shape if name.startswith("weight_") else (1, t.shape[0]))
        for name, t in model.tensors.items()
        if name.startswith(("weight_", "bias_"))
    }
