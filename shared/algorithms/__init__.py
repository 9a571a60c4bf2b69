"""The training algorithms agents run, by the name jobs and tasks give them.

A new algorithm is a module here (its :class:`~bitfleet.algorithms.base.Algorithm`), its
coordinator side in :mod:`bitfleet.server.algorithms`, and one line in each registry.
"""

from __future__ import annotations

from typing import Any

from bitfleet.algorithms.base import Algorithm, LocalTraining, Update
from bitfleet.algorithms.bitflip import BitFlip
from bitfleet.algorithms.forward import Forward
from bitfleet.errors import ConfigError

ALGORITHMS: dict[str, Algorithm[Any]] = {
    algorithm.name: algorithm for algorithm in (BitFlip(), Forward())
}


def algorithm_named(name: str) -> Algorithm[Any]:
    """The algorithm called ``name``; ConfigError listing the known ones otherwise."""
    found = ALGORITHMS.get(name)
    if found is None:
        raise ConfigError(f"unknown algorithm {name!r}: use one of {sorted(ALGORITHMS)}")
    return found


__all__ = ["ALGORITHMS", "Algorithm", "LocalTraining", "Update", "algorithm_named"]
