"""One federated round of forward-gradient (QZO-FF) adaptation, as both sides see it.

The agent copies the round's global fixed-point model, runs sign-m-SPSA on its own data and
sends, for every tensor, the sign of each weight's change (a ternary plane pair: +1 up,
-1 down, 0 unchanged) and the typical size of those changes. The coordinator votes the
signs (``bitfleet.tally``), moves its weights by the sample-weighted typical change in the
voted direction, saturating like the agents do. Raw weights never leave the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitpack import pack_ternary
from bitfleet.errors import ConfigError
from bitfleet.federated import interrupt_when
from bitfleet.fixedpoint import FixedMLP, qmax
from bitfleet.frames import Frame, Tensor
from bitfleet.modelfile import fixedmlp_from_frame
from bitfleet.qzo import QZOConfig, QZOTrainer
from bitfleet.tally import apply_voted_step

_INT32 = np.iinfo(np.int32)


def qzo_config(hyperparameters: dict[str, Any], epochs: int, seed: int) -> QZOConfig:
    """A QZO-FF config from a job's hyperparameters, every name, type and model-free range
    checked: the coordinator refuses a job with this check, and agents build their config
    with it (the model-specific checks follow in :meth:`QZOConfig.validate`)."""
    known = {f.name for f in fields(QZOConfig)} - {"epochs", "seed"}
    unknown = set(hyperparameters) - known
    if unknown:
        raise ConfigError(
            f"unknown forward hyperparameters {sorted(unknown)}; known: {sorted(known)}"
        )
    config = QZOConfig(**hyperparameters, epochs=epochs, seed=seed)
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
class LocalForward:
    """An agent's forward-gradient work for one job (stateless across rounds)."""

    job_id: str

    def train_round(
        self,
        global_frame: Frame,
        round_index: int,
        config: QZOConfig,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> tuple[list[Tensor], dict[str, Any]]:
        model = fixedmlp_from_frame(global_frame)
        local = model.copy()
        config.validate(local)
        QZOTrainer(local, config).fit(x, y, on_batch=interrupt_when(should_stop))
        tensors, steps = sign_of_change(model, local)
        meta = {"samples": len(y), "round": round_index, "job_id": self.job_id, "steps": steps}
        return tensors, meta
