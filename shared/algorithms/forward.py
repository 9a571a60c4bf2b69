"""Federated forward-gradient training, the agent's side, and the voted step both sides take.

The agent copies the round's global fixed-point model, runs sign-m-SPSA on its own data
(:mod:`bitfleet.forwardgrad`) and sends, for every tensor, the sign of each weight's change
(a ternary plane pair: +1 up, -1 down, 0 unchanged) and the typical size of those changes.
The coordinator votes the signs (``bitfleet.tally``), moves its weights by the sample-weighted
typical change in the voted direction (:func:`apply_votes`), saturating like the agents do.
Raw weights never leave the device, and an agent keeps nothing between rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms.base import Algorithm, LocalTraining, Update
from bitfleet.bitpack import pack_ternary
from bitfleet.errors import ConfigError
from bitfleet.federated import interrupt_when
from bitfleet.fixedpoint import FixedMLP, qmax
from bitfleet.forwardgrad import ForwardConfig, ForwardTrainer
from bitfleet.frames import Frame, Tensor
from bitfleet.modelfile import fixedmlp_from_frame
from bitfleet.options import is_whole

_INT32 = np.iinfo(np.int32)
_STEP_DTYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


def forward_config(hyperparameters: dict[str, Any], epochs: int, seed: int) -> ForwardConfig:
    """A forward-gradient config from a job's hyperparameters, every name, type and
    model-free range checked: the coordinator refuses a job with this check, and agents
    build their config with it (the model-specific checks follow in
    :meth:`ForwardConfig.validate`)."""
    known = {f.name for f in fields(ForwardConfig)} - {"epochs", "seed"}
    unknown = set(hyperparameters) - known
    if unknown:
        raise ConfigError(
            f"unknown forward hyperparameters {sorted(unknown)}; known: {sorted(known)}"
        )
    config = ForwardConfig(**hyperparameters, epochs=epochs, seed=seed)
    try:
        config.check_options()
    except ConfigError as error:
        raise ConfigError(f"bad forward hyperparameters: {error}") from None
    return config


def tensor_pairs(model: FixedMLP) -> list[tuple[str, NDArray[np.integer]]]:
    """Every trainable tensor by name, as 2-D arrays (biases as one row)."""
    pairs: list[tuple[str, NDArray[np.integer]]] = []
    for index, layer in enumerate(model.layers):
        pairs.append((f"weight_{index}", layer.weights))
        pairs.append((f"bias_{index}", layer.bias.reshape(1, -1)))
    return pairs


def sign_of_change(before: FixedMLP, after: FixedMLP) -> tuple[list[Tensor], dict[str, int]]:
    """Ternary planes of ``sign(after - before)`` and the mean size of the nonzero changes."""
    tensors, steps = [], {}
    for (name, old), (_, new) in zip(tensor_pairs(before), tensor_pairs(after), strict=True):
        delta = new.astype(np.int64) - old.astype(np.int64)
        positive, nonzero = pack_ternary(np.sign(delta))
        tensors.append(Tensor(name, "ternary", old.shape, np.stack([positive, nonzero])))
        moved = np.abs(delta[delta != 0])
        steps[name] = round(float(moved.mean())) if moved.size else 0
    return tensors, steps


def apply_voted_step(
    weights: NDArray[np.signedinteger[Any]],
    vote: NDArray[np.integer],
    step: int,
    low: int,
    high: int,
) -> NDArray[np.signedinteger[Any]]:
    """``clip(weights + step * vote, low, high)``, in the weights' own integer dtype.

    A forward round votes on the sign of each weight's change (+1 increase, -1 decrease,
    0 unchanged); the coordinator moves its fixed-point weights ``step`` units that way,
    saturating at ``[low, high]`` like the agents' own updates, so a weight never wraps
    around. Returns a new array; ValueError on arguments that break those rules.
    """
    if not isinstance(weights, np.ndarray) or weights.dtype not in _STEP_DTYPES:
        raise ValueError("weights must be an int8, int16 or int32 (fixed-point) array")
    if not isinstance(vote, np.ndarray) or not np.issubdtype(vote.dtype, np.integer):
        raise ValueError("the vote must be an integer array of -1/0/+1")
    if vote.shape != weights.shape:
        raise ValueError(f"the vote has shape {vote.shape}, the weights {weights.shape}")
    if not np.all(np.abs(vote) <= 1):
        raise ValueError("a step vote may only hold -1, 0 and +1")
    info = np.iinfo(weights.dtype)
    if not all(is_whole(bound) for bound in (low, high)) or not info.min <= low <= high <= info.max:
        raise ValueError(
            f"need integer bounds {info.min} <= low <= high <= {info.max} for {weights.dtype}, "
            f"got low={low!r} high={high!r}"
        )
    if not is_whole(step) or not 0 < step <= info.max - info.min:
        raise ValueError(f"step must be a positive integer up to {info.max - info.min}")
    moved = weights.astype(np.int64) + np.int64(step) * vote.astype(np.int64)
    return np.clip(moved, low, high).astype(weights.dtype)


def apply_votes(
    model: FixedMLP, votes: dict[str, NDArray[np.int8]], steps: dict[str, int]
) -> FixedMLP:
    """The model moved ``steps[name]`` units in each tensor's voted directions, saturating."""
    moved = model.copy()
    limit = qmax(model.weight_bits)
    for index, layer in enumerate(moved.layers):
        weight, bias = f"weight_{index}", f"bias_{index}"
        if steps.get(weight, 0) > 0:
            weights = cast(NDArray[np.signedinteger[Any]], layer.weights)
            layer.weights[...] = apply_voted_step(
                weights, votes[weight], steps[weight], -limit, limit
            )
        if steps.get(bias, 0) > 0:
            vote = votes[bias].reshape(layer.bias.shape)
            layer.bias[...] = apply_voted_step(
                layer.bias, vote, steps[bias], _INT32.min, _INT32.max
            )
    return moved


@dataclass
class LocalForward(LocalTraining[ForwardConfig]):
    """An agent's forward-gradient work for one job (stateless across rounds)."""

    job_id: str

    def train_round(
        self,
        global_frame: Frame,
        round_index: int,
        config: ForwardConfig,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Update:
        model = fixedmlp_from_frame(global_frame)
        local = model.copy()
        config.validate(local)
        ForwardTrainer(local, config).fit(x, y, on_batch=interrupt_when(should_stop))
        tensors, steps = sign_of_change(model, local)
        meta = {"samples": len(y), "round": round_index, "job_id": self.job_id, "steps": steps}
        return tensors, meta


class Forward(Algorithm[ForwardConfig]):
    name = "forward"
    weights = ("int16", "int8")

    def config(
        self, hyperparameters: dict[str, Any], weights: str, epochs: int, seed: int
    ) -> ForwardConfig:
        return forward_config(hyperparameters, epochs, seed)

    def model_weights(self, model: Frame) -> str:
        return f"int{fixedmlp_from_frame(model).weight_bits}"

    def memory_needed(self, model: Frame, config: ForwardConfig) -> int:
        """The global model and the agent's copy of it."""
        return 2 * sum(tensor.data.nbytes for tensor in model.tensors.values())

    def local(self, job_id: str, model: Frame, config: ForwardConfig) -> LocalForward:
        return LocalForward(job_id)
