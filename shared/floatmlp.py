"""Float32 backprop baseline: the full-precision counterpart every bit accuracy is shown beside.

Plain numpy: ReLU hidden layers, softmax cross-entropy, SGD with momentum, inputs centred
on the training mean and scaled to about [-1, 1]. Same layer sizes and validation protocol
as the bit trainer, so the two numbers compare like for like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from bitfleet.classifier import Classifier, validate_layer_sizes
from bitfleet.errors import ConfigError
from bitfleet.training import Loop, Trainer


@dataclass(frozen=True)
class FloatConfig:
    epochs: int = 8
    batch_size: int = 100
    lr: float = 0.05
    momentum: float = 0.9
    lr_decay: float = 0.9
    seed: int = 0
    # Layers updated, counted from the output (0 = all): fine-tuning only the last k.
    train_layers: int = 0


@dataclass
class FloatMLP(Classifier[np.float32]):
    """ReLU layers over inputs centred on ``input_mean``; the logits are the class scores."""

    CHUNK_ROWS = 4096
    SCORE_DTYPE = np.float32

    weights: list[NDArray[np.float32]]
    biases: list[NDArray[np.float32]]
    input_mean: NDArray[np.float32]

    @property
    def layer_sizes(self) -> list[int]:
        return [self.weights[0].shape[0]] + [w.shape[1] for w in self.weights]

    @property
    def params(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True))

    def prepare(self, x: NDArray[np.uint8]) -> NDArray[np.float32]:
        return (x.astype(np.float32) - self.input_mean) / np.float32(255.0)

    def forward(self, inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Activations of every layer (inputs first, logits last)."""
        activations = [inputs]
        for index, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = activations[-1] @ w + b
            activations.append(z if index == len(self.weights) - 1 else np.maximum(z, 0))
        return activations

    def scores_chunk(self, x: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The logits."""
        return self.forward(self.prepare(x))[-1]

    def copy(self) -> FloatMLP:
        return FloatMLP(
            [w.copy() for w in self.weights], [b.copy() for b in self.biases], self.input_mean
        )


@dataclass
class FloatTrainer(Trainer[FloatMLP]):
    """Backprop training from scratch, or fine-tuning of ``init`` (its input mean is kept);
    ``fit`` returns a copy of the model from the best validation epoch."""

    layer_sizes: list[int]
    config: FloatConfig = field(default_factory=FloatConfig)
    init: FloatMLP | None = None

    def __post_init__(self) -> None:
        validate_layer_sizes(self.layer_sizes)
        if self.init is not None and self.init.layer_sizes != self.layer_sizes:
            raise ConfigError(
                f"the initial model has layers {self.init.layer_sizes}, not {self.layer_sizes}"
            )
        if not 0 <= self.config.train_layers <= len(self.layer_sizes) - 1:
            raise ConfigError(
                f"train_layers must be 0 (all) to {len(self.layer_sizes) - 1}, "
                f"got {self.config.train_layers}"
            )
        self.rng = np.random.default_rng(self.config.seed)

    @property
    def first_trained(self) -> int:
        """Index of the first layer that is updated."""
        layers = len(self.layer_sizes) - 1
        return layers - self.config.train_layers if self.config.train_layers else 0

    def _initial_model(self, x: NDArray[np.uint8]) -> FloatMLP:
        """A copy of ``init``, else He-initialised weights and zero biases."""
        if self.init is not None:
            return self.init.copy()
        weights = [
            (self.rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)
            for n_in, n_out in pairwise(self.layer_sizes)
        ]
        biases = [np.zeros(n, dtype=np.float32) for n in self.layer_sizes[1:]]
        return FloatMLP(weights, biases, x.mean(axis=0).astype(np.float32))

    def _loop(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> Loop[FloatMLP]:
        """SGD epochs with a learning-rate decay after each; the best epoch's copy is kept."""
        cfg = self.config
        model = self._initial_model(x)
        velocity = [np.zeros_like(p) for p in model.weights + model.biases]
        lr = cfg.lr

        def step(xb: NDArray[np.uint8], yb: NDArray[np.integer], _done: int, _total: int) -> int:
            return self._step(model, velocity, xb, yb, lr)

        def decay() -> None:
            nonlocal lr
            lr *= cfg.lr_decay

        return Loop(cfg.epochs, cfg.batch_size, self.rng, step, lambda: model, decay, FloatMLP.copy)

    def _step(
        self,
        model: FloatMLP,
        velocity: list[NDArray[np.float32]],
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        lr: float,
    ) -> int:
        """One backprop step with momentum; returns the batch's correct count."""
        activations = model.forward(model.prepare(x))
        logits = activations[-1]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        delta = probs
        delta[np.arange(len(y)), y] -= 1.0
        delta /= len(y)
        layers = len(model.weights)
        for index in range(layers - 1, self.first_trained - 1, -1):
            grad_w = activations[index].T @ delta
            grad_b = delta.sum(axis=0)
            if index > self.first_trained:
                delta = (delta @ model.weights[index].T) * (activations[index] > 0)
            self._apply(model.weights[index], velocity[index], grad_w, lr)
            self._apply(model.biases[index], velocity[layers + index], grad_b, lr)
        return int(np.sum(np.argmax(logits, axis=1) == y))

    def _apply(
        self,
        param: NDArray[np.float32],
        vel: NDArray[np.float32],
        grad: NDArray[np.float32],
        lr: float,
    ) -> None:
        """SGD with momentum on one tensor, in place."""
        vel *= np.float32(self.config.momentum)
        vel -= lr * grad
        param += vel
