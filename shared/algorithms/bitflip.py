"""Federated bit-flip training, the agent's side: local rounds on 1-/2-bit weights.

The agent adopts the round's global model, trains locally and sends its 1-/2-bit weights
(plus its data's rounded feature mean and sample count) in a signed update frame. The
coordinator votes the weights (``bitfleet.tally``) and, after round 0 only, fixes the global
input offset to the sample-weighted mean of the agents' feature means: agents never share
data, yet every agent centres inputs the same way from round 1 on. The agent keeps its
trainer (the K-bit counters) across the rounds of a job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.base import Algorithm, LocalTraining, Update
from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer, rounded_mean
from bitfleet.bitmlp import BitMLP, PackedLayer
from bitfleet.errors import ConfigError
from bitfleet.federated import interrupt_when
from bitfleet.frames import Frame, Tensor
from bitfleet.modelfile import bitmlp_from_frame, bitmlp_to_frame, bitmlp_weight_tensors

OFFSET_FINAL = "input_offset_final"
INPUT_MEAN = "input_mean"
# Until agents report their data, inputs are centred on mid-scale.
PROVISIONAL_OFFSET = 128
# What a federated job trains with where its hyperparameters are silent, measured on 5 agents
# of Dirichlet(0.5) Fashion-MNIST, 20 rounds of one local epoch (docs/algorithms.md, federated
# bit-flip): a longer counter memory (8 bits) keeps the global model moving through the
# rounds' averaging. ``bitfleet train`` (one machine) keeps BitFlipConfig's own defaults.
JOB_DEFAULTS: dict[str, Any] = {"state_bits": 8}
# Bytes a training step holds per weight (int16 counter, int8 weight, int64 votes, float32
# operand copies) and per unit activation (int64 pre-activation, int8 sign, float copies).
_BYTES_PER_WEIGHT = 19
_BYTES_PER_ACTIVATION = 21


def bitflip_config(
    hyperparameters: dict[str, Any], encoding: str, epochs: int, seed: int
) -> BitFlipConfig:
    """A trainer config from a job's hyperparameters, every name, type and range checked:
    the coordinator refuses a job with this check, and agents build their config with it."""
    known = set(BitFlipConfig.__dataclass_fields__) - {"encoding", "epochs", "seed"}
    unknown = set(hyperparameters) - known
    if unknown:
        raise ConfigError(
            f"unknown bit-flip hyperparameters {sorted(unknown)}; known: {sorted(known)}"
        )
    config = BitFlipConfig(**hyperparameters, encoding=encoding, epochs=epochs, seed=seed)
    try:
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"bad bit-flip hyperparameters: {error}") from None
    return config


def initial_global_model(layers: list[int], config: BitFlipConfig) -> bytes:
    """Round 0's model: random weights under the job's seed, provisional input offset."""
    model = BitFlipTrainer(layers, config).model()
    model.input_offset[:] = PROVISIONAL_OFFSET
    return bitmlp_to_frame(model, {OFFSET_FINAL: False})


def voted_global_model(
    previous: BitMLP,
    values: list[NDArray[np.int8]],
    offset: NDArray[np.uint8] | None,
    round_index: int,
) -> bytes:
    """The next round's model from voted weight values; ``offset`` fixes the input offset."""
    layers = [PackedLayer.from_values(v, previous.encoding) for v in values]
    model = BitMLP(layers, previous.input_offset if offset is None else offset)
    return bitmlp_to_frame(model, {OFFSET_FINAL: True, "round": round_index})


def training_bytes(layers: list[int], batch_size: int) -> int:
    """An upper estimate of what bit-flip training allocates beyond the loaded data."""
    weights = sum(a * b for a, b in pairwise(layers))
    return weights * _BYTES_PER_WEIGHT + batch_size * sum(layers) * _BYTES_PER_ACTIVATION


@dataclass
class LocalBitFlip(LocalTraining[BitFlipConfig]):
    """An agent's training state for one job, kept across rounds (the K-bit counters)."""

    job_id: str
    trainer: BitFlipTrainer

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
        local = self.trainer.fit(x, y, on_batch=interrupt_when(should_stop))
        tensors = bitmlp_weight_tensors(local)
        tensors.append(Tensor(INPUT_MEAN, "uint8", (len(local.input_offset),), rounded_mean(x)))
        return tensors, {"samples": len(y), "round": round_index, "job_id": self.job_id}


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
