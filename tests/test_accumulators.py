"""Accumulators as checkpoints: what one worker saves another loads and merges. A blob read
back from the database is not trusted: every defect is a TallyError (the close then reads
those uploads from the store instead), never a crash or a tally half-filled."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from bitfleet.frames import decode_frame
from bitfleet.server.algorithms import JOB_ALGORITHMS
from bitfleet.server.algorithms.base import pack_accumulator, unpack_accumulator
from bitfleet.server.algorithms.bitflip import BitFlipAccumulator
from bitfleet.server.jobspec import JobSpec
from bitfleet.tally import TallyError
from tests.manual import JOB, echo_update

SPEC = JobSpec.model_validate({**JOB, "hyperparameters": {"aggregation": "majority"}})
ALGORITHM = JOB_ALGORITHMS["bitflip"]
MODEL = decode_frame(ALGORITHM.initial_model(SPEC))
RAW_MODEL = ALGORITHM.initial_model(SPEC)


def _filled() -> BitFlipAccumulator:
    accumulator = ALGORITHM.accumulator(MODEL)
    assert isinstance(accumulator, BitFlipAccumulator)
    for index, flip in enumerate((False, True, False)):
        update = echo_update(RAW_MODEL, "job", 0, f"a{index}", "s", flip, 10 + index)
        accumulator.add(decode_frame(update), 1, 10 + index)
    return accumulator


def test_a_checkpoint_loads_and_merges_into_the_same_vote() -> None:
    whole = _filled()
    loaded = ALGORITHM.accumulator(MODEL)
    loaded.load(whole.to_bytes())
    merged = ALGORITHM.accumulator(MODEL)
    merged.merge(loaded)
    assert merged.to_bytes() == whole.to_bytes()
    assert ALGORITHM.next_model(MODEL, merged, 0) == ALGORITHM.next_model(MODEL, whole, 0)


def _header_of(blob: bytes) -> tuple[dict[str, object], bytes]:
    (length,) = struct.unpack_from(">I", blob)
    return json.loads(blob[4 : 4 + length]), blob[4 + length :]


def _with_header(header: object, tally: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack(">I", len(text)) + text + tally


BLOB = _filled().to_bytes()
HEADER, TALLY = _header_of(BLOB)
NEGATIVE = [-1] * len(_filled().mean_sums)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"", id="empty"),
        pytest.param(BLOB[:3], id="shorter-than-its-length"),
        pytest.param(BLOB[: len(BLOB) // 2], id="truncated-tally"),
        pytest.param(struct.pack(">I", 2**31) + BLOB[4:], id="header-longer-than-the-blob"),
        pytest.param(struct.pack(">I", 5) + b"[[[[[" + TALLY, id="header-not-json"),
        pytest.param(_with_header([1, 2], TALLY), id="header-not-an-object"),
        pytest.param(
            struct.pack(">I", 200_000) + b"[" * 100_000 + b"]" * 100_000 + TALLY,
            id="header-nested-past-recursion",
        ),
        pytest.param(_with_header({**HEADER, "samples": -1}, TALLY), id="negative-samples"),
        pytest.param(_with_header({**HEADER, "samples": 1.5}, TALLY), id="fractional-samples"),
        pytest.param(_with_header({**HEADER, "mean_sums": NEGATIVE}, TALLY), id="negative-sums"),
        pytest.param(
            _with_header({**HEADER, "mean_sums": [0]}, TALLY), id="feature-sums-of-another-model"
        ),
        pytest.param(_with_header({**HEADER, "weights": [1]}, TALLY), id="weights-without-scales"),
        pytest.param(
            _with_header({**HEADER, "weights": [0], "scales": [[1]]}, TALLY), id="zero-weight"
        ),
        pytest.param(
            _with_header(HEADER, TALLY[:-1] + bytes([TALLY[-1] ^ 1])), id="tally-bit-flipped"
        ),
    ],
)
def test_a_damaged_checkpoint_is_refused_as_a_tally_error(blob: bytes) -> None:
    with pytest.raises(TallyError):
        ALGORITHM.accumulator(MODEL).load(blob)


def test_a_checkpoint_of_another_models_tensors_is_refused() -> None:
    other = JobSpec.model_validate({**JOB, "model": {"layers": [64, 32, 10], "weights": "binary"}})
    foreign = ALGORITHM.accumulator(decode_frame(ALGORITHM.initial_model(other)))
    with pytest.raises(TallyError):
        ALGORITHM.accumulator(MODEL).load(foreign.to_bytes())


def test_the_packing_round_trips_its_side_sums() -> None:
    side = {"samples": 3, "sums": [1, 2]}
    tally = _filled().tally
    unpacked, again = unpack_accumulator(pack_accumulator(side, tally))
    assert unpacked == side and again.to_bytes() == tally.to_bytes()
    assert np.array_equal(np.asarray(unpacked["sums"]), [1, 2])
