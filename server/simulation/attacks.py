"""Hostile agents for ``bitfleet simulate``: each trains honestly, then sends something else.

An attack rewrites the voted tensors (packed 1-/2-bit planes) or the sample claim of the
agent's update before it is signed, so what reaches the coordinator is exactly what such an
agent could send over the wire. Inverting *every* layer of a two-layer binary network
computes the same function (the hidden signs flip twice), so ``invert-all`` is weak by
construction; ``invert-last`` is the strong form of that attack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bitfleet.algorithms import Update
from bitfleet.bitpack import pack_binary, pack_ternary
from bitfleet.frames import Tensor
from bitfleet.modelfile import tensor_values
from bitfleet.protocol import MAX_SAMPLES

VOTED = ("binary", "ternary")


def _with_values(tensor: Tensor, values: NDArray[np.integer]) -> Tensor:
    if tensor.encoding == "binary":
        planes = pack_binary(values)[None]
    else:
        planes = np.stack(pack_ternary(values))
    return replace(tensor, data=planes)


def _layer(tensor: Tensor) -> int:
    return int(tensor.name.rsplit("_", 1)[1])


def _rewrite(
    tensors: list[Tensor], pick: Callable[[list[Tensor]], set[str]], change: Callable[..., Any]
) -> list[Tensor]:
    voted = [t for t in tensors if t.encoding in VOTED]
    chosen = pick(voted)
    return [
        _with_values(t, change(t, tensor_values(t))) if t.name in chosen else t for t in tensors
    ]


def _last(voted: list[Tensor]) -> set[str]:
    top = max(_layer(t) for t in voted)
    return {t.name for t in voted if _layer(t) == top}


def _all(voted: list[Tensor]) -> set[str]:
    return {t.name for t in voted}


@dataclass
class Attack:
    """One hostile agent's behaviour; ``rng`` is its own (the run stays deterministic)."""

    name: str
    rng: np.random.Generator
    # stale: the first update this agent computed, replayed in every later round.
    _first: list[Tensor] | None = field(default=None, repr=False)

    @property
    def declared_samples(self) -> int | None:
        """What the agent declares before rounds open (None: its true count)."""
        return MAX_SAMPLES if self.name == "inflate-weight" else None

    def apply(self, update: Update) -> Update:
        """What this agent sends instead of its honest ``update``."""
        rewrite: Callable[[Update], Update] = getattr(self, "_" + self.name.replace("-", "_"))
        return rewrite(update)

    def _invert_last(self, update: Update) -> Update:
        return _rewrite(update[0], _last, lambda t, v: -v), update[1]

    def _invert_all(self, update: Update) -> Update:
        return _rewrite(update[0], _all, lambda t, v: -v), update[1]

    def _random(self, update: Update) -> Update:
        return _rewrite(update[0], _all, self._random_values), update[1]

    def _inflate_weight(self, update: Update) -> Update:
        return update[0], {**update[1], "samples": MAX_SAMPLES}

    def _stale(self, update: Update) -> Update:
        if self._first is None:
            self._first = update[0]
        return self._first, update[1]

    def _random_values(self, tensor: Tensor, values: NDArray[np.int8]) -> NDArray[np.int8]:
        choices = np.array([-1, 1] if tensor.encoding == "binary" else [-1, 0, 1], np.int8)
        return self.rng.choice(choices, size=values.shape)


ATTACKS = ("invert-last", "invert-all", "random", "inflate-weight", "stale")
