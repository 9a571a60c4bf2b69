"""The 2-bit counter link of ``aggregation: counters`` jobs (bitfleet.counterlink).

The link's parts do what they say (strength planes rebuild counters that read the same
weights; a ternary move loses nothing, only delays it; the weighted median ignores a
minority), one round runs from an agent's training to the coordinator's next model, and
every hostile field of an update or a model is refused with a typed error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from bitfleet.algorithms.bitflip import AGGREGATION, BitFlip, LocalBitFlip, aggregation_of
from bitfleet.bitflip import CounterLayer
from bitfleet.bitpack import pack_binary, pack_ternary
from bitfleet.counterlink import (
    CHANGE,
    FRACTION_BITS,
    LEVELS,
    LINK,
    SCALES,
    strength,
    ternary_move,
    weighted_median,
)
from bitfleet.errors import ConfigError
from bitfleet.frames import KIND_UPDATE, Frame, FrameError, Tensor, decode_frame, encode_frame
from bitfleet.modelfile import (
    COORDINATOR_COUNTERS,
    STRENGTH,
    ModelFileError,
    bitmlp_from_frame,
)
from bitfleet.server.algorithms import JOB_ALGORITHMS
from bitfleet.server.algorithms.bitflip import BitFlipAccumulator
from bitfleet.server.jobspec import JobSpec

LAYERS = [16, 12, 4]
JOBS = JOB_ALGORITHMS["bitflip"]


def _layer(encoding: str, seed: int = 0, state_bits: int = 8) -> CounterLayer:
    rng = np.random.default_rng(seed)
    half = 1 << (state_bits - 1)
    counters = rng.integers(-half, half, size=(12, 16)).astype(np.int16)
    return CounterLayer(counters, state_bits, encoding, 4)


@pytest.mark.parametrize("encoding", ["binary", "ternary"])
def test_strength_planes_rebuild_counters_that_read_the_same_weights(encoding: str) -> None:
    layer = _layer(encoding)
    strong, (weak_level, strong_level) = strength(layer)
    distance = layer.distances()
    nonzero = layer.weights != 0
    median = int(np.median(distance[nonzero]))
    assert weak_level <= median <= strong_level
    assert (distance[strong] >= strong_level // 2).all() and not (strong & ~nonzero).any()
    rebuilt = _layer(encoding, seed=1)
    rebuilt.restore(layer.weights, strong, (weak_level, strong_level))
    assert (rebuilt.weights == layer.weights).all()
    expected = np.where(strong, strong_level, weak_level) * nonzero
    assert (rebuilt.distances() == expected).all()


def test_an_all_zero_ternary_layer_has_no_strong_weights() -> None:
    layer = CounterLayer(np.zeros((3, 5), np.int16), 5, "ternary", 4)
    strong, levels = strength(layer)
    assert not strong.any() and levels == (0, 0)


def test_a_ternary_move_loses_nothing_it_only_delays_it() -> None:
    rng = np.random.default_rng(3)
    residual = np.zeros(200, np.int32)
    sent = np.zeros(200, np.int64)
    total = np.zeros(200, np.int64)
    for _ in range(6):
        move = rng.integers(-9, 10, size=200)
        signs, scale, left = ternary_move(move, residual, 1 << 8)
        assert set(np.unique(signs)) <= {-1, 0, 1} and scale >= 1
        assert (scale * signs.astype(np.int64) + left == move + residual).all()
        sent += scale * signs.astype(np.int64)
        total += move
        residual = left
    assert (sent + residual == total).all()


def test_a_ternary_move_keeps_its_residual_within_the_counters_range() -> None:
    signs, scale, left = ternary_move(np.array([1000, 0, 0, 0]), np.zeros(4, np.int32), 16)
    assert signs.tolist() == [1, 0, 0, 0] and scale == 500
    assert left.tolist() == [16, 0, 0, 0]


def test_the_weighted_median_is_the_lower_median_and_ignores_a_minority() -> None:
    assert weighted_median([3, 1, 2], [1, 1, 1]) == 2
    assert weighted_median([1, 2], [1, 1]) == 1  # the lower of two
    assert weighted_median([5, 9], [3, 1]) == 5
    honest = [4, 5, 6, 5, 4, 6, 5]
    assert weighted_median([*honest, 256, 256, 256], [1] * 10) == 5


def _spec(**hyperparameters: Any) -> JobSpec:
    return JobSpec(
        name="link",
        model={"layers": LAYERS, "weights": "binary"},
        dataset="digits",
        hyperparameters=hyperparameters,
    )


def _data(seed: int = 0, count: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, LAYERS[0]), np.uint8), rng.integers(0, 4, count)


def _agent_round(model: bytes, spec: JobSpec, seed: int) -> tuple[list[Tensor], dict[str, Any]]:
    frame = decode_frame(model)
    config = BitFlip().config(spec.hyperparameters, "binary", 1, spec.seed)
    local = BitFlip().local("job", frame, config)
    assert isinstance(local, LocalBitFlip)
    x, y = _data(seed)
    return local.train_round(frame, 0, config, x, y)


def _update(tensors: list[Tensor], meta: dict[str, Any]) -> Frame:
    return decode_frame(encode_frame(KIND_UPDATE, meta, tensors))


def test_counters_is_the_job_default_and_majority_stays_available() -> None:
    assert aggregation_of({}) == "counters"
    assert aggregation_of({AGGREGATION: "majority"}) == "majority"
    with pytest.raises(ConfigError, match="aggregation must be one of"):
        aggregation_of({AGGREGATION: "mean"})


def test_a_round_runs_from_agents_training_to_the_coordinators_next_model() -> None:
    spec = _spec()
    model = JOBS.initial_model(spec)
    frame = decode_frame(model)
    assert frame.meta[AGGREGATION] == "counters"
    assert frame.meta[LINK] == {"state_bits": 8, "zero_fraction": 16}
    accumulator = JOBS.accumulator(frame)
    for seed in range(3):
        tensors, meta = _agent_round(model, spec, seed)
        assert {t.name for t in tensors} == {f"{CHANGE}_0", f"{CHANGE}_1", "input_mean"}
        update = _update(tensors, meta)
        JOBS.check_update(frame, update)
        accumulator.add(update, 10, meta["samples"])
    stored = JOBS.next_model(frame, accumulator, 0)
    stored_frame = decode_frame(stored)
    counters = [stored_frame.tensors[f"{COORDINATOR_COUNTERS}_{i}"] for i in range(2)]
    assert [c.encoding for c in counters] == ["int32", "int32"]
    assert len(stored_frame.meta[LEVELS]) == 2 and stored_frame.meta["round"] == 1
    published = decode_frame(JOBS.published(stored))
    assert not any(n.startswith(COORDINATOR_COUNTERS) for n in published.tensors)
    assert {f"{STRENGTH}_0", f"{STRENGTH}_1"} <= set(published.tensors)
    # The stored model's weights are what its counters read; agents get the same weights.
    assert bitmlp_from_frame(published).layer_sizes == LAYERS
    for index in range(2):
        fixed = np.asarray(counters[index].data, np.int64)
        rounded = (fixed + (1 << (FRACTION_BITS - 1))) >> FRACTION_BITS
        read = np.where(rounded >= 0, 1, -1)
        weights = bitmlp_from_frame(published).layers[index].values()
        assert (read == weights).all()
    # The next round starts from the published model, on the agents' side.
    tensors, meta = _agent_round(JOBS.published(stored), spec, 5)
    JOBS.check_update(stored_frame, _update(tensors, meta))


def test_a_majority_job_votes_weights_as_before() -> None:
    spec = _spec(aggregation="majority")
    frame = decode_frame(JOBS.initial_model(spec))
    assert frame.meta[AGGREGATION] == "majority" and LINK not in frame.meta
    tensors, meta = _agent_round(JOBS.initial_model(spec), spec, 0)
    assert {t.name for t in tensors} == {"dense_0", "dense_1", "input_mean"}
    JOBS.check_update(frame, _update(tensors, meta))
    assert JOBS.published(JOBS.initial_model(spec)) == JOBS.initial_model(spec)


def _honest_update(spec: JobSpec) -> tuple[Frame, list[Tensor], dict[str, Any]]:
    frame = decode_frame(JOBS.initial_model(spec))
    tensors, meta = _agent_round(JOBS.initial_model(spec), spec, 0)
    return frame, tensors, meta


@pytest.mark.parametrize(
    "scales",
    [None, [3], [3, 3, 3], [True, 3], [0, 3], [3, 257], [3.0, 3], ["3", 3], 3],
    ids=["missing", "short", "long", "bool", "zero", "beyond", "float", "text", "scalar"],
)
def test_bad_change_scales_are_refused(scales: object) -> None:
    frame, tensors, meta = _honest_update(_spec())
    meta = {k: v for k, v in meta.items() if k != SCALES}
    if scales is not None:
        meta[SCALES] = scales
    with pytest.raises(FrameError, match=SCALES) as refused:
        JOBS.check_update(frame, _update(tensors, meta))
    assert refused.value.reason == "meta"


def test_weights_sent_to_a_counters_job_are_refused() -> None:
    spec = _spec()
    frame = decode_frame(JOBS.initial_model(spec))
    tensors, meta = _agent_round(JOBS.initial_model(_spec(aggregation="majority")), spec, 0)
    with pytest.raises(FrameError) as refused:
        JOBS.check_update(frame, _update(tensors, {**meta, SCALES: [1, 1]}))
    assert refused.value.reason == "shape"


def test_binary_moves_in_place_of_ternary_ones_are_refused() -> None:
    frame, tensors, meta = _honest_update(_spec())
    binary = [
        replace(t, encoding="binary", data=pack_binary(np.ones(t.shape, np.int8))[None])
        if t.name.startswith(CHANGE)
        else t
        for t in tensors
    ]
    with pytest.raises(FrameError) as refused:
        JOBS.check_update(frame, _update(binary, meta))
    assert refused.value.reason == "shape"


def _with_meta(model: bytes, **changes: Any) -> Frame:
    frame = decode_frame(model)
    return decode_frame(
        encode_frame(frame.kind, {**frame.meta, **changes}, list(frame.tensors.values()))
    )


def _next_model(spec: JobSpec) -> bytes:
    frame = decode_frame(JOBS.initial_model(spec))
    accumulator = JOBS.accumulator(frame)
    tensors, meta = _agent_round(JOBS.initial_model(spec), spec, 0)
    accumulator.add(_update(tensors, meta), 10, meta["samples"])
    return JOBS.published(JOBS.next_model(frame, accumulator, 0))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({LINK: {"state_bits": 5, "zero_fraction": 4}}, ConfigError),
        ({LINK: None}, ConfigError),
        ({LEVELS: [[1, 2]]}, FrameError),
        ({LEVELS: [[1, 2], [1, 999]]}, FrameError),
        ({LEVELS: [[1, 2], [1, -1]]}, FrameError),
        ({LEVELS: [[1, 2], [1.5, 2]]}, FrameError),
        ({LEVELS: [[1, 2], [True, 2]]}, FrameError),
        ({LEVELS: "strong"}, FrameError),
    ],
    ids=["other-bits", "no-link", "short", "beyond", "negative", "float", "bool", "text"],
)
def test_an_agent_refuses_a_model_whose_link_does_not_fit_its_job(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    spec = _spec()
    frame = _with_meta(_next_model(spec), **changes)
    config = BitFlip().config(spec.hyperparameters, "binary", 1, spec.seed)
    local = BitFlip().local("job", frame, config)
    with pytest.raises(error):
        local.train_round(frame, 1, config, *_data())


def test_an_agent_refuses_a_strength_plane_that_is_not_binary() -> None:
    spec = _spec()
    frame = decode_frame(_next_model(spec))
    plane = frame.tensors[f"{STRENGTH}_0"]
    ternary = Tensor(
        plane.name, "ternary", plane.shape, np.stack(pack_ternary(np.zeros(plane.shape, np.int8)))
    )
    tensors = [ternary if t.name == plane.name else t for t in frame.tensors.values()]
    hostile = decode_frame(encode_frame(frame.kind, frame.meta, tensors))
    config = BitFlip().config(spec.hyperparameters, "binary", 1, spec.seed)
    local = BitFlip().local("job", hostile, config)
    with pytest.raises(FrameError, match="must be binary"):
        local.train_round(hostile, 1, config, *_data())


def test_a_model_with_a_misshapen_or_unknown_state_tensor_is_refused() -> None:
    frame = decode_frame(_next_model(_spec()))
    plane = frame.tensors[f"{STRENGTH}_1"]
    wrong = Tensor(plane.name, "binary", (4, 64), pack_binary(np.ones((4, 64), np.int8))[None])
    tensors = [wrong if t.name == plane.name else t for t in frame.tensors.values()]
    with pytest.raises(ModelFileError, match="strength_1 must have dense_1's shape"):
        bitmlp_from_frame(decode_frame(encode_frame(frame.kind, frame.meta, tensors)))
    extra = Tensor(f"{STRENGTH}_2", "binary", plane.shape, plane.data)
    with pytest.raises(ModelFileError, match="unexpected"):
        bitmlp_from_frame(
            decode_frame(encode_frame(frame.kind, frame.meta, [*frame.tensors.values(), extra]))
        )


def test_a_users_initial_model_starts_without_the_state_it_carries() -> None:
    spec = _spec()
    stored = _stored_after_one_round(spec)
    started = decode_frame(JOBS.start_from(decode_frame(stored), stored, spec))
    assert set(started.tensors) == {"input_offset", "dense_0", "dense_1"}
    assert started.meta[AGGREGATION] == "counters" and LEVELS not in started.meta
    majority = decode_frame(
        JOBS.start_from(decode_frame(stored), stored, _spec(aggregation="majority"))
    )
    assert majority.meta[AGGREGATION] == "majority" and LINK not in majority.meta


def _stored_after_one_round(spec: JobSpec) -> bytes:
    frame = decode_frame(JOBS.initial_model(spec))
    accumulator = JOBS.accumulator(frame)
    assert isinstance(accumulator, BitFlipAccumulator)
    tensors, meta = _agent_round(JOBS.initial_model(spec), spec, 0)
    accumulator.add(_update(tensors, meta), 10, meta["samples"])
    return JOBS.next_model(frame, accumulator, 0)


def test_no_agents_claimed_scale_moves_the_counters_beyond_the_median_agents() -> None:
    """Three agents send the same move; one claims the largest scale: the counters move by
    the median's, as if it had claimed the honest one."""
    spec = _spec()
    frame = decode_frame(JOBS.initial_model(spec))
    tensors, meta = _agent_round(JOBS.initial_model(spec), spec, 0)
    results = []
    for claims in ([meta[SCALES]] * 3, [meta[SCALES], meta[SCALES], [256, 256]]):
        accumulator = JOBS.accumulator(frame)
        for scales in claims:
            accumulator.add(_update(tensors, {**meta, SCALES: scales}), 10, meta["samples"])
        results.append(JOBS.next_model(frame, accumulator, 0))
    assert results[0] == results[1]
