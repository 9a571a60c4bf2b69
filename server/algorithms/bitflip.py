"""Federated bit-flip training, the coordinator's side, in one of two aggregations:

- ``majority``: a vote of the agents' 1-/2-bit weights (weighted by their bounded sample
  counts; ties keep the previous value).
- ``counters``: the coordinator keeps every weight's counter (fixed point, stored with the
  model, never sent) and adds the round's weighted mean ternary move, at the median agent's
  scale; the next model is what those counters read, sent with its strength planes
  (``bitfleet.counterlink``).

Either way the input offset is fixed after round 0 to the agents' sample-weighted feature
mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.bitflip import (
    AGGREGATION,
    INPUT_MEAN,
    OFFSET_FINAL,
    BitFlip,
    aggregation_of,
    initial_global_model,
    job_model_meta,
    voted_global_model,
)
from bitfleet.bitflip import CounterLayer
from bitfleet.bitmlp import BitMLP
from bitfleet.bitpack import pack_binary
from bitfleet.counterlink import (
    CHANGE,
    FRACTION_BITS,
    LEVELS,
    LINK,
    SCALES,
    strength,
    weighted_median,
)
from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.frames import Frame, FrameError, Tensor, decode_frame, encode_frame
from bitfleet.modelfile import (
    COORDINATOR_COUNTERS,
    STRENGTH,
    bitmlp_from_frame,
    bitmlp_to_frame,
    tensor_values,
)
from bitfleet.protocol import OUTLIER
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

# How far above a coin's half a layer's agreement must be to count as honest.
CHANCE_SIGMAS = 4


@dataclass
class BitFlipAccumulator(Accumulator):
    """The tally of what agents send (weights, or ternary counter moves), their feature
    means, and for ``counters`` each update's per-layer scales and vote weight."""

    tally: ModelTally
    mean_sums: NDArray[np.int64]
    samples: int = 0
    scales: list[list[int]] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)

    def add(self, update: Frame, weight: int, samples: int) -> None:
        self.tally.add_frame_tensors({k: update.tensors[k] for k in self.tally.layers}, weight)
        self.mean_sums += np.asarray(update.tensors[INPUT_MEAN].data, np.int64) * samples
        self.samples += samples
        if SCALES in update.meta:
            self.scales.append(update.meta[SCALES])
            self.weights.append(weight)

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, BitFlipAccumulator)
        self.tally.merge(other.tally)
        self.mean_sums += other.mean_sums
        self.samples += other.samples
        self.scales += other.scales
        self.weights += other.weights

    def to_bytes(self) -> bytes:
        side = {
            "mean_sums": self.mean_sums.tolist(),
            "samples": self.samples,
            "scales": self.scales,
            "weights": self.weights,
        }
        return pack_accumulator(side, self.tally)

    def load(self, blob: bytes) -> None:
        side, tally = unpack_accumulator(blob)
        means, scales, weights = side.get("mean_sums"), side.get("scales"), side.get("weights")
        if not (
            isinstance(means, list)
            and len(means) == len(self.mean_sums)
            and all(type(m) is int and 0 <= m < 2**62 for m in means)
        ):
            raise TallyError("accumulator blob's feature sums do not fit the model")
        if not (
            isinstance(scales, list)
            and isinstance(weights, list)
            and len(scales) == len(weights)
            and all(type(w) is int and w >= 1 for w in weights)
            and all(isinstance(s, list) and all(type(v) is int for v in s) for s in scales)
        ):
            raise TallyError("accumulator blob's scales and weights do not pair up")
        self.tally.merge(tally)  # checks the tensors are the model's
        self.mean_sums += np.asarray(means, np.int64)
        self.samples = side_int(side, "samples")
        self.scales, self.weights = scales, weights

    def input_offset(self) -> NDArray[np.uint8] | None:
        """The agents' sample-weighted feature mean, rounded (None if nobody counted)."""
        if not self.samples:
            return None
        total = self.samples
        return ((2 * self.mean_sums + total) // (2 * total)).astype(np.uint8)


class BitFlipJobs(JobAlgorithm):
    agent = BitFlip()

    def initial_model(self, spec: JobSpec) -> bytes:
        config = self.agent.config(
            spec.hyperparameters, spec.model.weights, spec.local_epochs, spec.seed
        )
        return initial_global_model(spec.model.layers, config, aggregation_of(spec.hyperparameters))

    def start_from(self, model: Frame, raw: bytes, spec: JobSpec) -> bytes:
        """The user's weights and input offset, with this job's aggregation (any training
        state the file carries is dropped: round 0 starts every counter weakest)."""
        try:
            network = bitmlp_from_frame(model)
        except FrameError as error:
            raise ConfigError(f"initial_model is not a bit network: {error}") from None
        if network.layer_sizes != spec.model.layers or network.encoding != spec.model.weights:
            raise ConfigError(
                f"initial_model is {network.encoding} {network.layer_sizes}, the job asks for "
                f"{spec.model.weights} {spec.model.layers}"
            )
        config = self.agent.config(
            spec.hyperparameters, spec.model.weights, spec.local_epochs, spec.seed
        )
        meta = job_model_meta(config, aggregation_of(spec.hyperparameters))
        final = bool(model.meta.get(OFFSET_FINAL, True))
        return bitmlp_to_frame(network, {**meta, OFFSET_FINAL: final})

    def check_screening(self, spec: JobSpec) -> None:
        """Screening compares an update's weights with the round's model: ``majority`` jobs
        send weights, ``counters`` jobs send moves (held by the median scale instead)."""
        if spec.screen_updates and aggregation_of(spec.hyperparameters) != "majority":
            raise ConfigError(
                "screen_updates screens weights, and a job with aggregation 'counters' sends "
                'counter moves: add "aggregation": "majority" to the hyperparameters, '
                "or drop screen_updates (docs/algorithms.md: robust aggregation)"
            )

    def check_update(self, model: Frame, update: Frame) -> None:
        offset = model.tensors["input_offset"]
        expected = {**_sent(model), INPUT_MEAN: ("uint8", offset.shape)}
        check_update_tensors(update, expected)
        if model.meta.get(AGGREGATION) == "counters":
            _check_scales(update, len(_voted(model)), 1 << model.meta[LINK]["state_bits"])

    def screen(self, model: Frame, update: Frame) -> str | None:
        """For ``majority``: ``outlier`` when some layer of the update agrees with the
        round's model on no more of its weights than a coin would (half, plus four standard
        deviations): an inverted layer agrees on the complement of what an honest one does,
        a random one on half. An honest agent moves from the model it was given, and keeps
        most of it.
        (``counters`` updates are moves, not weights: their bound is the median scale.)"""
        if model.meta.get(AGGREGATION) == "counters":
            return None
        for name, expected in _voted(model).items():
            agreement = _agreement(model.tensors[name], update.tensors[name])
            count = expected[1][0] * expected[1][1]
            if agreement <= 0.5 + CHANCE_SIGMAS * 0.5 / np.sqrt(count):
                return OUTLIER
        return None

    def accumulator(self, model: Frame) -> Accumulator:
        features = model.tensors["input_offset"].shape[0]
        return BitFlipAccumulator(
            ModelTally.for_tensors(tally_specs(_sent(model))), np.zeros(features, np.int64)
        )

    def next_model(self, model: Frame, accumulator: Accumulator, round_index: int) -> bytes:
        assert isinstance(accumulator, BitFlipAccumulator)
        offset = None if model.meta.get(OFFSET_FINAL, True) else accumulator.input_offset()
        if model.meta.get(AGGREGATION) == "counters":
            moved, state = _counters_moved(model, accumulator)
            return voted_global_model(model, moved, offset, round_index + 1, state)
        previous = bitmlp_from_frame(model)
        values = accumulator.tally.result(
            {f"dense_{i}": layer.values() for i, layer in enumerate(previous.layers)}
        )
        ordered = [values[f"dense_{i}"] for i in range(len(previous.layers))]
        return voted_global_model(model, ordered, offset, round_index + 1)

    def published(self, model: bytes) -> bytes:
        """The model without the coordinator's own counters."""
        frame = decode_frame(model)
        kept = [t for n, t in frame.tensors.items() if not n.startswith(COORDINATOR_COUNTERS)]
        if len(kept) == len(frame.tensors):
            return model
        return encode_frame(frame.kind, frame.meta, kept)

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
    """The model's packed dense layers."""
    return {n: (t.encoding, t.shape) for n, t in model.tensors.items() if n.startswith("dense_")}


def _sent(model: Frame) -> Expected:
    """What agents send of each layer: its weights, or its counters' ternary moves."""
    if model.meta.get(AGGREGATION) != "counters":
        return _voted(model)
    return {
        f"{CHANGE}_{name.removeprefix('dense_')}": ("ternary", shape)
        for name, (_, shape) in _voted(model).items()
    }


def _check_scales(update: Frame, layers: int, bound: int) -> None:
    scales = update.meta.get(SCALES)
    if not (
        isinstance(scales, list)
        and len(scales) == layers
        and all(type(s) is int and 1 <= s <= bound for s in scales)
    ):
        raise FrameError("meta", f"{SCALES} must be {layers} whole numbers in 1..{bound}")


def _counters_moved(
    model: Frame, accumulator: BitFlipAccumulator
) -> tuple[list[NDArray[np.int8]], tuple[list[Tensor], dict[str, Any]]]:
    """The coordinator's counters after the round's moves: the weights they read, and the
    state the next model carries (strength planes and levels; the counters themselves)."""
    network: BitMLP = bitmlp_from_frame(model)
    link = model.meta[LINK]
    total = accumulator.tally.total_weight
    values, tensors, levels = [], [], []
    for index, packed in enumerate(network.layers):
        shape = (packed.outputs, packed.inputs)
        layer = CounterLayer(
            np.zeros(shape, np.int16), link["state_bits"], packed.encoding, link["zero_fraction"]
        )
        stored = model.tensors.get(f"{COORDINATOR_COUNTERS}_{index}")
        if stored is None:  # round 0: every counter starts weakest
            fixed = layer.weakest(packed.values()).astype(np.int64) << FRACTION_BITS
        else:
            fixed = np.asarray(stored.data, np.int64)
        counts = accumulator.tally.layers[f"{CHANGE}_{index}"].counts()
        scale = weighted_median([s[index] for s in accumulator.scales], accumulator.weights)
        moved = (counts[2] - counts[0]) * (scale << FRACTION_BITS)
        fixed += (2 * moved + total) // (2 * total)
        fixed = np.clip(fixed, layer.low << FRACTION_BITS, ((layer.high + 1) << FRACTION_BITS) - 1)
        rounded = (fixed + (1 << (FRACTION_BITS - 1))) >> FRACTION_BITS
        layer.counters = np.clip(rounded, layer.low, layer.high).astype(np.int16)
        layer.step(np.zeros(shape, np.int64), 1, 0)
        strong, pair = strength(layer)
        values.append(layer.weights.copy())
        plane = pack_binary(np.where(strong, 1, -1).astype(np.int8))[None]
        tensors.append(Tensor(f"{STRENGTH}_{index}", "binary", shape, plane))
        tensors.append(Tensor(f"{COORDINATOR_COUNTERS}_{index}", "int32", shape, fixed))
        levels.append(list(pair))
    return values, (tensors, {LEVELS: levels})
