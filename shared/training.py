"""The one training loop: epochs of shuffled batches, progress reports, best-epoch choice.

Every trainer (bit-flip, float backprop, QZO-FF) brings only its step and its update rule,
as larq keeps the ``Bop`` optimizer apart from ``fit``; the loop is the same for all, so a
seed gives the same shuffles, the same progress and the same choice of epoch everywhere.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

# Upper bounds of the options every trainer shares: generous for any board, and far inside
# the int64 training arithmetic at real model sizes.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 1 << 16
MAX_SEED = 2**64 - 1


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
class Loop(Generic[M]):
    """What a trainer brings to one fit: the number of epochs, the batch size and the
    shuffling generator; its ``step``, what ends an epoch (a learning-rate decay), the
    model as it stands (``model()``) and, for a model trained in place, ``keep`` (a copy)."""

    epochs: int
    batch_size: int
    rng: np.random.Generator
    step: Step
    model: Callable[[], M]
    end_epoch: Callable[[], None] = _nothing
    keep: Callable[[M], M] | None = None


class Trainer(ABC, Generic[M]):
    """A trainer supplies its step and update rule through :meth:`_loop`; :meth:`fit` is
    the loop, the same for all."""

    @abstractmethod
    def _loop(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> Loop[M]:
        """Check the data and set up a fit on it (initial model, learning rate, ...)."""

    def fit(
        self,
        x: NDArray[np.uint8],
        y: NDArray[np.integer],
        x_val: NDArray[np.uint8] | None = None,
        y_val: NDArray[np.integer] | None = None,
        on_batch: OnBatch | None = None,
        on_epoch: OnEpoch | None = None,
    ) -> M:
        """Pass over ``x`` in shuffled batches for the trainer's epochs; return a model.

        The model is scored on the validation split after each epoch's ``end_epoch``. With
        ``keep`` the epoch scoring best on validation is returned, else the last epoch when
        there is no validation split; without ``keep`` the last epoch's model is always
        returned. ``on_batch(done, total)`` and ``on_epoch(report)`` feed progress displays.
        """
        loop = self._loop(x, y)
        per_epoch = -(-len(x) // loop.batch_size)
        total = loop.epochs * per_epoch
        latest = best = loop.model()
        best_val = -1.0
        for epoch in range(loop.epochs):
            started = time.monotonic()
            order = loop.rng.permutation(len(x))
            correct = 0
            for index, start in enumerate(range(0, len(x), loop.batch_size)):
                batch = order[start : start + loop.batch_size]
                done = epoch * per_epoch + index
                correct += loop.step(x[batch], np.asarray(y[batch]), done, total)
                if on_batch is not None:
                    on_batch(done + 1, total)
            loop.end_epoch()
            latest = loop.model()
            val = None if x_val is None or y_val is None else latest.accuracy(x_val, y_val)
            if loop.keep is not None and (val is None or val > best_val):
                best, best_val = loop.keep(latest), -1.0 if val is None else val
            if on_epoch is not None:
                seconds = time.monotonic() - started
                on_epoch(EpochReport(epoch + 1, correct / len(x), val, seconds))
        return latest if loop.keep is None else best
