"""Packing of 1- and 2-bit weights and binary activations into uint64 words.

Layout (larq-style naming, one row per output unit): a tensor of shape ``(..., n)`` packs
along its last axis into ``(..., ceil(n / 64))`` little-endian uint64 words; element ``j``
of a row is bit ``j % 64`` of word ``j // 64``. Padding bits are zero, so XOR-based dot
products ignore them. Binary values use bit 1 for +1 and bit 0 for -1. Ternary values use
two planes: ``positive`` (1 where the value is +1) and ``nonzero`` (1 where it is not 0).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

WORD_BITS = 64


def words_for(n: int) -> int:
    """Number of uint64 words that hold ``n`` bits."""
    return (n + WORD_BITS - 1) // WORD_BITS


def pack_bits(bits: NDArray[np.bool_]) -> NDArray[np.uint64]:
    """Pack booleans along the last axis into zero-padded little-endian uint64 words."""
    bits = np.asarray(bits, dtype=bool)
    n = bits.shape[-1]
    as_bytes = np.zeros((*bits.shape[:-1], words_for(n) * 8), dtype=np.uint8)
    as_bytes[..., : (n + 7) // 8] = np.packbits(bits, axis=-1, bitorder="little")
    return as_bytes.view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: NDArray[np.uint64], n: int) -> NDArray[np.bool_]:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of each row as booleans."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little").astype(bool)


def has_padding_bits(words: NDArray[np.uint64], columns: int) -> bool:
    """True if any row's last word sets bits beyond ``columns`` (the padding must be zero)."""
    used = columns % WORD_BITS
    if used == 0:
        return False
    padding = np.uint64(((1 << WORD_BITS) - 1) ^ ((1 << used) - 1))
    return bool(np.any(words[..., -1] & padding))


def pack_binary(values: NDArray[np.integer]) -> NDArray[np.uint64]:
    """Pack {-1, +1} values (any integer dtype; >= 0 counts as +1)."""
    return pack_bits(np.asarray(values) >= 0)


def unpack_binary(words: NDArray[np.uint64], n: int) -> NDArray[np.int8]:
    """Unpack binary words to int8 values in {-1, +1}."""
    return (unpack_bits(words, n).astype(np.int8) * 2 - 1).astype(np.int8)


def pack_ternary(values: NDArray[np.integer]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Pack {-1, 0, +1} values into the (positive, nonzero) bit-planes."""
    values = np.asarray(values)
    return pack_bits(values > 0), pack_bits(values != 0)


def unpack_ternary(
    positive: NDArray[np.uint64], nonzero: NDArray[np.uint64], n: int
) -> NDArray[np.int8]:
    """Unpack the two planes to int8 values in {-1, 0, +1}."""
    pos = unpack_bits(positive, n)
    nz = unpack_bits(nonzero, n)
    return (nz.astype(np.int8) * (pos.astype(np.int8) * 2 - 1)).astype(np.int8)


LANES_PER_WORD = 4


def _lane_words(columns: int) -> int:
    return (columns + LANES_PER_WORD - 1) // LANES_PER_WORD


def pack_lanes(x: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """uint8 inputs ``(rows, n)`` as uint64 words of four uint16 lanes, zero-padded: the
    layout :func:`bitfleet.kernels.masked_sums` adds in (each lane has room to sum 256)."""
    x = np.asarray(x, dtype=np.uint8)
    lanes = np.zeros((x.shape[0], _lane_words(x.shape[1]) * LANES_PER_WORD), dtype=np.uint16)
    lanes[:, : x.shape[1]] = x
    return lanes.view(np.uint64)
