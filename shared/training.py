"""The one training loop: epochs of shuffled batches, progress reports, best-epoch choice.

Every trainer (bit-flip, float backprop, QZO-FF) brings only its step and its update rule,
as larq keeps the ``Bop`` optimizer apart from ``fit``; the loop is the same for all, so a
seed gives the same shuffles, the same progress and the same choice of epoch everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray


@dataclass
class EpochReport:
    epoch: int
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


OnBatch = Callable[[int, int], None]
OnEpoch = Callable[[EpochReport], None]
# One step on a batch, told how many batches came before it of how many in all (for
# schedules); it returns how many of the batch it classified correctly.
Step = Callable[[NDArray[np.uint8], NDArray[np.integer], int, int], int]


class Scored(Protocol):
    def accuracy(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> float: ...


M = TypeVar("M", bound=Scored)


def _nothing() -> None:
    """The default end of an epoch: no learning-rate decay."""


@dataclass(frozen=True)
class Loop:
    """How a trainer runs its epochs: their number, the batch size, the shuffling generator
    and what ends an epoch (a learning-rate decay)."""

    epochs: int
    batch_size: int
    rng: np.random.Generator
    end_epoch: Callable[[], None] = _nothing

    def run(
        self,
        step: Step,
        model: Callable[[], M],
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        x_val: NDArray[np.uint8] | None = None,
        y_val: NDArray[np.integer] | None = None,
        on_batch: OnBatch | None = None,
        on_epoch: OnEpoch | None = None,
        *,
        keep: Callable[[M], M] | None = None,
    ) -> M:
        """Pass over ``x`` ``epochs`` times in batches shuffled by ``rng``; return a model.

        ``model()`` is the model as it stands (scored on the validation split after each
        epoch's ``end_epoch``). With ``keep`` (a copy, for a model trained in place) the
        epoch scoring best on validation is returned, else the last epoch when there is no
        validation split; without ``keep`` the last epoch's model is always returned.
        ``on_batch(done, total)`` and ``on_epoch(report)`` feed progress displays.
        """
        per_epoch = -(-len(x) // self.batch_size)
        total = self.epochs * per_epoch
        latest = best = model()
        best_val = -1.0
        for epoch in range(self.epochs):
            started = time.monotonic()
            order = self.rng.permutation(len(x))
            correct = 0
            for index, start in enumerate(range(0, len(x), self.batch_size)):
                batch = order[start : start + self.batch_size]
                done = epoch * per_epoch + index
                correct += step(x[batch], np.asarray(y[batch]), done, total)
                if on_batch is not None:
                    on_batch(done + 1, total)
            self.end_epoch()
            latest = model()
            val = None if x_val is None or y_val is None else latest.accuracy(x_val, y_val)
            if keep is not None and (val is None or val > best_val):
                best, best_val = keep(latest), -1.0 if val is None else val
            if on_epoch is not None:
                seconds = time.monotonic() - started
                on_epoch(EpochReport(epoch + 1, correct / len(x), val, seconds))
        return latest if keep is None else best
