"""Pretraining for forward-gradient (QZO-FF) jobs: a float model by backprop, quantized.

What the cloud side does before devices adapt a model: ``bitfleet pretrain``, the forward
demo and ``bitfleet lastmile`` all start here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from bitfleet.datasets import carve_validation
from bitfleet.fixedpoint import FixedMLP, quantize
from bitfleet.floatmlp import FloatConfig, FloatMLP, FloatTrainer

# Hidden units of a pretrained model, unless told: small enough for a board to adapt.
DEFAULT_HIDDEN = 128


def pretrain(
    x: NDArray[np.uint8],
    y: NDArray[np.int64],
    layers: list[int],
    weight_bits: int,
    config: FloatConfig,
    val_size: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[FloatMLP, FixedMLP]:
    """Backprop on ``x`` (epoch chosen on its validation tail), then quantize."""
    x_fit, y_fit, x_val, y_val = carve_validation(x, y, val_size)
    trainer = FloatTrainer(layers, config)
    float_model = trainer.fit(x_fit, y_fit, x_val, y_val, on_batch=on_batch)
    return float_model, quantize(float_model, x_fit, weight_bits)
