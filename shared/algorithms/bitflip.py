"""Federated bit-flip training, the agent's side: local rounds on 1-/2-bit weights.

The agent adopts the round's global model, trains locally and answers in a signed update
frame with its data's rounded feature mean and sample count and, as the model's
``aggregation`` asks:

- ``majority``: its 1-/2-bit weights, which the coordinator votes (``bitfleet.tally``); the
  agent keeps its K-bit counters across the rounds of a job where they agree with the vote.
- ``counters``: its counters' move over the round, 2 bits a weight (``bitfleet.counterlink``),
  having started the round from the fleet's counters as the model's strength planes give them.

After round 0 only, the coordinator fixes the global input offset to the sample-weighted
mean of the agents' feature means: agents never share data, yet every agent centres inputs
the same way from round 1 on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.base import Algorithm, LocalTraining, Update
from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer, CounterLayer, rounded_mean
from bitfleet.bitmlp import BitMLP, PackedLayer
from bitfleet.bitpack import pack_ternary
from bitfleet.counterlink import AGGREGATIONS, CHANGE, LEVELS, LINK, SCALES, ternary_move
from bitfleet.errors import ConfigError
from bitfleet.federated import interrupt_when
from bitfleet.frames import Frame, FrameError, Tensor
from bitfleet.modelfile import (
    STRENGTH,
    bitmlp_from_frame,
    bitmlp_to_frame,
    bitmlp_weight_tensors,
    tensor_values,
)

OFFSET_FINAL = "input_offset_final"
INPUT_MEAN = "input_mean"
AGGREGATION = "aggregation"  # a job hyperparameter, and the meta of the job's models
# Until agents report their data, inputs are centred on mid-scale.
PROVISIONAL_OFFSET = 128
# What a federated job trains with where its hyperparameters are silent, measured on 5 agents
# of Dirichlet(0.5) Fashion-MNIST, 20 rounds of one local epoch (docs/algorithms.md, federated
# bit-flip): a longer counter memory (8 bits) keeps the global model moving through the
# rounds' averaging, and the counter link (2 bits a weight each way) averages the agents'
# counters instead of voting their weights. ``bitfleet train`` (one machine) keeps
# BitFlipConfig's own defaults.
JOB_DEFAULTS: dict[str, Any] = {"state_bits": 8, AGGREGATION: "counters"}
# Bytes a training step holds per weight (int16 counter, int8 weight, int64 votes, float32
# operand copies) and per unit activation (int64 pre-activation, int8 sign, float copies).
_BYTES_PER_WEIGHT = 19
_BYTES_PER_ACTIVATION = 21


def aggregation_of(hyperparameters: dict[str, Any]) -> str:
    """The job's ``aggregation`` (default: the job default), checked."""
    aggregation = {**JOB_DEFAULTS, **hyperparameters}[AGGREGATION]
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"bad bit-flip hyperparameters: aggregation must be one of {AGGREGATIONS}"
        )
    return aggregation


def bitflip_config(
    hyperparameters: dict[str, Any], encoding: str, epochs: int, seed: int
) -> BitFlipConfig:
    """A trainer config from a job's hyperparameters, every name, type and range checked:
    the coordinator refuses a job with this check, and agents build their config with it.
    ``aggregation`` is the round's, not the trainer's: checked, then left out."""
    aggregation_of(hyperparameters)
    hyperparameters = {k: v for k, v in hyperparameters.items() if k != AGGREGATION}
    known = set(BitFlipConfig.__dataclass_fields__) - {"encoding", "epochs", "seed"}
    unknown = set(hyperparameters) - known
    if unknown:
        raise ConfigError(
            f"unknown bit-flip hyperparameters {sorted(unknown)}; known: "
            f"{sorted(known | {AGGREGATION})}"
        )
    config = BitFlipConfig(**hyperparameters, encoding=encoding, epochs=epochs, seed=seed)
    try:
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"bad bit-flip hyperparameters: {error}") from None
    return config


def initial_global_model(layers: list[int], config: BitFlipConfig, aggregation: str) -> bytes:
    """Round 0's model: random weights under the job's seed, provisional input offset; a
    ``counters`` job's model says the counters' format (every counter starts weakest)."""
    model = BitFlipTrainer(layers, config).model()
    model.input_offset[:] = PROVISIONAL_OFFSET
    return bitmlp_to_frame(model, {**job_model_meta(config, aggregation), OFFSET_FINAL: False})


def job_model_meta(config: BitFlipConfig, aggregation: str) -> dict[str, Any]:
    """What every model of a job says about how agents answer it."""
    meta: dict[str, Any] = {AGGREGATION: aggregation}
    if aggregation == "counters":
        meta[LINK] = {
            "state_bits": config.state_bits,
            "zero_fraction": config.ternary_zero_fraction,
        }
    return meta


def voted_global_model(
    previous: Frame,
    values: list[NDArray[np.int8]],
    offset: NDArray[np.uint8] | None,
    round_index: int,
    state: tuple[list[Tensor], dict[str, Any]] = ([], {}),
) -> bytes:
    """The next round's model from voted weight values; ``offset`` fixes the input offset;
    ``state`` is training state (tensors and meta) the model carries beside its weights."""
    network = bitmlp_from_frame(previous)
    layers = [PackedLayer.from_values(v, network.encoding) for v in values]
    model = BitMLP(layers, network.input_offset if offset is None else offset)
    kept = {k: previous.meta[k] for k in (AGGREGATION, LINK) if k in previous.meta}
    meta = {**kept, **state[1], OFFSET_FINAL: True, "round": round_index}
    return bitmlp_to_frame(model, meta, state[0])


def training_bytes(layers: list[int], batch_size: int) -> int:
    """An upper estimate of what bit-flip training allocates beyond the loaded data."""
    weights = sum(a * b for a, b in pairwise(layers))
    return weights * _BYTES_PER_WEIGHT + batch_size * sum(layers) * _BYTES_PER_ACTIVATION


@dataclass
class LocalBitFlip(LocalTraining[BitFlipConfig]):
    """An agent's training state for one job, kept across rounds: the K-bit counters, and
    for a ``counters`` job what earlier rounds' moves left unsent."""

    job_id: str
    trainer: BitFlipTrainer
    residuals: list[NDArray[np.int32]] = field(default_factory=list)

    def train_round(
        self,
        global_frame: Frame,
        round_index: int,
        config: BitFlipConfig,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Update:
        model = bitmlp_from_frame(global_frame)
        self.trainer.config = config
        self.trainer.lr_fixed = config.lr_fixed
        self.trainer.rng = np.random.default_rng(config.seed)
        keep_offset = bool(global_frame.meta.get(OFFSET_FINAL, True))
        self.trainer.adopt(model, keep_offset=keep_offset)
        meta: dict[str, Any] = {"samples": len(y), "round": round_index, "job_id": self.job_id}
        mean = Tensor(INPUT_MEAN, "uint8", (len(model.input_offset),), rounded_mean(x))
        if global_frame.meta.get(AGGREGATION) != "counters":
            local = self.trainer.fit(x, y, on_batch=interrupt_when(should_stop))
            return [*bitmlp_weight_tensors(local), mean], meta
        layers = self.trainer.layers
        for layer, (strong, levels) in zip(layers, _link(global_frame, layers), strict=True):
            layer.restore(layer.weights, strong, levels)
        start = [layer.counters.copy() for layer in layers]
        self.trainer.fit(x, y, on_batch=interrupt_when(should_stop))
        if not self.residuals:
            self.residuals = [np.zeros(layer.counters.shape, np.int32) for layer in layers]
        moves, scales = [], []
        for index, (layer, before) in enumerate(zip(layers, start, strict=True)):
            move = layer.counters.astype(np.int64) - before
            bound = 1 << layer.state_bits
            signs, scale, self.residuals[index] = ternary_move(move, self.residuals[index], bound)
            planes = np.stack(pack_ternary(signs))
            moves.append(Tensor(f"{CHANGE}_{index}", "ternary", signs.shape, planes))
            scales.append(scale)
        return [*moves, mean], {**meta, SCALES: scales}


def _link(
    model: Frame, layers: list[CounterLayer]
) -> list[tuple[NDArray[np.bool_], tuple[int, int]]]:
    """Each layer's strength plane and (weak, strong) distances from a ``counters`` model
    (round 0's has none: every counter starts weakest), checked against the trainer's."""
    link = model.meta.get(LINK)
    state_bits = layers[0].state_bits
    expected = {"state_bits": state_bits, "zero_fraction": layers[0].zero_fraction}
    if link != expected:
        raise ConfigError(f"the model's counters are {link!r}, this job trains {expected}")
    levels = model.meta.get(LEVELS, [[0, 0]] * len(layers))
    if not (
        isinstance(levels, list)
        and len(levels) == len(layers)
        and all(_is_levels(pair, 1 << state_bits) for pair in levels)
    ):
        raise FrameError("meta", f"the model's {LEVELS} must be a [weak, strong] pair per layer")
    planes = []
    for index, layer in enumerate(layers):
        tensor = model.tensors.get(f"{STRENGTH}_{index}")
        if tensor is None:
            strong = np.zeros(layer.counters.shape, bool)
        elif tensor.encoding != "binary":
            raise FrameError("encoding", f"the model's {tensor.name} must be binary")
        else:
            strong = tensor_values(tensor) > 0
        planes.append((strong, (int(levels[index][0]), int(levels[index][1]))))
    return planes


def _is_levels(pair: object, bound: int) -> bool:
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and all(type(v) is int and 0 <= v <= bound for v in pair)
    )


class BitFlip(Algorithm[BitFlipConfig]):
    name = "bitflip"
    weights = ("binary", "ternary")

    def config(
        self, hyperparameters: dict[str, Any], weights: str, epochs: int, seed: int
    ) -> BitFlipConfig:
        return bitflip_config({**JOB_DEFAULTS, **hyperparameters}, weights, epochs, seed)

    def model_weights(self, model: Frame) -> str:
        return bitmlp_from_frame(model).encoding

    def memory_needed(self, model: Frame, config: BitFlipConfig) -> int:
        return training_bytes(bitmlp_from_frame(model).layer_sizes, config.batch_size)

    def local(self, job_id: str, model: Frame, config: BitFlipConfig) -> LocalBitFlip:
        layers = bitmlp_from_frame(model).layer_sizes
        return LocalBitFlip(job_id, BitFlipTrainer(layers, replace(config)))
