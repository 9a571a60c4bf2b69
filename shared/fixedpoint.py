"""Fixed-point MLPs: integer-only inference, and quantization of a float model into one.

Every tensor is an integer with a power-of-two scale: a value ``v`` with exponent ``e``
stands for ``v * 2**-e``. Weights are int16 (int8 as an option) with one exponent per
layer; activations are int8; sums are exact and saturate to int32 (the quantizer leaves
headroom so an int32 accumulator never overflows on its models); biases are int32 at the
accumulator's scale. A hidden layer turns its accumulator into the next int8 activation
by an arithmetic right shift (rounding half up), ReLU and saturation; the last layer's
int32 accumulators are the class scores. No float is touched from pixels to prediction.

Inputs are centred on the rounded training mean ``mu`` (uint8, stored in the model):
``a0 = sat8((x - mu + 1) >> 1)``, i.e. ``(x - mu) / 256`` at exponent 7. The float model
(:mod:`bitfleet.floatmlp`) sees ``(x - mean) / 255``; quantization folds the difference
(a factor 256/255 and the rounding of the mean) into the first layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.classifier import Classifier, check_inputs
from bitfleet.errors import ConfigError
from bitfleet.floatmlp import FloatMLP

WEIGHT_BITS = (8, 16)
INPUT_EXP = 7
ACT_MAX = 127
# Exponents a model may carry: far beyond what any sane layer needs, small enough that a
# hostile file cannot ask for shifts the kernels do not support.
MAX_EXP = 40
# Largest shift between a layer's accumulator and its output: the kernels shift int64
# accumulators (|sum| < 2**47), so a larger one overflows the rounding term.
MAX_SHIFT = 62
_INT32_LIMIT = 2**31
# Calibration samples for the activation exponents.
_CALIBRATION = 5000


@dataclass
class FixedLayer:
    """One dense layer: ``out = a . weights + bias`` at exponent ``input_exp + weight_exp``.

    ``output_exp`` is the exponent of the int8 activation a hidden layer produces; for the
    last layer it equals ``input_exp + weight_exp`` (the scores are the accumulators).
    """

    weights: NDArray[np.integer]
    bias: NDArray[np.int32]
    input_exp: int
    weight_exp: int
    output_exp: int

    def __post_init__(self) -> None:
        # Training updates these in place through flat views: they must be contiguous.
        self.weights = np.ascontiguousarray(self.weights)
        self.bias = np.ascontiguousarray(self.bias)

    @property
    def inputs(self) -> int:
        return int(self.weights.shape[0])

    @property
    def outputs(self) -> int:
        return int(self.weights.shape[1])

    @property
    def shift(self) -> int:
        """Right shift from the accumulator to the output activation."""
        return self.input_exp + self.weight_exp - self.output_exp

    def run(self, a: NDArray[np.integer], hidden: bool) -> NDArray[np.integer]:
        """int8 activations for a hidden layer, int32 scores for the last one."""
        out = np.empty((a.shape[0], self.outputs), dtype=np.int8 if hidden else np.int32)
        kernels.fixed_dense(a, self.weights, self.bias, self.shift if hidden else 0, hidden, out)
        return out


@dataclass
class FixedMLP(Classifier[np.int32]):
    """A fixed-point MLP with ReLU hidden layers, ready for integer-only inference (in
    chunks of ``CHUNK_ROWS`` rows: that bounds the buffers on large test sets)."""

    SCORE_DTYPE = np.int32

    layers: list[FixedLayer]
    input_offset: NDArray[np.uint8]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Shapes, dtypes and exponents fit together (raises :class:`ConfigError`)."""
        if not self.layers:
            raise ConfigError("a fixed-point model needs at least one layer")
        dtypes = {layer.weights.dtype for layer in self.layers}
        if len(dtypes) != 1 or dtypes.pop() not in (np.dtype(np.int8), np.dtype(np.int16)):
            raise ConfigError("fixed-point weights must all be int8 or all be int16")
        if self.input_offset.dtype != np.uint8 or self.input_offset.shape != (
            self.layers[0].inputs,
        ):
            raise ConfigError(
                f"input offset must be uint8 of shape ({self.layers[0].inputs},), got "
                f"{self.input_offset.dtype} {self.input_offset.shape}"
            )
        for index, layer in enumerate(self.layers):
            if layer.weights.ndim != 2 or layer.bias.shape != (layer.outputs,):
                raise ConfigError(f"layer {index}: bias shape {layer.bias.shape} does not fit")
            if layer.bias.dtype != np.int32:
                raise ConfigError(f"layer {index}: bias must be int32, got {layer.bias.dtype}")
            exps = (layer.input_exp, layer.weight_exp, layer.output_exp)
            if any(abs(e) > MAX_EXP for e in exps) or abs(layer.shift) > MAX_SHIFT:
                raise ConfigError(
                    f"layer {index}: exponents {exps} are out of range (each within "
                    f"+-{MAX_EXP}, input + weight - output within +-{MAX_SHIFT})"
                )
        for previous, layer in pairwise(self.layers):
            if layer.inputs != previous.outputs or layer.input_exp != previous.output_exp:
                raise ConfigError(
                    f"layers do not chain: {previous.outputs} outputs at exponent "
                    f"{previous.output_exp} feed {layer.inputs} inputs at {layer.input_exp}"
                )
        last = self.layers[-1]
        if self.layers[0].input_exp != INPUT_EXP or last.shift != 0:
            raise ConfigError(
                f"input exponent must be {INPUT_EXP} and the last layer must output its "
                "accumulators (output_exp = input_exp + weight_exp)"
            )

    @property
    def layer_sizes(self) -> list[int]:
        return [self.layers[0].inputs] + [layer.outputs for layer in self.layers]

    @property
    def weight_bits(self) -> int:
        return 8 * self.layers[0].weights.dtype.itemsize

    @property
    def params(self) -> int:
        return sum(layer.weights.size + layer.bias.size for layer in self.layers)

    @property
    def score_exp(self) -> int:
        """Exponent of the int32 class scores."""
        return self.layers[-1].output_exp

    @property
    def nbytes(self) -> int:
        """Bytes of the model's own tensors."""
        tensors = [t for layer in self.layers for t in (layer.weights, layer.bias)]
        return self.input_offset.nbytes + sum(t.nbytes for t in tensors)

    def copy(self) -> FixedMLP:
        layers = [
            replace(layer, weights=layer.weights.copy(), bias=layer.bias.copy())
            for layer in self.layers
        ]
        return FixedMLP(layers, self.input_offset.copy())

    def input_activations(self, x: NDArray[np.uint8]) -> NDArray[np.int8]:
        """``sat8((x - mu + 1) >> 1)``: centred pixels at exponent 7 (one int16 scratch)."""
        check_inputs(x, self.layers[0].inputs)
        centred = np.subtract(x, self.input_offset, dtype=np.int16)
        centred += 1
        centred >>= 1
        np.clip(centred, -ACT_MAX, ACT_MAX, out=centred)
        return centred.astype(np.int8)

    def forward(self, a: NDArray[np.int8], start: int = 0) -> NDArray[np.integer]:
        """Run layers ``start..`` on int8 activations; the int32 scores come out."""
        out: NDArray[np.integer] = a
        for index in range(start, len(self.layers)):
            out = self.layers[index].run(out, hidden=index < len(self.layers) - 1)
        return out

    def hidden(self, x: NDArray[np.uint8], stop: int) -> NDArray[np.int8]:
        """The int8 activations entering layer ``stop`` (the inputs for ``stop = 0``)."""
        a = self.input_activations(x)
        for index in range(stop):
            a = self.layers[index].run(a, hidden=True).astype(np.int8, copy=False)
        return a

    def scores_chunk(self, x: NDArray[np.uint8]) -> NDArray[np.int32]:
        return self.forward(self.input_activations(x)).astype(np.int32, copy=False)


def qmax(weight_bits: int) -> int:
    """Largest weight magnitude: the range is symmetric (no -2**(b-1))."""
    return (1 << (weight_bits - 1)) - 1


def quantize(model: FloatMLP, x_calibration: NDArray[np.uint8], weight_bits: int = 16) -> FixedMLP:
    """The fixed-point twin of a float MLP.

    Each layer's weight exponent is the largest that fits its largest weight in
    ``weight_bits`` and keeps every unit's worst-case sum (``sum|w| * 128 + |b|``) below
    2**31, so an int32 accumulator never overflows. Each hidden activation exponent is
    the one (of the three that keep the calibration maximum within a factor 4 of 127)
    with the least squared error on ``x_calibration`` (at most 5,000 rows are used).
    """
    if weight_bits not in WEIGHT_BITS:
        raise ConfigError(f"weight bits must be one of {WEIGHT_BITS}, got {weight_bits}")
    offset = np.clip(np.rint(model.input_mean), 0, 255).astype(np.uint8)
    weights, biases = _fold_input_scaling(model, offset)
    activations = _float_activations(weights, biases, x_calibration[:_CALIBRATION], offset)
    dtype = np.int16 if weight_bits == 16 else np.int8
    layers = []
    input_exp = INPUT_EXP
    for index, (w, b) in enumerate(zip(weights, biases, strict=True)):
        weight_exp = _weight_exp(w, b, input_exp, qmax(weight_bits))
        last = index == len(weights) - 1
        output_exp = input_exp + weight_exp if last else _activation_exp(activations[index])
        layers.append(
            FixedLayer(
                np.clip(np.rint(w * 2.0**weight_exp), -qmax(weight_bits), qmax(weight_bits)).astype(
                    dtype
                ),
                _saturate32(np.rint(b * 2.0 ** (input_exp + weight_exp))),
                input_exp,
                weight_exp,
                output_exp,
            )
        )
        input_exp = output_exp
    return FixedMLP(layers, offset)


def dequantize(model: FixedMLP) -> FloatMLP:
    """The float MLP a fixed-point model stands for (the start of backprop fine-tuning)."""
    weights = [
        (layer.weights * 2.0**-layer.weight_exp).astype(np.float32) for layer in model.layers
    ]
    weights[0] *= np.float32(255 / 256)
    biases = [
        (layer.bias * 2.0 ** -(layer.input_exp + layer.weight_exp)).astype(np.float32)
        for layer in model.layers
    ]
    return FloatMLP(weights, biases, model.input_offset.astype(np.float32))


def _fold_input_scaling(
    model: FloatMLP, offset: NDArray[np.uint8]
) -> tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]]:
    """Float layers that take ``(x - offset) / 256`` exactly like the model takes its inputs."""
    weights = [w.astype(np.float64) for w in model.weights]
    biases = [b.astype(np.float64) for b in model.biases]
    shift = (offset.astype(np.float64) - model.input_mean) / 255.0
    biases[0] = biases[0] + shift @ weights[0]
    weights[0] = weights[0] * (256 / 255)
    return weights, biases


def _float_activations(
    weights: list[NDArray[np.float64]],
    biases: list[NDArray[np.float64]],
    x: NDArray[np.uint8],
    offset: NDArray[np.uint8],
) -> list[NDArray[np.float64]]:
    """Hidden activations of the float layers on the calibration rows."""
    a = (x.astype(np.float64) - offset) / 256.0
    hidden = []
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        a = np.maximum(a @ w + b, 0.0)
        hidden.append(a)
    return hidden


def _weight_exp(w: NDArray[np.float64], b: NDArray[np.float64], input_exp: int, limit: int) -> int:
    peak = float(np.abs(w).max(initial=0.0))
    exp = int(np.floor(np.log2(limit / peak))) if peak > 0 else 0
    while exp > -MAX_EXP:
        rows = np.abs(np.rint(w * 2.0**exp)).sum(axis=0) * (ACT_MAX + 1)
        bias = np.abs(np.rint(b * 2.0 ** (input_exp + exp)))
        if float((rows + bias).max(initial=0.0)) < _INT32_LIMIT:
            break
        exp -= 1
    return max(-MAX_EXP, min(MAX_EXP - input_exp, exp))


def _activation_exp(a: NDArray[np.float64]) -> int:
    peak = float(a.max(initial=0.0))
    if peak <= 0:
        return 0
    first = int(np.floor(np.log2(ACT_MAX / peak)))
    errors = [
        float(np.mean((np.clip(np.rint(a * 2.0**e), 0, ACT_MAX) * 2.0**-e - a) ** 2))
        for e in range(first, first + 3)
    ]
    return max(-MAX_EXP, min(MAX_EXP, first + int(np.argmin(errors))))


def _saturate32(values: NDArray[np.float64]) -> NDArray[np.int32]:
    return np.clip(values, -(_INT32_LIMIT - 1), _INT32_LIMIT - 1).astype(np.int32)
