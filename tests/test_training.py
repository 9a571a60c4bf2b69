"""The one training loop: shuffles, batches, progress and the choice of epoch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bitfleet.training import EpochReport, Loop, Step, Trainer


@dataclass
class Scripted:
    """A model whose validation accuracy per epoch is given: the loop's choice shows."""

    scores: list[float]
    epoch: int = 0

    def accuracy(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> float:
        return self.scores[self.epoch - 1]

    def copy(self) -> Scripted:
        return Scripted(self.scores, self.epoch)


@dataclass
class ScriptedTrainer(Trainer[Scripted]):
    """A trainer whose step is given and whose epochs advance the scripted model."""

    model: Scripted
    step: Step
    batch_size: int
    seed: int
    keep: bool = True

    def _loop(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> Loop[Scripted]:
        def end_epoch() -> None:
            self.model.epoch += 1

        keep = Scripted.copy if self.keep else None
        rng = np.random.default_rng(self.seed)
        epochs = len(self.model.scores)
        return Loop(epochs, self.batch_size, rng, self.step, lambda: self.model, end_epoch, keep)


def _data(n: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    return np.arange(n, dtype=np.uint8)[:, None], np.arange(n, dtype=np.int64)


def test_each_epoch_is_one_shuffle_of_every_sample_in_batches_with_progress() -> None:
    x, y = _data(10)
    steps: list[tuple[list[int], int, int]] = []
    progress: list[tuple[int, int]] = []
    reports: list[EpochReport] = []

    def step(xb: NDArray[np.uint8], yb: NDArray[np.integer], done: int, total: int) -> int:
        steps.append((yb.tolist(), done, total))
        return int(np.sum(yb % 2 == 0))

    trainer = ScriptedTrainer(Scripted([0.0] * 3), step, batch_size=4, seed=5)
    trainer.fit(
        x, y, on_batch=lambda done, total: progress.append((done, total)), on_epoch=reports.append
    )
    expected = np.random.default_rng(5)
    for epoch in range(3):
        order = expected.permutation(10).tolist()
        batches = [batch for batch, _, _ in steps[3 * epoch : 3 * epoch + 3]]
        assert batches == [order[0:4], order[4:8], order[8:10]]
    assert [(done, total) for _, done, total in steps] == [(i, 9) for i in range(9)]
    assert progress == [(i, 9) for i in range(1, 10)]
    assert [(r.epoch, r.train_accuracy, r.val_accuracy) for r in reports] == [
        (1, 0.5, None),
        (2, 0.5, None),
        (3, 0.5, None),
    ]


def _fit(scores: list[float], with_validation: bool, keep: bool) -> Scripted:
    x, y = _data(4)
    trainer = ScriptedTrainer(Scripted(scores), lambda xb, yb, done, total: 0, 2, 0, keep)
    if with_validation:
        return trainer.fit(x, y, x, y)
    return trainer.fit(x, y)


def test_keep_returns_the_first_best_epoch_on_validation_else_the_last() -> None:
    assert _fit([0.2, 0.7, 0.5, 0.7], with_validation=True, keep=True).epoch == 2
    assert _fit([0.2, 0.7, 0.5, 0.7], with_validation=False, keep=True).epoch == 4
    assert _fit([0.2, 0.7, 0.5, 0.1], with_validation=True, keep=False).epoch == 4
