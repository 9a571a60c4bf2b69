"""The 2-bit counter link of federated bit-flip jobs (``aggregation: counters``).

A majority vote of 1-bit weights throws away how sure each agent is, and a round then moves
the model about as far as one agent's epoch (docs/algorithms.md, federated bit-flip). With
the counter link the coordinator keeps every weight's K-bit counter (the fleet's, in fixed
point) and each round carries 2 bits per weight each way:

- **down**: the weights (the model's own planes) and a *strength* plane
  (``modelfile.STRENGTH``): whether the
  coordinator's counter sits at least the layer's median distance beyond its value's weakest
  state. Two distances per layer (``counter_levels``: the mean distance of the weak and of
  the strong counters) let an agent rebuild counters from the two bits
  (:meth:`bitfleet.bitflip.CounterLayer.restore`).
- **up**: how far the agent's counters moved over its round, as a ternary tensor and one
  scale per layer (``change_scales``): the move ``v`` plus what earlier rounds left unsent
  (the agent's residual) becomes ``scale·sign(v)`` where ``2|v| >= scale`` and 0 elsewhere,
  with ``scale ≈ 2·mean|v|``; the residual keeps the rest for the next round (error
  feedback): nothing is lost, only late.

The coordinator adds the weighted median of the round's scales times the weighted mean of
the ternary moves to its counters, so no agent's claimed scale moves the fleet's counters
further than the median agent's does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitflip import CounterLayer

AGGREGATIONS = ("majority", "counters")
# Model frames' meta: what rebuilds counters from the strength planes.
LEVELS = "counter_levels"  # per layer [weak, strong] distances
LINK = "counter_link"  # {"state_bits": K, "zero_fraction": f}: the counters' own format
FRACTION_BITS = 8  # of the coordinator's fixed-point counters
# Updates: per-layer ternary moves and their scales.
CHANGE = "counter_change"
SCALES = "change_scales"


def strength(layer: CounterLayer) -> tuple[NDArray[np.bool_], tuple[int, int]]:
    """The strength plane of a layer's counters and its (weak, strong) mean distances."""
    distance = layer.distances()
    nonzero = layer.weights != 0
    counted = distance[nonzero]
    if counted.size == 0:
        return np.zeros(distance.shape, bool), (0, 0)
    median = int(np.partition(counted, counted.size // 2)[counted.size // 2])
    strong = nonzero & (distance >= max(1, median))
    weak_level = _rounded_mean(distance[nonzero & ~strong])
    strong_level = _rounded_mean(distance[strong]) if strong.any() else max(1, median)
    return strong, (weak_level, strong_level)


def ternary_move(
    move: NDArray[np.integer], residual: NDArray[np.int32], bound: int
) -> tuple[NDArray[np.int8], int, NDArray[np.int32]]:
    """``(signs, scale, residual)``: an agent's counter move plus its residual, sent as
    ``scale·signs``; what is left stays behind, within ``±bound`` (the counters' range)."""
    total = move.astype(np.int64) + residual
    magnitude = np.abs(total)
    count = max(1, total.size)
    scale = max(1, (2 * int(magnitude.sum()) + count // 2) // count)
    signs = (np.sign(total) * (2 * magnitude >= scale)).astype(np.int8)
    left = np.clip(total - scale * signs.astype(np.int64), -bound, bound)
    return signs, scale, left.astype(np.int32)


def weighted_median(values: list[int], weights: list[int]) -> int:
    """The lower weighted median: the smallest value whose cumulative weight reaches half."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.asarray(weights, np.int64)[order])
    index = int(np.searchsorted(2 * cumulative, cumulative[-1]))
    return int(np.asarray(values)[order][index])


def _rounded_mean(values: NDArray[np.int64]) -> int:
    if values.size == 0:
        return 0
    return int((2 * int(values.sum()) + values.size) // (2 * values.size))
