"""Bit-flip training: gradient-free, integer-only training of binary and ternary MLPs.

After Di Castro et al., arXiv 2410.09734 ("Gradient-Free Neural Network Training on the
Edge"); the rules are ours and documented in docs/algorithms.md. In short, per batch:

1. Forward in integers: centred inputs, ``pre = a . W``, hidden ``h = sign(pre)``.
2. Output error per sample, summing to zero: the strongest rival class ``j`` and the true
   class ``y`` get ``-mag`` and ``+mag`` when ``s_j - s_y + margin >= 0`` (graded ``mag``).
3. Hidden errors by logic from the layer above: ``e_h = e . W`` through the binary weights,
   kept only inside a window of units near their threshold (``|pre| < mean|pre| / 2``).
4. Votes ``D = e^T . a``: for each weight, the count of batch contributions ``a_i w_io``
   pushing output ``o`` the wrong way minus those pushing it the right way.
5. Each layer's votes are scaled by a power of two, stochastically rounded to integers and
   added to a K-bit saturating counter per weight; the weight is the counter's sign (its
   "flip" happens when the counter crosses zero). K = 1 is a bare binary weight.

Everything in the training step is integer arithmetic (products run on an exact integer
engine, :mod:`bitfleet.intmath`); the only randomness is an integer PRNG under a seed.
"""

from __future__ import annotations

import reprlib
import time
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.bitmlp import ENCODINGS, BitMLP, PackedLayer
from bitfleet.classifier import validate_layer_sizes
from bitfleet.errors import ConfigError
from bitfleet.intmath import max_abs
from bitfleet.kernels.reference import MAX_ROUNDING_SHIFT
from bitfleet.options import require_int, require_type
from bitfleet.training import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_SEED, Loop, Trainer

# Learning rates are fixed point with 8 fractional bits so the step stays integer.
LR_FRACTION_BITS = 8
# Upper bounds of the bit-flip options (those of every trainer are in bitfleet.training):
# lr = 256 already moves a counter across its whole range in one vote.
MAX_LR = 256.0
MAX_DIVISOR = 1 << 10


@dataclass(frozen=True)
class BitFlipConfig:
    """Hyperparameters; defaults are the measured best (docs/algorithms.md)."""

    encoding: str = "binary"
    state_bits: int = 5
    epochs: int = 20
    batch_size: int = 100
    lr: float = 2.0
    lr_decay: float = 0.9
    margin_divisor: int = 4
    max_error: int = 4
    window_divisor: int = 2
    ternary_zero_fraction: int = 16
    seed: int = 0

    def validate(self) -> None:
        """Check every option's type and range: job hyperparameters arrive as JSON, and a
        value that passes here must train without error on every agent."""
        if not isinstance(self.encoding, str) or self.encoding not in ENCODINGS:
            raise ConfigError(
                f"unknown weight encoding {reprlib.repr(self.encoding)}; use one of {ENCODINGS}"
            )
        lowest = 2 if self.encoding == "ternary" else 1
        require_type("state_bits", self.state_bits, integral=True)
        if not lowest <= self.state_bits <= 16:
            raise ConfigError(
                f"state_bits {self.state_bits} is out of range for {self.encoding} weights: "
                f"use {lowest}..16 (the weight's own bits included)"
            )
        require_int("epochs", self.epochs, 1, MAX_EPOCHS)
        require_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        for name in ("margin_divisor", "max_error", "window_divisor", "ternary_zero_fraction"):
            require_int(name, getattr(self, name), 1, MAX_DIVISOR)
        require_int("seed", self.seed, 0, MAX_SEED)
        require_type("lr", self.lr, integral=False)
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"lr must be > 0 and at most {MAX_LR:g}, got {self.lr}")
        require_type("lr_decay", self.lr_decay, integral=False)
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay}")

    @property
    def lr_fixed(self) -> int:
        """The initial learning rate in 1/256 units (set once, outside the training step)."""
        return max(1, round(self.lr * (1 << LR_FRACTION_BITS)))

    @property
    def decay_fixed(self) -> int:
        return round(self.lr_decay * (1 << LR_FRACTION_BITS))


@dataclass
class CounterLayer:
    """Training state of one layer: a K-bit saturating counter per weight.

    ``weights`` is kept in step with the counters by the update kernel; it is the 1- or
    2-bit model this state stands for, and all that is ever used for inference or sent.
    """

    counters: NDArray[np.int16]
    state_bits: int
    encoding: str
    zero_fraction: int
    weights: NDArray[np.int8] = field(init=False)

    def __post_init__(self) -> None:
        self.weights = np.empty(self.counters.shape, dtype=np.int8)
        self.step(np.zeros(self.counters.shape, dtype=np.int32), 1, 0)

    @property
    def low(self) -> int:
        return -(1 << (self.state_bits - 1))

    @property
    def high(self) -> int:
        return (1 << (self.state_bits - 1)) - 1

    @property
    def zero_threshold(self) -> int:
        """Counters in ``[-t, t - 1]`` make a ternary weight 0; binary weights use t = 0."""
        if self.encoding == "binary":
            return 0
        return max(1, (1 << (self.state_bits - 1)) // self.zero_fraction)

    def weakest(self, values: NDArray[np.integer]) -> NDArray[np.int16]:
        """Counters in the weakest state that still reads as ``values``: one vote from a flip."""
        t = self.zero_threshold
        return np.select([values > 0, values < 0], [t, -t - 1], default=0).astype(np.int16)

    def adopt(self, values: NDArray[np.integer]) -> None:
        """Take new weight values (e.g. a voted global model), keeping the confidence of
        counters that already agree and putting the others in the weakest state."""
        agree = self.weights == values
        self.counters = np.where(agree, self.counters, self.weakest(values)).astype(np.int16)
        self.step(np.zeros(self.counters.shape, dtype=np.int32), 1, 0)

    def distances(self) -> NDArray[np.int64]:
        """How far each counter sits beyond the weakest state of its weight's value (0 at it,
        and for zero-valued ternary weights): the confidence a 2-bit counter link rounds."""
        weakest = self.weakest(self.weights).astype(np.int64)
        return np.abs(self.counters.astype(np.int64) - weakest) * (self.weights != 0)

    def restore(
        self, values: NDArray[np.integer], strong: NDArray[np.bool_], levels: tuple[int, int]
    ) -> None:
        """Counters rebuilt from a 2-bit counter link: each weight's value at its weak or
        strong distance (``levels``) beyond that value's weakest state."""
        distance = np.where(strong, levels[1], levels[0]).astype(np.int64)
        counters = self.weakest(values).astype(np.int64) + np.sign(values) * distance
        self.counters = np.clip(counters, self.low, self.high).astype(np.int16)
        self.step(np.zeros(self.counters.shape, dtype=np.int32), 1, 0)

    def step(self, votes: NDArray[np.integer], lr_fixed: int, key: int) -> None:
        """Add the scaled, stochastically rounded votes and saturate.

        The largest vote maps to about ``lr * 2**(K - 8)`` counter units: dividing by the
        power of two just above ``max|votes|`` lets one learning rate serve every K. Votes
        so large that ``vote * lr`` would leave 30 bits drop their lowest bits first (below
        the rounding noise's resolution). ``key`` seeds the counter-based rounding noise.
        """
        peak_bits = max_abs(votes).bit_length()
        shift = peak_bits + LR_FRACTION_BITS + 8 - self.state_bits if peak_bits else 0
        pre_shift = max(0, peak_bits + lr_fixed.bit_length() - MAX_ROUNDING_SHIFT)
        pre_shift = max(pre_shift, shift - MAX_ROUNDING_SHIFT)
        kernels.counter_step(
            self.counters,
            self.weights,
            votes,
            lr_fixed,
            pre_shift,
            shift - pre_shift,
            key,
            self.low,
            self.high,
            self.zero_threshold,
        )


@dataclass
class BitFlipTrainer(Trainer[BitMLP]):
    """Trains a :class:`BitMLP` on uint8 features with the bit-flip rules above.

    ``fit`` returns the epoch's model that scored best on validation (without a validation
    split, the last epoch's), centred on the data's rounded mean (see :meth:`adopt`).
    """

    layer_sizes: list[int]
    config: BitFlipConfig = field(default_factory=BitFlipConfig)

    def __post_init__(self) -> None:
        validate_layer_sizes(self.layer_sizes)
        self.config.validate()
        self.rng = np.random.default_rng(self.config.seed)
        self.layers = [self._initial_layer(n_in, n_out) for n_in, n_out in self._shapes()]
        self.input_offset = np.zeros(self.layer_sizes[0], dtype=np.uint8)
        self.keep_offset = False
        self.lr_fixed = self.config.lr_fixed
        # Seconds per training-step phase, summed over batches, when a benchmark asks.
        self.phase_seconds: dict[str, float] | None = None

    def _shapes(self) -> list[tuple[int, int]]:
        return list(pairwise(self.layer_sizes))

    def _initial_layer(self, n_in: int, n_out: int) -> CounterLayer:
        """Random weights in the weakest states, so the first votes can flip them."""
        cfg = self.config
        layer = CounterLayer(
            np.zeros((n_out, n_in), np.int16),
            cfg.state_bits,
            cfg.encoding,
            cfg.ternary_zero_fraction,
        )
        signs = self.rng.integers(0, 2, size=(n_out, n_in)) * 2 - 1
        layer.adopt(signs)
        return layer

    def adopt(self, model: BitMLP, *, keep_offset: bool) -> None:
        """Continue from a (global) model: its weights and its input offset, which the
        next fits keep if ``keep_offset`` (a federated round keeps a final global offset)
        and replace by the data's rounded mean if not."""
        if model.layer_sizes != self.layer_sizes or model.encoding != self.config.encoding:
            raise ConfigError(
                f"model {model.encoding} {model.layer_sizes} does not match the trainer's "
                f"{self.config.encoding} {self.layer_sizes}"
            )
        for layer, packed in zip(self.layers, model.layers, strict=True):
            layer.adopt(packed.values())
        self.input_offset = model.input_offset.copy()
        self.keep_offset = keep_offset

    def model(self) -> BitMLP:
        """The current 1-/2-bit model (counters stay behind)."""
        packed = [PackedLayer.from_values(layer.weights, layer.encoding) for layer in self.layers]
        return BitMLP(packed, self.input_offset.copy())

    def _loop(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> Loop[BitMLP]:
        """Epochs with a learning-rate decay after each; the best epoch's model is kept."""
        self._check_data(x, y)
        if not self.keep_offset:
            self.input_offset = rounded_mean(x)
        cfg = self.config

        def decay() -> None:
            self.lr_fixed = max(1, (self.lr_fixed * cfg.decay_fixed) >> LR_FRACTION_BITS)

        def step(xb: NDArray[np.uint8], yb: NDArray[np.integer], _done: int, _total: int) -> int:
            return self.train_batch(xb, yb)

        return Loop(cfg.epochs, cfg.batch_size, self.rng, step, self.model, decay, keep=_same)

    def _check_data(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> None:
        if x.ndim != 2 or x.shape[1] != self.layer_sizes[0]:
            raise ConfigError(
                f"the data has {x.shape[-1]} features but the first layer expects "
                f"{self.layer_sizes[0]}: set --layers {x.shape[-1]},...,{self.layer_sizes[-1]}"
            )
        classes = int(np.max(y)) + 1 if len(y) else 0
        if classes > self.layer_sizes[-1]:
            raise ConfigError(
                f"the data has {classes} classes but the last layer has "
                f"{self.layer_sizes[-1]} outputs: set the last --layers size to {classes}"
            )

    def train_batch(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> int:
        """One integer training step on a batch; returns how many it classified correctly.
        With :attr:`phase_seconds` set, each phase's time is added to it (``bench kernels``)."""
        clock = _PhaseClock(self.phase_seconds)
        weights = [layer.weights for layer in self.layers]
        activations: list[NDArray[np.int16] | NDArray[np.int8]] = [
            x.astype(np.int16) - self.input_offset.astype(np.int16)
        ]
        # The forward pass is inference's, on the current weights packed: integer kernels.
        pre_activations = [pre.astype(np.int64) for pre in self.model().pre_activations(x)]
        for pre in pre_activations[:-1]:
            activations.append((pre >= 0).view(np.int8) * np.int8(2) - np.int8(1))
        scores = pre_activations[-1]
        clock.lap("forward")
        error = self._output_error(scores, y)
        clock.lap("error")
        for index in range(len(self.layers) - 1, -1, -1):
            votes = kernels.error_votes(error, activations[index])
            clock.lap("votes")
            if index > 0:
                error = kernels.error_votes(error.T, weights[index])
                error *= _window(pre_activations[index - 1], self.config.window_divisor)
                clock.lap("error")
            key = int(self.rng.integers(0, 1 << 62))
            self.layers[index].step(votes, self.lr_fixed, key)
            clock.lap("update")
        return int(np.sum(np.argmax(scores, axis=1) == y))

    def _output_error(self, scores: NDArray[np.int64], y: NDArray[np.integer]) -> NDArray[np.int64]:
        """Zero-sum, graded error: +mag on the true class, -mag on the strongest rival."""
        cfg = self.config
        rows = np.arange(len(y))
        margin = max(1, self.layer_sizes[-2] // cfg.margin_divisor)
        quantum = max(1, margin // 2)
        true_score = scores[rows, y]
        rivals = scores.copy()
        rivals[rows, y] = np.iinfo(np.int64).min
        rival = np.argmax(rivals, axis=1)
        gap = rivals[rows, rival] - true_score + margin
        magnitude = np.clip((gap + quantum) // quantum, 1, cfg.max_error) * (gap >= 0)
        error = np.zeros_like(scores)
        error[rows, y] = magnitude
        error[rows, rival] = -magnitude
        return error


class _PhaseClock:
    """Adds the seconds since the last lap to ``totals[phase]``; does nothing without."""

    def __init__(self, totals: dict[str, float] | None) -> None:
        self.totals = totals
        self.last = time.perf_counter() if totals is not None else 0.0

    def lap(self, phase: str) -> None:
        if self.totals is not None:
            now = time.perf_counter()
            self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
            self.last = now


def _same(model: BitMLP) -> BitMLP:
    """A best epoch's model as it is: :meth:`BitFlipTrainer.model` already builds a new one."""
    return model


def _window(pre: NDArray[np.int64], divisor: int) -> NDArray[np.bool_]:
    """Units near threshold: ``|pre| < mean|pre| / divisor``, in integers."""
    magnitude = np.abs(pre)
    return magnitude * (divisor * magnitude.size) < int(magnitude.sum())


def rounded_mean(x: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Per-feature training mean rounded to an integer (integer division, round half up)."""
    total = x.sum(axis=0, dtype=np.int64)
    return ((2 * total + len(x)) // (2 * len(x))).astype(np.uint8)
