"""Bit networks: MLPs whose weights are 1 bit (binary) or 2 bits (ternary).

The model is what an agent sends and a microcontroller runs: packed weight bits and one
integer input offset per feature (the rounded training mean, so inputs are centred without
any float). Every hidden unit is ``sign(pre-activation)`` with ``sign(0) = +1``; the last
layer's integer sums are the class scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.bitpack import (
    pack_binary,
    pack_bits,
    pack_lanes,
    pack_ternary,
    unpack_binary,
    unpack_ternary,
)
from bitfleet.classifier import Classifier, validate_layer_sizes
from bitfleet.errors import ConfigError

ENCODINGS = ("binary", "ternary")


@dataclass(frozen=True)
class PackedLayer:
    """One dense layer's weights, packed row per output unit.

    ``positive`` holds the sign bits (1 = +1); ``nonzero`` is None for binary layers.
    """

    inputs: int
    outputs: int
    positive: NDArray[np.uint64]
    nonzero: NDArray[np.uint64] | None = None

    @property
    def encoding(self) -> str:
        return "binary" if self.nonzero is None else "ternary"

    @classmethod
    def from_values(cls, values: NDArray[np.integer], encoding: str) -> PackedLayer:
        """Pack an ``(outputs, inputs)`` array of {-1, +1} or {-1, 0, +1} values."""
        outputs, inputs = values.shape
        if encoding == "binary":
            return cls(inputs, outputs, pack_binary(values))
        positive, nonzero = pack_ternary(values)
        return cls(inputs, outputs, positive, nonzero)

    def values(self) -> NDArray[np.int8]:
        """The ``(outputs, inputs)`` weight values in {-1, +1} or {-1, 0, +1}."""
        if self.nonzero is None:
            return unpack_binary(self.positive, self.inputs)
        return unpack_ternary(self.positive, self.nonzero, self.inputs)

    def dense_uint8(self, x: NDArray[np.uint8]) -> NDArray[np.int32]:
        """Pre-activations for uint8 inputs: the inputs' sum under the +1 weights minus their
        sum under the -1 ones (:func:`bitfleet.kernels.masked_sums`, ANDs and ADDs)."""
        lanes = pack_lanes(x)
        if self.nonzero is None:  # every input not under a +1 is under a -1
            under_plus = kernels.masked_sums(lanes, self.positive)
            return 2 * under_plus - x.sum(axis=1, dtype=np.int32)[:, None]
        plus = kernels.masked_sums(lanes, self.positive & self.nonzero)
        return plus - kernels.masked_sums(lanes, ~self.positive & self.nonzero)

    def dense_bits(self, x: NDArray[np.uint64]) -> NDArray[np.int32]:
        """Pre-activations for packed binary activations."""
        if self.nonzero is None:
            return kernels.binary_dense(x, self.positive, self.inputs)
        return kernels.ternary_dense(x, self.positive, self.nonzero)


@dataclass
class BitMLP(Classifier[np.int32]):
    """A trained (or initial) bit network, ready for packed-bit inference (in chunks of
    ``CHUNK_ROWS`` rows: that bounds the lane buffers)."""

    SCORE_DTYPE = np.int32

    layers: list[PackedLayer]
    input_offset: NDArray[np.uint8]
    _offset_terms: NDArray[np.int32] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate_layer_sizes(self.layer_sizes)
        if self.input_offset.shape != (self.layers[0].inputs,):
            raise ConfigError(
                f"input offset has shape {self.input_offset.shape}, expected "
                f"({self.layers[0].inputs},) to match the first layer"
            )
        for previous, layer in pairwise(self.layers):
            if layer.inputs != previous.outputs:
                raise ConfigError(
                    f"layer sizes do not chain: {previous.outputs} outputs feed {layer.inputs}"
                )

    @property
    def layer_sizes(self) -> list[int]:
        return [self.layers[0].inputs] + [layer.outputs for layer in self.layers]

    @property
    def encoding(self) -> str:
        return self.layers[0].encoding

    @property
    def params(self) -> int:
        return sum(layer.inputs * layer.outputs for layer in self.layers)

    def pre_activations(self, x: NDArray[np.uint8]) -> list[NDArray[np.int32]]:
        """Each layer's integer pre-activations for a chunk of rows: the last are the class
        scores, and the bit-flip trainer's forward pass keeps them all."""
        if self._offset_terms is None:  # one pass with the offset as a last row: masks once
            first = self.layers[0].dense_uint8(np.vstack([x, self.input_offset[None, :]]))
            self._offset_terms = first[-1]
            first = first[:-1]
        else:
            first = self.layers[0].dense_uint8(x)
        pre = [first - self._offset_terms[None, :]]
        for layer in self.layers[1:]:
            pre.append(layer.dense_bits(pack_bits(pre[-1] >= 0)))
        return pre

    def scores_chunk(self, x: NDArray[np.uint8]) -> NDArray[np.int32]:
        return self.pre_activations(x)[-1]

    def mean_rival_gap(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> float:
        """Mean amount by which the strongest rival beats the true class, per unit of the
        last layer's fan-in: 0 when every sample is classified correctly."""
        scores = self.scores(x).astype(np.int64)
        if len(scores) == 0:
            return 0.0
        rows = np.arange(len(scores))
        true = scores[rows, np.asarray(y)]
        scores[rows, np.asarray(y)] = np.iinfo(np.int64).min
        gap = np.maximum(scores.max(axis=1) - true, 0)
        return float(gap.mean() / self.layers[-1].inputs)
