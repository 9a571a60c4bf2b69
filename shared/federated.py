"""One federated round of bit-flip training, as both sides see it.

The agent adopts the round's global model, trains locally and sends its 1-/2-bit weights
(plus its data's rounded feature mean and sample count) in a signed update frame. The
coordinator votes the weights (``bitfleet.tally``) and, after round 0 only, fixes the global
input offset to the sample-weighted mean of the agents' feature means: agents never share
data, yet every agent centres inputs the same way from round 1 on.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitflip import BitFlipConfig, BitFlipTrainer, rounded_mean
from bitfleet.errors import ConfigError
from bitfleet.frames import KIND_UPDATE, Frame, Tensor, encode_frame
from bitfleet.modelfile import bitmlp_from_frame, bitmlp_to_frame, bitmlp_weight_tensors
from bitfleet.models import BitMLP, PackedLayer
from bitfleet.training import OnBatch

OFFSET_FINAL = "input_offset_final"
INPUT_MEAN = "input_mean"
# Until agents report their data, inputs are centred on mid-scale.
PROVISIONAL_OFFSET = 128


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


def agent_seed(job_seed: int, round_index: int, agent_id: str) -> int:
    """Distinct, reproducible randomness per (job, round, agent)."""
    return (job_seed * 1_000_003 + round_index * 7919 + zlib.crc32(agent_id.encode())) % 2**32


class TrainingInterrupted(Exception):
    """Raised between batches when the agent is asked to stop (SIGTERM)."""


def interrupt_when(should_stop: Callable[[], bool]) -> OnBatch:
    """An ``on_batch`` callback giving up a local round (:class:`TrainingInterrupted`) as
    soon as ``should_stop()`` turns true: the agent stops between batches, never inside one."""

    def check_stop(done: int, total: int) -> None:
        if should_stop():
            raise TrainingInterrupted(f"stopped after {done} of {total} batches")

    return check_stop


# Bytes a training step holds per weight (int16 counter, int8 weight, int64 votes, float32
# operand copies) and per unit activation (int64 pre-activation, int8 sign, float copies).
_BYTES_PER_WEIGHT = 19
_BYTES_PER_ACTIVATION = 21


def training_bytes(layers: list[int], batch_size: int) -> int:
    """An upper estimate of what bit-flip training allocates beyond the loaded data."""
    weights = sum(a * b for a, b in pairwise(layers))
    return weights * _BYTES_PER_WEIGHT + batch_size * sum(layers) * _BYTES_PER_ACTIVATION


@dataclass
class LocalBitFlip:
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
    ) -> tuple[list[Tensor], dict[str, Any]]:
        """Adopt the global model, train ``config.epochs`` on local data; the update's parts.

        ``should_stop`` is checked between batches; when it turns true the round is given
        up with :class:`TrainingInterrupted`.
        """

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


def update_frame(
    tensors: list[Tensor], meta: dict[str, Any], agent_id: str, secret: bytes
) -> bytes:
    """A signed update frame from ``agent_id``."""
    return encode_frame(KIND_UPDATE, {**meta, "agent_id": agent_id}, tensors, secret)


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


def new_local_state(job_id: str, layers: list[int], config: BitFlipConfig) -> LocalBitFlip:
    return LocalBitFlip(job_id, BitFlipTrainer(layers, replace(config)))
