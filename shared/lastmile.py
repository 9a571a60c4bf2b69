"""The last-mile study's data hygiene and its backprop baseline, apart from the CLI.

A device's pool is the last ``samples + val_size`` images of the training split: never used
for pretraining. Its first ``samples`` (shifted) are what every method adapts on, its last
``val_size`` (shifted) choose the backprop learning rate and epoch, and the shifted test
split is only scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.floatmlp import FloatConfig, FloatMLP, FloatTrainer
from bitfleet.training import OnBatch

# Backprop fine-tuning: every layer, a few epochs, the learning rate chosen on validation.
BACKPROP_EPOCHS = 10
BACKPROP_LRS = (0.01, 0.03, 0.1, 0.3)

Images = NDArray[np.uint8]
Labels = NDArray[np.int64]


@dataclass(frozen=True)
class LastMileSplit:
    """Clean pretraining data, and the device's shifted adaptation, validation and test
    sets, disjoint by construction."""

    x_pretrain: Images
    y_pretrain: Labels
    x_adapt: Images
    y_adapt: Labels
    x_val: Images
    y_val: Labels
    x_test: Images
    y_test: Labels


def split_last_mile(
    base: Dataset, samples: int, val_size: int, shift: Callable[[Images], Images]
) -> LastMileSplit:
    """The pool at the end of the training split, shifted; ConfigError if it would leave
    nothing to pretrain on."""
    pool = samples + val_size
    if pool >= len(base.y_train):
        raise ConfigError(
            f"--samples {samples} plus --val-size {val_size} must leave pretraining "
            f"data out of the {len(base.y_train)} training samples: choose smaller ones"
        )
    x_pool, y_pool = shift(base.x_train[-pool:]), base.y_train[-pool:]
    return LastMileSplit(
        x_pretrain=base.x_train[:-pool],
        y_pretrain=base.y_train[:-pool],
        x_adapt=x_pool[:samples],
        y_adapt=y_pool[:samples],
        x_val=x_pool[samples:],
        y_val=y_pool[samples:],
        x_test=shift(base.x_test),
        y_test=base.y_test,
    )


def fine_tune(
    start: FloatMLP,
    split: LastMileSplit,
    seed: int,
    lrs: Sequence[float] = BACKPROP_LRS,
    progress: Callable[[str], OnBatch | None] = lambda label: None,
) -> tuple[FloatMLP, float]:
    """Backprop on every layer from ``start``; the learning rate (and epoch) scoring best
    on the validation set wins. ``progress(label)`` gives each run's batch callback."""
    candidates = []
    for lr in lrs:
        config = FloatConfig(epochs=BACKPROP_EPOCHS, lr=lr, seed=seed)
        trainer = FloatTrainer(start.layer_sizes, config, init=start)
        model = trainer.fit(
            split.x_adapt,
            split.y_adapt,
            split.x_val,
            split.y_val,
            on_batch=progress(f"backprop fine-tuning (lr {lr})"),
        )
        candidates.append((model.accuracy(split.x_val, split.y_val), lr, model))
    _, lr, model = max(candidates, key=lambda candidate: candidate[0])
    return model, lr
