"""What the coordinator needs to know about each training algorithm.

A :class:`JobAlgorithm` builds round 0's model, checks that an update fits the model,
accumulates updates one at a time (additive tallies: nothing holds every payload), turns the
tally into the next global model, and evaluates a model on held-out data. Round scheduling
and upload checking are the same for every algorithm. The agents' side of each algorithm is
its :class:`bitfleet.algorithms.Algorithm`, which the job checks here use too.
"""

from __future__ import annotations

import json
import struct
from abc import ABC, abstractmethod
from typing import Any

from bitfleet.algorithms import Algorithm
from bitfleet.datasets import Dataset
from bitfleet.errors import ConfigError
from bitfleet.frames import Frame, FrameError
from bitfleet.protocol import MAX_SAMPLES
from bitfleet.server.jobspec import JobSpec
from bitfleet.tally import ModelTally, TallyError

# What an update must hold: name -> (encoding, shape) of each tensor.
Expected = dict[str, tuple[str, tuple[int, ...]]]


class Accumulator(ABC):
    """The running aggregate of one round's accepted updates. Additive: coordinator workers
    each keep one of the uploads they accept, checkpoint it (:meth:`to_bytes`), and the one
    that closes the round merges them."""

    @abstractmethod
    def add(self, update: Frame, weight: int, samples: int) -> None:
        """Add a checked update: its vote counts ``weight`` times; ``samples`` is its
        bounded sample count (for sample-weighted means)."""

    @abstractmethod
    def merge(self, other: Accumulator) -> None:
        """Add what ``other`` (an accumulator of the same round's model) counted."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """Everything counted, for :meth:`load`."""

    @abstractmethod
    def load(self, blob: bytes) -> None:
        """Fill this empty accumulator from :meth:`to_bytes` of one of the same model;
        TallyError for a blob that is not one (the accumulator is then to be dropped)."""


class JobAlgorithm(ABC):
    agent: Algorithm[Any]  # the same algorithm on the agents' side

    @abstractmethod
    def initial_model(self, spec: JobSpec) -> bytes: ...

    @abstractmethod
    def start_from(self, model: Frame, raw: bytes, spec: JobSpec) -> bytes:
        """Round 0's model of a job that starts from a user-supplied model (``raw``, decoded
        as ``model``); ConfigError unless it fits the job."""

    @abstractmethod
    def check_update(self, model: Frame, update: Frame) -> None:
        """Raise FrameError('shape', ...) unless ``update`` fits ``model``."""

    @abstractmethod
    def accumulator(self, model: Frame) -> Accumulator: ...

    @abstractmethod
    def next_model(self, model: Frame, accumulator: Accumulator, round_index: int) -> bytes: ...

    @abstractmethod
    def evaluate(self, model: Frame, dataset: Dataset) -> tuple[float, float]:
        """(accuracy, loss) on the data set's test split."""

    def published(self, model: bytes) -> bytes:
        """What agents and users are given of a stored model (default: all of it); the
        coordinator may store state beside the model that only it reads."""
        return model

    def check_screening(self, spec: JobSpec) -> None:
        """ConfigError if the job asks for ``screen_updates`` and this algorithm cannot
        screen its updates (default: it cannot)."""
        if spec.screen_updates:
            raise ConfigError(
                f"screen_updates: {spec.algorithm} updates cannot be screened; drop the option"
            )

    def screen(self, model: Frame, update: Frame) -> str | None:
        """For a job that screens updates: the refusal reason of a well-formed ``update``
        that should not be counted, else None (default: every update counts)."""
        return None

    def round_hyperparameters(self, spec: JobSpec, round_index: int) -> dict[str, Any]:
        """The hyperparameters agents get for ``round_index`` (default: the job's own)."""
        return dict(spec.hyperparameters)


def check_update_tensors(update: Frame, expected: Expected) -> None:
    """The update holds exactly the expected tensors and a positive sample count."""
    got = {name: (t.encoding, t.shape) for name, t in update.tensors.items()}
    if got != expected:
        raise FrameError("shape", f"update tensors {got} do not match the model's {expected}")
    samples = update.meta.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_SAMPLES:
        raise FrameError(
            "samples", f"update meta needs an integer 'samples' between 1 and {MAX_SAMPLES}"
        )


def tally_specs(voted: Expected) -> dict[str, tuple[str, int, int]]:
    """The tally's (encoding, rows, columns) of each voted 2-D tensor."""
    return {name: (encoding, shape[0], shape[1]) for name, (encoding, shape) in voted.items()}


# A serialized accumulator: the length of a JSON header of its side sums, the header, its
# tally's own self-checking bytes.
_HEADER_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 16 * 1024 * 1024


def pack_accumulator(side: dict[str, Any], tally: ModelTally) -> bytes:
    """An accumulator's side sums (JSON values) and tally as one blob."""
    header = json.dumps(side, separators=(",", ":")).encode()
    return _HEADER_LENGTH.pack(len(header)) + header + tally.to_bytes()


def unpack_accumulator(blob: bytes) -> tuple[dict[str, Any], ModelTally]:
    """The side sums and tally of :func:`pack_accumulator`; TallyError for anything else."""
    if len(blob) < _HEADER_LENGTH.size:
        raise TallyError("accumulator blob is truncated")
    (length,) = _HEADER_LENGTH.unpack_from(blob)
    end = _HEADER_LENGTH.size + length
    if length > MAX_HEADER_BYTES or end > len(blob):
        raise TallyError("accumulator blob has a header longer than itself")
    try:
        side = json.loads(blob[_HEADER_LENGTH.size : end])
    except (ValueError, RecursionError):
        raise TallyError("accumulator blob has a header that is not JSON") from None
    if not isinstance(side, dict):
        raise TallyError("accumulator blob has a header that is not an object")
    return side, ModelTally.from_bytes(blob[end:])


def side_int(side: dict[str, Any], key: str) -> int:
    """A non-negative integer of a header, else TallyError."""
    value = side.get(key)
    if type(value) is not int or value < 0:
        raise TallyError(f"accumulator blob's {key!r} is not a non-negative integer")
    return value
