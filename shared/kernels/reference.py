"""Plain-numpy twins of the hot kernels: the definition the numba kernels must match.

All results are exact int32. These run on numpy >= 1.24 (Debian bookworm's, which 32-bit
Raspberry Pi OS uses), and serve as the fallback where numba has no wheels.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitpack import unpack_bits
from bitfleet.intmath import int_matmul, max_abs
from bitfleet.prng import hash32, splitmix64

# Rows of the batch processed at once: bounds the (rows, outputs, words) temporaries.
_ROW_CHUNK = 64

# Set bits of every 16-bit value: 64 KiB, measured 2.2x faster than a byte table.
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
_HALFWORD_BITS = np.add.outer(_BYTE_BITS, _BYTE_BITS).astype(np.uint8).ravel()


def popcount_sum_table(words: NDArray[np.uint64]) -> NDArray[np.int32]:
    """Set bits summed over the last axis, by table lookup (numpy < 2 has no popcount)."""
    halves = np.ascontiguousarray(words, dtype=np.uint64).view(np.uint16)
    return _HALFWORD_BITS[halves].sum(axis=-1, dtype=np.int32)


def popcount_sum_native(words: NDArray[np.uint64]) -> NDArray[np.int32]:
    """Set bits summed over the last axis, by ``np.bitwise_count`` (numpy >= 2.0)."""
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int32)


popcount_sum = popcount_sum_native if hasattr(np, "bitwise_count") else popcount_sum_table


def _popcount_rows(x: NDArray[np.uint64], w: NDArray[np.uint64], combine: str) -> NDArray[np.int32]:
    """popcount(combine(x[b], w[o])) summed over words, for every (b, o) pair."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int32)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        xs = x[start : start + _ROW_CHUNK, None, :]
        mixed = xs ^ w[None] if combine == "xor" else xs & w[None]
        out[start : start + _ROW_CHUNK] = popcount_sum(mixed)
    return out


def binary_dense(x: NDArray[np.uint64], w: NDArray[np.uint64], n: int) -> NDArray[np.int32]:
    """Binary activations x binary weights: ``n - 2 * popcount(x XOR w)``."""
    return (n - 2 * _popcount_rows(x, w, "xor")).astype(np.int32)


def ternary_dense(
    x: NDArray[np.uint64], positive: NDArray[np.uint64], nonzero: NDArray[np.uint64]
) -> NDArray[np.int32]:
    """Binary activations x ternary weights: ``nnz - 2 * popcount(nonzero AND (x XOR pos))``."""
    nnz = popcount_sum(nonzero)
    out = np.empty((x.shape[0], positive.shape[0]), dtype=np.int32)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        xs = x[start : start + _ROW_CHUNK, None, :]
        wrong = popcount_sum((xs ^ positive[None]) & nonzero[None])
        out[start : start + _ROW_CHUNK] = nnz[None, :] - 2 * wrong
    return out


def check_masked_sums(lanes: NDArray[np.uint64], selected: NDArray[np.uint64]) -> None:
    """Refuse operands the kernels would read past: each selection row must cover its lanes."""
    if lanes.ndim != 2 or selected.ndim != 2 or selected.shape[1] * 16 < lanes.shape[1]:
        raise ValueError("masked_sums: each selection row needs a bit for every input lane")


def masked_sums(lanes: NDArray[np.uint64], selected: NDArray[np.uint64]) -> NDArray[np.int32]:
    """For every row ``b`` and output ``o``: the sum of row ``b``'s inputs that ``o``
    selects, exactly, as int32.

    ``lanes`` (rows, words) holds uint8 inputs one per uint16 lane
    (:func:`bitfleet.bitpack.pack_lanes`); ``selected`` (outputs, bit words) is one packed
    bit row per output (:func:`bitfleet.bitpack.pack_bits`). With a binary weight's ``+1``
    bits, ``2 * sum - row sum`` is the dot product with the +-1 weights: an uint8-by-1-bit
    layer in ANDs and ADDs. The numba twin widens 64 outputs' bits at a time to lane masks.
    """
    check_masked_sums(lanes, selected)
    inputs = np.ascontiguousarray(lanes).view(np.uint16).astype(np.int32)
    chosen = unpack_bits(selected, inputs.shape[1]).astype(np.int32)
    return np.einsum("bi,oi->bo", inputs, chosen).astype(np.int32)


# Bounds of the counter update's integer pipeline: shifted votes times the multiplier stay
# below 2**30 and the noise below 2**30, so their sum fits an int32 lane.
MAX_ROUNDING_SHIFT = 30
_KEY_MASK = 0xFFFFFFFF


def check_counter_step(
    votes: NDArray[np.integer], multiplier: int, pre_shift: int, shift: int
) -> tuple[NDArray[np.int32], int]:
    """Refuse shifts and multipliers outside the int32 pipeline. Returns the votes as int32
    and the pre-shift still to apply to them: int64 votes are shifted here (the caller's
    ``pre_shift`` makes them fit), int32 ones in the kernel."""
    if not (0 <= shift <= MAX_ROUNDING_SHIFT and 0 <= pre_shift <= 62):
        raise ValueError(f"counter_step: shift {shift} or pre_shift {pre_shift} out of range")
    if not 0 <= multiplier < 1 << MAX_ROUNDING_SHIFT:
        raise ValueError(f"counter_step: multiplier {multiplier} out of range")
    if votes.dtype == np.int32 and pre_shift <= 31:
        return np.ascontiguousarray(votes), pre_shift
    return np.ascontiguousarray(votes.astype(np.int64) >> pre_shift, dtype=np.int32), 0


def counter_step(
    counters: NDArray[np.int16],
    weights: NDArray[np.int8],
    votes: NDArray[np.int32] | NDArray[np.int64],
    multiplier: int,
    pre_shift: int,
    shift: int,
    key: int,
    low: int,
    high: int,
    zero_threshold: int,
) -> None:
    """Saturating counter update with unbiased stochastic rounding, in place.

    ``counters += floor(((votes >> pre_shift) * multiplier + u) / 2**shift)``, clipped to
    ``[low, high]``, with ``u`` the low ``shift`` bits of :func:`hash32` of
    ``(key + flat index) mod 2**32``; then ``weights = +1 if c >= t, -1 if c < -t, else 0``
    with ``t = zero_threshold`` (0 gives binary weights). The caller picks ``pre_shift`` so
    that ``|votes >> pre_shift| * multiplier < 2**30`` (``shift <= 30``): every step then
    fits the int32 lanes the numba twin runs in.
    """
    votes, pre_shift = check_counter_step(votes, multiplier, pre_shift, shift)
    scaled = (votes.astype(np.int64) >> pre_shift) * multiplier
    index = np.arange(votes.size, dtype=np.uint32).reshape(votes.shape)
    noise = hash32(index + np.uint32(key & _KEY_MASK)) & np.uint32((1 << shift) - 1)
    updated = np.clip(counters.astype(np.int64) + ((scaled + noise) >> shift), low, high)
    counters[...] = updated
    weights[...] = (updated >= zero_threshold).astype(np.int8) - (updated < -zero_threshold)


def largest_product(error: NDArray[np.integer], activations: NDArray[np.integer]) -> int:
    """``max|e| * max|a|``: the bound on one term of a vote (and of the int16 chunks)."""
    return max_abs(error) * max_abs(activations)


def vote_dtype(error: NDArray[np.integer], largest: int) -> type:
    """int32 when no vote can leave it (int32 lanes vectorize twice as wide), else int64;
    ``largest`` is :func:`largest_product`."""
    return np.int32 if len(error) * largest < 2**31 else np.int64


def error_votes(
    error: NDArray[np.int64], activations: NDArray[np.integer]
) -> NDArray[np.int32] | NDArray[np.int64]:
    """``errorᵀ·activations``, exactly, in :func:`vote_dtype`: each weight's vote (outputs
    by inputs), and with ``error.T`` and a layer's weights the error attributed to its
    inputs. The numba twin adds only the nonzero errors' rows: a sample that meets its
    margin, a unit outside the window and all but two classes of a sample carry none."""
    dtype = vote_dtype(error, largest_product(error, activations))
    return np.einsum("sj,si->ji", error.astype(dtype), activations.astype(dtype))


# --- Fixed-point (QZO-FF) kernels --------------------------------------------------------

# Elements processed at once by the perturbation twins: bounds their hash temporaries so
# the numpy path, too, trains in little more memory than it infers in.
_PERTURB_CHUNK = 4096
_LOW32 = np.uint64(0xFFFFFFFF)


def fixed_dense(
    a: NDArray[np.int8],
    w: NDArray[np.integer],
    bias: NDArray[np.int32],
    shift: int,
    relu: bool,
    out: NDArray[np.integer],
) -> None:
    """``out = saturate(round_shift(relu?(a . w + bias), shift))`` into ``out``'s dtype.

    ``a`` is int8 ``(batch, inputs)``, ``w`` int8/int16 ``(inputs, outputs)``. The sum is
    exact; ``shift > 0`` divides by ``2**shift`` rounding half up (an arithmetic shift),
    ``shift < 0`` multiplies; the result saturates to the range of ``out`` (int8 for hidden
    activations, int32 for the class scores).
    """
    acc = int_matmul(a, w) + bias.astype(np.int64)
    if relu:
        np.maximum(acc, 0, out=acc)
    if shift > 0:
        acc += 1 << (shift - 1)
        acc >>= shift
    elif shift < 0:
        acc <<= -shift
    info = np.iinfo(out.dtype)
    np.clip(acc, info.min, info.max, out=acc)
    out[...] = acc


def _rademacher(counter: NDArray[np.uint64], threshold: int) -> NDArray[np.int64]:
    """Sparse Rademacher draws: +-1 with probability ``threshold / 2**32``, else 0.

    The low 32 bits of the hash decide whether the entry is nonzero, the top bit its sign.
    """
    bits = splitmix64(counter)
    sign = (bits >> np.uint64(63)).astype(np.int64) * 2 - 1
    return sign * ((bits & _LOW32) < np.uint64(threshold))


def add_perturbations(
    w: NDArray[np.integer],
    keys: NDArray[np.uint64],
    coefs: NDArray[np.int64],
    offset: int,
    threshold: int,
    multiplier: int,
    shift: int,
    round_key: int,
    stochastic: bool,
    low: int,
    high: int,
) -> None:
    """``w += round(multiplier * sum_k coefs[k] * z_k / 2**shift)``, saturated, in place.

    ``z_k`` is regenerated, never stored: entry ``i`` (flat index of ``w``) is the sparse
    Rademacher draw of :func:`splitmix64` at counter ``keys[k] + offset + i``. The division
    rounds half up, or stochastically (unbiased: ``+ u``, ``u`` uniform in ``[0, 2**shift)``
    from counter ``round_key + offset + i``) when ``stochastic``. Entries whose combined draw
    is 0 are left untouched (a sparse update touches only perturbed weights). One kernel
    serves applying a perturbation (one key, ``shift = 0``), undoing it, and the
    sign-m-SPSA update.
    """
    if not w.flags.c_contiguous:
        raise ValueError("add_perturbations updates w in place: it must be C-contiguous")
    flat = w.reshape(-1)
    half = np.int64(1 << (shift - 1)) if shift > 0 else np.int64(0)
    for start in range(0, flat.size, _PERTURB_CHUNK):
        stop = min(flat.size, start + _PERTURB_CHUNK)
        index = np.arange(start, stop, dtype=np.uint64) + np.uint64(offset)
        total = np.zeros(stop - start, dtype=np.int64)
        for key, coef in zip(keys.tolist(), coefs.tolist(), strict=True):
            total += coef * _rademacher(index + np.uint64(key), threshold)
        touched = total != 0
        total *= multiplier
        if shift > 0:
            if stochastic:
                noise = splitmix64(index + np.uint64(round_key)) >> np.uint64(64 - shift)
                total += noise.astype(np.int64)
            else:
                total += half
            total >>= shift
        total += flat[start:stop]
        np.clip(total, low, high, out=total)
        flat[start:stop] = np.where(touched, total, flat[start:stop])


def carry_save_add(
    acc: NDArray[np.uint64],
    pend: NDArray[np.uint64],
    x: NDArray[np.uint64],
    feeds: NDArray[np.int64],
) -> None:
    """Add the bit-vector ``x`` to carry-save bit-sliced counters, once per feed, in place.

    Lane ``i`` of the counters holds ``sum_j 2**j * (acc[j] + pend[j] if level j is
    pending else acc[j])`` (bit ``i`` of each plane); the caller tracks which levels are
    pending. Each feed row ``(level, stop)`` adds ``x << level``: levels ``level .. stop-1``
    must be pending, and each compresses (acc, pend, carry) 3:2 with a full adder, leaving
    the sum bit in ``acc[j]`` and freeing ``pend[j]``; the last carry is parked in the free
    ``pend[stop]``. Like incrementing a binary counter this touches two levels on average,
    where a ripple-carry add would sweep every plane (Harley-Seal's trick, applied over time).
    """
    for level, stop in feeds.tolist():
        carry = x
        for j in range(level, stop):
            a, b = acc[j], pend[j]
            half = a ^ b
            next_carry = (a & b) | (half & carry)
            np.bitwise_xor(half, carry, out=a)
            carry = next_carry
        pend[stop] = carry


def bitsliced_add(planes: NDArray[np.uint64], x: NDArray[np.uint64], start_plane: int) -> None:
    """Ripple-carry add ``x << start_plane`` to plain bit-sliced counters ``(P, lanes)``, in place.

    Lane ``i`` counts ``sum_p 2**p * bit_i(planes[p])``. The caller guarantees the sums fit
    in P planes (a carry out of the top plane is lost); the ripple stops at the first plane
    where no lane carries.
    """
    carry = x
    for p in range(start_plane, planes.shape[0]):
        plane = planes[p]
        next_carry = plane & carry
        plane ^= carry
        carry = next_carry
        if not carry.any():
            return
