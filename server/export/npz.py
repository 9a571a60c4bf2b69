"""A trained model as plain integer arrays (``numpy.savez``) for other toolchains, with a
short description of the arithmetic that reproduces bitfleet's scores exactly."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

from bitfleet.bitmlp import BitMLP
from bitfleet.fixedpoint import ACT_MAX, FixedMLP

BIT_NETWORK = """bitfleet {encoding} bit network {layers}.
input_offset: uint8 (inputs,). layer{{i}}_weights: int8 (outputs, inputs), values in
{values}. For a sample x (uint8, inputs):
  layer 0: s = W0 . (x - input_offset)            (integers; no overflow in int32)
  hidden:  a = +1 where s >= 0, else -1           (the sign, with sign(0) = +1)
  next:    s = Wi . a
The last layer's s are the class scores; the class is the first index of the highest.
"""

FIXED_NETWORK = """bitfleet fixed-point network {layers}, int{bits} weights.
input_offset: uint8 (inputs,). layer{{i}}_weights: int{bits} (inputs, outputs);
layer{{i}}_bias: int32 (outputs,); layer{{i}}_shift: the right shift of a hidden layer.
For a sample x (uint8, inputs):
  a0 = clip(floor((x - input_offset + 1) / 2), -{act}, {act})               (int8)
  hidden: acc = a . W + bias (exact, int64); acc = max(acc, 0);
          shift > 0: acc = floor((acc + 2**(shift - 1)) / 2**shift); shift < 0: acc * 2**-shift;
          a = min(acc, {act})                                                (int8)
  last:   scores = clip(a . W + bias, -2**31, 2**31 - 1)                     (int32)
The class is the first index of the highest score.
"""


def npz_bytes(model: BitMLP | FixedMLP) -> bytes:
    """The ``.npz`` file's bytes: the arrays and a ``description`` string."""
    arrays: dict[str, NDArray[np.generic]] = {"input_offset": model.input_offset}
    layers = "-".join(map(str, model.layer_sizes))
    if isinstance(model, BitMLP):
        for index, layer in enumerate(model.layers):
            arrays[f"layer{index}_weights"] = layer.values()
        values = "{-1, +1}" if model.encoding == "binary" else "{-1, 0, +1}"
        text = BIT_NETWORK.format(encoding=model.encoding, layers=layers, values=values)
    else:
        for index, fixed in enumerate(model.layers):
            arrays[f"layer{index}_weights"] = fixed.weights
            arrays[f"layer{index}_bias"] = fixed.bias
            arrays[f"layer{index}_shift"] = np.array(fixed.shift, dtype=np.int32)
        text = FIXED_NETWORK.format(layers=layers, bits=model.weight_bits, act=ACT_MAX)
    arrays["description"] = np.array(text)
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **arrays)
    return out.getvalue()
