"""What every model type (bit, float, fixed-point) shares: the check of its layer sizes,
and scores, predictions and accuracy, written once.

A model supplies only ``scores_chunk`` (its forward pass on a few rows) and its layer sizes;
inference runs in chunks of ``CHUNK_ROWS`` rows so the buffers stay bounded on large test
sets, and every model predicts and scores the same way (ties go to the lowest class).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from bitfleet.errors import ConfigError

S = TypeVar("S", bound=np.number)


def validate_layer_sizes(sizes: list[int]) -> None:
    """At least input and output sizes, every size positive."""
    if len(sizes) < 2 or any(size < 1 for size in sizes):
        raise ConfigError(
            f"layer sizes {sizes} are not valid: give at least two positive sizes, "
            "e.g. --layers 784,512,10"
        )


def check_inputs(x: NDArray[np.uint8], features: int) -> None:
    """Inputs must be ``(batch, features)``, else a ConfigError saying what the model wants."""
    if x.ndim != 2 or x.shape[1] != features:
        raise ConfigError(f"inputs have shape {x.shape}, the model expects (batch, {features})")


class Classifier(ABC, Generic[S]):
    """A classifier over uint8 feature rows whose class scores have dtype ``S``."""

    # Rows per forward pass; the float baseline takes larger chunks than the integer models.
    CHUNK_ROWS: ClassVar[int] = 1024
    SCORE_DTYPE: ClassVar[type[np.number]]

    @property
    @abstractmethod
    def layer_sizes(self) -> list[int]:
        """Inputs first, classes last."""

    @abstractmethod
    def scores_chunk(self, x: NDArray[np.uint8]) -> NDArray[S]:
        """Class scores for at most ``CHUNK_ROWS`` checked rows."""

    def scores(self, x: NDArray[np.uint8]) -> NDArray[S]:
        """Class scores for uint8 inputs ``(batch, features)``."""
        x = np.asarray(x, dtype=np.uint8)
        check_inputs(x, self.layer_sizes[0])
        rows = self.CHUNK_ROWS
        chunks = [self.scores_chunk(x[i : i + rows]) for i in range(0, len(x), rows)]
        if not chunks:
            return np.zeros((0, self.layer_sizes[-1]), dtype=self.SCORE_DTYPE)
        return np.concatenate(chunks)

    def predict(self, x: NDArray[np.uint8]) -> NDArray[np.int64]:
        """Predicted class per row (ties go to the lowest class index)."""
        return np.argmax(self.scores(x), axis=1).astype(np.int64)

    def accuracy(self, x: NDArray[np.uint8], y: NDArray[np.integer]) -> float:
        """The fraction of rows predicted as labelled (0 for no rows)."""
        if len(y) == 0:
            return 0.0
        return float(np.mean(self.predict(x) == np.asarray(y)))
