"""Fixed-point forward-gradient training (QZO-FF): two-sided sign-m-SPSA on integer weights.

After Feng et al., "Stepping Forward on the Last Mile" (NeurIPS 2024, arXiv 2411.04036);
choices, defaults and measurements are in docs/algorithms.md. One step on a batch:

1. The frozen layers run once; their int8 output feeds every perturbed pass of the step.
2. For k = 1..m, a perturbation ``z_k`` (sparse Rademacher, regenerated from
   ``(seed, step, k)`` by splitmix64, never stored) is added in place: ``W + eps z_k`` gives
   the batch's integer hinge loss ``L+``, then ``W - eps z_k`` gives ``L-``, then ``W`` is
   restored exactly (trainable weights keep ``eps`` of headroom inside their integer range,
   so a perturbation never saturates and can always be undone).
3. ``W <- sat(W - lr_t / m * sum_k sign(L+ - L-) z_k)``, each ``z_k`` regenerated once more,
   the division rounded stochastically (unbiased) or to nearest.

Training memory is the model, the frozen layers' output for one batch and m signs: no
gradient, no stored activations, no copy of the weights.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from bitfleet import kernels
from bitfleet.errors import ConfigError
from bitfleet.fixedpoint import FixedMLP, qmax
from bitfleet.memory import peak_bytes
from bitfleet.options import require_int, require_type
from bitfleet.prng import splitmix64
from bitfleet.training import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_SEED, Loop, Trainer

SCHEDULES = ("constant", "linear", "cosine")
# Fractional bits of the fixed-point update multiplier (lr / m in weight steps).
UPDATE_FRACTION_BITS = 16
# eps and lr are given in steps of an int16 weight; an int8 weight's step is 2**8 larger.
REFERENCE_BITS = 16
_FULL_DENSITY = 1 << 32
# Upper bounds of the options (docs/algorithms.md measured m <= 128 and lr <= 4096): eps and
# lr beyond the int16 range cannot move a weight further.
MAX_PERTURBATIONS = 4096
MAX_LR = 65536.0
MAX_MARGIN = 1000.0


@dataclass(frozen=True)
class ForwardConfig:
    """Hyperparameters; defaults are the validated best (docs/algorithms.md)."""

    perturbations: int = 64
    train_layers: int = 1
    density: float = 1.0
    eps: int = 4096
    lr: float = 2048.0
    schedule: str = "cosine"
    stochastic_rounding: bool = True
    train_bias: bool = True
    margin: float = 1.0
    epochs: int = 100
    batch_size: int = 100
    seed: int = 0

    def check_options(self) -> None:
        """Check every option's type and the ranges that hold for any model: job
        hyperparameters arrive as JSON, and are checked here before a model is at hand."""
        require_int("perturbations", self.perturbations, 1, MAX_PERTURBATIONS)
        require_int("epochs", self.epochs, 1, MAX_EPOCHS)
        require_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        require_int("seed", self.seed, 0, MAX_SEED)
        require_type("train_layers", self.train_layers, integral=True)
        require_type("eps", self.eps, integral=True)
        if not 1 <= self.eps <= qmax(REFERENCE_BITS):
            raise ConfigError(
                f"eps {self.eps} is out of range: use 1 to {qmax(REFERENCE_BITS)} int16 weight "
                "steps (int8 models need at least 128)"
            )
        require_type("density", self.density, integral=False)
        if not 0 < self.density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {self.density}")
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {reprlib.repr(self.schedule)}; use one of {SCHEDULES}"
            )
        require_type("lr", self.lr, integral=False)
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(
                f"lr must be > 0 and at most {MAX_LR:g} int16 weight steps, got {self.lr}"
            )
        require_type("margin", self.margin, integral=False)
        if not 0 <= self.margin <= MAX_MARGIN:
            raise ConfigError(f"margin must be in [0, {MAX_MARGIN:g}], got {self.margin}")
        for name in ("stochastic_rounding", "train_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{name} must be true or false, got {reprlib.repr(getattr(self, name))}"
                )

    def validate(self, model: FixedMLP) -> None:
        """Check every option, then against the model it will train (clear ConfigErrors)."""
        self.check_options()
        if not 0 <= self.train_layers <= len(model.layers):
            raise ConfigError(
                f"train_layers must be 0 (all) to {len(model.layers)} for this model, "
                f"got {self.train_layers}"
            )
        eps = self.eps_steps(model.weight_bits)
        if not 1 <= eps <= qmax(model.weight_bits) // 4:
            raise ConfigError(
                f"eps {self.eps} is {eps} steps of an int{model.weight_bits} weight: use a "
                f"value giving 1 to {qmax(model.weight_bits) // 4} steps"
            )

    def eps_steps(self, weight_bits: int) -> int:
        """The perturbation in steps of the model's own weights."""
        return round(self.eps * 2.0 ** (weight_bits - REFERENCE_BITS))

    def lr_scale(self, step: int, total: int) -> float:
        """The schedule's factor on ``lr`` at ``step`` of ``total``."""
        progress = step / max(1, total)
        if self.schedule == "linear":
            return 1.0 - progress
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


@dataclass
class _Trainable:
    """One trainable tensor of the model, updated in place.

    ``unit`` is one weight step in this tensor's integers (a bias sits at the
    accumulator's scale: one weight step on an input of 1.0); ``offset`` is its first
    counter in the perturbation stream; ``low``/``high`` keep ``eps`` of headroom.
    """

    values: NDArray[np.integer]
    unit: int
    offset: int
    low: int
    high: int


def step_keys(seed: int, step: int, count: int) -> NDArray[np.uint64]:
    """``count`` 64-bit keys for ``step`` under ``seed``: perturbation k uses key k.

    Entry i of perturbation k is drawn at counter ``key_k + i``; nothing else is needed
    to regenerate it, on this device or any other.
    """
    seed_key = splitmix64(np.full(1, seed % 2**64, dtype=np.uint64))
    step_key = splitmix64(seed_key + np.uint64(step % 2**64))
    counters = np.arange(count, dtype=np.uint64)
    counters += step_key
    return splitmix64(counters)


def hinge_sum(scores: NDArray[np.integer], y: NDArray[np.integer], margin: int) -> int:
    """Multi-class hinge (Weston-Watkins) in integers, summed over the batch:
    ``sum_rows sum_j!=y max(0, s_j - s_y + margin)``."""
    rows = np.arange(len(y))
    gaps = scores.astype(np.int64) - scores[rows, y].astype(np.int64)[:, None] + margin
    gaps[rows, y] = 0
    return int(np.maximum(gaps, 0).sum())


@dataclass
class ForwardTrainer(Trainer[FixedMLP]):
    """Trains a :class:`FixedMLP` in place with sign-m-SPSA (the steps above)."""

    model: FixedMLP
    config: ForwardConfig = field(default_factory=ForwardConfig)

    def __post_init__(self) -> None:
        self.config.validate(self.model)
        layers = len(self.model.layers)
        self.first = layers - self.config.train_layers if self.config.train_layers else 0
        self.eps = self.config.eps_steps(self.model.weight_bits)
        self.margin = round(self.config.margin * 2.0**self.model.score_exp)
        self.density = min(_FULL_DENSITY, max(1, round(self.config.density * _FULL_DENSITY)))
        self.trainables = self._trainables()
        self.step = 0
        self.forward_passes = 0

    def _trainables(self) -> list[_Trainable]:
        """The trainable tensors, clipped once into their headroom range."""
        trainables = []
        offset = 0
        weight_limit = qmax(self.model.weight_bits) - self.eps
        for layer in self.model.layers[self.first :]:
            tensors = [(layer.weights, 1, weight_limit)]
            if self.config.train_bias:
                unit = 1 << layer.input_exp
                tensors.append((layer.bias, unit, 2**31 - 1 - self.eps * unit))
            for values, unit, limit in tensors:
                np.clip(values, -limit, limit, out=values)
                trainables.append(_Trainable(values, unit, offset, -limit, limit))
                offset += values.size
        return trainables

    def _perturb(self, key: NDArray[np.uint64], sign: int) -> None:
        """``W += sign * eps * z`` for the perturbation of ``key`` (exact: no saturation)."""
        coef = np.array([sign], dtype=np.int64)
        for t in self.trainables:
            info = np.iinfo(t.values.dtype)
            kernels.add_perturbations(
                t.values,
                key,
                coef,
                t.offset,
                self.density,
                self.eps * t.unit,
                0,
                0,
                False,
                int(info.min),
                int(info.max),
            )

    def _loss(self, a: NDArray[np.int8], y: NDArray[np.integer]) -> tuple[int, int]:
        """Integer hinge loss of the batch and its correct count at the current weights."""
        scores = self.model.forward(a, self.first)
        return hinge_sum(scores, y, self.margin), int(np.sum(np.argmax(scores, axis=1) == y))

    def train_batch(
        self, x: NDArray[np.uint8], y: NDArray[np.integer], lr_scale: float = 1.0
    ) -> int:
        """One sign-m-SPSA step; returns the correct count at the first perturbed weights."""
        cfg = self.config
        a = self.model.hidden(x, self.first)
        keys = step_keys(cfg.seed, self.step, cfg.perturbations + 1)
        coefs = np.zeros(cfg.perturbations, dtype=np.int64)
        correct = 0
        for k in range(cfg.perturbations):
            key = keys[k : k + 1]
            self._perturb(key, 1)
            plus, hits = self._loss(a, y)
            correct = hits if k == 0 else correct
            self._perturb(key, -2)
            minus, _ = self._loss(a, y)
            self._perturb(key, 1)
            coefs[k] = -np.sign(plus - minus)
        self._update(keys[:-1], coefs, cfg.lr * lr_scale, int(keys[-1]))
        self.step += 1
        self.forward_passes += 2 * cfg.perturbations * len(y)
        return correct

    def _update(
        self, keys: NDArray[np.uint64], coefs: NDArray[np.int64], lr: float, round_key: int
    ) -> None:
        """``W += lr / m * sum_k coefs_k z_k``, in fixed point, saturating into the headroom."""
        if not coefs.any():
            return
        steps = lr * 2.0 ** (self.model.weight_bits - REFERENCE_BITS) / len(coefs)
        for t in self.trainables:
            multiplier = round(steps * t.unit * 2**UPDATE_FRACTION_BITS)
            kernels.add_perturbations(
                t.values,
                keys,
                coefs,
                t.offset,
                self.density,
                multiplier,
                UPDATE_FRACTION_BITS,
                round_key,
                self.config.stochastic_rounding,
                t.low,
                t.high,
            )

    def _loop(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> Loop[FixedMLP]:
        """Epochs under the learning-rate schedule; the last epoch's model is returned.

        Keeping the best epoch would cost a second copy of the trained tensors, and under
        the decaying schedule the last epoch is the best within noise (docs/algorithms.md).
        """
        self._check_data(x, y)
        cfg = self.config

        def step(xb: NDArray[np.uint8], yb: NDArray[np.integer], done: int, total: int) -> int:
            return self.train_batch(xb, yb, cfg.lr_scale(done, total))

        rng = np.random.default_rng(cfg.seed)
        return Loop(cfg.epochs, cfg.batch_size, rng, step, lambda: self.model)

    def _check_data(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> None:
        sizes = self.model.layer_sizes
        if x.ndim != 2 or x.shape[1] != sizes[0]:
            raise ConfigError(
                f"the data has {x.shape[-1]} features but the model expects {sizes[0]}: "
                "adapt it on data shaped like its training data"
            )
        if len(y) and int(np.max(y)) >= sizes[-1]:
            raise ConfigError(
                f"the data has labels up to {int(np.max(y))} but the model has {sizes[-1]} classes"
            )


@dataclass(frozen=True)
class MemoryReport:
    training_bytes: int
    inference_bytes: int

    @property
    def ratio(self) -> float:
        return self.training_bytes / max(1, self.inference_bytes)


def measure_memory(
    model: FixedMLP, config: ForwardConfig, x: NDArray[np.uint8], y: NDArray[np.integer]
) -> MemoryReport:
    """Peak bytes of one training step vs inference on the same model and batch.

    Each side counts a fresh copy of the model (its own tensors), the trainer's state and
    every working buffer, measured by tracemalloc; the input batch is excluded from both.
    Kernels are compiled first so that JIT work is not measured.
    """
    warm = model.copy()
    warm.scores(x)
    ForwardTrainer(warm, config).train_batch(x, y)
    inference = peak_bytes(lambda: model.copy().scores(x))
    training = peak_bytes(lambda: ForwardTrainer(model.copy(), config).train_batch(x, y))
    return MemoryReport(training, inference)
