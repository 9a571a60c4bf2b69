"""Plain-numpy twins of the dense-layer kernels: the definition the numba kernels must match.

All results are exact int32. These run anywhere numpy >= 2.0 runs (``np.bitwise_count``),
and serve as the fallback where numba has no wheels (32-bit Raspberry Pi OS).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# Rows of the batch processed at once: bounds the (rows, outputs, words) temporaries.
_ROW_CHUNK = 64


def _popcount_rows(x: NDArray[np.uint64], w: NDArray[np.uint64], combine: str) -> NDArray[np.int32]:
    """popcount(combine(x[b], w[o])) summed over words, for every (b, o) pair."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int32)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        xs = x[start : start + _ROW_CHUNK, None, :]
        mixed = xs ^ w[None] if combine == "xor" else xs & w[None]
        out[start : start + _ROW_CHUNK] = np.bitwise_count(mixed).sum(axis=2, dtype=np.int32)
    return out


def binary_dense(x: NDArray[np.uint64], w: NDArray[np.uint64], n: int) -> NDArray[np.int32]:
    """Binary activations x binary weights: ``n - 2 * popcount(x XOR w)``."""
    return (n - 2 * _popcount_rows(x, w, "xor")).astype(np.int32)


def ternary_dense(
    x: NDArray[np.uint64], positive: NDArray[np.uint64], nonzero: NDArray[np.uint64]
) -> NDArray[np.int32]:
    """Binary activations x ternary weights: ``nnz - 2 * popcount(nonzero AND (x XOR pos))``."""
    nnz = np.bitwise_count(nonzero).sum(axis=1, dtype=np.int32)
    out = np.empty((x.shape[0], positive.shape[0]), dtype=np.int32)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        xs = x[start : start + _ROW_CHUNK, None, :]
        wrong = np.bitwise_count((xs ^ positive[None]) & nonzero[None]).sum(axis=2, dtype=np.int32)
        out[start : start + _ROW_CHUNK] = nnz[None, :] - 2 * wrong
    return out


def uint8_binary_dense(planes: NDArray[np.uint64], w: NDArray[np.uint64]) -> NDArray[np.int32]:
    """uint8 inputs (as 8 bit-planes) x binary weights: ``sum_k 2^k (2 pc(P_k & w) - pc(P_k))``."""
    out = np.zeros((planes.shape[0], w.shape[0]), dtype=np.int32)
    for k in range(8):
        plane = np.ascontiguousarray(planes[:, k, :])
        ones = np.bitwise_count(plane).sum(axis=1, dtype=np.int32)
        agree = _popcount_rows(plane, w, "and")
        out += (2 * agree - ones[:, None]) << k
    return out


def uint8_ternary_dense(
    planes: NDArray[np.uint64], positive: NDArray[np.uint64], nonzero: NDArray[np.uint64]
) -> NDArray[np.int32]:
    """uint8 inputs x ternary weights: ``sum_k 2^k (pc(P_k & nz & pos) - pc(P_k & nz & ~pos))``."""
    plus = positive & nonzero
    minus = ~positive & nonzero
    out = np.zeros((planes.shape[0], positive.shape[0]), dtype=np.int32)
    for k in range(8):
        plane = np.ascontiguousarray(planes[:, k, :])
        out += (_popcount_rows(plane, plus, "and") - _popcount_rows(plane, minus, "and")) << k
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(counter: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Counter-based integer PRNG: a fixed bijective hash of each counter value.

    Random bits depend only on (key, index), so the numpy and numba twins draw the same
    numbers without sharing any generator state.
    """
    with np.errstate(over="ignore"):
        z = counter + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def counter_step(
    counters: NDArray[np.int16],
    weights: NDArray[np.int8],
    votes: NDArray[np.int64],
    multiplier: int,
    shift: int,
    key: int,
    low: int,
    high: int,
    zero_threshold: int,
) -> None:
    """Saturating counter update with unbiased stochastic rounding, in place.

    ``counters += floor((votes * multiplier + u) / 2**shift)`` with ``u`` uniform in
    ``[0, 2**shift)`` from :func:`splitmix64` of ``key + flat index``, clipped to
    ``[low, high]``; then ``weights = +1 if c >= t, -1 if c < -t, else 0`` with
    ``t = zero_threshold`` (0 gives binary weights).
    """
    scaled = votes.astype(np.int64) * multiplier
    if shift > 0:
        index = np.arange(votes.size, dtype=np.uint64).reshape(votes.shape)
        noise = splitmix64(index + np.uint64(key)) >> np.uint64(64 - shift)
        scaled = (scaled + noise.astype(np.int64)) >> shift
    else:
        scaled = scaled << -shift
    updated = np.clip(counters.astype(np.int64) + scaled, low, high)
    counters[...] = updated
    weights[...] = (updated >= zero_threshold).astype(np.int8) - (updated < -zero_threshold)
